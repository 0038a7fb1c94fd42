//! Unit tests: archives built byte by byte (so hostile ones can be), extracted into
//! temporary directories, and what is on disk afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

/// A header block: `magic` is `b"ustar\x0000"` (POSIX) or `b"ustar  \x00"` (old GNU).
pub(crate) fn header(
    name: &[u8],
    typeflag: u8,
    size: u64,
    mode: u32,
    link: &[u8],
    magic: &[u8; 8],
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len().min(100)].copy_from_slice(&link[..link.len().min(100)]);
    h[257..265].copy_from_slice(magic);
    seal(&mut h);
    h
}

/// Recomputes the checksum.
pub(crate) fn seal(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

const USTAR: &[u8; 8] = b"ustar\x0000";
const GNU: &[u8; 8] = b"ustar  \x00";

/// An archive under construction.
#[derive(Default)]
pub(crate) struct Tar(pub Vec<u8>);

impl Tar {
    pub fn raw(mut self, block: &[u8]) -> Tar {
        self.0.extend_from_slice(block);
        let pad = (512 - self.0.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    pub fn file(self, name: &[u8], data: &[u8]) -> Tar {
        self.raw(&header(name, b'0', data.len() as u64, 0o644, b"", USTAR))
            .raw(data)
    }
    pub fn file_mode(self, name: &[u8], data: &[u8], mode: u32) -> Tar {
        self.raw(&header(name, b'0', data.len() as u64, mode, b"", USTAR))
            .raw(data)
    }
    pub fn dir(self, name: &[u8]) -> Tar {
        self.raw(&header(name, b'5', 0, 0o755, b"", USTAR))
    }
    pub fn link(self, name: &[u8], target: &[u8]) -> Tar {
        self.raw(&header(name, b'2', 0, 0o777, target, USTAR))
    }
    pub fn typed(self, name: &[u8], typeflag: u8) -> Tar {
        self.raw(&header(name, typeflag, 0, 0o644, b"", USTAR))
    }
    pub fn pax(self, records: &[(&str, &[u8])]) -> Tar {
        let mut body = Vec::new();
        for (k, v) in records {
            let inner = 1 + k.len() + 1 + v.len() + 1;
            let mut len = inner + 1;
            while format!("{len}").len() + inner != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.raw(&header(
            b"PaxHeader",
            b'x',
            body.len() as u64,
            0o644,
            b"",
            USTAR,
        ))
        .raw(&body)
    }
    pub fn gnu_long(self, kind: u8, name: &[u8]) -> Tar {
        let mut body = name.to_vec();
        body.push(0);
        self.raw(&header(
            b"././@LongLink",
            kind,
            body.len() as u64,
            0o644,
            b"",
            GNU,
        ))
        .raw(&body)
    }
    pub fn end(self) -> Vec<u8> {
        let mut v = self.0;
        v.extend_from_slice(&[0u8; 1024]);
        v
    }
}

/// A root `r` and a sibling `outside` in a temporary directory.
fn dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("r");
    let outside = t.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    (t, root, outside)
}

fn run(root: &Path, bytes: &[u8]) -> Result<Summary, Error> {
    // In odd pieces, as a network delivers them.
    struct Odd<'a>(&'a [u8]);
    impl Read for Odd<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(77);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    extract(Odd(bytes), &Root::open(root).unwrap(), &Options::default())
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// Names in `dir`, recursively, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn files_dirs_links_and_modes() {
    let (_t, root, _) = dirs();
    let big = vec![7u8; 70_000];
    let tar = Tar::default()
        .dir(b"./")
        .dir(b"app")
        .file(b"app/f", &big)
        .file_mode(b"app/run.sh", b"#!/bin/sh\n", 0o6777)
        .link(b"app/l", b"f")
        .link(b"app/sub/up", b"../f")
        .file(b"deep/er/x", b"x")
        .end();
    let s = run(&root, &tar).unwrap();
    assert_eq!((s.files, s.dirs, s.symlinks, s.bytes), (3, 1, 2, 70_011));
    assert_eq!(std::fs::read(root.join("app/f")).unwrap(), big);
    assert_eq!(std::fs::read(root.join("app/l")).unwrap(), big);
    assert_eq!(std::fs::read(root.join("app/sub/up")).unwrap(), big);
    let mode = std::fs::metadata(root.join("app/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "setuid/setgid/group-write dropped");
    assert_eq!(
        std::fs::metadata(root.join("app/f")).unwrap().mtime(),
        0o14000000000
    );
    assert_eq!(
        listing(&root),
        [
            "app",
            "app/f",
            "app/l",
            "app/run.sh",
            "app/sub",
            "app/sub/up",
            "deep",
            "deep/er",
            "deep/er/x"
        ]
    );
}

#[test]
fn gnu_and_pax_long_names() {
    let (_t, root, _) = dirs();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(120));
    let tar = Tar::default()
        .gnu_long(b'L', long.as_bytes())
        .raw(&header(b"ignored", b'0', 2, 0o644, b"", GNU))
        .raw(b"hi")
        .pax(&[
            ("path", b"p/\xff\xfe"),
            ("mtime", b"12.5"),
            ("uname", b"x"),
            ("SCHILY.xattr.user.a", b"b"),
        ])
        .file(b"short", b"pax")
        .end();
    run(&root, &tar).unwrap();
    assert_eq!(std::fs::read(root.join(&long)).unwrap(), b"hi");
    let odd = root.join(std::ffi::OsStr::from_bytes(b"p/\xff\xfe"));
    assert_eq!(std::fs::read(&odd).unwrap(), b"pax");
    assert_eq!(std::fs::metadata(&odd).unwrap().mtime(), 12);
    assert!(!root.join("short").exists());
}

use std::os::unix::ffi::OsStrExt as _;

/// The review's four archives: each shows a checker one name and GNU tar another.
/// Here the one parser refuses them, and nothing lands outside the root.
#[test]
fn the_reviews_parser_differentials_are_refused() {
    // A pax GNU.sparse.name record (GNU tar extracts under that name).
    let sparse = Tar::default()
        .pax(&[("GNU.sparse.name", b"esc/pwned")])
        .file(b"innocent", b"x")
        .end();
    // A pax path followed by a GNU long name (tar takes the pax path).
    let both = Tar::default()
        .pax(&[("path", b"esc/pwned")])
        .gnu_long(b'L', b"innocent")
        .file(b"innocent", b"x")
        .end();
    // Old-GNU magic with bytes at offset 345 (where ustar has a prefix).
    let mut h = header(b"pwned", b'0', 1, 0o644, b"", GNU);
    h[345..348].copy_from_slice(b"esc");
    seal(&mut h);
    let gnu_prefix = Tar::default().link(b"esc", b"sub").raw(&h).raw(b"x").end();
    for (what, tar) in [("sparse", sparse), ("pax+L", both)] {
        let (_t, root, outside) = dirs();
        std::os::unix::fs::symlink(&outside, root.join("esc")).unwrap();
        let e = run(&root, &tar).unwrap_err();
        assert!(
            matches!(e, Error::Format { .. } | Error::Refused { .. }),
            "{what}: {e}"
        );
        assert!(empty(&outside), "{what}");
        assert!(!root.join("innocent").exists(), "{what}");
    }
    // Old GNU: no prefix is read, so the name is `pwned`, under the root.
    let (_t, root, outside) = dirs();
    run(&root, &gnu_prefix).unwrap();
    assert!(root.join("pwned").is_file());
    assert!(empty(&outside));
}

/// A link planted by an earlier upload (or by anyone) is never followed: the kernel
/// refuses the path, whatever name the archive uses.
#[test]
fn links_on_disk_are_never_followed() {
    let (_t, root, outside) = dirs();
    std::os::unix::fs::symlink(&outside, root.join("esc")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("bin")).unwrap();
    for name in [&b"esc/pwned"[..], b"esc/a/b/pwned", b"bin/pwned"] {
        for tar in [
            Tar::default().file(name, b"x").end(),
            Tar::default().dir(name).end(),
            Tar::default().link(name, b".").end(),
        ] {
            let e = run(&root, &tar).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{e}");
        }
    }
    // A directory entry at the link's own name does not follow it either.
    let e = run(&root, &Tar::default().dir(b"esc").end()).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    // A file at the link's own name replaces the link.
    run(&root, &Tar::default().file(b"esc", b"now a file").end()).unwrap();
    assert_eq!(std::fs::read(root.join("esc")).unwrap(), b"now a file");
    assert!(empty(&outside));
}

#[test]
fn links_of_the_archive_are_not_followed_either() {
    let (_t, root, outside) = dirs();
    std::fs::create_dir(root.join("sub")).unwrap();
    let tar = Tar::default().link(b"l", b"sub").file(b"l/x", b"x").end();
    let e = run(&root, &tar).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(empty(&root.join("sub")));
    assert!(empty(&outside));
}

#[test]
fn escapes_and_odd_types_are_refused() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Tar::default().file(b"../x", b"").end(), "`..`"),
        (Tar::default().file(b"a/../../x", b"").end(), "`..`"),
        (Tar::default().file(b"/etc/x", b"").end(), "absolute"),
        (Tar::default().file(b".", b"").end(), "root itself"),
        (Tar::default().link(b"l", b"/etc").end(), "absolute"),
        (Tar::default().link(b"l", b"../x").end(), "outside"),
        (Tar::default().link(b"a/l", b"../../x").end(), "outside"),
        (
            Tar::default().link(b"a/l", b"x/../..").end(),
            "after a name",
        ),
        (
            Tar::default().link(b"l", b".").link(b"m", b"l/..").end(),
            "after a name",
        ),
        (Tar::default().typed(b"h", b'1').end(), "hard links"),
        (Tar::default().typed(b"d", b'3').end(), "device"),
        (Tar::default().typed(b"d", b'4').end(), "device"),
        (Tar::default().typed(b"p", b'6').end(), "FIFO"),
        (Tar::default().typed(b"g", b'g').end(), "global"),
        (Tar::default().typed(b"s", b'S').end(), "sparse"),
        (Tar::default().typed(b"v", b'V').end(), "volume"),
        (Tar::default().typed(b"q", b'Q').end(), "entry type"),
        (
            Tar::default()
                .pax(&[("path", b"a")])
                .pax(&[("path", b"b")])
                .file(b"c", b"")
                .end(),
            "two pax",
        ),
        (
            Tar::default()
                .gnu_long(b'L', b"a")
                .gnu_long(b'L', b"b")
                .file(b"c", b"")
                .end(),
            "two names",
        ),
        (
            Tar::default()
                .pax(&[("frobnicate", b"1")])
                .file(b"c", b"")
                .end(),
            "not understood",
        ),
        (Tar::default().pax(&[("path", b"a")]).end(), "not followed"),
        (
            Tar::default().file(b"a", b"x").raw(b"junk").end(),
            "checksum",
        ),
    ];
    for (tar, why) in cases {
        let (_t, root, outside) = dirs();
        let e = run(&root, &tar).unwrap_err();
        assert!(e.to_string().contains(why), "{e} (wanted {why:?})");
        assert!(empty(&outside));
    }
    // v7 headers (no magic) are not read.
    let (_t, root, _) = dirs();
    let mut h = header(b"x", b'0', 0, 0o644, b"", USTAR);
    h[257..265].copy_from_slice(&[0; 8]);
    seal(&mut h);
    let e = run(&root, &Tar::default().raw(&h).end()).unwrap_err();
    assert!(e.to_string().contains("not a ustar"), "{e}");
    // Data after the end blocks.
    let mut tar = Tar::default().file(b"a", b"x").end();
    tar.extend_from_slice(b"more");
    assert!(run(&root, &tar)
        .unwrap_err()
        .to_string()
        .contains("after the end"));
}

