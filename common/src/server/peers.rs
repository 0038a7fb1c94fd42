//! Per-peer bookkeeping of one worker: live connections per address
//! (`max_connections_per_peer`) and failed v1 "ssl" requests (`ssl_max_failures`).
//!
//! ```text
//! accept ─► allowed? ─no─► close (nothing read)
//!              │yes
//!              ▼
//!           PeerTable::enter(ip) ─ full ─► close (nothing read)
//!              │ PeerSlot (released on drop)
//!              ▼
//!           serve …   v1 ssl: PeerTable::ssl_refused(ip)? ─yes─► close
//!                     any v1 ssl failure ─► PeerTable::ssl_failed(ip)
//! ```
//!
//! The table lives in the worker's [`super::conn::Policy`], so each worker process counts
//! on its own: with `max_prefork = N` a peer may hold up to N times the cap. The table
//! holds one entry per peer with a live connection or a recent failure; entries whose
//! state expired are dropped when the table grows, so it stays bounded by the live
//! connections plus [`MAX_FAILURE_ENTRIES`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The window in which `ssl_max_failures` failures refuse a peer's v1 ssl.
pub const SSL_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// How long a peer's v1 ssl stays refused once it reached `ssl_max_failures`.
pub const SSL_REFUSAL: Duration = Duration::from_secs(600);

/// Entries kept for peers without a live connection (recent failures) before the oldest
/// state is forgotten.
pub const MAX_FAILURE_ENTRIES: usize = 4096;

/// The limits of a [`PeerTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Live connections per peer address (`max_connections_per_peer`).
    pub connections: usize,
    /// Failed v1 ssl requests per [`SSL_FAILURE_WINDOW`] before the peer's v1 ssl is
    /// refused for [`SSL_REFUSAL`] (`ssl_max_failures`; 0 = never refused).
    pub ssl_failures: u32,
}

#[derive(Debug, Default)]
struct Peer {
    connections: usize,
    /// Failures in the current window, and when the window started.
    failures: u32,
    window: Option<Instant>,
    /// v1 ssl refused until then.
    refused_until: Option<Instant>,
}

impl Peer {
    /// Whether the entry carries nothing worth keeping at `now`.
    fn idle(&self, now: Instant) -> bool {
        self.connections == 0
            && self.refused_until.is_none_or(|t| t <= now)
            && self.window.is_none_or(|w| now >= w + SSL_FAILURE_WINDOW)
    }
}

/// Live connections and v1 ssl failures per peer address. See the [module docs](self).
#[derive(Debug)]
pub struct PeerTable {
    limits: PeerLimits,
    peers: Arc<Mutex<HashMap<IpAddr, Peer>>>,
}

/// A connection counted against its peer's cap; released when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    ip: IpAddr,
    peers: Arc<Mutex<HashMap<IpAddr, Peer>>>,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(peer) = peers.get_mut(&self.ip) {
            peer.connections = peer.connections.saturating_sub(1);
            if peer.idle(Instant::now()) {
                peers.remove(&self.ip);
            }
        }
    }
}

impl PeerTable {
    /// An empty table with these limits.
    pub fn new(limits: PeerLimits) -> PeerTable {
        PeerTable {
            limits,
            peers: Arc::default(),
        }
    }

    /// Counts a new connection from `ip`; `None` if the peer already holds
    /// [`PeerLimits::connections`] of them.
    pub fn enter(&self, ip: IpAddr) -> Option<PeerSlot> {
        let ip = canonical(ip);
        let mut peers = self.lock();
        let peer = peers.entry(ip).or_default();
        if peer.connections >= self.limits.connections.max(1) {
            return None;
        }
        peer.connections += 1;
        Some(PeerSlot {
            ip,
            peers: Arc::clone(&self.peers),
        })
    }

    /// Whether `ip`'s v1 ssl requests are refused now (too many recent failures).
    pub fn ssl_refused(&self, ip: IpAddr) -> bool {
        self.ssl_refused_at(canonical(ip), Instant::now())
    }

    fn ssl_refused_at(&self, ip: IpAddr, now: Instant) -> bool {
        self.lock()
            .get(&ip)
            .and_then(|p| p.refused_until)
            .is_some_and(|t| now < t)
    }

