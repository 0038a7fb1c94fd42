//! The tar reader: bytes → [`Entry`]s, the only parser that decides what an archive
//! names. Nothing here touches the file system, so it is fuzzed on its own.
//!
//! ```text
//! block      512 bytes; a header, or data padded to a whole block
//! header     name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] type[1]
//!            linkname[100] magic[6] version[2] uname[32] gname[32] devmajor[8]
//!            devminor[8] prefix[155] (ustar) | atime/ctime/… (old GNU: no prefix)
//! magic      "ustar\0" "00"  POSIX ustar: the name is prefix "/" name
//!            "ustar " " \0"  old GNU: the name is name alone (offset 345 is not a prefix)
//! end        a zero block; whatever follows must be zeros too
//! ```
//!
//! Accepted entry types: regular files (`0`, NUL, `7`), directories (`5`), symbolic
//! links (`2`), and for the next entry only, one pax header (`x`) and GNU long-name
//! (`L`) or long-link (`K`) records. Everything else is refused by name: hard links,
//! devices, FIFOs, global pax headers, GNU sparse, volume and multi-volume headers, and
//! the old formats without a magic.
//!
//! One source per fact, or the archive is refused: a name from a pax `path` *and* a
//! GNU `L` record, two pax headers or two `L` records for one entry, a key twice in one
//! pax header. Pax keys that change what is written (`path`, `linkpath`, `size`,
//! `mtime`) are applied; keys of metadata the extractor never applies (owners, access
//! and change times, comments, extended attributes and ACLs) are read and ignored;
//! every other key, `GNU.sparse.*` first of all, refuses the archive.
//!
//! Names are bytes, never decoded: what is checked is exactly what is created.

use std::io::{self, BufRead, Read, Write};

use crate::{Error, Name};

/// The size of a tar block.
pub const BLOCK: usize = 512;

/// The largest pax header or GNU long-name record accepted.
pub const MAX_RECORD: u64 = 1 << 20;

/// What an entry makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of `size` bytes (its data follows).
    File {
        /// Bytes of data.
        size: u64,
    },
    /// A directory.
    Dir,
    /// A symbolic link to `target` (relative, as written in the archive).
    Symlink {
        /// The link's contents.
        target: Vec<u8>,
    },
}

/// One entry of the archive, its name already checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as the archive gives it (for messages).
    pub name: Name,
    /// Its components under the root: none is empty, `.` or `..`, none holds `/` or
    /// NUL. Empty only for the root's own directory entry (`./`), which the extractor
    /// skips.
    pub parts: Vec<Vec<u8>>,
    /// What it makes.
    pub kind: Kind,
    /// Permission bits from the header (`0o7777` at most).
    pub mode: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// Overrides for the next entry, from a pax header or GNU records.
#[derive(Debug, Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<i64>,
    /// A pax header was seen for the next entry.
    pax: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        !self.pax && self.path.is_none() && self.link.is_none()
    }
}

/// A pull parser over a tar stream.
#[derive(Debug)]
pub struct Archive<R> {
    reader: R,
    /// Bytes of the current entry's data not yet read.
    data_left: u64,
    /// Padding after the current entry's data.
    pad_left: u64,
    /// Bytes consumed so far (for messages).
    offset: u64,
    /// The end blocks were seen.
    ended: bool,
}

impl<R: Read> Archive<R> {
    /// An archive read from `reader`.
    pub fn new(reader: R) -> Archive<R> {
        Archive {
            reader,
            data_left: 0,
            pad_left: 0,
            offset: 0,
            ended: false,
        }
    }

