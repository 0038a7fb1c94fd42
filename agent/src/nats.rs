//! The agent's `[nats]` section at work: one worker subscribes to the agent's NATS
//! subjects and serves the orders through the same [`order::Agent`] handler as TCP.
//!
//! ```text
//! every worker: task "nats" ─ flock <state_dir>/nats.lock (non-blocking, retried)
//!   └─ the holder: connect (reconnects for ever) ─ subscribe deploy.agent.<name>,
//!      deploy.group.<group>… ─ worker_ready ─ serve until the worker stops
//! ```
//!
//! One subscriber per agent, so that an order published once runs once and the
//! replay set (deploy_nats::envelope::SeenSet) sees every order; when its worker is
//! recycled, another worker takes the lock and refuses orders stamped before it did
//! (deploy_nats::serve).

use std::sync::Arc;
use std::time::Duration;

use deploy_common::config::nats::NatsConfig;
use deploy_common::config::AgentConfig;
use deploy_common::server::conn::Policy;
use deploy_common::server::prefork::{self, WorkerTask};
use deploy_nats::envelope::Psk;
use deploy_nats::serve::Subscriber;

use crate::order;

/// The lock file that elects the subscribing worker.
const LOCK_FILE: &str = "nats.lock";
/// The nonces of accepted orders, kept across restarts and takeovers (replay protection).
const JOURNAL_FILE: &str = "nats-seen";

/// How often a worker that is not the subscriber tries the lock again.
const RETRY: Duration = Duration::from_secs(1);

/// The agent's NATS name: `[nats] name`, else the host name.
pub fn name(nats: &NatsConfig) -> String {
    nats.name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .map(|h| h.split('.').next().unwrap_or_default().to_owned())
            .filter(|h| deploy_common::config::nats::is_subject_token(h))
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

/// The worker task serving `[nats]`, if the config has the section.
pub fn task(
    config: &Arc<AgentConfig>,
    agent: &Arc<order::Agent>,
    policy: &Arc<Policy>,
) -> Option<WorkerTask> {
    let nats = config.nats.clone()?;
    let (config, agent, policy) = (Arc::clone(config), Arc::clone(agent), Arc::clone(policy));
    Some(Box::new(move |shutdown| {
        Box::pin(async move {
            let path = config.server.state_dir.join(LOCK_FILE);
            let _lock = tokio::select! {
                () = shutdown.cancelled() => return,
                lock = elect(&path) => match lock {
                    Some(lock) => lock,
                    None => return,
                },
            };
            let name = name(&nats);
            let client = match deploy_nats::connect::connect(&nats, &name, true).await {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(cause = %e, "nats: cannot connect; orders over NATS are not served");
                    return;
                }
            };
            let subscriber = Subscriber {
                client,
                name,
                groups: nats.groups.clone(),
                aliases: nats.aliases.clone(),
                psk: Psk::new(&policy.key_cipher),
                since_ms: deploy_common::order::at::now_ms(),
                journal: Some(config.server.state_dir.join(JOURNAL_FILE)),
            };
            if let Err(e) = subscriber
                .serve(agent, policy, shutdown, prefork::worker_ready)
                .await
            {
                tracing::error!(cause = %e, "nats: orders over NATS are not served");
            }
        })
    }))
}

/// Waits until this worker holds the lock; `None` if the file cannot be used.
async fn elect(path: &std::path::Path) -> Option<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    loop {
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(file) => file,
            Err(e) => {
                tracing::error!(path = %path.display(), cause = %e, "nats: cannot open the lock file; orders over NATS are not served");
                return None;
            }
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => tokio::time::sleep(RETRY).await,
            Err((_, e)) => {
                tracing::error!(path = %path.display(), cause = %e, "nats: cannot lock; orders over NATS are not served");
                return None;
            }
        }
    }
}
