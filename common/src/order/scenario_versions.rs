//! The `scenario-versions` order: a proxy's own store of scenario versions (one history
//! shared by every caller of that proxy, in an embedded database in its state dir), used
//! by deploy-client when a scenario is applied through the proxy (`--proxy`). Served by
//! the proxy itself, never relayed; any API key the proxy knows may use it (and its
//! `[orders]`, if any, must list `scenario-versions`).
//!
//! ```text
//! list    {"scenario_versions":{"action":"list","scenario":"s","offset":0,"limit":5}}
//!         → {"versions":[<ScenarioVersion>…newest first],"total":17}
//! get     {"scenario_versions":{"action":"get","scenario":"s","prefix":"3fa"}}
//!         → {"version":<ScenarioVersion>}   (400 bad or ambiguous prefix, 404 none)
//! append  {"scenario_versions":{"action":"append","version":<ScenarioVersion>}}
//!         → {"appended":"<id>"}
//! forget  {"scenario_versions":{"action":"forget","scenario":"s"}}
//!         → {"forgotten":"s"}
//! ```
//!
//! A `ScenarioVersion` is deploy-scenario's (`id`, `scenario`, `time` in Unix ms,
//! `message`, `map`: node → app → NodeApp version, `restores`); it travels here as JSON
//! so that this crate does not depend on the scenario crate.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The order's name.
pub const ORDER: &str = "scenario-versions";

/// What is asked of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Versions newest first.
    #[default]
    List,
    /// The version a prefix names.
    Get,
    /// Record a version.
    Append,
    /// Forget a scenario's versions.
    Forget,
}

/// The request's `scenario_versions` field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsSpec {
    /// What to do.
    pub action: Action,
    /// The scenario (list, get, forget).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scenario: String,
    /// A version id prefix (get).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// Versions skipped (list).
    #[serde(default)]
    pub offset: usize,
    /// At most this many (list).
    #[serde(default)]
    pub limit: usize,
    /// The version to record (append).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Value>,
}
