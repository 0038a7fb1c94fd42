//! NodeApps on hosts reached only by a shell (`ssh://`): the same store, the same log,
//! the same ids and the same `.gitignore` rules as on an agent, with the host's side
//! done by generated `sh` scripts. An agent later installed on such a host reads the
//! history, and the other way round.
//!
//! ```text
//! state     caller ◄─ [`state_script`]: the log (base64) and the objects' names
//! tree      caller ◄─ tar -c of the NodeApp dir, extracted into a scratch workspace
//!           whose store holds the log and an empty placeholder per host object
//!           ([`Workspace::scratch`](crate::Workspace::scratch), [`placeholders`])
//! snapshot  the scratch NodeApp's `Locked::snapshot` (this crate's walk, rules, ids):
//!           the objects it stored are the ones the host lacks ([`new_objects`])
//! append    caller ─► those objects (tar), then [`append_script`]: under the NodeApp's
//!           flock, objects renamed into place, synced, the log line appended and
//!           synced, if the log still ends with the version the caller read
//! reset     caller ─► [`reset_script`]: from the host's objects into a staging dir
//!           inside the NodeApp, the replaced entries moved aside, undone on failure
//! ```
//!
//! Every name goes into a script through [`quote`] (single quotes, any bytes but NUL);
//! object names are checked to be 64 hex digits first.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::os::fd::AsFd;

use crate::fs::{self, Kind};
use crate::manifest::{Entry, Manifest};
use crate::rules::Rules;
use crate::store::{parse_log, Version};
use crate::Error;

/// `bytes` single-quoted for `sh` (`'` as `'\''`); names never hold NUL.
pub fn quote(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.push(b'\'');
    for &b in bytes {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// `ab/cdef…` for an object name, if it is one (64 hex digits).
pub fn object_path(sha: &str) -> Option<String> {
    if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some(format!("{}/{}", sha.get(..2)?, sha.get(2..)?))
}

/// A script that prints the store `$V`'s log (base64, one line, empty if none), then
/// with `objects` the name of each object (`./ab/cdef…`, one a line).
pub fn state_script(objects: bool) -> String {
    let mut s = String::from(
        "if [ -f \"$V/log\" ]; then base64 <\"$V/log\" | tr -d '\\n' || exit 70; fi; echo\n",
    );
    if objects {
        s.push_str(
            "if [ -d \"$V/objects\" ]; then (cd -- \"$V/objects\" && find . -mindepth 2 -maxdepth 2 -type f) || exit 70; fi\n",
        );
    }
    s
}

/// What [`state_script`] printed: the versions (oldest first) and the objects.
pub fn parse_state(text: &str, name: &str) -> Result<(Vec<Version>, HashSet<String>), Error> {
    use base64::Engine as _;
    let mut lines = text.lines();
    let log = lines.next().unwrap_or_default().trim();
    let log = base64::engine::general_purpose::STANDARD
        .decode(log)
        .map_err(|e| Error::Corrupt {
            what: format!("{name}/log as the host sent it: {e}"),
        })?;
    let (versions, _) = parse_log(&log, name)?;
    let objects = lines
        .filter_map(|l| {
            let sha: String = l.trim().trim_start_matches("./").replace('/', "");
            object_path(&sha).map(|_| sha)
        })
        .collect();
    Ok((versions, objects))
}

/// Makes an empty file in the scratch store's `objects/` for each of the host's
/// objects, so that the scratch store stores only what the host lacks. `store` is the
/// scratch store directory.
pub fn placeholders(store: &impl AsFd, objects: &HashSet<String>) -> Result<(), Error> {
    let dir_err = |e| Error::fs("make", b"objects", e);
    match fs::make_dir(store, b"objects", 0o700) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(dir_err(e)),
    }
    let objs = fs::open_dir(store, b"objects").map_err(dir_err)?;
    for sha in objects {
        let Some((a, b)) = object_path(sha)
            .as_deref()
            .and_then(|p| p.split_once('/').map(|(a, b)| (a.to_owned(), b.to_owned())))
        else {
            continue;
        };
        match fs::make_dir(&objs, a.as_bytes(), 0o700) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(Error::fs("make", a.as_bytes(), e)),
        }
        let sub =
            fs::open_dir(&objs, a.as_bytes()).map_err(|e| Error::fs("open", a.as_bytes(), e))?;
        let (temp, file) =
            fs::temp_file(&sub, "placeholder").map_err(|e| Error::fs("make", b"objects", e))?;
        drop(file);
        fs::rename(&sub, &temp, &sub, b.as_bytes())
            .map_err(|e| Error::fs("make", sha.as_bytes(), e))?;
    }
    Ok(())
}

