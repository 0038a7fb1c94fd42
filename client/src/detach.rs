//! Ctrl-C (SIGINT or SIGTERM) while following an `rsync`: the client stops following,
//! but the transfer goes on under its runner on every agent (it never depended on the
//! follower). So the client says so, prints the `rkill` command that stops it, and exits
//! 130:
//!
//! ```text
//! deploy-client: interrupted: the transfer goes on on the agents; to stop it:
//!     deploy-client --hosts web01,web02 --port 3440 --order=rkill --options=web
//! ```
//!
//! The command is this run's own command line with `--order=rkill` for the order and
//! without what only concerns following or printing (`--follow`, `--format`,
//! `--grouped`, `--lock`); hosts read from standard input (`--hosts=-`) are written out.
//! Secrets given by the environment (`DEPLOY_KEY_CIPHER`, `DEPLOY_API_KEY`) stay there;
//! the defaults file applies to it as it did to this run.

use std::ffi::{OsStr, OsString};

/// The lines printed on standard error: what happened, and the command that stops the
/// transfer. `argv` is the whole command line (program first); `hosts` the targets as
/// written, for `--hosts=-`.
pub fn message(argv: &[OsString], hosts: &str) -> String {
    let command: Vec<String> = rkill_argv(argv, hosts)
        .iter()
        .map(|w| shell_quote(w))
        .collect();
    format!(
        "deploy-client: interrupted: the transfer goes on on the agents; to stop it:\n    {}",
        command.join(" ")
    )
}

/// `argv` turned into the `rkill` of the same transfer (see the module docs).
fn rkill_argv(argv: &[OsString], hosts: &str) -> Vec<OsString> {
    let mut out = Vec::with_capacity(argv.len());
    let mut words = argv.iter();
    if let Some(program) = words.next() {
        out.push(program.clone());
    }
    let mut saw_order = false;
    while let Some(word) = words.next() {
        let text = word.to_str().unwrap_or_default();
        // After `--`: the command of `run`, taken as it is.
        if text == "--" {
            out.push(word.clone());
            out.extend(words.by_ref().cloned());
            break;
        }
        let (flag, inline) = match text.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (text, None),
        };
        match flag {
            "--order" => {
                if inline.is_none() {
                    words.next();
                }
                out.push("--order=rkill".into());
                saw_order = true;
            }
            "--format" => {
                if inline.is_none() {
                    words.next();
                }
            }
            "--follow" | "--grouped" | "--lock" => {}
            "--hosts" => {
                let value = match inline {
                    Some(value) => Some(OsStr::new(value).to_owned()),
                    None => words.next().cloned(),
                };
                match value {
                    Some(v) if v == "-" => out.push(format!("--hosts={hosts}").into()),
                    Some(v) => {
                        let mut flag = OsString::from("--hosts=");
                        flag.push(v);
                        out.push(flag);
                    }
                    None => out.push(word.clone()),
                }
            }
            _ => out.push(word.clone()),
        }
    }
    if !saw_order {
        out.push("--order=rkill".into());
    }
    out
}

/// `word` as one shell word: as it is when it is made of characters no shell treats
/// specially, else in single quotes (a `'` inside written `'\''`).
fn shell_quote(word: &OsStr) -> String {
    let text = word.to_string_lossy();
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        text.into_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn rkill_of_the_same_transfer() {
        let got = message(
            &argv(&[
                "deploy-client",
                "--hosts",
                "web[01-02]",
                "--port=3440",
                "--order",
                "rsync",
                "--options",
                "web site",
                "--follow",
                "--format=text",
                "--lock=deploy",
                "-v",
            ]),
            "web01,web02",
        );
        assert_eq!(
            got,
            "deploy-client: interrupted: the transfer goes on on the agents; to stop it:\n    \
             deploy-client '--hosts=web[01-02]' --port=3440 --order=rkill --options \
             'web site' -v"
        );
    }

    #[test]
    fn hosts_from_standard_input_are_written_out() {
        let got = rkill_argv(
            &argv(&[
                "/usr/bin/deploy-client",
                "--hosts=-",
                "--order=rsync",
                "--options=web",
                "--format",
                "jsonl",
                "--follow",
            ]),
            "a:1,b:2",
        );
        assert_eq!(
            got,
            argv(&[
                "/usr/bin/deploy-client",
                "--hosts=a:1,b:2",
                "--order=rkill",
                "--options=web"
            ])
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(OsStr::new("groups:web,db")), "groups:web,db");
        assert_eq!(shell_quote(OsStr::new("")), "''");
        assert_eq!(shell_quote(OsStr::new("it's")), r"'it'\''s'");
        assert_eq!(shell_quote(OsStr::new("$(x)")), "'$(x)'");
    }
}
