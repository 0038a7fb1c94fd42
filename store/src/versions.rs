//! Scenario versions: what the fleet ran at one moment, and the [`ScenarioStore`] trait
//! behind which they are kept (a folder's file, a proxy's redb, a shared NATS bucket).
//!
//! ```text
//! ScenarioVersion  {id, scenario, time (Unix ms), message, map: node → app → NodeApp version,
//!                   restores: the version a reset went back to, if any}
//! id               SHA-256 hex of message, time and map (Octopoda: SHA-1 of message + time)
//! ScenarioStore    list (newest first, offset/limit) · get (prefix ≥ 3, ambiguity refused)
//!                  · append · forget (purge)
//! ```
//!
//! The trait's methods return boxed futures and typed errors, so that a store kept by a
//! proxy (an embedded database in its state directory, or a remote one shared by every
//! proxy of a fleet) can implement it without the callers changing. It lives here, not in
//! deploy-scenario, so that the proxy keeps versions without linking the YAML reader.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// The shortest prefix [`ScenarioStore::get`] accepts (Octopoda's rule).
pub const MIN_PREFIX: usize = 3;

/// How many versions `scenario versions` lists without `-l`.
pub const DEFAULT_LIMIT: usize = 5;

/// A boxed, sendable future, as [`ScenarioStore`]'s methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Node → application → NodeApp version (hex).
pub type VersionMap = BTreeMap<String, BTreeMap<String, String>>;

/// One version of a scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScenarioVersion {
    /// Hex id.
    pub id: String,
    /// The scenario's name.
    pub scenario: String,
    /// When it was recorded, Unix milliseconds.
    pub time: u64,
    /// Why.
    pub message: String,
    /// Every NodeApp's version at that moment.
    pub map: VersionMap,
    /// For a reset: the id of the version it went back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<String>,
}

impl ScenarioVersion {
    /// A new version recorded now, its id computed from message, time and map.
    pub fn new(
        scenario: &str,
        message: &str,
        map: VersionMap,
        restores: Option<String>,
    ) -> ScenarioVersion {
        let time = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or_default();
        let mut input = Vec::new();
        input.extend_from_slice(message.as_bytes());
        input.push(0);
        input.extend_from_slice(time.to_string().as_bytes());
        input.push(0);
        input.extend_from_slice(serde_json::to_string(&map).unwrap_or_default().as_bytes());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
        let id = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        ScenarioVersion {
            id,
            scenario: scenario.to_owned(),
            time,
            message: message.to_owned(),
            map,
            restores,
        }
    }
}

/// A page of versions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The versions asked for.
    pub versions: Vec<ScenarioVersion>,
    /// How many versions the scenario has in all.
    pub total: usize,
}

/// What can go wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be read or written.
    #[error("{path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the store is not a version.
    #[error("{path}:{line}: not a scenario version: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The parser's message.
        reason: String,
    },
    /// A prefix shorter than [`MIN_PREFIX`] or not hex.
    #[error("version {prefix:?}: give at least {MIN_PREFIX} hex digits of a version id")]
    BadPrefix {
        /// The prefix.
        prefix: String,
    },
    /// No version matches.
    #[error("scenario {scenario:?}: no version {prefix:?}")]
    NotFound {
        /// The scenario.
        scenario: String,
        /// The prefix.
        prefix: String,
    },
    /// Several versions match.
    #[error("scenario {scenario:?}: version {prefix:?} is ambiguous: {}", .ids.join(", "))]
    Ambiguous {
        /// The scenario.
        scenario: String,
        /// The prefix.
        prefix: String,
        /// The matching ids.
        ids: Vec<String>,
    },
    /// A remote store failed (for stores that are not files).
    #[error("scenario store: {0}")]
    Remote(String),
    /// The shared store (NATS) could not be reached or did not answer in time.
    #[error("shared store: {0}")]
    Unavailable(String),
    /// A value in the shared store that no proxy holding `[store] key` wrote under this
    /// key: refused, never taken (see [`crate::seal`]).
    #[error(
        "shared store: nats bucket {bucket} key {key}: {reason}; refused (not written there \
         by a proxy with this [store] key: a foreign writer, or another key; delete it once understood)"
    )]
    Forged {
        /// The bucket.
        bucket: String,
        /// The key in the bucket.
        key: String,
        /// Why it was refused.
        reason: crate::seal::Refused,
    },
    /// A genuine value that does not parse (a proxy of another release wrote it).
    #[error("shared store: nats bucket {bucket} key {key}: {reason}")]
    Unreadable {
        /// The bucket.
        bucket: String,
        /// The key in the bucket.
        key: String,
        /// The parser's message.
        reason: String,
    },
    /// The shared store was given no key to authenticate its values with.
    #[error("shared store: nats bucket {bucket}: no [store] key; values would be unauthenticated")]
    NoKey {
        /// The bucket.
        bucket: String,
    },
}

/// Where scenario versions are kept.
pub trait ScenarioStore: Send + Sync {
    /// The versions of `scenario`, newest first, `offset` skipped, at most `limit`.
    fn list<'a>(
        &'a self,
        scenario: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StoreError>>;

    /// The version of `scenario` whose id starts with `prefix` (≥ [`MIN_PREFIX`] hex
    /// digits; ambiguity refused).
    fn get<'a>(
        &'a self,
        scenario: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<ScenarioVersion, StoreError>>;

    /// Records a version (durably before it resolves).
    fn append<'a>(&'a self, version: &'a ScenarioVersion) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Forgets every version of `scenario` (the `purge` target).
    fn forget<'a>(&'a self, scenario: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Checks a prefix and picks the one version it names.
pub fn pick(
    scenario: &str,
    prefix: &str,
    versions: impl IntoIterator<Item = ScenarioVersion>,
) -> Result<ScenarioVersion, StoreError> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::BadPrefix { prefix });
    }
    let mut found: Vec<ScenarioVersion> = versions
        .into_iter()
        .filter(|v| v.id.starts_with(&prefix))
        .collect();
    match found.len() {
        0 => Err(StoreError::NotFound {
            scenario: scenario.to_owned(),
            prefix,
        }),
        1 => Ok(found.remove(0)),
        _ => Err(StoreError::Ambiguous {
            scenario: scenario.to_owned(),
            prefix,
            ids: found.into_iter().map(|v| v.id).collect(),
        }),
    }
}
