//! `rsync --relay` through the proxy: the proxy, not the caller, schedules the relay
//! over the agents of the selection, with the same scheduler the client uses
//! ([`deploy_common::rsync::waves`]), so the source sends about one copy whichever side
//! asked.
//!
//! ```text
//! client ─ rsync, relay: k ─► proxy ── waves over its agents (relay pull / chain / stop)
//!        ◄─ one record per agent (from, pulled, attempts) as each ends
//! ```
//!
//! Relay peers reach each other by address, so every server of the selection must be a
//! plain agent (`host[:port]`): a selection with an `ssh://` host, a `nats://` agent or a
//! chained proxy is refused (501) rather than half-relayed. Servers of several groups are
//! reached each through its own group's route ([`Routes`]).

use crate::route::{Route, Server};
use deploy_common::fanout::FanoutEvent;
use deploy_common::order::{Reply, Request};
use deploy_common::target::{Scheme, Target};
use deploy_common::transport::{BoxFuture, Outcome, Transport};
use deploy_common::wire::message::TaggedEvent;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The widest fan-out a caller may ask for (the client's `--relay-fanout` bound).
const MAX_FANOUT: usize = 64;

/// Each server's route, looked up by its target: the one transport the scheduler needs
/// when the selection spans groups.
struct Routes(Vec<(Target, Arc<Route>)>);

impl Routes {
    fn route(&self, target: &Target) -> Option<&Arc<Route>> {
        self.0.iter().find(|(t, _)| t == target).map(|(_, r)| r)
    }
}

impl Transport for Routes {
    fn deliver<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
        events: mpsc::Sender<TaggedEvent>,
    ) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            match self.route(target) {
                Some(route) => route.deliver(target, request, events).await,
                // Every target the scheduler is given is one of ours.
                None => Outcome::Failed(format!("{target}: not a server of this order")),
            }
        })
    }

    fn connect<'a>(
        &'a self,
        target: &'a Target,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), Outcome>> {
        Box::pin(async move {
            match self.route(target) {
                Some(route) => route.connect(target, request).await,
                None => Err(Outcome::Failed(format!(
                    "{target}: not a server of this order"
                ))),
            }
        })
    }
}

/// Starts the relay of `request` (an `rsync` order whose `relay` is set) over
/// `servers`; the stream is a fan-out's, with the servers' indexes. `Err`: the
/// selection cannot be relayed, and why.
pub fn run(servers: &[Server], request: Request) -> Result<mpsc::Receiver<FanoutEvent>, Reply> {
    if let Some(s) = servers
        .iter()
        .find(|s| s.chained || s.target.scheme != Scheme::Agent)
    {
        return Err(Reply::error(
            501,
            format!(
                "--relay goes to agents reached by address; {} is {}: send it without --relay",
                s.entry,
                if s.chained {
                    "a chained proxy"
                } else {
                    "not an agent reached by address"
                }
            ),
        ));
    }
    let fanout = request.relay.unwrap_or(1).clamp(1, MAX_FANOUT);
    let request = Request {
        relay: None,
        ..request
    };
    let routes = Routes(
        servers
            .iter()
            .map(|s| (s.target.clone(), Arc::clone(&s.route)))
            .collect(),
    );
    let targets = servers.iter().map(|s| s.target.clone()).collect();
    tracing::info!(servers = servers.len(), fanout, "relaying an rsync order");
    Ok(deploy_common::rsync::waves::run(
        Arc::new(routes),
        targets,
        request,
        fanout,
    ))
}
