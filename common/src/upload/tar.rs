//! A [`Manifest`] as a POSIX tar stream (ustar headers, pax records where a field does
//! not fit), produced in chunks of at most [`CHUNK`] bytes for a sender that may wait
//! (SSH flow control): memory stays constant whatever the files' sizes.
//!
//! ```text
//! per entry: [pax header + records, if a name, link or number does not fit]
//!            ustar header (512) ─ contents, padded to 512     (files only)
//! end:       two zero blocks
//! ```
//!
//! A file is read as it is sent. If its size changed since the walk, the stream stops
//! with [`TarError::Changed`]: the header already promised a size, and a wrong archive
//! must not be extracted as if it were right.

use std::future::Future;

use tokio::io::AsyncReadExt as _;

use super::{Entry, Kind, Manifest};

/// Block size of tar.
const BLOCK: usize = 512;
/// The most bytes handed to the sender at once.
pub const CHUNK: usize = 64 << 10;

/// Why a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// A file could not be read.
    #[error("cannot read {path}: {cause}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        cause: std::io::Error,
    },
    /// A file's size changed while it was being sent.
    #[error("{path} changed while it was being sent (it had {expected} bytes)")]
    Changed {
        /// The file.
        path: String,
        /// The size in its header.
        expected: u64,
    },
    /// The receiving side failed.
    #[error("{0}")]
    Send(String),
}

/// Writes the archive of `manifest` through `send`; returns the bytes sent.
pub async fn stream<F, Fut, E>(manifest: &Manifest, send: F) -> Result<u64, TarError>
where
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let open = |entry: &Entry| {
        let path = entry.local.clone();
        async move { tokio::fs::File::open(path).await }
    };
    stream_with(manifest, open, send).await
}

/// [`stream`], with each file opened by `open` (a caller that must not follow a link
/// swapped in since the walk opens beneath a directory descriptor).
pub async fn stream_with<O, OFut, F, Fut, E>(
    manifest: &Manifest,
    mut open: O,
    mut send: F,
) -> Result<u64, TarError>
where
    O: FnMut(&Entry) -> OFut,
    OFut: Future<Output = std::io::Result<tokio::fs::File>>,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut sent = 0u64;
    let mut out = |bytes: Vec<u8>| {
        sent += bytes.len() as u64;
        let fut = send(bytes);
        async move { fut.await.map_err(|e| TarError::Send(e.to_string())) }
    };
    for entry in &manifest.entries {
        let Kind::File { size } = entry.kind else {
            out(header(entry)).await?;
            continue;
        };
        let path = entry.local.display().to_string();
        let read_err = |cause| TarError::Read {
            path: path.clone(),
            cause,
        };
        // Opened before its header goes out: a file that cannot be read stops the
        // stream at an entry boundary.
        let mut file = open(entry).await.map_err(read_err)?;
        out(header(entry)).await?;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut buf = vec![0u8; want];
            let mut filled = 0;
            while filled < want {
                let n = file
                    .read(buf.get_mut(filled..).unwrap_or_default())
                    .await
                    .map_err(read_err)?;
                if n == 0 {
                    return Err(TarError::Changed {
                        path: path.clone(),
                        expected: size,
                    });
                }
                filled += n;
            }
            left -= want as u64;
            if left == 0 {
                // Pad the last chunk to a whole block.
                buf.resize(want.div_ceil(BLOCK) * BLOCK, 0);
            }
            out(buf).await?;
        }
        let mut probe = [0u8; 1];
        if file.read(&mut probe).await.map_err(read_err)? != 0 {
            return Err(TarError::Changed {
                path,
                expected: size,
            });
        }
    }
    out(vec![0u8; 2 * BLOCK]).await?;
    Ok(sent)
}

/// The header blocks of `entry` (a pax header first if needed).
pub fn header(entry: &Entry) -> Vec<u8> {
    let (typeflag, size, link) = match &entry.kind {
        Kind::File { size } => (b'0', *size, ""),
        Kind::Dir => (b'5', 0, ""),
        Kind::Symlink { target } => (b'2', 0, target.as_str()),
    };
    let name = if entry.kind == Kind::Dir {
        format!("{}/", entry.name)
    } else {
        entry.name.clone()
    };
    let mut records = String::new();
    if name.len() > 100 {
        records.push_str(&record("path", &name));
    }
    if link.len() > 100 {
        records.push_str(&record("linkpath", link));
    }
    if size > 0o77_777_777_777 {
        records.push_str(&record("size", &size.to_string()));
    }
    for (key, id) in [("uid", entry.uid), ("gid", entry.gid)] {
        if u64::from(id) > 0o7_777_777 {
            records.push_str(&record(key, &id.to_string()));
        }
    }
    if entry.mtime > 0o77_777_777_777 {
        records.push_str(&record("mtime", &entry.mtime.to_string()));
    }
    let mut out = Vec::with_capacity(3 * BLOCK);
    if !records.is_empty() {
        let pax = ustar(
            "././@PaxHeader",
            0o644,
            0,
            0,
            records.len() as u64,
            entry.mtime,
            b'x',
            "",
        );
        out.extend_from_slice(&pax);
        out.extend_from_slice(records.as_bytes());
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }
    out.extend_from_slice(&ustar(
        &name,
        entry.mode,
        entry.uid,
        entry.gid,
        size,
        entry.mtime,
        typeflag,
        link,
    ));
    out
}

