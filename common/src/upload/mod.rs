//! Files to send to many hosts as one tar stream (`upload`, and `sync` before its tool
//! starts): what the user named, walked once into a [`Manifest`], then written as a tar
//! archive ([`tar`]) to each host as a stream, in constant memory.
//!
//! ```text
//! --upload=app --upload=/etc/app.conf            (paths as given)
//!   absolute layout (default)  home/me/app/…, etc/app.conf   under the remote root
//!   --relative                 app/…            (/etc/app.conf: refused, it is not relative)
//! ```
//!
//! * Paths are cleaned lexically (`a/./b/../c` is `a/c`); the absolute layout makes them
//!   absolute against the current directory first, like orgalorg.
//! * A named path that is a symbolic link is followed (the user named what it points
//!   to); links inside a directory are sent as links, so a tree cannot loop.
//! * Directories are sent too (orgalorg sends only files): their modes arrive, and empty
//!   directories exist on the other side.
//! * Modes, modification times and numeric uid/gid are recorded; whether the owner is
//!   applied is the extracting side's choice (`--no-preserve-owner`).
//! * Sockets, FIFOs and devices are refused, naming the path.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

pub mod body;
pub mod pieces;
pub mod tar;

/// What to upload and where, as the client asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UploadSpec {
    /// Local paths as given (files or directories).
    pub files: Vec<String>,
    /// The remote directory files are extracted under (created if missing); a template
    /// (`%h`, `%p`). Empty: the order's default.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root: String,
    /// Keep paths relative as given, instead of recreating their absolute local path.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub relative: bool,
    /// Do not apply the recorded uid/gid on extraction (files belong to the remote user).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_owner: bool,
}

/// Why a manifest cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// A path could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        cause: String,
    },
    /// A path is not a file, directory or symbolic link.
    #[error("{path}: only files, directories and symbolic links can be uploaded")]
    Kind {
        /// The path.
        path: String,
    },
    /// `--relative` with a path that is absolute or leaves the current directory.
    #[error("{path}: with --relative, paths must stay inside the current directory")]
    NotRelative {
        /// The path as given.
        path: String,
    },
    /// A path is not UTF-8 (names travel as text).
    #[error("{path}: file names must be UTF-8")]
    Name {
        /// The path, lossily.
        path: String,
    },
    /// Nothing to upload.
    #[error("no files to upload")]
    Empty,
}

/// What one entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this many bytes (when walked).
    File {
        /// Size in bytes.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link to this target.
    Symlink {
        /// Where it points, as stored.
        target: String,
    },
}

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The local path to read.
    pub local: PathBuf,
    /// The name in the archive (relative, `/`-separated, no `..`).
    pub name: String,
    /// What it is.
    pub kind: Kind,
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, Unix seconds (0 if before 1970).
    pub mtime: u64,
}

/// Every entry to send, in archive order (a directory before its contents).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries.
    pub entries: Vec<Entry>,
}

impl Manifest {
    /// Walks `spec.files` (relative paths against `cwd`).
    pub fn build(spec: &UploadSpec, cwd: &Path) -> Result<Manifest, UploadError> {
        if spec.files.is_empty() {
            return Err(UploadError::Empty);
        }
        let mut manifest = Manifest::default();
        let mut seen = HashSet::new();
        for given in &spec.files {
            if given.trim().is_empty() {
                // `--upload="$UNSET"` must not send the whole current directory.
                return Err(UploadError::Read {
                    path: given.clone(),
                    cause: "empty path".to_owned(),
                });
            }
            let name = archive_name(given, spec.relative, cwd)?;
            let local = if Path::new(given).is_absolute() {
                PathBuf::from(given)
            } else {
                cwd.join(given)
            };
            // What the user named is followed if it is a link.
            let meta = std::fs::metadata(&local).map_err(|e| UploadError::Read {
                path: given.clone(),
                cause: e.to_string(),
            })?;
            // Parent directories of a named path are created by tar; its own entry
            // follows.
            manifest.add(&local, &name, &meta, given, &mut seen)?;
        }
        Ok(manifest)
    }

    /// Files, and the bytes of their contents.
    pub fn totals(&self) -> (usize, u64) {
        self.entries
            .iter()
            .fold((0, 0), |(files, bytes), e| match e.kind {
                Kind::File { size } => (files + 1, bytes + size),
                _ => (files, bytes),
            })
    }

