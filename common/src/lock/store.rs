//! [`LockStore`]: the agent's named leases, one file each, shared by every worker process.
//!
//! ```text
//! <state_dir>/locks/            mode 0700, owned by the agent's user (checked)
//!   .mutex                      empty; flock(LOCK_EX) around every read-modify-write
//!   web.json                    {"name","holder","token","lease","boot","acquired_mono_ms",
//!                                "expires_mono_ms","expires_unix_ms"}   mode 0600
//! ```
//!
//! # Design
//!
//! **One mutex, atomic files.** Every operation takes an exclusive `flock` on `.mutex`
//! (retrying without blocking for up to a second, then [`StoreError::Busy`]), reads the
//! lock's record, decides, and writes the new record through a temporary file and a
//! `rename`, or removes it. There is no `fsync`: the rename is atomic for every process,
//! and a record lost in a machine crash would be void anyway (another boot id). Workers are separate processes, so nothing in memory could
//! serialize them; the `flock` does, and the kernel drops it if a worker dies inside the
//! critical section. Two lockers can therefore never both win, and a reader never sees
//! half a record. Files are opened with `O_NOFOLLOW` and the directory must be private,
//! like the transfer state next to it ([`crate::rsync::state`]).
//!
//! **Time.** A record is live iff it was written during this boot (same
//! `/proc/sys/kernel/random/boot_id`) and `CLOCK_BOOTTIME` is before its
//! `expires_mono_ms` (and not more than the mutex wait before its `acquired_mono_ms`: a
//! caller samples the time before it waits, while a racer may write meanwhile; a guard
//! for systems without a
//! boot id). `expires_unix_ms` is only for people; replies compute the Unix expiry from
//! the remaining time. Operations take the time as a [`Now`] so tests can move it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::order::lock::{released, Grant, HeldBy, LockName, Token};
use crate::order::Reply;

/// The store's subdirectory of `state_dir`.
pub const LOCKS_DIR: &str = "locks";
/// The file whose `flock` serializes operations.
const MUTEX: &str = ".mutex";
/// Largest record read.
const MAX_RECORD: u64 = 64 * 1024;
/// How long an operation waits for the mutex, and how often it retries.
const MUTEX_WAIT: Duration = Duration::from_secs(1);
const MUTEX_RETRY: Duration = Duration::from_millis(2);

/// What can go wrong with the store (a 500 or 503 reply).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: io::Error,
    },
    /// The directory is not a private directory of ours.
    #[error("lock directory {path}: {problem}")]
    Unsafe {
        /// The directory.
        path: PathBuf,
        /// Not a directory, owned by another user, or writable by others.
        problem: &'static str,
    },
    /// A record that cannot be read as one.
    #[error("{path}: not a lock record ({cause}); remove it if nobody holds that lock")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        cause: String,
    },
    /// Another process held the mutex for over a second.
    #[error("lock directory {0} is busy")]
    Busy(PathBuf),
}

