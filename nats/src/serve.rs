//! The agent's side: its subjects, each sealed order opened and served through the
//! program's own [`Handler`], the reply stream sealed back to the caller's inbox.
//!
//! ```text
//! deploy.agent.<name>   ─┐  open (tag, subject, clock, seen?)   serve_request (404, 408,
//! deploy.group.<group>  ─┴─► refused: logged, no answer    ──► access log "nats")
//!                                                               │ events, continue, reply
//! caller's inbox (msg.reply) ◄── sealed, numbered ──────────────┘
//! deploy.body.<name>.<nonce> ──► the body's data, when the order asked (continue);
//!                                 a `continue` back every ACK_EVERY pieces taken
//! ```
//!
//! A refused envelope gets no answer: the agent cannot seal one for a caller without
//! the key, and an unsealed answer would be a forgery's playground. The caller sees
//! the host unreachable at its deadline.
//!
//! Replay protection holds per [`Subscriber`]: one per agent (the agent's workers elect
//! one, see the agent). It refuses any order stamped before it started
//! ([`Subscriber::since_ms`]); an order in flight during a takeover is lost (the caller
//! reports the host unreachable), never run twice. An order stamped *after* the start
//! (a caller's clock up to `MAX_SKEW` ahead) may have been seen by the predecessor, so
//! every accepted nonce is also appended (and synced) to a journal
//! ([`Subscriber::journal`]) before its order runs, and a new subscriber loads the
//! journal's nonces still inside the replay window first: a restart or a takeover
//! does not reopen the window for a recorded order.
//!
//! The journal is written by a thread of its own with group commit:
//!
//! ```text
//! subscriber loop: open ─► seen-set (memory) ─► journal queue ─► spawn order task
//! journal thread:  take every queued line ─► one write ─► one fdatasync ─► ack each
//! order task:      wait for its ack ─► run (an error: refused, never run)
//! ```
//!
//! so the loop never waits for the disk, and all orders that arrived while one sync
//! ran share the next one; an order still runs only once its nonce is durable.
//!
//! Replies are sealed with the agent's static key ([`Subscriber::identity`]), whose
//! public half callers pin for every name it answers to.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::Client;
use base64::Engine as _;
use deploy_common::server::conn::{self, BodyChunk, Events, Handler, Policy};
use deploy_common::wire::message::{Message, TaggedEvent};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::envelope::{self, Psk, Replier, SeenSet, StreamOpener};
use crate::identity::Identity;
use crate::subjects;

/// The address the access log shows for an order that came over NATS (the peer is
/// the caller behind the bus, whose address nobody knows).
pub const NATS_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Why the subscriber stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A subscription was refused (permissions) or the connection is closed.
    #[error("nats: cannot subscribe to {subject}: {cause}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        cause: String,
    },
    /// The nonce journal could not be read or written.
    #[error("nats: nonce journal {}: {cause}", path.display())]
    Journal {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        cause: String,
    },
}

/// One agent's presence on NATS.
pub struct Subscriber {
    /// The connection.
    pub client: Client,
    /// `deploy.agent.<name>`'s name.
    pub name: String,
    /// Groups whose subjects it also serves.
    pub groups: Vec<String>,
    /// Further names it answers to on `deploy.agent.<alias>`.
    pub aliases: Vec<String>,
    /// From `key_cipher`.
    pub psk: Psk,
    /// The agent's static key: replies are bound to it (callers pin its public half).
    pub identity: Arc<Identity>,
    /// Orders stamped before this instant (unix ms) are refused.
    pub since_ms: i64,
    /// The nonce journal (`<state_dir>/nats-seen`): the nonces of accepted orders, kept
    /// across restarts and takeovers; `None`: in memory only.
    pub journal: Option<std::path::PathBuf>,
}

