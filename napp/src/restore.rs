//! Putting a recorded tree back (`reset`): a NodeApp directory made to match a
//! manifest, with what `.gitignore` excludes left alone.
//!
//! ```text
//! check    every object the target names is in the store (else nothing is touched)
//! stage    each file or link that differs, written under a staging directory
//!          (.deploy-tmp.reset.PID.N in the NodeApp dir: same file system)
//! apply    remove what the target lacks (deepest first; kept if the target's
//!          .gitignore ignores it; a directory still holding ignored files is kept),
//!          make the target's directories, rename the staged entries into place
//! ```
//!
//! A failure while staging leaves the tree as it was; a failure while applying is
//! reported, and the caller ([`crate::Locked::reset`]) puts the previous tree back the
//! same way (its files were stored first).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::stat::{self, Mode};

use crate::fs::{self, Kind};
use crate::manifest::{Entry, Manifest};
use crate::rules::Rules;
use crate::store::Store;
use crate::Error;

/// A path's directory and last component.
pub fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (
            path.get(..i).unwrap_or_default(),
            path.get(i + 1..).unwrap_or_default(),
        ),
        None => (b"", path),
    }
}

fn parent(root: &impl AsFd, path: &[u8]) -> Result<(OwnedFd, Vec<u8>), Error> {
    let (dir, name) = split(path);
    let fd = fs::open_dir(root, dir).map_err(|e| Error::fs("open", dir, e))?;
    Ok((fd, name.to_owned()))
}

/// The target's `.gitignore` rules, read from the store.
fn target_rules(target: &Manifest, store: &Store) -> Result<Rules, Error> {
    rules_with(target, |path, sha256| {
        let mut text = Vec::new();
        store
            .open_object(sha256)?
            .take(1 << 20)
            .read_to_end(&mut text)
            .map_err(|e| Error::io("read", path, e))?;
        Ok(text)
    })
}

/// The `.gitignore` rules of `target`, each file's content given by `read(path,
/// sha256)` (the store here; what an SSH host sent for [`crate::remote`]).
pub fn rules_with(
    target: &Manifest,
    mut read: impl FnMut(&[u8], &str) -> Result<Vec<u8>, Error>,
) -> Result<Rules, Error> {
    let mut rules = Rules::new();
    for e in &target.entries {
        if let Entry::File { path, sha256, .. } = e {
            let (dir, name) = split(path.as_bytes());
            if name == b".gitignore" {
                let text = read(path.as_bytes(), sha256)?;
                rules.add(dir, text.get(..1 << 20).unwrap_or(&text));
            }
        }
    }
    Ok(rules)
}

/// The `.gitignore` files of `target`: (path, object).
pub fn gitignores(target: &Manifest) -> Vec<(&[u8], &str)> {
    target
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::File { path, sha256, .. } if split(path.as_bytes()).1 == b".gitignore" => {
                Some((path.as_bytes(), sha256.as_str()))
            }
            _ => None,
        })
        .collect()
}

/// The staging directory, removed when dropped.
struct Stage<'a, R: AsFd> {
    root: &'a R,
    name: Vec<u8>,
    fd: OwnedFd,
}

impl<R: AsFd> Drop for Stage<'_, R> {
    fn drop(&mut self) {
        let _ = fs::remove_tree(self.root, &self.name);
    }
}

