//! The OpenSSH client configuration (`~/.ssh/config`, or the file of `-F`): the subset
//! that decides where and as whom to connect.
//!
//! ```text
//! # comment
//! Host web?? !web13 *.example.com     # patterns: * and ?, ! negates; any positive match
//!     HostName 10.0.0.%h              # and no negative one selects the block
//!     User deploy
//!     Port 2222
//!     IdentityFile ~/.ssh/deploy_ed25519   # repeatable; ~ and %d %u %h %r %p %% expand
//!     ProxyJump bastion,ssh://root@10.1.0.1:2200   # or `none`
//!     ProxyCommand nc %h %p           # `sh -c`, its stdio the connection (or `none`)
//!     ForwardAgent yes                # ssh-agent forwarded (when SSH_AUTH_SOCK is set)
//!     UserKnownHostsFile ~/.ssh/known_hosts.d/%h   # the first file: checked, appended to
//!     StrictHostKeyChecking accept-new             # yes|ask (refuse), accept-new, no|off
//! Include config.d/*                  # relative to ~/.ssh; inlined where it stands
//! Match all                           # `Match all` and `Match host a,b` are understood;
//!     User fallback                   # any other Match block is skipped
//! ```
//!
//! As in OpenSSH, keywords are case-insensitive, `Keyword=value` is accepted, and for
//! each keyword the first value obtained wins (so specific blocks go first and `Host *`
//! last); `IdentityFile` accumulates. Other keywords are ignored, each named once in a
//! warning ([`SshConfig::unsupported`]). Command-line flags (`--known-hosts`,
//! `--accept-new-host-keys`) win over the file.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};

use super::SshError;

/// Longest configuration file read (a config larger than this is surely a mistake).
const MAX_CONFIG: u64 = 4 << 20;

/// Deepest chain of `Include`s followed (OpenSSH's limit too).
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads a configuration file, at most [`MAX_CONFIG`] bytes of it.
fn read(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut text = String::new();
    file.take(MAX_CONFIG).read_to_string(&mut text)?;
    Ok(text)
}

