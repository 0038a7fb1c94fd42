//! The release orders: `deploy` (a stretcher manifest, in phases across a fleet),
//! `releases` (a host's history), `rollback` and `confirm`.
//!
//! ```text
//! deploy    {"order":"deploy","release":{"manifest_url":"https://…/app.yml",
//!            "phase":"prepare","message":"v42","who":"me@laptop"}}
//!           → {"return":"true","phase":"prepare","dest":"/srv/app","id":"2026…-0f3c1a2b",
//!              "bytes":"52428800","log":"<base64>"}
//!           {"release":{"phase":"switch","dest":"/srv/app","id":"2026…-0f3c1a2b",
//!            "confirm_within":300}}  → {"return":"true","phase":"switch","id":…,
//!              "previous":…,"switched_at":"<unix ms>","log":…}
//!           {"release":{"phase":"abort","dest":…,"id":…}}   a prepared release discarded
//!           {"release":{"phase":"all", …}}   stretcher's one-shot: every strategy
//! releases  {"release":{"dest":"/srv/app"}}  → {"return":"true","current":…,
//!              "releases":"<JSON list, newest first>","history":"<JSON list>"}
//! rollback  {"release":{"dest":"/srv/app","id":"0f3c"}}   (no id: the previous one)
//! confirm   {"release":{"dest":"/srv/app"}}
//! ```
//!
//! The manifest comes by URL (from the agent's allow-list) or inline (`manifest`), and
//! is rendered on the host, with the host's environment, as stretcher does.

use serde::{Deserialize, Serialize};

/// A deploy's phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Prepare then activate, with success/failure hooks (stretcher's one-shot).
    #[default]
    All,
    /// Fetch, verify, pre, unpack into a new release (release strategy only).
    Prepare,
    /// Switch to a prepared release, then post and success/failure.
    Switch,
    /// Discard a prepared release.
    Abort,
}

impl Phase {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::All => "all",
            Phase::Prepare => "prepare",
            Phase::Switch => "switch",
            Phase::Abort => "abort",
        }
    }
}

/// The longest a host waits for a `switch` instant ([`ReleaseSpec::at`]); further ahead
/// of its clock, the caller's clock is taken to be wrong.
pub const MAX_SWITCH_WAIT_MS: i64 = 10_000;

/// How long a host must wait for the switch instant `at` (unix ms), its clock now
/// reading `now`: nothing if the instant has passed or lies implausibly far ahead.
pub fn switch_wait(at: Option<i64>, now: i64) -> Option<std::time::Duration> {
    match super::at::timing(at?, now, MAX_SWITCH_WAIT_MS) {
        super::at::Timing::Wait(wait) if !wait.is_zero() => Some(wait),
        _ => None,
    }
}

/// What a release order asks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReleaseSpec {
    /// `deploy`: the manifest's URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest_url: String,
    /// `deploy`: the manifest's text, sent inline.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest: String,
    /// `deploy`: the phase.
    #[serde(default)]
    pub phase: Phase,
    /// The release's `dest` (switch, abort, releases, rollback, confirm).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub dest: String,
    /// The releases directory, when not `<dest>.releases`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub releases_dir: String,
    /// A release id (switch, abort), an id prefix of 3+ characters (rollback), or for
    /// `prepare` the time part of the new id (`YYYYmmddTHHMMSS.mmmZ`, so that every host
    /// of a rollout names the release alike: `<stamp>-<checksum's first 8>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Why (recorded with the release).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Who asks (user@host; a proxy puts its caller's API key name here).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub who: String,
    /// `switch`/`all`: revert by itself unless `confirm` comes within this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_within: Option<u64>,
    /// `switch`: the instant (unix milliseconds, by the caller's clock) at which every
    /// host of a rollout renames its link, so that the fleet switches at once rather than
    /// in the order the requests arrive. A host that gets it late switches at once; one
    /// whose clock puts it over [`MAX_SWITCH_WAIT_MS`] ahead does not wait either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// `prepare`/`all`: stretcher's knobs for this order; a host's own `[deploy]`
    /// settings bound them (the stricter wins).
    #[serde(default, skip_serializing_if = "Knobs::is_empty")]
    pub knobs: Knobs,
}

/// stretcher's download knobs, per order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Knobs {
    /// Wait a random time in `[0, random_delay)` seconds before fetching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_delay: Option<u64>,
    /// Download rate limit, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<u64>,
    /// Further attempts to open the source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u32>,
    /// Seconds between attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_wait: Option<u64>,
    /// Limit of the download, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

impl Knobs {
    /// No knob set.
    pub fn is_empty(&self) -> bool {
        *self == Knobs::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_waits_only_for_a_plausible_instant() {
        assert_eq!(switch_wait(None, 1_000), None);
        assert_eq!(switch_wait(Some(900), 1_000), None, "passed");
        assert_eq!(
            switch_wait(Some(1_250), 1_000),
            Some(std::time::Duration::from_millis(250))
        );
        assert_eq!(
            switch_wait(Some(1_000 + MAX_SWITCH_WAIT_MS + 1), 1_000),
            None,
            "the caller's clock is off"
        );
    }
}