/// Makes the tree under `root`, whose walk gave `current`, match `target`.
pub fn restore(
    root: &impl AsFd,
    current: &Manifest,
    target: &Manifest,
    store: &Store,
) -> Result<(), Error> {
    for e in &target.entries {
        if let Entry::File { path, sha256, .. } = e {
            if !store.has(sha256) {
                return Err(Error::Corrupt {
                    what: format!("the content of {path} ({sha256}) is missing"),
                });
            }
        }
    }
    let rules = target_rules(target, store)?;
    let stage_name = fs::temp_name("reset");
    fs::make_dir(root, &stage_name, 0o700)
        .map_err(|e| Error::fs("make the staging directory", &stage_name, e))?;
    let fd = fs::open_dir(root, &stage_name)
        .map_err(|e| Error::fs("open the staging directory", &stage_name, e))?;
    let stage = Stage {
        root,
        name: stage_name,
        fd,
    };
    // Stage what differs.
    let mut staged: Vec<(&Entry, Vec<u8>)> = Vec::new();
    for e in &target.entries {
        if current.get(e.path()) == Some(e) {
            continue;
        }
        match e {
            Entry::File {
                path, mode, sha256, ..
            } => {
                let (temp, mut out) = fs::temp_file(&stage.fd, "file")
                    .map_err(|er| Error::fs("stage", path.as_bytes(), er))?;
                let mut object = store.open_object(sha256)?;
                std::io::copy(&mut object, &mut out)
                    .map_err(|er| Error::io("stage", path.as_bytes(), er))?;
                out.flush()
                    .map_err(|er| Error::io("stage", path.as_bytes(), er))?;
                stat::fchmod(&out, Mode::from_bits_truncate(mode & 0o7777))
                    .map_err(|er| Error::fs("set the mode of", path.as_bytes(), er))?;
                staged.push((e, temp));
            }
            Entry::Symlink { path, target } => {
                let temp = fs::temp_symlink(&stage.fd, target.as_bytes())
                    .map_err(|er| Error::fs("stage", path.as_bytes(), er))?;
                staged.push((e, temp));
            }
            Entry::Dir { .. } => {}
        }
    }
    apply(root, current, target, &rules, &stage.fd, &staged)
}

fn apply(
    root: &impl AsFd,
    current: &Manifest,
    target: &Manifest,
    rules: &Rules,
    stage: &OwnedFd,
    staged: &[(&Entry, Vec<u8>)],
) -> Result<(), Error> {
    // What the target lacks, or has as another kind: deepest first.
    for e in current.entries.iter().rev() {
        let path = e.path();
        let wanted = target.get(path);
        if wanted.is_some_and(|t| t.kind() == e.kind()) {
            continue;
        }
        if wanted.is_none() && rules.ignored(path, e.kind() == Kind::Dir) {
            continue;
        }
        let (dir, name) = parent(root, path)?;
        let done = match e.kind() {
            Kind::Dir => fs::rmdir(&dir, &name),
            _ => fs::unlink(&dir, &name),
        };
        match done {
            Ok(()) | Err(Errno::ENOENT) => {}
            // Ignored files inside: the directory stays, unless the target needs its name.
            Err(Errno::ENOTEMPTY) if wanted.is_none() => {}
            Err(er) => return Err(Error::fs("remove", path, er)),
        }
    }
    // The target's directories, parents first (the manifest is sorted).
    for e in &target.entries {
        let Entry::Dir { path, mode } = e else {
            continue;
        };
        let (dir, name) = parent(root, path.as_bytes())?;
        let name = name.as_slice();
        match fs::stat_at(&dir, name).map_err(|er| Error::fs("stat", path.as_bytes(), er))? {
            Some(m) if m.kind == Kind::Dir => {
                if m.mode != *mode {
                    fs::chmod_dir(&dir, name, *mode)
                        .map_err(|er| Error::fs("set the mode of", path.as_bytes(), er))?;
                }
                continue;
            }
            // Something unrecorded (ignored) is in the way: the target wins.
            Some(_) => fs::remove_tree(&dir, name)
                .map_err(|er| Error::fs("remove", path.as_bytes(), er))?,
            None => {}
        }
        fs::make_dir(&dir, name, 0o700).map_err(|er| Error::fs("make", path.as_bytes(), er))?;
        fs::chmod_dir(&dir, name, *mode)
            .map_err(|er| Error::fs("set the mode of", path.as_bytes(), er))?;
    }
    // The staged files and links.
    for (e, temp) in staged {
        let path = e.path();
        let (dir, name) = parent(root, path)?;
        if let Some(m) = fs::stat_at(&dir, &name).map_err(|er| Error::fs("stat", path, er))? {
            if m.kind == Kind::Dir {
                fs::remove_tree(&dir, &name).map_err(|er| Error::fs("remove", path, er))?;
            }
        }
        fs::rename(stage, temp, &dir, &name).map_err(|er| Error::fs("put back", path, er))?;
    }
    Ok(())
}