/// The objects a scratch store holds that the host lacks: every object not in
/// `host` (the placeholders stand for those), as `ab/cdef…` paths.
pub fn new_objects(store: &impl AsFd, host: &HashSet<String>) -> Result<Vec<String>, Error> {
    let objs = fs::open_dir(store, b"objects").map_err(|e| Error::fs("open", b"objects", e))?;
    let mut out = Vec::new();
    for a in fs::list(&objs).map_err(|e| Error::fs("list", b"objects", e))? {
        let Ok(sub) = fs::open_dir(&objs, &a) else {
            continue;
        };
        for b in fs::list(&sub).map_err(|e| Error::fs("list", &a, e))? {
            let sha = format!(
                "{}{}",
                String::from_utf8_lossy(&a),
                String::from_utf8_lossy(&b)
            );
            if let Some(path) = object_path(&sha).filter(|_| !host.contains(&sha)) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A script that records a version on the host, run with `$V` = the NodeApp's store
/// and `$U` = where the caller uploaded `objects` (`objects/ab/cdef…` below it; may be
/// unset when there are none). Under the NodeApp's lock (the agents' `flock` on
/// `$V/lock`): the objects renamed into place (an object that exists is whole), the
/// file system synced, a line cut by a crash cut off, then `line` appended and synced
/// — only if the log's last version is still `previous` (else exit 75, nothing
/// appended), so two callers cannot fork the history.
pub fn append_script(previous: &str, line: &[u8], objects: &[String]) -> Vec<u8> {
    let mut s = String::from(
        "mkdir -p -- \"$V/objects\" && cd -- \"$V\" || exit 70\n\
         exec 9>>lock || exit 70\n\
         if command -v flock >/dev/null 2>&1; then flock 9 || exit 70; fi\n",
    );
    for o in objects {
        // object_path's form: hex and one '/', nothing a shell reads.
        if let Some((a, _)) = o.split_once('/') {
            let _ = writeln!(
                s,
                "mkdir -p objects/{a} && {{ [ -f objects/{o} ] || mv -f -- \"$U/objects/{o}\" objects/{o}; }} || exit 70"
            );
        }
    }
    s.push_str(
        "if [ -n \"${U:-}\" ]; then rm -rf -- \"$U\"; fi\n\
         sync -f . 2>/dev/null || sync\n\
         n=0; if [ -f log ]; then n=$(wc -l <log) || exit 70; fi\n\
         last=; if [ \"$n\" -gt 0 ]; then last=$(head -n \"$n\" log | sed -n 's/^{\"version\":\"\\([0-9a-f]*\\)\".*/\\1/p' | tail -n 1); fi\n",
    );
    let _ = writeln!(
        s,
        "if [ \"$last\" != '{}' ]; then echo \"the NodeApp's history changed meanwhile (its last version is ${{last:-none}}); try again\" >&2; exit 75; fi",
        previous.replace('\'', "")
    );
    s.push_str(
        "if [ -f log ] && [ -n \"$(tail -c 1 log)\" ]; then head -n \"$n\" log >log.tmp && mv -f log.tmp log || exit 70; fi\n",
    );
    let mut out = s.into_bytes();
    out.extend_from_slice(b"printf '%s\\n' ");
    out.extend_from_slice(&quote(line.strip_suffix(b"\n").unwrap_or(line)));
    out.extend_from_slice(b" >>log || exit 70\nsync log 2>/dev/null || sync\n");
    out
}

/// One step of a reset script: what it does (setting `u<N>` flags as it changes
/// things) and how to undo it (guarded by those flags).
struct Step {
    run: Vec<u8>,
    undo: Vec<u8>,
}

impl Step {
    /// The step, run only if `path`'s parents are still real directories
    /// ([`parents_real`]).
    fn beneath(self, path: &[u8]) -> Step {
        Step {
            run: cat(&[&parents_real(path), b"{ ", &self.run, b"; }"]),
            undo: self.undo,
        }
    }
}

fn at(path: &[u8]) -> Vec<u8> {
    let mut p = b"\"$D\"/".to_vec();
    p.extend_from_slice(&quote(path));
    p
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// `realdir "$D"/'a' && realdir "$D"/'a/b' && ` for `a/b/c`: every parent of `path`
/// still a directory and not a symbolic link when its step runs. The walk the script
/// was made from saw them so, but the host's tree may have changed since; a parent
/// swapped for a link would make `mv`/`rm` act outside the NodeApp.
fn parents_real(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &b) in path.iter().enumerate() {
        if b == b'/' && i > 0 {
            out.extend_from_slice(b"realdir ");
            out.extend_from_slice(&at(path.get(..i).unwrap_or_default()));
            out.extend_from_slice(b" && ");
        }
    }
    out
}

/// A script that makes the NodeApp directory `$D` match `target` from the objects
/// under `$O`, given its walk `current` and the target's `.gitignore` rules: the same
/// decisions as [`crate::restore::restore`] makes on an agent (what the target lacks
/// is removed, deepest first, unless the target ignores it; a directory still holding
/// ignored files stays; the target's directories made; the differing files and links
/// staged, then renamed into place). Each entry it replaces or removes is moved into
/// the staging directory first; any failure puts everything back and exits 73 with
/// the reason on stderr; a missing object exits 71 before anything is touched.
pub fn reset_script(
    current: &Manifest,
    target: &Manifest,
    rules: &Rules,
) -> Result<Vec<u8>, Error> {
    let mut s: Vec<u8> = b"S=\"$D/.deploy-tmp.reset.$$\"\n\
        realdir() { [ -d \"$1\" ] && ! [ -L \"$1\" ] || { echo \"$1 is no longer a directory\" >&2; false; }; }\n\
        rm -rf -- \"$S\"; mkdir -m 700 -- \"$S\" \"$S/n\" \"$S/o\" || exit 70\n"
        .to_vec();
    // Every object there before anything is touched.
    for e in &target.entries {
        if let Entry::File { path, sha256, .. } = e {
            let o = object_path(sha256).ok_or_else(|| Error::Corrupt {
                what: format!("object name {sha256:?}"),
            })?;
            let _ = path;
            s.extend_from_slice(
                format!("[ -f \"$O/{o}\" ] || {{ echo 'object {sha256} is missing on the host' >&2; rm -rf -- \"$S\"; exit 71; }}\n")
                    .as_bytes(),
            );
        }
    }
    // Stage what differs.
    let mut staged: Vec<(usize, &Entry)> = Vec::new();
    for (i, e) in target.entries.iter().enumerate() {
        if current.get(e.path()) == Some(e) {
            continue;
        }
        let n = format!("\"$S/n/{i}\"");
        let line = match e {
            Entry::File { sha256, mode, .. } => {
                let o = object_path(sha256).unwrap_or_default();
                format!("cp -- \"$O/{o}\" {n} && chmod {:o} {n}", mode & 0o7777).into_bytes()
            }
            Entry::Symlink { target, .. } => {
                cat(&[b"ln -s -- ", &quote(target.as_bytes()), b" ", n.as_bytes()])
            }
            Entry::Dir { .. } => continue,
        };
        s.extend_from_slice(&line);
        s.extend_from_slice(b" || { echo 'cannot stage ");
        s.extend_from_slice(&quote_msg(e.path()));
        s.extend_from_slice(b"' >&2; rm -rf -- \"$S\"; exit 72; }\n");
        staged.push((i, e));
    }
    let mut steps: Vec<Step> = Vec::new();
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
        let k = steps.len();
        let p = at(path);
        let step = match e {
            Entry::Dir { mode, .. } => {
                let busy: &[u8] = if wanted.is_none() { b"true" } else { b"false" };
                Step {
                    run: cat(&[
                        b"if rmdir -- ",
                        &p,
                        format!(" 2>/dev/null; then u{k}=1; elif [ -e ").as_bytes(),
                        &p,
                        b" ]; then ",
                        busy,
                        b"; fi",
                    ]),
                    undo: cat(&[
                        format!("[ -z \"${{u{k}:-}}\" ] || {{ mkdir -- ").as_bytes(),
                        &p,
                        format!(" && chmod {:o} ", mode & 0o7777).as_bytes(),
                        &p,
                        b"; }",
                    ]),
                }
            }
            _ => Step {
                run: cat(&[
                    b"if [ -e ",
                    &p,
                    b" ] || [ -L ",
                    &p,
                    b" ]; then mv -f -- ",
                    &p,
                    format!(" \"$S/o/r{k}\" && u{k}=1; fi").as_bytes(),
                ]),
                undo: cat(&[
                    format!("[ -z \"${{u{k}:-}}\" ] || mv -f -- \"$S/o/r{k}\" ").as_bytes(),
                    &p,
                ]),
            },
        };
        steps.push(step.beneath(path));
    }
    // The target's directories, parents first.
    for e in &target.entries {
        let Entry::Dir { path, mode } = e else {
            continue;
        };
        let k = steps.len();
        let p = at(path.as_bytes());
        let mode = mode & 0o7777;
        let chmod = match current.get(path.as_bytes()) {
            Some(Entry::Dir { mode: old, .. }) if old & 0o7777 == mode => b"true".to_vec(),
            Some(Entry::Dir { mode: old, .. }) => cat(&[
                format!("chmod {mode:o} ").as_bytes(),
                &p,
                format!(" && c{k}={:o}", old & 0o7777).as_bytes(),
            ]),
            _ => cat(&[format!("chmod {mode:o} ").as_bytes(), &p]),
        };
        let make = cat(&[
            b"mkdir -- ",
            &p,
            format!(" && m{k}=1 && chmod {mode:o} ").as_bytes(),
            &p,
        ]);
        steps.push(
            Step {
                run: cat(&[
                    b"if [ -d ",
                    &p,
                    b" ] && ! [ -L ",
                    &p,
                    b" ]; then ",
                    &chmod,
                    b"; elif [ -e ",
                    &p,
                    b" ] || [ -L ",
                    &p,
                    b" ]; then mv -f -- ",
                    &p,
                    format!(" \"$S/o/d{k}\" && u{k}=1 && ").as_bytes(),
                    &make,
                    b"; else ",
                    &make,
                    b"; fi",
                ]),
                undo: cat(&[
                    format!("[ -z \"${{m{k}:-}}\" ] || rmdir -- ").as_bytes(),
                    &p,
                    b"; ",
                    format!("[ -z \"${{u{k}:-}}\" ] || mv -f -- \"$S/o/d{k}\" ").as_bytes(),
                    &p,
                    b"; ",
                    format!("[ -z \"${{c{k}:-}}\" ] || chmod \"$c{k}\" ").as_bytes(),
                    &p,
                ]),
            }
            .beneath(path.as_bytes()),
        );
    }
    // The staged files and links.
    for (i, e) in staged {
        let k = steps.len();
        let p = at(e.path());
        steps.push(
            Step {
                run: cat(&[
                    b"{ if [ -e ",
                    &p,
                    b" ] || [ -L ",
                    &p,
                    b" ]; then mv -f -- ",
                    &p,
                    format!(" \"$S/o/s{k}\" && u{k}=1; fi; }} && mv -f -- \"$S/n/{i}\" ")
                        .as_bytes(),
                    &p,
                    format!(" && m{k}=1").as_bytes(),
                ]),
                undo: cat(&[
                    format!("[ -z \"${{m{k}:-}}\" ] || rm -rf -- ").as_bytes(),
                    &p,
                    b"; ",
                    format!("[ -z \"${{u{k}:-}}\" ] || mv -f -- \"$S/o/s{k}\" ").as_bytes(),
                    &p,
                ]),
            }
            .beneath(e.path()),
        );
    }
    s.extend_from_slice(b"undo() {\n:\n");
    for step in steps.iter().rev() {
        s.extend_from_slice(&step.undo);
        s.extend_from_slice(b"\n");
    }
    s.extend_from_slice(
        b"}\nfail() { echo \"reset failed at $1; the previous tree was put back\" >&2; undo; rm -rf -- \"$S\"; exit 73; }\n",
    );
    for (k, step) in steps.iter().enumerate() {
        s.extend_from_slice(b"{ ");
        s.extend_from_slice(&step.run);
        s.extend_from_slice(format!("; }} || fail 'step {k}'\n").as_bytes());
    }
    s.extend_from_slice(b"rm -rf -- \"$S\"\n");
    Ok(s)
}

/// A path for an error message inside single quotes: its quotes dropped.
fn quote_msg(path: &[u8]) -> Vec<u8> {
    path.iter()
        .copied()
        .filter(|&b| b != b'\'' && b != b'\n')
        .collect()
}
