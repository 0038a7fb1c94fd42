//! Where an order goes: a host name or address and a TCP port, parsed from what the user
//! wrote.
//!
//! Accepted forms (`P` = the caller's default port):
//!
//! ```text
//! host            web01.example.com          → web01.example.com, P
//! host:port       web01:3440                 → web01, 3440
//! IPv4            10.0.0.1                   → 10.0.0.1, P
//! IPv4:port       10.0.0.1:99                → 10.0.0.1, 99
//! [IPv6]          [::1]                      → ::1, P
//! [IPv6]:port     [::1]:99                   → ::1, 99
//! bare IPv6       fe80::1                    → fe80::1, P   (no port possible)
//! ssh://[user@]host[:port]   ssh://root@web01:2222   → SSH to web01, 2222, as root
//! nats://name                 nats://web01            → the agent serving deploy.agent.web01 over NATS
//! ```
//!
//! A host written with the `ssh://` scheme is reached over SSH (port 22 unless given;
//! the user is optional, the SSH configuration or the local user supply it), any other
//! host is a deploy agent ([`Scheme`]).
//!
//! # Names in output
//!
//! The original keyed every result by the host exactly as given, without a port (the
//! port was one global flag). [`Target`]'s `Display` keeps that: the bare host when the
//! port is the default one, `host:port` (`[v6]:port`) only when the user asked for
//! another port, so that two targets on one host stay apart. That string is the key of
//! the host in every output format. An SSH target is shown exactly as the user wrote it
//! (`ssh://root@web01`), so that it cannot be mistaken for an agent of the same name.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest host name accepted (the DNS limit).
const MAX_HOST_LEN: usize = 253;

/// How a target is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scheme {
    /// A deploy agent (or proxy), over its own protocol.
    #[default]
    Agent,
    /// Any SSH server, agentless (`ssh://`).
    Ssh,
    /// A deploy agent reached over NATS by its subject name (`nats://name`).
    Nats,
}

/// The URL scheme of agents reached over NATS.
pub const NATS_PREFIX: &str = "nats://";

/// The URL scheme of SSH targets.
pub const SSH_PREFIX: &str = "ssh://";

/// The SSH port used when an `ssh://` target names none.
pub const SSH_DEFAULT_PORT: u16 = 22;

/// One destination of an order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name or IP address, without brackets. For SSH, possibly an alias of the
    /// SSH configuration (`Host` entry).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// How the target is reached.
    pub scheme: Scheme,
    /// SSH: the user written before `@`, if any.
    pub user: Option<String>,
    /// Whether `Display` shows the port (it differs from the default one).
    show_port: bool,
    /// Whether the specification named the port.
    port_given: bool,
    /// SSH: the specification as written (trimmed), which `Display` shows.
    spelling: Option<String>,
}

/// A host specification that could not be parsed; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad host {spec:?}: {reason}")]
pub struct TargetError {
    /// The specification as given.
    pub spec: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Target {
    /// A target shown by its host alone (the port is implied, as in the original, whose
    /// proxy contacted every agent on one port).
    pub fn new(host: impl Into<String>, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
            scheme: Scheme::Agent,
            user: None,
            show_port: false,
            port_given: false,
            spelling: None,
        }
    }

    /// Whether the specification named the port (an SSH configuration's `Port` applies
    /// only when it did not).
    pub fn port_given(&self) -> bool {
        self.port_given
    }

