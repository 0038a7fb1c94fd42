//! The jobs file (`[jobs] path`, e.g. `deploy_agent_exec.ini`): the commands the `exec`
//! order may run, as argument vectors, never through a shell.
//!
//! ```text
//! [jobs]
//! service:echo  = /bin/echo %s
//! service:nginx = /usr/sbin/service nginx %s
//! app:greet     = /bin/sh -c 'echo "hello, $1"' greet %s
//! ```
//!
//! Every section is read and merged (the section names carry no meaning); when a name is
//! defined twice, the later line wins. A name is looked up exactly (the original matched
//! it as a regular expression). Names may contain `:` but not `,` or `|`, which separate
//! the arguments in an `exec` order's options.
//!
//! # Templates
//!
//! A template is split into words once, when the file is loaded, like a POSIX shell
//! splits words but **without any expansion**: words are separated by whitespace;
//! `'…'` groups literally; `"…"` groups, with backslash escaping `"`, `\`, `$` and
//! `` ` `` inside it; outside quotes a backslash makes the next character literal.
//! `$`, `` ` ``, `*`, `~`, `;`, `|`, `>` are ordinary characters. Unbalanced quotes, a
//! trailing backslash and an empty template are errors.
//!
//! Then `%` sequences are interpreted as the original's `sprintf` did: `%%` is a `%`,
//! `%s` is where the order's arguments go, anything else after `%` is kept as written.
//! At most one `%s` may appear, and not in the first word (the program is fixed by the
//! file, never chosen by the caller). When an order runs ([`JobTemplate::argv`]):
//!
//! * an unquoted word that is exactly `%s` becomes the arguments, **one argv element
//!   each** (none if there are none);
//! * a word that contains `%s` with other text, or quoted (`"%s"`), gets the arguments
//!   joined with single spaces in place of the `%s` (one argv element);
//! * arguments are otherwise passed through verbatim: `;`, `$(x)`, backslashes and
//!   newlines reach the program as data, since there is no shell to interpret them;
//! * with no `%s` in the template, arguments are ignored (as the original's `sprintf`
//!   ignored surplus arguments).
//!
//! # Arguments that look like options
//!
//! Passing arguments verbatim means an argument may start with `-` and be read as an
//! option by the program (`/bin/date %s` with `-s 2000-01-01` sets the clock). So an
//! argument starting with `-` is **refused** unless the job allows it by writing its
//! placeholder `%-s`. A placeholder may also restrict the characters of every argument
//! with a set in braces, written right after it, as in a shell glob's `[...]`: single
//! characters and ranges `a-z`; a `-` first or last is itself; `}` and whitespace
//! cannot be in a set:
//!
//! ```text
//! service:nginx = /usr/sbin/service nginx %s{a-z}      ; reload, restart…
//! app:tag       = /usr/local/bin/tag %s{a-zA-Z0-9._-}  ; still no leading '-'
//! app:grep      = /bin/grep %-s /var/log/app.log       ; options allowed: think twice
//! ```
//!
//! Both rules apply to each argument, wherever the placeholder stands.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::ini::{Entry, Ini};
use super::{ConfigError, Cx};

/// Why a template could not be split into words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template has no words.
    #[error("empty template")]
    Empty,
    /// A quote is not closed.
    #[error("unbalanced {0} quote")]
    Unbalanced(char),
    /// The template ends with a lone backslash.
    #[error("trailing backslash")]
    TrailingBackslash,
    /// The template contains a NUL character.
    #[error("NUL character in template")]
    Nul,
    /// More than one `%s`.
    #[error("more than one %s")]
    MultiplePlaceholders,
    /// `%s` in the first word, which would let the caller choose the program.
    #[error("%s in the program name (the first word)")]
    PlaceholderInProgram,
    /// The first word is empty (`''`).
    #[error("empty program name")]
    EmptyProgram,
    /// A `%s{…}` character set is not closed, is empty or has a reversed range.
    #[error("bad character set after %s: {0}")]
    BadSet(String),
}

