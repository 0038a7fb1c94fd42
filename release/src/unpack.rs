//! Unpacking a fetched artifact into a directory with the confined extractor
//! ([`deploy_extract`]): `tar`, `tar.gz` or `tar.zst`, told apart by their first bytes
//! (never by the name), decompressed as a stream.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use deploy_extract::{Options, Root, Summary};

/// Why an artifact could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The artifact cannot be read.
    #[error("cannot read the artifact {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A compression this does not read.
    #[error("the artifact is {0}: only tar, tar.gz and tar.zst are read")]
    Unsupported(&'static str),
    /// The extractor refused or failed.
    #[error(transparent)]
    Extract(#[from] deploy_extract::Error),
}

/// What the first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain tar.
    Tar,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
}

/// The format of an artifact from its first bytes.
pub fn detect(head: &[u8]) -> Result<Format, UnpackError> {
    Ok(match head {
        [0x1f, 0x8b, ..] => Format::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Format::Zstd,
        [b'B', b'Z', b'h', ..] => return Err(UnpackError::Unsupported("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => return Err(UnpackError::Unsupported("xz")),
        [b'P', b'K', 3, 4, ..] => return Err(UnpackError::Unsupported("a zip file")),
        _ => Format::Tar,
    })
}

/// Unpacks `artifact` under the directory `into` (which must exist).
pub fn unpack(artifact: &Path, into: &Path, options: &Options) -> Result<Summary, UnpackError> {
    let file = File::open(artifact).map_err(|source| UnpackError::Open {
        path: artifact.display().to_string(),
        source,
    })?;
    unpack_from(file, &artifact.display().to_string(), into, options)
}

/// Unpacks the artifact read from `input` (named `name` in errors) under the directory
/// `into` (which must exist), reading it once: its first bytes tell the format and are
/// then read again from memory.
pub fn unpack_from<R: Read>(
    mut input: R,
    name: &str,
    into: &Path,
    options: &Options,
) -> Result<Summary, UnpackError> {
    let mut head = [0u8; 8];
    let n = read_up_to(&mut input, &mut head).map_err(|source| UnpackError::Open {
        path: name.to_owned(),
        source,
    })?;
    let head = head.get(..n).unwrap_or_default();
    let format = detect(head)?;
    let input = BufReader::with_capacity(256 << 10, head.chain(input));
    let root = Root::open(into)?;
    let summary = match format {
        Format::Tar => deploy_extract::extract(input, &root, options)?,
        Format::Gzip => {
            deploy_extract::extract(flate2::bufread::MultiGzDecoder::new(input), &root, options)?
        }
        Format::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| {
                deploy_extract::Error::Format {
                    offset: 0,
                    reason: format!("zstd: {e}"),
                }
            })?;
            deploy_extract::extract(decoder, &root, options)?
        }
    };
    Ok(summary)
}

fn read_up_to<R: Read>(file: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else {
            break;
        };
        match file.read(rest)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
