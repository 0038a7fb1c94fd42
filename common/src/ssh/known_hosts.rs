//! `known_hosts`: which host keys are trusted, read once per run and shared by every
//! connection.
//!
//! ```text
//! [@revoked|@cert-authority] hosts keytype base64 [comment]
//! web01,10.0.0.1 ssh-ed25519 AAAAC3Nza...        plain names (port 22)
//! [web01]:2222 ssh-ed25519 AAAAC3Nza...          another port
//! *.example.com,!bad.example.com ssh-rsa AAAA...  patterns with * ? and !
//! |1|salt-base64|hmac-sha1-base64 ssh-ed25519 ... hashed (HashKnownHosts yes)
//! ```
//!
//! A host is looked up as `host` on port 22 and `[host]:port` otherwise, like OpenSSH.
//! The verdict ([`Check`]): the offered key is **known** if a line for the host holds
//! it; **revoked** if an `@revoked` line holds it; **changed** if a line for the host
//! holds another key of the same type (a mismatch, always refused, with the file and
//! line); else **unknown**. Lines that cannot be parsed are skipped (and logged), as
//! OpenSSH does; `@cert-authority` lines are ignored, host certificates not being
//! asked for.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use russh::keys::{parse_public_key_base64, Algorithm, HashAlg, PublicKey};

use super::config::glob;
use super::SshError;

/// Largest known_hosts file read.
const MAX_FILE: u64 = 64 << 20;

/// The trusted keys of one or more files.
#[derive(Debug, Default)]
pub struct KnownHosts {
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    file: PathBuf,
    line: usize,
    marker: Marker,
    hosts: Hosts,
    key: PublicKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug)]
enum Hosts {
    /// `(negated, lower-case glob)`.
    Patterns(Vec<(bool, String)>),
    /// `|1|salt|hash`.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// What a known_hosts file says about an offered host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A line for the host holds this key.
    Known,
    /// No line for the host holds a key of this type.
    Unknown,
    /// A line for the host holds another key of the same type.
    Changed {
        /// The file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
    },
    /// The key is marked `@revoked`.
    Revoked {
        /// The file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
    },
}

impl KnownHosts {
    /// Adds the lines of `path` (a missing file adds nothing).
    pub fn load(&mut self, path: &Path) -> Result<(), SshError> {
        let read = || -> std::io::Result<String> {
            use std::io::Read as _;
            let file = std::fs::File::open(path)?;
            let mut text = String::new();
            file.take(MAX_FILE).read_to_string(&mut text)?;
            Ok(text)
        };
        match read() {
            Ok(text) => {
                self.add(&text, path);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(cause) => Err(SshError::Read {
                path: path.to_owned(),
                cause,
            }),
        }
    }

    /// Adds the lines of a file's `text`.
    pub fn add(&mut self, text: &str, file: &Path) {
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Some((marker, hosts, key)) => self.entries.push(Entry {
                    file: file.to_owned(),
                    line: index + 1,
                    marker,
                    hosts,
                    key,
                }),
                None => {
                    tracing::debug!(file = %file.display(), line = index + 1, "known_hosts: line not understood; skipped")
                }
            }
        }
    }

    /// Adds one key for `host`/`port` in memory (after it was appended to a file).
    pub fn remember(&mut self, host: &str, port: u16, key: &PublicKey, file: &Path) {
        self.entries.push(Entry {
            file: file.to_owned(),
            line: 0,
            marker: Marker::None,
            hosts: Hosts::Patterns(vec![(false, lookup_name(host, port).to_ascii_lowercase())]),
            key: key.clone(),
        });
    }

    /// Judges the key `host` (on `port`) offers.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Check {
        let name = lookup_name(host, port);
        let mut changed = None;
        let mut known = false;
        for entry in self.entries.iter().filter(|e| e.hosts.matches(&name)) {
            let same = entry.key.key_data() == key.key_data();
            match entry.marker {
                Marker::Revoked if same => {
                    return Check::Revoked {
                        file: entry.file.clone(),
                        line: entry.line,
                    }
                }
                Marker::None if same => known = true,
                Marker::None if same_type(&entry.key, key) && changed.is_none() => {
                    changed = Some(Check::Changed {
                        file: entry.file.clone(),
                        line: entry.line,
                    });
                }
                _ => {}
            }
        }
        if known {
            return Check::Known;
        }
        changed.unwrap_or(Check::Unknown)
    }

    /// The key types recorded for `host`/`port`, so that they can be asked for first.
    pub fn algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let name = lookup_name(host, port);
        let mut out: Vec<Algorithm> = Vec::new();
        for entry in self.entries.iter() {
            if entry.marker == Marker::None && entry.hosts.matches(&name) {
                let algorithm = entry.key.algorithm();
                if !out.contains(&algorithm) {
                    out.push(algorithm);
                }
            }
        }
        out
    }
}