/// Why [`JobTemplate::argv`] refused the arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// An argument contains a NUL byte, which no argv element can hold.
    #[error("argument {index} contains a NUL byte")]
    Nul {
        /// 0-based index of the argument.
        index: usize,
    },
    /// An argument starts with `-` and the job does not allow that (`%-s`).
    #[error("argument {index} starts with '-' (the job does not take options; its template would say %-s)")]
    Dash {
        /// 0-based index of the argument.
        index: usize,
    },
    /// An argument has a character outside the job's set (`%s{…}`).
    #[error("argument {index} has a character outside [{set}]")]
    Charset {
        /// 0-based index of the argument.
        index: usize,
        /// The set as written in the template.
        set: String,
    },
}

/// What a job's `%s` accepts: see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ArgRule {
    /// `%-s`: arguments may start with `-`.
    dash: bool,
    /// `%s{…}`: the set as written, and its ranges (single characters are `(c, c)`).
    set: Option<(String, Vec<(char, char)>)>,
}

impl ArgRule {
    fn check(&self, index: usize, arg: &str) -> Result<(), JobError> {
        if !self.dash && arg.starts_with('-') {
            return Err(JobError::Dash { index });
        }
        if let Some((written, ranges)) = &self.set {
            let inside = |c: char| ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
            if !arg.chars().all(inside) {
                return Err(JobError::Charset {
                    index,
                    set: written.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Parses the inside of `{…}`: characters and `a-z` ranges; `-` first or last is literal.
fn parse_set(written: &str) -> Result<Vec<(char, char)>, TemplateError> {
    let chars: Vec<char> = written.chars().collect();
    if chars.is_empty() {
        return Err(TemplateError::BadSet("empty set {}".into()));
    }
    let mut ranges = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match (chars.get(i + 1), chars.get(i + 2)) {
            (Some('-'), Some(&hi)) => {
                if hi < c {
                    return Err(TemplateError::BadSet(format!("reversed range {c}-{hi}")));
                }
                ranges.push((c, hi));
                i += 3;
            }
            _ => {
                ranges.push((c, c));
                i += 1;
            }
        }
    }
    Ok(ranges)
}

/// One piece of a word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Literal text.
    Text(String),
    /// `%s` inside a word: the arguments joined with spaces.
    Args(ArgRule),
}

/// One word of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    /// A bare `%s` word: the arguments, one argv element each.
    Splat(ArgRule),
    /// Any other word: one argv element.
    Pieces(Vec<Piece>),
}

/// One job's command line, split into words at load time. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTemplate {
    source: String,
    words: Vec<Word>,
}

impl JobTemplate {
    /// Splits `template` into words and checks its `%s`.
    pub fn parse(template: &str) -> Result<JobTemplate, TemplateError> {
        if template.contains('\0') {
            return Err(TemplateError::Nul);
        }
        let mut words = Vec::new();
        for (text, bare) in split_words(template)? {
            let pieces = percent_pieces(&text)?;
            words.push(match (bare, pieces.as_slice()) {
                (true, [Piece::Args(rule)]) => Word::Splat(rule.clone()),
                _ => Word::Pieces(pieces),
            });
        }
        let placeholders: usize = words
            .iter()
            .map(|w| match w {
                Word::Splat(_) => 1,
                Word::Pieces(p) => p.iter().filter(|p| matches!(p, Piece::Args(_))).count(),
            })
            .sum();
        if placeholders > 1 {
            return Err(TemplateError::MultiplePlaceholders);
        }
        match words.first() {
            None => return Err(TemplateError::Empty),
            Some(Word::Splat(_)) => return Err(TemplateError::PlaceholderInProgram),
            Some(Word::Pieces(p)) if p.iter().any(|p| matches!(p, Piece::Args(_))) => {
                return Err(TemplateError::PlaceholderInProgram)
            }
            Some(Word::Pieces(p)) if p.iter().all(|p| *p == Piece::Text(String::new())) => {
                return Err(TemplateError::EmptyProgram)
            }
            Some(Word::Pieces(_)) => {}
        }
        Ok(JobTemplate {
            source: template.to_owned(),
            words,
        })
    }

    /// The template as written in the file.
    pub fn template(&self) -> &str {
        &self.source
    }

    /// Whether the template has a `%s` (otherwise arguments are ignored).
    pub fn takes_args(&self) -> bool {
        self.rule().is_some()
    }

    /// The rule of the template's `%s`, if it has one.
    fn rule(&self) -> Option<&ArgRule> {
        self.words.iter().find_map(|w| match w {
            Word::Splat(rule) => Some(rule),
            Word::Pieces(p) => p.iter().find_map(|p| match p {
                Piece::Args(rule) => Some(rule),
                Piece::Text(_) => None,
            }),
        })
    }

    /// The argument vector to execute (program first) with `args` substituted. Refuses
    /// NUL bytes, and arguments the placeholder's rule does not accept (see the
    /// [module docs](self)); arguments of a template without `%s` are ignored.
    pub fn argv(&self, args: &[String]) -> Result<Vec<String>, JobError> {
        if let Some(index) = args.iter().position(|a| a.contains('\0')) {
            return Err(JobError::Nul { index });
        }
        if let Some(rule) = self.rule() {
            for (index, arg) in args.iter().enumerate() {
                rule.check(index, arg)?;
            }
        }
        Ok(self.expand(args))
    }

    /// The command line for the reply's `command` field: the argv joined with single
    /// spaces, as the original's command line looked (not quoted; for display only).
    pub fn display(&self, args: &[String]) -> String {
        self.expand(args).join(" ")
    }

    fn expand(&self, args: &[String]) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.words.len() + args.len());
        for word in &self.words {
            match word {
                Word::Splat(_) => argv.extend(args.iter().cloned()),
                Word::Pieces(pieces) => {
                    let mut s = String::new();
                    for piece in pieces {
                        match piece {
                            Piece::Text(t) => s.push_str(t),
                            Piece::Args(_) => s.push_str(&args.join(" ")),
                        }
                    }
                    argv.push(s);
                }
            }
        }
        argv
    }
}

