//! `--proxy A,B,…`: proxies that serve one fleet (sharing a `[store] backend = nats`),
//! tried in order, so that a proxy that is down or dies mid-order costs a retry, not the
//! order.
//!
//! ```text
//! deliver(A) ─► Unreachable (no connection: refused, no route, connect timeout)
//!                 ─► B, for every order: nothing was delivered
//!           ─► Failed (connected, then the stream was cut before the final reply)
//!                 ─► B, only for orders safe to run twice: status, rlist, health, nodes,
//!                    releases, tasks (reads); never exec, run, deploy, lock… (A may
//!                    have started them)
//!           ─► Reply / Relayed / Timeout ─► that is the answer (a timeout may mean
//!                    the order is still running behind A: not retried)
//! ```
//!
//! Events A streamed before it was cut are already shown; a retried read order answers
//! whole again from B.

use std::sync::Arc;

use deploy_common::order::Request;
use deploy_common::target::Target;
use deploy_common::transport::{BoxFuture, Outcome, Transport};
use deploy_common::wire::message::TaggedEvent;
use tokio::sync::mpsc;

/// Whether `order` may be sent again after a stream was cut (it only reads).
pub fn retry_safe(order: &str) -> bool {
    matches!(
        order,
        "status" | "rlist" | "health" | "nodes" | "releases" | "tasks"
    )
}

/// A transport that tries the next proxy when one cannot be reached (see the module
/// documentation).
pub struct Failover {
    inner: Arc<dyn Transport>,
    /// Every proxy, in the order given; the fan-out's one target is the first.
    proxies: Vec<Target>,
}

impl Failover {
    /// Wraps `inner`; `proxies` in the order to try them.
    pub fn new(inner: Arc<dyn Transport>, proxies: Vec<Target>) -> Failover {
        Failover { inner, proxies }
    }

    /// Whether `outcome` of `request` lets the next proxy be tried.
    fn next_may_try(request: &Request, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Unreachable { .. } => true,
            Outcome::Failed(_) => retry_safe(&request.order),
            _ => false,
        }
    }

    /// The proxies to try for `target`: the list if it is its first, else itself.
    fn order_for<'a>(&'a self, target: &'a Target) -> Vec<&'a Target> {
        match self.proxies.first() {
            Some(first) if first == target => self.proxies.iter().collect(),
            _ => vec![target],
        }
    }
}

impl Failover {
    /// Delivers to each proxy of `proxies` in turn while the outcome lets the next one
    /// be tried ([`Failover::next_may_try`]); the last proxy's outcome stands.
    async fn try_in_turn(
        &self,
        proxies: &[&Target],
        request: &Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> Outcome {
        let Some((last, first)) = proxies.split_last() else {
            return Outcome::Failed("no proxy to try".into());
        };
        for proxy in first {
            let outcome = self.inner.deliver(proxy, request, events.clone()).await;
            if !Self::next_may_try(request, &outcome) {
                return outcome;
            }
            tracing::warn!(proxy = %proxy, order = %request.order, outcome = %outcome, "trying the next proxy");
        }
        self.inner.deliver(last, request, events).await
    }
}

impl Transport for Failover {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let proxies = self.order_for(target);
            self.try_in_turn(&proxies, request, events).await
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_are_retried_after_a_cut() {
        for order in ["status", "rlist", "health", "nodes"] {
            assert!(retry_safe(order), "{order}");
        }
        for order in [
            "exec", "run", "upload", "deploy", "lock", "unlock", "rsync", "rkill",
        ] {
            assert!(!retry_safe(order), "{order}");
        }
        let request = |order: &str| Request {
            order: order.into(),
            ..Request::default()
        };
        let refused = Outcome::Unreachable {
            address: "a:1".into(),
            cause: "refused".into(),
        };
        assert!(Failover::next_may_try(&request("exec"), &refused));
        let cut = Outcome::Failed("closed".into());
        assert!(!Failover::next_may_try(&request("exec"), &cut));
        assert!(Failover::next_may_try(&request("status"), &cut));
        let slow = Outcome::Timeout(std::time::Duration::from_secs(1));
        assert!(!Failover::next_may_try(&request("status"), &slow));
    }