/// `host` on port 22, `[host]:port` otherwise.
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Appends a line for `host`/`port` to `path` (creating it and its directory), as
/// `ssh -o StrictHostKeyChecking=accept-new` does.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            // Like ssh: a new ~/.ssh is private.
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    let openssh = key.to_openssh().map_err(std::io::Error::other)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let needs_newline = {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let mut reader = std::fs::File::open(path)?;
        match reader.seek(SeekFrom::End(-1)) {
            Ok(_) => {
                let mut last = [0u8; 1];
                reader.read_exact(&mut last)?;
                last != [b'\n']
            }
            Err(_) => false,
        }
    };
    let mut line = String::new();
    if needs_newline {
        line.push('\n');
    }
    line.push_str(&lookup_name(host, port));
    line.push(' ');
    line.push_str(openssh.trim());
    line.push('\n');
    file.write_all(line.as_bytes())
}

/// `SHA256:…` of a key, as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn same_type(a: &PublicKey, b: &PublicKey) -> bool {
    let (a, b) = (a.algorithm(), b.algorithm());
    a == b || (a.is_rsa() && b.is_rsa())
}

fn parse_line(line: &str) -> Option<(Marker, Hosts, PublicKey)> {
    let mut words = line.split_whitespace();
    let mut first = words.next()?;
    let marker = match first {
        "@revoked" => Marker::Revoked,
        "@cert-authority" => Marker::CertAuthority,
        m if m.starts_with('@') => return None,
        _ => Marker::None,
    };
    if marker != Marker::None {
        first = words.next()?;
    }
    let _key_type = words.next()?;
    let key = parse_public_key_base64(words.next()?).ok()?;
    let hosts = if let Some(hashed) = first.strip_prefix("|1|") {
        let (salt, hash) = hashed.split_once('|')?;
        Hosts::Hashed {
            salt: STANDARD.decode(salt).ok()?,
            hash: STANDARD.decode(hash).ok()?,
        }
    } else {
        Hosts::Patterns(
            first
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| match p.strip_prefix('!') {
                    Some(rest) => (true, rest.to_ascii_lowercase()),
                    None => (false, p.to_ascii_lowercase()),
                })
                .collect(),
        )
    };
    Some((marker, hosts, key))
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                use aws_lc_rs::hmac;
                let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
                hmac::verify(&key, name.as_bytes(), hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                let name = name.to_ascii_lowercase();
                let mut matched = false;
                for (negated, pattern) in patterns {
                    if glob(pattern, &name) {
                        if *negated {
                            return false;
                        }
                        matched = true;
                    }
                }
                matched
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(b64: &str) -> PublicKey {
        parse_public_key_base64(b64).unwrap()
    }

    fn hosts(text: &str) -> KnownHosts {
        let mut k = KnownHosts::default();
        k.add(text, Path::new("kh"));
        k
    }

    #[test]
    fn known_unknown_changed() {
        let k = hosts(&format!(
            "# c\ngarbage line\nweb01,10.0.0.1 ssh-ed25519 {A}\n[web01]:2222 ssh-ed25519 {B}\n*.ex.com,!bad.ex.com ssh-ed25519 {A}\n"
        ));
        assert_eq!(k.check("web01", 22, &key(A)), Check::Known);
        assert_eq!(k.check("WEB01", 22, &key(A)), Check::Known);
        assert_eq!(k.check("10.0.0.1", 22, &key(A)), Check::Known);
        assert_eq!(
            k.check("web01", 22, &key(B)),
            Check::Changed {
                file: "kh".into(),
                line: 3
            }
        );
        assert_eq!(k.check("web01", 2222, &key(B)), Check::Known);
        assert_eq!(k.check("web02", 22, &key(A)), Check::Unknown);
        assert_eq!(k.check("a.ex.com", 22, &key(A)), Check::Known);
        assert_eq!(k.check("bad.ex.com", 22, &key(A)), Check::Unknown);
        assert_eq!(k.algorithms("web01", 22), vec![Algorithm::Ed25519]);
        assert!(k.algorithms("nowhere", 22).is_empty());
    }

    #[test]
    fn hashed_and_revoked() {
        // `ssh-keygen -H` form of "localhost" with this salt.
        use aws_lc_rs::hmac;
        let salt = b"0123456789abcdefghij";
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt),
            b"[localhost]:2200",
        );
        let line = format!(
            "|1|{}|{} ssh-ed25519 {A}\n@revoked * ssh-ed25519 {B}\n",
            STANDARD.encode(salt),
            STANDARD.encode(tag.as_ref())
        );
        let k = hosts(&line);
        assert_eq!(k.check("localhost", 2200, &key(A)), Check::Known);
        assert_eq!(k.check("localhost", 22, &key(A)), Check::Unknown);
        assert_eq!(
            k.check("localhost", 2200, &key(B)),
            Check::Revoked {
                file: "kh".into(),
                line: 2
            }
        );
    }

    #[test]
    fn append_then_known() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        append(&path, "h", 2200, &key(A)).unwrap();
        std::fs::write(&path, std::fs::read_to_string(&path).unwrap().trim_end()).unwrap();
        append(&path, "g", 22, &key(B)).unwrap();
        let mut k = KnownHosts::default();
        k.load(&path).unwrap();
        assert_eq!(k.check("h", 2200, &key(A)), Check::Known);
        assert_eq!(k.check("g", 22, &key(B)), Check::Known);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[h]:2200 ssh-ed25519 "), "{text}");
        assert_eq!(text.lines().count(), 2);
        assert!(fingerprint(&key(A)).starts_with("SHA256:"));
    }
}
