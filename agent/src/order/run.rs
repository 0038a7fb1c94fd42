//! `run`: an arbitrary command, as argv (no shell), only where the agent's configuration
//! says `allow_run = on` (off by default: `exec` with whitelisted jobs is the safe
//! default). With `sudo`, the command runs under `sudo -n`.

use super::{process, Agent};
use deploy_common::order::run::ran;
use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::Events;

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    if !agent.config.server.allow_run {
        return Reply::error(403, "run is disabled on this agent (allow_run = off)");
    }
    if request.argv.is_empty() {
        return Reply::error(400, "run needs a command");
    }
    if request.argv.iter().any(|a| a.contains('\0')) {
        return Reply::error(400, "run: NUL byte in an argument");
    }
    let stdin = match deploy_common::order::run::stdin(request) {
        Ok(stdin) => stdin,
        Err(reply) => return reply,
    };
    let argv = process::with_sudo(request.sudo, &request.argv);
    if request.background && stdin.is_some() {
        return Reply::error(400, "run: a background command reads no stdin");
    }
    if let Err(refused) = process::wait_for_instant(request).await {
        return refused;
    }
    if request.background {
        return super::tasks::start(agent, "run", &argv, &argv.join(" "));
    }
    let started_at = deploy_common::order::at::now_ms();
    let finished = process::run(&argv, stdin, request.follow, events).await;
    let mut body = ran(finished.code, &argv.join(" "), &finished.output);
    process::note_start(&mut body, request, started_at);
    Reply::ok(body)
}
