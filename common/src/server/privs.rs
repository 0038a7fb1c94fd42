//! Dropping root privileges, and the umask, in the master after binding.
//!
//! The original switched with `setgid` and `setuid` only, before binding, and kept root's
//! supplementary groups. [`drop_privileges`] runs after the listening sockets are bound
//! (so ports below 1024 still work) and in the full order:
//!
//! 1. resolve the user (name or number) and the group (name or number; default the
//!    user's primary group), before changing anything, so a typo changes nothing;
//! 2. `initgroups(user, gid)` when the user has a name, else `setgroups([gid])`;
//! 3. `setgid(gid)`, then `setuid(uid)` (as root these set the real, effective and saved
//!    ids);
//! 4. check the result, and that `setuid(0)` now fails.
//!
//! Call it before any thread is started, or at least while no other thread is running
//! user-supplied code; glibc applies the id changes to all threads.

use std::ffi::CString;

use nix::errno::Errno;
use nix::sys::stat::Mode;
use nix::unistd::{self, Gid, Group, Uid, User};

/// Why privileges could not be dropped. The `Display` form names the user or group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrivError {
    /// No such user name.
    #[error("unknown user {user:?}")]
    UnknownUser {
        /// The user as configured.
        user: String,
    },
    /// No such group name.
    #[error("unknown group {group:?}")]
    UnknownGroup {
        /// The group as configured.
        group: String,
    },
    /// The user or group database could not be read.
    #[error("cannot look up {what}: {source}")]
    Lookup {
        /// `user "x"` or `group "x"`.
        what: String,
        /// The C library's reason.
        #[source]
        source: Errno,
    },
    /// A numeric user without a passwd entry needs an explicit group.
    #[error("user {user:?} has no passwd entry, so no primary group: set `group` too")]
    NoPrimaryGroup {
        /// The user as configured.
        user: String,
    },
    /// Not running as root, and asked to become someone else.
    #[error("cannot switch to {target}: running as uid {uid}, not root")]
    NotRoot {
        /// `user "x"` and/or `group "y"`.
        target: String,
        /// Our effective uid.
        uid: u32,
    },
    /// A system call failed.
    #[error("cannot switch to {target}: {call}: {source}")]
    Call {
        /// The call: `initgroups`, `setgroups`, `setgid` or `setuid`.
        call: &'static str,
        /// `user "x"` and/or `group "y"`.
        target: String,
        /// The operating system's reason.
        #[source]
        source: Errno,
    },
    /// After the switch the ids are not the ones asked for, or root can be regained.
    #[error("switching to {target} did not take effect: {detail}")]
    NotDropped {
        /// `user "x"` and/or `group "y"`.
        target: String,
        /// What is wrong.
        detail: String,
    },
}

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TargetUser {
    uid: Uid,
    /// The passwd name, when there is an entry (needed for `initgroups`).
    name: Option<String>,
    /// The passwd primary group, when there is an entry.
    gid: Option<Gid>,
}

/// Switches to `user` and `group` (names or numeric ids; `None` = keep).
///
/// Returns the new `(uid, gid)`, or `None` when nothing was asked for or nothing had to
/// change (not root, and already running as the target). Without `group` the user's
/// primary group is used. When not running as root, asking for a different user or group
/// is an error rather than a silent no-op.
pub fn drop_privileges(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(Uid, Gid)>, PrivError> {
    let user = user.map(str::trim).filter(|s| !s.is_empty());
    let group = group.map(str::trim).filter(|s| !s.is_empty());
    let target = describe(user, group);

    let target_user = user.map(resolve_user).transpose()?;
    let gid = match (group, &target_user) {
        (Some(group), _) => resolve_group(group)?,
        (None, Some(resolved)) => resolved.gid.ok_or_else(|| PrivError::NoPrimaryGroup {
            user: user.unwrap_or_default().to_owned(),
        })?,
        (None, None) => return Ok(None),
    };

    let euid = unistd::geteuid();
    if !euid.is_root() {
        let same_user = target_user.as_ref().is_none_or(|u| u.uid == euid);
        if same_user && gid == unistd::getegid() {
            return Ok(None);
        }
        return Err(PrivError::NotRoot {
            target,
            uid: euid.as_raw(),
        });
    }

    let call = |call: &'static str, target: &str| {
        let target = target.to_owned();
        move |source| PrivError::Call {
            call,
            target,
            source,
        }
    };
    match target_user.as_ref().and_then(|u| u.name.as_deref()) {
        Some(name) => {
            let name = CString::new(name).map_err(|_| PrivError::UnknownUser {
                user: name.to_owned(),
            })?;
            unistd::initgroups(&name, gid).map_err(call("initgroups", &target))?;
        }
        None => unistd::setgroups(&[gid]).map_err(call("setgroups", &target))?,
    }
    unistd::setgid(gid).map_err(call("setgid", &target))?;
    let uid = match &target_user {
        Some(resolved) => {
            unistd::setuid(resolved.uid).map_err(call("setuid", &target))?;
            resolved.uid
        }
        None => euid,
    };

    verify(uid, gid, &target)?;
    tracing::info!(
        uid = uid.as_raw(),
        gid = gid.as_raw(),
        "privileges dropped to {target}"
    );
    Ok(Some((uid, gid)))
}