    fn add(
        &mut self,
        local: &Path,
        name: &str,
        meta: &std::fs::Metadata,
        shown: &str,
        seen: &mut HashSet<String>,
    ) -> Result<(), UploadError> {
        let kind = if meta.is_file() {
            // Unreadable files are refused now, not once per host mid-stream.
            std::fs::File::open(local).map_err(|e| UploadError::Read {
                path: shown.to_owned(),
                cause: e.to_string(),
            })?;
            Kind::File { size: meta.len() }
        } else if meta.is_dir() {
            Kind::Dir
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(local).map_err(|e| UploadError::Read {
                path: shown.to_owned(),
                cause: e.to_string(),
            })?;
            let target = target.to_str().ok_or_else(|| UploadError::Name {
                path: shown.to_owned(),
            })?;
            Kind::Symlink {
                target: target.to_owned(),
            }
        } else {
            return Err(UploadError::Kind {
                path: shown.to_owned(),
            });
        };
        let is_dir = kind == Kind::Dir;
        // `.` (relative) or `/` (absolute) has no name of its own: only its contents.
        if !name.is_empty() && seen.insert(name.to_owned()) {
            self.entries.push(Entry {
                local: local.to_owned(),
                name: name.to_owned(),
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: u64::try_from(meta.mtime()).unwrap_or_default(),
            });
        }
        if !is_dir {
            return Ok(());
        }
        let read_err = |e: std::io::Error| UploadError::Read {
            path: local.display().to_string(),
            cause: e.to_string(),
        };
        let mut children: Vec<_> = std::fs::read_dir(local)
            .map_err(read_err)?
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        children.sort_by_key(|c| c.file_name());
        for child in children {
            let path = child.path();
            let file_name = child.file_name();
            let file_name = file_name.to_str().ok_or_else(|| UploadError::Name {
                path: path.display().to_string(),
            })?;
            let meta = std::fs::symlink_metadata(&path).map_err(|e| UploadError::Read {
                path: path.display().to_string(),
                cause: e.to_string(),
            })?;
            let child_name = if name.is_empty() {
                file_name.to_owned()
            } else {
                format!("{name}/{file_name}")
            };
            let shown = path.display().to_string();
            self.add(&path, &child_name, &meta, &shown, seen)?;
        }
        Ok(())
    }
}

/// A walked manifest, shared by every delivery of a process.
type Cached = Arc<tokio::sync::OnceCell<Result<Arc<Manifest>, String>>>;