    /// Bytes of the input consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next entry, skipping what is left of the previous one's data; `None` after
    /// the end blocks (and the zeros after them, read to the end of the input).
    pub fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        if self.ended {
            return Ok(None);
        }
        self.skip(self.data_left + self.pad_left)?;
        self.data_left = 0;
        self.pad_left = 0;
        let mut pending = Pending::default();
        loop {
            let mut block = [0u8; BLOCK];
            if !self.fill(&mut block)? {
                return Err(if pending.is_empty() {
                    Error::Truncated {
                        offset: self.offset,
                        what: "the archive ends without its end block",
                    }
                } else {
                    Error::Truncated {
                        offset: self.offset,
                        what: "the archive ends after a pax or long-name record",
                    }
                });
            }
            if block.iter().all(|&b| b == 0) {
                if !pending.is_empty() {
                    return Err(
                        self.format("a pax or long-name record is not followed by an entry")
                    );
                }
                self.finish()?;
                return Ok(None);
            }
            let header = Header::parse(&block).map_err(|why| self.format(why))?;
            let size = if matches!(header.typeflag, b'x' | b'L' | b'K') {
                header.size
            } else {
                pending.size.take().unwrap_or(header.size)
            };
            match header.typeflag {
                b'x' | b'L' | b'K' => {
                    if size > MAX_RECORD {
                        return Err(self.format("a pax or long-name record over 1 MiB"));
                    }
                    let record = self.record(size)?;
                    match header.typeflag {
                        b'x' => {
                            if pending.pax {
                                return Err(self.format("two pax headers for one entry"));
                            }
                            pending.pax = true;
                            apply_pax(&record, &mut pending).map_err(|why| self.format(&why))?;
                        }
                        b'L' => {
                            if pending.path.is_some() {
                                return Err(self
                                    .format("two names for one entry (pax path, GNU long name)"));
                            }
                            pending.path = Some(cstr(&record).to_vec());
                        }
                        _ => {
                            if pending.link.is_some() {
                                return Err(self.format(
                                    "two link names for one entry (pax linkpath, GNU long link)",
                                ));
                            }
                            pending.link = Some(cstr(&record).to_vec());
                        }
                    }
                    continue;
                }
                _ => {}
            }
            let raw_name = pending.path.take().unwrap_or(header.name);
            let name = Name(raw_name.clone());
            let refuse = |reason: &str| Error::Refused {
                entry: name.clone(),
                reason: reason.to_owned(),
            };
            let kind = match header.typeflag {
                b'0' | 0 | b'7' => Kind::File { size },
                b'5' => Kind::Dir,
                b'2' => Kind::Symlink {
                    target: pending.link.take().unwrap_or(header.link),
                },
                b'1' => return Err(refuse("hard links are not accepted")),
                b'3' | b'4' => return Err(refuse("device files are not accepted")),
                b'6' => return Err(refuse("FIFOs are not accepted")),
                b'g' => return Err(refuse("global pax headers are not accepted")),
                b'S' => return Err(refuse("GNU sparse files are not accepted")),
                b'V' | b'M' | b'N' | b'D' => {
                    return Err(refuse(
                        "GNU volume, multi-volume and dump entries are not accepted",
                    ))
                }
                other => {
                    return Err(refuse(&format!(
                        "entry type {} is not accepted",
                        Name(vec![other])
                    )))
                }
            };
            if pending.link.is_some() {
                return Err(refuse("a link name for an entry that is not a link"));
            }
            let parts = clean(&raw_name).map_err(&refuse)?;
            if parts.is_empty() && kind != Kind::Dir {
                return Err(refuse("names the extraction root itself"));
            }
            if let Kind::Symlink { target } = &kind {
                check_link(&parts, target).map_err(&refuse)?;
            }
            if let Kind::File { size } = kind {
                self.data_left = size;
                self.pad_left = padding(size);
            } else if size != 0 && header.typeflag != b'5' && header.typeflag != b'2' {
                return Err(refuse("bad size"));
            } else {
                // Directories and links carry no data (a size there is skipped, as tar does).
                self.data_left = 0;
                self.pad_left = size + padding(size);
            }
            return Ok(Some(Entry {
                name,
                parts,
                kind,
                mode: header.mode & 0o7777,
                mtime: pending.mtime.unwrap_or(header.mtime),
            }));
        }
    }

    /// Reads the current entry's data; 0 at its end.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.data_left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.data_left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let Some(buf) = buf.get_mut(..want) else {
            return Ok(0);
        };
        let n = loop {
            match self.reader.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Read(e)),
            }
        };
        if n == 0 {
            return Err(Error::Truncated {
                offset: self.offset,
                what: "the archive ends inside a file's data",
            });
        }
        self.data_left -= n as u64;
        self.offset += n as u64;
        Ok(n)
    }

    /// Reads the zeros after the end block, to the end of the input.
    fn finish(&mut self) -> Result<(), Error> {
        self.ended = true;
        let mut buf = [0u8; 8192];
        loop {
            let n = match self.reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::Read(e)),
            };
            if buf.get(..n).unwrap_or_default().iter().any(|&b| b != 0) {
                return Err(self.format("data after the end of the archive"));
            }
            self.offset += n as u64;
        }
    }

    /// Fills `block`; `false` on a clean end of input before its first byte.
    fn fill(&mut self, block: &mut [u8]) -> Result<bool, Error> {
        let mut got = 0;
        while got < block.len() {
            let Some(rest) = block.get_mut(got..) else {
                break;
            };
            match self.reader.read(rest) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => {
                    return Err(Error::Truncated {
                        offset: self.offset,
                        what: "the archive ends inside a header",
                    })
                }
                Ok(n) => {
                    got += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::Read(e)),
            }
        }
        Ok(true)
    }

    /// A record of `size` bytes and its padding.
    fn record(&mut self, size: u64) -> Result<Vec<u8>, Error> {
        let len = usize::try_from(size).map_err(|_| self.format("record too large"))?;
        let mut record = vec![0u8; len];
        if len > 0 && !self.fill(&mut record)? {
            return Err(Error::Truncated {
                offset: self.offset,
                what: "the archive ends inside a pax or long-name record",
            });
        }
        self.skip(padding(size))?;
        Ok(record)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), Error> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let want = usize::try_from(n).unwrap_or(buf.len()).min(buf.len());
            let Some(chunk) = buf.get_mut(..want) else {
                break;
            };
            if !self.fill(chunk)? {
                return Err(Error::Truncated {
                    offset: self.offset,
                    what: "the archive ends inside an entry",
                });
            }
            n -= want as u64;
        }
        Ok(())
    }

    fn format(&self, why: &str) -> Error {
        Error::Format {
            offset: self.offset,
            reason: why.to_owned(),
        }
    }
}

