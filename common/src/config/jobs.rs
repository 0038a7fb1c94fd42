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
}

/// One piece of a word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Literal text.
    Text(String),
    /// `%s` inside a word: the arguments joined with spaces.
    Args,
}

/// One word of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    /// A bare `%s` word: the arguments, one argv element each.
    Splat,
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
        let words: Vec<Word> = split_words(template)?
            .into_iter()
            .map(|(text, bare)| match (bare, text.as_str()) {
                (true, "%s") => Word::Splat,
                _ => Word::Pieces(percent_pieces(&text)),
            })
            .collect();
        let placeholders: usize = words
            .iter()
            .map(|w| match w {
                Word::Splat => 1,
                Word::Pieces(p) => p.iter().filter(|p| **p == Piece::Args).count(),
            })
            .sum();
        if placeholders > 1 {
            return Err(TemplateError::MultiplePlaceholders);
        }
        match words.first() {
            None => return Err(TemplateError::Empty),
            Some(Word::Splat) => return Err(TemplateError::PlaceholderInProgram),
            Some(Word::Pieces(p)) if p.contains(&Piece::Args) => {
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
        self.words.iter().any(|w| match w {
            Word::Splat => true,
            Word::Pieces(p) => p.contains(&Piece::Args),
        })
    }

    /// The argument vector to execute (program first) with `args` substituted.
    pub fn argv(&self, args: &[String]) -> Result<Vec<String>, JobError> {
        if let Some(index) = args.iter().position(|a| a.contains('\0')) {
            return Err(JobError::Nul { index });
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
                Word::Splat => argv.extend(args.iter().cloned()),
                Word::Pieces(pieces) => {
                    let mut s = String::new();
                    for piece in pieces {
                        match piece {
                            Piece::Text(t) => s.push_str(t),
                            Piece::Args => s.push_str(&args.join(" ")),
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

/// `%%` → `%`, `%s` → [`Piece::Args`], other `%x` kept as written.
fn percent_pieces(text: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('%', Some('%')) => {
                chars.next();
                lit.push('%');
            }
            ('%', Some('s')) => {
                chars.next();
                pieces.push(Piece::Text(std::mem::take(&mut lit)));
                pieces.push(Piece::Args);
            }
            (c, _) => lit.push(c),
        }
    }
    pieces.push(Piece::Text(lit));
    pieces.retain(|p| *p != Piece::Text(String::new()));
    if pieces.is_empty() {
        pieces.push(Piece::Text(String::new()));
    }
    pieces
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
            "--help",
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
