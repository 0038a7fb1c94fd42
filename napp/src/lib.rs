//! NodeApps on a node: Octopoda's `(node, app, scenario)` instances, their directories,
//! their versions, revert-style reset, purge, and the environment their scripts get.
//! The agent's `napp` order is a thin layer over this crate; it has no YAML and no
//! network in it.
//!
//! # Layout
//!
//! ```text
//! <workspace>/<app>@<scenario>/                    the NodeApp directory (scripts' cwd)
//! <workspace>/.deploy/versions/<app>@<scenario>/   its versions (see [`store`])
//! ```
//!
//! # Design
//!
//! * **Versions are snapshots** ([`manifest`]): every directory, file (content, mode)
//!   and symbolic link the `.gitignore` files ([`rules`]) do not exclude, as a manifest;
//!   contents are content-addressed objects (SHA-256), so an unchanged file costs
//!   nothing. A version's id is the SHA-256 of the previous id, the manifest's hash,
//!   the time and the message (hex; prefixes of at least [`MIN_PREFIX`] digits name one).
//!   [`Locked::snapshot`] records one only if the manifest changed, unless forced
//!   (`commit`).
//! * **Reset is revert-style** ([`Locked::reset`], [`restore`]): A→B→C reset to A
//!   restores A's tree and records it again (A, B, C, A'), as Octopoda's `napp reset`.
//! * **Confined**: the workspace is opened once ([`Workspace`], an extractor
//!   [`Root`]); every directory below is opened with `openat2(RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS)` and every entry relative to its parent's descriptor
//!   ([`fs`]), so a symbolic link planted in a NodeApp directory is recorded and put
//!   back as a link, never followed, and no snapshot, reset or purge reads or writes
//!   outside.
//! * **Crash-safe**: objects are renamed into place complete; the log is appended one
//!   fsynced line at a time after the objects are synced ([`store`]).
//! * **One writer at a time**: changes happen under the NodeApp's `flock`
//!   ([`NodeApp::lock`]), which the agent's worker processes share.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io;
use std::path::{Path, PathBuf};

pub use deploy_extract::Root;

pub mod env;
pub mod fs;
pub mod manifest;
pub mod remote;
pub mod restore;
pub mod rules;
pub mod store;

pub use manifest::Manifest;
pub use store::Version;

/// The shortest version prefix [`Locked::reset`] accepts (Octopoda's rule).
pub const MIN_PREFIX: usize = 3;

/// Where the versions of every NodeApp live, under the workspace.
pub const VERSIONS_DIR: &str = ".deploy/versions";

/// Why a NodeApp operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A scenario or application name that is not one harmless path component.
    #[error("invalid name {name:?}: one component of letters, digits, '_', '-' and '.', not starting with '.' or '-', at most 128 bytes")]
    BadName {
        /// The name.
        name: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path, relative to the NodeApp directory or the store.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A link a version cannot record.
    #[error(
        "{path}: a symbolic link whose target is not UTF-8; change it or list it in .gitignore"
    )]
    Name {
        /// The name, lossily decoded.
        path: String,
    },
    /// A file changed between the walk and its storing.
    #[error("{path} changed while it was being recorded; try again")]
    Changed {
        /// The file.
        path: String,
    },
    /// The store is damaged.
    #[error("the version store is damaged: {what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
    /// The workspace or a NodeApp directory cannot be opened or made.
    #[error(transparent)]
    Root(#[from] deploy_extract::Error),
    /// A version prefix shorter than [`MIN_PREFIX`] or not hex.
    #[error("version {prefix:?}: give at least {MIN_PREFIX} hex digits of a version id")]
    BadPrefix {
        /// The prefix.
        prefix: String,
    },
    /// No version starts with the prefix.
    #[error("{napp}: no version starts with {prefix:?}")]
    NoVersion {
        /// `<app>@<scenario>`.
        napp: String,
        /// The prefix.
        prefix: String,
    },
    /// Several versions start with the prefix.
    #[error("{napp}: version prefix {prefix:?} is ambiguous ({candidates}); give more digits")]
    Ambiguous {
        /// `<app>@<scenario>`.
        napp: String,
        /// The prefix.
        prefix: String,
        /// The matching ids, shortened.
        candidates: String,
    },
    /// The NodeApp has no versions (never pushed or committed here).
    #[error("no NodeApp {napp} on this node")]
    NotFound {
        /// `<app>@<scenario>`.
        napp: String,
    },
    /// A reset failed while changing the tree.
    #[error("{napp}: reset to {version} failed: {cause}; {outcome}")]
    ResetFailed {
        /// `<app>@<scenario>`.
        napp: String,
        /// The target's id.
        version: String,
        /// Why.
        cause: Box<Error>,
        /// What the tree is now.
        outcome: String,
    },
}

