//! The state of one proxy: one [redb](::redb) file in its state directory, behind
//! [`ScenarioStore`] and [`LeaseStore`], so every caller of that proxy shares one history
//! (and one set of leases) and it survives the proxy's restarts.
//!
//! ```text
//! <state_dir>/scenario-versions.redb
//!   table "versions"   (scenario, seq: u64) → ScenarioVersion as JSON
//!                      seq grows per scenario: newest first = the range reversed
//! list     one read transaction: the scenario's range, reversed, offset/limit
//! get      the scenario's versions through scenario::store::pick (prefix ≥ 3, ambiguity refused)
//! append   one write transaction (redb commits durably before it returns)
//! forget   one write transaction: the scenario's range removed
//!   table "leases"     name → Lease as JSON; acquire/release: one write transaction
//!                      that reads, decides (lease::decide) and writes
//! ```
//!
//! A proxy runs several worker processes and redb locks its file for one process at a
//! time, so each operation opens the database, runs its one transaction and closes it;
//! an operation that finds the file held by another worker waits for it (a few
//! milliseconds, at most [`BUSY_WAIT`]). Operations of one process are serialized by a
//! mutex first. Crash safety is redb's: a transaction is all there or not at all.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::lease::{decide, Acquired, Lease, LeaseStore};
use crate::versions::{pick, BoxFuture, Page, ScenarioStore, ScenarioVersion, StoreError};
use ::redb::{Database, DatabaseError, ReadableDatabase as _, ReadableTable as _, TableDefinition};

/// The database's file name in the proxy's state directory.
pub const FILE: &str = "scenario-versions.redb";

/// The longest an operation waits for another worker to release the file.
pub const BUSY_WAIT: Duration = Duration::from_secs(10);

const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");

/// The proxy's store (see the module documentation).
#[derive(Clone)]
pub struct RedbStore {
    path: PathBuf,
    lock: Arc<Mutex<()>>,
}

impl RedbStore {
    /// The store in `state_dir` (the file is made by the first operation that needs it).
    pub fn in_dir(state_dir: &Path) -> RedbStore {
        RedbStore::at(state_dir.join(FILE))
    }

    /// The store in the file `path`.
    pub fn at(path: PathBuf) -> RedbStore {
        RedbStore {
            path,
            lock: Arc::new(Mutex::new(())),
        }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the open database in a blocking thread, one at a time.
    async fn with<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Database, &Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (path, lock) = (self.path.clone(), Arc::clone(&self.lock));
        tokio::task::spawn_blocking(move || {
            let _one = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let db = open(&path)?;
            op(&db, &path)
        })
        .await
        .map_err(|e| StoreError::Remote(format!("scenario store: internal error: {e}")))?
    }
}