impl fmt::Display for JobTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Shell-like word splitting without expansion. Returns each word and whether it was
/// written bare (no quotes, no backslash).
fn split_words(s: &str) -> Result<Vec<(String, bool)>, TemplateError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut bare = true;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push((std::mem::take(&mut cur), bare));
                    in_word = false;
                    bare = true;
                }
            }
            '\'' => {
                in_word = true;
                bare = false;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(TemplateError::Unbalanced('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                bare = false;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(TemplateError::Unbalanced('"')),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(TemplateError::Unbalanced('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                bare = false;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(TemplateError::TrailingBackslash),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push((cur, bare));
    }
    Ok(words)
}

/// `%%` → `%`, `%s`, `%-s` (each optionally followed by `{set}`) → [`Piece::Args`],
/// other `%x` kept as written.
fn percent_pieces(text: &str) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let after = rest.get(c.len_utf8()..).unwrap_or_default();
        if c != '%' {
            lit.push(c);
            rest = after;
            continue;
        }
        let (dash, spec) = match after.strip_prefix("-s") {
            Some(tail) => (true, Some(tail)),
            None => (false, after.strip_prefix('s')),
        };
        match (after.strip_prefix('%'), spec) {
            (Some(tail), _) => {
                lit.push('%');
                rest = tail;
            }
            (None, Some(tail)) => {
                let mut rule = ArgRule { dash, set: None };
                rest = tail;
                if let Some(open) = tail.strip_prefix('{') {
                    let close = open
                        .find('}')
                        .ok_or_else(|| TemplateError::BadSet("unclosed {".into()))?;
                    let written = open.get(..close).unwrap_or_default();
                    rule.set = Some((written.to_owned(), parse_set(written)?));
                    rest = open.get(close + 1..).unwrap_or_default();
                }
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
                pieces.push(Piece::Args(rule));
            }
            (None, None) => {
                lit.push('%');
                rest = after;
            }
        }
    }
    pieces.push(Piece::Text(lit));
    pieces.retain(|p| *p != Piece::Text(String::new()));
    if pieces.is_empty() {
        pieces.push(Piece::Text(String::new()));
    }
    Ok(pieces)
}

