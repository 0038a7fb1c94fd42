//! A NodeApp's versions on disk: content-addressed objects and one append-only log.
//!
//! ```text
//! <workspace>/.deploy/versions/<app>@<scenario>/
//!   objects/ab/cdef…      a file's content or a manifest, named by its SHA-256
//!   log                   one JSON line per version, oldest first:
//!                         {"version":"<hex>","time":"…Z","message":"…","manifest":"<hex>"}
//!   lock                  flock(2)ed by whoever changes the NodeApp
//! ```
//!
//! Crash safety: an object is written under a temporary name and renamed to its hash,
//! so an object that exists is complete; before a version's line is appended, `syncfs`
//! makes every object durable, and the line is written with one `write` and `fsync`ed.
//! A crash mid-line leaves a last line without its newline, which readers skip and the
//! next append cuts off: a version is in the log whole, or not at all.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{self, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fs;
use crate::manifest::{hex, Entry, Manifest};
use crate::Error;

/// One version, as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Its id: SHA-256 (hex) of the previous id, the manifest's hash, the time and the
    /// message, so no two versions share one.
    pub version: String,
    /// When it was recorded (RFC 3339, UTC, milliseconds).
    pub time: String,
    /// Its message.
    pub message: String,
    /// The hash of its manifest (an object).
    pub manifest: String,
}

/// The id of a version recorded after `previous` (empty for the first).
pub fn version_id(previous: &str, manifest: &str, time: &str, message: &str) -> String {
    let mut h = Sha256::new();
    for part in ["deploy-napp version", previous, manifest, time, message] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    hex(&h.finalize())
}

/// The versions a log's text holds, oldest first, and the length of its complete
/// lines (a last line without its newline was cut by a crash: not a version). `name`
/// is for messages. Agents read their log with it, and callers that read an SSH host's
/// log by shell too, so both see one history.
pub fn parse_log(text: &[u8], name: &str) -> Result<(Vec<Version>, u64), Error> {
    let mut versions = Vec::new();
    let mut complete = 0usize;
    for (n, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        let Some(line) = line.strip_suffix(b"\n") else {
            break;
        };
        complete += line.len() + 1;
        if line.is_empty() {
            continue;
        }
        let v: Version = serde_json::from_slice(line).map_err(|e| Error::Corrupt {
            what: format!("{name}/log line {}: {e}", n + 1),
        })?;
        versions.push(v);
    }
    Ok((versions, complete as u64))
}

/// The version recorded after `previous` (the log's last) for `manifest_hash`, and its
/// log line (newline included).
pub fn next_version(
    previous: Option<&Version>,
    manifest_hash: &str,
    message: &str,
    time: &str,
) -> Result<(Version, Vec<u8>), Error> {
    let previous = previous.map(|v| v.version.as_str()).unwrap_or("");
    let version = Version {
        version: version_id(previous, manifest_hash, time, message),
        time: time.to_owned(),
        message: message.to_owned(),
        manifest: manifest_hash.to_owned(),
    };
    let mut line = serde_json::to_vec(&version).map_err(|e| Error::Corrupt {
        what: e.to_string(),
    })?;
    line.push(b'\n');
    Ok((version, line))
}

/// The store of one NodeApp (an open directory).
#[derive(Debug)]
pub struct Store {
    dir: OwnedFd,
    objects: OwnedFd,
    /// For messages.
    name: String,
    /// Whether appends sync the file system first (off for a caller's scratch copy of
    /// a remote store, whose durability is the host's business).
    durable: bool,
}

const LOG: &[u8] = b"log";