impl StoreError {
    fn io(what: impl Into<String>, source: io::Error) -> StoreError {
        StoreError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A moment as the store measures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Now {
    /// The kernel's boot id (empty where there is none).
    pub boot: String,
    /// `CLOCK_BOOTTIME` (or `CLOCK_MONOTONIC`) in milliseconds.
    pub mono_ms: u64,
    /// Unix time in milliseconds.
    pub unix_ms: u64,
}

impl Now {
    /// The system's clocks now.
    pub fn system() -> Now {
        static BOOT: OnceLock<String> = OnceLock::new();
        let boot = BOOT.get_or_init(|| {
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|id| id.trim().to_owned())
                .unwrap_or_default()
        });
        Now {
            boot: boot.clone(),
            mono_ms: boottime_ms(),
            unix_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// The same moment `ms` milliseconds later (for tests).
    pub fn later(&self, ms: u64) -> Now {
        Now {
            boot: self.boot.clone(),
            mono_ms: self.mono_ms.saturating_add(ms),
            unix_ms: self.unix_ms.saturating_add(ms),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
const CLOCK: libc::clockid_t = libc::CLOCK_BOOTTIME;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

fn boottime_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; CLOCK is a valid clock id.
    if unsafe { libc::clock_gettime(CLOCK, &mut ts) } != 0 {
        // Cannot happen with a valid clock id. 0 makes every record "acquired in the
        // future", i.e. expired: locks stop protecting rather than never expire.
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let millis = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(millis)
}

/// A lease as stored in `<name>.json`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The lock's name.
    pub name: String,
    /// The holder label.
    pub holder: String,
    /// The token that proves ownership.
    pub token: String,
    /// The lease granted, seconds.
    pub lease: u64,
    /// The boot id when it was written.
    pub boot: String,
    /// When the lease (last) started, boot-time milliseconds.
    pub acquired_mono_ms: u64,
    /// When it runs out, boot-time milliseconds.
    pub expires_mono_ms: u64,
    /// When it runs out, Unix milliseconds (for people reading the file).
    pub expires_unix_ms: u64,
}

impl std::fmt::Debug for LockRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockRecord")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("lease", &self.lease)
            .field("expires_unix_ms", &self.expires_unix_ms)
            .finish_non_exhaustive()
    }
}

impl LockRecord {
    fn new(name: &LockName, token: &Token, holder: &str, lease: u64, now: &Now) -> LockRecord {
        let ms = lease.saturating_mul(1000);
        LockRecord {
            name: name.as_str().to_owned(),
            holder: holder.to_owned(),
            token: token.as_str().to_owned(),
            lease,
            boot: now.boot.clone(),
            acquired_mono_ms: now.mono_ms,
            expires_mono_ms: now.mono_ms.saturating_add(ms),
            expires_unix_ms: now.unix_ms.saturating_add(ms),
        }
    }

    /// Whether the lease is running at `now`.
    ///
    /// `now` is taken by the caller before it waits for the store's mutex (up to
    /// [`MUTEX_WAIT`]), so a racer that won meanwhile wrote a record acquired *after*
    /// `now`: that record is live, not one from an earlier clock. Only a record acquired
    /// later than the longest wait (a monotonic clock that went back, on a system
    /// without a boot id) is not.
    pub fn live(&self, now: &Now) -> bool {
        let slack = u64::try_from(MUTEX_WAIT.as_millis()).unwrap_or(u64::MAX) + 1000;
        self.boot == now.boot
            && self.acquired_mono_ms <= now.mono_ms.saturating_add(slack)
            && now.mono_ms < self.expires_mono_ms
    }

    /// When the lease runs out, Unix seconds, by `now`'s wall clock (rounded up).
    pub fn expires_unix(&self, now: &Now) -> u64 {
        let left = self.expires_mono_ms.saturating_sub(now.mono_ms);
        now.unix_ms.saturating_add(left).div_ceil(1000)
    }

    /// The 200 body's content.
    pub fn grant(&self, now: &Now, renewed: bool) -> Grant {
        Grant {
            lock: self.name.clone(),
            holder: self.holder.clone(),
            token: self.token.clone(),
            lease: self.lease,
            expires: self.expires_unix(now),
            renewed,
        }
    }

    /// What a refused locker is told.
    pub fn held_by(&self, now: &Now) -> HeldBy {
        HeldBy {
            lock: self.name.clone(),
            holder: self.holder.clone(),
            expires: self.expires_unix(now),
        }
    }
}

/// What [`LockStore::lock`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    /// The lock was free (or its lease had run out) and is now the caller's.
    Taken {
        /// The new lease.
        record: LockRecord,
        /// An expired lease of another token that was taken over.
        previous: Option<LockRecord>,
    },
    /// The caller's live lease was extended.
    Renewed(LockRecord),
    /// Someone else holds it; nothing changed.
    Held(LockRecord),
}

impl LockOutcome {
    /// The order's reply: 200 with the grant (`renewed` for [`LockOutcome::Renewed`]), or
    /// 423 naming the holder.
    pub fn into_reply(self, now: &Now) -> Reply {
        match self {
            LockOutcome::Taken { record, .. } => Reply::ok(record.grant(now, false).to_body()),
            LockOutcome::Renewed(record) => Reply::ok(record.grant(now, true).to_body()),
            LockOutcome::Held(record) => record.held_by(now).into_reply(),
        }
    }
}

/// What [`LockStore::unlock`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnlockOutcome {
    /// The caller's lease was removed.
    Released(LockRecord),
    /// Nobody held it (an expired record was tidied away).
    NotHeld,
    /// Someone else holds it (or the token is wrong); nothing changed.
    WrongToken(LockRecord),
}

impl UnlockOutcome {
    /// The order's reply: 200 `released` true or false, or 403 naming the holder.
    pub fn into_reply(self, name: &LockName, now: &Now) -> Reply {
        match self {
            UnlockOutcome::Released(_) => Reply::ok(released(name.as_str(), true)),
            UnlockOutcome::NotHeld => Reply::ok(released(name.as_str(), false)),
            UnlockOutcome::WrongToken(record) => {
                Reply::error(403, record.held_by(now).wrong_token())
            }
        }
    }
}

/// The agent's leases, in `<state_dir>/locks/`.
#[derive(Debug, Clone)]
pub struct LockStore {
    dir: PathBuf,
}

impl LockStore {
    /// Uses `<state_dir>/locks`, creating it (mode 0700) if missing; it must be a
    /// directory of the effective user, not writable by group or others.
    pub fn open(state_dir: &Path) -> Result<LockStore, StoreError> {
        let dir = std::path::absolute(state_dir.join(LOCKS_DIR))
            .map_err(|e| StoreError::io(format!("resolve {}", state_dir.display()), e))?;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::io(format!("create {}", dir.display()), e)),
        }
        check_private_dir(&dir)?;
        Ok(LockStore { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes `name` for `token` for `lease` seconds if it is free, expired or already
    /// `token`'s (then the lease restarts now and the holder label is updated).
    pub fn lock(
        &self,
        name: &LockName,
        token: &Token,
        holder: &str,
        lease: u64,
        now: &Now,
    ) -> Result<LockOutcome, StoreError> {
        let _mutex = self.mutex()?;
        let current = self.read(name)?;
        let fresh = LockRecord::new(name, token, holder, lease, now);
        let outcome = match current {
            Some(old) if old.live(now) => {
                if token.matches(&old.token) {
                    LockOutcome::Renewed(fresh.clone())
                } else {
                    return Ok(LockOutcome::Held(old));
                }
            }
            Some(old) if !token.matches(&old.token) => LockOutcome::Taken {
                record: fresh.clone(),
                previous: Some(old),
            },
            _ => LockOutcome::Taken {
                record: fresh.clone(),
                previous: None,
            },
        };
        self.write(name, &fresh)?;
        Ok(outcome)
    }

    /// Releases `name` if `token` holds its live lease.
    pub fn unlock(
        &self,
        name: &LockName,
        token: &str,
        now: &Now,
    ) -> Result<UnlockOutcome, StoreError> {
        let _mutex = self.mutex()?;
        match self.read(name)? {
            None => Ok(UnlockOutcome::NotHeld),
            Some(old) if !old.live(now) => {
                self.remove(name)?;
                Ok(UnlockOutcome::NotHeld)
            }
            Some(old) => {
                let ours = Token::parse(token).is_ok_and(|t| t.matches(&old.token));
                if ours {
                    self.remove(name)?;
                    Ok(UnlockOutcome::Released(old))
                } else {
                    Ok(UnlockOutcome::WrongToken(old))
                }
            }
        }
    }

    /// The live lease of `name`, if any.
    pub fn get(&self, name: &LockName, now: &Now) -> Result<Option<LockRecord>, StoreError> {
        let _mutex = self.mutex()?;
        Ok(self.read(name)?.filter(|r| r.live(now)))
    }

    fn path(&self, name: &LockName) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Takes the store's mutex; it is released when the returned file is dropped.
    fn mutex(&self) -> Result<File, StoreError> {
        let path = self.dir.join(MUTEX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| StoreError::io(format!("open {}", path.display()), e))?;
        let deadline = std::time::Instant::now() + MUTEX_WAIT;
        loop {
            // SAFETY: flock only reads the descriptor number of a file we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(file);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(MUTEX_RETRY);
                }
                Some(libc::EWOULDBLOCK) => return Err(StoreError::Busy(self.dir.clone())),
                _ => return Err(StoreError::io(format!("lock {}", path.display()), e)),
            }
        }
    }