    /// Proxies by port: 1 unreachable, 2 cut mid-stream (after a tagged event), 3
    /// answers 200; records the ports tried.
    #[derive(Default)]
    struct Proxies {
        tried: std::sync::Mutex<Vec<u16>>,
    }

    impl Transport for Proxies {
        fn deliver<'a>(
            &'a self,
            target: &'a Target,
            _request: &'a Request,
            events: mpsc::Sender<TaggedEvent>,
        ) -> BoxFuture<'a, Outcome> {
            Box::pin(async move {
                self.tried.lock().unwrap().push(target.port);
                match target.port {
                    1 => Outcome::Unreachable {
                        address: target.address(),
                        cause: "refused".into(),
                    },
                    2 => {
                        let line = deploy_common::wire::message::Event::Line {
                            stream: deploy_common::wire::message::Stream::Stdout,
                            line: "partial".into(),
                            partial: false,
                        };
                        let _ = events.send(TaggedEvent::about("web1", line)).await;
                        Outcome::Failed("closed".into())
                    }
                    _ => Outcome::Reply(deploy_common::order::Reply::empty(200)),
                }
            })
        }
    }

    /// Tries `order` through proxies on `ports` (the target the first): the outcome,
    /// the ports tried, and the hosts of the events passed on.
    async fn through(ports: &[u16], order: &str) -> (Outcome, Vec<u16>, Vec<Option<String>>) {
        let inner = Arc::new(Proxies::default());
        let proxies: Vec<Target> = ports.iter().map(|&p| Target::new("p", p)).collect();
        let failover = Failover::new(inner.clone(), proxies.clone());
        let request = Request {
            order: order.into(),
            ..Request::default()
        };
        let (tx, mut rx) = mpsc::channel(8);
        let outcome = failover.deliver(&proxies[0], &request, tx).await;
        let mut hosts = Vec::new();
        while let Some(event) = rx.recv().await {
            hosts.push(event.host);
        }
        let tried = inner.tried.lock().unwrap().clone();
        (outcome, tried, hosts)
    }

    #[tokio::test]
    async fn each_proxy_in_turn_while_the_next_may_try() {
        let (outcome, tried, _) = through(&[1, 3], "exec").await;
        assert_eq!(outcome.reply().map(|r| r.code), Some(200));
        assert_eq!(tried, [1, 3]);
        // A cut exec is not sent again; a cut read is, and the tags of what the cut
        // proxy streamed survive.
        let (outcome, tried, hosts) = through(&[2, 3], "exec").await;
        assert_eq!(outcome, Outcome::Failed("closed".into()));
        assert_eq!(tried, [2]);
        assert_eq!(hosts, [Some("web1".to_owned())]);
        let (outcome, tried, _) = through(&[1, 2, 3], "status").await;
        assert_eq!(outcome.reply().map(|r| r.code), Some(200));
        assert_eq!(tried, [1, 2, 3]);
        // The last proxy's outcome stands, whatever it is.
        let (outcome, tried, _) = through(&[1, 1], "exec").await;
        assert!(matches!(outcome, Outcome::Unreachable { .. }));
        assert_eq!(tried, [1, 1]);
        // A target that is not the first proxy is tried alone.
        let inner = Arc::new(Proxies::default());
        let failover = Failover::new(inner.clone(), vec![Target::new("p", 1)]);
        let (tx, _rx) = mpsc::channel(8);
        let outcome = failover
            .deliver(&Target::new("q", 1), &Request::default(), tx)
            .await;
        assert!(matches!(outcome, Outcome::Unreachable { .. }));
        assert_eq!(*inner.tried.lock().unwrap(), [1]);
    }
}