/// The jobs an agent's `exec` order may run, by exact name. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Jobs {
    jobs: BTreeMap<String, JobTemplate>,
}

impl Jobs {
    /// Reads and parses the jobs file at `path`.
    pub fn load(path: &Path) -> Result<Jobs, ConfigError> {
        Jobs::from_ini(&Ini::load(path)?)
    }

    /// Parses a jobs file's text; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Jobs, ConfigError> {
        Jobs::from_ini(&Ini::parse(text, path)?)
    }

    /// Builds the jobs from a parsed ini: every section, later lines win.
    pub fn from_ini(ini: &Ini) -> Result<Jobs, ConfigError> {
        let mut entries: Vec<(&Entry, Cx<'_>)> = ini
            .sections()
            .iter()
            .flat_map(|s| s.entries().iter().map(move |e| (e, Cx::new(ini, s))))
            .collect();
        // Sections are merged; "later wins" means later in the file.
        entries.sort_by_key(|(e, _)| e.line);
        let mut jobs = BTreeMap::new();
        for (e, cx) in entries {
            if e.list {
                return Err(cx.want_scalar(e));
            }
            if e.key.contains([',', '|']) {
                return Err(cx.invalid(
                    e,
                    "job names cannot contain ',' or '|' (they separate an exec order's arguments)",
                ));
            }
            let template = JobTemplate::parse(&e.value)
                .map_err(|err| cx.invalid(e, format!("{err} in template {:?}", e.value)))?;
            jobs.insert(e.key.clone(), template);
        }
        Ok(Jobs { jobs })
    }

    /// The job called exactly `name`.
    pub fn get(&self, name: &str) -> Option<&JobTemplate> {
        self.jobs.get(name)
    }

    /// The job names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }

    /// How many jobs there are.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// `true` if there are none (every `exec` order is refused).
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> JobTemplate {
        JobTemplate::parse(s).unwrap()
    }

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splitting() {
        for (template, want) in [
            ("/bin/echo a  b\tc", &["/bin/echo", "a", "b", "c"][..]),
            (
                "/bin/sh -c 'echo $HOME; ls *'",
                &["/bin/sh", "-c", "echo $HOME; ls *"],
            ),
            (
                r#"/bin/echo "a \"b\" \$x \n" c"#,
                &["/bin/echo", r#"a "b" $x \n"#, "c"],
            ),
            (r"/bin/echo a\ b \'c", &["/bin/echo", "a b", "'c"]),
            ("/bin/echo '' x\"\"y", &["/bin/echo", "", "xy"]),
            ("/bin/date +%Y%m%d 100%%", &["/bin/date", "+%Y%m%d", "100%"]),
            (
                "/bin/echo $(id) `id` ~ >x",
                &["/bin/echo", "$(id)", "`id`", "~", ">x"],
            ),
        ] {
            assert_eq!(t(template).argv(&[]).unwrap(), want, "{template:?}");
        }
    }

    #[test]
    fn template_errors() {
        for (template, want) in [
            ("", TemplateError::Empty),
            ("   ", TemplateError::Empty),
            ("/bin/echo 'a", TemplateError::Unbalanced('\'')),
            ("/bin/echo \"a", TemplateError::Unbalanced('"')),
            ("/bin/echo \"a\\", TemplateError::Unbalanced('"')),
            ("/bin/echo a\\", TemplateError::TrailingBackslash),
            ("/bin/echo %s %s", TemplateError::MultiplePlaceholders),
            ("/bin/echo %s-%s", TemplateError::MultiplePlaceholders),
            ("%s", TemplateError::PlaceholderInProgram),
            ("/usr/bin/%s x", TemplateError::PlaceholderInProgram),
            ("'' x", TemplateError::EmptyProgram),
            ("/bin/echo \0", TemplateError::Nul),
        ] {
            assert_eq!(JobTemplate::parse(template), Err(want), "{template:?}");
        }
    }

    #[test]
    fn splat_substitution() {
        let job = t("/usr/sbin/service nginx %s");
        assert!(job.takes_args());
        assert_eq!(job.argv(&[]).unwrap(), ["/usr/sbin/service", "nginx"]);
        assert_eq!(
            job.argv(&args(&["reload"])).unwrap(),
            ["/usr/sbin/service", "nginx", "reload"]
        );
        assert_eq!(
            job.argv(&args(&["a b", "c"])).unwrap(),
            ["/usr/sbin/service", "nginx", "a b", "c"]
        );
        assert_eq!(
            job.display(&args(&["a", "b"])),
            "/usr/sbin/service nginx a b"
        );
        let mid = t("/bin/echo %s end");
        assert_eq!(
            mid.argv(&args(&["x", "y"])).unwrap(),
            ["/bin/echo", "x", "y", "end"]
        );
    }

    #[test]
    fn embedded_substitution() {
        assert!(JobTemplate::parse("/bin/echo --name=%s \"%s\"x").is_err());
        let job = t("/bin/echo --name=%s! tail");
        assert_eq!(
            job.argv(&args(&["a", "b"])).unwrap(),
            ["/bin/echo", "--name=a b!", "tail"]
        );
        assert_eq!(job.argv(&[]).unwrap(), ["/bin/echo", "--name=!", "tail"]);
        let quoted = t("/bin/echo \"%s\"");
        assert_eq!(
            quoted.argv(&args(&["a", "b"])).unwrap(),
            ["/bin/echo", "a b"]
        );
        assert_eq!(quoted.argv(&[]).unwrap(), ["/bin/echo", ""]);
        let pct = t("/bin/printf %%s:%s");
        assert_eq!(pct.argv(&args(&["v"])).unwrap(), ["/bin/printf", "%s:v"]);
    }

    #[test]
    fn hostile_args_are_data() {
        let job = t("/bin/echo %s");
        let hostile = args(&[
            "a;touch /tmp/pwned",
            "a\\;touch /tmp/pwned-exec",
            "x\ntouch /tmp/y",
            "$(id)",
            "`id`",
            "'\"",
            "*",
            "%s",
            "x --help",
        ]);
        let argv = job.argv(&hostile).unwrap();
        assert_eq!(argv[0], "/bin/echo");
        assert_eq!(&argv[1..], &hostile[..]);
        assert_eq!(
            job.argv(&args(&["ok", "a\0b"])),
            Err(JobError::Nul { index: 1 })
        );
    }

    #[test]
    fn leading_dash_is_refused_unless_allowed() {
        let date = t("/bin/date %s");
        assert_eq!(
            date.argv(&args(&["+%s", "-s", "2000-01-01"])),
            Err(JobError::Dash { index: 1 })
        );
        assert_eq!(
            t("/bin/echo x%s").argv(&args(&["--help"])),
            Err(JobError::Dash { index: 0 }),
            "embedded placeholders too"
        );
        assert_eq!(
            t("/bin/echo \"%s\"").argv(&args(&["-n"])),
            Err(JobError::Dash { index: 0 })
        );
        let dash = t("/bin/echo %-s");
        assert_eq!(
            dash.argv(&args(&["-n", "x"])).unwrap(),
            ["/bin/echo", "-n", "x"]
        );
        let err = date.argv(&args(&["-s"])).unwrap_err().to_string();
        assert!(err.contains("%-s"), "{err}");
    }

    #[test]
    fn character_sets() {
        let job = t("/usr/sbin/service nginx %s{a-z}");
        assert_eq!(
            job.argv(&args(&["reload"])).unwrap(),
            ["/usr/sbin/service", "nginx", "reload"]
        );
        assert_eq!(
            job.argv(&args(&["reload", "re.load"])),
            Err(JobError::Charset {
                index: 1,
                set: "a-z".into()
            })
        );
        let tag = t("/bin/echo tag=%s{a-zA-Z0-9._-}");
        assert_eq!(
            tag.argv(&args(&["v1.2_x-y"])).unwrap(),
            ["/bin/echo", "tag=v1.2_x-y"]
        );
        assert_eq!(
            tag.argv(&args(&["-x"])),
            Err(JobError::Dash { index: 0 }),
            "a '-' in the set does not allow a leading one"
        );
        assert_eq!(
            t("/bin/echo %-s{-a-z}").argv(&args(&["-abc"])).unwrap(),
            ["/bin/echo", "-abc"]
        );
        assert_eq!(
            tag.argv(&args(&["a b"])),
            Err(JobError::Charset {
                index: 0,
                set: "a-zA-Z0-9._-".into()
            })
        );
        assert_eq!(t("/bin/echo %s{é}").argv(&args(&["éé"])).unwrap().len(), 2);
        for bad in ["/bin/echo %s{a-z", "/bin/echo %s{}", "/bin/echo %s{z-a}"] {
            assert!(
                matches!(JobTemplate::parse(bad), Err(TemplateError::BadSet(_))),
                "{bad}"
            );
        }
        assert_eq!(
            JobTemplate::parse("/bin/echo %s{a} %-s"),
            Err(TemplateError::MultiplePlaceholders)
        );
        // `%%s` is a literal `%s`, not a placeholder.
        assert!(!t("/bin/printf %%s{a}").takes_args());
    }

    #[test]
    fn no_placeholder_ignores_args() {
        let job = t("/bin/true");
        assert!(!job.takes_args());
        assert_eq!(job.argv(&args(&["x"])).unwrap(), ["/bin/true"]);
        assert_eq!(job.template(), "/bin/true");
        assert_eq!(job.to_string(), "/bin/true");
    }

    #[test]
    fn jobs_file() {
        let jobs = Jobs::parse(
            "# jobs\n\
             early = /bin/true\n\
             [jobs]\n\
             service:echo = /bin/echo %s\n\
             service:nginx = /usr/sbin/service nginx %s\n\
             [other]\n\
             app:x = /bin/false\n\
             [jobs]\n\
             app:x = /bin/true %s\n",
            Path::new("/etc/deploy/exec.ini"),
        )
        .unwrap();
        assert_eq!(jobs.len(), 4);
        assert_eq!(
            jobs.names().collect::<Vec<_>>(),
            ["app:x", "early", "service:echo", "service:nginx"]
        );
        assert_eq!(
            jobs.get("app:x").unwrap().template(),
            "/bin/true %s",
            "later line wins"
        );
        assert!(jobs.get("service:.*").is_none(), "exact match, no regex");
        assert!(jobs.get("service").is_none());
        assert_eq!(
            jobs.get("service:echo")
                .unwrap()
                .display(&args(&["hello", "world"])),
            "/bin/echo hello world"
        );
    }

    #[test]
    fn jobs_file_errors() {
        for (text, want) in [
            (
                "[jobs]\nx = /bin/echo 'a\n",
                "/e/x.ini:2: [jobs] x: unbalanced ' quote in template \"/bin/echo 'a\"",
            ),
            ("[jobs]\n\nx =\n", "/e/x.ini:3: [jobs] x: empty template in template \"\""),
            (
                "[jobs]\nx[] = /bin/true\n",
                "/e/x.ini:2: [jobs] x[]: is a single value: write `x = …`",
            ),
            (
                "[jobs]\na,b = /bin/true\n",
                "/e/x.ini:2: [jobs] a,b: job names cannot contain ',' or '|' (they separate an exec order's arguments)",
            ),
            (
                "[jobs]\nx = /bin/echo %s %s\n",
                "/e/x.ini:2: [jobs] x: more than one %s in template \"/bin/echo %s %s\"",
            ),
        ] {
            let err = Jobs::parse(text, Path::new("/e/x.ini")).unwrap_err();
            assert_eq!(err.to_string(), want, "{text:?}");
        }
    }
}
