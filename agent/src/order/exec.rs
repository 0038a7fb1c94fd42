//! `exec`: run a job from the jobs file with the caller's arguments as argv elements (see
//! [`super::process`] for how it runs).

use super::{process, Agent};
use deploy_common::order::exec::{not_found, ran, split_options};
use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::Events;

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    let (name, args) = split_options(&request.options);
    let Some(job) = agent.config.jobs.get(&name) else {
        return Reply::error(400, not_found(&name));
    };
    let argv = match job.argv(&args) {
        Ok(argv) => argv,
        Err(e) => return Reply::error(400, format!("exec[{name}]: {e}")),
    };
    if let Err(refused) = process::wait_for_instant(request).await {
        return refused;
    }
    if request.background {
        return super::tasks::start(agent, "exec", &argv, &job.display(&args));
    }
    let started_at = deploy_common::order::at::now_ms();
    let finished = process::run(&argv, None, request.follow, events).await;
    let mut body = ran(finished.code, &job.display(&args), &finished.output);
    process::note_start(&mut body, request, started_at);
    Reply::ok(body)
}