    fn read(&self, name: &LockName) -> Result<Option<LockRecord>, StoreError> {
        let path = self.path(name);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("open {}", path.display()), e)),
        };
        let corrupt = |cause: String| StoreError::Corrupt {
            path: path.clone(),
            cause,
        };
        let meta = file
            .metadata()
            .map_err(|e| StoreError::io(format!("inspect {}", path.display()), e))?;
        if !meta.is_file() {
            return Err(corrupt("not a regular file".into()));
        }
        let mut text = Vec::new();
        file.take(MAX_RECORD + 1)
            .read_to_end(&mut text)
            .map_err(|e| StoreError::io(format!("read {}", path.display()), e))?;
        if text.len() as u64 > MAX_RECORD {
            return Err(corrupt("too large".into()));
        }
        let record: LockRecord =
            serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
        if record.name != name.as_str() {
            return Err(corrupt(format!("it names lock {:?}", record.name)));
        }
        Ok(Some(record))
    }

    /// Replaces the record through a temporary file and a rename. (No fsync: after a
    /// crash of the machine every lease is void anyway, another boot id.)
    fn write(&self, name: &LockName, record: &LockRecord) -> Result<(), StoreError> {
        let target = self.path(name);
        let text = serde_json::to_vec(record).map_err(|e| {
            StoreError::io(format!("encode {}", target.display()), io::Error::other(e))
        })?;
        crate::fsutil::write_atomic(&self.dir, &format!("{name}.json"), &text)
            .map_err(|e| StoreError::io(format!("write {}", target.display()), e))
    }

    fn remove(&self, name: &LockName) -> Result<(), StoreError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(format!("remove {}", path.display()), e)),
        }
    }
}

