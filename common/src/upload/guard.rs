//! [`Guard`]: reads a tar stream on its way into `tar -x` and refuses it at the first
//! entry that could write outside the extraction root or make something dangerous, so
//! that an agent extracting a caller's archive (often as root) keeps it under the root.
//!
//! ```text
//! accepted   regular files, directories, symbolic links; pax (`x`) and GNU long-name
//!            (`L`, `K`) headers that name them
//! refused    hard links, devices, FIFOs, global pax headers (`g`), anything else;
//!            an absolute name, a `..` component, the root itself (`.`);
//!            a path through a symbolic link: one of this archive, or one already on
//!            disk under the root (GNU tar follows those)
//! ```
//!
//! The guard sees each header before tar does (it is fed first), so a refused entry is
//! never extracted; entries before it may have been. It keeps no more than one header
//! and one pax or long-name record (at most [`MAX_RECORD`] bytes) in memory. The caller
//! runs tar with `--unlink-first` (an existing symbolic link at an entry's own path is
//! replaced, not followed) and without ownership or setuid bits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The largest pax or GNU long-name record accepted.
pub const MAX_RECORD: u64 = 1 << 20;

const BLOCK: usize = 512;

/// Why an archive was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("archive refused at {entry:?}: {reason}")]
pub struct Refused {
    /// The entry's name (as far as it could be read).
    pub entry: String,
    /// Why.
    pub reason: String,
}

/// Where in the stream the guard is.
#[derive(Debug)]
enum State {
    /// Collecting a 512-byte header.
    Header,
    /// Passing `left` bytes of an entry's data (padded).
    Data { left: u64 },
    /// Reading a pax (`x`) or GNU long-name record of `size` bytes, padded to `left`.
    Record {
        kind: u8,
        size: usize,
        left: u64,
        bytes: Vec<u8>,
    },
    /// After the end-of-archive blocks: the rest must be zeros.
    End,
}

/// A tar stream checker for extraction under `root` (see the module docs).
#[derive(Debug)]
pub struct Guard {
    root: PathBuf,
    state: State,
    header: Vec<u8>,
    /// Overrides for the next entry, from a pax or GNU long-name record.
    next_path: Option<String>,
    next_link: Option<String>,
    next_size: Option<u64>,
    /// Symbolic links this archive makes: no later entry may go through them.
    links: HashSet<String>,
    /// Entries accepted so far (files, directories, links).
    entries: usize,
}

impl Guard {
    /// A guard for an extraction under `root` (an existing, canonical directory).
    pub fn new(root: impl Into<PathBuf>) -> Guard {
        Guard {
            root: root.into(),
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            next_path: None,
            next_link: None,
            next_size: None,
            links: HashSet::new(),
            entries: 0,
        }
    }

