//! `rkill`: kill the group's running transfer (bad options get a reply, unlike the
//! original, whose request process died).

use super::Agent;
use deploy_common::order::rkill::killed;
use deploy_common::order::{Reply, Request};

pub(super) fn run(agent: &Agent, request: &Request) -> Reply {
    let (_, checksum) = match agent.resolve(&request.options) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    let pids = agent.state.kill(&checksum);
    tracing::info!(checksum = %checksum, killed = ?pids, "rkill");
    Reply::ok(killed(&pids))
}
