//! The confined extractor: arbitrary bytes as a tar stream, extracted for real into a
//! temporary root that has a symbolic link to a sibling directory planted in it.
//!
//! Invariants checked:
//! * `extract` never panics, whatever the bytes;
//! * nothing is ever written outside the root: the sibling directory the planted link
//!   points to stays empty, and no entry of the root's parent appears but the root and
//!   the sibling;
//! * no temporary file (`.deploy-tmp.*`) is left behind, on success or on error;
//! * the archive parser alone (no file system) agrees: it refuses exactly when its
//!   entries would be refused before the file system is consulted, and every name it
//!   yields has no empty, `.` or `..` component.

#![no_main]

use std::io::Read;
use std::path::Path;

use deploy_extract::{extract, Archive, Options, Root};
use libfuzzer_sys::fuzz_target;

fn walk(dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        found.push(name);
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), found);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The parser alone.
    let mut archive = Archive::new(data);
    let mut buf = [0u8; 4096];
    while let Ok(Some(entry)) = archive.next_entry() {
        for part in &entry.parts {
            assert!(!part.is_empty() && part != b"." && part != b"..");
            assert!(!part.contains(&b'/') && !part.contains(&0));
        }
        while let Ok(n) = archive.read_data(&mut buf) {
            if n == 0 {
                break;
            }
        }
    }
    // The extraction, for real.
    let Ok(t) = tempfile::tempdir() else { return };
    let root = t.path().join("root");
    let outside = t.path().join("outside");
    if std::fs::create_dir(&root).is_err() || std::fs::create_dir(&outside).is_err() {
        return;
    }
    let _ = std::os::unix::fs::symlink(&outside, root.join("esc"));
    let _ = std::os::unix::fs::symlink("/", root.join("slash"));
    let Ok(opened) = Root::open(&root) else { return };
    let _ = extract(data.chain(&[][..]), &opened, &Options::default());
    assert_eq!(
        std::fs::read_dir(&outside).map(|d| d.count()).unwrap_or(0),
        0,
        "something was written through the planted link"
    );
    let mut top: Vec<String> = std::fs::read_dir(t.path())
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    top.sort();
    assert_eq!(top, ["outside", "root"], "something was written beside the root");
    let mut found = Vec::new();
    walk(&root, &mut found);
    assert!(
        !found.iter().any(|n| n.starts_with(".deploy-tmp.")),
        "a temporary file was left: {found:?}"
    );
});
