//! [`NatsTransport`]: orders to `nats://<name>` agents, and to a whole group at once.
//!
//! ```text
//! seal(request, psk) ─► publish deploy.agent.<name> (reply: fresh inbox)
//!                       or    deploy.group.<group>  (one publish for the group)
//! inbox ◄── sealed, numbered Event* [Continue → body on deploy.body.<name>.<nonce>] Reply
//! └──────────────────────── whole exchange ≤ deadline ────────────────────────┘
//!
//! body: ≤ WINDOW pieces unacknowledged; each later Continue (every ACK_EVERY pieces
//!       the agent consumed) grants ACK_EVERY more; none for CREDIT_WAIT: Failed
//! ```
//!
//! A host that never answered by the deadline is `Unreachable` (over NATS nobody can
//! tell a dead agent from a missing one, or from one that refused the envelope); one
//! that answered but did not finish is a `Timeout`. A group delivery knows the hosts it
//! expects (the caller's configuration): every one of them gets an outcome, answers
//! from names it did not expect are logged and dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use deploy_common::order::Request;
use deploy_common::target::Target;
use deploy_common::transport::{BoxFuture, Outcome, Transport};
use deploy_common::wire::message::{into_reply, Message, TaggedEvent};
use futures_util::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use crate::envelope::{self, Psk};
use crate::subjects;

/// The request identifier inside envelopes (one order per envelope).
const REQUEST_ID: u64 = 1;

/// Body pieces (64 KiB at most each) a caller may have sent that the agent has not
/// yet acknowledged.
pub const WINDOW: usize = 32;

/// The agent acknowledges the body every this many pieces (a sealed `continue` on the
/// reply inbox, each granting this many more).
pub const ACK_EVERY: usize = 8;

/// How long a caller waits for the agent to grant more of the body.
const CREDIT_WAIT: Duration = Duration::from_secs(15);

/// Delivers orders over NATS, sealed with the agents' `key_cipher`.
#[derive(Clone)]
pub struct NatsTransport {
    client: Client,
    psk: Psk,
    /// Longest wait for the whole exchange.
    pub deadline: Duration,
}

/// One host's part in a group delivery: where its events go, and its outcome.
pub struct Member {
    /// The agent's name (its `deploy.agent.<name>`).
    pub name: String,
    /// Its events.
    pub events: mpsc::Sender<TaggedEvent>,
    /// Its outcome, sent once.
    pub done: tokio::sync::oneshot::Sender<Outcome>,
}

impl NatsTransport {
    /// A transport over `client` for agents whose `key_cipher` is `key_cipher`.
    pub fn new(client: Client, key_cipher: &str, deadline: Duration) -> NatsTransport {
        NatsTransport {
            client,
            psk: Psk::new(key_cipher),
            deadline,
        }
    }

