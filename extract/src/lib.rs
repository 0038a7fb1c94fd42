//! Confined tar extraction: a caller's archive unpacked under a directory, with nothing
//! written anywhere else whatever the archive says.
//!
//! The agent extracts archives it receives from the network (`upload`) and, for
//! releases, archives it downloads; it often runs as root. Checking names with one
//! parser and then letting another program (GNU tar) extract them is what let a crafted
//! archive write outside the root: the two read names differently. Here, one parser
//! decides and the kernel enforces.
//!
//! # Design
//!
//! * **One parser** ([`archive`]) reads every header, pax record and GNU long name, and
//!   refuses what it does not fully model (see its docs): the names it yields are the
//!   names created, as bytes, never decoded.
//! * **The kernel confines** ([`fs`]): every directory is opened from the root's file
//!   descriptor with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS)`, and every file, directory and link is created relative to
//!   its parent's descriptor under a single-component name. No symbolic link is ever
//!   followed, neither one of the archive nor one already on disk, so no name can lead
//!   out of the root, even through a race.
//! * **Nothing half-written**: a file is written under a temporary name in its
//!   directory and renamed over its final name only once complete, so a cut stream, a
//!   refused entry or a crash never leaves a truncated file under its final name. What
//!   was complete before stays.
//! * **Never the archive's owners or special bits**: files belong to the extracting
//!   user; modes are masked ([`Options::mode_mask`], by default no setuid, setgid,
//!   sticky or group/other write bits).
//! * **Links stay inside**: a symbolic link's target must be relative and stay under the
//!   root from the link's directory (`..` only at its start); [`Options::symlinks`] can
//!   refuse them all. Hard links, devices and FIFOs are refused.
//!
//! # Layout
//!
//! * [`archive`]: the tar reader (bytes → checked [`archive::Entry`]s), no file system.
//! * [`fs`]: [`Root`], the confined directory and its operations.
//! * [`extract`]: the two together.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt;
use std::io::{self, BufRead, Read, Write as _};

pub mod archive;
pub mod fs;

pub use archive::{Archive, Entry, Kind};
pub use fs::Root;

/// How to extract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Permission bits kept from the archive (`mode & mode_mask`). The default, `0o755`,
    /// drops setuid, setgid, sticky and group/other write bits.
    pub mode_mask: u32,
    /// Accept symbolic links (that stay under the root). Off: every link is refused.
    pub symlinks: bool,
    /// `syncfs` the root's file system before reporting success.
    pub sync: bool,
    /// Apply modification times from the archive to files.
    pub mtimes: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            mode_mask: 0o755,
            symlinks: true,
            sync: false,
            mtimes: true,
        }
    }
}

/// What an extraction made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Regular files written.
    pub files: u64,
    /// Directories made or found.
    pub dirs: u64,
    /// Symbolic links made.
    pub symlinks: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// An archive's name or link target, shown with its non-printable bytes escaped.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Name(pub Vec<u8>);

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '"' => f.write_str("\\\"")?,
                    '\\' => f.write_str("\\\\")?,
                    c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                    c => write!(f, "{c}")?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        f.write_str("\"")
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why an extraction stopped. Entries before the one named stay extracted.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An entry the extractor will not make.
    #[error("archive refused at {entry}: {reason}")]
    Refused {
        /// The entry's name.
        entry: Name,
        /// Why.
        reason: String,
    },
    /// The bytes are not a tar archive the extractor reads.
    #[error("not a valid archive (at byte {offset}): {reason}")]
    Format {
        /// Where in the input.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The input ended early.
    #[error("truncated archive (at byte {offset}): {what}")]
    Truncated {
        /// Where in the input.
        offset: u64,
        /// Where it ended.
        what: &'static str,
    },
    /// Reading the input failed (for a stream, the sender went away).
    #[error("cannot read the archive: {0}")]
    Read(#[source] io::Error),
    /// The root directory cannot be opened or made.
    #[error("cannot use {path} as the extraction root: {source}")]
    Root {
        /// The root.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Making an entry failed.
    #[error("cannot {op} {entry}: {source}")]
    Io {
        /// The entry's name.
        entry: Name,
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Extracts the archive read from `input` under `root` (see the crate docs).
pub fn extract<R: Read>(input: R, root: &Root, options: &Options) -> Result<Summary, Error> {
    run(Archive::new(input), root, options, |archive, file, name| {
        let mut buf = vec![0u8; 64 << 10];
        let mut written = 0u64;
        loop {
            let n = archive.read_data(&mut buf)?;
            if n == 0 {
                return Ok(written);
            }
            file.write_all(buf.get(..n).unwrap_or_default())
                .map_err(|source| Error::Io {
                    entry: Name(name.to_vec()),
                    op: "write",
                    source,
                })?;
            written += n as u64;
        }
    })
}

/// [`extract`] from a buffered input: file data is written to the files straight from
/// the input's own buffers (one copy fewer per byte; what the relay's chain hosts use,
/// whose input is the verified chunks themselves).
pub fn extract_buffered<R: BufRead>(
    input: R,
    root: &Root,
    options: &Options,
) -> Result<Summary, Error> {
    run(Archive::new(input), root, options, |archive, file, name| {
        archive.copy_data(file, name)
    })
}

/// The extraction loop; `data` writes the current entry's data to a file (its byte
/// count).
fn run<R: Read>(
    mut archive: Archive<R>,
    root: &Root,
    options: &Options,
    mut data: impl FnMut(&mut Archive<R>, &mut std::fs::File, &[u8]) -> Result<u64, Error>,
) -> Result<Summary, Error> {
    let mut summary = Summary::default();
    let mut cache = fs::DirCache::default();
    while let Some(entry) = archive.next_entry()? {
        let Some((last, parents)) = entry.parts.split_last() else {
            // `./`: the root itself, left as it is.
            continue;
        };
        let parent = cache
            .dir(root, parents, options.mode_mask)
            .map_err(|e| e.at(&entry))?;
        match &entry.kind {
            Kind::Dir => {
                root.make_dir(parent, last, entry.mode & options.mode_mask | 0o700)
                    .map_err(|e| e.at(&entry))?;
                summary.dirs += 1;
            }
            Kind::Symlink { target } => {
                if !options.symlinks {
                    return Err(Error::Refused {
                        entry: entry.name.clone(),
                        reason: "symbolic links are not accepted here".into(),
                    });
                }
                root.make_symlink(parent, last, target)
                    .map_err(|e| e.at(&entry))?;
                cache.forget(&entry.parts);
                summary.symlinks += 1;
            }
            Kind::File { .. } => {
                let mtime = options.mtimes.then_some(entry.mtime);
                let written = root.write_file_with(
                    parent,
                    last,
                    entry.mode & options.mode_mask,
                    mtime,
                    |file| data(&mut archive, file, last),
                )?;
                cache.forget(&entry.parts);
                summary.files += 1;
                summary.bytes += written;
            }
        }
    }
    if options.sync {
        root.sync().map_err(|source| Error::Root {
            path: root.path().display().to_string(),
            source,
        })?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests;