/// A stream cut anywhere leaves no file under its final name but the complete ones.
#[test]
fn a_cut_stream_leaves_no_partial_file() {
    let data = vec![1u8; 5000];
    let tar = Tar::default()
        .file(b"first", b"1")
        .file(b"second", &data)
        .end();
    for cut in [100, 512, 1024, 1100, 1536 + 4000, 1536 + 5000 - 1] {
        let (_t, root, _) = dirs();
        let e = run(&root, &tar[..cut]).unwrap_err();
        assert!(matches!(e, Error::Truncated { .. }), "{cut}: {e}");
        let names = listing(&root);
        assert!(names.is_empty() || names == ["first"], "{cut}: {names:?}");
        if !names.is_empty() {
            assert_eq!(std::fs::read(root.join("first")).unwrap(), b"1");
        }
    }
    // Cut before the end blocks: the files are complete and stay, the archive is
    // still reported truncated.
    let (_t, root, _) = dirs();
    let e = run(&root, &tar[..tar.len() - 1024]).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
    assert_eq!(listing(&root), ["first", "second"]);
}

#[test]
fn create_beneath_refuses_links() {
    let (_t, root, outside) = dirs();
    std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
    let e = Root::create_beneath(&root, Path::new("l/x")).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(Root::create_beneath(&root, Path::new("../x")).is_err());
    let made = Root::create_beneath(&root, Path::new("a/b")).unwrap();
    assert!(made.path().ends_with("a/b"));
    assert!(root.join("a/b").is_dir());
    assert!(empty(&outside));
}

