//! The orders around releases on one host: `rollback`, `confirm`, and the revert of a
//! switch nobody confirmed in time (which survives a restart: the deadline is a file).

use std::path::Path;

use crate::deploy::DeployError;
use crate::layout::{self, Event, LayoutError, Releases};

/// Switches `releases` back: to the release named by `prefix` (≥ 3 characters), or to
/// the previous one. Recorded as a new history entry (revert-style: A→B→C→A).
pub fn rollback(
    releases: &Releases,
    prefix: Option<&str>,
    who: &str,
    message: &str,
) -> Result<(String, Option<String>), DeployError> {
    let _lock = releases.lock()?;
    let target = match prefix.filter(|p| !p.is_empty()) {
        Some(prefix) => releases.resolve(prefix)?,
        None => releases.previous().ok_or(LayoutError::NoPrevious)?,
    };
    let from = releases.switch(&target)?;
    releases.append(&Event {
        time: layout::now(),
        action: "rollback".into(),
        id: target.clone(),
        from: from.clone().unwrap_or_default(),
        who: who.to_owned(),
        message: message.to_owned(),
    })?;
    releases.set_state(&target, "active")?;
    if let Some(from) = &from {
        if *from != target {
            let _ = releases.set_state(from, "inactive");
        }
    }
    releases.set_pending(None)?;
    Ok((target, from))
}

/// What a `confirm` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmed {
    /// The pending switch to this release is confirmed.
    Confirmed(String),
    /// The deadline had passed (the host was down, or the sweeper had not come by yet):
    /// the switch to `id` was reverted to `previous` instead.
    TooLate {
        /// The release that was not confirmed in time.
        id: String,
        /// The release current again.
        previous: String,
    },
    /// No switch waits for a confirm.
    Nothing,
}

/// Confirms the pending switch, if its deadline (against unix time `now`) has not
/// passed; a late confirm reverts it, as the deadline said.
pub fn confirm(releases: &Releases, who: &str, now: i64) -> Result<Confirmed, DeployError> {
    let _lock = releases.lock()?;
    let Some(pending) = releases.pending() else {
        return Ok(Confirmed::Nothing);
    };
    if pending.deadline <= now {
        revert_locked(releases, &pending)?;
        return Ok(Confirmed::TooLate {
            id: pending.id,
            previous: pending.previous,
        });
    }
    releases.set_pending(None)?;
    releases.append(&Event {
        time: layout::now(),
        action: "confirm".into(),
        id: pending.id.clone(),
        from: String::new(),
        who: who.to_owned(),
        message: String::new(),
    })?;
    Ok(Confirmed::Confirmed(pending.id))
}

/// Reverts a switch whose confirm deadline has passed at unix time `now`; returns the
/// release reverted to.
pub fn revert_if_overdue(releases: &Releases, now: i64) -> Result<Option<String>, DeployError> {
    let Some(pending) = releases.pending() else {
        return Ok(None);
    };
    if pending.deadline > now {
        return Ok(None);
    }
    let _lock = releases.lock()?;
    // Re-read under the lock: a confirm may have come meanwhile.
    let Some(pending) = releases.pending().filter(|p| p.deadline <= now) else {
        return Ok(None);
    };
    revert_locked(releases, &pending)?;
    Ok(Some(pending.previous))
}

/// The revert of an unconfirmed switch, under the layout's lock: back to the previous
/// release if the pending one is still current, and the pending record gone.
fn revert_locked(releases: &Releases, pending: &layout::Pending) -> Result<(), DeployError> {
    if releases.current().as_deref() == Some(pending.id.as_str()) {
        releases.switch(&pending.previous)?;
        releases.append(&Event {
            time: layout::now(),
            action: "revert".into(),
            id: pending.previous.clone(),
            from: pending.id.clone(),
            who: "deploy (not confirmed in time)".into(),
            message: String::new(),
        })?;
        let _ = releases.set_state(&pending.id, "reverted");
        let _ = releases.set_state(&pending.previous, "active");
    }
    releases.set_pending(None)?;
    Ok(())
}

/// A registry of the `dest`s with a pending confirm, in a state directory, so that an
/// agent finds them again after a restart.
#[derive(Debug, Clone)]
pub struct Watch {
    dir: std::path::PathBuf,
}

impl Watch {
    /// The registry in `state_dir/confirm`.
    pub fn new(state_dir: &Path) -> Watch {
        Watch {
            dir: state_dir.join("confirm"),
        }
    }

    fn entry(&self, releases: &Releases) -> std::path::PathBuf {
        let mut h = crate::fetch::Hasher::new(crate::manifest::Algorithm::Sha256);
        h.update(releases.dir().as_os_str().as_encoded_bytes());
        self.dir.join(h.hex().get(..16).unwrap_or_default())
    }

    /// Remembers `releases` (its dest and releases directory).
    pub fn add(&self, releases: &Releases) -> Result<(), LayoutError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| LayoutError::Io {
            what: "cannot create",
            path: self.dir.display().to_string(),
            source,
        })?;
        let text = serde_json::json!({
            "dest": releases.dest(),
            "releases_dir": releases.dir(),
        });
        layout::write_atomic(&self.entry(releases), text.to_string().as_bytes())
    }

    /// Reverts every overdue switch; forgets the dests with nothing pending. Returns
    /// the (dest, release reverted to) pairs.
    pub fn sweep(&self, now: i64) -> Vec<(String, String)> {
        let mut reverted = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return reverted;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some(value) = std::fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
            else {
                continue;
            };
            let (Some(dest), Some(dir)) = (value["dest"].as_str(), value["releases_dir"].as_str())
            else {
                continue;
            };
            let releases = Releases::new(Path::new(dest), Some(Path::new(dir)));
            match revert_if_overdue(&releases, now) {
                Ok(Some(to)) => {
                    tracing::warn!(dest, release = %to, "switch not confirmed in time: reverted");
                    reverted.push((dest.to_owned(), to));
                }
                Ok(None) => {}
                Err(e) => tracing::error!(dest, error = %e, "cannot revert an unconfirmed switch"),
            }
            if releases.pending().is_none() {
                let _ = std::fs::remove_file(&path);
            }
        }
        reverted
    }
}