/// Opens (or makes) the database, waiting while another process holds it.
fn open(path: &Path) -> Result<Database, StoreError> {
    let started = Instant::now();
    loop {
        match Database::create(path) {
            Ok(db) => return Ok(db),
            Err(DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < BUSY_WAIT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(failed(path, "open", e)),
        }
    }
}

/// A database error as the store's, naming the file and what was done.
fn failed(path: &Path, op: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Io {
        op,
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// Every version of `scenario`, oldest first.
fn all(db: &Database, path: &Path, scenario: &str) -> Result<Vec<ScenarioVersion>, StoreError> {
    let txn = db.begin_read().map_err(|e| failed(path, "read", e))?;
    let table = match txn.open_table(VERSIONS) {
        Ok(table) => table,
        Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(failed(path, "read", e)),
    };
    let mut out = Vec::new();
    for entry in table
        .range((scenario, 0)..=(scenario, u64::MAX))
        .map_err(|e| failed(path, "read", e))?
    {
        let (key, value) = entry.map_err(|e| failed(path, "read", e))?;
        let version: ScenarioVersion =
            serde_json::from_slice(value.value()).map_err(|e| StoreError::Corrupt {
                path: path.to_path_buf(),
                line: usize::try_from(key.value().1).unwrap_or(usize::MAX),
                reason: e.to_string(),
            })?;
        out.push(version);
    }
    Ok(out)
}

impl ScenarioStore for RedbStore {
    fn list<'a>(
        &'a self,
        scenario: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        let scenario = scenario.to_owned();
        Box::pin(self.with(move |db, path| {
            let versions = all(db, path, &scenario)?;
            let total = versions.len();
            let versions = versions
                .into_iter()
                .rev()
                .skip(offset)
                .take(limit)
                .collect();
            Ok(Page { versions, total })
        }))
    }

    fn get<'a>(
        &'a self,
        scenario: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<ScenarioVersion, StoreError>> {
        let (scenario, prefix) = (scenario.to_owned(), prefix.to_owned());
        Box::pin(self.with(move |db, path| pick(&scenario, &prefix, all(db, path, &scenario)?)))
    }

    fn append<'a>(&'a self, version: &'a ScenarioVersion) -> BoxFuture<'a, Result<(), StoreError>> {
        let version = version.clone();
        Box::pin(self.with(move |db, path| {
            let bytes = serde_json::to_vec(&version)
                .map_err(|e| StoreError::Remote(format!("scenario version: {e}")))?;
            let txn = db.begin_write().map_err(|e| failed(path, "write", e))?;
            {
                let mut table = txn
                    .open_table(VERSIONS)
                    .map_err(|e| failed(path, "write", e))?;
                let scenario = version.scenario.as_str();
                let next = table
                    .range((scenario, 0)..=(scenario, u64::MAX))
                    .map_err(|e| failed(path, "write", e))?
                    .next_back()
                    .transpose()
                    .map_err(|e| failed(path, "write", e))?
                    .map_or(0, |(key, _)| key.value().1.saturating_add(1));
                table
                    .insert((scenario, next), bytes.as_slice())
                    .map_err(|e| failed(path, "write", e))?;
            }
            txn.commit().map_err(|e| failed(path, "commit", e))?;
            tracing::info!(scenario = %version.scenario, id = %version.id, "scenario version recorded");
            Ok(())
        }))
    }

    fn forget<'a>(&'a self, scenario: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let scenario = scenario.to_owned();
        Box::pin(self.with(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "write", e))?;
            {
                let mut table = txn
                    .open_table(VERSIONS)
                    .map_err(|e| failed(path, "write", e))?;
                table
                    .retain_in(
                        (scenario.as_str(), 0)..=(scenario.as_str(), u64::MAX),
                        |_, _| false,
                    )
                    .map_err(|e| failed(path, "write", e))?;
            }
            txn.commit().map_err(|e| failed(path, "commit", e))
        }))
    }
}

/// The lease on `name` in `table`, if any (a lease that does not parse counts as none).
fn lease_in(
    table: &::redb::Table<'_, &str, &[u8]>,
    path: &Path,
    name: &str,
) -> Result<Option<Lease>, StoreError> {
    let value = table.get(name).map_err(|e| failed(path, "read", e))?;
    Ok(value.and_then(|v| serde_json::from_slice(v.value()).ok()))
}