impl<R: BufRead> Archive<R> {
    /// Writes the rest of the current entry's data to `out` straight from the reader's
    /// buffer (no copy into one of ours); the bytes written. `name` names the entry in
    /// a write error.
    pub fn copy_data(&mut self, out: &mut impl Write, name: &[u8]) -> Result<u64, Error> {
        let mut written = 0u64;
        while self.data_left > 0 {
            let buf = loop {
                match self.reader.fill_buf() {
                    Ok(b) => break b,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::Read(e)),
                }
            };
            if buf.is_empty() {
                return Err(Error::Truncated {
                    offset: self.offset,
                    what: "the archive ends inside a file's data",
                });
            }
            let n = usize::try_from(self.data_left)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            out.write_all(buf.get(..n).unwrap_or_default())
                .map_err(|source| Error::Io {
                    entry: Name(name.to_vec()),
                    op: "write",
                    source,
                })?;
            self.reader.consume(n);
            self.data_left -= n as u64;
            self.offset += n as u64;
            written += n as u64;
        }
        Ok(written)
    }
}

/// Padding after `size` bytes of data.
fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The fields of one header block that the reader uses.
struct Header {
    name: Vec<u8>,
    link: Vec<u8>,
    mode: u32,
    size: u64,
    mtime: i64,
    typeflag: u8,
}

