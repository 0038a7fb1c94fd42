//! `upload` and `sync` on SSH hosts: the tar stream into `tar -x` on each host, then
//! the command (upload) or the sync tool and its protocol (sync).
//!
//! ```text
//! connect ─► exec "mkdir -p -- ROOT && tar -x -p -f - -C ROOT --numeric-owner [--no-same-owner]"
//!            stdin ◄─ the manifest as tar, chunk by chunk (the host's window paces it)
//!   tar exits 0 ─► upload: exec "cd ROOT && { COMMAND; }"   (if one was given)
//!              └─► sync:   exec "cd ROOT && export DEPLOY_RUN_DIR=\"$PWD\" && { TOOL; }"
//!                          stdin ◄─ the hub's lines; stdout SYNC lines ─► the hub
//! ```
//!
//! The manifest is walked once per run and shared by every host; each host's stream
//! reads the files itself, so a slow host paces only itself and memory stays constant.
//! Under `--sudo` the extraction and the command run under `sudo -n sh -c`.
//!
//! The sync [`Hub`] (one per run, by prefix) sends HELLO/NODE/START to every tool once
//! every host has either started its tool or failed, and relays each SYNC to all.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};

use super::lines::{quote, remote_command};
use super::session::{self, Session};
use super::{Shared, SshError};
use crate::order::run::ran;
use crate::order::sync::SyncRun;
use crate::order::upload::sent;
use crate::order::{Reply, Request};
use crate::target::{expand, Target};
use crate::upload::{tar, Manifest};
use crate::wire::message::{Event, Stream};

/// Sync hubs by prefix.
pub(super) type Hubs = Mutex<HashMap<String, Arc<Hub>>>;

impl Shared {
    /// Serves `upload` and `sync`.
    pub(super) async fn deliver_upload(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
        events: &mpsc::Sender<Event>,
    ) -> Result<Reply, SshError> {
        let node = target.to_string();
        let sync = match (&request.order[..], &request.sync) {
            ("sync", Some(run)) => Some((self.hub(run), run)),
            ("sync", None) => {
                return Ok(Reply::error(400, "sync needs its run (prefix and hosts)"))
            }
            _ => None,
        };
        // Until the tool starts, any way out tells the hub this host is gone.
        let mut member = sync
            .as_ref()
            .map(|(hub, _)| Member::new(Arc::clone(hub), &node));
        let prepared = self.prepare(target, request, events).await;
        let (session, root, files, sent_bytes) = match prepared {
            Ok(Prepared::Ready {
                session,
                root,
                files,
                sent,
            }) => (session, root, files, sent),
            Ok(Prepared::Done(reply)) => {
                if let Some(member) = &mut member {
                    member.why = format!("{} {}", reply.code, reply.content());
                }
                return Ok(reply);
            }
            Err(e) => {
                if let Some(member) = &mut member {
                    member.why = e.to_string();
                }
                return Err(e);
            }
        };
        let cd = if root.is_empty() {
            String::new()
        } else {
            format!("cd {} && ", quote(&root))
        };
        let Some((hub, run)) = sync else {
            if request.argv.is_empty() {
                let body = ran(0, "tar -x", b"");
                return Ok(Reply::ok(sent(body, &root, files, sent_bytes)));
            }
            let command = remote_command(
                &[format!("{cd}{{ {}; }}", request.argv.join(" "))],
                request.sudo,
            );
            let reply = session::run(&session, &command, None, events, &self.stats).await?;
            return Ok(match reply.body {
                crate::order::Body::Json(body) if reply.code == 200 => {
                    Reply::ok(sent(body, &root, files, sent_bytes))
                }
                _ => reply,
            });
        };
        let tool = remote_command(
            &[format!(
                "{cd}export DEPLOY_RUN_DIR=\"$PWD\" && {{ {}; }}",
                request.argv.join(" ")
            )],
            request.sudo,
        );
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        if let Some(member) = &mut member {
            member.join(tx);
        }
        let mut decided = hub.decided.subscribe();
        let opening_run = run.clone();
        let me = node.clone();
        let feed = |writer: Arc<russh::ChannelWriteHalf<russh::client::Msg>>| async move {
            let nodes = loop {
                if let Some(decision) = decided.borrow_and_update().clone() {
                    break decision?;
                }
                decided
                    .changed()
                    .await
                    .map_err(|_| "the run ended before it started".to_owned())?;
            };
            let send = |text: String| {
                let writer = Arc::clone(&writer);
                async move { writer.data_bytes(text.into_bytes()).await }
            };
            // A tool that ended before HELLO is fine: nothing more to tell it.
            if send(opening_run.opening(&nodes, &me)).await.is_err() {
                return Ok(false);
            }
            while let Some(line) = rx.recv().await {
                if send(line).await.is_err() {
                    break;
                }
            }
            Ok(false)
        };
        let relay = Arc::clone(&hub);
        let keep = |stream: Stream, line: &str| {
            if stream != Stream::Stdout {
                return true;
            }
            match run.sync_request(line) {
                None => true,
                Some(Some(description)) => {
                    relay.broadcast(&node, description);
                    false
                }
                Some(None) => false,
            }
        };
        let ran_tool = session::exec(&session, &tool, events, &self.stats, feed, keep).await?;
        drop(member);
        let mut content = ran_tool.content;
        let mut code = ran_tool.code;
        if let Err(why) = &ran_tool.fed {
            content.extend_from_slice(format!("sync: {why}\n").as_bytes());
            if code == 0 {
                code = 1;
            }
        }
        Ok(Reply::ok(sent(
            ran(code, &tool, &content),
            &root,
            files,
            sent_bytes,
        )))
    }

