//! `.gitignore` rules, as git applies them to a NodeApp directory: each directory's
//! `.gitignore` speaks for the paths below it, a deeper file's decision (ignore or `!`
//! re-include) wins over a shallower one, and an ignored directory is not entered.
//! Patterns are matched by the `ignore` crate's gitignore matcher (ripgrep's); a
//! pattern it cannot parse is skipped, as git skips it.
//!
//! The matcher works on paths; the tree is read through descriptors, so each rule file
//! is anchored at a synthetic absolute path (`/` + its directory) and candidates are
//! given as `/` + their path relative to the NodeApp directory: nothing is looked up
//! on disk by name.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// The `.gitignore` files of one tree.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    /// (directory relative to the tree, `/`-joined, empty for the top; its matcher),
    /// deepest directories last.
    layers: Vec<(Vec<u8>, Gitignore)>,
}

fn anchored(rel: &[u8]) -> PathBuf {
    Path::new("/").join(OsStr::from_bytes(rel))
}

impl Rules {
    /// No rules: nothing ignored.
    pub fn new() -> Rules {
        Rules::default()
    }

    /// Adds the `.gitignore` text found in directory `dir` (relative, `/`-joined).
    pub fn add(&mut self, dir: &[u8], text: &[u8]) {
        let root = anchored(dir);
        let mut builder = GitignoreBuilder::new(&root);
        for line in String::from_utf8_lossy(text).lines() {
            // A bad pattern is skipped (git warns and goes on).
            let _ = builder.add_line(None, line);
        }
        if let Ok(matcher) = builder.build() {
            if !matcher.is_empty() {
                self.layers.push((dir.to_vec(), matcher));
                self.layers.sort_by_key(|(d, _)| d.len());
            }
        }
    }

    /// Whether `path` (relative, `/`-joined) is ignored; `is_dir` says whether it is a
    /// directory (patterns ending in `/` match directories only).
    pub fn ignored(&self, path: &[u8], is_dir: bool) -> bool {
        let full = anchored(path);
        for (dir, matcher) in self.layers.iter().rev() {
            let applies =
                dir.is_empty() || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'));
            if !applies {
                continue;
            }
            let m = matcher.matched(&full, is_dir);
            if m.is_ignore() {
                return true;
            }
            if m.is_whitelist() {
                return false;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeper_files_win_and_dirs_only_patterns() {
        let mut r = Rules::new();
        r.add(b"", b"*.log\nbuild/\n/top.txt\n# comment\n");
        r.add(b"sub", b"!keep.log\nlocal\n");
        assert!(r.ignored(b"a.log", false));
        assert!(r.ignored(b"x/y/a.log", false));
        assert!(!r.ignored(b"sub/keep.log", false));
        assert!(r.ignored(b"sub/other.log", false));
        assert!(r.ignored(b"build", true));
        assert!(
            !r.ignored(b"build", false),
            "build/ matches directories only"
        );
        assert!(r.ignored(b"top.txt", false));
        assert!(!r.ignored(b"x/top.txt", false), "anchored to its directory");
        assert!(r.ignored(b"sub/local", false));
        assert!(!r.ignored(b"local", false), "sub's rules stay in sub");
        assert!(!r.ignored(b"subx/local", false));
        assert!(!r.ignored(b"main.rs", false));
    }
}
