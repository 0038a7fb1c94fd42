//! The `nodes` order: a proxy's view of its agents (Octopoda's `node get`), from the
//! heartbeat it keeps, never from a probe of the fleet per call.
//!
//! ```text
//! request  {"order":"nodes","args":"groups:web","api_key":"…","options":"online"}
//!          (options: a state to keep, `online`, `unstable` or `offline`; empty: all)
//! reply    {"return":"true","interval_s":"5","updated_ms":"1764672000123","round_ms":"38",
//!           "nodes":[{"name":"web1","group":"web","address":"10.0.0.1:3440",
//!                     "state":"online","latency_ms":1.2,"version":"deploy-agent 0.4.0",
//!                     "since_ms":1764671000000,"last_seen_ms":1764672000100,
//!                     "error":""},…],
//!           "online":"2","unstable":"0","offline":"1"}
//! ```
//!
//! States: `online` the last probe was answered; `unstable` the last probe failed but
//! one was answered within the offline timeout; `offline` none was (or never). `since_ms`
//! is when the node entered its state. An agent that answers the probe with an error
//! (an older agent without `health`, 404) is online all the same: it answered.

use serde::{Deserialize, Serialize};

/// A node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// The last probe was answered.
    Online,
    /// The last probe failed, but one was answered within the offline timeout.
    Unstable,
    /// No probe answered within the offline timeout (or ever).
    Offline,
}

impl State {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Unstable => "unstable",
            State::Offline => "offline",
        }
    }

    /// Parses a `--state` filter.
    pub fn parse(text: &str) -> Option<State> {
        match text.trim().to_ascii_lowercase().as_str() {
            "online" => Some(State::Online),
            "unstable" => Some(State::Unstable),
            "offline" => Some(State::Offline),
            _ => None,
        }
    }
}

/// One agent as the heartbeat last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The `[servers]` entry as written.
    pub name: String,
    /// The group it was listed in (first one).
    pub group: String,
    /// `host:port` probed.
    pub address: String,
    /// Its state.
    pub state: State,
    /// Round trip of the last answered probe, milliseconds.
    #[serde(default)]
    pub latency_ms: f64,
    /// What the agent says it is (empty if it did not say).
    #[serde(default)]
    pub version: String,
    /// When it entered its state, Unix milliseconds.
    pub since_ms: u64,
    /// When a probe was last answered, Unix milliseconds (0: never).
    #[serde(default)]
    pub last_seen_ms: u64,
    /// Why the last probe failed (empty when it did not).
    #[serde(default)]
    pub error: String,
    /// How the agent is reached: `tcp`, or `nats` for a `nats://` server.
    #[serde(default = "tcp")]
    pub via: String,
}

fn tcp() -> String {
    "tcp".to_owned()
}