    /// The connection (for callers that also need it, e.g. to close it).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Publishes `request` once on `subject` and collects the replies of `members`
    /// until each has its reply or the deadline passes (then `Unreachable` for those
    /// that said nothing, `Timeout` for the others).
    pub async fn deliver_to(&self, subject: &str, request: &Request, members: Vec<Member>) {
        let deadline = Instant::now() + self.deadline;
        let mut members: HashMap<String, (Member, bool)> = members
            .into_iter()
            .map(|m| (m.name.clone(), (m, false)))
            .collect();
        let fail_all = |members: HashMap<String, (Member, bool)>, outcome: Outcome| {
            for (_, (m, _)) in members {
                let _ = m.done.send(outcome.clone());
            }
        };
        let message = Message::Request {
            id: REQUEST_ID,
            request: request.clone(),
        };
        let envelope::Sealed { bytes, mut opener } =
            match envelope::seal_request(&self.psk, subject, &message, envelope::caller_now()) {
                Ok(sealed) => sealed,
                Err(e) => return fail_all(members, Outcome::Failed(format!("nats: {e}"))),
            };
        let inbox = self.client.new_inbox();
        let mut sub = match self.client.subscribe(inbox.clone()).await {
            Ok(sub) => sub,
            Err(e) => {
                return fail_all(
                    members,
                    Outcome::Failed(format!("nats: cannot subscribe to an inbox: {e}")),
                )
            }
        };
        if let Err(e) = self
            .client
            .publish_with_reply(subject.to_owned(), inbox, bytes.into())
            .await
        {
            return fail_all(
                members,
                unreachable(subject, &format!("cannot publish: {e}")),
            );
        }
        let _ = self.client.flush().await;
        // Bodies being sent, each with the credit its agent granted; a body that could
        // not be sent ends its host's delivery.
        let mut credits: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<(String, String)>();
        while !members.is_empty() {
            let msg = tokio::select! {
                next = tokio::time::timeout_at(deadline, sub.next()) => match next {
                    Ok(Some(msg)) => msg,
                    Ok(None) | Err(_) => break,
                },
                Some((name, why)) = failed_rx.recv() => {
                    if let Some((m, _)) = members.remove(&name) {
                        let _ = m.done.send(Outcome::Failed(why));
                    }
                    continue;
                }
            };
            let (name, message) = match opener.open(&msg.payload) {
                Ok(opened) => opened,
                Err(e) => {
                    tracing::warn!(subject = %subject, cause = %e, "nats: reply refused");
                    // A hole in a known host's stream ends its delivery; an earlier
                    // message sent again (anybody on the bus can replay one) is dropped.
                    if let envelope::EnvelopeError::Sequence {
                        name,
                        got,
                        expected,
                        ..
                    } = &e
                    {
                        if got < expected {
                            continue;
                        }
                        if let Some((m, _)) = members.remove(name) {
                            let _ = m.done.send(Outcome::Failed(format!("nats: {e}")));
                        }
                    }
                    continue;
                }
            };
            let Some((member, heard)) = members.get_mut(&name) else {
                tracing::warn!(subject = %subject, host = %name, "nats: reply from a host not asked; dropped");
                continue;
            };
            *heard = true;
            match message {
                Message::Event { event, .. } => {
                    // An agent speaks for itself: its events carry no host tag.
                    let _ = member.events.send(TaggedEvent::from(event)).await;
                }
                Message::Continue { .. } => {
                    // The first `continue` asks for the body; every later one grants
                    // [`ACK_EVERY`] more pieces.
                    if let Some(credit) = credits.get(&name) {
                        credit.add_permits(ACK_EVERY);
                        continue;
                    }
                    let sealer = match opener.body_sealer(&name) {
                        Ok(sealer) => sealer,
                        Err(e) => {
                            if let Some((m, _)) = members.remove(&name) {
                                let _ = m.done.send(Outcome::Failed(format!("nats: {e}")));
                            }
                            continue;
                        }
                    };
                    let credit = Arc::new(Semaphore::new(WINDOW));
                    credits.insert(name.clone(), Arc::clone(&credit));
                    let body_subject = subjects::body(&name, &opener.nonce_hex());
                    let (this, request, failed) =
                        (self.clone(), request.clone(), failed_tx.clone());
                    tokio::spawn(async move {
                        if let Err(why) = this
                            .send_body(sealer, body_subject, &name, &request, credit)
                            .await
                        {
                            let _ = failed.send((name, why));
                        }
                    });
                }
                Message::Reply {
                    code, body, text, ..
                } => {
                    if let Some((m, _)) = members.remove(&name) {
                        let _ = m.done.send(Outcome::Reply(into_reply(code, body, text)));
                    }
                }
                other => {
                    if let Some((m, _)) = members.remove(&name) {
                        let _ = m.done.send(Outcome::Failed(format!(
                            "nats: unexpected message from the agent: {}",
                            String::from_utf8_lossy(&other.encode())
                                .chars()
                                .take(120)
                                .collect::<String>()
                        )));
                    }
                }
            }
        }
        for (name, (m, heard)) in members {
            let outcome = if heard {
                Outcome::Timeout(self.deadline)
            } else {
                unreachable(
                    &subjects::agent(&name),
                    &format!(
                        "no answer over NATS within {} s",
                        deploy_common::transport::seconds(self.deadline)
                    ),
                )
            };
            let _ = m.done.send(outcome);
        }
    }