/// The nonces of accepted orders, on disk: a line `<hex nonce> <time ms>` each,
/// appended with group commit by a thread of its own ([`Journal::record`]).
struct Journal {
    path: std::path::PathBuf,
    queue: std::sync::mpsc::Sender<Pending>,
    /// fdatasync calls made so far (for the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    syncs: Arc<std::sync::atomic::AtomicU64>,
}

/// A line waiting for the journal thread, and who waits for it to be durable.
struct Pending {
    line: String,
    durable: oneshot::Sender<Result<(), String>>,
}

impl Journal {
    /// Loads the still-relevant nonces of `path` into `seen`, rewrites the file with
    /// only those, opens it for appending and starts its thread.
    fn open(path: &std::path::Path, seen: &mut SeenSet, now: i64) -> std::io::Result<Journal> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let text = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut kept = String::new();
        for line in String::from_utf8_lossy(&text).lines() {
            let Some((hex, time)) = line.split_once(' ') else {
                continue;
            };
            let (Some(nonce), Ok(time)) = (unhex32(hex), time.parse::<i64>()) else {
                continue;
            };
            // Only what can still pass the clock check; a nonce listed twice once.
            let window = i64::try_from(envelope::MAX_SKEW.as_millis()).unwrap_or(i64::MAX);
            if now.saturating_sub(time) <= window.saturating_mul(2)
                && seen.insert(nonce, time, now).is_ok()
            {
                kept.push_str(line);
                kept.push('\n');
            }
        }
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc_o_nofollow())
            .open(&tmp)?;
        file.write_all(kept.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc_o_nofollow())
            .open(path)?;
        Journal::start(path, file)
    }

    /// Starts the thread appending to `file` (already open on `path`).
    fn start(path: &std::path::Path, file: std::fs::File) -> std::io::Result<Journal> {
        let (queue, pending) = std::sync::mpsc::channel();
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = Arc::clone(&syncs);
        std::thread::Builder::new()
            .name("nats-journal".into())
            .spawn(move || group_commit(file, &pending, &counter))?;
        Ok(Journal {
            path: path.to_owned(),
            queue,
            syncs,
        })
    }

    /// Queues `nonce_hex` for the journal; the receiver says when it is durable (or
    /// why it could not be made so). Never waits for the disk.
    fn record(&self, nonce_hex: &str, time_ms: i64) -> oneshot::Receiver<Result<(), String>> {
        let (durable, done) = oneshot::channel();
        let pending = Pending {
            line: format!("{nonce_hex} {time_ms}\n"),
            durable,
        };
        if let Err(std::sync::mpsc::SendError(pending)) = self.queue.send(pending) {
            let _ = pending
                .durable
                .send(Err("the journal's thread is gone".to_owned()));
        }
        done
    }
}

/// The journal's thread: every line queued while the previous write and sync ran goes
/// out in one write and one `fdatasync`, then each waiter hears the outcome. Ends when
/// the [`Journal`] is dropped.
fn group_commit(
    mut file: std::fs::File,
    pending: &std::sync::mpsc::Receiver<Pending>,
    syncs: &std::sync::atomic::AtomicU64,
) {
    use std::io::Write as _;
    // After a failed write the file may end in a partial line: start the next batch
    // on a line of its own (the loader skips what does not parse).
    let mut torn = false;
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        batch.extend(pending.try_iter());
        let mut text = String::with_capacity(batch.len() * 80 + 1);
        if torn {
            text.push('\n');
        }
        for p in &batch {
            text.push_str(&p.line);
        }
        let outcome = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| e.to_string());
        syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        torn = outcome.is_err();
        tracing::trace!(
            lines = batch.len(),
            ok = !torn,
            "nats: journal batch synced"
        );
        for p in batch {
            let _ = p.durable.send(outcome.clone());
        }
    }
}

/// `O_NOFOLLOW`: the journal is never reached through a link.
fn libc_o_nofollow() -> i32 {
    libc::O_NOFOLLOW
}

