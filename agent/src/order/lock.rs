//! `lock` and `unlock`: a named lease in the agent's `state_dir` (see
//! [`deploy_common::order::lock`] for the fields and replies, and
//! [`deploy_common::lock::store`] for how leases are kept).
//!
//! | request | reply |
//! |---|---|
//! | bad name, token, lease or holder | 400 |
//! | `lock`, free, expired, or our token | 200 grant (`renewed` says which) |
//! | `lock`, another token's live lease | 423 with the holder and expiry |
//! | `unlock`, our token | 200 `released: "true"` |
//! | `unlock`, not held | 200 `released: "false"` |
//! | `unlock`, another token's (or none) | 403 naming the holder |
//! | the store fails | 500 (503 if its mutex stays busy) |
//!
//! A `lock` without a token gets a fresh random one; without a holder label, the peer's
//! address is recorded. The store's file operations run on the blocking pool. The store's
//! directory is opened (created and checked) by every request, not at start-up, so an
//! agent that never serves a lock leaves its `state_dir` holding transfers only.

use super::Agent;
use deploy_common::lock::store::{LockOutcome, LockStore, Now, StoreError, UnlockOutcome};
use deploy_common::order::lock::{self as wire, LockArgError, LockName, Token};
use deploy_common::order::{Reply, Request};
use std::net::SocketAddr;

pub(super) async fn lock(agent: &Agent, peer: SocketAddr, request: &Request) -> Reply {
    let parsed = (|| -> Result<_, LockArgError> {
        let name = LockName::parse(&request.options)?;
        let token = match request.token.as_str() {
            "" => Token::generate()?,
            token => Token::parse(token)?,
        };
        let lease = wire::lease(request.lease)?;
        wire::check_holder(&request.holder)?;
        Ok((name, token, lease))
    })();
    let (name, token, lease) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => return Reply::error(400, e.to_string()),
    };
    let holder = match request.holder.as_str() {
        "" => peer.ip().to_string(),
        holder => holder.to_owned(),
    };
    let state_dir = agent.state.root().to_path_buf();
    let outcome = blocking(move || {
        let store = LockStore::open(&state_dir)?;
        let now = Now::system();
        store
            .lock(&name, &token, &holder, lease, &now)
            .map(|outcome| (outcome, now))
    })
    .await;
    match outcome {
        Ok((outcome, now)) => {
            match &outcome {
                LockOutcome::Taken {
                    record,
                    previous: Some(previous),
                } => tracing::info!(
                    lock = %record.name, holder = %record.holder, lease,
                    previous = %previous.holder, "lock taken over from an expired lease"
                ),
                LockOutcome::Taken { record, .. } => {
                    tracing::info!(lock = %record.name, holder = %record.holder, lease, "lock taken")
                }
                LockOutcome::Renewed(record) => {
                    tracing::debug!(lock = %record.name, holder = %record.holder, lease, "lock renewed")
                }
                LockOutcome::Held(_) => {}
            }
            outcome.into_reply(&now)
        }
        Err(reply) => reply,
    }
}

pub(super) async fn unlock(agent: &Agent, request: &Request) -> Reply {
    let name = match LockName::parse(&request.options) {
        Ok(name) => name,
        Err(e) => return Reply::error(400, e.to_string()),
    };
    let state_dir = agent.state.root().to_path_buf();
    let token = request.token.clone();
    let outcome = blocking(move || {
        let store = LockStore::open(&state_dir)?;
        let now = Now::system();
        store.unlock(&name, &token, &now).map(|o| (o, name, now))
    })
    .await;
    match outcome {
        Ok((outcome, name, now)) => {
            if let UnlockOutcome::Released(record) = &outcome {
                tracing::info!(lock = %record.name, holder = %record.holder, "lock released");
            }
            outcome.into_reply(&name, &now)
        }
        Err(reply) => reply,
    }
}

/// Runs a store operation on the blocking pool; store errors become 500/503 replies.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Reply> {
    match tokio::task::spawn_blocking(op).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            tracing::error!(cause = %e, "lock store");
            let code = if matches!(e, StoreError::Busy(_)) {
                503
            } else {
                500
            };
            Err(Reply::error(code, e.to_string()))
        }
        Err(e) => {
            tracing::error!(cause = %e, "lock store task failed");
            Err(Reply::error(500, "lock store task failed"))
        }
    }
}
