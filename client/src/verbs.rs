//! Octopoda-style short forms of the fleet orders, rewritten into the flags every
//! order takes before the command line is parsed:
//!
//! ```text
//! deploy-client health [HOST...] [FLAGS]           --order=health [--hosts=HOST,...]
//! deploy-client fetch REMOTE DIR [HOST...] [FLAGS] --order=fetch --options=REMOTE --into=DIR
//! deploy-client nodes [PROXY] [--proxy=P1,P2]      --order=nodes --hosts=PROXY (--proxy: failover)
//! deploy-client tasks list [HOST...]                --order=tasks --options=list
//! deploy-client tasks wait ID [SECS] [HOST...]      --order=tasks --options=wait,ID[,SECS]
//! deploy-client tasks cancel ID [HOST...]           --order=tasks --options=cancel,ID
//! ```
//!
//! In `tasks wait`, a number right after the id is the wait's seconds (host names are
//! not bare numbers).
//!
//! Every other flag (`--port`, `--api-key`, `--format`, `-i`…) stays as written, so the
//! short forms take exactly what the long ones do, and defaults files apply alike. Which
//! flags take a value is read from the parser's own definition, so that `--port 3440`
//! is not mistaken for a host.

use std::ffi::OsString;

use clap::CommandFactory;

use crate::cli::Args;

/// The verbs this module knows.
pub const VERBS: [&str; 4] = ["health", "fetch", "nodes", "tasks"];

/// A short form that cannot be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerbError(String);

/// Rewrites `argv` (program name first) if its first argument is a verb; returns it
/// unchanged otherwise.
pub fn rewrite(argv: Vec<OsString>) -> Result<Vec<OsString>, VerbError> {
    let verb = match argv.get(1).and_then(|a| a.to_str()) {
        Some(v) if VERBS.contains(&v) => v.to_owned(),
        _ => return Ok(argv),
    };
    let command = Args::command();
    let takes_value = |long: Option<&str>, short: Option<char>| {
        command.get_arguments().any(|a| {
            let named = match (long, short) {
                (Some(l), _) => {
                    a.get_long() == Some(l) || a.get_all_aliases().is_some_and(|al| al.contains(&l))
                }
                (None, Some(s)) => a.get_short() == Some(s),
                (None, None) => false,
            };
            named && a.get_action().takes_values()
        })
    };
    let mut out: Vec<OsString> = argv.first().cloned().into_iter().collect();
    out.push(format!("--order={verb}").into());
    let mut positional: Vec<String> = Vec::new();
    let mut rest = argv.into_iter().skip(2);
    while let Some(arg) = rest.next() {
        let Some(text) = arg.to_str().map(str::to_owned) else {
            // Left to the parser, which names it.
            out.push(arg);
            continue;
        };
        if text == "--" {
            out.push(arg);
            out.extend(rest.by_ref());
            break;
        }
        if let Some(long) = text.strip_prefix("--") {
            out.push(arg);
            if !long.contains('=') && takes_value(Some(long), None) {
                out.extend(rest.next());
            }
            continue;
        }
        if let Some(short) = text.strip_prefix('-').filter(|s| !s.is_empty()) {
            out.push(arg.clone());
            let mut chars = short.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                if takes_value(None, Some(c)) {
                    out.extend(rest.next());
                }
            }
            continue;
        }
        positional.push(text);
    }
    let mut positional = positional.into_iter().peekable();
    if verb == "fetch" {
        let usage = || VerbError("usage: deploy-client fetch REMOTE_PATH DIR [HOST...]".into());
        let remote = positional.next().ok_or_else(usage)?;
        let dir = positional.next().ok_or_else(usage)?;
        out.push(format!("--options={remote}").into());
        out.push(format!("--into={dir}").into());
    }
    if verb == "tasks" {
        out.push(format!("--options={}", tasks_options(&mut positional)?).into());
    }
    let hosts: Vec<String> = positional.collect();
    if !hosts.is_empty() {
        out.push(format!("--hosts={}", hosts.join(",")).into());
    }
    Ok(out)
}

/// The `--options` of `tasks list|wait ID [SECS]|cancel ID`, taking those words off
/// `positional` (what is left are hosts).
fn tasks_options(
    positional: &mut std::iter::Peekable<std::vec::IntoIter<String>>,
) -> Result<String, VerbError> {
    let usage =
        || VerbError("usage: deploy-client tasks list|wait ID [SECS]|cancel ID [HOST...]".into());
    match positional.next().as_deref() {
        Some("list") => Ok("list".into()),
        Some(sub @ ("wait" | "cancel")) => {
            let id = positional.next().ok_or_else(usage)?;
            if id.contains(',') {
                return Err(VerbError(format!("tasks {sub}: invalid task id {id:?}")));
            }
            let secs = match sub {
                "wait" => positional.next_if(|s| s.parse::<u64>().is_ok()),
                _ => None,
            };
            Ok(match secs {
                Some(secs) => format!("{sub},{id},{secs}"),
                None => format!("{sub},{id}"),
            })
        }
        _ => Err(usage()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(args: &[&str]) -> Vec<String> {
        let argv = std::iter::once("deploy-client")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect();
        rewrite(argv)
            .unwrap()
            .into_iter()
            .skip(1)
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn short_forms() {
        assert_eq!(
            words(&["health", "web1", "--port", "3440", "-vv", "web2", "-i", "key"]),
            [
                "--order=health",
                "--port",
                "3440",
                "-vv",
                "-i",
                "key",
                "--hosts=web1,web2"
            ]
        );
        assert_eq!(
            words(&["fetch", "@log/error.log", "out", "a", "--format=json"]),
            [
                "--order=fetch",
                "--format=json",
                "--options=@log/error.log",
                "--into=out",
                "--hosts=a"
            ]
        );
        assert_eq!(
            words(&["nodes", "--proxy", "p:3441", "--state=offline"]),
            ["--order=nodes", "--proxy", "p:3441", "--state=offline"]
        );
        assert_eq!(words(&["nodes"]), ["--order=nodes"]);
        assert_eq!(words(&["--order=exec", "x"]), ["--order=exec", "x"]);
        let argv = ["deploy-client", "fetch", "only-one"]
            .map(OsString::from)
            .to_vec();
        assert!(rewrite(argv).unwrap_err().to_string().contains("usage"));
    }

    #[test]
    fn tasks_short_forms() {
        assert_eq!(
            words(&["tasks", "list", "a", "b", "--format=json"]),
            [
                "--order=tasks",
                "--format=json",
                "--options=list",
                "--hosts=a,b"
            ]
        );
        assert_eq!(
            words(&["tasks", "wait", "abc", "30", "web1"]),
            ["--order=tasks", "--options=wait,abc,30", "--hosts=web1"]
        );
        assert_eq!(
            words(&["tasks", "wait", "abc", "web1"]),
            ["--order=tasks", "--options=wait,abc", "--hosts=web1"]
        );
        assert_eq!(
            words(&["tasks", "cancel", "abc", "h1", "h2"]),
            ["--order=tasks", "--options=cancel,abc", "--hosts=h1,h2"]
        );
        for bad in [
            &["tasks"][..],
            &["tasks", "wait"],
            &["tasks", "stop", "x"],
            &["tasks", "cancel", "a,b"],
        ] {
            let argv = std::iter::once("deploy-client")
                .chain(bad.iter().copied())
                .map(OsString::from)
                .collect();
            assert!(rewrite(argv).is_err(), "{bad:?}");
        }
    }
}
