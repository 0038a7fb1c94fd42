//! The cluster lock: named leases kept by every agent, and the locker that takes one on
//! all hosts or on none and keeps it alive with heartbeats.
//!
//! # Layout
//!
//! | module | side | owns |
//! |---|---|---|
//! | [`store`] | agent | [`store::LockStore`]: leases as files in the agent's `state_dir` |
//! | [`cluster`] | client | [`cluster::ClusterLock`]: all-or-nothing acquisition, heartbeats, release |
//! | [`crate::order::lock`] | both | the orders' fields, validation and reply bodies |
//!
//! # Design
//!
//! orgalorg holds a `flock(1)` inside an SSH session per host, so a lock lives exactly as
//! long as a connection (peers spec §1.4). Our orders are one request, one reply, so the
//! lock is a **lease** instead: an agent grants it for `lease` seconds to the bearer of a
//! token, the locker renews it every `lease / 3` (the heartbeat), and a lease nobody
//! renews expires by itself, so a locker that dies leaves no stale lock behind for longer
//! than its lease. The locker treats a host it could not renew for a whole lease as lost,
//! measured from when it *sent* the last successful renewal, which is never later than
//! when the agent started that lease: the locker gives up no later than the agent lets go.
//!
//! Agents measure leases on `CLOCK_BOOTTIME` tagged with the kernel's boot id, not on
//! the wall clock, so an NTP step neither steals nor prolongs a lock, and a reboot frees
//! every lock (whatever the lock protected was disturbed anyway).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod cluster;
pub mod store;