impl Store {
    /// The store in the directory `dir` (made by the caller), its `objects/` made.
    pub fn open(dir: OwnedFd, name: &str) -> Result<Store, Error> {
        match fs::make_dir(&dir, b"objects", 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::fs("make", format!("{name}/objects").as_bytes(), e)),
        }
        let objects = fs::open_dir(&dir, b"objects")
            .map_err(|e| Error::fs("open", format!("{name}/objects").as_bytes(), e))?;
        Ok(Store {
            dir,
            objects,
            name: name.to_owned(),
            durable: true,
        })
    }

    /// The same store, its appends not synced (a scratch copy).
    pub fn scratch(self) -> Store {
        Store {
            durable: false,
            ..self
        }
    }

    /// Takes the NodeApp's lock (waits for another worker's order to end).
    pub fn lock(&self) -> Result<Flock<File>, Error> {
        let fd = fcntl::openat(
            &self.dir,
            fs::os(b"lock"),
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.err("open", "lock", e))?;
        Flock::lock(File::from(fd), FlockArg::LockExclusive)
            .map_err(|(_, e)| self.err("lock", "lock", e))
    }

    fn err(&self, op: &'static str, what: &str, e: Errno) -> Error {
        Error::fs(op, format!("{}/{what}", self.name).as_bytes(), e)
    }

    fn split(sha: &str) -> Option<(&str, &str)> {
        (sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.split_at(2))
    }

    /// Whether the object `sha` is present.
    pub fn has(&self, sha: &str) -> bool {
        let Some((a, b)) = Store::split(sha) else {
            return false;
        };
        fs::open_dir(&self.objects, a.as_bytes())
            .ok()
            .and_then(|d| fs::stat_at(&d, b.as_bytes()).ok().flatten())
            .is_some_and(|m| m.kind == fs::Kind::File)
    }

    /// Opens the object `sha`.
    pub fn open_object(&self, sha: &str) -> Result<File, Error> {
        let (a, b) = Store::split(sha).ok_or_else(|| Error::Corrupt {
            what: format!("{}: object name {sha:?}", self.name),
        })?;
        let d = fs::open_dir(&self.objects, a.as_bytes())
            .map_err(|e| self.err("open", &format!("objects/{sha}"), e))?;
        fs::open_file(&d, b.as_bytes()).map_err(|e| self.err("open", &format!("objects/{sha}"), e))
    }

    /// Stores what `reader` gives, which must hash to `want` if given; returns its hash.
    fn put(&self, reader: impl Read, want: Option<&str>, what: &str) -> Result<String, Error> {
        let (temp, mut file) = fs::temp_file(&self.objects, "object")
            .map_err(|e| self.err("create", "objects/(temporary)", e))?;
        let discard = || {
            let _ = fs::unlink(&self.objects, &temp);
        };
        let mut hasher = Sha256::new();
        let mut reader = reader;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    discard();
                    return Err(Error::io("read", what.as_bytes(), e));
                }
            };
            let piece = buf.get(..n).unwrap_or_default();
            hasher.update(piece);
            if let Err(e) = file.write_all(piece) {
                discard();
                return Err(Error::io("store", what.as_bytes(), e));
            }
        }
        drop(file);
        let sha = hex(&hasher.finalize());
        if want.is_some_and(|w| w != sha) {
            discard();
            return Err(Error::Changed {
                path: what.to_owned(),
            });
        }
        let Some((a, b)) = Store::split(&sha) else {
            discard();
            return Err(Error::Corrupt { what: sha });
        };
        match fs::make_dir(&self.objects, a.as_bytes(), 0o700) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                discard();
                return Err(self.err("make", &format!("objects/{a}"), e));
            }
        }
        let sub = fs::open_dir(&self.objects, a.as_bytes())
            .map_err(|e| self.err("open", &format!("objects/{a}"), e));
        let sub = match sub {
            Ok(sub) => sub,
            Err(e) => {
                discard();
                return Err(e);
            }
        };
        if let Err(e) = fs::rename(&self.objects, &temp, &sub, b.as_bytes()) {
            discard();
            return Err(self.err("store", &format!("objects/{sha}"), e));
        }
        Ok(sha)
    }

    /// Stores the content of every file of `manifest` not stored yet, reading it from
    /// the tree under `root`; a file that changed since the walk is an error.
    pub fn put_tree(&self, root: &impl AsFd, manifest: &Manifest) -> Result<(), Error> {
        for entry in &manifest.entries {
            let Entry::File { path, sha256, .. } = entry else {
                continue;
            };
            if self.has(sha256) {
                continue;
            }
            let (dir, name) = crate::restore::split(path.as_bytes());
            let d = fs::open_dir(root, dir).map_err(|e| Error::fs("open", dir, e))?;
            let file =
                fs::open_file(&d, name).map_err(|e| Error::fs("open", path.as_bytes(), e))?;
            self.put(file, Some(sha256), &path.to_string())?;
        }
        Ok(())
    }

    /// Stores `manifest` itself; returns its hash.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<String, Error> {
        let bytes = manifest.to_bytes();
        self.put(&bytes[..], None, "the manifest")
    }

    /// Reads the manifest `sha`.
    pub fn manifest(&self, sha: &str) -> Result<Manifest, Error> {
        let mut text = Vec::new();
        self.open_object(sha)?
            .read_to_end(&mut text)
            .map_err(|e| Error::io("read", format!("objects/{sha}").as_bytes(), e))?;
        serde_json::from_slice(&text).map_err(|e| Error::Corrupt {
            what: format!("{}: manifest {sha}: {e}", self.name),
        })
    }

    fn open_log(&self, write: bool) -> Result<Option<File>, Error> {
        let flags = if write {
            OFlag::O_RDWR | OFlag::O_CREAT
        } else {
            OFlag::O_RDONLY
        };
        match fcntl::openat(
            &self.dir,
            fs::os(LOG),
            flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::ENOENT) if !write => Ok(None),
            Err(e) => Err(self.err("open", "log", e)),
        }
    }

    /// The versions, oldest first, and the length of the log's complete lines.
    fn read_log(&self, file: Option<&mut File>) -> Result<(Vec<Version>, u64), Error> {
        let mut text = Vec::new();
        if let Some(file) = file {
            file.read_to_end(&mut text)
                .map_err(|e| Error::io("read", format!("{}/log", self.name).as_bytes(), e))?;
        }
        parse_log(&text, &self.name)
    }

    /// The versions, oldest first.
    pub fn versions(&self) -> Result<Vec<Version>, Error> {
        let mut file = self.open_log(false)?;
        Ok(self.read_log(file.as_mut())?.0)
    }

    /// Records a version of `manifest_hash` (whose objects are stored) after the last
    /// one. Call with the lock held.
    pub fn append(&self, manifest_hash: &str, message: &str, time: &str) -> Result<Version, Error> {
        // Objects durable before the line that names them.
        if self.durable {
            nix::unistd::syncfs(&self.dir).map_err(|e| self.err("sync", "objects", e))?;
        }
        let mut file = self.open_log(true)?.ok_or_else(|| Error::Corrupt {
            what: format!("{}/log cannot be made", self.name),
        })?;
        let (versions, complete) = self.read_log(Some(&mut file))?;
        let (version, line) = next_version(versions.last(), manifest_hash, message, time)?;
        let log_err =
            |e: std::io::Error| Error::io("write", format!("{}/log", self.name).as_bytes(), e);
        // Cut a line a crash left unfinished, then write at the end in one piece.
        file.set_len(complete).map_err(log_err)?;
        file.seek(SeekFrom::Start(complete)).map_err(log_err)?;
        file.write_all(&line).map_err(log_err)?;
        if self.durable {
            file.sync_all().map_err(log_err)?;
            fs::sync(&self.dir).map_err(|e| self.err("sync", "log", e))?;
        }
        Ok(version)
    }
}