    /// Connects and uploads (if there are files); `Done` if the order ends there (an
    /// error, or tar failed).
    async fn prepare(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
        events: &mpsc::Sender<Event>,
    ) -> Result<Prepared, SshError> {
        let spec = request.upload.as_ref();
        let root = spec
            .map(|s| expand(&s.root, target, &[]))
            .unwrap_or_default();
        let manifest = match spec.filter(|s| !s.files.is_empty()) {
            None => None,
            Some(spec) => {
                if root.is_empty() {
                    return Ok(Prepared::Done(Reply::error(
                        400,
                        "upload needs a root directory",
                    )));
                }
                match crate::upload::manifest(spec).await {
                    Ok(manifest) => Some(manifest),
                    Err(why) => return Ok(Prepared::Done(Reply::error(400, why))),
                }
            }
        };
        if request.order == "upload" && manifest.is_none() {
            return Ok(Prepared::Done(Reply::error(400, "upload needs files")));
        }
        if request.argv.is_empty() && request.order == "sync" {
            return Ok(Prepared::Done(Reply::error(
                400,
                "sync needs a tool to run",
            )));
        }
        let session = self.connect(target).await?;
        self.stats
            .connected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (files, _) = manifest.as_ref().map(|m| m.totals()).unwrap_or_default();
        let mut sent_bytes = 0;
        if let (Some(manifest), Some(spec)) = (&manifest, spec) {
            let (ran_tar, count) = self
                .extract(
                    &session,
                    manifest,
                    &root,
                    spec.no_owner,
                    request.sudo,
                    events,
                )
                .await?;
            sent_bytes = count;
            if ran_tar.code != 0 || ran_tar.fed.is_err() {
                let mut content = ran_tar.content;
                if let Err(why) = &ran_tar.fed {
                    content.extend_from_slice(format!("upload stopped: {why}\n").as_bytes());
                }
                let code = if ran_tar.code == 0 { 1 } else { ran_tar.code };
                let body = ran(code, "tar -x", &content);
                return Ok(Prepared::Done(Reply::ok(sent(
                    body, &root, files, sent_bytes,
                ))));
            }
        }
        Ok(Prepared::Ready {
            session,
            root,
            files,
            sent: sent_bytes,
        })
    }

