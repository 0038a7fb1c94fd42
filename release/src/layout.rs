//! The release layout on a host: every release in a directory of its own, `dest` a
//! symbolic link switched atomically, and the record of what happened, on the host
//! itself.
//!
//! ```text
//! <dest>.releases/                (or the manifest's releases_dir)
//!   20261202T010203.042Z-0f3c1a2b/  a release: the unpacked tree (id: UTC time, then the
//!   20261202T020000.007Z-9e77aa01/    first 8 hex digits of the artifact's checksum)
//!   .staging-<id>/                a release being prepared (renamed to <id> when ready)
//!   .meta/<id>.json               src, checksum, manifest, time, who, message, state
//!   .history                      one JSON line per switch, rollback and revert
//!   .pending-confirm              {id, previous, deadline}: revert unless confirmed
//!   .lock                         flock(2): one operation at a time
//! <dest> -> <dest>.releases/<id>  switched by symlink(tmp) + rename(2) over <dest>
//! ```
//!
//! A reader of `dest` sees the old tree or the new one, never a mix: `rename(2)` of the
//! new link over the old one is atomic. Pruning keeps the newest `keep` releases and
//! never the current or the previous one. The history is only ever appended to: a
//! rollback is a new entry (A→B→C, then back to A, reads A→B→C→A).

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a layout operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file-system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `dest` exists and is not a release link.
    #[error(
        "{0} exists and is not a symbolic link to a release: move it away once, then deploy again"
    )]
    NotALink(String),
    /// No release matches.
    #[error("no release matches {0:?}")]
    NoMatch(String),
    /// Several releases match.
    #[error("{prefix:?} matches several releases: {candidates}")]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The matches.
        candidates: String,
    },
    /// A prefix too short to name a release safely.
    #[error("a release prefix needs at least 3 characters (got {0:?})")]
    TooShort(String),
    /// A stamp that is not `YYYYmmddTHHMMSS.mmmZ`.
    #[error("invalid release stamp {0:?} (expected YYYYmmddTHHMMSS.mmmZ)")]
    BadStamp(String),
    /// A proposed id that would not be the newest.
    #[error("release {id} would not be newer than {newest} (is the caller's clock behind?)")]
    NotNewest {
        /// The proposed id.
        id: String,
        /// The newest release here.
        newest: String,
    },
    /// Nothing to roll back to.
    #[error("there is no previous release to roll back to")]
    NoPrevious,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// What is recorded about one release.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Its id.
    pub id: String,
    /// The artifact's source.
    #[serde(default)]
    pub src: String,
    /// The artifact's checksum (`algorithm:hex`).
    #[serde(default)]
    pub checksum: String,
    /// The manifest's URL (empty for an inline manifest).
    #[serde(default)]
    pub manifest: String,
    /// When it was prepared (RFC 3339).
    #[serde(default)]
    pub time: String,
    /// Who asked (API key name or user@host).
    #[serde(default)]
    pub who: String,
    /// The caller's message.
    #[serde(default)]
    pub message: String,
    /// `prepared`, `active`, `failed`, …
    #[serde(default)]
    pub state: String,
}

/// One line of the history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When (RFC 3339).
    pub time: String,
    /// `switch`, `rollback`, `revert` (unconfirmed), `confirm`.
    pub action: String,
    /// The release now current.
    pub id: String,
    /// The release current before.
    #[serde(default)]
    pub from: String,
    /// Who asked.
    #[serde(default)]
    pub who: String,
    /// The caller's message.
    #[serde(default)]
    pub message: String,
}

/// A switch waiting for its `confirm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The release switched to.
    pub id: String,
    /// The release to revert to.
    pub previous: String,
    /// Unix time after which the host reverts by itself.
    pub deadline: i64,
}

/// One release as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// What was recorded.
    #[serde(flatten)]
    pub meta: Meta,
    /// It is what `dest` points to.
    pub current: bool,
}

/// The releases of one `dest`.
#[derive(Debug, Clone)]
pub struct Releases {
    dir: PathBuf,
    dest: PathBuf,
}