/// The directory must be a real directory (not a symlink), owned by us, and not writable
/// by anyone else: its files decide who holds a lock.
fn check_private_dir(dir: &Path) -> Result<(), StoreError> {
    match crate::fsutil::private_dir_problem(dir)
        .map_err(|e| StoreError::io(format!("inspect {}", dir.display()), e))?
    {
        None => Ok(()),
        Some(problem) => Err(StoreError::Unsafe {
            path: dir.to_owned(),
            problem,
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Barrier};

    fn name(n: &str) -> LockName {
        LockName::parse(n).unwrap()
    }

    fn token() -> Token {
        Token::generate().unwrap()
    }

    fn store() -> (tempfile::TempDir, LockStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LockStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn take_refuse_renew_release() {
        let (_dir, store) = store();
        let now = Now::system();
        let (a, b) = (token(), token());
        let web = name("web");

        let LockOutcome::Taken { record, previous } =
            store.lock(&web, &a, "alice", 30, &now).unwrap()
        else {
            panic!("not taken");
        };
        assert_eq!(previous, None);
        assert_eq!(record.holder, "alice");
        assert_eq!(record.expires_unix(&now), now.unix_ms.div_ceil(1000) + 30);
        let grant = record.grant(&now, false);
        assert_eq!((grant.lease, grant.token.as_str()), (30, a.as_str()));

        // Another token is refused and told who holds it.
        match store.lock(&web, &b, "bob", 30, &now.later(1000)).unwrap() {
            LockOutcome::Held(held) => assert_eq!(held.holder, "alice"),
            other => panic!("{other:?}"),
        }
        // Other names are independent.
        assert!(matches!(
            store.lock(&name("db"), &b, "bob", 30, &now).unwrap(),
            LockOutcome::Taken { .. }
        ));

        // The same token renews; the lease restarts.
        let later = now.later(20_000);
        let LockOutcome::Renewed(renewed) = store.lock(&web, &a, "alice2", 30, &later).unwrap()
        else {
            panic!("not renewed");
        };
        assert_eq!(renewed.expires_mono_ms, later.mono_ms + 30_000);
        assert_eq!(renewed.holder, "alice2");
        assert!(renewed.live(&now.later(49_000)));

        // unlock: wrong or no token refused, right token releases, then nothing is held.
        assert!(matches!(
            store.unlock(&web, b.as_str(), &later).unwrap(),
            UnlockOutcome::WrongToken(r) if r.holder == "alice2"
        ));
        assert!(matches!(
            store.unlock(&web, "", &later).unwrap(),
            UnlockOutcome::WrongToken(_)
        ));
        assert!(matches!(
            store.unlock(&web, a.as_str(), &later).unwrap(),
            UnlockOutcome::Released(_)
        ));
        assert_eq!(store.get(&web, &later).unwrap(), None);
        assert_eq!(
            store.unlock(&web, a.as_str(), &later).unwrap(),
            UnlockOutcome::NotHeld
        );
        assert!(matches!(
            store.lock(&web, &b, "bob", 30, &later).unwrap(),
            LockOutcome::Taken { previous: None, .. }
        ));
    }

    #[test]
    fn expiry_and_reboot() {
        let (_dir, store) = store();
        let now = Now::system();
        let (a, b) = (token(), token());
        let web = name("web");
        store.lock(&web, &a, "alice", 2, &now).unwrap();
        assert!(store.get(&web, &now.later(1999)).unwrap().is_some());
        assert_eq!(store.get(&web, &now.later(2000)).unwrap(), None);
        // Expired: another token takes it over, and learns whose it was.
        match store.lock(&web, &b, "bob", 2, &now.later(2000)).unwrap() {
            LockOutcome::Taken {
                previous: Some(p), ..
            } => assert_eq!(p.holder, "alice"),
            other => panic!("{other:?}"),
        }
        // The expired owner's renewal is refused now; had nobody taken it, it would
        // have been a fresh take, not a renewal.
        assert!(matches!(
            store.lock(&web, &a, "alice", 2, &now.later(2100)).unwrap(),
            LockOutcome::Held(_)
        ));
        assert!(matches!(
            store.lock(&web, &b, "bob", 2, &now.later(5000)).unwrap(),
            LockOutcome::Taken { previous: None, .. }
        ));

        // A racer that sampled its time before bob's take, then waited for the mutex
        // while bob wrote: bob's lease is live for it too (two winners otherwise).
        let sampled_before = now.later(4900);
        assert!(matches!(
            store
                .lock(&web, &token(), "carol", 2, &sampled_before)
                .unwrap(),
            LockOutcome::Held(_)
        ));

        // Another boot, or a clock far behind the record: not live.
        let rebooted = Now {
            boot: "other".into(),
            ..now.later(5100)
        };
        assert_eq!(store.get(&web, &rebooted).unwrap(), None);
        let earlier = Now {
            mono_ms: 1,
            ..now.later(5100)
        };
        assert_eq!(store.get(&web, &earlier).unwrap(), None);
    }

    #[test]
    fn files_are_private_and_checked() {
        let (dir, store) = store();
        let now = Now::system();
        let web = name("web");
        let t = token();
        store.lock(&web, &t, "alice", 30, &now).unwrap();
        let file = dir.path().join("locks/web.json");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(dir.path().join("locks")).unwrap().mode() & 0o777,
            0o700
        );
        let names: Vec<String> = fs::read_dir(dir.path().join("locks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");

        // A symlink is not followed; garbage is reported, not taken as free.
        fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
        assert!(matches!(store.get(&web, &now), Err(StoreError::Io { .. })));
        fs::remove_file(&file).unwrap();
        fs::write(&file, "{not json").unwrap();
        let e = store.lock(&web, &t, "alice", 30, &now).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("web.json"), "{e}");

        // A group-writable directory is refused.
        let open = tempfile::tempdir().unwrap();
        fs::create_dir(open.path().join("locks")).unwrap();
        fs::set_permissions(
            open.path().join("locks"),
            std::os::unix::fs::PermissionsExt::from_mode(0o770),
        )
        .unwrap();
        assert!(matches!(
            LockStore::open(open.path()),
            Err(StoreError::Unsafe { .. })
        ));
    }

    /// Many threads (each with its own open file description, like separate worker
    /// processes) race for one lock: exactly one wins.
    #[test]
    fn one_winner_among_racers() {
        let (_dir, store) = store();
        let web = name("web");
        let n = 16;
        let barrier = Arc::new(Barrier::new(n));
        let winners: usize = (0..n)
            .map(|i| {
                let (store, web, barrier) = (store.clone(), web.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let outcome = store
                        .lock(&web, &token(), &format!("t{i}"), 30, &Now::system())
                        .unwrap();
                    usize::from(matches!(outcome, LockOutcome::Taken { .. }))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(winners, 1);
    }
}
