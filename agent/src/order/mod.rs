//! The agent's order handlers, one file each, and the [`Agent`] that dispatches to them.
//!
//! Each handler validates its `options` (400), checks the target path against
//! `[allow::paths]` after resolving it canonically (403), then does its work with
//! argument vectors only: no shell ever sees a caller's input.

mod exec;
mod fetch;
mod health;
mod lock;
mod napp;
mod process;
mod relay;
pub mod release;
mod rkill;
mod rlist;
mod rsync;
mod run;
mod status;
mod tarbody;
mod tasks;
mod upload;

use deploy_common::config::AgentConfig;
use deploy_common::order::{OrderName, Reply, Request};
use deploy_common::rsync::state::{RunnerCommand, StateDir};
use deploy_common::rsync::{self as rs, RsyncSpec};
use deploy_common::server::conn::{Events, Handler};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The hidden subcommand that runs a background transfer (see `rsync::state`).
pub const RUNNER_SUBCOMMAND: &str = "__rsync-runner";

/// Everything the order handlers need; one per worker.
pub struct Agent {
    /// The configuration the worker was started with.
    pub config: Arc<AgentConfig>,
    /// Background transfers.
    pub state: StateDir,
    /// How to start a background transfer's runner.
    pub runner: RunnerCommand,
    /// Background tasks' directory (`<state_dir>/tasks`, see [`tasks`]), made by the
    /// first task.
    pub tasks_dir: std::path::PathBuf,
}

impl Agent {
    /// Builds the agent's order context from its configuration.
    pub fn new(config: Arc<AgentConfig>) -> Result<Agent, String> {
        let state = StateDir::new(&config.server.state_dir)
            .map_err(|e| format!("state_dir {}: {e}", config.server.state_dir.display()))?
            .with_stall_timeout(config.server.transfer_stall_timeout);
        let tasks_dir = state.root().join("tasks");
        let program =
            std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        Ok(Agent {
            config,
            state,
            runner: RunnerCommand {
                program,
                args_prefix: vec![RUNNER_SUBCOMMAND.into()],
            },
            tasks_dir,
        })
    }

    /// How long a foreground rsync (dry run) may take.
    fn rsync_timeout(&self) -> Duration {
        self.config
            .server
            .max_process_timeout
            .unwrap_or(Duration::from_secs(24 * 3600))
    }

    /// Resolves `options` to a transfer and checks its target: 400 or 403 on failure.
    /// The returned spec's target is the canonical path; the checksum (the transfer's
    /// handle) is computed from the target as given, like the original's.
    fn resolve(&self, options: &str) -> Result<(RsyncSpec, String), Reply> {
        let mut spec = rs::resolve(options, &self.config.groups)
            .map_err(|e| Reply::error(400, e.to_string()))?;
        let checksum = rs::checksum(&spec);
        let canonical = self
            .config
            .allow_paths
            .check(&spec.src)
            .map_err(|denied| Reply::error(403, denied.to_string()))?;
        spec.src = canonical.to_string_lossy().into_owned();
        Ok((spec, checksum))
    }
}

impl Handler for Agent {
    fn knows(&self, order: &str) -> bool {
        OrderName::parse(order).is_some()
    }

    async fn handle(&self, peer: SocketAddr, request: Request, events: Events) -> Reply {
        let reply = match OrderName::parse(&request.order) {
            Some(OrderName::Status) => status::run(self, &request).await,
            Some(OrderName::Rlist) => rlist::run(self, &request).await,
            Some(OrderName::Rsync) => rsync::run(self, &request, &events).await,
            Some(OrderName::Rkill) => rkill::run(self, &request).await,
            Some(OrderName::Exec) => exec::run(self, &request, &events).await,
            Some(OrderName::Run) => run::run(self, &request, &events).await,
            Some(OrderName::Upload) => upload::run(self, &request, &events).await,
            Some(OrderName::Lock) => lock::lock(self, peer, &request).await,
            Some(OrderName::Unlock) => lock::unlock(self, &request).await,
            Some(OrderName::Deploy) => release::deploy(self, peer, &request, &events).await,
            Some(OrderName::Releases) => release::list(self, &request),
            Some(OrderName::Rollback) => release::rollback(self, peer, &request),
            Some(OrderName::Confirm) => release::confirm(self, peer, &request),
            Some(OrderName::Napp) => napp::run(self, &request, &events).await,
            Some(OrderName::Health) => health::run(self, &request).await,
            Some(OrderName::Fetch) => fetch::run(self, &request, &events).await,
            Some(OrderName::Nodes) => {
                Reply::error(501, "nodes is a proxy's view of its agents; ask a proxy")
            }
            Some(OrderName::Tasks) => tasks::run(self, &request).await,
            None => Reply::empty(404),
        };
        if reply.code >= 400 {
            tracing::info!(peer = %peer, order = %request.order, options = %request.options, code = reply.code, "order refused");
        }
        reply
    }
}