/// The current time, RFC 3339.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Releases {
    /// The releases of `dest`, in `releases_dir` or `<dest>.releases`.
    pub fn new(dest: &Path, releases_dir: Option<&Path>) -> Releases {
        let dest = dest.components().collect::<PathBuf>();
        let dir = match releases_dir {
            Some(d) => d.to_owned(),
            None => {
                let mut name = dest.file_name().unwrap_or_default().to_owned();
                name.push(".releases");
                dest.with_file_name(name)
            }
        };
        Releases { dir, dest }
    }

    /// Where the releases live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The link.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Makes the releases directory (and its `.meta`).
    pub fn ensure(&self) -> Result<(), LayoutError> {
        let meta = self.dir.join(".meta");
        fs::create_dir_all(&meta).map_err(io_err("cannot create", &meta))
    }

    /// Takes the layout's lock (released when dropped).
    pub fn lock(&self) -> Result<nix::fcntl::Flock<File>, LayoutError> {
        self.ensure()?;
        let path = self.dir.join(".lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io_err("cannot lock", &path)(io::Error::from(e)))
    }

    /// A new id: the UTC time to the millisecond, then `hash` (8 hex digits). Always
    /// after every existing id, so ids sort in the order releases were made.
    pub fn new_id(&self, hash: &str) -> String {
        const FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
        let mut stamp = chrono::Utc::now().naive_utc();
        let newest = self
            .ids()
            .into_iter()
            .chain(self.staging_ids())
            .filter_map(|id| {
                let text = id.split('-').next().unwrap_or_default().to_owned();
                chrono::NaiveDateTime::parse_from_str(&text, FORMAT).ok()
            })
            .max();
        if let Some(newest) = newest {
            if stamp <= newest {
                stamp = newest + chrono::Duration::milliseconds(1);
            }
        }
        let short: String = hash.chars().take(8).collect();
        format!("{}-{short}", stamp.format(FORMAT))
    }

    /// The id `<stamp>-<hash>` for a stamp chosen by the caller (a fleet's rollout
    /// gives every host the same one), refused unless it sorts after every release
    /// here (a caller's clock behind this host's history would break the order).
    pub fn id_with_stamp(&self, stamp: &str, hash: &str) -> Result<String, LayoutError> {
        const FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
        if chrono::NaiveDateTime::parse_from_str(stamp, FORMAT).is_err() {
            return Err(LayoutError::BadStamp(stamp.to_owned()));
        }
        let short: String = hash.chars().take(8).collect();
        let id = format!("{stamp}-{short}");
        if let Some(newest) = self.ids().into_iter().chain(self.staging_ids()).max() {
            if newest.as_str() >= id.as_str() {
                return Err(LayoutError::NotNewest { id, newest });
            }
        }
        Ok(id)
    }

    /// Ids being prepared.
    fn staging_ids(&self) -> Vec<String> {
        fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_prefix(".staging-")
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A release's directory.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// A release's directory while it is prepared.
    pub fn staging(&self, id: &str) -> PathBuf {
        self.dir.join(format!(".staging-{id}"))
    }

    /// Records `meta` (atomically).
    pub fn record(&self, meta: &Meta) -> Result<(), LayoutError> {
        self.ensure()?;
        let path = self.dir.join(".meta").join(format!("{}.json", meta.id));
        let text = serde_json::to_vec_pretty(meta).unwrap_or_default();
        write_atomic(&path, &text)
    }

    /// What was recorded about `id`.
    pub fn meta(&self, id: &str) -> Meta {
        let path = self.dir.join(".meta").join(format!("{id}.json"));
        fs::read(&path)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_else(|| Meta {
                id: id.to_owned(),
                ..Meta::default()
            })
    }

    /// Sets the recorded state of `id`.
    pub fn set_state(&self, id: &str, state: &str) -> Result<(), LayoutError> {
        let mut meta = self.meta(id);
        meta.state = state.to_owned();
        self.record(&meta)
    }

    /// The release `dest` points to.
    pub fn current(&self) -> Option<String> {
        let target = fs::read_link(&self.dest).ok()?;
        let parent = target.parent()?;
        if parent != self.dir && !(parent.as_os_str().is_empty() && self.dir == Path::new("")) {
            return None;
        }
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Every release, oldest first.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Every release with its record, newest first, the current one marked.
    pub fn list(&self) -> Vec<Listed> {
        let current = self.current();
        self.ids()
            .into_iter()
            .rev()
            .map(|id| Listed {
                current: current.as_deref() == Some(id.as_str()),
                meta: self.meta(&id),
            })
            .collect()
    }

    /// The release before the current one (the newest older than it).
    pub fn previous(&self) -> Option<String> {
        let current = self.current()?;
        self.ids().into_iter().rev().find(|id| *id < current)
    }

    /// The release named by `prefix` (at least 3 characters, unambiguous).
    pub fn resolve(&self, prefix: &str) -> Result<String, LayoutError> {
        if prefix.chars().count() < 3 {
            return Err(LayoutError::TooShort(prefix.to_owned()));
        }
        let matches: Vec<String> = self
            .ids()
            .into_iter()
            .filter(|id| {
                id.starts_with(prefix)
                    || id
                        .split_once('-')
                        .is_some_and(|(_, h)| h.starts_with(prefix))
            })
            .collect();
        match matches.as_slice() {
            [] => Err(LayoutError::NoMatch(prefix.to_owned())),
            [one] => Ok(one.clone()),
            many => Err(LayoutError::Ambiguous {
                prefix: prefix.to_owned(),
                candidates: many.join(", "),
            }),
        }
    }

    /// Points `dest` at release `id`, atomically; returns the release it pointed to.
    pub fn switch(&self, id: &str) -> Result<Option<String>, LayoutError> {
        self.switch_timed(id).map(|(previous, _)| previous)
    }

    /// [`switch`](Self::switch), also giving the instant of the rename (unix ms): when
    /// readers start to see the new release, before the directory is synced.
    pub fn switch_timed(&self, id: &str) -> Result<(Option<String>, i64), LayoutError> {
        let target = self.path(id);
        if !target.is_dir() {
            return Err(LayoutError::NoMatch(id.to_owned()));
        }
        match fs::symlink_metadata(&self.dest) {
            Ok(m) if !m.file_type().is_symlink() => {
                return Err(LayoutError::NotALink(self.dest.display().to_string()))
            }
            _ => {}
        }
        let previous = self.current();
        let parent = self.dest.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(io_err("cannot create", parent))?;
        let name = self.dest.file_name().unwrap_or_default().to_string_lossy();
        let temp = parent.join(format!(".{name}.switch-{}", std::process::id()));
        let _ = fs::remove_file(&temp);
        std::os::unix::fs::symlink(&target, &temp).map_err(io_err("cannot link", &temp))?;
        if let Err(e) = fs::rename(&temp, &self.dest) {
            let _ = fs::remove_file(&temp);
            return Err(io_err("cannot switch", &self.dest)(e));
        }
        let at = chrono::Utc::now().timestamp_millis();
        if let Ok(dir) = File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok((previous, at))
    }

    /// Removes old releases beyond the newest `keep`, never the current or previous one,
    /// and stale staging directories; returns the ids removed.
    pub fn prune(&self, keep: usize) -> Vec<String> {
        let current = self.current();
        let previous = self.previous();
        let ids = self.ids();
        let excess = ids.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for id in ids.into_iter().take(excess) {
            if Some(&id) == current.as_ref() || Some(&id) == previous.as_ref() {
                continue;
            }
            if fs::remove_dir_all(self.path(&id)).is_ok() {
                let _ = fs::remove_file(self.dir.join(".meta").join(format!("{id}.json")));
                removed.push(id);
            }
        }
        removed
    }

    /// Appends one line to the history.
    pub fn append(&self, event: &Event) -> Result<(), LayoutError> {
        self.ensure()?;
        let path = self.dir.join(".history");
        let mut line = serde_json::to_vec(event).unwrap_or_default();
        line.push(b'\n');
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("cannot open", &path))?;
        file.write_all(&line)
            .map_err(io_err("cannot write", &path))?;
        file.sync_data().map_err(io_err("cannot write", &path))
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<Event> {
        fs::read_to_string(self.dir.join(".history"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The switch waiting for its confirm.
    pub fn pending(&self) -> Option<Pending> {
        let text = fs::read(self.dir.join(".pending-confirm")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records (or, with `None`, clears) the switch waiting for its confirm.
    pub fn set_pending(&self, pending: Option<&Pending>) -> Result<(), LayoutError> {
        let path = self.dir.join(".pending-confirm");
        match pending {
            Some(p) => write_atomic(&path, &serde_json::to_vec(p).unwrap_or_default()),
            None => match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("cannot remove", &path)(e)),
            },
        }
    }
}

/// Writes `path` through a temporary file renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&temp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        io_err("cannot write", path)(e)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn release(r: &Releases, id: &str) {
        fs::create_dir_all(r.path(id)).unwrap();
        fs::write(r.path(id).join("v"), id).unwrap();
    }

    #[test]
    fn switch_prune_resolve() {
        let t = tempfile::tempdir().unwrap();
        let r = Releases::new(&t.path().join("app"), None);
        assert_eq!(r.dir(), t.path().join("app.releases"));
        r.ensure().unwrap();
        for id in [
            "20260101T000000Z-aaaaaaaa",
            "20260102T000000Z-bbbbbbbb",
            "20260103T000000Z-cccccccc",
        ] {
            release(&r, id);
            r.switch(id).unwrap();
        }
        assert_eq!(
            fs::read_to_string(t.path().join("app/v")).unwrap(),
            "20260103T000000Z-cccccccc"
        );
        assert_eq!(r.previous().as_deref(), Some("20260102T000000Z-bbbbbbbb"));
        assert_eq!(r.resolve("bbb").unwrap(), "20260102T000000Z-bbbbbbbb");
        assert_eq!(r.resolve("20260101").unwrap(), "20260101T000000Z-aaaaaaaa");
        assert!(matches!(
            r.resolve("2026"),
            Err(LayoutError::Ambiguous { .. })
        ));
        assert!(matches!(r.resolve("ab"), Err(LayoutError::TooShort(_))));
        assert!(matches!(r.resolve("zzz"), Err(LayoutError::NoMatch(_))));
        // Back to the first: the current and previous are kept whatever `keep` says.
        r.switch("20260101T000000Z-aaaaaaaa").unwrap();
        assert_eq!(r.prune(1), ["20260102T000000Z-bbbbbbbb"]);
        assert_eq!(
            r.ids(),
            ["20260101T000000Z-aaaaaaaa", "20260103T000000Z-cccccccc"]
        );
        // A real directory at dest is not replaced.
        let other = Releases::new(&t.path().join("plain"), None);
        fs::create_dir_all(t.path().join("plain")).unwrap();
        release(&other, "x1");
        assert!(matches!(other.switch("x1"), Err(LayoutError::NotALink(_))));
    }
}