#[test]
fn names_are_shown_escaped() {
    assert_eq!(
        Name(b"a\"b\n\xff".to_vec()).to_string(),
        "\"a\\\"b\\u{a}\\xff\""
    );
}

#[test]
fn replaced_files_keep_the_old_contents_until_complete() {
    let (_t, root, _) = dirs();
    std::fs::write(root.join("f"), b"old").unwrap();
    let tar = Tar::default().file(b"f", &[9u8; 3000]).end();
    let _ = run(&root, &tar[..1200]).unwrap_err();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), b"old");
    assert_eq!(listing(&root), ["f"], "the temporary file is removed");
    run(&root, &tar).unwrap();
    assert_eq!(std::fs::read(root.join("f")).unwrap(), vec![9u8; 3000]);
}

/// A reader led through a link is refused: the file opens beneath the root, a link (at
/// the name or on the way) or a climb does not.
#[test]
fn open_file_follows_no_link() {
    let t = tempfile::tempdir().unwrap();
    let root_dir = t.path().join("root");
    std::fs::create_dir_all(root_dir.join("sub")).unwrap();
    std::fs::write(root_dir.join("sub/file"), "inside").unwrap();
    std::fs::write(t.path().join("secret"), "outside").unwrap();
    std::os::unix::fs::symlink(t.path().join("secret"), root_dir.join("link")).unwrap();
    std::os::unix::fs::symlink("sub", root_dir.join("dirlink")).unwrap();
    let root = Root::open(&root_dir).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut root.open_file(Path::new("sub/file")).unwrap(),
        &mut text,
    )
    .unwrap();
    assert_eq!(text, "inside");
    for bad in ["link", "dirlink/file", "../secret", "sub"] {
        assert!(root.open_file(Path::new(bad)).is_err(), "{bad}");
    }
}

