//! `rkill`: stop the group's running transfer (bad options get a reply, unlike the
//! original, whose request process died): SIGTERM, so that rsync removes its temporary
//! files, then SIGKILL for what is left after [`KILL_GRACE`].

use super::Agent;
use deploy_common::order::rkill::killed;
use deploy_common::order::{Reply, Request};
use deploy_common::rsync::state::KILL_GRACE;
use std::time::{Duration, Instant};

pub(super) async fn run(agent: &Agent, request: &Request) -> Reply {
    let (_, checksum) = match agent.resolve(&request.options) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    let stopping = agent.state.terminate(&checksum);
    let deadline = Instant::now() + KILL_GRACE;
    while stopping.any_left() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let forced = stopping.kill_left();
    agent.state.remove_output(&checksum);
    tracing::info!(checksum = %checksum, killed = ?stopping.pids(), forced = ?forced, "rkill");
    Reply::ok(killed(stopping.pids()))
}
