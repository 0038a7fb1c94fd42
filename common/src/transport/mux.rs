//! [`Mux`]: one transport that sends each target to the transport of its scheme.
//!
//! ```text
//! Target{scheme: Agent} ─► agent transport (AgentTransport: v2/v1 over TCP)
//! Target{scheme: Ssh}   ─► ssh transport   (SshTransport), or a failure if there is none
//! Target{scheme: Nats}  ─► nats transport  (deploy_nats::NatsTransport), or a failure
//! ```
//!
//! The fan-out engine sees one `dyn Transport`, so a run may mix agents and SSH hosts;
//! deploy-client uses it, and deploy-proxy for each group's servers. Events pass from
//! the chosen transport to the caller untouched, so the names a proxy puts on its
//! agents' events survive.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{BoxFuture, Outcome, Transport};
use crate::order::Request;
use crate::target::{Scheme, Target};
use crate::wire::message::TaggedEvent;

/// Dispatches deliveries by [`Target::scheme`].
#[derive(Clone)]
pub struct Mux {
    /// For agents (and proxies).
    pub agent: Arc<dyn Transport>,
    /// For `ssh://` hosts; `None` refuses them.
    pub ssh: Option<Arc<dyn Transport>>,
    /// For `nats://` agents; `None` refuses them.
    pub nats: Option<Arc<dyn Transport>>,
}

impl Mux {
    fn pick(&self, scheme: Scheme) -> Result<&Arc<dyn Transport>, &'static str> {
        match scheme {
            Scheme::Agent => Ok(&self.agent),
            Scheme::Ssh => self.ssh.as_ref().ok_or("SSH hosts are not supported here"),
            Scheme::Nats => self
                .nats
                .as_ref()
                .ok_or("nats:// agents need NATS servers (--nats-servers or [nats] server[])"),
        }
    }
}

impl Transport for Mux {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        match self.pick(target.scheme) {
            Ok(t) => t.deliver(target, request, events),
            Err(why) => unsupported(why),
        }
    }

    fn connect<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), Outcome>> {
        match self.pick(target.scheme) {
            Ok(t) => t.connect(target, request),
            Err(why) => Box::pin(async move { Err(Outcome::Failed(why.to_owned())) }),
        }
    }
}

/// The outcome for a target whose scheme has no transport here.
fn unsupported<'a>(why: &'static str) -> BoxFuture<'a, Outcome> {
    Box::pin(async move { Outcome::Failed(why.to_owned()) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::order::Reply;
    use crate::wire::message::Event;

    struct Fixed(u16);

    impl Transport for Fixed {
        fn deliver<'a>(
            &'a self,
            _target: &'a Target,
            _request: &'a Request,
            _events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async move { Outcome::Reply(Reply::empty(self.0)) })
        }
    }

    #[tokio::test]
    async fn by_scheme() {
        let mux = Mux {
            agent: Arc::new(Fixed(201)),
            ssh: Some(Arc::new(Fixed(202))),
            nats: None,
        };
        let code = |o: Outcome| o.reply().map(|r| r.code);
        let (tx, _rx) = mpsc::channel(1);
        let agent = Target::parse("h", 1).unwrap();
        let ssh = Target::parse("ssh://h", 1).unwrap();
        let r = Request::default();
        assert_eq!(code(mux.deliver(&agent, &r, tx.clone()).await), Some(201));
        assert_eq!(code(mux.deliver(&ssh, &r, tx.clone()).await), Some(202));
        let none = Mux { ssh: None, ..mux };
        assert!(matches!(
            none.deliver(&ssh, &r, tx).await,
            Outcome::Failed(_)
        ));
    }

    /// Tags, like a proxy's agent transport puts on relayed events.
    struct Tags;

    impl Transport for Tags {
        fn deliver<'a>(
            &'a self,
            _target: &'a Target,
            _request: &'a Request,
            events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                let event = Event::Progress {
                    bytes: 1,
                    percent: 2,
                    rate: "3".into(),
                };
                events
                    .send(TaggedEvent::about("web1", event))
                    .await
                    .unwrap();
                Outcome::Reply(Reply::empty(200))
            })
        }
    }

    #[tokio::test]
    async fn tagged_deliveries_keep_their_tags() {
        let mux = Mux {
            agent: Arc::new(Tags),
            ssh: Some(Arc::new(Fixed(202))),
            nats: None,
        };
        let r = Request::default();
        let (tx, mut rx) = mpsc::channel(4);
        let agent = Target::parse("h", 1).unwrap();
        let outcome = mux.deliver(&agent, &r, tx.clone()).await;
        assert_eq!(outcome.reply().map(|r| r.code), Some(200));
        assert_eq!(rx.recv().await.unwrap().host.as_deref(), Some("web1"));
        // The SSH side tags nothing.
        let ssh = Target::parse("ssh://h", 1).unwrap();
        let outcome = mux.deliver(&ssh, &r, tx).await;
        assert_eq!(outcome.reply().map(|r| r.code), Some(202));
    }
}
