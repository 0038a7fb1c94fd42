//! Scenarios on `ssh://` hosts: the `napp` order turned into what an SSH host can do,
//! so that `scenario apply` drives agents and SSH hosts alike.
//!
//! ```text
//! push     the app's sourcepath walked once, streamed as tar (SSH `upload`) into
//!          <workspace>/<app>@<scenario> (created if missing); no version recorded
//! script   `run` of `sh -s`: the script (base64) and a fresh $OCTOPODA_OUTPUT in
//!          mktemp files, the OCTOPODA_*/DEPLOY_* variables exported, cd to the
//!          NodeApp dir, `sh SCRIPT`; its lines stream as they come, then one marker
//!          line (hidden) carries the exit code and the output file, base64
//! purge    `run` of rm -rf on the NodeApp dir and its versions
//! push, commit, versions, reset, get: NodeApp versions kept on the host, in the
//!          agents' layout ([`crate::ssh_versions`]); push records one if the tree
//!          changed, commit always
//! ```
//!
//! The workspace (`--ssh-workspace`, relative to the remote home unless absolute) may
//! hold `%h`/`%p`, the host and port as written, for hosts that share a file system.
//! Every value goes into the script single-quoted ([`quote`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine as _;
use deploy_common::order::napp::{self, Action, NappSpec};
use deploy_common::order::{flag, object, Reply, Request};
use deploy_common::target::{expand, Target};
use deploy_common::transport::{BoxFuture, Outcome, Transport};
use deploy_common::upload::UploadSpec;
use deploy_common::wire::message::{Event, TaggedEvent};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::ssh_release::quote;
use crate::ssh_versions::Remote;

/// The default workspace on SSH hosts, relative to the remote home.
pub const DEFAULT_WORKSPACE: &str = ".deploy/scenarios/workspace";

/// The first word of the line that ends a script's output.
const MARK: &str = "@@deploy-napp-result@@";

/// The SSH transport, with `napp` orders translated (see the module documentation).
pub struct SshNapp {
    inner: Arc<dyn Transport>,
    workspace: String,
    /// Each app's sourcepath, for `push`.
    sources: HashMap<String, PathBuf>,
    /// The scenario folder (its `.deploy/` is never sent).
    root: PathBuf,
}

impl SshNapp {
    /// Wraps the SSH transport `inner`.
    pub fn new(
        inner: Arc<dyn Transport>,
        workspace: String,
        sources: HashMap<String, PathBuf>,
        root: PathBuf,
    ) -> SshNapp {
        SshNapp {
            inner,
            workspace,
            sources,
            root,
        }
    }

    fn dir(&self, target: &Target, spec: &NappSpec) -> String {
        let ws = expand(&self.workspace, target, &[]);
        format!(
            "{}/{}",
            ws.trim_end_matches('/'),
            napp::dir_name(&spec.app, &spec.scenario)
        )
    }

