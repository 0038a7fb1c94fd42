//! NodeApp versions on `ssh://` hosts: kept ON the host, in the agents' layout
//! (`<workspace>/.deploy/versions/<app>@<scenario>/`: objects and log, `deploy-napp`'s
//! [`store`](deploy_napp::store)), so the history survives a new client and an agent
//! later installed there reads it. The host runs only generated `sh`; every decision
//! (manifest, `.gitignore`, ids, what a reset changes) is `deploy-napp`'s, made here
//! on a scratch copy ([`deploy_napp::remote`]).
//!
//! ```text
//! snapshot (push, commit)
//!   run    state: absolute paths, the log, the objects' names
//!   fetch  tar -c of the NodeApp dir ─► scratch workspace (confined extractor)
//!          scratch store = the log + an empty placeholder per host object
//!   here   Locked::snapshot(message, force) on the scratch NodeApp
//!   upload the objects it stored (the ones the host lacks) into $V/.deploy-tmp.up.*
//!   run    append_script: under flock, objects renamed into place, synced, line appended
//! reset
//!   run    state; find(prefix) here (≥ 3 digits, ambiguity refused)
//!   run    the target's manifest and .gitignore objects (base64)
//!   fetch  the tree, walked here (what it holds now)
//!   run    reset_script (staging dir in the NodeApp, moves undone on failure) + append
//! versions, get    run state (the log only)
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use deploy_common::order::napp::{NappSpec, DEFAULT_VERSIONS_LIMIT};
use deploy_common::order::{flag, object, Reply, Request};
use deploy_common::target::Target;
use deploy_common::transport::{Outcome, Transport};
use deploy_common::upload::UploadSpec;
use deploy_common::wire::message::{Event, TaggedEvent};
use deploy_napp::manifest::{self, Manifest};
use deploy_napp::{remote, Version};
use serde_json::Value;
use tokio::sync::mpsc;

/// The line after which a state script's output starts.
const STATE: &str = "@@deploy-napp-state@@";

/// What an operation answers when it fails: the reply to give.
type Fail = Reply;

fn failed(code: u16, what: impl std::fmt::Display) -> Fail {
    Reply::error(code, what.to_string())
}

fn napp_err(e: deploy_napp::Error) -> Fail {
    let code = if e.is_caller_error() {
        400
    } else if e.is_not_found() {
        404
    } else {
        500
    };
    Reply::error(code, format!("napp: {e}"))
}

/// One NodeApp on one SSH host.
pub struct Remote<'a> {
    /// The SSH transport.
    pub inner: &'a Arc<dyn Transport>,
    /// The host.
    pub target: &'a Target,
    /// The order.
    pub spec: &'a NappSpec,
    /// `D=…; W=…` as the script's first lines (paths quoted, made absolute).
    pub vars: String,
}

/// What the state script found.
struct State {
    dir: String,
    store: String,
    versions: Vec<Version>,
    objects: HashSet<String>,
}