/// A FIFO (swapped in for a file after a walk) is refused at once, not opened for
/// reading, which would wait for a writer for ever.
#[test]
fn open_file_refuses_a_fifo_without_waiting() {
    let t = tempfile::tempdir().unwrap();
    nix::unistd::mkfifo(
        &t.path().join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let root = Root::open(t.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(root.open_file(Path::new("fifo")).is_err());
    });
    // A guard against a hang, not a timing assertion: the open returns at once.
    let refused = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("open_file returned");
    assert!(refused);
}

/// `extract_buffered` (file data written from the input's own buffer) makes the same
/// tree, summary and errors as `extract`, whatever the input's piece sizes.
#[test]
fn buffered_extraction_matches_the_plain_one() {
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let full = Tar::default()
        .dir(b"app")
        .file(b"app/f", &big)
        .file_mode(b"app/run.sh", b"#!/bin/sh\n", 0o6777)
        .link(b"app/l", b"f")
        .file(b"deep/er/x", b"x")
        .file(b"empty", b"")
        .end();
    let snapshot = |root: &Path| -> Vec<(String, Vec<u8>, u32)> {
        listing(root)
            .into_iter()
            .map(|n| {
                let p = root.join(&n);
                let meta = std::fs::symlink_metadata(&p).unwrap();
                let data = if meta.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                (n, data, meta.mode())
            })
            .collect()
    };
    // Whole, and cut inside a header, inside file data and before the end blocks.
    for cut in [full.len(), 700, 1024 + 512 + 100_000, full.len() - 1024] {
        let bytes = &full[..cut];
        for piece in [1usize, 77, 512, 4096, 1 << 20] {
            let (_a, plain_root, _) = dirs();
            let (_b, buffered_root, _) = dirs();
            let plain = run(&plain_root, bytes);
            let buffered = extract_buffered(
                std::io::BufReader::with_capacity(piece, bytes),
                &Root::open(&buffered_root).unwrap(),
                &Options::default(),
            );
            match (&plain, &buffered) {
                (Ok(p), Ok(b)) => assert_eq!(p, b, "cut {cut}, pieces of {piece}"),
                (Err(p), Err(b)) => assert_eq!(
                    std::mem::discriminant(p),
                    std::mem::discriminant(b),
                    "cut {cut}, pieces of {piece}: {p} / {b}"
                ),
                _ => panic!("cut {cut}, pieces of {piece}: {plain:?} / {buffered:?}"),
            }
            assert_eq!(
                snapshot(&plain_root),
                snapshot(&buffered_root),
                "cut {cut}, pieces of {piece}"
            );
        }
    }
    let (_t, root, _) = dirs();
    let s = extract_buffered(&full[..], &Root::open(&root).unwrap(), &Options::default()).unwrap();
    assert_eq!((s.files, s.bytes), (4, 200_011));
    assert_eq!(std::fs::read(root.join("app/f")).unwrap(), big);
}
