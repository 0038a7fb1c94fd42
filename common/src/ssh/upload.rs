//! `upload` and `sync` on SSH hosts: the tar stream into `tar -x` on each host, then
//! the command (upload) or the sync tool and its protocol (sync).
//!
//! ```text
//! connect ─► exec "mkdir -p -- ROOT && tar -x -p -f - -C ROOT --numeric-owner [--no-same-owner]"
//!            stdin ◄─ the manifest as tar, chunk by chunk (the host's window paces it)
//!   tar exits 0 ─► upload: exec sh -c 'mkdir -p -- ROOT && cd ROOT && {⏎COMMAND⏎}'  (if given)
//!              └─► sync:   wait until every host is there (or failed), then
//!                          exec sh -c '… cd ROOT && DEPLOY_RUN_DIR=$PWD … {⏎TOOL⏎}'
//!                          stdin ◄─ HELLO/NODE/START, then the hub's lines; stdout SYNC ─► hub
//! ```
//!
//! The manifest is walked once per run and shared by every host; each host's stream
//! reads the files itself, so a slow host paces only itself and memory stays constant.
//! Under `--sudo` the extraction and the command run under `sudo -n sh -c`.
//!
//! The sync [`Hub`] (one per run, by prefix) lets the tools start once every host has
//! its files or has failed (strict: any failure aborts before any tool starts; loose:
//! unreachable hosts are left out), gives each HELLO/NODE/START, and relays each SYNC
//! to all. A tool that fails after START ends the others' input (EOF), since they could
//! wait at a barrier for it forever. The default run directory (per host) is removed
//! when the host's tool has ended, unless kept. A file that cannot be sent whole fails its host,
//! but what was extracted before stays on it (there is no staging directory).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};

use super::lines::{quote, shell};
use super::session::{self, Session};
use super::{Shared, SshError};
use crate::order::run::ran;
use crate::order::sync::{SyncRun, RUNS_DIR};
use crate::order::upload::sent;
use crate::order::{Reply, Request};
use crate::target::{expand, Target};
use crate::upload::{tar, Manifest};
use crate::wire::message::{Event, Stream, TaggedEvent};

/// Sync hubs by prefix.
pub(super) type Hubs = Mutex<HashMap<String, Arc<Hub>>>;