/// The manifest of `spec` (paths relative to the current directory), walked once per
/// process by the first delivery that needs it: a run sends the same files to every
/// host, whatever its transport. Only programs that upload (the client) call this.
pub async fn manifest(spec: &UploadSpec) -> Result<Arc<Manifest>, String> {
    let cell = {
        let mut cache = cache().lock().await;
        Arc::clone(cache.entry(spec.clone()).or_default())
    };
    cell.get_or_init(|| async {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || {
            let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
            Manifest::build(&spec, &cwd)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")))
    })
    .await
    .clone()
}

/// Builds the manifest of `spec` now (paths relative to the current directory) and
/// keeps it for [`manifest`], so that the deliveries of this process do not walk the
/// files again: a caller that must refuse bad paths before any delivery uses this.
pub fn build_and_keep(spec: &UploadSpec) -> Result<Arc<Manifest>, UploadError> {
    let cwd = std::env::current_dir().map_err(|e| UploadError::Read {
        path: ".".to_owned(),
        cause: e.to_string(),
    })?;
    let built = Arc::new(Manifest::build(spec, &cwd)?);
    // Nobody else holds the cache this early; if someone did, they walk it themselves.
    if let Ok(mut cache) = cache().try_lock() {
        let _ = cache
            .entry(spec.clone())
            .or_default()
            .set(Ok(Arc::clone(&built)));
    }
    Ok(built)
}

/// Builds the manifest of `spec` with its relative paths taken under `base` (not the
/// current directory), and keeps it for [`manifest`]: every later delivery of `spec`
/// sends that tree. For a caller that made the tree itself (a release the client
/// fetched and unpacked once, sent to SSH hosts).
pub async fn build_and_keep_in(spec: &UploadSpec, base: &Path) -> Result<Arc<Manifest>, String> {
    let cell = {
        let mut cache = cache().lock().await;
        Arc::clone(cache.entry(spec.clone()).or_default())
    };
    let (spec, base) = (spec.clone(), base.to_owned());
    cell.get_or_init(|| async move {
        tokio::task::spawn_blocking(move || {
            Manifest::build(&spec, &base)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("internal error: {e}")))
    })
    .await
    .clone()
}

/// Keeps `manifest`, made by the caller (walked and then filtered), as the one every
/// later delivery of `spec` sends; a manifest already kept for `spec` stays.
pub async fn keep(spec: &UploadSpec, manifest: Arc<Manifest>) {
    let cell = {
        let mut cache = cache().lock().await;
        Arc::clone(cache.entry(spec.clone()).or_default())
    };
    let _ = cell.set(Ok(manifest));
}

/// The process's manifests, by spec.
fn cache() -> &'static tokio::sync::Mutex<HashMap<UploadSpec, Cached>> {
    static CACHE: OnceLock<tokio::sync::Mutex<HashMap<UploadSpec, Cached>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The archive name of `given`: cleaned, made absolute (then without its leading `/`)
/// unless `relative`.
fn archive_name(given: &str, relative: bool, cwd: &Path) -> Result<String, UploadError> {
    let path = Path::new(given);
    let full = if relative {
        if path.is_absolute() {
            return Err(UploadError::NotRelative {
                path: given.to_owned(),
            });
        }
        path.to_owned()
    } else {
        cwd.join(path)
    };
    let mut parts: Vec<&str> = Vec::new();
    for component in full.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if parts.pop().is_none() && relative {
                    return Err(UploadError::NotRelative {
                        path: given.to_owned(),
                    });
                }
            }
            Component::Normal(part) => {
                parts.push(part.to_str().ok_or_else(|| UploadError::Name {
                    path: given.to_owned(),
                })?)
            }
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_and_laid_out() {
        let cwd = Path::new("/home/me");
        assert_eq!(archive_name("a/./b/../c", true, cwd).unwrap(), "a/c");
        assert_eq!(
            archive_name("a/./b/../c", false, cwd).unwrap(),
            "home/me/a/c"
        );
        assert_eq!(archive_name("/etc/x", false, cwd).unwrap(), "etc/x");
        assert_eq!(archive_name("../x", false, cwd).unwrap(), "home/x");
        for bad in ["/etc/x", "../x", "a/../../x"] {
            assert_eq!(
                archive_name(bad, true, cwd),
                Err(UploadError::NotRelative { path: bad.into() })
            );
        }
        assert_eq!(archive_name(".", true, cwd).unwrap(), "");
    }

    #[test]
    fn trees_are_walked_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("app/empty")).unwrap();
        std::fs::write(root.join("app/b.txt"), "bb").unwrap();
        std::fs::write(root.join("app/a.txt"), "a").unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("app/link")).unwrap();
        std::os::unix::fs::symlink(root.join("app/a.txt"), root.join("named")).unwrap();
        let spec = UploadSpec {
            files: vec!["app".into(), "named".into(), "app/a.txt".into()],
            relative: true,
            ..UploadSpec::default()
        };
        let m = Manifest::build(&spec, root).unwrap();
        let names: Vec<(&str, &Kind)> = m
            .entries
            .iter()
            .map(|e| (e.name.as_str(), &e.kind))
            .collect();
        assert_eq!(
            names,
            [
                ("app", &Kind::Dir),
                ("app/a.txt", &Kind::File { size: 1 }),
                ("app/b.txt", &Kind::File { size: 2 }),
                ("app/empty", &Kind::Dir),
                (
                    "app/link",
                    &Kind::Symlink {
                        target: "a.txt".into()
                    }
                ),
                // A named link is followed.
                ("named", &Kind::File { size: 1 }),
            ]
        );
        assert_eq!(m.totals(), (3, 4));
        let missing = UploadSpec {
            files: vec!["nope".into()],
            ..UploadSpec::default()
        };
        let e = Manifest::build(&missing, root).unwrap_err().to_string();
        assert!(e.starts_with("cannot read nope: "), "{e}");
        assert_eq!(
            Manifest::build(&UploadSpec::default(), root),
            Err(UploadError::Empty)
        );
    }
}
