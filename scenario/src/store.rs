//! Scenario versions: what the fleet ran at one moment, and where they are kept.
//!
//! ```text
//! ScenarioVersion  {id, scenario, time (Unix ms), message, map: node → app → NodeApp version,
//!                   restores: the version a reset went back to, if any}
//! id               SHA-256 hex of message, time and map (Octopoda: SHA-1 of message + time)
//! ScenarioStore    list (newest first, offset/limit) · get (prefix ≥ 3, ambiguity refused)
//!                  · append · forget (purge)
//! FolderStore      <DIR>/.deploy/scenario-versions.jsonl: one JSON object a line, appended
//!                  under flock(2) and fsynced; a torn last line (a crash mid-write) is
//!                  ignored on read and cut off by the next append
//! ```
//!
//! The version record and the trait are deploy-store's (re-exported here), so that a
//! proxy keeps versions without linking this crate's YAML reader. NodeApp versions
//! themselves live on the nodes; a scenario version only names them.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub use deploy_store::versions::{
    pick, BoxFuture, Page, ScenarioStore, ScenarioVersion, StoreError, VersionMap, DEFAULT_LIMIT,
    MIN_PREFIX,
};

/// The folder store's directory inside the scenario folder.
pub const STORE_DIR: &str = ".deploy";
/// The folder store's file inside [`STORE_DIR`].
pub const STORE_FILE: &str = "scenario-versions.jsonl";

/// Versions kept next to the scenario folder, in `<DIR>/.deploy/scenario-versions.jsonl`.
#[derive(Debug, Clone)]
pub struct FolderStore {
    dir: PathBuf,
    file: PathBuf,
}

impl FolderStore {
    /// The store of the scenario folder `dir`.
    pub fn new(dir: &Path) -> FolderStore {
        let dir = dir.join(STORE_DIR);
        let file = dir.join(STORE_FILE);
        FolderStore { dir, file }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    fn io(&self, op: &'static str) -> impl Fn(std::io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            op,
            path: self.file.clone(),
            source,
        }
    }