    /// Sends the order's body to agent `name`, which asked for it: the shared body a
    /// proxy relays, else the `upload` files as one tar stream. Each piece takes one
    /// unit of `credit` (the agent grants more as it consumes them), so at most
    /// [`WINDOW`] pieces are ever queued for an agent; an agent that grants nothing
    /// for [`CREDIT_WAIT`] (dead, stuck) ends the delivery.
    async fn send_body(
        &self,
        mut sealer: envelope::Replier,
        subject: String,
        name: &str,
        request: &Request,
        credit: Arc<Semaphore>,
    ) -> Result<(), String> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(2);
        let producer = {
            let request = request.clone();
            tokio::spawn(async move { produce_body(&request, tx).await })
        };
        while let Some(chunk) = rx.recv().await {
            take_credit(&credit, name).await?;
            let bytes = sealer
                .seal(&Message::data(REQUEST_ID, &chunk, false))
                .map_err(|e| format!("nats: {e}"))?;
            self.client
                .publish(subject.clone(), bytes.into())
                .await
                .map_err(|e| format!("nats: sending the body: {e}"))?;
        }
        match producer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("upload stopped: {e}")),
            Err(e) => return Err(format!("upload stopped: internal error: {e}")),
        }
        take_credit(&credit, name).await?;
        let bytes = sealer
            .seal(&Message::data(REQUEST_ID, &[], true))
            .map_err(|e| format!("nats: {e}"))?;
        self.client
            .publish(subject, bytes.into())
            .await
            .map_err(|e| format!("nats: sending the body: {e}"))?;
        self.client
            .flush()
            .await
            .map_err(|e| format!("nats: sending the body: {e}"))
    }
}

/// Takes one piece's worth of `credit`, waiting at most [`CREDIT_WAIT`] for agent
/// `name` to grant it.
async fn take_credit(credit: &Semaphore, name: &str) -> Result<(), String> {
    match tokio::time::timeout(CREDIT_WAIT, credit.acquire()).await {
        Ok(Ok(permit)) => {
            permit.forget();
            Ok(())
        }
        _ => Err(format!(
            "nats: agent {name} took no more of the body for {} s (dead or stuck); upload stopped",
            CREDIT_WAIT.as_secs()
        )),
    }
}

/// Produces the body's pieces on `tx` (64 KiB at most each).
async fn produce_body(request: &Request, tx: mpsc::Sender<Vec<u8>>) -> Result<(), String> {
    if let Some(body) = &request.body {
        let mut offset = 0u64;
        loop {
            let chunk = body
                .chunk_at(offset)
                .await
                .map_err(|e| format!("relaying the body: {e}"))?;
            if chunk.is_empty() {
                return Ok(());
            }
            offset += chunk.len() as u64;
            tx.send(chunk)
                .await
                .map_err(|_| "the agent went away".to_owned())?;
        }
    }
    let Some(spec) = request.upload.as_deref().filter(|s| !s.files.is_empty()) else {
        return Err("the agent asked for a body, but this order has none".to_owned());
    };
    let manifest = deploy_common::upload::manifest(spec).await?;
    deploy_common::upload::tar::stream(&manifest, |chunk| {
        let tx = tx.clone();
        async move { tx.send(chunk).await.map_err(|_| "the agent went away") }
    })
    .await
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn unreachable(subject: &str, cause: &str) -> Outcome {
    Outcome::Unreachable {
        address: format!("nats {subject}"),
        cause: cause.to_owned(),
    }
}

impl Transport for NatsTransport {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let (done, outcome) = tokio::sync::oneshot::channel();
            let member = Member {
                name: target.host.clone(),
                events,
                done,
            };
            self.deliver_to(&subjects::agent(&target.host), request, vec![member])
                .await;
            outcome.await.unwrap_or_else(|_| {
                Outcome::Failed("nats: delivery ended without an outcome".into())
            })
        })
    }
}

