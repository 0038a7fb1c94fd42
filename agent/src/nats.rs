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
//!
//! The agent's static NATS key (`[nats] key`, by default `<state_dir>/nats-key`) is
//! loaded by the subscriber, as the workers' user, and created there (0600) if it is
//! the default one and missing; `deploy-agent --print-nats-key` prints the lines
//! callers pin (creating the key the same way, handed to `[server] user` when run as
//! root), which is how an agent is enrolled.

use std::sync::Arc;
use std::time::Duration;

use deploy_common::config::nats::NatsConfig;
use deploy_common::config::AgentConfig;
use deploy_common::server::conn::Policy;
use deploy_common::server::prefork::{self, WorkerTask};
use deploy_nats::envelope::Psk;
use deploy_nats::identity::{AgentKeys, Identity};
use deploy_nats::serve::Subscriber;

use crate::order;

/// The lock file that elects the subscribing worker.
const LOCK_FILE: &str = "nats.lock";
/// The nonces of accepted orders, kept across restarts and takeovers (replay protection).
const JOURNAL_FILE: &str = "nats-seen";
/// The agent's static X25519 key, unless `[nats] key` names another file.
const KEY_FILE: &str = "nats-key";

/// The agent's key file, and whether it is the default one (created when missing).
fn key_path(config: &AgentConfig, nats: &NatsConfig) -> (std::path::PathBuf, bool) {
    match &nats.key {
        Some(path) => (path.clone(), false),
        None => (config.server.state_dir.join(KEY_FILE), true),
    }
}

/// `--print-nats-key`: the pin lines of this agent (its name and aliases), its key
/// created first if it is the default one and missing.
pub fn print_key(config: &AgentConfig) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let nats = config
        .nats
        .as_ref()
        .with_context(|| format!("{}: no [nats] section", config.path.display()))?;
    let (path, default) = key_path(config, nats);
    let server = &config.server;
    if default {
        deploy_common::server::statedir::prepare(
            &server.state_dir,
            server.user.as_deref(),
            server.group.as_deref(),
        )?;
    }
    let (identity, created) = Identity::load_or_create(&path, default)?;
    if created {
        // Made by root for the workers' user, who loads it.
        if let Some((uid, gid, _)) = deploy_common::server::privs::target_ids(
            server.user.as_deref(),
            server.group.as_deref(),
        )? {
            if nix::unistd::geteuid().is_root() {
                nix::unistd::chown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to {uid}:{gid}", path.display()))?;
            }
        }
        eprintln!("deploy-agent: created the NATS key {}", path.display());
    }
    let mut names = vec![name(nats)];
    names.extend(nats.aliases.iter().cloned());
    Ok(AgentKeys::lines(&identity, &names))
}

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
            let (key, default) = key_path(&config, &nats);
            let identity = match Identity::load_or_create(&key, default) {
                Ok((identity, created)) => {
                    if created {
                        tracing::info!(path = %key.display(), public = %identity.public_base64(), "nats: created the agent's key (callers pin it: deploy-agent --print-nats-key)");
                    }
                    Arc::new(identity)
                }
                Err(e) => {
                    tracing::error!(cause = %e, "nats: no key; orders over NATS are not served");
                    return;
                }
            };
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
                identity,
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
