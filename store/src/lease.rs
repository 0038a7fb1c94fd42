//! Named leases kept by a store: who holds a name, until when.
//!
//! ```text
//! Lease     {name, holder (a secret token), owner (shown to others), expires_ms (Unix ms)}
//! acquire   free, expired, or already the holder's → granted (renewed) until now + ttl
//!           held by another holder                 → Held(its lease), nothing changed
//! release   the holder's → removed (true); another's or none → unchanged (false)
//! ```
//!
//! Expiry is measured on the wall clock because the lease is shared between machines
//! (several proxies); their clocks are expected to agree to well under a lease's length
//! (NTP). A store decides with [`decide`], then writes with compare-and-swap, so two
//! acquirers racing for one free name get exactly one grant.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::versions::{BoxFuture, StoreError};

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased name.
    pub name: String,
    /// The holder's token (whoever presents it renews or releases the lease).
    pub holder: String,
    /// Who holds it, as shown to whoever is refused (user@host, a proxy's id).
    pub owner: String,
    /// When it ends unless renewed, Unix milliseconds.
    pub expires_ms: u64,
}

impl Lease {
    /// Whether the lease is still in force at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }
}

/// What an acquisition got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// The lease is the caller's until its `expires_ms`.
    Granted(Lease),
    /// Another holder has it.
    Held(Lease),
}

/// Decides an acquisition of `name` by `holder` for `ttl` at `now_ms`, given the
/// current lease if any: the lease to write, or the holder that refuses it.
pub fn decide(
    current: Option<&Lease>,
    name: &str,
    holder: &str,
    owner: &str,
    ttl: Duration,
    now_ms: u64,
) -> Acquired {
    match current {
        Some(lease) if lease.live(now_ms) && lease.holder != holder => {
            Acquired::Held(lease.clone())
        }
        _ => Acquired::Granted(Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            owner: owner.to_owned(),
            expires_ms: now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
        }),
    }
}

/// Where leases are kept.
pub trait LeaseStore: Send + Sync {
    /// Takes or renews `name` for `holder` for `ttl` (see the module documentation).
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquired, StoreError>>;

    /// Releases `name` if `holder` holds it; whether it did.
    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The lease on `name` in force now, if any.
    fn holder<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>, StoreError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_expired_and_own_leases_are_granted() {
        let ttl = Duration::from_secs(10);
        let Acquired::Granted(a) = decide(None, "n", "t1", "a", ttl, 1000) else {
            panic!("free")
        };
        assert_eq!(a.expires_ms, 11_000);
        assert!(matches!(decide(Some(&a), "n", "t2", "b", ttl, 5000), Acquired::Held(h) if h == a));
        assert!(
            matches!(decide(Some(&a), "n", "t1", "a", ttl, 5000), Acquired::Granted(r) if r.expires_ms == 15_000)
        );
        assert!(
            matches!(decide(Some(&a), "n", "t2", "b", ttl, 11_000), Acquired::Granted(r) if r.holder == "t2")
        );
    }
}