/// One pax record: `<length> <key>=<value>\n`, the length counting itself.
fn record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while len.to_string().len() + body.len() != len {
        len = len.to_string().len() + body.len();
    }
    format!("{len}{body}")
}

/// A 512-byte ustar header; fields that do not fit are cut (a pax record carries them).
#[allow(clippy::too_many_arguments)]
fn ustar(
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
    typeflag: u8,
    link: &str,
) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    put(&mut h, 0, 100, name.as_bytes());
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, u64::from(uid).min(0o7_777_777));
    octal(&mut h, 116, 8, u64::from(gid).min(0o7_777_777));
    octal(&mut h, 124, 12, size.min(0o77_777_777_777));
    octal(&mut h, 136, 12, mtime.min(0o77_777_777_777));
    put(&mut h, 148, 8, b"        ");
    put(&mut h, 156, 1, &[typeflag]);
    put(&mut h, 157, 100, link.as_bytes());
    put(&mut h, 257, 6, b"ustar\0");
    put(&mut h, 263, 2, b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Copies `bytes` into `h[at..at + len]`, cut to `len`.
fn put(h: &mut [u8; BLOCK], at: usize, len: usize, bytes: &[u8]) {
    let n = bytes.len().min(len);
    if let (Some(dst), Some(src)) = (h.get_mut(at..at + n), bytes.get(..n)) {
        dst.copy_from_slice(src);
    }
}

/// `value` in octal, zero-padded to `len - 1` digits and a NUL.
fn octal(h: &mut [u8; BLOCK], at: usize, len: usize, value: u64) {
    let text = format!("{value:0width$o}\0", width = len - 1);
    put(h, at, len, text.as_bytes());
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::upload::UploadSpec;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(record("path", "a"), "9 path=a\n");
        assert_eq!(record("path", "abc"), "12 path=abc\n");
        let long = "x".repeat(95);
        let r = record("path", &long);
        assert_eq!(
            r.len(),
            r.split(' ').next().unwrap().parse::<usize>().unwrap()
        );
    }

    /// The archive extracts with GNU tar to the same tree: modes, long names, links,
    /// empty directories, a file larger than a chunk.
    #[tokio::test]
    async fn gnu_tar_extracts_what_we_write() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let deep = format!("app/{}/{}", "d".repeat(90), "f".repeat(80));
        std::fs::create_dir_all(src.join(&deep)).unwrap();
        std::fs::create_dir_all(src.join("app/empty")).unwrap();
        std::fs::write(src.join(&deep).join("file"), "deep").unwrap();
        let big: Vec<u8> = (0..(CHUNK * 2 + 7)).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("app/big"), &big).unwrap();
        std::fs::write(src.join("app/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            src.join("app/run.sh"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("run.sh", src.join("app/link")).unwrap();
        let spec = UploadSpec {
            files: vec!["app".into()],
            relative: true,
            ..UploadSpec::default()
        };
        let manifest = Manifest::build(&spec, &src).unwrap();
        let mut archive = Vec::new();
        let sent = stream(&manifest, |chunk| {
            assert!(chunk.len() <= CHUNK);
            archive.extend_from_slice(&chunk);
            async { Ok::<(), std::io::Error>(()) }
        })
        .await
        .unwrap();
        assert_eq!(sent as usize, archive.len());
        assert_eq!(archive.len() % BLOCK, 0);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let mut tar = std::process::Command::new("tar")
            .args(["-x", "-p", "-f", "-", "-C"])
            .arg(&out)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        tar.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(tar.wait().unwrap().success());
        assert_eq!(std::fs::read(out.join("app/big")).unwrap(), big);
        assert_eq!(
            std::fs::read_to_string(out.join(&deep).join("file")).unwrap(),
            "deep"
        );
        assert!(out.join("app/empty").is_dir());
        assert_eq!(
            std::fs::read_link(out.join("app/link")).unwrap(),
            std::path::Path::new("run.sh")
        );
        let mode = std::fs::metadata(out.join("app/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
    }

    #[tokio::test]
    async fn a_file_that_changed_stops_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), "12345").unwrap();
        let spec = UploadSpec {
            files: vec!["f".into()],
            relative: true,
            ..UploadSpec::default()
        };
        let manifest = Manifest::build(&spec, dir.path()).unwrap();
        for now in ["12", "1234567"] {
            std::fs::write(dir.path().join("f"), now).unwrap();
            let e = stream(&manifest, |_| async { Ok::<(), std::io::Error>(()) })
                .await
                .unwrap_err();
            assert!(matches!(e, TarError::Changed { expected: 5, .. }), "{e}");
        }
        // A failing receiver stops it too.
        std::fs::write(dir.path().join("f"), "12345").unwrap();
        let e = stream(&manifest, |_| async { Err("closed") })
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "closed");
    }
}
