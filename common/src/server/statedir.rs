//! The daemon's `state_dir`, made usable by the user its workers run as.
//!
//! The master starts as root (usually), creates `state_dir`, then drops to `[server]
//! user`/`group`; the workers, which write transfer state and locks there, run as that
//! user. A directory the master created (or one root owns) is therefore handed over to
//! the configured user before the drop ([`prepare`]), and a directory that user still
//! cannot write is refused at start and by `--check` ([`check`]) instead of making every
//! worker die at start.
//!
//! The check asks what the workers' state store asks (the directory is theirs and
//! writable by nobody else), plus search permission on each ancestor (owner, group,
//! other bits; supplementary groups from the group database). ACLs and read-only
//! mounts are not modelled.

use super::privs::{self, PrivError};
use nix::unistd::{Gid, Uid};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why `state_dir` cannot serve the configured user.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDirError {
    /// The user or group does not resolve.
    #[error(transparent)]
    Ids(#[from] PrivError),
    /// Creating or handing over the directory failed.
    #[error("state_dir {}: cannot {what}: {source}", path.display())]
    Io {
        /// The directory.
        path: PathBuf,
        /// `create it` or `chown it to uid:gid`.
        what: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The user the workers run as cannot use the directory.
    #[error("state_dir {}: {reason}", path.display())]
    Unusable {
        /// The directory (or the ancestor at fault).
        path: PathBuf,
        /// What is wrong, naming the user.
        reason: String,
    },
}

/// Who the workers run as.
struct Who {
    uid: Uid,
    groups: Vec<Gid>,
    name: String,
}

fn who(user: Option<&str>, group: Option<&str>) -> Result<Who, PrivError> {
    Ok(match privs::target_ids(user, group)? {
        Some((uid, _gid, groups)) => Who {
            uid,
            groups,
            name: user.unwrap_or("the current user").trim().to_owned(),
        },
        None => Who {
            uid: nix::unistd::geteuid(),
            groups: std::iter::once(nix::unistd::getegid())
                .chain(nix::unistd::getgroups().unwrap_or_default())
                .collect(),
            name: format!("uid {}", nix::unistd::geteuid()),
        },
    })
}

/// `want` (an `rwx` triple as 0o4/0o2/0o1 bits) is granted to `who` on `meta`.
fn granted(meta: &std::fs::Metadata, who: &Who, want: u32) -> bool {
    if who.uid.is_root() {
        return true;
    }
    let mode = meta.mode();
    let bits = if meta.uid() == who.uid.as_raw() {
        mode >> 6
    } else if who.groups.iter().any(|g| g.as_raw() == meta.gid()) {
        mode >> 3
    } else {
        mode
    };
    bits & want == want
}

/// Checks that the workers' user can search every ancestor of `dir` and write `dir`.
/// A `dir` that does not exist yet must be creatable by the user starting the daemon
/// (it is created, then handed over, by [`prepare`]).
pub fn check(dir: &Path, user: Option<&str>, group: Option<&str>) -> Result<(), StateDirError> {
    let who = who(user, group)?;
    if !dir.exists() {
        let starter = self::who(None, None)?;
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|a| a.exists())
            .unwrap_or(Path::new("/"));
        let meta = std::fs::metadata(parent).map_err(|source| StateDirError::Io {
            path: parent.to_path_buf(),
            what: "read it".into(),
            source,
        })?;
        if !granted(&meta, &starter, 0o3) {
            return Err(StateDirError::Unusable {
                path: dir.to_path_buf(),
                reason: format!(
                    "does not exist, and {} cannot create it in {}",
                    starter.name,
                    parent.display()
                ),
            });
        }
        return Ok(());
    }
    for ancestor in dir.ancestors().skip(1) {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            continue;
        };
        if !granted(&meta, &who, 0o1) {
            return Err(StateDirError::Unusable {
                path: dir.to_path_buf(),
                reason: format!("{} cannot enter {}", who.name, ancestor.display()),
            });
        }
    }
    let meta = std::fs::metadata(dir).map_err(|source| StateDirError::Io {
        path: dir.to_path_buf(),
        what: "read it".into(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(StateDirError::Unusable {
            path: dir.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    // The workers keep their state private (see `rsync::state`): the directory must be
    // theirs, and writable by nobody else. A root-owned one is handed over at start
    // (when started as root).
    let handed_over = meta.uid() == 0 && nix::unistd::geteuid().is_root();
    let mode = meta.mode() & 0o7777;
    let reason = if meta.uid() != who.uid.as_raw() && !handed_over {
        Some(format!(
            "owned by uid {}, not by {} (uid {}) whom the workers run as",
            meta.uid(),
            who.name,
            who.uid
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "writable by group or others (mode {mode:o}): chmod go-w it"
        ))
    } else if mode & 0o300 != 0o300 {
        Some(format!("not writable by its owner (mode {mode:o})"))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StateDirError::Unusable {
            path: dir.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates `dir` if needed and, when the daemon is root and will switch to `user` /
/// `group`, gives a directory it created (or that root owns) to that user and group;
/// then [`check`]s it. Runs in the master before the privilege drop.
pub fn prepare(dir: &Path, user: Option<&str>, group: Option<&str>) -> Result<(), StateDirError> {
    let created = !dir.exists();
    if created {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |source| StateDirError::Io {
            path: dir.to_path_buf(),
            what: "create it".into(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    if let Some((uid, gid, _)) = privs::target_ids(user, group)? {
        let owner = std::fs::metadata(dir).map(|m| m.uid()).unwrap_or(0);
        if nix::unistd::geteuid().is_root() && !uid.is_root() && (created || owner == 0) {
            nix::unistd::chown(dir, Some(uid), Some(gid)).map_err(|e| StateDirError::Io {
                path: dir.to_path_buf(),
                what: format!("chown it to {uid}:{gid}"),
                source: e.into(),
            })?;
            tracing::info!(path = %dir.display(), uid = uid.as_raw(), gid = gid.as_raw(), "state_dir handed over to the workers' user");
        }
    }
    check(dir, user, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_user_can_use_its_own_directory() {
        let dir = tempfile::tempdir().unwrap();
        check(dir.path(), None, None).unwrap();
        let inner = dir.path().join("a/b");
        check(&inner, None, None).unwrap();
        prepare(&inner, None, None).unwrap();
        assert!(inner.is_dir());
    }

    #[test]
    fn a_file_is_not_a_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        let err = check(&file, None, None).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn nobody_cannot_write_a_private_directory() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        if nix::unistd::User::from_name("nobody")
            .ok()
            .flatten()
            .is_none()
        {
            eprintln!("skipped: no user nobody");
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // Owned by a third user: not handed over, refused.
        nix::unistd::chown(&other, Some(Uid::from_raw(4_000_123)), None).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
        let err = prepare(&other, Some("nobody"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not by nobody"), "{err}");
        // Created by root: handed over.
        let fresh = dir.path().join("fresh");
        prepare(&fresh, Some("nobody"), None).unwrap();
        let owner = std::fs::metadata(&fresh).unwrap().uid();
        assert_ne!(owner, 0);
    }
}