    /// The NodeApp's versions on `target`.
    fn remote<'a>(&'a self, target: &'a Target, spec: &'a NappSpec) -> Result<Remote<'a>, Reply> {
        Ok(Remote {
            inner: &self.inner,
            target,
            spec,
            vars: self.vars(target, spec)?,
        })
    }

    /// `abs`, `D` (the NodeApp dir) and `W` (the workspace), absolute, for a script.
    fn vars(&self, target: &Target, spec: &NappSpec) -> Result<String, Reply> {
        let q = |what, v: &str| quote(what, v).map_err(|e| Reply::error(400, e.to_string()));
        let dir = self.dir(target, spec);
        let ws = expand(&self.workspace, target, &[]);
        // Relative paths are the remote home's: made absolute for the variables.
        Ok(format!(
            "abs() {{ case $1 in /*) printf '%s' \"$1\";; *) printf '%s/%s' \"$HOME\" \"$1\";; esac; }}\n\
             D=$(abs {}); W=$(abs {}); R=$(dirname -- \"$W\")\n",
            q("the NodeApp directory", &dir)?,
            q("the workspace", ws.trim_end_matches('/'))?
        ))
    }

    async fn push(&self, target: &Target, spec: &NappSpec) -> Outcome {
        let Some(source) = self.sources.get(&spec.app) else {
            return reply(Reply::error(400, format!("no sources for {:?}", spec.app)));
        };
        let dir = self.dir(target, spec);
        let upload = UploadSpec {
            files: vec![".".into()],
            root: dir.clone(),
            relative: true,
            no_owner: true,
        };
        if let Err(why) = deploy_scenario::apply::walk(&upload, source, &self.root).await {
            return reply(Reply::error(500, format!("sources: {why}")));
        }
        let request = Request {
            order: "upload".into(),
            upload: Some(Box::new(upload)),
            ..Request::default()
        };
        let (tx, rx) = mpsc::channel(64);
        let (outcome, ()) = tokio::join!(self.inner.deliver(target, &request, tx), drain(rx));
        match outcome {
            Outcome::Reply(r) if r.code == 200 => {
                let body = r.content();
                let text = |k: &str| body.get(k).cloned().unwrap_or(Value::from(""));
                if body.get("return").and_then(Value::as_str) != Some("true") {
                    return Outcome::Reply(r);
                }
                let message = match spec.message.is_empty() {
                    true => "prepare",
                    false => spec.message.as_str(),
                };
                let version = match self.remote(target, spec) {
                    Ok(remote) => remote.snapshot(message, false).await,
                    Err(r) => Err(r),
                };
                let version = match version {
                    Ok(v) => v,
                    Err(r) => return reply(r),
                };
                reply(Reply::ok(object([
                    ("return", flag(true)),
                    ("dir", Value::from(dir)),
                    ("version", Value::from(version)),
                    ("files", text("files")),
                    ("bytes", text("bytes")),
                ])))
            }
            other => other,
        }
    }

    fn script_text(&self, target: &Target, spec: &NappSpec) -> Result<String, Reply> {
        let q = |what, v: &str| quote(what, v).map_err(|e| Reply::error(400, e.to_string()));
        let mut text = String::from("set -u\n");
        text.push_str(&self.vars(target, spec)?);
        text.push_str(
            "mkdir -p -- \"$D\" || exit 70\n\
             O=$(mktemp \"${TMPDIR:-/tmp}/deploy-napp.XXXXXX\") || exit 70\n\
             S=$(mktemp \"${TMPDIR:-/tmp}/deploy-napp.XXXXXX\") || exit 70\n\
             trap 'rm -f \"$O\" \"$S\"' EXIT\n",
        );
        text.push_str(&format!(
            "printf '%s' {} | base64 -d >\"$S\" || exit 70\n",
            q("the script", &spec.script)?
        ));
        for (k, v) in &spec.env {
            if !valid_var(k) {
                return Err(Reply::error(400, format!("bad variable name {k:?}")));
            }
            text.push_str(&format!("{k}={}; export {k}\n", q("a variable", v)?));
        }
        for prefix in ["OCTOPODA_", "DEPLOY_"] {
            text.push_str(&format!(
                "{p}CURRENTDIR=$D {p}OUTPUT=$O {p}ROOT=$R {p}WORKSPACE=$W {p}FSTORE=$R/fstore \
                 {p}STOREDIR=$R/fstore {p}LOG=$R/log\n\
                 export {p}CURRENTDIR {p}OUTPUT {p}ROOT {p}WORKSPACE {p}FSTORE {p}STOREDIR {p}LOG\n",
                p = prefix
            ));
        }
        text.push_str(&format!(
            "cd -- \"$D\" || exit 70\n\
             sh \"$S\" </dev/null; c=$?\n\
             printf '\\n%s %s %s\\n' '{MARK}' \"$c\" \"$(base64 <\"$O\" | tr -d '\\n')\"\n"
        ));
        Ok(format!("{{\n{text}}} </dev/null\n"))
    }

    async fn script(
        &self,
        target: &Target,
        spec: &NappSpec,
        follow: bool,
        events: mpsc::Sender<TaggedEvent>,
    ) -> Outcome {
        let text = match self.script_text(target, spec) {
            Ok(t) => t,
            Err(r) => return reply(r),
        };
        let request = run(&text, follow);
        let (tx, mut rx) = mpsc::channel::<TaggedEvent>(64);
        // Lines pass as they come, but for the marker (and the blank line before it).
        let forward = async {
            let mut blank = None;
            while let Some(event) = rx.recv().await {
                if let Event::Line { line, .. } = &event.event {
                    if line.starts_with(MARK) {
                        blank = None;
                        continue;
                    }
                    if line.is_empty() && blank.is_none() {
                        blank = Some(event);
                        continue;
                    }
                }
                if let Some(held) = blank.take() {
                    let _ = events.send(held).await;
                }
                let _ = events.send(event).await;
            }
        };
        let (outcome, ()) = tokio::join!(self.inner.deliver(target, &request, tx), forward);
        let Outcome::Reply(r) = outcome else {
            return outcome;
        };
        let body = r.content();
        let output = body
            .get("content")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        let output = String::from_utf8_lossy(&output).into_owned();
        let Some(at) = output.rfind(MARK) else {
            // The wrapper itself failed (no shell, no mktemp…): as the host said.
            let code = body.get("code").and_then(Value::as_str).unwrap_or("?");
            return reply(Reply::error(
                500,
                format!("napp script: exit {code}: {}", output.trim()),
            ));
        };
        let mut words = output
            .get(at..)
            .unwrap_or_default()
            .split_whitespace()
            .skip(1);
        let code: i32 = words.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
        let file = words.next().unwrap_or_default();
        let stdout = output
            .get(..at)
            .unwrap_or_default()
            .strip_suffix('\n')
            .unwrap_or_default();
        let b64 = base64::engine::general_purpose::STANDARD;
        reply(Reply::ok(object([
            ("return", flag(code == 0)),
            ("code", Value::from(code.to_string())),
            ("output", Value::from(file)),
            ("stdout", Value::from(b64.encode(stdout))),
            ("stderr", Value::from("")),
        ])))
    }

    async fn purge(&self, target: &Target, spec: &NappSpec) -> Outcome {
        let vars = match self.vars(target, spec) {
            Ok(v) => v,
            Err(r) => return reply(r),
        };
        // The name is checked (no `/`, `'`, control characters) where the spec is made;
        // quoted all the same, so this line does not depend on that check.
        let name = match quote("NodeApp name", &napp::dir_name(&spec.app, &spec.scenario)) {
            Ok(n) => n,
            Err(e) => return reply(Reply::error(400, e.to_string())),
        };
        let request = run(
            &format!("{vars}rm -rf -- \"$D\" \"$W/.deploy/versions/\"{name}\n"),
            false,
        );
        let (tx, rx) = mpsc::channel(64);
        let (outcome, ()) = tokio::join!(self.inner.deliver(target, &request, tx), drain(rx));
        match outcome {
            Outcome::Reply(r) if r.code == 200 => {
                let ok = r.content().get("return").and_then(Value::as_str) == Some("true");
                if ok {
                    reply(Reply::ok(object([("return", flag(true))])))
                } else {
                    Outcome::Reply(r)
                }
            }
            other => other,
        }
    }
}

