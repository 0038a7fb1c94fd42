//! A snapshot's description: every directory, file and symbolic link of a NodeApp
//! directory that `.gitignore` does not exclude, sorted by path, and the walk that makes
//! it.
//!
//! ```json
//! {"entries":[
//!   {"kind":"dir","path":"conf","mode":493},
//!   {"kind":"file","path":"conf/app.ini","mode":420,"size":12,"sha256":"…"},
//!   {"kind":"symlink","path":"current","target":"conf"}]}
//! ```
//!
//! A path that is not UTF-8 is recorded as `{"bytes":"<base64>"}` in place of the
//! string (UTF-8 paths, all that earlier versions could record, are written as
//! before, so their manifests and hashes are unchanged).
//!
//! Not recorded: anything `.gitignore` excludes (an ignored directory is not entered),
//! `.git` directories (as git), names starting with `.deploy-tmp.` (work in progress),
//! FIFOs, sockets and devices. Modification times are not part of a snapshot, so an
//! identical push records nothing. A link is recorded as a link, never followed.

use std::io::Read;
use std::os::fd::AsFd;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fs::{self, Kind, MAX_DEPTH, TEMP_PREFIX};
use crate::rules::Rules;
use crate::Error;

/// A path as the kernel has it: bytes, `/`-joined, relative to the NodeApp directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Name(pub Vec<u8>);

impl Name {
    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(s.as_bytes().to_vec())
    }
}

impl Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeMap as _;
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(
                    "bytes",
                    &base64::engine::general_purpose::STANDARD.encode(&self.0),
                )?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        use base64::Engine as _;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Raw { bytes: String },
        }
        match Form::deserialize(d)? {
            Form::Text(t) => Ok(Name(t.into_bytes())),
            Form::Raw { bytes } => base64::engine::general_purpose::STANDARD
                .decode(bytes)
                .map(Name)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// One recorded entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Entry {
    /// A directory.
    Dir {
        /// Its path, `/`-joined, relative to the NodeApp directory.
        path: Name,
        /// Its permission bits.
        mode: u32,
    },
    /// A regular file, its content an object of the store.
    File {
        /// Its path.
        path: Name,
        /// Its permission bits.
        mode: u32,
        /// Its size in bytes.
        size: u64,
        /// The SHA-256 of its content, hex: its object's name.
        sha256: String,
    },
    /// A symbolic link.
    Symlink {
        /// Its path.
        path: Name,
        /// Its target, as read.
        target: String,
    },
}

impl Entry {
    /// Its path.
    pub fn path(&self) -> &[u8] {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => {
                path.as_bytes()
            }
        }
    }

    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Entry::Dir { .. } => Kind::Dir,
            Entry::File { .. } => Kind::File,
            Entry::Symlink { .. } => Kind::Symlink,
        }
    }
}

/// A tree's entries, sorted by path (bytewise, so a directory precedes its contents).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The entries.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Its canonical bytes (what is stored and hashed).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The SHA-256 of [`Manifest::to_bytes`], hex.
    pub fn hash(&self) -> String {
        hex(&Sha256::digest(self.to_bytes()))
    }

    /// The entry at `path`.
    pub fn get(&self, path: &[u8]) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path().cmp(path))
            .ok()
            .and_then(|i| self.entries.get(i))
    }

    /// Files, links and bytes.
    pub fn counts(&self) -> (u64, u64) {
        let mut files = 0;
        let mut bytes = 0;
        for e in &self.entries {
            match e {
                Entry::File { size, .. } => {
                    files += 1;
                    bytes += size;
                }
                Entry::Symlink { .. } => files += 1,
                Entry::Dir { .. } => {}
            }
        }
        (files, bytes)
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The SHA-256 of everything `reader` gives, hex, and its length.
pub fn hash_reader(mut reader: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

/// Walks the tree under `root` (a directory descriptor): the manifest of what is not
/// ignored, and the rules that decided it.
pub fn walk(root: &impl AsFd) -> Result<(Manifest, Rules), Error> {
    let mut out = Manifest::default();
    let mut rules = Rules::new();
    walk_dir(root, b"", &mut out, &mut rules, 0)?;
    out.entries.sort_by(|a, b| a.path().cmp(b.path()));
    Ok((out, rules))
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        let mut p = dir.to_vec();
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// A link's target, which must be UTF-8 (`path` names the link, for the message).
fn utf8(path: &[u8], target: &[u8]) -> Result<String, Error> {
    String::from_utf8(target.to_vec()).map_err(|_| Error::Name {
        path: String::from_utf8_lossy(path).into_owned(),
    })
}

fn walk_dir(
    dir: &impl AsFd,
    rel: &[u8],
    out: &mut Manifest,
    rules: &mut Rules,
    depth: usize,
) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(Error::fs("walk (too deep)", rel, nix::errno::Errno::ELOOP));
    }
    let names = fs::list(dir).map_err(|e| Error::fs("list", rel, e))?;
    if names.iter().any(|n| n == b".gitignore") {
        if let Ok(file) = fs::open_file(dir, b".gitignore") {
            let mut text = Vec::new();
            file.take(1 << 20)
                .read_to_end(&mut text)
                .map_err(|e| Error::io("read", &join(rel, b".gitignore"), e))?;
            rules.add(rel, &text);
        }
    }
    for name in names {
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        let path = join(rel, &name);
        let Some(meta) = fs::stat_at(dir, &name).map_err(|e| Error::fs("stat", &path, e))? else {
            continue; // gone meanwhile
        };
        if meta.kind == Kind::Other || rules.ignored(&path, meta.kind == Kind::Dir) {
            continue;
        }
        match meta.kind {
            Kind::Dir => {
                if name == b".git" {
                    continue;
                }
                out.entries.push(Entry::Dir {
                    path: Name(path.clone()),
                    mode: meta.mode,
                });
                let sub = fs::open_dir(dir, &name).map_err(|e| Error::fs("open", &path, e))?;
                walk_dir(&sub, &path, out, rules, depth + 1)?;
            }
            Kind::File => {
                let file = fs::open_file(dir, &name).map_err(|e| Error::fs("open", &path, e))?;
                let (sha256, size) = hash_reader(file).map_err(|e| Error::io("read", &path, e))?;
                out.entries.push(Entry::File {
                    path: Name(path),
                    mode: meta.mode,
                    size,
                    sha256,
                });
            }
            Kind::Symlink => {
                let target =
                    fs::read_link(dir, &name).map_err(|e| Error::fs("read the link", &path, e))?;
                out.entries.push(Entry::Symlink {
                    target: utf8(&path, &target)?,
                    path: Name(path),
                });
            }
            Kind::Other => {}
        }
    }
    Ok(())
}
