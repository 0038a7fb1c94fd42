//! `rlist`: dry-run the group and list what would be created and deleted.

use super::Agent;
use deploy_common::order::rlist::listed;
use deploy_common::order::status::failed;
use deploy_common::order::{Reply, Request};
use deploy_common::rsync::{self as rs};

pub(super) async fn run(agent: &Agent, request: &Request) -> Reply {
    let (spec, _) = match agent.resolve(&request.options) {
        Ok(x) => x,
        Err(reply) => return reply,
    };
    let out = match rs::run_foreground(&spec, true, agent.rsync_timeout()).await {
        Ok(out) => out,
        Err(e) => return Reply::error(500, e.to_string()),
    };
    if !out.success() {
        return Reply::ok(failed(&out.output));
    }
    let text = String::from_utf8_lossy(&out.output);
    let stats = rs::parse_stats(&text);
    let list = rs::parse_file_list(&text);
    Reply::ok(listed(stats.files, stats.size, &list.new, &list.deleted))
}
