//! Agents' static X25519 identity keys, and the callers' pins of them.
//!
//! Every agent served over NATS has one static X25519 key: by default
//! `<state_dir>/nats-key`, created (mode 0600) the first time it is needed, or the
//! file `[nats] key` names. Its public half is what callers pin, per agent name, in a
//! file (`[nats] agent_keys` in the proxy's and the client's configuration,
//! `--nats-agent-keys`):
//!
//! ```text
//! nats-key      = base64(32-byte X25519 private key) "\n"          (the agent's, 0600)
//! agent_keys    = line*                                            (the callers')
//!   line        = <agent name> SP <base64(32-byte X25519 public key)> | "# …" | ""
//! ```
//!
//! `deploy-agent --print-nats-key` prints the agent's lines (its name and each alias),
//! ready to append to the callers' file: that is how an agent is enrolled. A reply
//! from an agent is accepted only if it is bound to the key pinned for its name (see
//! [`crate::envelope`]); a caller with no pin for a name sends it nothing and reports
//! why. There is no trust on first use: a one-shot client has nowhere safe to remember
//! a key, and a key learnt from the bus is the forger's as easily as the agent's.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, X25519};
use aws_lc_rs::encoding::{AsBigEndian, Curve25519SeedBin};
use base64::Engine as _;

/// The length of an X25519 key, private or public.
pub const KEY_LEN: usize = 32;

/// Why an identity key or a pin file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, creating or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The key file does not hold one base64 X25519 key.
    #[error("{}: not a NATS identity key (one line: 32 bytes in base64)", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The key file may be read by others than its owner.
    #[error("{}: readable by group or others (mode {mode:o}); chmod 600 it", path.display())]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A configured key file is missing (only the default one is created).
    #[error("{}: no such key file (only the default <state_dir>/nats-key is created)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A line of a pin file is not `<name> <base64 key>`.
    #[error("{}:{line}: {reason}", path.display())]
    BadPin {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The crypto library failed.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

/// An agent's static X25519 key.
pub struct Identity {
    key: PrivateKey,
    public: [u8; KEY_LEN],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public_base64())
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Identity {
    /// A new random key.
    pub fn generate() -> Result<Identity, IdentityError> {
        let key = PrivateKey::generate(&X25519).map_err(|_| IdentityError::Crypto("x25519"))?;
        Identity::from_key(key)
    }

    fn from_key(key: PrivateKey) -> Result<Identity, IdentityError> {
        let public: [u8; KEY_LEN] = key
            .compute_public_key()
            .ok()
            .and_then(|k| k.as_ref().try_into().ok())
            .ok_or(IdentityError::Crypto("x25519 public key"))?;
        Ok(Identity { key, public })
    }

    /// The public half, as callers pin it.
    pub fn public(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// The public half in base64 (the second field of a pin line).
    pub fn public_base64(&self) -> String {
        b64().encode(self.public)
    }

    /// X25519 of this key with `peer` (a public key from the wire).
    pub(crate) fn agree(&self, peer: &[u8]) -> Result<Vec<u8>, crate::envelope::EnvelopeError> {
        agreement::agree(
            &self.key,
            UnparsedPublicKey::new(&X25519, peer),
            crate::envelope::EnvelopeError::Crypto("x25519 agreement"),
            |s| Ok(s.to_vec()),
        )
    }

    /// Loads the key in `path`. When the file does not exist and `create` holds, a new
    /// key is written there first (mode 0600, never through a symbolic link; two
    /// processes racing both end with the one that won). Also returns whether it
    /// was created.
    pub fn load_or_create(path: &Path, create: bool) -> Result<(Identity, bool), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        match Identity::load(path) {
            Err(IdentityError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                if !create {
                    return Err(IdentityError::Missing {
                        path: path.to_owned(),
                    });
                }
            }
            other => return other.map(|id| (id, false)),
        }
        let identity = Identity::generate()?;
        let seed: Curve25519SeedBin<'_> = identity
            .key
            .as_be_bytes()
            .map_err(|_| IdentityError::Crypto("x25519 export"))?;
        let text = format!("{}\n", b64().encode(seed.as_ref()));
        // Written aside, then linked into place: the key appears whole or not at all,
        // and a key another process linked first is kept (and loaded) instead.
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io)?;
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
                }
                Ok((identity, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Identity::load(path).map(|id| (id, false))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Loads the key in `path`, refusing a file others may read.
    pub fn load(path: &Path) -> Result<Identity, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { file }, &mut text).map_err(io)?;
        let bad = || IdentityError::BadKey {
            path: path.to_owned(),
        };
        let bytes = b64().decode(text.trim()).map_err(|_| bad())?;
        if bytes.len() != KEY_LEN {
            return Err(bad());
        }
        let key = PrivateKey::from_private_key(&X25519, &bytes).map_err(|_| bad())?;
        Identity::from_key(key)
    }
}