impl Error {
    fn fs(op: &'static str, path: &[u8], errno: nix::errno::Errno) -> Error {
        let source = match errno {
            nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => {
                io::Error::other("a symbolic link is in the way (links are never followed)")
            }
            e => io::Error::from(e),
        };
        Error::io(op, path, source)
    }

    fn io(op: &'static str, path: &[u8], source: io::Error) -> Error {
        let path = if path.is_empty() {
            ".".to_owned()
        } else {
            String::from_utf8_lossy(path).into_owned()
        };
        Error::Io { op, path, source }
    }

    /// Whether the caller asked for something wrong (a 400), rather than the node failing.
    pub fn is_caller_error(&self) -> bool {
        matches!(
            self,
            Error::BadName { .. }
                | Error::BadPrefix { .. }
                | Error::NoVersion { .. }
                | Error::Ambiguous { .. }
                | Error::Name { .. }
        )
    }

    /// Whether what was asked for does not exist (a 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// Whether `name` may name a scenario or an application (the same rule as the order's
/// `valid_name`): one path component that cannot climb, hide or surprise a shell.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_name(name: &str) -> Result<(), Error> {
    match valid_name(name) {
        true => Ok(()),
        false => Err(Error::BadName {
            name: name.to_owned(),
        }),
    }
}

/// The node's scenario paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Octopoda's root (`OCTOPODA_ROOT`): the workspace's parent.
    pub root: PathBuf,
    /// NodeApp directories live here.
    pub workspace: PathBuf,
    /// The file store (`OCTOPODA_FSTORE`), by default `<root>/fstore`.
    pub fstore: PathBuf,
    /// Logs (`OCTOPODA_LOG`), by default `<root>/log`.
    pub log: PathBuf,
}

impl Layout {
    /// The layout around `workspace`.
    pub fn new(workspace: &Path, fstore: Option<&Path>, log: Option<&Path>) -> Layout {
        let root = workspace.parent().unwrap_or(Path::new("/")).to_path_buf();
        Layout {
            fstore: fstore.map_or_else(|| root.join("fstore"), Path::to_path_buf),
            log: log.map_or_else(|| root.join("log"), Path::to_path_buf),
            workspace: workspace.to_path_buf(),
            root,
        }
    }

    /// The NodeApp directory of `app` in `scenario`.
    pub fn nodeapp_dir(&self, app: &str, scenario: &str) -> PathBuf {
        self.workspace.join(dir_name(app, scenario))
    }
}

/// `<app>@<scenario>`, as Octopoda names the directory.
pub fn dir_name(app: &str, scenario: &str) -> String {
    format!("{app}@{scenario}")
}

/// What `get` says of one NodeApp.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Info {
    /// The scenario.
    pub scenario: String,
    /// The application.
    pub app: String,
    /// Its directory.
    pub dir: String,
    /// The newest version's id (empty: none).
    pub current: String,
    /// How many versions.
    pub versions: usize,
}

/// The workspace, opened once.
#[derive(Debug)]
pub struct Workspace {
    root: Root,
    layout: Layout,
    durable: bool,
}

/// A NodeApp whose directory and store are open.
#[derive(Debug)]
pub struct NodeApp {
    name: String,
    dir: Root,
    store: store::Store,
}