    /// Parses one host specification (see the module documentation). Surrounding
    /// whitespace is ignored.
    pub fn parse(spec: &str, default_port: u16) -> Result<Target, TargetError> {
        let bad = |reason: &str| TargetError {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let s = spec.trim();
        if s.is_empty() {
            return Err(bad("empty host"));
        }
        if let Some(rest) = strip_prefix_ignore_case(s, SSH_PREFIX) {
            let (user, rest) = match rest.rsplit_once('@') {
                Some((user, rest)) => {
                    check_user(user).map_err(|reason| bad(&reason))?;
                    (Some(user.to_owned()), rest)
                }
                None => (None, rest),
            };
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let mut target = Target::parse(rest, SSH_DEFAULT_PORT).map_err(|e| TargetError {
                spec: spec.to_owned(),
                reason: e.reason,
            })?;
            target.scheme = Scheme::Ssh;
            target.user = user;
            target.spelling = Some(s.to_owned());
            return Ok(target);
        }
        if let Some(name) = strip_prefix_ignore_case(s, NATS_PREFIX) {
            let name = name.strip_suffix('/').unwrap_or(name);
            if name.is_empty()
                || name.len() > 200
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/'))
            {
                return Err(bad(
                    "a NATS agent name: no '.', '*', '>', '/' or spaces (nats://name)",
                ));
            }
            return Ok(Target {
                host: name.to_owned(),
                port: 0,
                scheme: Scheme::Nats,
                user: None,
                show_port: false,
                port_given: false,
                spelling: Some(format!("{NATS_PREFIX}{name}")),
            });
        }
        if s.contains("://") {
            return Err(bad("unknown scheme (only ssh:// and nats:// are known)"));
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']' after an IPv6 address"))?;
            if inside.parse::<Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between '[' and ']'"));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("expected ':port' after ']'"))?,
                ),
            };
            (inside, port)
        } else if s.matches(':').count() > 1 {
            if s.parse::<Ipv6Addr>().is_err() {
                return Err(bad(
                    "not an IPv6 address (write [address]:port to give a port)",
                ));
            }
            (s, None)
        } else {
            match s.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (s, None),
            }
        };
        if !host.contains(':') {
            check_name(host).map_err(|reason| bad(&reason))?;
        }
        let port_given = port.is_some();
        let port = match port {
            None => default_port,
            Some(p) => parse_port(p).map_err(|reason| bad(&reason))?,
        };
        Ok(Target {
            host: host.to_owned(),
            port,
            scheme: Scheme::Agent,
            user: None,
            show_port: port != default_port,
            port_given,
            spelling: None,
        })
    }

    /// `host:port` for connecting and for messages, with brackets around IPv6 addresses.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `s` without `prefix`, compared without regard to ASCII case.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// Checks an SSH user name: not empty, at most 64 bytes, no blanks, controls, `@`,
/// `/` or `:`.
fn check_user(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("empty user before '@'".to_owned());
    }
    if user.len() > 64 {
        return Err("user name longer than 64 characters".to_owned());
    }
    if let Some(c) = user
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '/' | ':'))
    {
        return Err(format!("invalid character {c:?} in user name"));
    }
    Ok(())
}

fn parse_port(p: &str) -> Result<u16, String> {
    if p.is_empty() {
        return Err("empty port".to_owned());
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {p:?} is not a number"));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {p} is not in 1-65535")),
        Ok(port) => Ok(port),
    }
}

/// Checks a host name or IPv4 address: letters, digits, `-`, `_` and `.`, with no empty
/// label, and an all-numeric name must be a valid IPv4 address.
fn check_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host".to_owned());
    }
    if host.len() > MAX_HOST_LEN {
        return Err(format!("host name longer than {MAX_HOST_LEN} characters"));
    }
    if let Some(c) = host
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("invalid character {c:?} in host name"));
    }
    if host.split('.').any(str::is_empty) {
        return Err("empty label in host name".to_owned());
    }
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if numeric && host.parse::<Ipv4Addr>().is_err() {
        return Err("not a valid IPv4 address".to_owned());
    }
    Ok(())
}

impl fmt::Display for Target {
    /// The host as the user named it: `host` with the default port, else `host:port`
    /// (`[v6]:port`); an SSH target exactly as written (`ssh://user@host:port`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(spelling) = &self.spelling {
            f.write_str(spelling)
        } else if self.show_port {
            f.write_str(&self.address())
        } else {
            f.write_str(&self.host)
        }
    }
}