    /// The hub of `run`, made by the first host of the run.
    fn hub(&self, run: &SyncRun) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            hubs.entry(run.prefix.clone())
                .or_insert_with(|| Arc::new(Hub::new(run.clone()))),
        )
    }

    /// Streams `manifest` into `tar -x` under `root`; returns how tar ended and the
    /// bytes sent.
    async fn extract(
        &self,
        session: &Session,
        manifest: &Arc<Manifest>,
        root: &str,
        no_owner: bool,
        sudo: bool,
        events: &mpsc::Sender<Event>,
    ) -> Result<(session::Ran, u64), SshError> {
        let command = format!(
            "mkdir -p -- {r} && tar -x -p -f - -C {r} --numeric-owner{owner}",
            r = quote(root),
            owner = if no_owner { " --no-same-owner" } else { "" },
        );
        let command = if sudo {
            format!("sudo -n sh -c {}", quote(&command))
        } else {
            command
        };
        let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = Arc::clone(&counted);
        let manifest = Arc::clone(manifest);
        let feed = |writer: Arc<russh::ChannelWriteHalf<russh::client::Msg>>| async move {
            let sent = tar::stream(&manifest, |chunk| {
                let writer = Arc::clone(&writer);
                async move { writer.data_bytes(chunk).await }
            })
            .await
            .map_err(|e| e.to_string())?;
            count.store(sent, std::sync::atomic::Ordering::Relaxed);
            Ok(true)
        };
        let ran = session::exec(session, &command, events, &self.stats, feed, |_, _| true).await?;
        Ok((ran, counted.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

/// A host connected and its files extracted, or the order's end.
enum Prepared {
    Ready {
        session: Session,
        root: String,
        files: usize,
        sent: u64,
    },
    Done(Reply),
}

/// One sync run's meeting point.
pub(super) struct Hub {
    run: SyncRun,
    state: Mutex<HubState>,
    /// `Some(Ok(nodes))` once every host has started or failed (the NODE list), or
    /// `Some(Err(why))` if the run is aborted before START.
    decided: watch::Sender<Option<Result<Vec<String>, String>>>,
}

#[derive(Default)]
struct HubState {
    /// Hosts not yet started nor failed.
    pending: HashSet<String>,
    /// Hosts whose tool runs, and their input queue.
    ready: HashMap<String, mpsc::UnboundedSender<String>>,
    /// Hosts that failed before their tool started, and why.
    gone: Vec<(String, String)>,
}

impl Hub {
    fn new(run: SyncRun) -> Hub {
        let state = HubState {
            pending: run.nodes.iter().cloned().collect(),
            ..HubState::default()
        };
        Hub {
            run,
            state: Mutex::new(state),
            decided: watch::channel(None).0,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `node`'s tool runs; its input is `queue`.
    fn join(&self, node: &str, queue: mpsc::UnboundedSender<String>) {
        let mut state = self.state();
        state.pending.remove(node);
        state.ready.insert(node.to_owned(), queue);
        self.decide(&state);
    }

    /// `node` failed before its tool started.
    fn leave(&self, node: &str, why: &str) {
        let mut state = self.state();
        if state.pending.remove(node) {
            state.gone.push((node.to_owned(), why.to_owned()));
        }
        self.decide(&state);
    }

    /// `node`'s tool ended: no more lines for it.
    fn finish(&self, node: &str) {
        self.state().ready.remove(node);
    }

    /// Once nobody is pending, START (or abort) everyone.
    fn decide(&self, state: &HubState) {
        if !state.pending.is_empty() || self.decided.borrow().is_some() {
            return;
        }
        let decision = match state.gone.first() {
            Some((node, why)) if self.run.strict => Err(format!(
                "aborted before START: {node} failed ({why}){}",
                if state.gone.len() > 1 {
                    format!(" and {} more", state.gone.len() - 1)
                } else {
                    String::new()
                }
            )),
            _ => Ok(self
                .run
                .nodes
                .iter()
                .filter(|n| state.ready.contains_key(*n))
                .cloned()
                .collect()),
        };
        self.decided.send_replace(Some(decision));
    }

    /// Relays `node`'s SYNC to every running tool.
    fn broadcast(&self, node: &str, description: &str) {
        tracing::debug!(node, description, "sync");
        let line = self.run.sync_line(node, description);
        for queue in self.state().ready.values() {
            let _ = queue.send(line.clone());
        }
    }
}

/// A host's membership of a hub: until [`Member::join`], dropping it means the host
/// failed; after, that its tool ended.
struct Member {
    hub: Arc<Hub>,
    node: String,
    joined: bool,
    /// Why the host failed, if it did.
    why: String,
}

impl Member {
    fn new(hub: Arc<Hub>, node: &str) -> Member {
        Member {
            hub,
            node: node.to_owned(),
            joined: false,
            why: "cancelled".to_owned(),
        }
    }

    fn join(&mut self, queue: mpsc::UnboundedSender<String>) {
        self.hub.join(&self.node, queue);
        self.joined = true;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.joined {
            self.hub.finish(&self.node);
        } else {
            self.hub.leave(&self.node, &self.why);
        }
    }
}