/// A NodeApp under its lock: what changes it. The lock goes when this is dropped.
#[derive(Debug)]
pub struct Locked {
    napp: NodeApp,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl std::ops::Deref for Locked {
    type Target = NodeApp;

    fn deref(&self) -> &NodeApp {
        &self.napp
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Workspace {
    /// The workspace `root` (opened by the caller, who checked where it may be).
    pub fn new(root: Root, layout: Layout) -> Workspace {
        Workspace {
            root,
            layout,
            durable: true,
        }
    }

    /// A caller's scratch copy of a remote workspace ([`remote`]): the same, but
    /// nothing is synced to disk.
    pub fn scratch(root: Root, layout: Layout) -> Workspace {
        Workspace {
            root,
            layout,
            durable: false,
        }
    }

    /// Its layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn versions_root(&self, create: bool) -> Result<Root, Error> {
        Ok(self.root.subdir(Path::new(VERSIONS_DIR), create)?)
    }

    fn store_of(&self, name: &str, create: bool) -> Result<Option<store::Store>, Error> {
        let versions = match self.versions_root(create) {
            Ok(v) => v,
            Err(Error::Root(_)) if !create => return Ok(None),
            Err(e) => return Err(e),
        };
        match fs::stat_at(versions.fd(), name.as_bytes()) {
            Ok(None) if !create => return Ok(None),
            Err(e) => return Err(Error::fs("stat", name.as_bytes(), e)),
            _ => {}
        }
        let dir = versions.subdir(Path::new(name), create)?;
        let fd = dir
            .fd()
            .try_clone()
            .map_err(|e| Error::io("open", name.as_bytes(), e))?;
        let store = store::Store::open(fd, &format!("{VERSIONS_DIR}/{name}"))?;
        Ok(Some(match self.durable {
            true => store,
            false => store.scratch(),
        }))
    }

    /// The NodeApp `app@scenario`, its directory and store made if `create`; without
    /// `create`, `None` when it has no store (it never recorded a version here).
    pub fn nodeapp(
        &self,
        app: &str,
        scenario: &str,
        create: bool,
    ) -> Result<Option<NodeApp>, Error> {
        check_name(app)?;
        check_name(scenario)?;
        let name = dir_name(app, scenario);
        if !create && self.store_of(&name, false)?.is_none() {
            return Ok(None);
        }
        // The directory first: one that leads out is refused before a store is made.
        let dir = self.root.subdir(Path::new(&name), true)?;
        let Some(store) = self.store_of(&name, true)? else {
            return Ok(None);
        };
        Ok(Some(NodeApp { name, dir, store }))
    }

    /// The directory of `app@scenario`, made if missing (without a store: scripts run
    /// in NodeApps that need not have versions).
    pub fn nodeapp_dir(&self, app: &str, scenario: &str) -> Result<Root, Error> {
        check_name(app)?;
        check_name(scenario)?;
        Ok(self
            .root
            .subdir(Path::new(&dir_name(app, scenario)), true)?)
    }

    /// The versions of `app@scenario`, oldest first (none if it has no store).
    pub fn versions(&self, app: &str, scenario: &str) -> Result<Vec<Version>, Error> {
        check_name(app)?;
        check_name(scenario)?;
        match self.store_of(&dir_name(app, scenario), false)? {
            Some(store) => store.versions(),
            None => Ok(Vec::new()),
        }
    }

    /// The NodeApps here (of `scenario` when given), by name: those with a directory
    /// or versions.
    pub fn list(&self, scenario: Option<&str>) -> Result<Vec<Info>, Error> {
        if let Some(s) = scenario {
            check_name(s)?;
        }
        let mut names = fs::list(self.root.fd()).map_err(|e| Error::fs("list", b"", e))?;
        if let Ok(versions) = self.versions_root(false) {
            names.extend(
                fs::list(versions.fd())
                    .map_err(|e| Error::fs("list", VERSIONS_DIR.as_bytes(), e))?,
            );
        }
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let Ok(name) = String::from_utf8(name) else {
                continue;
            };
            let Some((app, scen)) = name.split_once('@') else {
                continue;
            };
            if !valid_name(app) || !valid_name(scen) || scenario.is_some_and(|s| s != scen) {
                continue;
            }
            let versions = self.versions(app, scen)?;
            out.push(Info {
                scenario: scen.to_owned(),
                app: app.to_owned(),
                dir: self.layout.nodeapp_dir(app, scen).display().to_string(),
                current: versions
                    .last()
                    .map(|v| v.version.clone())
                    .unwrap_or_default(),
                versions: versions.len(),
            });
        }
        Ok(out)
    }

    /// Removes the NodeApp's directory and its versions; whether there was anything.
    pub fn purge(&self, app: &str, scenario: &str) -> Result<bool, Error> {
        check_name(app)?;
        check_name(scenario)?;
        let name = dir_name(app, scenario);
        let store = self.store_of(&name, false)?;
        let _lock = store.as_ref().map(store::Store::lock).transpose()?;
        let existed = store.is_some()
            || fs::stat_at(self.root.fd(), name.as_bytes())
                .map_err(|e| Error::fs("stat", name.as_bytes(), e))?
                .is_some();
        fs::remove_tree(self.root.fd(), name.as_bytes())
            .map_err(|e| Error::fs("remove", name.as_bytes(), e))?;
        if store.is_some() {
            let versions = self.versions_root(false)?;
            fs::remove_tree(versions.fd(), name.as_bytes())
                .map_err(|e| Error::fs("remove", format!("{VERSIONS_DIR}/{name}").as_bytes(), e))?;
        }
        Ok(existed)
    }
}

impl NodeApp {
    /// `<app>@<scenario>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory (a second descriptor, e.g. for the extractor).
    pub fn root(&self) -> Result<Root, Error> {
        Ok(self.dir.try_clone()?)
    }