    /// Entries accepted so far.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Checks the next piece of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refused> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header => {
                    let want = BLOCK - self.header.len();
                    let (head, rest) = bytes.split_at(want.min(bytes.len()));
                    self.header.extend_from_slice(head);
                    bytes = rest;
                    if self.header.len() == BLOCK {
                        let header = std::mem::take(&mut self.header);
                        self.header.reserve(BLOCK);
                        self.state = self.entry(&header)?;
                    }
                }
                State::Data { left } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    *left -= n as u64;
                    bytes = bytes.get(n..).unwrap_or_default();
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Record {
                    kind,
                    size,
                    left,
                    bytes: record,
                } => {
                    let n = (*left).min(bytes.len() as u64) as usize;
                    let (head, rest) = bytes.split_at(n);
                    let room = size.saturating_sub(record.len());
                    record.extend_from_slice(head.get(..room.min(head.len())).unwrap_or_default());
                    *left -= n as u64;
                    bytes = rest;
                    if *left == 0 {
                        let (kind, record) = (*kind, std::mem::take(record));
                        self.state = State::Header;
                        self.record(kind, &record)?;
                    }
                }
                State::End => {
                    if bytes.iter().any(|&b| b != 0) {
                        return Err(refused("", "data after the end of the archive"));
                    }
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    /// Reads one header; returns what follows it.
    fn entry(&mut self, h: &[u8]) -> Result<State, Refused> {
        if h.iter().all(|&b| b == 0) {
            return Ok(State::End);
        }
        let field = |at: usize, len: usize| h.get(at..at + len).unwrap_or_default();
        let stored = checksum(h);
        if octal(field(148, 8)) != Some(stored) {
            return Err(refused("", "bad header checksum"));
        }
        let mut name = text(field(0, 100));
        let prefix = text(field(345, 155));
        if field(257, 5) == b"ustar" && !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        let name = self.next_path.take().unwrap_or(name);
        let link = self
            .next_link
            .take()
            .unwrap_or_else(|| text(field(157, 100)));
        let size = match self.next_size.take() {
            Some(size) => size,
            None => octal(field(124, 12)).ok_or_else(|| refused(&name, "bad size field"))?,
        };
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let typeflag = h.get(156).copied().unwrap_or(0);
        match typeflag {
            b'x' | b'L' | b'K' => {
                if size > MAX_RECORD {
                    return Err(refused(&name, "oversized pax or long-name record"));
                }
                if padded == 0 {
                    return Ok(State::Header);
                }
                Ok(State::Record {
                    kind: typeflag,
                    size: size as usize,
                    left: padded,
                    bytes: Vec::new(),
                })
            }
            b'0' | 0 | b'7' | b'5' | b'2' => {
                let clean = self.check_path(&name, typeflag == b'5')?;
                if typeflag == b'2' {
                    self.links.insert(clean);
                }
                self.entries += 1;
                let data = if matches!(typeflag, b'5' | b'2') {
                    0
                } else {
                    padded
                };
                let _ = link;
                Ok(if data == 0 {
                    State::Header
                } else {
                    State::Data { left: data }
                })
            }
            b'1' => Err(refused(&name, "hard links are not accepted")),
            b'3' | b'4' => Err(refused(&name, "device files are not accepted")),
            b'6' => Err(refused(&name, "FIFOs are not accepted")),
            b'g' => Err(refused(&name, "global pax headers are not accepted")),
            other => Err(refused(
                &name,
                &format!("entry type {:?} is not accepted", char::from(other)),
            )),
        }
    }

    /// Takes a pax or long-name record for the next entry.
    fn record(&mut self, kind: u8, record: &[u8]) -> Result<(), Refused> {
        match kind {
            b'L' => self.next_path = Some(text(record)),
            b'K' => self.next_link = Some(text(record)),
            _ => {
                let mut rest = record;
                while !rest.is_empty() {
                    let space = rest
                        .iter()
                        .position(|&b| b == b' ')
                        .ok_or_else(|| refused("", "bad pax record"))?;
                    let len: usize = std::str::from_utf8(rest.get(..space).unwrap_or_default())
                        .ok()
                        .and_then(|l| l.parse().ok())
                        .filter(|&l| l > space + 1 && l <= rest.len())
                        .ok_or_else(|| refused("", "bad pax record length"))?;
                    let body = rest.get(space + 1..len - 1).unwrap_or_default();
                    let body = String::from_utf8_lossy(body);
                    match body.split_once('=') {
                        Some(("path", value)) => self.next_path = Some(value.to_owned()),
                        Some(("linkpath", value)) => self.next_link = Some(value.to_owned()),
                        Some(("size", value)) => {
                            self.next_size =
                                Some(value.parse().map_err(|_| refused("", "bad pax size"))?)
                        }
                        _ => {}
                    }
                    rest = rest.get(len..).unwrap_or_default();
                }
            }
        }
        Ok(())
    }

    /// The cleaned relative path of an entry, or why it may not be extracted.
    fn check_path(&self, name: &str, is_dir: bool) -> Result<String, Refused> {
        let mut parts: Vec<&str> = Vec::new();
        if name.starts_with('/') {
            return Err(refused(name, "absolute name"));
        }
        for part in name.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(refused(name, "a `..` component")),
                part => parts.push(part),
            }
        }
        if parts.is_empty() {
            return Err(refused(name, "names the extraction root itself"));
        }
        // No component may be a symbolic link: one of this archive, or one on disk.
        let mut so_far = PathBuf::from(&self.root);
        let mut prefix = String::new();
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            so_far.push(part);
            if i == last && !is_dir {
                break;
            }
            if self.links.contains(&prefix) {
                return Err(refused(name, "goes through a symbolic link of the archive"));
            }
            if is_symlink(&so_far) {
                return Err(refused(
                    name,
                    &format!("goes through the symbolic link {}", so_far.display()),
                ));
            }
        }
        Ok(prefix)
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn refused(entry: &str, reason: &str) -> Refused {
    Refused {
        entry: entry.to_owned(),
        reason: reason.to_owned(),
    }
}

