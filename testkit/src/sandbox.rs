//! Per-test sandboxes and source trees: [`Sandbox`] (a temporary directory with
//! `allowed/`, `outside/` and `state/`), [`make_tree`] / [`make_blob`] (trees with awkward
//! names: `we"ird.txt`, a newline in a name, a subdirectory), [`source_tree`] (the
//! transfer tests' source: that tree and a blob), [`copy_tree`] and [`assert_same_tree`]
//! (a recursive byte comparison).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A test's private temporary directory.
pub struct Sandbox {
    dir: TempDir,
}

impl Default for Sandbox {
    fn default() -> Sandbox {
        Sandbox::new()
    }
}

impl Sandbox {
    /// Creates the directory with `allowed/`, `outside/` and `state/` in it.
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("deploy-test.")
            .tempdir()
            .expect("tempdir");
        for sub in ["allowed", "outside", "state"] {
            std::fs::create_dir(dir.path().join(sub)).expect("mkdir");
        }
        Sandbox { dir }
    }

    /// The sandbox root.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the sandbox.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The one allowed root.
    pub fn allowed(&self) -> PathBuf {
        self.join("allowed")
    }

    /// `allowed/<rel>` as a string, for options and ini values.
    pub fn allowed_str(&self, rel: &str) -> String {
        format!("{}/{rel}", self.allowed().display())
    }
}

/// What [`make_tree`] wrote.
#[derive(Debug, Clone)]
pub struct TreeInfo {
    /// Regular files, relative paths with `/`.
    pub files: Vec<String>,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// The weird names every tree contains.
pub const WEIRD_QUOTE: &str = "we\"ird.txt";
/// A file name with a newline in it.
pub const WEIRD_NEWLINE: &str = "new\nline.txt";

/// Deterministic pseudo-random bytes (xorshift), so trees need no crate and no entropy.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Writes a source tree under `root`: files of sizes 0 to ~120 KB, `sub/` and
/// `sub/deeper/`, `we"ird.txt`, a name with a newline, a backslash and a space.
pub fn make_tree(root: &Path) -> TreeInfo {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..12u64 {
        let size = match i {
            0 => 0,
            1 => 1,
            _ => (i * i * 997) as usize,
        };
        files.insert(format!("file{i:03}.bin"), noise(i + 1, size));
    }
    for i in 1..=5 {
        files.insert(format!("sub/s{i}.conf"), format!("sub {i}\n").into_bytes());
        files.insert(
            format!("sub/deeper/d{i}"),
            format!("deep {i}\n").into_bytes(),
        );
    }
    files.insert(WEIRD_QUOTE.into(), b"weird \"quoted\" name\n".to_vec());
    files.insert(WEIRD_NEWLINE.into(), b"a newline in my name\n".to_vec());
    files.insert("back\\slash and space.txt".into(), b"\\\n".to_vec());
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir tree");
    std::fs::create_dir_all(root.join("empty-dir")).expect("mkdir tree");
    let mut bytes = 0;
    for (name, content) in &files {
        std::fs::write(root.join(name), content).expect("write tree file");
        bytes += content.len() as u64;
    }
    TreeInfo {
        files: files.into_keys().collect(),
        bytes,
    }
}

/// Writes one file of `len` pseudo-random bytes at `path` (creating its directory).
pub fn make_blob(path: &Path, len: usize) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, noise(len as u64, len)).expect("write blob");
}

/// The source tree of the transfer tests: [`make_tree`] at `<sb>/source`, plus `blob.bin`
/// of `blob` pseudo-random bytes when `blob` is not 0; its path.
pub fn source_tree(sb: &Sandbox, blob: usize) -> PathBuf {
    let source = sb.join("source");
    make_tree(&source);
    if blob > 0 {
        make_blob(&source.join("blob.bin"), blob);
    }
    source
}

/// Copies the directory `from` to `to` (created), recursively: directories and regular
/// files (contents only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read_dir {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("dir entry");
        let dest = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// Asserts that `got` has exactly the entries of `want`, recursively: same names, same
/// kinds, same file contents.
pub fn assert_same_tree(want: &Path, got: &Path) {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Option<Vec<u8>>>) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", root.join(rel).display()))
            .map(|e| e.expect("dir entry"))
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let rel = rel.join(entry.file_name());
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                out.insert(rel.clone(), None);
                walk(root, &rel, out);
            } else {
                assert!(kind.is_file(), "{} is not a regular file", rel.display());
                out.insert(
                    rel.clone(),
                    Some(std::fs::read(root.join(&rel)).expect("read")),
                );
            }
        }
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    walk(want, Path::new(""), &mut a);
    walk(got, Path::new(""), &mut b);
    let names_a: Vec<_> = a.keys().collect();
    let names_b: Vec<_> = b.keys().collect();
    assert_eq!(
        names_a,
        names_b,
        "{} and {} differ in their entries",
        want.display(),
        got.display()
    );
    for (name, content) in &a {
        assert!(
            content == &b[name],
            "{} differs between {} and {}",
            name.display(),
            want.display(),
            got.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_tree_has_the_blob_only_when_asked() {
        let sb = Sandbox::new();
        let source = source_tree(&sb, 0);
        assert!(!source.join("blob.bin").exists());
        let sb = Sandbox::new();
        let source = source_tree(&sb, 1000);
        assert_eq!(std::fs::read(source.join("blob.bin")).unwrap().len(), 1000);
        assert!(source.join(WEIRD_NEWLINE).exists());
    }

    #[test]
    fn copy_tree_copies_every_file_and_directory() {
        let sb = Sandbox::new();
        let source = source_tree(&sb, 100);
        let copy = sb.join("copy");
        copy_tree(&source, &copy);
        assert_same_tree(&source, &copy);
    }
}