/// The files an `Include` word names: `~/` is `home`, a relative path is under
/// `~/.ssh` (as for the user's configuration in OpenSSH), and `*`/`?` in the last
/// component match file names, in sorted order.
fn include_files(word: &str, home: &Path) -> Vec<PathBuf> {
    let path = match word.strip_prefix("~/") {
        Some(rest) => home.join(rest),
        None if Path::new(word).is_absolute() => PathBuf::from(word),
        None => home.join(".ssh").join(word),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.contains(['*', '?']) {
        return vec![path];
    }
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| glob(&name, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// The keywords this client follows; any other is warned about (once) and ignored.
const UNDERSTOOD: &[&str] = &[
    "host",
    "match",
    "include",
    "hostname",
    "user",
    "port",
    "identityfile",
    "proxyjump",
    "proxycommand",
    "forwardagent",
    "userknownhostsfile",
    "stricthostkeychecking",
];

/// A parsed configuration file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SshConfig {
    blocks: Vec<Block>,
    /// Keywords not followed: each once, where first seen (file, line).
    unsupported: Vec<(String, PathBuf, usize)>,
}

/// `StrictHostKeyChecking`: what to do with a host key in no known_hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeys {
    /// `yes`, `ask` (nobody is asked: refused, as `yes`).
    Refuse,
    /// `accept-new`: recorded, then trusted.
    AcceptNew,
    /// `no`, `off`: recorded, then trusted (a changed key is refused regardless).
    No,
}

/// One `Host`/`Match` block (the lines before the first one form a block that matches
/// every host).
#[derive(Debug, Clone, PartialEq)]
struct Block {
    /// Which hosts it applies to.
    selector: Selector,
    /// `(keyword in lower case, value)`, in file order.
    params: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Selector {
    /// Every host (the top of the file, `Match all`).
    All,
    /// `Host` patterns, or `Match host` patterns.
    Patterns(Vec<Pattern>),
    /// A `Match` this parser does not understand: never selected.
    Never,
}

#[derive(Debug, Clone, PartialEq)]
struct Pattern {
    negated: bool,
    glob: String,
}

/// What the configuration says about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `HostName`, with `%h` expanded.
    pub host_name: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Port`.
    pub port: Option<u16>,
    /// `IdentityFile`s, unexpanded (see [`expand_path`]).
    pub identity_files: Vec<String>,
    /// `ProxyJump`: the jump hosts, outermost first (empty for none).
    pub proxy_jump: Vec<String>,
    /// `ProxyCommand`, unexpanded (`%h`, `%p`, `%r`, `%%`); `None` for none.
    pub proxy_command: Option<String>,
    /// `ForwardAgent yes`.
    pub forward_agent: bool,
    /// `UserKnownHostsFile` (its first file), unexpanded (see [`expand_path`]).
    pub known_hosts: Option<String>,
    /// `StrictHostKeyChecking`.
    pub strict_host_keys: Option<StrictHostKeys>,
}

impl SshConfig {
    /// Reads and parses `path` and the files it includes (`~` is `home`); a missing
    /// file is an empty configuration when `optional`.
    pub fn load(path: &Path, optional: bool, home: &Path) -> Result<SshConfig, SshError> {
        let mut config = SshConfig::starting();
        match read(path) {
            Ok(text) => config.add(&text, path, Some(home), 0)?,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(cause) => {
                return Err(SshError::Read {
                    path: path.to_owned(),
                    cause,
                })
            }
        }
        Ok(config)
    }

    /// Parses the text of a configuration file; `path` names it in errors. `Include`
    /// lines are ignored (see [`SshConfig::load`]).
    pub fn parse(text: &str, path: &Path) -> Result<SshConfig, SshError> {
        let mut config = SshConfig::starting();
        config.add(text, path, None, 0)?;
        Ok(config)
    }

    /// A configuration with only the block of the lines before any `Host`.
    fn starting() -> SshConfig {
        SshConfig {
            blocks: vec![Block {
                selector: Selector::All,
                params: Vec::new(),
            }],
            unsupported: Vec::new(),
        }
    }

    /// Adds the lines of one file; `Include`d files are read when `home` is given.
    fn add(
        &mut self,
        text: &str,
        path: &Path,
        home: Option<&Path>,
        depth: usize,
    ) -> Result<(), SshError> {
        let bad = |line: usize, reason: String| SshError::Config {
            path: path.to_owned(),
            line,
            reason,
        };
        for (number, raw) in text.lines().enumerate() {
            let number = number + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let split = line
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(line.len());
            let (keyword, rest) = line.split_at(split);
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('=').unwrap_or(rest).trim();
            let keyword = keyword.to_ascii_lowercase();
            let words = split_words(rest).map_err(|reason| bad(number, reason))?;
            match keyword.as_str() {
                "host" => {
                    if words.is_empty() {
                        return Err(bad(number, "Host needs at least one pattern".into()));
                    }
                    self.blocks.push(Block {
                        selector: Selector::Patterns(words.iter().map(|w| pattern(w)).collect()),
                        params: Vec::new(),
                    });
                }
                "match" => self.blocks.push(Block {
                    selector: match_selector(&words),
                    params: Vec::new(),
                }),
                "include" => {
                    let Some(home) = home else { continue };
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(bad(number, "Include nested too deeply".into()));
                    }
                    for word in &words {
                        for file in include_files(word, home) {
                            match read(&file) {
                                Ok(text) => self.add(&text, &file, Some(home), depth + 1)?,
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(cause) => return Err(SshError::Read { path: file, cause }),
                            }
                        }
                    }
                    continue;
                }
                _ => {
                    let Some(value) = words.first() else {
                        return Err(bad(number, format!("{keyword} needs a value")));
                    };
                    if keyword == "port" {
                        parse_port(value).map_err(|reason| bad(number, reason))?;
                    }
                    if keyword == "stricthostkeychecking" {
                        strict(value).map_err(|reason| bad(number, reason))?;
                    }
                    if keyword == "forwardagent" {
                        yes_no(value).map_err(|reason| bad(number, reason))?;
                    }
                    if !UNDERSTOOD.contains(&keyword.as_str())
                        && !self.unsupported.iter().any(|(k, _, _)| *k == keyword)
                    {
                        self.unsupported
                            .push((keyword.clone(), path.to_owned(), number));
                    }
                    let value = match keyword.as_str() {
                        "proxyjump" => words.join(" "),
                        // A command line for `sh -c`, as written.
                        "proxycommand" => rest.to_owned(),
                        _ => value.clone(),
                    };
                    if let Some(block) = self.blocks.last_mut() {
                        block.params.push((keyword, value));
                    }
                }
            }
        }
        Ok(())
    }

    /// What the configuration says about `host` (the name as written by the user).
    pub fn resolve(&self, host: &str) -> HostConfig {
        let name = host.to_ascii_lowercase();
        let mut out = HostConfig::default();
        let (mut host_name, mut user, mut port, mut jump) = (None, None, None, None);
        let (mut command, mut forward, mut known, mut checking) = (None, None, None, None);
        for block in self.blocks.iter().filter(|b| b.selector.selects(&name)) {
            for (keyword, value) in &block.params {
                match keyword.as_str() {
                    "hostname" => {
                        host_name.get_or_insert_with(|| value.replace("%h", host));
                    }
                    "user" => {
                        user.get_or_insert_with(|| value.clone());
                    }
                    "port" if port.is_none() => port = parse_port(value).ok(),
                    "identityfile" => out.identity_files.push(value.clone()),
                    "proxyjump" => {
                        jump.get_or_insert_with(|| value.clone());
                    }
                    "proxycommand" => {
                        command.get_or_insert_with(|| value.clone());
                    }
                    "forwardagent" if forward.is_none() => forward = yes_no(value).ok(),
                    "userknownhostsfile" => {
                        known.get_or_insert_with(|| value.clone());
                    }
                    "stricthostkeychecking" if checking.is_none() => {
                        checking = strict(value).ok();
                    }
                    _ => {}
                }
            }
        }
        out.host_name = host_name;
        out.user = user;
        out.port = port;
        out.proxy_command = command.filter(|c| !c.eq_ignore_ascii_case("none"));
        out.forward_agent = forward.unwrap_or(false);
        out.known_hosts = known.filter(|k| !k.eq_ignore_ascii_case("none"));
        out.strict_host_keys = checking;
        out.proxy_jump = match jump {
            Some(j) if !j.eq_ignore_ascii_case("none") => j
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        out
    }
}

impl SshConfig {
    /// The keywords this client does not follow, each once with where it was first
    /// seen, for a warning.
    pub fn unsupported(&self) -> &[(String, PathBuf, usize)] {
        &self.unsupported
    }
}

/// `StrictHostKeyChecking`'s value.
fn strict(value: &str) -> Result<StrictHostKeys, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "ask" => Ok(StrictHostKeys::Refuse),
        "accept-new" => Ok(StrictHostKeys::AcceptNew),
        "no" | "off" => Ok(StrictHostKeys::No),
        _ => Err(format!(
            "StrictHostKeyChecking {value:?}: yes, ask, accept-new, no or off"
        )),
    }
}

/// A `yes`/`no` value.
fn yes_no(value: &str) -> Result<bool, String> {
    match value.to_ascii_lowercase().as_str() {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("{value:?}: yes or no")),
    }
}

impl Selector {
    fn selects(&self, name: &str) -> bool {
        match self {
            Selector::All => true,
            Selector::Never => false,
            Selector::Patterns(patterns) => {
                let mut matched = false;
                for p in patterns {
                    if glob(&p.glob, name) {
                        if p.negated {
                            return false;
                        }
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

fn pattern(word: &str) -> Pattern {
    let (negated, glob) = match word.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, word),
    };
    Pattern {
        negated,
        glob: glob.to_ascii_lowercase(),
    }
}

/// `Match all`, `Match host a,b` (or `Match host a b`); anything else never matches.
fn match_selector(words: &[String]) -> Selector {
    match words {
        [all] if all.eq_ignore_ascii_case("all") => Selector::All,
        [host, patterns @ ..] if host.eq_ignore_ascii_case("host") && !patterns.is_empty() => {
            Selector::Patterns(
                patterns
                    .iter()
                    .flat_map(|p| p.split(','))
                    .filter(|p| !p.is_empty())
                    .map(pattern)
                    .collect(),
            )
        }
        _ => {
            tracing::debug!(criteria = ?words, "ssh config: Match block not understood; skipped");
            Selector::Never
        }
    }
}

/// Splits a value into words: blanks separate, double quotes group.
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err("unbalanced quotes".into());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn parse_port(value: &str) -> Result<u16, String> {
    match value.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("bad port {value:?}")),
    }
}

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one character).
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// The values `%`-tokens and `~` expand to.
#[derive(Debug, Clone)]
pub struct Tokens<'a> {
    /// The local home directory (`~`, `%d`).
    pub home: &'a Path,
    /// The local user (`%u`).
    pub local_user: &'a str,
    /// The host name connected to (`%h`).
    pub host: &'a str,
    /// The remote user (`%r`).
    pub user: &'a str,
    /// The port (`%p`).
    pub port: u16,
}

/// Expands a leading `~/` and the tokens `%d %u %h %r %p %%` of a path.
pub fn expand_path(raw: &str, tokens: &Tokens<'_>) -> PathBuf {
    let home = tokens.home.to_string_lossy();
    let mut out = String::new();
    let rest = match raw.strip_prefix("~/") {
        Some(rest) => {
            out.push_str(&home);
            out.push('/');
            rest
        }
        None if raw == "~" => return tokens.home.to_owned(),
        None => raw,
    };
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&home),
            Some('u') => out.push_str(tokens.local_user),
            Some('h') => out.push_str(tokens.host),
            Some('r') => out.push_str(tokens.user),
            Some('p') => out.push_str(&tokens.port.to_string()),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    PathBuf::from(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# top
IdentityFile ~/.ssh/top_key

Host web?? !web13
    HostName 10.0.0.%h
    User=deploy
Host web* *.example.com
    Port 2222
    User other
    IdentityFile \"~/.ssh/with space\"
    ProxyJump bastion, ssh://root@10.1.0.1:2200
Match exec \"true\"
    User never
Match host db1,db2
    Port 5022
Host direct
    ProxyJump none
Match all
    User fallback
    ProxyJump everyone
";

    fn config() -> SshConfig {
        SshConfig::parse(TEXT, Path::new("cfg")).unwrap()
    }

    #[test]
    fn first_value_wins_and_identities_accumulate() {
        let c = config().resolve("web01");
        assert_eq!(c.host_name.as_deref(), Some("10.0.0.web01"));
        assert_eq!(c.user.as_deref(), Some("deploy"));
        assert_eq!(c.port, Some(2222));
        assert_eq!(c.identity_files, ["~/.ssh/top_key", "~/.ssh/with space"]);
        assert_eq!(c.proxy_jump, ["bastion", "ssh://root@10.1.0.1:2200"]);
    }

    #[test]
    fn negation_match_and_none() {
        let c = config().resolve("WEB13");
        assert_eq!(c.host_name, None);
        assert_eq!(c.user.as_deref(), Some("other"));
        let c = config().resolve("db2");
        assert_eq!((c.port, c.user.as_deref()), (Some(5022), Some("fallback")));
        assert_eq!(config().resolve("direct").proxy_jump, Vec::<String>::new());
        assert_eq!(config().resolve("x").proxy_jump, ["everyone"]);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = SshConfig::parse("Host a\n  Port x\n", Path::new("f")).unwrap_err();
        assert_eq!(e.to_string(), "f:2: bad port \"x\"");
        let e = SshConfig::parse("User \"x\n", Path::new("f")).unwrap_err();
        assert!(e.to_string().contains("f:1"), "{e}");
        assert!(SshConfig::parse("Host\n", Path::new("f")).is_err());
    }

    #[test]
    fn includes_are_inlined() {
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir_all(ssh.join("config.d")).unwrap();
        std::fs::write(ssh.join("config.d/b.conf"), "Host b\n  Port 2\n").unwrap();
        std::fs::write(
            ssh.join("config.d/a.conf"),
            "Host a\n  Port 1\nHost b\n User first\n",
        )
        .unwrap();
        std::fs::write(ssh.join("self"), "Include ~/.ssh/self\n").unwrap();
        let main = ssh.join("config");
        std::fs::write(
            &main,
            "Include config.d/*.conf missing\nHost *\n  User any\n",
        )
        .unwrap();
        let c = SshConfig::load(&main, false, home.path()).unwrap();
        assert_eq!(c.resolve("a").port, Some(1));
        assert_eq!(c.resolve("b").port, Some(2));
        assert_eq!(c.resolve("b").user.as_deref(), Some("first"));
        assert_eq!(c.resolve("c").user.as_deref(), Some("any"));
        let e = SshConfig::load(&ssh.join("self"), false, home.path()).unwrap_err();
        assert!(e.to_string().contains("nested too deeply"), "{e}");
        assert!(SshConfig::load(&ssh.join("none"), false, home.path()).is_err());
        assert_eq!(
            SshConfig::load(&ssh.join("none"), true, home.path()).unwrap(),
            SshConfig::starting()
        );
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*b?c", "axxbyc"));
        assert!(glob("*.example.com", "a.b.example.com"));
        assert!(!glob("web??", "web1"));
        assert!(!glob("a*b", "acbd"));
        assert!(glob("**a", "ba"));
    }

    #[test]
    fn tokens() {
        let t = Tokens {
            home: Path::new("/home/me"),
            local_user: "me",
            host: "h",
            user: "r",
            port: 22,
        };
        assert_eq!(
            expand_path("~/.ssh/%r@%h:%p-%u-%d%%%x", &t),
            PathBuf::from("/home/me/.ssh/r@h:22-me-/home/me%%x")
        );
        assert_eq!(expand_path("/abs", &t), PathBuf::from("/abs"));
    }
}
