//! `--options` → [`RsyncSpec`]: the group lookup and inline `dest,src` of spec §4.1.
//!
//! The original accepted anything and pasted it into a shell line. Here the values are
//! validated instead, because the agent runs as root and `options` comes from the network:
//!
//! * `dest` (the rsync *source*) must be an rsync daemon source, `host::module[/path]` or
//!   `rsync://host[:port]/module[/path]`. A local path or an ssh-style `host:path` would
//!   let a caller copy arbitrary local (or ssh-reachable) files into an allowed target;
//!   a leading `-` would be read as an option.
//! * `src` (the local target) must be absolute.
//! * Neither may contain control characters (NUL, newline, …).
//!
//! Runs of `/` are collapsed as the original did, except in the `rsync://` prefix, which
//! the original mangled into `rsync:/` (§4.1); we keep such URLs working.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{OptionsError, RsyncSpec, DEFAULT_RSYNC};
use crate::config::agent::RsyncGroup;

const URL_SCHEME: &str = "rsync://";

/// Resolve an `options` value against the configured `[rsync::group::*]` sections.
///
/// If `options` contains `,` or `|` it is split on them: element 0 is `dest`, element 1
/// `src`, further elements are ignored, and no group settings apply (default binary and
/// flags). Otherwise it names a group. An unknown group, or an empty `dest`/`src`, is
/// [`OptionsError::Empty`]; see the module docs for the other checks.
pub fn resolve(
    options: &str,
    groups: &BTreeMap<String, RsyncGroup>,
) -> Result<RsyncSpec, OptionsError> {
    let spec = if options.contains([',', '|']) {
        let mut parts = options.split([',', '|']);
        let dest = parts.next().unwrap_or_default();
        let src = parts.next().unwrap_or_default();
        RsyncSpec {
            rsync: PathBuf::from(DEFAULT_RSYNC),
            dest: dest.to_owned(),
            src: src.to_owned(),
            rsh: None,
            exclude: Vec::new(),
            include: Vec::new(),
            option: Vec::new(),
            default_flags: true,
        }
    } else {
        let group = groups.get(options).ok_or(OptionsError::Empty)?;
        let rsync = if group.rsync.as_os_str().is_empty() {
            PathBuf::from(DEFAULT_RSYNC)
        } else {
            group.rsync.clone()
        };
        RsyncSpec {
            rsync,
            dest: group.dest.clone(),
            src: group.src.clone(),
            rsh: group.rsh.clone().filter(|r| !r.is_empty()),
            exclude: group.exclude.clone(),
            include: group.include.clone(),
            option: group.option.clone(),
            default_flags: group.option.is_empty(),
        }
    };
    if spec.dest.is_empty() || spec.src.is_empty() {
        return Err(OptionsError::Empty);
    }
    let dest = collapse_source(&spec.dest);
    let src = collapse_slashes(&spec.src);
    validate_source(&dest)?;
    validate_target(&src)?;
    Ok(RsyncSpec { dest, src, ..spec })
}

/// Collapse runs of `/` into one.
fn collapse_slashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_slash = false;
    for c in s.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    out
}

/// [`collapse_slashes`], leaving an `rsync://` scheme prefix intact.
fn collapse_source(s: &str) -> String {
    match split_scheme(s) {
        Some((scheme, rest)) => format!("{scheme}{}", collapse_slashes(rest)),
        None => collapse_slashes(s),
    }
}