/// 64 hex digits → 32 bytes.
fn unhex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Subscriber {
    /// Subscribes to the agent's subjects, calls `ready`, then serves orders until
    /// `shutdown`; orders in progress then run to their end (the caller's worker waits
    /// for them in its grace period).
    pub async fn serve<H: Handler>(
        self,
        handler: Arc<H>,
        policy: Arc<Policy>,
        shutdown: CancellationToken,
        ready: impl FnOnce(),
    ) -> Result<(), ServeError> {
        let mut subjects = vec![subjects::agent(&self.name)];
        subjects.extend(self.aliases.iter().map(|a| subjects::agent(a)));
        subjects.extend(self.groups.iter().map(|g| subjects::group(g)));
        let mut subs = Vec::new();
        for subject in &subjects {
            let sub = self.client.subscribe(subject.clone()).await.map_err(|e| {
                ServeError::Subscribe {
                    subject: subject.clone(),
                    cause: e.to_string(),
                }
            })?;
            subs.push(sub);
        }
        // The subscriptions are on the server once a flush returned (or will be, once
        // the client connects: it restores them).
        let flushed = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await;
        tracing::info!(
            name = %self.name,
            subjects = %subjects.join(","),
            connected = matches!(flushed, Ok(Ok(()))),
            "nats: serving"
        );
        ready();
        let mut messages = futures_util::stream::select_all(subs);
        let mut loaded = SeenSet::new();
        let journal = match &self.journal {
            Some(path) => {
                match Journal::open(path, &mut loaded, deploy_common::order::at::now_ms()) {
                    Ok(j) => Some(j),
                    Err(e) => {
                        return Err(ServeError::Journal {
                            path: path.clone(),
                            cause: e.to_string(),
                        })
                    }
                }
            }
            None => None,
        };
        let seen = Arc::new(Mutex::new(loaded));
        let tracker = TaskTracker::new();
        let this = Arc::new(self);
        loop {
            let msg = tokio::select! {
                () = shutdown.cancelled() => break,
                msg = messages.next() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
            };
            let subject = msg.subject.to_string();
            let Some(reply_to) = msg.reply.as_ref().map(|r| r.to_string()) else {
                tracing::warn!(subject = %subject, "nats: order without a reply subject refused");
                continue;
            };
            let now = deploy_common::order::at::now_ms();
            // The name the order was sent to (an alias answers as itself).
            let name = subject
                .strip_prefix("deploy.agent.")
                .unwrap_or(&this.name)
                .to_owned();
            let opened = {
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                envelope::open_request(
                    &this.psk,
                    &this.identity,
                    &name,
                    &subject,
                    &msg.payload,
                    &mut seen,
                    now,
                )
            };
            let opened = match opened {
                Ok(opened) if opened.time_ms + SINCE_MARGIN_MS < this.since_ms => {
                    tracing::warn!(
                        subject = %subject,
                        time_ms = opened.time_ms,
                        since_ms = this.since_ms,
                        "nats: order refused: stamped before this subscriber started (possible replay)"
                    );
                    continue;
                }
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(subject = %subject, cause = %e, "nats: order refused");
                    continue;
                }
            };
            // Queued, not awaited here: the orders arriving meanwhile join the next
            // sync (group commit), and the loop goes on reading.
            let durable = journal
                .as_ref()
                .map(|j| (j.record(&opened.nonce_hex, opened.time_ms), j.path.clone()));
            let (handler, policy, this) =
                (Arc::clone(&handler), Arc::clone(&policy), Arc::clone(&this));
            tracker.spawn(async move {
                if let Some((durable, path)) = durable {
                    let outcome = durable
                        .await
                        .unwrap_or_else(|_| Err("the journal's thread is gone".to_owned()));
                    if let Err(cause) = outcome {
                        // Without the record a restart could run it again: refuse.
                        tracing::error!(journal = %path.display(), cause = %cause, "nats: order refused: cannot record its nonce");
                        return;
                    }
                }
                this.run(opened, &name, reply_to, &*handler, &policy).await;
            });
        }
        tracker.close();
        tracker.wait().await;
        Ok(())
    }

    async fn publish(&self, to: &str, replier: &mut Replier, message: &Message) {
        match replier.seal(message) {
            Ok(bytes) => {
                if let Err(e) = self.client.publish(to.to_owned(), bytes.into()).await {
                    tracing::warn!(to = %to, cause = %e, "nats: cannot publish a reply");
                }
            }
            Err(e) => tracing::warn!(cause = %e, "nats: cannot seal a reply"),
        }
    }

    /// Runs one opened order to its reply.
    async fn run<H: Handler>(
        &self,
        opened: envelope::Opened,
        name: &str,
        reply_to: String,
        handler: &H,
        policy: &Policy,
    ) {
        let envelope::Opened {
            message,
            mut replier,
            body,
            nonce_hex,
            ..
        } = opened;
        let Message::Request { id, request } = message else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<TaggedEvent>(64);
        let (ready_tx, mut ready_rx) = oneshot::channel();
        let (body_tx, body_rx) = mpsc::channel(BODY_QUEUE);
        let events = Events::with_body(tx, ready_tx, body_rx);
        let work = conn::serve_request(handler, policy, NATS_PEER, request, events);
        tokio::pin!(work);
        let mut body = Some((body, body_tx));
        let mut events_open = true;
        // Acknowledgements of the body, each a `continue` granting the caller more.
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<()>();
        let mut ack_tx = Some(ack_tx);
        let reply = loop {
            tokio::select! {
                reply = &mut work => break reply,
                event = rx.recv(), if events_open => match event {
                    Some(event) => {
                        self.publish(&reply_to, &mut replier, &Message::Event { id, event: event.event }).await;
                    }
                    None => events_open = false,
                },
                Some(()) = ack_rx.recv() => {
                    self.publish(&reply_to, &mut replier, &Message::Continue { id }).await;
                },
                asked = &mut ready_rx, if body.is_some() => {
                    let Some((opener, tx)) = body.take() else { continue };
                    if asked.is_err() {
                        continue;
                    }
                    let subject = subjects::body(name, &nonce_hex);
                    match self.client.subscribe(subject.clone()).await {
                        Ok(sub) => {
                            // The subscription must be on the server before the caller
                            // hears `continue`.
                            let _ = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await;
                            let acks = ack_tx.take().unwrap_or_else(|| mpsc::unbounded_channel().0);
                            tokio::spawn(receive_body(sub, opener, id, tx, acks, policy.socket_timeout));
                            self.publish(&reply_to, &mut replier, &Message::Continue { id }).await;
                        }
                        Err(e) => {
                            tracing::warn!(subject = %subject, cause = %e, "nats: cannot subscribe for the body");
                        }
                    }
                }
            }
        };
        while let Ok(event) = rx.try_recv() {
            self.publish(
                &reply_to,
                &mut replier,
                &Message::Event {
                    id,
                    event: event.event,
                },
            )
            .await;
        }
        self.publish(&reply_to, &mut replier, &Message::reply(id, &reply))
            .await;
        let _ = self.client.flush().await;
    }
}