impl Remote<'_> {
    fn name(&self) -> String {
        deploy_napp::dir_name(&self.spec.app, &self.spec.scenario)
    }

    /// Runs `sh -s` with `script` after the variables; its exit code and output.
    async fn sh(&self, script: &[u8]) -> Result<(i32, String), Fail> {
        let mut text = self.vars.clone().into_bytes();
        text.extend_from_slice(b"V=\"$W/.deploy/versions/\"");
        text.extend_from_slice(&remote::quote(self.name().as_bytes()));
        text.extend_from_slice(b"\n");
        text.extend_from_slice(script);
        let request = Request {
            order: "run".into(),
            argv: vec!["sh".into(), "-s".into()],
            stdin: Some(base64::engine::general_purpose::STANDARD.encode(&text)),
            ..Request::default()
        };
        let (tx, rx) = mpsc::channel(64);
        let (outcome, ()) = tokio::join!(self.inner.deliver(self.target, &request, tx), drain(rx));
        let Outcome::Reply(r) = outcome else {
            return Err(failed(502, outcome));
        };
        if r.code != 200 {
            return Err(r);
        }
        let body = r.content();
        let output = body
            .get("content")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        let code = body
            .get("code")
            .and_then(Value::as_str)
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1);
        Ok((code, String::from_utf8_lossy(&output).into_owned()))
    }

    /// The NodeApp's paths, log and (with `objects`) objects; `make` makes its dir.
    async fn state(&self, objects: bool, make: bool) -> Result<State, Fail> {
        let mut script = String::new();
        if make {
            script.push_str("mkdir -p -- \"$D\" || exit 70\n");
        }
        script.push_str(&format!(
            "printf '%s\\n' '{STATE}'; printf '%s\\n' \"$D\" \"$V\"\n"
        ));
        script.push_str(&remote::state_script(objects));
        let (code, out) = self.sh(script.as_bytes()).await?;
        let Some((_, rest)) = out.split_once(&format!("{STATE}\n")).filter(|_| code == 0) else {
            return Err(failed(
                500,
                format!("napp: the host's store: exit {code}: {}", out.trim()),
            ));
        };
        let mut lines = rest.splitn(3, '\n');
        let dir = lines.next().unwrap_or_default().to_owned();
        let store = lines.next().unwrap_or_default().to_owned();
        let (versions, objects) =
            remote::parse_state(lines.next().unwrap_or_default(), &self.name())
                .map_err(napp_err)?;
        Ok(State {
            dir,
            store,
            versions,
            objects,
        })
    }

    /// The NodeApp's tree, fetched by `tar -c` into `scratch/<host>/<app>@<scenario>`;
    /// returns `scratch/<host>`.
    async fn fetch_tree(&self, dir: &str, scratch: &Path) -> Result<PathBuf, Fail> {
        let request = Request {
            order: "fetch".into(),
            options: dir.to_owned(),
            ..Request::default()
        };
        let host = self.target.to_string();
        let mut fetcher = crate::fetch::Fetcher::new(scratch.to_path_buf());
        let (tx, mut rx) = mpsc::channel(16);
        let deliver = self.inner.deliver(self.target, &request, tx);
        tokio::pin!(deliver);
        let outcome = loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(TaggedEvent {
                        event: Event::Data { data },
                        ..
                    }) => fetcher.data(&host, &data).await,
                    Some(_) => {}
                    None => break deliver.await,
                },
                outcome = &mut deliver => {
                    while let Some(event) = rx.recv().await {
                        if let Event::Data { data } = event.event {
                            fetcher.data(&host, &data).await;
                        }
                    }
                    break outcome;
                }
            }
        };
        let ok = matches!(&outcome, Outcome::Reply(r) if r.code == 200);
        let result = fetcher.finish(&host, ok).await;
        if !ok {
            return Err(match outcome {
                Outcome::Reply(r) => r,
                other => failed(502, other),
            });
        }
        match result {
            Some(Ok(_)) => Ok(fetcher.host_dir(&host)),
            Some(Err(why)) => Err(failed(500, format!("napp: fetching the NodeApp: {why}"))),
            None => Err(failed(500, "napp: the host sent no archive of the NodeApp")),
        }
    }

    /// Records a version if the tree changed (or always with `force`): the new
    /// version's id, empty if none.
    pub async fn snapshot(&self, message: &str, force: bool) -> Result<String, Fail> {
        let state = self.state(true, true).await?;
        let scratch =
            tempfile::tempdir().map_err(|e| failed(500, format!("napp: scratch: {e}")))?;
        let base = self.fetch_tree(&state.dir, scratch.path()).await?;
        let (app, scenario) = (self.spec.app.clone(), self.spec.scenario.clone());
        let name = self.name();
        let (versions, objects) = (state.versions.clone(), state.objects.clone());
        let message = message.to_owned();
        let up = scratch.path().join("up");
        let base2 = base.clone();
        let up2 = up.clone();
        let recorded = tokio::task::spawn_blocking(move || -> Result<_, Fail> {
            let store_dir = base2.join(deploy_napp::VERSIONS_DIR).join(&name);
            std::fs::create_dir_all(&store_dir)
                .map_err(|e| failed(500, format!("napp: scratch: {e}")))?;
            let log: Vec<u8> = versions
                .iter()
                .flat_map(|v| {
                    let mut l = serde_json::to_vec(v).unwrap_or_default();
                    l.push(b'\n');
                    l
                })
                .collect();
            std::fs::write(store_dir.join("log"), log)
                .map_err(|e| failed(500, format!("napp: scratch: {e}")))?;
            let store_fd = std::fs::File::open(&store_dir)
                .map_err(|e| failed(500, format!("napp: scratch: {e}")))?;
            remote::placeholders(&store_fd, &objects).map_err(napp_err)?;
            let root = deploy_napp::Root::open(&base2).map_err(|e| napp_err(e.into()))?;
            let layout = deploy_napp::Layout::new(&base2, None, None);
            let ws = deploy_napp::Workspace::scratch(root, layout);
            let locked = ws
                .nodeapp(&app, &scenario, true)
                .map_err(napp_err)?
                .ok_or_else(|| failed(500, "napp: scratch store"))?
                .lock()
                .map_err(napp_err)?;
            let Some(version) = locked.snapshot(&message, force).map_err(napp_err)? else {
                return Ok(None);
            };
            let new = remote::new_objects(&store_fd, &objects).map_err(napp_err)?;
            for o in &new {
                let to = up2.join("objects").join(o);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| failed(500, format!("napp: scratch: {e}")))?;
                }
                std::fs::hard_link(store_dir.join("objects").join(o), &to)
                    .map_err(|e| failed(500, format!("napp: scratch: {e}")))?;
            }
            Ok(Some((version, new)))
        })
        .await
        .map_err(|e| failed(500, format!("internal error: {e}")))??;
        let Some((version, new)) = recorded else {
            return Ok(String::new());
        };
        let previous = state
            .versions
            .last()
            .map(|v| v.version.as_str())
            .unwrap_or("");
        let (_, line) = deploy_napp::store::next_version(
            state.versions.last(),
            &version.manifest,
            &version.message,
            &version.time,
        )
        .map_err(napp_err)?;
        let mut script = Vec::new();
        if !new.is_empty() {
            let u = format!("{}/.deploy-tmp.up.{:016x}", state.store, rand_u64());
            self.upload(&up, &u).await?;
            script.extend_from_slice(b"U=");
            script.extend_from_slice(&remote::quote(u.as_bytes()));
            script.extend_from_slice(b"\n");
        }
        script.extend_from_slice(&remote::append_script(previous, &line, &new));
        let (code, out) = self.sh(&script).await?;
        if code != 0 {
            return Err(failed(
                if code == 75 { 409 } else { 500 },
                format!("napp: recording the version: exit {code}: {}", out.trim()),
            ));
        }
        Ok(version.version)
    }

    /// Uploads the directory `local` into `remote_dir` on the host.
    async fn upload(&self, local: &Path, remote_dir: &str) -> Result<(), Fail> {
        let spec = UploadSpec {
            files: vec![".".into()],
            root: remote_dir.to_owned(),
            relative: true,
            no_owner: true,
        };
        let (s, base) = (spec.clone(), local.to_path_buf());
        let manifest = tokio::task::spawn_blocking(move || {
            deploy_common::upload::Manifest::build(&s, &base).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| failed(500, format!("internal error: {e}")))?
        .map_err(|e| failed(500, format!("napp: objects: {e}")))?;
        deploy_common::upload::keep(&spec, Arc::new(manifest)).await;
        let request = Request {
            order: "upload".into(),
            upload: Some(Box::new(spec)),
            ..Request::default()
        };
        let (tx, rx) = mpsc::channel(64);
        let (outcome, ()) = tokio::join!(self.inner.deliver(self.target, &request, tx), drain(rx));
        match outcome {
            Outcome::Reply(r)
                if r.code == 200
                    && r.content().get("return").and_then(Value::as_str) == Some("true") =>
            {
                Ok(())
            }
            Outcome::Reply(r) => Err(failed(
                500,
                format!("napp: uploading the objects: {}", r.content()),
            )),
            other => Err(failed(502, other)),
        }
    }

    /// `versions`: newest first, as an agent lists them.
    pub async fn versions(&self) -> Result<Reply, Fail> {
        let state = self.state(false, false).await?;
        let all = &state.versions;
        let page = deploy_napp::page(
            all,
            self.spec.offset.unwrap_or(0),
            self.spec.limit.unwrap_or(DEFAULT_VERSIONS_LIMIT),
        );
        let listed: Vec<Value> = page
            .iter()
            .map(
                |v| serde_json::json!({"version": v.version, "time": v.time, "message": v.message}),
            )
            .collect();
        Ok(Reply::ok(object([
            ("return", flag(true)),
            (
                "versions",
                Value::from(serde_json::to_string(&listed).unwrap_or_default()),
            ),
            ("total", Value::from(all.len().to_string())),
            (
                "current",
                Value::from(all.last().map(|v| v.version.clone()).unwrap_or_default()),
            ),
        ])))
    }

    /// The objects `shas` (base64 lines, in order), read from the host's store.
    async fn objects(&self, shas: &[&str]) -> Result<Vec<Vec<u8>>, Fail> {
        let mut script = format!("printf '%s\\n' '{STATE}'\n");
        for sha in shas {
            let o = remote::object_path(sha)
                .ok_or_else(|| failed(500, format!("napp: bad object name {sha:?}")))?;
            script.push_str(&format!(
                "base64 <\"$V/objects/{o}\" | tr -d '\\n' || exit 71; echo\n"
            ));
        }
        let (code, out) = self.sh(script.as_bytes()).await?;
        let Some((_, rest)) = out.split_once(&format!("{STATE}\n")).filter(|_| code == 0) else {
            return Err(failed(
                500,
                format!(
                    "napp: reading the host's objects: exit {code}: {}",
                    out.trim()
                ),
            ));
        };
        let b64 = base64::engine::general_purpose::STANDARD;
        rest.lines()
            .take(shas.len())
            .map(|l| {
                b64.decode(l.trim())
                    .map_err(|e| failed(500, format!("napp: an object as the host sent it: {e}")))
            })
            .collect()
    }

    /// `reset`: revert-style, as on an agent.
    pub async fn reset(&self) -> Result<Reply, Fail> {
        let name = self.name();
        let state = self.state(false, true).await?;
        if state.versions.is_empty() {
            return Err(napp_err(deploy_napp::Error::NotFound { napp: name }));
        }
        let target = deploy_napp::find(&state.versions, &self.spec.version, &name)
            .map_err(napp_err)?
            .clone();
        let bytes = self.objects(&[&target.manifest]).await?;
        let wanted: Manifest = serde_json::from_slice(bytes.first().map_or(&[][..], |b| b))
            .map_err(|e| failed(500, format!("napp: manifest {}: {e}", target.manifest)))?;
        let ignores = deploy_napp::restore::gitignores(&wanted);
        let texts = self
            .objects(&ignores.iter().map(|(_, sha)| *sha).collect::<Vec<_>>())
            .await?;
        let mut texts = texts.into_iter();
        let rules =
            deploy_napp::restore::rules_with(&wanted, |_, _| Ok(texts.next().unwrap_or_default()))
                .map_err(napp_err)?;
        // What the tree holds now.
        let scratch =
            tempfile::tempdir().map_err(|e| failed(500, format!("napp: scratch: {e}")))?;
        let base = self.fetch_tree(&state.dir, scratch.path()).await?;
        let here = base.join(&name);
        let current = tokio::task::spawn_blocking(move || {
            let root = deploy_napp::Root::open(&here).map_err(|e| napp_err(e.into()))?;
            manifest::walk(root.fd()).map(|(m, _)| m).map_err(napp_err)
        })
        .await
        .map_err(|e| failed(500, format!("internal error: {e}")))??;
        let message = match self.spec.message.is_empty() {
            true => format!(
                "reset to {}",
                target.version.get(..12).unwrap_or(&target.version)
            ),
            false => self.spec.message.clone(),
        };
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let (new, line) = deploy_napp::store::next_version(
            state.versions.last(),
            &target.manifest,
            &message,
            &time,
        )
        .map_err(napp_err)?;
        let previous = state
            .versions
            .last()
            .map(|v| v.version.as_str())
            .unwrap_or("");
        let mut script = b"O=\"$V/objects\"\n".to_vec();
        script
            .extend_from_slice(&remote::reset_script(&current, &wanted, &rules).map_err(napp_err)?);
        script.extend_from_slice(&remote::append_script(previous, &line, &[]));
        let (code, out) = self.sh(&script).await?;
        if code != 0 {
            let what = match code {
                71 | 72 => "nothing was changed",
                73 => "the previous tree was put back",
                75 => "the tree was reset but not recorded",
                _ => "",
            };
            return Err(failed(
                if code == 75 { 409 } else { 500 },
                format!(
                    "napp: {name}: reset to {} failed (exit {code}; {what}): {}",
                    target.version,
                    out.trim()
                ),
            ));
        }
        Ok(Reply::ok(object([
            ("return", flag(true)),
            ("version", Value::from(new.version)),
            ("restored", Value::from(target.version)),
        ])))
    }

    /// `get`: the NodeApps under the workspace (of the scenario; the app's only when
    /// named), with their versions' count and newest id from each log.
    pub async fn get(&self) -> Result<Reply, Fail> {
        let script = format!(
            "printf '%s\\n' '{STATE}'\n\
             cd -- \"$W\" 2>/dev/null || exit 0\n\
             for n in *@* .deploy/versions/*@*; do [ -e \"$n\" ] || continue; printf '%s\\n' \"${{n##*/}}\"; done | sort -u | \
             while IFS= read -r n; do c=0; l=; f=\".deploy/versions/$n/log\"; \
             if [ -f \"$f\" ]; then c=$(grep -c '^{{' \"$f\"); l=$(sed -n 's/^{{\"version\":\"\\([0-9a-f]*\\)\".*/\\1/p' \"$f\" | tail -n 1); fi; \
             printf '%s %s %s %s\\n' \"$n\" \"$c\" \"${{l:--}}\" \"$PWD/$n\"; done\n"
        );
        let (code, out) = self.sh(script.as_bytes()).await?;
        let Some((_, rest)) = out.split_once(&format!("{STATE}\n")).filter(|_| code == 0) else {
            return Err(failed(
                500,
                format!("napp get: exit {code}: {}", out.trim()),
            ));
        };
        let mut list = Vec::new();
        for line in rest.lines() {
            let mut words = line.splitn(4, ' ');
            let (Some(n), Some(c), Some(l), Some(dir)) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                continue;
            };
            let Some((app, scenario)) = n.split_once('@') else {
                continue;
            };
            if !deploy_napp::valid_name(app) || !deploy_napp::valid_name(scenario) {
                continue;
            }
            if (!self.spec.scenario.is_empty() && scenario != self.spec.scenario)
                || (!self.spec.app.is_empty() && app != self.spec.app)
            {
                continue;
            }
            list.push(deploy_napp::Info {
                scenario: scenario.to_owned(),
                app: app.to_owned(),
                dir: dir.to_owned(),
                current: if l == "-" {
                    String::new()
                } else {
                    l.to_owned()
                },
                versions: c.parse().unwrap_or(0),
            });
        }
        Ok(Reply::ok(object([
            ("return", flag(true)),
            (
                "napps",
                Value::from(serde_json::to_string(&list).unwrap_or_default()),
            ),
        ])))
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    u64::from_le_bytes(b) ^ u64::from(std::process::id())
}

async fn drain(mut rx: mpsc::Receiver<TaggedEvent>) {
    while rx.recv().await.is_some() {}
}