/// Delivers `request` to the NATS members of `group` with one publish on
/// `deploy.group.<group>`; each target's outcome and events come back as if it had
/// been delivered alone. `targets` are the hosts the caller expects (its
/// configuration): a member that does not answer is reported unreachable after the
/// deadline, one that is not expected is ignored.
pub fn deliver_group(
    transport: Arc<LazyNatsTransport>,
    group: String,
    request: Request,
    targets: Vec<(Target, mpsc::Sender<TaggedEvent>)>,
) -> Vec<(Target, tokio::sync::oneshot::Receiver<Outcome>)> {
    let mut members = Vec::new();
    let mut outcomes = Vec::new();
    for (target, events) in targets {
        let (done, rx) = tokio::sync::oneshot::channel();
        members.push(Member {
            name: target.host.clone(),
            events,
            done,
        });
        outcomes.push((target, rx));
    }
    tokio::spawn(async move {
        match transport.get().await {
            Ok(t) => {
                t.deliver_to(&subjects::group(&group), &request, members)
                    .await
            }
            Err(outcome) => {
                for m in members {
                    let _ = m.done.send(outcome.clone());
                }
            }
        }
    });
    outcomes
}

/// A NATS connection made at its first use (a caller builds its transports before it
/// has a runtime), shared by the transports of every key ([`LazyNatsTransport`]). A
/// connection that fails makes every delivery through it `Unreachable`, naming the
/// servers (without their passwords).
pub struct NatsLink {
    config: deploy_common::config::nats::NatsConfig,
    persistent: bool,
    cell: tokio::sync::OnceCell<Result<Client, String>>,
}

impl NatsLink {
    /// Connects with `config` when first needed; see [`crate::connect::connect`] for
    /// `persistent`.
    pub fn new(config: deploy_common::config::nats::NatsConfig, persistent: bool) -> NatsLink {
        NatsLink {
            config,
            persistent,
            cell: tokio::sync::OnceCell::new(),
        }
    }

    /// The connection, connecting first if needed.
    pub async fn client(&self) -> Result<Client, Outcome> {
        let result = self
            .cell
            .get_or_init(|| async {
                crate::connect::connect(&self.config, "deploy caller", self.persistent)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await;
        result.clone().map_err(|cause| Outcome::Unreachable {
            address: format!(
                "nats {}",
                self.config
                    .servers
                    .iter()
                    .map(|s| crate::connect::redact(s))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            cause,
        })
    }
}

/// A [`NatsTransport`] over a [`NatsLink`], for agents of one `key_cipher`.
pub struct LazyNatsTransport {
    link: Arc<NatsLink>,
    key_cipher: String,
    deadline: Duration,
}

impl LazyNatsTransport {
    /// Orders sealed with `key_cipher`, each bounded by `deadline`.
    pub fn new(link: Arc<NatsLink>, key_cipher: &str, deadline: Duration) -> LazyNatsTransport {
        LazyNatsTransport {
            link,
            key_cipher: key_cipher.to_owned(),
            deadline,
        }
    }

    /// The connected transport, connecting first if needed.
    pub async fn get(&self) -> Result<NatsTransport, Outcome> {
        let client = self.link.client().await?;
        Ok(NatsTransport::new(client, &self.key_cipher, self.deadline))
    }
}

impl Transport for LazyNatsTransport {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match self.get().await {
                Ok(t) => t.deliver(target, request, events).await,
                Err(outcome) => outcome,
            }
        })
    }
}