/// Tolerance of [`Subscriber::since_ms`] for a caller's clock behind ours.
const SINCE_MARGIN_MS: i64 = 0;

/// Whether a body piece's error ends the body: a sealed piece that opened but is not
/// the next one (one skipped: the body has a hole) or does not decode. A piece that
/// does not open (junk, forgery), or an earlier piece sent again, is dropped instead:
/// anybody on the bus can send those, and they must not steer the order.
fn opener_rejects_for_good(e: &envelope::EnvelopeError) -> bool {
    match e {
        envelope::EnvelopeError::Sequence { got, expected, .. } => got > expected,
        envelope::EnvelopeError::Content(_) => true,
        _ => false,
    }
}

/// Pieces of a body buffered between the subscription and the handler.
const BODY_QUEUE: usize = 8;

/// Feeds the caller's body to the order: each piece opened in sequence, decoded, sent
/// on; the order sees its body cut (the channel closes without `End`) on a forged or
/// out-of-sequence piece, or after `idle` without one. Every
/// [`crate::transport::ACK_EVERY`] pieces the order took, `acks` asks for a `continue`
/// to the caller (its credit: the caller keeps at most [`crate::transport::WINDOW`]
/// pieces unacknowledged, so the subscription never holds more).
async fn receive_body(
    mut sub: async_nats::Subscriber,
    mut opener: StreamOpener,
    id: u64,
    tx: mpsc::Sender<BodyChunk>,
    acks: mpsc::UnboundedSender<()>,
    idle: Duration,
) {
    let mut taken = 0usize;
    loop {
        let msg = match tokio::time::timeout(idle, sub.next()).await {
            Ok(Some(msg)) => msg,
            Ok(None) | Err(_) => {
                tracing::warn!("nats: request body cut (nothing within socket_timeout)");
                return;
            }
        };
        let (data, end) = match opener.open(&msg.payload) {
            Ok(Message::Data { id: of, data, end }) if of == id => (data, end),
            Ok(_) => {
                tracing::warn!("nats: request body: unexpected message");
                return;
            }
            // Anybody who may publish on the subject can send junk (the nonce is in the
            // request's clear header): a piece that does not open is dropped, as the
            // caller drops such replies; only a sealed piece out of sequence, or
            // silence until `idle`, ends the body.
            Err(e) if !opener_rejects_for_good(&e) => {
                tracing::warn!(cause = %e, "nats: request body: a piece that does not open dropped");
                continue;
            }
            Err(e) => {
                tracing::warn!(cause = %e, "nats: request body refused");
                return;
            }
        };
        let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) else {
            tracing::warn!("nats: request body: bad base64");
            return;
        };
        if !bytes.is_empty() && tx.send(BodyChunk::Data(bytes)).await.is_err() {
            return;
        }
        taken += 1;
        if taken % crate::transport::ACK_EVERY == 0 && !end {
            let _ = acks.send(());
        }
        if end {
            let _ = tx.send(BodyChunk::End).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("deploy-nats-journal-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn nonce(i: u32) -> String {
        format!("{i:064x}")
    }

    /// Group commit: orders queued while a sync runs share the next one, every one is
    /// acknowledged only once written, and a new subscriber loads them all.
    #[tokio::test]
    async fn lines_queued_together_share_a_sync_and_survive_a_reload() {
        let dir = temp("batch");
        let path = dir.join("nats-seen");
        let now = deploy_common::order::at::now_ms();
        let journal = Journal::open(&path, &mut SeenSet::new(), now).unwrap();
        let waiters: Vec<_> = (0..200).map(|i| journal.record(&nonce(i), now)).collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        let syncs = journal.syncs.load(Ordering::Relaxed);
        assert!(
            syncs < 50,
            "{syncs} syncs for 200 orders queued at once: no group commit"
        );
        drop(journal);
        let mut seen = SeenSet::new();
        let _again = Journal::open(&path, &mut seen, now).unwrap();
        assert_eq!(seen.len(), 200);
        for i in 0..200 {
            let bytes = unhex32(&nonce(i)).unwrap();
            assert_eq!(
                seen.insert(bytes, now, now),
                Err(envelope::EnvelopeError::Replayed)
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A batch that cannot be written fails every order of it (they are refused, not
    /// run), and the next batch starts on a line of its own.
    #[tokio::test]
    async fn a_failed_write_fails_its_orders() {
        let full = std::fs::OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .unwrap();
        let journal = Journal::start(std::path::Path::new("/dev/full"), full).unwrap();
        let waiters: Vec<_> = (0..5).map(|i| journal.record(&nonce(i), 0)).collect();
        for w in waiters {
            assert!(w.await.unwrap().is_err());
        }
    }
}