/// Expands `%h` (host as written), `%p` (port; 22 for SSH hosts written without one),
/// `%%` and the `extra` tokens in `template` (lock files, upload roots: hosts that share
/// a file system can each have their own path); an unknown `%x` is kept as written.
pub fn expand(template: &str, target: &Target, extra: &[(char, &str)]) -> String {
    let port = target.port;
    let mut out = String::with_capacity(template.len() + 16);
    let mut chars = template.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(&target.host),
            Some('p') => out.push_str(&port.to_string()),
            Some(token) => match extra.iter().find(|(t, _)| *t == token) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push('%');
                    out.push(token);
                }
            },
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> (String, u16, String) {
        let t = Target::parse(spec, 3441).unwrap();
        (t.host.clone(), t.port, t.to_string())
    }

    #[test]
    fn accepted_forms() {
        let s = |a: &str, p: u16, d: &str| (a.to_owned(), p, d.to_owned());
        assert_eq!(ok("web01"), s("web01", 3441, "web01"));
        assert_eq!(
            ok(" web01.example.com "),
            s("web01.example.com", 3441, "web01.example.com")
        );
        assert_eq!(ok("web01:3440"), s("web01", 3440, "web01:3440"));
        assert_eq!(ok("web01:3441"), s("web01", 3441, "web01"));
        assert_eq!(ok("1.2.3.4"), s("1.2.3.4", 3441, "1.2.3.4"));
        assert_eq!(ok("1.2.3.4:99"), s("1.2.3.4", 99, "1.2.3.4:99"));
        assert_eq!(ok("[::1]"), s("::1", 3441, "::1"));
        assert_eq!(ok("[::1]:99"), s("::1", 99, "[::1]:99"));
        assert_eq!(ok("::1"), s("::1", 3441, "::1"));
        assert_eq!(ok("fe80::1:2"), s("fe80::1:2", 3441, "fe80::1:2"));
        assert_eq!(Target::parse("[::1]", 1).unwrap().address(), "[::1]:1");
        assert_eq!(Target::new("h", 5).to_string(), "h");
        assert_eq!(Target::new("h", 5).address(), "h:5");
    }

    #[test]
    fn ssh_targets() {
        let t = Target::parse(" ssh://root@web01:2222 ", 3441).unwrap();
        assert_eq!(
            (t.scheme, t.user.as_deref(), t.host.as_str(), t.port),
            (Scheme::Ssh, Some("root"), "web01", 2222)
        );
        assert!(t.port_given());
        assert_eq!(t.to_string(), "ssh://root@web01:2222");
        let t = Target::parse("SSH://h1", 3441).unwrap();
        assert_eq!((t.scheme, t.user.clone(), t.port), (Scheme::Ssh, None, 22));
        assert!(!t.port_given());
        assert_eq!(t.to_string(), "SSH://h1");
        let t = Target::parse("ssh://u@[::1]:99", 1).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 99));
        assert_eq!(t.address(), "[::1]:99");
        let t = Target::parse("h1", 3441).unwrap();
        assert_eq!((t.scheme, t.user.clone()), (Scheme::Agent, None));
        assert!(!t.port_given());
        assert!(Target::parse("h1:3441", 3441).unwrap().port_given());
    }

    #[test]
    fn rejected_forms_name_the_spec() {
        for spec in [
            "",
            " ",
            ":99",
            "h:",
            "h:0",
            "h:65536",
            "h:x",
            "h:9:9",
            "[::1",
            "[x]:1",
            "[::1]99",
            "a b",
            "a..b",
            "1.2.3.999",
            "h/x",
            "::g",
            "[::1]:",
            "ssh://",
            "ssh://@h",
            "ssh://a b@h",
            "ssh://u@h:0",
            "ssh://u@",
            "http://h",
        ] {
            let e = Target::parse(spec, 3441).unwrap_err();
            assert_eq!(e.spec, spec);
            assert!(e.to_string().contains(&format!("{spec:?}")), "{e}");
        }
    }
}