/// `rsync://` (any case) and the rest, if `s` starts with it.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let scheme = s.get(..URL_SCHEME.len())?;
    if scheme.eq_ignore_ascii_case(URL_SCHEME) {
        Some((scheme, s.get(URL_SCHEME.len()..)?))
    } else {
        None
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Accept only `[user@]host::module[/path]` and `rsync://[user@]host[:port]/module[/path]`.
fn validate_source(dest: &str) -> Result<(), OptionsError> {
    let bad = || OptionsError::BadSource(dest.to_owned());
    if dest.starts_with('-') || has_control(dest) {
        return Err(bad());
    }
    let module_path = if let Some((_, rest)) = split_scheme(dest) {
        let (authority, path) = rest.split_once('/').ok_or_else(bad)?;
        let (_, hostport) = split_user(authority).ok_or_else(bad)?;
        // `port` is everything after the host: empty, or `:` and the port number.
        let port = if let Some(inner) = hostport.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(bad)?;
            if !valid_ipv6(host) {
                return Err(bad());
            }
            after
        } else {
            let host_end = hostport.find(':').unwrap_or(hostport.len());
            let (host, after) = hostport.split_at_checked(host_end).ok_or_else(bad)?;
            if !valid_hostname(host) {
                return Err(bad());
            }
            after
        };
        if !port.is_empty() {
            let digits = port.strip_prefix(':').ok_or_else(bad)?;
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match digits.parse::<u16>() {
                Ok(p) if p > 0 => {}
                _ => return Err(bad()),
            }
        }
        path
    } else {
        let (_, hostpart) = split_user(dest).ok_or_else(bad)?;
        if let Some(inner) = hostpart.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(bad)?;
            if !valid_ipv6(host) {
                return Err(bad());
            }
            after.strip_prefix("::").ok_or_else(bad)?
        } else {
            let (host, module) = hostpart.split_once("::").ok_or_else(bad)?;
            if !valid_hostname(host) {
                return Err(bad());
            }
            module
        }
    };
    let module = module_path.split('/').next().unwrap_or_default();
    if module.is_empty() {
        return Err(bad());
    }
    Ok(())
}

/// Split an optional `user@` off the front of the host part. `None` if the user is empty
/// or the `@` lies beyond the host part.
fn split_user(s: &str) -> Option<(Option<&str>, &str)> {
    // Only an '@' before any '/', '[' or "::" belongs to the host part.
    let end = s.find(['/', '[']).unwrap_or(s.len());
    let end = s.find("::").map_or(end, |e| e.min(end));
    match s.get(..end).and_then(|head| head.find('@')) {
        Some(at) => {
            let user = s.get(..at)?;
            let rest = s.get(at + 1..)?;
            if user.is_empty() || user.contains(':') {
                None
            } else {
                Some((Some(user), rest))
            }
        }
        None => Some((None, s)),
    }
}

