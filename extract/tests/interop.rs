//! Archives made by the real GNU tar (its default GNU format and `--format=posix`) and
//! by Python's `tarfile` (pax) extract to the same tree as the source.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use deploy_extract::{extract, Options, Root};
use std::path::Path;
use std::process::Command;

/// A tree with a long name (> 100 bytes), a non-UTF-8 name, links, modes, an empty
/// directory.
fn source(dir: &Path) {
    let deep = dir.join(format!("{}/{}", "d".repeat(80), "e".repeat(60)));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f".repeat(110)), vec![3u8; 100_000]).unwrap();
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    std::fs::write(
        dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
        b"latin-1",
    )
    .unwrap();
    std::fs::write(dir.join("run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::symlink("run.sh", dir.join("link")).unwrap();
    std::os::unix::fs::symlink(format!("../../{}", "f".repeat(110)), deep.join("up")).unwrap_or(());
}

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;

/// `diff -r --no-dereference` of two trees.
fn same(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn check(archive: &[u8], src: &Path) {
    let t = tempfile::tempdir().unwrap();
    let s = extract(archive, &Root::open(t.path()).unwrap(), &Options::default()).unwrap();
    assert!(s.files >= 3, "{s:?}");
    same(src, t.path());
    let mode = std::fs::metadata(t.path().join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
}

#[test]
fn gnu_tar_formats() {
    let src = tempfile::tempdir().unwrap();
    source(src.path());
    for format in ["gnu", "posix", "ustar"] {
        let out = Command::new("tar")
            .args(["-c", "-f", "-", &format!("--format={format}"), "-C"])
            .arg(src.path())
            .arg(".")
            .output()
            .unwrap();
        if format == "ustar" {
            // ustar cannot hold the long name: GNU tar says so and leaves it out.
            assert!(!out.status.success());
            continue;
        }
        assert!(
            out.status.success(),
            "{format}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        check(&out.stdout, src.path());
    }
}

#[test]
fn python_tarfile() {
    let src = tempfile::tempdir().unwrap();
    source(src.path());
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, tarfile, os\n\
             os.chdir(sys.argv[1])\n\
             with tarfile.open(fileobj=sys.stdout.buffer, mode='w|', format=tarfile.PAX_FORMAT) as t:\n    t.add('.')",
        ])
        .arg(src.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    check(&out.stdout, src.path());
}