/// A shell variable name, as the agent's `napp` takes it: a letter or `_`, then
/// letters, digits or `_` (an empty name or one starting with a digit would make
/// `NAME=value` a command, not an assignment).
fn valid_var(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn reply(r: Reply) -> Outcome {
    Outcome::Reply(r)
}

async fn drain(mut rx: mpsc::Receiver<TaggedEvent>) {
    while rx.recv().await.is_some() {}
}

/// `sh -s` with `text` on its standard input.
fn run(text: &str, follow: bool) -> Request {
    Request {
        order: "run".into(),
        argv: vec!["sh".into(), "-s".into()],
        stdin: Some(base64::engine::general_purpose::STANDARD.encode(text)),
        follow,
        ..Request::default()
    }
}

impl Transport for SshNapp {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        let Some(spec) = request.napp.as_deref().filter(|_| request.order == "napp") else {
            return self.inner.deliver(target, request, events);
        };
        Box::pin(async move {
            let any = spec.action == Action::Get;
            let ok = |n: &str| napp::valid_name(n) || (any && n.is_empty());
            if !ok(&spec.scenario) || !ok(&spec.app) {
                return reply(Reply::error(400, "napp: bad scenario or application name"));
            }
            match spec.action {
                Action::Push => self.push(target, spec).await,
                Action::Script => self.script(target, spec, request.follow, events).await,
                Action::Purge => self.purge(target, spec).await,
                Action::Commit => {
                    let message = match spec.message.is_empty() {
                        true => "commit",
                        false => spec.message.as_str(),
                    };
                    match self.remote(target, spec) {
                        Ok(r) => match r.snapshot(message, true).await {
                            Ok(v) => reply(Reply::ok(object([
                                ("return", flag(true)),
                                ("version", Value::from(v)),
                            ]))),
                            Err(e) => reply(e),
                        },
                        Err(e) => reply(e),
                    }
                }
                Action::Versions | Action::Reset | Action::Get => {
                    let remote = match self.remote(target, spec) {
                        Ok(r) => r,
                        Err(e) => return reply(e),
                    };
                    let result = match spec.action {
                        Action::Versions => remote.versions().await,
                        Action::Reset => remote.reset().await,
                        _ => remote.get().await,
                    };
                    reply(result.unwrap_or_else(|e| e))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_script_quotes_everything_and_parses() {
        let t = SshNapp::new(
            Arc::new(deploy_common::transport::AgentTransport {
                protocol: deploy_common::transport::Protocol::V2,
                key_cipher: String::new(),
                public_key: None,
                connect_timeout: std::time::Duration::from_secs(1),
                deadline: std::time::Duration::from_secs(1),
                pool: None,
            }),
            "ws/%p".into(),
            HashMap::new(),
            PathBuf::from("/s"),
        );
        let mut env = BTreeMap::new();
        env.insert("OCTOPODA_NODENAME".to_owned(), "it's $(evil)".to_owned());
        let spec = NappSpec {
            action: Action::Script,
            scenario: "s".into(),
            app: "a".into(),
            script: "ZWNobyBoaQo=".into(),
            env,
            ..NappSpec::default()
        };
        let target = Target::parse("ssh://h:2222", 22).unwrap();
        let text = t.script_text(&target, &spec).unwrap();
        assert!(
            text.contains("OCTOPODA_NODENAME='it'\\''s $(evil)'; export OCTOPODA_NODENAME"),
            "{text}"
        );
        assert!(text.contains("D=$(abs 'ws/2222/a@s')"), "{text}");
        let check = std::process::Command::new("sh")
            .args(["-n", "-c", &text])
            .status()
            .unwrap();
        assert!(check.success());
        env_bad(&t, &target);
    }

    fn env_bad(t: &SshNapp, target: &Target) {
        for name in ["A;rm", "", "1x", "x-y"] {
            let mut env = BTreeMap::new();
            env.insert(name.to_owned(), "x".to_owned());
            let spec = NappSpec {
                action: Action::Script,
                scenario: "s".into(),
                app: "a".into(),
                env,
                ..NappSpec::default()
            };
            assert_eq!(
                t.script_text(target, &spec).unwrap_err().code,
                400,
                "{name:?}"
            );
        }
    }
}
