//! The state a proxy keeps for its callers, behind traits that one proxy (an embedded
//! database in its state directory) or several proxies sharing a fleet (NATS JetStream
//! key-value) implement alike.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`versions`] | [`ScenarioVersion`] and the [`ScenarioStore`] trait (list, get by prefix, append, forget) |
//! | [`lease`] | [`LeaseStore`]: named leases with a holder and an expiry (cluster locks taken through a proxy, the heartbeat's leader) |
//! | [`redb`] (feature `redb`) | [`RedbStore`]: one proxy, `<state_dir>/scenario-versions.redb` |
//! | [`seal`] | [`seal::StoreKey`]: the HMAC-SHA256 tag, bound to bucket and key, on every value of the shared store |
//! | [`nats`] (feature `nats`) | [`nats::NatsStore`]: several proxies, one JetStream key-value bucket, compare-and-swap on its revisions |
//!
//! # Design
//!
//! * The version record and the trait live here and not in deploy-scenario, so that the
//!   proxy keeps versions without linking the YAML reader (deploy-scenario re-exports
//!   them, and uses this crate with no backend at all).
//! * Every shared write is a compare-and-swap: redb by its one writer, NATS by the key's
//!   revision (`create` fails when the key exists, `update` when the revision moved), so
//!   two proxies writing at once never lose nor duplicate an entry; the loser re-reads
//!   and tries again.
//! * The shared bucket is not trusted (as the NATS bus is not): every value a proxy
//!   writes there is sealed under `[store] key` and bound to its key name ([`seal`]),
//!   and a value that does not verify fails the read that meets it, naming the bucket
//!   and key ([`StoreError::Forged`]); a list with one forged version fails whole
//!   rather than skip it, so that nobody resets to a history with a hole in it.
//! * The node inventory (the `nodes` heartbeat's table) is one opaque JSON document:
//!   the proxy owns its shape, a backend only keeps it ([`nats::NatsStore::put_inventory`]).
//! * Rollouts keep no proxy-side state: the client drives them and the proxy relays
//!   each wave as an order, so nothing of a rollout needs sharing.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod lease;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "redb")]
pub mod redb;
pub mod seal;
pub mod versions;

pub use lease::{Acquired, Lease, LeaseStore};
#[cfg(feature = "redb")]
pub use redb::{RedbStore, BUSY_WAIT, FILE};
pub use versions::{
    pick, BoxFuture, Page, ScenarioStore, ScenarioVersion, StoreError, VersionMap, MIN_PREFIX,
};

/// Unix time now, milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
