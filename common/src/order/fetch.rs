//! The `fetch` order (Octopoda's `file download`): a file or directory of a node,
//! streamed back to the caller as one tar archive.
//!
//! ```text
//! request  {"order":"fetch","options":"@log/error.log"}      (or an absolute path)
//! events   {"kind":"data","data":"<base64 of the next piece of the tar, ≤ 64 KiB>"} …
//! reply    {"return":"true","path":"/var/log/deploy/error.log","name":"error.log",
//!           "files":"1","bytes":"20480","skipped":"0"}
//! ```
//!
//! The archive holds one top entry, the path's last component (`name`), and for a
//! directory everything below it; the caller extracts it into `DIR/<host>/` with the
//! confined extractor. The reply comes after the last data event; a reply other than
//! 200 means the archive is incomplete and must be discarded.
//!
//! On the node: the path's variables are expanded ([`expand`]), then it is resolved
//! canonically (symbolic links followed) and must lie under `[allow::paths]`, as the
//! rsync orders' targets; only with `allow_fetch = on`. Symbolic links inside a fetched
//! directory travel as links, never followed; a link whose target would leave the
//! fetched tree (absolute, or climbing above it) is left out and counted in `skipped`.
//!
//! Variables, Octopoda's: on an agent with a `[scenarios] workspace`, the directories
//! its scenario scripts see (`@root` = `OCTOPODA_ROOT`, `@workspace`, `@fstore`, `@log`);
//! on one without, `@log` is the directory of its error log and `@root` is `/root`
//! (Octopoda's default). A variable the node does not have is refused with 400, naming
//! it.

use std::path::{Component, Path};

/// Why a path cannot be fetched as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// No path.
    #[error("fetch needs a path (absolute, or starting with @workspace, @fstore, @log or @root)")]
    Empty,
    /// A variable this node does not define.
    #[error("fetch {path:?}: this node has no {var} ({why})")]
    Undefined {
        /// The path as given.
        path: String,
        /// The variable.
        var: String,
        /// Where it would come from.
        why: &'static str,
    },
    /// Neither absolute nor a variable.
    #[error("fetch {0:?}: expected an absolute path or one starting with @workspace, @fstore, @log or @root")]
    Relative(String),
}

/// The variables a path may start with, and where each comes from (for errors).
pub const VARIABLES: [(&str, &str); 4] = [
    ("@workspace", "[scenarios] workspace"),
    ("@fstore", "[scenarios] fstore"),
    ("@log", "[server] log_error_path"),
    ("@root", "/root"),
];

/// Expands a leading variable of `path` with `lookup` (a variable's directory, if the
/// node has it): `@log/error.log` → `/var/log/deploy/error.log`. A path without one must
/// be absolute.
pub fn expand(path: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, PathError> {
    let path = path.trim();
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if let Some(rest) = path.strip_prefix('@') {
        let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let var = format!("@{name}");
        let why = VARIABLES
            .iter()
            .find(|(v, _)| *v == var)
            .map(|(_, why)| *why)
            .unwrap_or("not a variable");
        let Some(dir) = lookup(&var) else {
            return Err(PathError::Undefined {
                path: path.to_owned(),
                var,
                why,
            });
        };
        let dir = dir.trim_end_matches('/');
        return Ok(match tail.is_empty() {
            true => dir.to_owned(),
            false => format!("{dir}/{tail}"),
        });
    }
    if !Path::new(path).is_absolute() {
        return Err(PathError::Relative(path.to_owned()));
    }
    Ok(path.to_owned())
}

/// Whether a symbolic link named `name` (in the archive, `/`-separated, its first
/// component the fetched tree's top) pointing at `target` stays inside that tree:
/// relative, and never climbing above the top entry.
pub fn link_stays_inside(name: &str, target: &str) -> bool {
    if target.is_empty() || Path::new(target).is_absolute() {
        return false;
    }
    // Depth of the link's directory below the top entry.
    let mut depth: i64 = name.split('/').filter(|c| !c.is_empty()).count() as i64 - 2;
    if depth < 0 {
        // The top entry itself is a link: nothing of the tree to point into.
        return false;
    }
    for component in Path::new(target).components() {
        match component {
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The directory a host's files go to under the caller's `DIR`: the host as written,
/// made one harmless path component (`ssh://root@web1:22` → `root@web1:22`).
pub fn dir_for_host(host: &str) -> String {
    let host = host.strip_prefix("ssh://").unwrap_or(host);
    let name: String = host
        .chars()
        .map(|c| match c {
            '/' | '\\' | '\0' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    match name.as_str() {
        "" | "." | ".." => format!("_{name}"),
        _ if name.starts_with('.') => format!("_{name}"),
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables() {
        let lookup = |v: &str| (v == "@log").then(|| "/var/log/deploy/".to_owned());
        assert_eq!(
            expand("@log/error.log", lookup).unwrap(),
            "/var/log/deploy/error.log"
        );
        assert_eq!(expand("@log", lookup).unwrap(), "/var/log/deploy");
        assert_eq!(expand("/etc/x", lookup).unwrap(), "/etc/x");
        assert!(matches!(expand("x/y", lookup), Err(PathError::Relative(_))));
        assert_eq!(expand(" ", lookup), Err(PathError::Empty));
        let e = expand("@workspace/a@s", lookup).unwrap_err().to_string();
        assert!(
            e.contains("@workspace") && e.contains("[scenarios] workspace"),
            "{e}"
        );
    }

    #[test]
    fn links() {
        assert!(link_stays_inside("top/a/link", "../b"));
        assert!(link_stays_inside("top/link", "a/b"));
        assert!(!link_stays_inside("top/link", "../x"));
        assert!(!link_stays_inside("top/a/link", "../../x"));
        assert!(!link_stays_inside("top/link", "/etc/passwd"));
        assert!(!link_stays_inside("top", "a"));
        assert!(link_stays_inside("top/a/link", "./../c/../d"));
    }

    #[test]
    fn host_dirs() {
        assert_eq!(dir_for_host("127.0.0.2:3440"), "127.0.0.2:3440");
        assert_eq!(dir_for_host("ssh://root@web1:22"), "root@web1:22");
        assert_eq!(dir_for_host("a/b"), "a_b");
        assert_eq!(dir_for_host(".."), "_..");
        assert_eq!(dir_for_host(""), "_");
    }
}