/// The ids [`drop_privileges`] would switch to, with the supplementary groups the user
/// would get, without changing anything: `None` when neither is asked for.
pub fn target_ids(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(Uid, Gid, Vec<Gid>)>, PrivError> {
    let user = user.map(str::trim).filter(|s| !s.is_empty());
    let group = group.map(str::trim).filter(|s| !s.is_empty());
    let target_user = user.map(resolve_user).transpose()?;
    let gid = match (group, &target_user) {
        (Some(group), _) => resolve_group(group)?,
        (None, Some(resolved)) => resolved.gid.ok_or_else(|| PrivError::NoPrimaryGroup {
            user: user.unwrap_or_default().to_owned(),
        })?,
        (None, None) => return Ok(None),
    };
    let uid = target_user.as_ref().map_or_else(unistd::geteuid, |u| u.uid);
    let mut groups = vec![gid];
    if let Some(name) = target_user.as_ref().and_then(|u| u.name.as_deref()) {
        if let Ok(name) = CString::new(name) {
            groups = unistd::getgrouplist(&name, gid).unwrap_or(groups);
        }
    }
    Ok(Some((uid, gid, groups)))
}

/// Checks the ids after the switch, and that root cannot be regained.
fn verify(uid: Uid, gid: Gid, target: &str) -> Result<(), PrivError> {
    let not_dropped = |detail: String| PrivError::NotDropped {
        target: target.to_owned(),
        detail,
    };
    let (ruid, euid) = (unistd::getuid(), unistd::geteuid());
    if ruid != uid || euid != uid {
        return Err(not_dropped(format!("uid is {ruid}/{euid}, not {uid}")));
    }
    let (rgid, egid) = (unistd::getgid(), unistd::getegid());
    if rgid != gid || egid != gid {
        return Err(not_dropped(format!("gid is {rgid}/{egid}, not {gid}")));
    }
    if !uid.is_root() && unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(not_dropped("setuid(0) still succeeds".to_owned()));
    }
    Ok(())
}

/// `user "x"`, `group "y"` or `user "x" group "y"`, for error messages.
fn describe(user: Option<&str>, group: Option<&str>) -> String {
    match (user, group) {
        (Some(u), Some(g)) => format!("user {u:?} group {g:?}"),
        (Some(u), None) => format!("user {u:?}"),
        (None, Some(g)) => format!("group {g:?}"),
        (None, None) => "the current user".to_owned(),
    }
}

/// A user name, or a numeric uid (which need not have a passwd entry).
fn resolve_user(spec: &str) -> Result<TargetUser, PrivError> {
    let lookup = |source| PrivError::Lookup {
        what: format!("user {spec:?}"),
        source,
    };
    if let Ok(raw) = spec.parse::<u32>() {
        let uid = Uid::from_raw(raw);
        let entry = User::from_uid(uid).map_err(lookup)?;
        return Ok(TargetUser {
            uid,
            name: entry.as_ref().map(|u| u.name.clone()),
            gid: entry.map(|u| u.gid),
        });
    }
    match User::from_name(spec).map_err(lookup)? {
        Some(entry) => Ok(TargetUser {
            uid: entry.uid,
            name: Some(entry.name),
            gid: Some(entry.gid),
        }),
        None => Err(PrivError::UnknownUser {
            user: spec.to_owned(),
        }),
    }
}