/// A DNS name or IPv4 address: letters, digits, `-`, `.`, `_`; not starting with `-`.
fn valid_hostname(host: &str) -> bool {
    !host.is_empty()
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The inside of `[…]`: hex digits, `:` and `.`, with an optional `%zone`.
fn valid_ipv6(host: &str) -> bool {
    let (addr, zone) = match host.split_once('%') {
        Some((a, z)) => (a, Some(z)),
        None => (host, None),
    };
    addr.contains(':')
        && addr
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        && zone.is_none_or(|z| {
            !z.is_empty()
                && z.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        })
}

fn validate_target(src: &str) -> Result<(), OptionsError> {
    if !src.starts_with('/') || has_control(src) {
        return Err(OptionsError::BadTarget(src.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn groups() -> BTreeMap<String, RsyncGroup> {
        let mut g = BTreeMap::new();
        g.insert(
            "web".to_owned(),
            RsyncGroup {
                dest: "127.0.0.1::DEST//sub".into(),
                src: "/srv//target///web/".into(),
                rsync: PathBuf::new(),
                rsh: Some(String::new()),
                exclude: vec![".git".into()],
                include: vec!["*.html".into()],
                option: vec![],
            },
        );
        g.insert(
            "opts".to_owned(),
            RsyncGroup {
                dest: "rsync://[::1]:8873//DEST".into(),
                src: "/srv/target/opts".into(),
                rsync: PathBuf::from("/opt/rsync"),
                rsh: Some("ssh -o BatchMode=yes".into()),
                exclude: vec![],
                include: vec![],
                option: vec!["--recursive".into(), "--times".into()],
            },
        );
        g
    }

    #[test]
    fn group_values_are_used_and_collapsed() {
        let spec = resolve("web", &groups()).unwrap();
        assert_eq!(spec.dest, "127.0.0.1::DEST/sub");
        assert_eq!(spec.src, "/srv/target/web/");
        assert_eq!(spec.rsync, PathBuf::from(DEFAULT_RSYNC));
        assert_eq!(spec.rsh, None);
        assert_eq!(spec.exclude, [".git"]);
        assert_eq!(spec.include, ["*.html"]);
        assert!(spec.default_flags);

        let spec = resolve("opts", &groups()).unwrap();
        assert_eq!(spec.dest, "rsync://[::1]:8873/DEST");
        assert_eq!(spec.rsync, PathBuf::from("/opt/rsync"));
        assert_eq!(spec.rsh.as_deref(), Some("ssh -o BatchMode=yes"));
        assert!(!spec.default_flags);
    }

    #[test]
    fn inline_values_ignore_group_settings() {
        let spec = resolve("127.0.0.1::DEST/sub|/path//to,extra", &groups()).unwrap();
        assert_eq!(spec.dest, "127.0.0.1::DEST/sub");
        assert_eq!(spec.src, "/path/to");
        assert_eq!(spec.rsync, PathBuf::from(DEFAULT_RSYNC));
        assert!(spec.default_flags && spec.exclude.is_empty() && spec.rsh.is_none());
        // A group name inside an inline value is just a string.
        assert_eq!(
            resolve("web,/x", &groups()),
            Err(OptionsError::BadSource("web".into()))
        );
    }

    #[test]
    fn empty_values() {
        for options in [
            "",
            "nope",
            ",",
            "127.0.0.1::DEST,",
            ",/x",
            "127.0.0.1::DEST|",
        ] {
            let err = resolve(options, &groups()).unwrap_err();
            assert_eq!(err, OptionsError::Empty, "{options:?}");
            assert_eq!(err.to_string(), "empty value in options!");
        }
    }

    #[test]
    fn daemon_sources_accepted() {
        for dest in [
            "host::MOD",
            "host::MOD/a/b c",
            "user@host.example::MOD/x",
            "[::1]::MOD",
            "user@[fe80::1%eth0]::MOD/x",
            "rsync://host/MOD",
            "RSYNC://host:873/MOD/sub/",
            "rsync://user@10.0.0.1:8873/MOD",
            "rsync://[2001:db8::1]:873/MOD",
            "rsync://[::1]/MOD",
        ] {
            let options = format!("{dest},/t");
            assert!(resolve(&options, &groups()).is_ok(), "{dest}");
        }
    }

    #[test]
    fn other_sources_refused() {
        for dest in [
            "/etc",
            "etc/shadow",
            "host:/etc",
            "host:etc",
            "-e sh",
            "--rsh=x::M",
            "host::",
            "host::/x",
            "::MOD",
            "[::1]:MOD",
            "[::1]",
            "[zz]::MOD",
            "-host::MOD",
            "ho st::MOD",
            "@host::MOD",
            "host::MO\nD",
            "host::MOD\0",
            "rsync://host",
            "rsync://host/",
            "rsync:///MOD",
            "rsync://host:0/MOD",
            "rsync://host:99999/MOD",
            "rsync://host:x/MOD",
            "rsync://host:/MOD",
            "rsync://[::1/MOD",
            "rsync://[::1]x/MOD",
            "rsync://a:b:c/MOD",
        ] {
            let options = format!("{dest},/t");
            match resolve(&options, &groups()) {
                Err(OptionsError::BadSource(_)) => {}
                other => panic!("{dest:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn targets_must_be_absolute() {
        for src in ["relative", "./x", "/x\ny", "/x\0"] {
            let options = format!("host::MOD,{src}");
            assert_eq!(
                resolve(&options, &groups()),
                Err(OptionsError::BadTarget(src.into()))
            );
        }
    }
}