    /// Every version in the file, oldest first (all scenarios).
    fn read_all(&self) -> Result<Vec<ScenarioVersion>, StoreError> {
        let text = match fs::read_to_string(&self.file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("read")(e)),
        };
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        let last = lines.len();
        let mut out = Vec::with_capacity(last);
        for (i, line) in lines.into_iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<ScenarioVersion>(line) {
                Ok(v) => out.push(v),
                Err(e) if i + 1 == last && !complete => {
                    tracing::warn!(file = %self.file.display(), line = i + 1, cause = %e,
                        "ignoring a torn last line (an append that did not finish)");
                }
                Err(e) => {
                    return Err(StoreError::Corrupt {
                        path: self.file.clone(),
                        line: i + 1,
                        reason: e.to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    fn of(&self, scenario: &str) -> Result<Vec<ScenarioVersion>, StoreError> {
        let mut all = self.read_all()?;
        all.retain(|v| v.scenario == scenario);
        Ok(all)
    }

    fn append_now(&self, version: &ScenarioVersion) -> Result<(), StoreError> {
        let created_dir = match fs::DirBuilder::new().mode(0o755).create(&self.dir) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(source) => {
                return Err(StoreError::Io {
                    op: "create the directory",
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&self.file)
            .map_err(self.io("open"))?;
        let mut file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| self.io("lock")(e.into()))?;
        // A torn last line (a crash mid-append) is cut off, not continued.
        let len = file.metadata().map_err(self.io("stat"))?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::End(-1)).map_err(self.io("seek"))?;
            file.read_exact(&mut last).map_err(self.io("read"))?;
            if last[0] != b'\n' {
                let mut text = String::new();
                file.seek(SeekFrom::Start(0)).map_err(self.io("seek"))?;
                file.read_to_string(&mut text).map_err(self.io("read"))?;
                let keep = text.rfind('\n').map_or(0, |i| i + 1);
                file.set_len(keep as u64).map_err(self.io("truncate"))?;
            }
        }
        let mut line = serde_json::to_string(version).map_err(|e| StoreError::Corrupt {
            path: self.file.clone(),
            line: 0,
            reason: e.to_string(),
        })?;
        line.push('\n');
        file.write_all(line.as_bytes()).map_err(self.io("write"))?;
        file.sync_data().map_err(self.io("fsync"))?;
        if created_dir || len == 0 {
            if let Ok(dir) = File::open(&self.dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }

    fn forget_now(&self, scenario: &str) -> Result<(), StoreError> {
        let mut keep = self.read_all()?;
        let before = keep.len();
        keep.retain(|v| v.scenario != scenario);
        if keep.len() == before {
            return Ok(());
        }
        let temp = self.dir.join(format!(".{STORE_FILE}.tmp"));
        let mut text = String::new();
        for v in &keep {
            text.push_str(&serde_json::to_string(v).unwrap_or_default());
            text.push('\n');
        }
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&temp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&temp, &self.file)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(self.io("rewrite"))
    }
}

impl ScenarioStore for FolderStore {
    fn list<'a>(
        &'a self,
        scenario: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(async move {
            let all = self.of(scenario)?;
            let total = all.len();
            let versions = all.into_iter().rev().skip(offset).take(limit).collect();
            Ok(Page { versions, total })
        })
    }

    fn get<'a>(
        &'a self,
        scenario: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<ScenarioVersion, StoreError>> {
        Box::pin(async move { pick(scenario, prefix, self.of(scenario)?) })
    }

    fn append<'a>(&'a self, version: &'a ScenarioVersion) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.append_now(version) })
    }

    fn forget<'a>(&'a self, scenario: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move { self.forget_now(scenario) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::future::Future;

    fn map(v: &str) -> VersionMap {
        let mut apps = BTreeMap::new();
        apps.insert("app".to_owned(), v.to_owned());
        let mut m = BTreeMap::new();
        m.insert("n1".to_owned(), apps);
        m
    }

    fn block<T>(f: impl Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn append_list_get_forget() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        let a = ScenarioVersion::new("s", "a", map("aaa"), None);
        let b = ScenarioVersion::new("s", "b", map("bbb"), None);
        let other = ScenarioVersion::new("t", "x", map("ccc"), None);
        for v in [&a, &other, &b] {
            block(store.append(v)).unwrap();
        }
        let page = block(store.list("s", 0, 5)).unwrap();
        assert_eq!(page.total, 2);
        assert_eq!(page.versions, [b.clone(), a.clone()]);
        let page = block(store.list("s", 1, 5)).unwrap();
        assert_eq!(page.versions, std::slice::from_ref(&a));
        assert_eq!(block(store.get("s", &a.id[..6])).unwrap(), a);
        assert!(matches!(
            block(store.get("s", "ab")),
            Err(StoreError::BadPrefix { .. })
        ));
        assert!(matches!(
            block(store.get("s", &other.id[..8])),
            Err(StoreError::NotFound { .. })
        ));
        block(store.forget("s")).unwrap();
        assert_eq!(block(store.list("s", 0, 5)).unwrap().total, 0);
        assert_eq!(block(store.list("t", 0, 5)).unwrap().total, 1);
    }

    #[test]
    fn ambiguous_prefixes_are_refused() {
        let mut a = ScenarioVersion::new("s", "a", map("1"), None);
        let mut b = ScenarioVersion::new("s", "b", map("2"), None);
        a.id = "abc123".into();
        b.id = "abc456".into();
        let e = pick("s", "abc", [a.clone(), b]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scenario \"s\": version \"abc\" is ambiguous: abc123, abc456"
        );
        let b = pick("s", "ABC1", [a.clone()]).unwrap();
        assert_eq!(b, a);
    }

    #[test]
    fn a_torn_last_line_is_ignored_then_cut() {
        let dir = tempfile::tempdir().unwrap();
        let store = FolderStore::new(dir.path());
        let a = ScenarioVersion::new("s", "a", map("1"), None);
        block(store.append(&a)).unwrap();
        let mut f = OpenOptions::new().append(true).open(store.path()).unwrap();
        f.write_all(b"{\"id\":\"tor").unwrap();
        assert_eq!(block(store.list("s", 0, 9)).unwrap().total, 1);
        let b = ScenarioVersion::new("s", "b", map("2"), None);
        block(store.append(&b)).unwrap();
        let page = block(store.list("s", 0, 9)).unwrap();
        assert_eq!(page.versions, [b, a]);
        // A bad line in the middle is an error naming file and line.
        let text = fs::read_to_string(store.path()).unwrap();
        fs::write(store.path(), format!("junk\n{text}")).unwrap();
        let e = block(store.list("s", 0, 9)).unwrap_err().to_string();
        assert!(
            e.contains("scenario-versions.jsonl:1: not a scenario version"),
            "{e}"
        );
    }
}