impl Header {
    fn parse(h: &[u8; BLOCK]) -> Result<Header, &'static str> {
        let field = |at: usize, len: usize| h.get(at..at + len).unwrap_or_default();
        let stored = number(field(148, 8)).ok_or("bad header checksum field")?;
        let (unsigned, signed) = checksums(h);
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err("bad header checksum");
        }
        let magic = field(257, 8);
        let name = cstr(field(0, 100));
        let name = if magic == b"ustar\x0000" {
            let prefix = cstr(field(345, 155));
            if prefix.is_empty() {
                name.to_vec()
            } else {
                [prefix, b"/", name].concat()
            }
        } else if magic == b"ustar  \x00" {
            name.to_vec()
        } else {
            return Err("not a ustar, pax or GNU tar header");
        };
        let mode = number(field(100, 8)).ok_or("bad mode field")?;
        let size = number(field(124, 12)).ok_or("bad size field")?;
        let mtime = number(field(136, 12)).ok_or("bad mtime field")?;
        Ok(Header {
            name,
            link: cstr(field(157, 100)).to_vec(),
            mode: u32::try_from(mode & 0o7777).unwrap_or(0),
            size,
            mtime: i64::try_from(mtime).unwrap_or(i64::MAX),
            typeflag: h.get(156).copied().unwrap_or(0),
        })
    }
}

/// The header's checksum, unsigned and signed, with its own field counted as spaces.
fn checksums(h: &[u8]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    (unsigned, signed)
}

/// A numeric field: octal (spaces and NULs around it), or GNU base-256 (positive only).
fn number(field: &[u8]) -> Option<u64> {
    if let Some((&first, rest)) = field.split_first() {
        if first & 0x80 != 0 {
            if first & 0x40 != 0 {
                return None; // negative
            }
            let mut n = u64::from(first & 0x3f);
            for &b in rest {
                n = n.checked_mul(256)?.checked_add(u64::from(b))?;
            }
            return Some(n);
        }
    }
    let mut digits = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .peekable();
    if digits.peek().is_none() {
        return Some(0);
    }
    let mut n = 0u64;
    let mut rest = false;
    for b in digits {
        if rest {
            if b != b' ' && b != 0 {
                return None;
            }
            continue;
        }
        match b {
            b'0'..=b'7' => n = n.checked_mul(8)?.checked_add(u64::from(b - b'0'))?,
            b' ' | 0 => rest = true,
            _ => return None,
        }
    }
    Some(n)
}

/// A NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field.get(..end).unwrap_or_default()
}

/// Applies one pax header to `pending`.
fn apply_pax(mut record: &[u8], pending: &mut Pending) -> Result<(), String> {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    while !record.is_empty() {
        let space = record
            .iter()
            .position(|&b| b == b' ')
            .ok_or("bad pax record")?;
        let len: usize = std::str::from_utf8(record.get(..space).unwrap_or_default())
            .ok()
            .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > space + 2 && l <= record.len())
            .ok_or("bad pax record length")?;
        let line = record.get(space + 1..len).unwrap_or_default();
        let Some((b'\n', body)) = line.split_last() else {
            return Err("a pax record does not end with a newline".into());
        };
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or("a pax record without `=`")?;
        let key = body.get(..eq).unwrap_or_default();
        let value = body.get(eq + 1..).unwrap_or_default();
        if key.is_empty() {
            return Err("a pax record with an empty key".into());
        }
        if seen.iter().any(|k| k == key) {
            return Err(format!("pax key {} given twice", Name(key.to_vec())));
        }
        seen.push(key.to_vec());
        match key {
            b"path" | b"linkpath" => {
                if value.is_empty() || value.contains(&0) {
                    return Err(format!("pax {} is empty or holds NUL", Name(key.to_vec())));
                }
                if key == b"path" {
                    pending.path = Some(value.to_vec());
                } else {
                    pending.link = Some(value.to_vec());
                }
            }
            b"size" => {
                pending.size = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|v| v.parse().ok())
                        .ok_or("bad pax size")?,
                )
            }
            b"mtime" => {
                let text = std::str::from_utf8(value).map_err(|_| "bad pax mtime")?;
                let whole = text.split_once('.').map_or(text, |(w, _)| w);
                pending.mtime = Some(whole.parse().map_err(|_| "bad pax mtime")?);
            }
            // Metadata that is never applied: owners, other times, comments, charsets.
            b"atime"
            | b"ctime"
            | b"uid"
            | b"gid"
            | b"uname"
            | b"gname"
            | b"comment"
            | b"charset"
            | b"hdrcharset"
            | b"SCHILY.dev"
            | b"SCHILY.ino"
            | b"SCHILY.nlink"
            | b"SCHILY.fflags"
            | b"LIBARCHIVE.creationtime"
            | b"LIBARCHIVE.symlinktype" => {}
            // Extended attributes and ACLs are never applied either.
            _ if key.starts_with(b"SCHILY.xattr.")
                || key.starts_with(b"LIBARCHIVE.xattr.")
                || key.starts_with(b"SCHILY.acl.") => {}
            _ => return Err(format!("pax key {} is not understood", Name(key.to_vec()))),
        }
        record = record.get(len..).unwrap_or_default();
    }
    Ok(())
}