    /// Records a failed v1 ssl request from `ip`; returns whether the peer is now
    /// refused (it just reached the limit).
    pub fn ssl_failed(&self, ip: IpAddr) -> bool {
        self.ssl_failed_at(canonical(ip), Instant::now())
    }

    fn ssl_failed_at(&self, ip: IpAddr, now: Instant) -> bool {
        let limit = self.limits.ssl_failures;
        if limit == 0 {
            return false;
        }
        let mut peers = self.lock();
        if peers.len() > MAX_FAILURE_ENTRIES {
            peers.retain(|_, p| !p.idle(now));
        }
        if peers.len() > MAX_FAILURE_ENTRIES && !peers.contains_key(&ip) {
            // Still full of live state: count nothing new rather than grow without bound
            // (the per-peer connection cap and max_connections still apply).
            return false;
        }
        let peer = peers.entry(ip).or_default();
        match peer.window {
            Some(start) if now < start + SSL_FAILURE_WINDOW => peer.failures += 1,
            _ => {
                peer.window = Some(now);
                peer.failures = 1;
            }
        }
        if peer.failures >= limit {
            peer.refused_until = Some(now + SSL_REFUSAL);
            peer.failures = 0;
            peer.window = None;
            return true;
        }
        false
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Peer>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// At most one log line per interval: the others are counted and the next line says
/// how many were suppressed.
#[derive(Debug)]
pub struct LogRate {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogRate {
    /// One line per `interval`.
    pub fn new(interval: Duration) -> LogRate {
        LogRate {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last line)` if a line may be written now.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (last, suppressed) = &mut *state;
        if last.is_some_and(|t| now < t + self.interval) {
            *suppressed += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(suppressed))
    }
}

/// An IPv4-mapped IPv6 address counts as the IPv4 address (a dual-stack listener).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    fn table(connections: usize, ssl_failures: u32) -> PeerTable {
        PeerTable::new(PeerLimits {
            connections,
            ssl_failures,
        })
    }

    #[test]
    fn connections_are_capped_per_peer_and_released_on_drop() {
        let t = table(2, 0);
        let one = t.enter(A).unwrap();
        let _two = t.enter(A).unwrap();
        assert!(t.enter(A).is_none());
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped());
        assert!(
            t.enter(mapped).is_none(),
            "a mapped address is the same peer"
        );
        let _other = t.enter(B).unwrap();
        drop(one);
        assert!(t.enter(A).is_some());
    }

    #[test]
    fn log_rate() {
        let rate = LogRate::new(Duration::from_secs(1));
        let now = Instant::now();
        assert_eq!(rate.admit_at(now), Some(0));
        assert_eq!(rate.admit_at(now), None);
        assert_eq!(rate.admit_at(now + Duration::from_millis(999)), None);
        assert_eq!(rate.admit_at(now + Duration::from_secs(1)), Some(2));
    }

    #[test]
    fn the_table_forgets_idle_peers() {
        let t = table(1, 3);
        drop(t.enter(A));
        assert!(t.lock().is_empty());
    }

    #[test]
    fn ssl_failures_refuse_a_peer_for_a_while() {
        let t = table(1, 3);
        let now = Instant::now();
        assert!(!t.ssl_failed_at(A, now));
        assert!(!t.ssl_failed_at(A, now));
        assert!(!t.ssl_refused_at(A, now));
        assert!(t.ssl_failed_at(A, now));
        assert!(t.ssl_refused_at(A, now));
        assert!(!t.ssl_refused_at(B, now));
        assert!(t.ssl_refused_at(A, now + SSL_REFUSAL - Duration::from_secs(1)));
        assert!(!t.ssl_refused_at(A, now + SSL_REFUSAL));
        // Failures spread over more than the window never add up.
        let later = now + SSL_REFUSAL;
        for i in 0..10u32 {
            assert!(!t.ssl_failed_at(B, later + SSL_FAILURE_WINDOW * i));
            assert!(!t.ssl_failed_at(B, later + SSL_FAILURE_WINDOW * i));
        }
        let off = table(1, 0);
        for _ in 0..100 {
            assert!(!off.ssl_failed_at(A, now));
        }
        assert!(!off.ssl_refused_at(A, now));
    }
}