/// The callers' pins: each agent name's public key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentKeys {
    keys: HashMap<String, [u8; KEY_LEN]>,
}

impl AgentKeys {
    /// No pin at all: every agent is refused.
    pub fn none() -> AgentKeys {
        AgentKeys::default()
    }

    /// Pins `name` to `public`.
    pub fn pin(&mut self, name: &str, public: [u8; KEY_LEN]) {
        self.keys.insert(name.to_owned(), public);
    }

    /// The key pinned for `name`.
    pub fn get(&self, name: &str) -> Option<&[u8; KEY_LEN]> {
        self.keys.get(name)
    }

    /// How many names are pinned.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reads a pin file (see the module's format).
    pub fn load(path: &Path) -> Result<AgentKeys, IdentityError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.to_owned(),
            source,
        })?;
        AgentKeys::parse(&text, path)
    }

    /// Parses the text of a pin file; `path` names it in errors. A name pinned twice
    /// to different keys is an error (which one would be the agent?).
    pub fn parse(text: &str, path: &Path) -> Result<AgentKeys, IdentityError> {
        let mut keys = AgentKeys::none();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| IdentityError::BadPin {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(name), Some(key), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("expected `<agent name> <base64 key>`".into()));
            };
            if !deploy_common::config::nats::is_subject_token(name) {
                return Err(bad(format!("{name:?} is not an agent name")));
            }
            let public: [u8; KEY_LEN] = b64()
                .decode(key)
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| bad(format!("{name}: the key is not 32 bytes in base64")))?;
            match keys.keys.get(name) {
                Some(old) if *old != public => {
                    return Err(bad(format!("{name} is pinned twice to different keys")))
                }
                _ => keys.pin(name, public),
            }
        }
        Ok(keys)
    }

    /// The pin lines of agent `names` holding `identity` (what `deploy-agent
    /// --print-nats-key` prints).
    pub fn lines(identity: &Identity, names: &[String]) -> String {
        names
            .iter()
            .map(|n| format!("{n} {}\n", identity.public_base64()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_0600_then_loaded() {
        let dir = std::env::temp_dir().join(format!("deploy-nats-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nats-key");
        let _ = std::fs::remove_file(&path);
        assert!(matches!(
            Identity::load_or_create(&path, false),
            Err(IdentityError::Missing { .. })
        ));
        let (a, created) = Identity::load_or_create(&path, true).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (b, created) = Identity::load_or_create(&path, true).unwrap();
        assert!(!created);
        assert_eq!(a.public(), b.public());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(IdentityError::Exposed { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_shipped_pin_file_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../etc/nats/agent-keys"
        ));
        let keys = AgentKeys::load(path).unwrap();
        assert!(keys.is_empty(), "the sample pins nobody");
        // Its commented example is a valid line.
        let text = std::fs::read_to_string(path).unwrap();
        let example = text
            .lines()
            .rev()
            .find(|l| l.starts_with("# web1 "))
            .unwrap();
        let keys = AgentKeys::parse(example.trim_start_matches("# "), path).unwrap();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn pin_files_parse_and_name_their_errors() {
        let id = Identity::generate().unwrap();
        let text = format!(
            "# enrolled\n\n{}",
            AgentKeys::lines(&id, &["web1".into(), "web1-old".into()])
        );
        let keys = AgentKeys::parse(&text, Path::new("/etc/k")).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get("web1"), Some(id.public()));
        assert!(keys.get("web2").is_none());
        let other = Identity::generate().unwrap();
        for (bad, want) in [
            ("web1\n".to_owned(), "/etc/k:1: expected"),
            ("web1 abc\n".to_owned(), "/etc/k:1: web1: the key"),
            ("a.b AAAA\n".to_owned(), "/etc/k:1: \"a.b\""),
            (
                format!("{text}web1 {}\n", other.public_base64()),
                "/etc/k:5: web1 is pinned twice",
            ),
        ] {
            let e = AgentKeys::parse(&bad, Path::new("/etc/k"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
