//! `status`: report a running transfer (its processes, and how far it is from the
//! progress rsync writes to its output), or dry-run the group and report its figures.

use super::Agent;
use deploy_common::order::status::{failed, idle, running, LastTransfer, Running};
use deploy_common::order::{Reply, Request};
use deploy_common::rsync::{self as rs};

pub(super) async fn run(agent: &Agent, request: &Request) -> Reply {
    let (spec, checksum) = match agent.resolve(&request.options) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    if let Some(pids) = agent.state.running(&checksum) {
        return Reply::ok(running(&pids, &now(agent, &checksum)));
    }
    let out = match rs::run_foreground(&spec, true, agent.rsync_timeout()).await {
        Ok(out) => out,
        Err(e) => return Reply::error(500, e.to_string()),
    };
    if !out.success() {
        return Reply::ok(failed(&out.output));
    }
    let stats = rs::parse_stats(&String::from_utf8_lossy(&out.output));
    let last = agent.state.last(&checksum).map(|last| {
        let (state, code) = match (last.code, last.signal) {
            (Some(0), _) => ("finished", 0),
            (Some(code), _) => ("failed", code),
            (None, Some(sig)) => ("killed", 128 + sig),
            (None, None) => ("failed", -1),
        };
        LastTransfer {
            state,
            code,
            message: match last.signal {
                Some(sig) if last.code.is_none() => format!("killed by signal {sig}"),
                _ => rs::exit_meaning(code).to_owned(),
            },
            finished: last.finished,
        }
    });
    Reply::ok(idle(stats.files, stats.size, last.as_ref()))
}

/// What the state directory tells of running transfer `checksum`: its start and the
/// last progress update rsync printed.
pub(super) fn now(agent: &Agent, checksum: &str) -> Running {
    let progress = agent.state.progress(checksum);
    Running {
        started: agent.state.started(checksum),
        bytes: progress.as_ref().map(|p| p.bytes),
        percent: progress.as_ref().map(|p| p.percent),
        rate: progress.map(|p| p.rate),
    }
}