impl LeaseStore for RedbStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        let (name, holder, owner) = (name.to_owned(), holder.to_owned(), owner.to_owned());
        Box::pin(self.with(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "write", e))?;
            let decided = {
                let mut table = txn
                    .open_table(LEASES)
                    .map_err(|e| failed(path, "write", e))?;
                let current = lease_in(&table, path, &name)?;
                let decided = decide(
                    current.as_ref(),
                    &name,
                    &holder,
                    &owner,
                    ttl,
                    crate::unix_ms(),
                );
                if let Acquired::Granted(lease) = &decided {
                    let bytes = serde_json::to_vec(lease)
                        .map_err(|e| StoreError::Remote(format!("lease: {e}")))?;
                    table
                        .insert(name.as_str(), bytes.as_slice())
                        .map_err(|e| failed(path, "write", e))?;
                }
                decided
            };
            txn.commit().map_err(|e| failed(path, "commit", e))?;
            Ok(decided)
        }))
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        Box::pin(self.with(move |db, path| {
            let txn = db.begin_write().map_err(|e| failed(path, "write", e))?;
            let released = {
                let mut table = txn
                    .open_table(LEASES)
                    .map_err(|e| failed(path, "write", e))?;
                let mine = lease_in(&table, path, &name)?.is_some_and(|l| l.holder == holder);
                if mine {
                    table
                        .remove(name.as_str())
                        .map_err(|e| failed(path, "write", e))?;
                }
                mine
            };
            txn.commit().map_err(|e| failed(path, "commit", e))?;
            Ok(released)
        }))
    }

    fn holder<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        let name = name.to_owned();
        Box::pin(self.with(move |db, path| {
            let txn = db.begin_read().map_err(|e| failed(path, "read", e))?;
            let table = match txn.open_table(LEASES) {
                Ok(table) => table,
                Err(::redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(failed(path, "read", e)),
            };
            let value = table
                .get(name.as_str())
                .map_err(|e| failed(path, "read", e))?;
            let lease: Option<Lease> = value.and_then(|v| serde_json::from_slice(v.value()).ok());
            Ok(lease.filter(|l| l.live(crate::unix_ms())))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::versions::VersionMap;

    fn version(scenario: &str, message: &str) -> ScenarioVersion {
        let mut map = VersionMap::new();
        map.entry("node".into())
            .or_default()
            .insert("app".into(), message.into());
        ScenarioVersion::new(scenario, message, map, None)
    }

    #[tokio::test]
    async fn versions_newest_first_by_scenario_and_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::in_dir(dir.path());
        assert_eq!(store.list("s", 0, 5).await.unwrap().total, 0);
        let (a, b, other) = (version("s", "a"), version("s", "b"), version("t", "x"));
        for v in [&a, &b, &other] {
            store.append(v).await.unwrap();
        }
        // A new handle (a restart) sees the same history.
        let store = RedbStore::in_dir(dir.path());
        let page = store.list("s", 0, 5).await.unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(page.versions, vec![b.clone(), a.clone()]);
        assert_eq!(
            store.list("s", 1, 5).await.unwrap().versions,
            vec![a.clone()]
        );
        assert_eq!(store.get("s", &a.id[..8]).await.unwrap(), a);
        assert!(matches!(
            store.get("s", "zz").await,
            Err(StoreError::BadPrefix { .. })
        ));
        assert!(matches!(
            store.get("s", &other.id[..8]).await,
            Err(StoreError::NotFound { .. })
        ));
        store.forget("s").await.unwrap();
        assert_eq!(store.list("s", 0, 5).await.unwrap().total, 0);
        assert_eq!(store.list("t", 0, 5).await.unwrap().total, 1);
    }

    #[tokio::test]
    async fn a_lease_is_refused_to_another_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::in_dir(dir.path());
        let ttl = Duration::from_secs(60);
        assert!(matches!(
            store.acquire("l", "t1", "a", ttl).await.unwrap(),
            Acquired::Granted(_)
        ));
        let other = RedbStore::in_dir(dir.path());
        assert!(
            matches!(other.acquire("l", "t2", "b", ttl).await.unwrap(), Acquired::Held(h) if h.owner == "a")
        );
        assert!(!other.release("l", "t2").await.unwrap());
        assert_eq!(other.holder("l").await.unwrap().unwrap().owner, "a");
        assert!(store.release("l", "t1").await.unwrap());
        assert!(matches!(
            other.acquire("l", "t2", "b", ttl).await.unwrap(),
            Acquired::Granted(_)
        ));
    }
}