/// A NUL-terminated field as text.
fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(field.get(..end).unwrap_or_default()).into_owned()
}

/// An octal field (spaces and NULs around it allowed); `None` for base-256 or garbage.
fn octal(field: &[u8]) -> Option<u64> {
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&digits).ok()?, 8).ok()
}

/// The header's checksum, with its own field counted as spaces.
fn checksum(h: &[u8]) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(b)
            }
        })
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::upload::{tar, Entry, Kind, Manifest};

    fn entry(name: &str, kind: Kind) -> Entry {
        Entry {
            local: PathBuf::from("/dev/null"),
            name: name.to_owned(),
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    /// Headers only (no file data) of `entries`, then the end blocks.
    fn archive(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            out.extend_from_slice(&tar::header(e));
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn check(root: &Path, bytes: &[u8]) -> Result<usize, Refused> {
        let mut guard = Guard::new(root);
        // In odd pieces, as the network delivers them.
        for piece in bytes.chunks(77) {
            guard.feed(piece)?;
        }
        Ok(guard.entries())
    }

    #[test]
    fn what_we_write_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join(format!("app/{}", "d".repeat(120)))).unwrap();
        std::fs::write(src.join("app/f"), vec![7u8; 70_000]).unwrap();
        std::os::unix::fs::symlink("f", src.join("app/link")).unwrap();
        let spec = crate::upload::UploadSpec {
            files: vec!["app".into()],
            relative: true,
            ..Default::default()
        };
        let manifest = Manifest::build(&spec, &src).unwrap();
        let mut bytes = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(tar::stream(&manifest, |chunk| {
            bytes.extend_from_slice(&chunk);
            async { Ok::<(), std::io::Error>(()) }
        }))
        .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        assert_eq!(check(&root, &bytes), Ok(4));
    }

    #[test]
    fn escapes_and_odd_types_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let file = || Kind::File { size: 0 };
        let cases: Vec<(Vec<Entry>, &str)> = vec![
            (vec![entry("../x", file())], "`..`"),
            (vec![entry("a/../../x", file())], "`..`"),
            (vec![entry(".", Kind::Dir)], "root itself"),
            (
                vec![
                    entry(
                        "l",
                        Kind::Symlink {
                            target: "/etc".into(),
                        },
                    ),
                    entry("l/cron.d/x", file()),
                ],
                "symbolic link of the archive",
            ),
            (
                vec![
                    entry(
                        "l",
                        Kind::Symlink {
                            target: "sub".into(),
                        },
                    ),
                    entry("l", Kind::Dir),
                ],
                "symbolic link of the archive",
            ),
        ];
        for (entries, why) in cases {
            let e = check(root, &archive(&entries)).unwrap_err();
            assert!(e.reason.contains(why), "{e} for {entries:?}");
        }
        // A long name (pax) that escapes is caught as well.
        let long = format!("{}/../../x", "a".repeat(120));
        let e = check(root, &archive(&[entry(&long, file())])).unwrap_err();
        assert!(e.reason.contains("`..`"), "{e}");
        // Hard links, devices, FIFOs, global headers: the type byte decides.
        for (flag, why) in [
            (b'1', "hard links"),
            (b'3', "device"),
            (b'6', "FIFO"),
            (b'g', "global"),
        ] {
            let mut h = tar::header(&entry("x", file()));
            h[156] = flag;
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            let e = check(root, &h).unwrap_err();
            assert!(e.reason.contains(why), "{e}");
        }
        // A corrupted header.
        let mut h = tar::header(&entry("x", file()));
        h[0] = b'y';
        assert!(check(root, &h).unwrap_err().reason.contains("checksum"));
    }

    #[test]
    fn links_already_on_disk_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc")).unwrap();
        let file = Kind::File { size: 0 };
        let e = check(&root, &archive(&[entry("etc/cron.d/x", file.clone())])).unwrap_err();
        assert!(e.reason.contains("goes through the symbolic link"), "{e}");
        let e = check(&root, &archive(&[entry("etc", Kind::Dir)])).unwrap_err();
        assert!(e.reason.contains("symbolic link"), "{e}");
        // Replacing the link itself is fine (tar --unlink-first removes it first).
        assert_eq!(check(&root, &archive(&[entry("etc", file.clone())])), Ok(1));
        assert_eq!(check(&root, &archive(&[entry("real/x", file)])), Ok(1));
    }
}