impl Shared {
    /// Serves `upload` and `sync`.
    pub(super) async fn deliver_upload(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
        events: &mpsc::Sender<TaggedEvent>,
    ) -> Result<Reply, SshError> {
        let node = target.to_string();
        // How the tools name this host: `[user@host:port]`, as orgalorg does.
        let name = self.node_name(target);
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
                    member.why = match &reply.body {
                        crate::order::Body::Text(text) => format!("{} {text}", reply.code),
                        _ => format!("its upload failed ({} {})", reply.code, reply.reason()),
                    };
                }
                return Ok(reply);
            }
            Err(e) => {
                if let Some(member) = &mut member {
                    member.why = e.to_string();
                    // Only a host that cannot be reached may be left out (loose mode).
                    member.unreachable = e.is_unreachable();
                }
                return Err(e);
            }
        };
        // The command runs under `sh -c` whatever the login shell, in the root (made if
        // missing); on lines of its own, so that `cmd &` or a trailing comment work.
        let command = request.argv.join(" ");
        let cd = if root.is_empty() {
            String::new()
        } else {
            format!("mkdir -p -- {r} && cd {r} && ", r = quote(&root))
        };
        let Some((hub, run)) = sync else {
            if request.argv.is_empty() {
                let body = ran(0, "tar -x", b"");
                return Ok(Reply::ok(sent(body, &root, files, sent_bytes)));
            }
            let command = shell(&format!("{cd}{{\n{command}\n}}"), request.sudo);
            let reply = session::run(&session, &command, None, false, events, self).await?;
            return Ok(match reply.body {
                crate::order::Body::Json(body) if reply.code == 200 => {
                    Reply::ok(sent(body, &root, files, sent_bytes))
                }
                _ => reply,
            });
        };
        let tool = shell(
            &format!("{cd}DEPLOY_RUN_DIR=\"$PWD\" && export DEPLOY_RUN_DIR && {{\n{command}\n}}"),
            request.sudo,
        );
        // Ready: wait for every host before anything starts (strict: abort if one
        // failed), with this host's input queue already taking SYNC lines.
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let mut decided = hub.decided.subscribe();
        if let Some(member) = &mut member {
            member.join(tx, &name);
        }
        let nodes = match Hub::wait(&mut decided).await {
            Ok(nodes) => nodes,
            Err(why) => {
                let mut content = Vec::new();
                say(events, &mut content, &format!("sync: {why}")).await;
                self.remove_run_dir(&session, run, &root, request.sudo, events)
                    .await;
                let body = ran(1, &tool, &content);
                return Ok(Reply::ok(sent(body, &root, files, sent_bytes)));
            }
        };
        let opening = run.opening(&hub.names(&nodes), &name);
        let feed = |writer: Arc<russh::ChannelWriteHalf<russh::client::Msg>>| async move {
            let send = |text: String| {
                let writer = Arc::clone(&writer);
                async move { writer.data_bytes(text.into_bytes()).await }
            };
            // A tool that ended before HELLO is fine: nothing more to tell it.
            if send(opening).await.is_err() {
                return Ok(false);
            }
            while let Some(line) = rx.recv().await {
                if send(line).await.is_err() {
                    return Ok(false);
                }
            }
            // The run was aborted (a tool failed): EOF tells the tool.
            Ok(true)
        };
        let relay = Arc::clone(&hub);
        let keep = |stream: Stream, line: &str| {
            if stream != Stream::Stdout {
                return true;
            }
            match run.sync_request(line) {
                None => true,
                // A SYNC request is relayed; any other line is output, even one
                // that starts with the prefix (a tool echoing what it was told).
                Some(Some(description)) => {
                    relay.broadcast(&name, description);
                    false
                }
                Some(None) => true,
            }
        };
        let ran_tool = session::exec(&session, &tool, false, events, self, feed, keep).await;
        let (mut code, mut content) = match &ran_tool {
            Ok(ran) => (ran.code, ran.content.clone()),
            Err(e) => (255, format!("{e}\n").into_bytes()),
        };
        if let Some(member) = &mut member {
            member.ended(code == 0, &format!("its tool ended with code {code}"));
        }
        drop(member);
        if let Some(why) = hub.aborted(&node) {
            say(events, &mut content, &format!("sync: {why}")).await;
            if code == 0 {
                code = 1;
            }
        }
        ran_tool?;
        self.remove_run_dir(&session, run, &root, request.sudo, events)
            .await;
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
        events: &mpsc::Sender<TaggedEvent>,
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
        let session = match self.connect_all_or_none(target, request).await? {
            Ok(session) => session,
            Err(reply) => return Ok(Prepared::Done(reply)),
        };
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
                    say(events, &mut content, &format!("upload stopped: {why}")).await;
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

    /// Removes the run's own directory from the host once its tool has ended
    /// ([`SyncRun::scratch`]), and `~/.deploy-runs` if that leaves it empty. A failure
    /// is only a warning: the run's result stands.
    async fn remove_run_dir(
        &self,
        session: &Session,
        run: &SyncRun,
        root: &str,
        sudo: bool,
        events: &mpsc::Sender<TaggedEvent>,
    ) {
        if !run.scratch || root.is_empty() {
            return;
        }
        let command = shell(
            &format!(
                "rm -rf -- {r} && {{ rmdir -- {d} 2>/dev/null; true; }}",
                r = quote(root),
                d = quote(RUNS_DIR),
            ),
            sudo,
        );
        let done = |_| async { Ok(true) };
        match session::exec(session, &command, false, events, self, done, |_, _| false).await {
            Ok(ended) if ended.code == 0 => {}
            Ok(ended) => {
                tracing::warn!(dir = %root, code = ended.code, "cannot remove the run directory")
            }
            Err(e) => tracing::warn!(dir = %root, cause = %e, "cannot remove the run directory"),
        }
    }

    /// The hub of `run`, made by the first host of the run.
    fn hub(&self, run: &SyncRun) -> Arc<Hub> {
        self.hub_at(&run.prefix, run)
    }

    /// The hub named `key` for `run`'s hosts, made by the first host that asks.
    fn hub_at(&self, key: &str, run: &SyncRun) -> Arc<Hub> {
        let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            hubs.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Hub::new(run.clone()))),
        )
    }

    /// Connects to `target`; in strict mode (`request.sync` with `strict`, which the
    /// client sets on `run`, `upload` and `sync` unless `--skip-unreachable`), then
    /// waits until every host of the run has connected or failed, so that nothing
    /// starts anywhere unless every host is there: `Ok(Err(reply))` (503, naming the
    /// host that failed) when one is not. This is the sync hub's barrier, met once more
    /// right after authentication.
    pub(super) async fn connect_all_or_none(
        self: &Arc<Self>,
        target: &Target,
        request: &Request,
    ) -> Result<Result<Session, Reply>, SshError> {
        let node = target.to_string();
        // A host outside the run's list (a proxy's own servers) is never waited for.
        let gate = request
            .sync
            .as_deref()
            .filter(|run| run.strict && run.nodes.contains(&node))
            .map(|run| self.hub_at(&format!("{} connect", run.prefix), run));
        let mut member = gate.as_ref().map(|hub| Member::new(Arc::clone(hub), &node));
        let session = match self.connect(target).await {
            Ok(session) => session,
            Err(e) => {
                if let Some(member) = &mut member {
                    member.why = e.to_string();
                    member.unreachable = e.is_unreachable();
                }
                return Err(e);
            }
        };
        let (Some(hub), Some(mut member)) = (gate, member) else {
            return Ok(Ok(session));
        };
        let mut decided = hub.decided.subscribe();
        // Nobody reads this queue: the connect barrier relays no SYNC lines.
        member.join(mpsc::unbounded_channel().0, &node);
        let decision = Hub::wait(&mut decided).await;
        member.ended(true, "connected");
        Ok(match decision {
            Ok(_) => Ok(session),
            Err(why) => Err(Reply::error(
                503,
                format!(
                    "not started (strict: every host or none; --skip-unreachable runs on the others): {}",
                    why.replace("aborted before START: ", "")
                ),
            )),
        })
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
        events: &mpsc::Sender<TaggedEvent>,
    ) -> Result<(session::Ran, u64), SshError> {
        let command = format!(
            "mkdir -p -- {r} && tar -x -p -f - -C {r} --numeric-owner{owner}",
            r = quote(root),
            owner = if no_owner { " --no-same-owner" } else { "" },
        );
        let command = shell(&command, sudo);
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
        let ran = session::exec(session, &command, false, events, self, feed, |_, _| true).await?;
        Ok((ran, counted.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

/// Tells the user why a host failed: a line on its standard error now, and in its
/// result's `content`.
async fn say(events: &mpsc::Sender<TaggedEvent>, content: &mut Vec<u8>, line: &str) {
    let _ = events
        .send(TaggedEvent::from(Event::Line {
            stream: Stream::Stderr,
            line: line.to_owned(),
            partial: false,
        }))
        .await;
    content.extend_from_slice(line.as_bytes());
    content.push(b'\n');
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
    /// `Some(Ok(nodes))` once every host has uploaded or failed (the NODE list), or
    /// `Some(Err(why))` if the run is aborted before START.
    decided: watch::Sender<Option<Result<Vec<String>, String>>>,
}

#[derive(Default)]
struct HubState {
    /// Hosts neither ready nor failed yet.
    pending: HashSet<String>,
    /// Hosts ready (then running their tool), and their input queue.
    ready: HashMap<String, mpsc::UnboundedSender<String>>,
    /// How the tools name each host that joined (`[user@host:port]`).
    names: HashMap<String, String>,
    /// Hosts that failed before START: why, and whether only because unreachable.
    gone: Vec<(String, String, bool)>,
    /// Why the run was aborted after START (a tool failed), and by which host.
    aborted: Option<(String, String)>,
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

    /// Waits for the decision: the hosts to START with, or why the run is aborted.
    async fn wait(
        decided: &mut watch::Receiver<Option<Result<Vec<String>, String>>>,
    ) -> Result<Vec<String>, String> {
        loop {
            if let Some(decision) = decided.borrow_and_update().clone() {
                return decision;
            }
            if decided.changed().await.is_err() {
                return Err("the run ended before it started".to_owned());
            }
        }
    }

    /// `node` has its files and waits for START; its input is `queue`.
    fn join(&self, node: &str, queue: mpsc::UnboundedSender<String>, name: &str) {
        let mut state = self.state();
        state.pending.remove(node);
        state.names.insert(node.to_owned(), name.to_owned());
        state.ready.insert(node.to_owned(), queue);
        self.decide(&state);
    }

    /// `node` failed before START.
    fn leave(&self, node: &str, why: &str, unreachable: bool) {
        let mut state = self.state();
        if state.pending.remove(node) {
            state
                .gone
                .push((node.to_owned(), why.to_owned(), unreachable));
        }
        self.decide(&state);
    }

    /// `node`'s tool ended. A failure after START aborts the run: the other tools could
    /// wait at a barrier forever, so their input ends (EOF).
    fn ended(&self, node: &str, ok: bool, why: &str) {
        let mut state = self.state();
        state.ready.remove(node);
        let started = matches!(&*self.decided.borrow(), Some(Ok(_)));
        if !ok && started && state.aborted.is_none() && !state.ready.is_empty() {
            state.aborted = Some((node.to_owned(), format!("aborted: {node} failed ({why})")));
            state.ready.clear();
        }
    }

    /// Why the run was aborted by another host than `node`, if it was.
    fn aborted(&self, node: &str) -> Option<String> {
        match &self.state().aborted {
            Some((by, why)) if by != node => Some(why.clone()),
            _ => None,
        }
    }

    /// Once nobody is pending, START (or abort) everyone: strict, any failed host
    /// aborts; loose, only unreachable ones are left out.
    fn decide(&self, state: &HubState) {
        if !state.pending.is_empty() || self.decided.borrow().is_some() {
            return;
        }
        let fatal: Vec<&(String, String, bool)> = state
            .gone
            .iter()
            .filter(|(_, _, unreachable)| self.run.strict || !unreachable)
            .collect();
        let decision = match fatal.first() {
            Some((node, why, _)) => Err(format!(
                "aborted before START: {node} failed ({why}){}",
                if fatal.len() > 1 {
                    format!(" and {} more", fatal.len() - 1)
                } else {
                    String::new()
                }
            )),
            None => Ok(self
                .run
                .nodes
                .iter()
                .filter(|n| state.ready.contains_key(*n))
                .cloned()
                .collect()),
        };
        self.decided.send_replace(Some(decision));
    }

    /// The tools' names of `nodes` (hosts as written).
    fn names(&self, nodes: &[String]) -> Vec<String> {
        let state = self.state();
        nodes
            .iter()
            .map(|n| state.names.get(n).cloned().unwrap_or_else(|| n.clone()))
            .collect()
    }

    /// Relays `node`'s SYNC (`node` as the tools name it) to every running tool.
    fn broadcast(&self, node: &str, description: &str) {
        tracing::debug!(node, description, "sync");
        let line = self.run.sync_line(node, description);
        for queue in self.state().ready.values() {
            let _ = queue.send(line.clone());
        }
    }
}

/// A host's membership of a hub: dropped before [`Member::join`], the host failed
/// before START; after, its tool ended (failed, unless [`Member::ended`] said so).
struct Member {
    hub: Arc<Hub>,
    node: String,
    joined: bool,
    ended: bool,
    /// Why the host failed, if it did.
    why: String,
    /// Whether it failed only because it could not be reached.
    unreachable: bool,
}

impl Member {
    fn new(hub: Arc<Hub>, node: &str) -> Member {
        Member {
            hub,
            node: node.to_owned(),
            joined: false,
            ended: false,
            why: "cancelled".to_owned(),
            unreachable: false,
        }
    }

    fn join(&mut self, queue: mpsc::UnboundedSender<String>, name: &str) {
        self.hub.join(&self.node, queue, name);
        self.joined = true;
    }

    fn ended(&mut self, ok: bool, why: &str) {
        self.hub.ended(&self.node, ok, why);
        self.ended = true;
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        match (self.joined, self.ended) {
            (false, _) => self.hub.leave(&self.node, &self.why, self.unreachable),
            (true, false) => self.hub.ended(&self.node, false, "cancelled"),
            (true, true) => {}
        }
    }
}