    /// Its directory's path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes its lock (waiting for another worker's change to end).
    pub fn lock(self) -> Result<Locked, Error> {
        let lock = self.store.lock()?;
        Ok(Locked {
            napp: self,
            _lock: lock,
        })
    }

    /// Its versions, oldest first.
    pub fn versions(&self) -> Result<Vec<Version>, Error> {
        self.store.versions()
    }
}

/// Newest first, `offset` skipped, at most `limit`.
pub fn page(versions: &[Version], offset: usize, limit: usize) -> Vec<Version> {
    versions
        .iter()
        .rev()
        .skip(offset)
        .take(limit)
        .cloned()
        .collect()
}

/// The one version whose id starts with `prefix` (at least [`MIN_PREFIX`] hex digits).
pub fn find<'v>(versions: &'v [Version], prefix: &str, napp: &str) -> Result<&'v Version, Error> {
    let prefix_lc = prefix.to_ascii_lowercase();
    if prefix_lc.len() < MIN_PREFIX || !prefix_lc.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadPrefix {
            prefix: prefix.to_owned(),
        });
    }
    let mut ids: Vec<&Version> = versions
        .iter()
        .filter(|v| v.version.starts_with(&prefix_lc))
        .collect();
    ids.sort_by(|a, b| a.version.cmp(&b.version));
    ids.dedup_by(|a, b| a.version == b.version);
    match ids.as_slice() {
        [] => Err(Error::NoVersion {
            napp: napp.to_owned(),
            prefix: prefix.to_owned(),
        }),
        [one] => Ok(one),
        many => Err(Error::Ambiguous {
            napp: napp.to_owned(),
            prefix: prefix.to_owned(),
            candidates: many
                .iter()
                .map(|v| v.version.get(..12).unwrap_or(&v.version))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

impl Locked {
    /// Records the tree as a version if it differs from the newest one, or always when
    /// `force`; the version recorded, if any.
    pub fn snapshot(&self, message: &str, force: bool) -> Result<Option<Version>, Error> {
        let fd = self.napp.dir.fd();
        let store = &self.napp.store;
        let (manifest, _) = manifest::walk(fd)?;
        let hash = manifest.hash();
        let versions = store.versions()?;
        if !force && versions.last().is_some_and(|v| v.manifest == hash) {
            return Ok(None);
        }
        store.put_tree(fd, &manifest)?;
        let stored = store.put_manifest(&manifest)?;
        store.append(&stored, message, &now()).map(Some)
    }

    /// Restores the version `prefix` names and records it again; the new version and
    /// the target. A failure while changing the tree puts the previous tree back.
    pub fn reset(&self, prefix: &str, message: &str) -> Result<(Version, Version), Error> {
        let napp = &self.napp.name;
        let store = &self.napp.store;
        let fd = self.napp.dir.fd();
        let versions = store.versions()?;
        if versions.is_empty() {
            return Err(Error::NotFound { napp: napp.clone() });
        }
        let target = find(&versions, prefix, napp)?.clone();
        let wanted = store.manifest(&target.manifest)?;
        // The tree as it is, stored, so a failure can put it back.
        let (before, _) = manifest::walk(fd)?;
        store.put_tree(fd, &before)?;
        if let Err(cause) = restore::restore(fd, &before, &wanted, store) {
            let outcome = match manifest::walk(fd)
                .and_then(|(now, _)| restore::restore(fd, &now, &before, store))
            {
                Ok(()) => "the previous tree was put back".to_owned(),
                Err(e) => format!(
                    "putting the previous tree back failed too ({e}): the tree is partly reset"
                ),
            };
            return Err(Error::ResetFailed {
                napp: napp.clone(),
                version: target.version.clone(),
                cause: Box::new(cause),
                outcome,
            });
        }
        let message = if message.is_empty() {
            format!(
                "reset to {}",
                target.version.get(..12).unwrap_or(&target.version)
            )
        } else {
            message.to_owned()
        };
        let new = store.append(&target.manifest, &message, &now())?;
        Ok((new, target))
    }
}

#[cfg(test)]
mod tests;