/// A group name, or a numeric gid (which need not have a group entry).
fn resolve_group(spec: &str) -> Result<Gid, PrivError> {
    if let Ok(raw) = spec.parse::<u32>() {
        return Ok(Gid::from_raw(raw));
    }
    match Group::from_name(spec) {
        Ok(Some(entry)) => Ok(entry.gid),
        Ok(None) => Err(PrivError::UnknownGroup {
            group: spec.to_owned(),
        }),
        Err(source) => Err(PrivError::Lookup {
            what: format!("group {spec:?}"),
            source,
        }),
    }
}

/// Sets the process umask (only the permission bits of `mode` count, e.g. `0o022`).
///
/// The original daemon set umask 0, so files its orders created were world-writable;
/// the configured value is applied instead.
pub fn set_umask(mode: u32) {
    let bits = libc::mode_t::try_from(mode & 0o777).unwrap_or(0o022);
    let _previous = nix::sys::stat::umask(Mode::from_bits_truncate(bits));
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::ForkResult;

    /// Runs `child` in a forked process and returns its exit code.
    fn in_child(child: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only resolves users, changes its own ids and exits with
        // `_exit`; glibc makes malloc and NSS usable after fork.
        match unsafe { unistd::fork() }.expect("fork") {
            ForkResult::Child => {
                let code = child();
                // SAFETY: `_exit` ends the child at once, without running the parent's
                // atexit handlers or the test harness.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => match waitpid(child, None).expect("waitpid") {
                WaitStatus::Exited(_, code) => code,
                other => panic!("child ended with {other:?}"),
            },
        }
    }

    #[test]
    fn numeric_ids_need_no_entry() {
        let root = resolve_user("0").expect("uid 0");
        assert_eq!(root.uid, Uid::from_raw(0));
        assert_eq!(root.name.as_deref(), Some("root"));
        assert_eq!(root.gid, Some(Gid::from_raw(0)));

        let nameless = resolve_user("3999999").expect("numeric uid");
        assert_eq!(nameless.uid, Uid::from_raw(3_999_999));
        assert_eq!(nameless.name, None);
        assert_eq!(
            resolve_group("3999998").expect("gid"),
            Gid::from_raw(3_999_998)
        );

        // Resolution fails before anything is changed.
        let err = drop_privileges(Some("3999999"), None).expect_err("no primary group");
        assert!(matches!(err, PrivError::NoPrimaryGroup { .. }), "{err}");
        assert!(err.to_string().contains("3999999"), "{err}");
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let err = drop_privileges(Some("no-such-deploy-user"), None).expect_err("unknown");
        assert_eq!(err.to_string(), "unknown user \"no-such-deploy-user\"");
        let err = drop_privileges(Some("0"), Some("no-such-deploy-group")).expect_err("unknown");
        assert_eq!(err.to_string(), "unknown group \"no-such-deploy-group\"");
        assert!(matches!(drop_privileges(None, None), Ok(None)));
        assert!(matches!(drop_privileges(Some(" "), Some("")), Ok(None)));
    }

    #[test]
    fn umask_is_set() {
        let code = in_child(|| {
            set_umask(0o1027);
            let previous = nix::sys::stat::umask(Mode::empty());
            i32::from(previous.bits() != 0o027)
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn root_drops_to_nobody() {
        if !unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let Ok(Some(nobody)) = User::from_name("nobody") else {
            eprintln!("skipped: no user nobody");
            return;
        };
        let code = in_child(move || {
            let Ok(Some((uid, gid))) = drop_privileges(Some("nobody"), None) else {
                return 1;
            };
            if uid != nobody.uid || unistd::getuid() != nobody.uid {
                return 2;
            }
            if gid != nobody.gid || unistd::getgid() != nobody.gid {
                return 3;
            }
            let Ok(groups) = unistd::getgroups() else {
                return 4;
            };
            if !groups.contains(&nobody.gid) || groups.contains(&Gid::from_raw(0)) {
                return 5;
            }
            if unistd::setuid(Uid::from_raw(0)).is_ok() {
                return 6;
            }
            // No longer root: staying is a no-op, going back is refused.
            if !matches!(drop_privileges(Some("nobody"), None), Ok(None)) {
                return 7;
            }
            match drop_privileges(Some("root"), None) {
                Err(PrivError::NotRoot { .. }) => 0,
                _ => 8,
            }
        });
        assert_eq!(code, 0, "child failed check {code}");
    }
}