/// The components of a name under the root, or why it may not be extracted there.
pub fn clean(name: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if name.first() == Some(&b'/') {
        return Err("absolute name");
    }
    if name.contains(&0) {
        return Err("a NUL byte in the name");
    }
    let mut parts = Vec::new();
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("a `..` component"),
            part => parts.push(part.to_vec()),
        }
    }
    Ok(parts)
}

/// A link target is relative, and stays under the root when resolved from the link's
/// directory: `..` only at its start (so no `..` can follow another link), and no more
/// of them than the link is deep.
fn check_link(parts: &[Vec<u8>], target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("an empty link target");
    }
    if target.first() == Some(&b'/') {
        return Err("a link to an absolute path");
    }
    if target.contains(&0) {
        return Err("a NUL byte in the link target");
    }
    let depth = parts.len().saturating_sub(1);
    let mut ups = 0usize;
    let mut down = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if down => return Err("a link target with `..` after a name"),
            b".." => {
                ups += 1;
                if ups > depth {
                    return Err("a link that points outside the root");
                }
            }
            _ => down = true,
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number(b"0000644\0"), Some(0o644));
        assert_eq!(number(b"   644 \0"), Some(0o644));
        assert_eq!(number(b"\0\0\0\0"), Some(0));
        assert_eq!(number(b"64x4\0"), None);
        assert_eq!(number(b"6 4\0"), None);
        assert_eq!(number(&[0x80, 0, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(number(&[0xff, 0xff]), None);
    }

    #[test]
    fn names() {
        assert_eq!(
            clean(b"./a//b/./c/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(clean(b"./").unwrap(), Vec::<Vec<u8>>::new());
        assert!(clean(b"/etc/x").is_err());
        assert!(clean(b"a/../b").is_err());
        assert!(clean(b"a/..").is_err());
        assert_eq!(clean(b"\xff\xfe").unwrap(), vec![b"\xff\xfe".to_vec()]);
    }

    #[test]
    fn link_targets() {
        let parts = |n: &[u8]| clean(n).unwrap();
        assert!(check_link(&parts(b"a/b/l"), b"../../x").is_ok());
        assert!(check_link(&parts(b"a/b/l"), b"../../../x").is_err());
        assert!(check_link(&parts(b"l"), b".").is_ok());
        assert!(check_link(&parts(b"l"), b"x/y").is_ok());
        assert!(check_link(&parts(b"l"), b"x/../..").is_err());
        assert!(check_link(&parts(b"a/l"), b"x/..").is_err());
        assert!(check_link(&parts(b"l"), b"/etc").is_err());
        assert!(check_link(&parts(b"l"), b"").is_err());
    }

    #[test]
    fn pax_records() {
        let mut p = Pending::default();
        apply_pax(b"12 path=abc\n21 mtime=1.500000000\n", &mut p).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"abc"[..]));
        assert_eq!(p.mtime, Some(1));
        for bad in [
            &b"30 GNU.sparse.name=x/y/zzzzz\n"[..],
            b"11 path=ab",
            b"12 path=abc",
            b"12 path=abc\n12 path=abd\n",
            b"9 path=\n",
            b"x path=a\n",
            b"16 frobnicate=1\n",
        ] {
            assert!(
                apply_pax(bad, &mut Pending::default()).is_err(),
                "{:?}",
                Name(bad.to_vec())
            );
        }
    }
}
