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

impl Transport for Failover {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let proxies = self.order_for(target);
            let mut last = None;
            for (i, proxy) in proxies.iter().enumerate() {
                let outcome = self.inner.deliver(proxy, request, events.clone()).await;
                if i + 1 < proxies.len() && Self::next_may_try(request, &outcome) {
                    tracing::warn!(proxy = %proxy, order = %request.order, outcome = %outcome, "trying the next proxy");
                    last = Some(outcome);
                    continue;
                }
                return outcome;
            }
            last.unwrap_or_else(|| Outcome::Failed("no proxy to try".into()))
        })
    }
}

#[cfg(test)]
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
}
