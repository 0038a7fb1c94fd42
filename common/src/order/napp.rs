//! The `napp` order: one step of an Octopoda scenario on one node, on the NodeApp
//! `(node, app, scenario)` whose directory is `<workspace>/<app>@<scenario>`.
//!
//! The caller (deploy-client, or a proxy relaying it) runs a scenario's plan as a series
//! of `napp` orders, one stage (one `order` value) at a time with a barrier between stages;
//! the node keeps the NodeApp's files and its versions, so they survive a restart of
//! anything else. An agent serves it only when its configuration enables scenarios, and
//! only under its workspace root, which must lie under `[allow::paths]`.
//!
//! ```text
//! push     {"napp":{"action":"push","scenario":"s","app":"a","message":"m"}} + tar body
//!          → {"return":"true","dir":"/var/lib/deploy/workspace/a@s",
//!             "version":"<hex>"|"" (empty: nothing changed),"files":"12","bytes":"3456"}
//! script   {"napp":{"action":"script","scenario":"s","app":"a","target":"start",
//!            "file":"start.sh","script":"<base64>","env":{"K":"V"}}}
//!          → {"return":"true"|"false","code":"0","output":"<base64 of $OCTOPODA_OUTPUT>",
//!             "stdout":"<base64>","stderr":"<base64>"}   (lines stream as events when followed)
//! commit   {"napp":{"action":"commit","scenario":"s","app":"a","message":"m"}}
//!          → {"return":"true","version":"<hex>"}     (a version even if nothing changed)
//! versions {"napp":{"action":"versions","scenario":"s","app":"a","offset":0,"limit":5}}
//!          → {"return":"true","versions":"<JSON list newest first: {version,time,message}>",
//!             "total":"17","current":"<hex>"}
//! reset    {"napp":{"action":"reset","scenario":"s","app":"a","version":"3fa","message":"m"}}
//!          → {"return":"true","version":"<new hex>","restored":"<full hex of the target>"}
//!          (revert-style: A→B→C reset to A records A again as a fourth version;
//!           a prefix shorter than 3 or matching two versions is refused with 400)
//! get      {"napp":{"action":"get","scenario":"s","app":"a"}}   (app empty: every NodeApp)
//!          → {"return":"true","napps":"<JSON list: {scenario,app,dir,current,versions}>"}
//! purge    {"napp":{"action":"purge","scenario":"s","app":"a"}}
//!          → {"return":"true","existed":"true"|"false"}   the NodeApp directory and
//!             its versions removed
//! ```
//!
//! As the node implements it (`deploy-napp`): `push` extracts over the directory, so
//! files absent from the push stay (as Octopoda's unpack; `reset` or `purge` remove
//! them); a version's `time` is RFC 3339 UTC with milliseconds; ids are 64 hex digits;
//! `versions` of a NodeApp that has none lists nothing (`total` 0); `reset` of one is
//! 404; `script` makes the NodeApp directory if it is missing.
//!
//! Names (`scenario`, `app`) are single path components: no `/`, no NUL, not `.` or
//! `..`, not starting with `.`, at most 128 bytes ([`valid_name`]); the node refuses others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a `napp` order asks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Extract the request's tar body into the NodeApp directory (replacing its tracked
    /// files) and record a version if anything changed.
    Push,
    /// Run one script in the NodeApp directory with Octopoda's and deploy's variables.
    Script,
    /// Record a version even if nothing changed (Octopoda's `commit` target).
    Commit,
    /// List versions, newest first.
    Versions,
    /// Restore a version and record it again (revert-style).
    Reset,
    /// Describe NodeApps on this node.
    #[default]
    Get,
    /// Remove the NodeApp directory and its versions.
    Purge,
}

impl Action {
    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Script => "script",
            Action::Commit => "commit",
            Action::Versions => "versions",
            Action::Reset => "reset",
            Action::Get => "get",
            Action::Purge => "purge",
        }
    }
}

/// The shortest version prefix `reset` accepts (Octopoda's rule).
pub const MIN_VERSION_PREFIX: usize = 3;

/// How many versions `versions` lists when the caller gives no limit (Octopoda's `-l`).
pub const DEFAULT_VERSIONS_LIMIT: usize = 5;

/// The parameters of a `napp` order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NappSpec {
    /// What to do.
    #[serde(default)]
    pub action: Action,
    /// The scenario's name.
    #[serde(default)]
    pub scenario: String,
    /// The application's name (empty for `get`: every NodeApp of the scenario, or of the
    /// node when the scenario is empty too).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub app: String,
    /// `script`: the target being run (`prepare`, `start`, a custom one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// `script`: the script's file name in the scenario (for `OCTOPODA_FILENAME` and logs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// `script`: the script's text, base64 (scripts are code sent by the caller).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub script: String,
    /// `script`: extra variables (the caller's plan: `OCTOPODA_*`/`DEPLOY_*` the node does
    /// not know itself). The node sets the ones naming its own paths and overrides these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `push`, `commit`, `reset`: the version's message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `reset`: the version (a prefix of at least [`MIN_VERSION_PREFIX`] hex digits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `versions`: how many of the newest to skip.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    /// `versions`: how many to list ([`DEFAULT_VERSIONS_LIMIT`] when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// Whether `name` may name a scenario or an application: one path component that cannot
/// climb, hide or surprise a shell's glob.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The NodeApp directory's name under the workspace, as Octopoda names it.
pub fn dir_name(app: &str, scenario: &str) -> String {
    format!("{app}@{scenario}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_harmless_component() {
        for good in ["helloWorld", "app-1", "a.b", "x_y"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "", ".", "..", ".hidden", "-rf", "a/b", "a@b", "a b", "é", "a\0b",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(!valid_name(&"a".repeat(129)));
    }

    #[test]
    fn spec_round_trips_with_defaults() {
        let spec: NappSpec =
            serde_json::from_str(r#"{"action":"reset","scenario":"s","app":"a","version":"abc"}"#)
                .unwrap();
        assert_eq!(spec.action, Action::Reset);
        assert_eq!(spec.limit, None);
        let back: NappSpec = serde_json::from_str(&serde_json::to_string(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
