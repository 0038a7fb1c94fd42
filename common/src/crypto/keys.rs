//! RSA keys from PEM files: loading, size checks, OAEP encryption and decryption.
//!
//! Four PEM forms are accepted, the ones `openssl` writes:
//!
//! ```text
//! -----BEGIN PRIVATE KEY-----       PKCS#8 PrivateKeyInfo       (openssl genrsa)
//! -----BEGIN RSA PRIVATE KEY-----   PKCS#1 RSAPrivateKey        (openssl genrsa -traditional)
//! -----BEGIN PUBLIC KEY-----        X.509 SubjectPublicKeyInfo  (openssl rsa -pubout)
//! -----BEGIN RSA PUBLIC KEY-----    PKCS#1 RSAPublicKey         (openssl rsa -RSAPublicKey_out)
//! ```
//!
//! aws-lc-rs only takes PKCS#8 private keys and SPKI public keys, so the PKCS#1 forms are
//! wrapped into those envelopes here with a few bytes of DER:
//!
//! ```text
//! PKCS#8 = SEQUENCE { INTEGER 0, AlgorithmIdentifier rsaEncryption, OCTET STRING { RSAPrivateKey } }
//! SPKI   = SEQUENCE { AlgorithmIdentifier rsaEncryption, BIT STRING { 0x00, RSAPublicKey } }
//! AlgorithmIdentifier rsaEncryption = 30 0d 06 09 2a 86 48 86 f7 0d 01 01 01 05 00
//! ```
//!
//! Keys under 2048 bits are refused at load time, with the size in the message. The v1
//! "ssl" mode alone also takes keys of 1024 to 2047 bits, which fleets migrating from the
//! Perl deploy still have ([`RsaPrivateKey::load_v1`], [`RsaPublicKey::load_v1`]): such a
//! key is [legacy](RsaPrivateKey::is_legacy), does OAEP-SHA-1 only (through
//! `crypto::legacy_rsa`), and refuses everything v2 would ask of it. Encrypted PEM files
//! are not supported.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    OaepAlgorithm, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    PublicEncryptingKey, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256,
};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;

use super::legacy_rsa::LegacyRsa;

/// The smallest RSA modulus we accept, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// The smallest RSA modulus the v1 "ssl" mode accepts (with a warning), in bits.
pub const MIN_LEGACY_RSA_BITS: usize = 1024;

/// What went wrong loading or using a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read.
    #[error("cannot read key file {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why reading it failed.
        cause: std::io::Error,
    },
    /// The text is not a usable unencrypted PEM RSA key of the expected kind.
    #[error("{origin}: {cause}")]
    Invalid {
        /// The file name, or `PEM text` for in-memory keys.
        origin: String,
        /// What is wrong with it.
        cause: String,
    },
    /// The key's modulus is shorter than [`MIN_RSA_BITS`] (or, for the v1 "ssl" mode,
    /// [`MIN_LEGACY_RSA_BITS`]).
    #[error("{origin}: RSA key of {bits} bits is too small (at least {min} bits required)")]
    TooSmall {
        /// The file name, or `PEM text` for in-memory keys.
        origin: String,
        /// The modulus length.
        bits: usize,
        /// The smallest length accepted where it was loaded.
        min: usize,
    },
    /// A legacy key (under [`MIN_RSA_BITS`], taken for the v1 "ssl" mode) was asked for
    /// something only larger keys do (OAEP-SHA-256, as v2 uses).
    #[error(
        "RSA key of {bits} bits serves the v1 \"ssl\" mode only (anything else needs at least {MIN_RSA_BITS} bits)"
    )]
    LegacyOnly {
        /// The modulus length.
        bits: usize,
    },
    /// An RSA operation failed: a wrong key, a corrupt ciphertext or a too-long plaintext.
    /// Deliberately without detail.
    #[error("RSA {0} failed")]
    Operation(&'static str),
}

/// The origin named in errors for keys given as text.
const PEM_TEXT: &str = "PEM text";

/// An RSA private key for OAEP decryption, with constant-time private-key operations
/// (aws-lc).
#[derive(Clone)]
pub struct RsaPrivateKey {
    key: PrivateKind,
    public: RsaPublicKey,
}

/// A key of at least [`MIN_RSA_BITS`] (aws-lc-rs), or a legacy one (aws-lc's C API).
#[derive(Clone)]
enum PrivateKind {
    Modern(PrivateDecryptingKey),
    Legacy(Arc<LegacyRsa>),
}

impl RsaPrivateKey {
    /// Loads a PKCS#8 or PKCS#1 PEM private key file of at least [`MIN_RSA_BITS`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::parse(&text, &path.display().to_string(), MIN_RSA_BITS)
    }

    /// Like [`RsaPrivateKey::load`], for the v1 "ssl" mode: also takes keys of
    /// [`MIN_LEGACY_RSA_BITS`] to [`MIN_RSA_BITS`] bits, as legacy keys
    /// ([`RsaPrivateKey::is_legacy`]); the caller warns about them.
    pub fn load_v1(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::parse(&text, &path.display().to_string(), MIN_LEGACY_RSA_BITS)
    }

    /// Parses PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        Self::parse(pem, PEM_TEXT, MIN_RSA_BITS)
    }

    /// [`RsaPrivateKey::from_pem`] with the v1 "ssl" mode's minimum, as
    /// [`RsaPrivateKey::load_v1`].
    pub fn from_pem_v1(pem: &str) -> Result<Self, KeyError> {
        Self::parse(pem, PEM_TEXT, MIN_LEGACY_RSA_BITS)
    }

    fn parse(text: &str, origin: &str, min_bits: usize) -> Result<Self, KeyError> {
        let invalid = |cause: String| KeyError::Invalid {
            origin: origin.to_owned(),
            cause,
        };
        let block = pem_block(
            text,
            &["PRIVATE KEY", "RSA PRIVATE KEY"],
            "a private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)",
        )
        .map_err(invalid)?;
        let (pkcs8, bits) = if block.label == "RSA PRIVATE KEY" {
            let bits = pkcs1_private_bits(&block.der)
                .ok_or_else(|| invalid("malformed PKCS#1 RSA private key".to_owned()))?;
            (wrap_pkcs1_private(&block.der), bits)
        } else {
            let bits = pkcs8_private_bits(&block.der).map_err(invalid)?;
            (block.der, bits)
        };
        check_bits(bits, origin, min_bits)?;
        if bits < MIN_RSA_BITS {
            let key = LegacyRsa::private_from_pkcs8(&pkcs8)
                .filter(|k| k.bits() == bits)
                .ok_or_else(|| invalid("RSA private key rejected".to_owned()))?;
            let public = pkcs8_public_spki(&pkcs8)
                .ok_or_else(|| invalid("malformed PKCS#8 private key".to_owned()))?;
            return Ok(RsaPrivateKey {
                key: PrivateKind::Legacy(Arc::new(key)),
                public: RsaPublicKey::from_spki(public, bits, origin)?,
            });
        }
        let key = PrivateDecryptingKey::from_pkcs8(&pkcs8)
            .map_err(|e| invalid(format!("RSA private key rejected: {}", e.description_())))?;
        let public = RsaPublicKey::from_encrypting_key(key.public_key(), origin)?;
        Ok(RsaPrivateKey {
            key: PrivateKind::Modern(key),
            public,
        })
    }

    /// Decrypts an RSA-OAEP block with SHA-1 and MGF1-SHA-1, empty label (OpenSSL's
    /// `RSA_PKCS1_OAEP_PADDING`, what the original Perl deploy sends).
    pub fn decrypt_oaep_sha1(&self, ciphertext: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            PrivateKind::Modern(key) => decrypt(key, &OAEP_SHA1_MGF1SHA1, ciphertext),
            PrivateKind::Legacy(key) => key
                .decrypt_oaep_sha1(ciphertext)
                .ok_or(KeyError::Operation("decryption")),
        }
    }

    /// Decrypts an RSA-OAEP block with SHA-256 and MGF1-SHA-256, empty label. A legacy
    /// key refuses.
    pub fn decrypt_oaep_sha256(&self, ciphertext: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            PrivateKind::Modern(key) => decrypt(key, &OAEP_SHA256_MGF1SHA256, ciphertext),
            PrivateKind::Legacy(_) => Err(KeyError::LegacyOnly { bits: self.bits() }),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> RsaPublicKey {
        self.public.clone()
    }

    /// The modulus length in bits.
    pub fn bits(&self) -> usize {
        match &self.key {
            PrivateKind::Modern(key) => key.key_size_bits(),
            PrivateKind::Legacy(key) => key.bits(),
        }
    }

    /// Whether this is a key under [`MIN_RSA_BITS`], loaded for the v1 "ssl" mode only.
    pub fn is_legacy(&self) -> bool {
        matches!(self.key, PrivateKind::Legacy(_))
    }
}

fn decrypt(
    key: &PrivateDecryptingKey,
    algorithm: &'static OaepAlgorithm,
    ciphertext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let failed = |_| KeyError::Operation("decryption");
    let oaep = OaepPrivateDecryptingKey::new(key.clone()).map_err(failed)?;
    let mut out = vec![0u8; oaep.min_output_size()];
    let plain = oaep
        .decrypt(algorithm, ciphertext, &mut out, None)
        .map_err(failed)?;
    Ok(plain.to_vec())
}

impl fmt::Debug for RsaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivateKey")
            .field("bits", &self.bits())
            .field("public", &self.public.fingerprint())
            .finish_non_exhaustive()
    }
}

/// An RSA public key for OAEP encryption.
#[derive(Clone)]
pub struct RsaPublicKey {
    key: PublicKind,
    spki: Vec<u8>,
}

/// A key of at least [`MIN_RSA_BITS`] (aws-lc-rs), or a legacy one (aws-lc's C API).
#[derive(Clone)]
enum PublicKind {
    Modern(PublicEncryptingKey),
    Legacy(Arc<LegacyRsa>),
}

impl RsaPublicKey {
    /// Loads an SPKI or PKCS#1 PEM public key file of at least [`MIN_RSA_BITS`].
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::parse(&text, &path.display().to_string(), MIN_RSA_BITS)
    }

    /// Like [`RsaPublicKey::load`], for the v1 "ssl" mode: also takes keys of
    /// [`MIN_LEGACY_RSA_BITS`] to [`MIN_RSA_BITS`] bits, as legacy keys
    /// ([`RsaPublicKey::is_legacy`]); the caller warns about them.
    pub fn load_v1(path: &Path) -> Result<Self, KeyError> {
        let text = read_key_file(path)?;
        Self::parse(&text, &path.display().to_string(), MIN_LEGACY_RSA_BITS)
    }

    /// Parses SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`) PEM text.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        Self::parse(pem, PEM_TEXT, MIN_RSA_BITS)
    }

    fn parse(text: &str, origin: &str, min_bits: usize) -> Result<Self, KeyError> {
        let invalid = |cause: String| KeyError::Invalid {
            origin: origin.to_owned(),
            cause,
        };
        let block = pem_block(
            text,
            &["PUBLIC KEY", "RSA PUBLIC KEY"],
            "a public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)",
        )
        .map_err(invalid)?;
        let (spki, bits) = if block.label == "RSA PUBLIC KEY" {
            let bits = pkcs1_public_bits(&block.der)
                .ok_or_else(|| invalid("malformed PKCS#1 RSA public key".to_owned()))?;
            (wrap_pkcs1_public(&block.der), bits)
        } else {
            let bits = spki_bits(&block.der).map_err(invalid)?;
            (block.der, bits)
        };
        check_bits(bits, origin, min_bits)?;
        Self::from_spki(spki, bits, origin)
    }

    /// The key of an SPKI whose modulus (`bits`) passed the caller's minimum.
    fn from_spki(spki: Vec<u8>, bits: usize, origin: &str) -> Result<Self, KeyError> {
        let invalid = |cause: String| KeyError::Invalid {
            origin: origin.to_owned(),
            cause,
        };
        if bits < MIN_RSA_BITS {
            let key = LegacyRsa::public_from_spki(&spki)
                .filter(|k| k.bits() == bits)
                .ok_or_else(|| invalid("RSA public key rejected".to_owned()))?;
            return Ok(RsaPublicKey {
                key: PublicKind::Legacy(Arc::new(key)),
                spki,
            });
        }
        let key = PublicEncryptingKey::from_der(&spki)
            .map_err(|e| invalid(format!("RSA public key rejected: {}", e.description_())))?;
        Self::from_encrypting_key(key, origin)
    }

    fn from_encrypting_key(key: PublicEncryptingKey, origin: &str) -> Result<Self, KeyError> {
        let bits = key.key_size_bits();
        check_bits(bits, origin, MIN_RSA_BITS)?;
        // Re-encode, so that the fingerprint does not depend on how the file spelled it.
        let spki = key
            .as_der()
            .map_err(|_| KeyError::Invalid {
                origin: origin.to_owned(),
                cause: "cannot encode the public key".to_owned(),
            })?
            .as_ref()
            .to_vec();
        Ok(RsaPublicKey {
            key: PublicKind::Modern(key),
            spki,
        })
    }

    /// Encrypts with RSA-OAEP, SHA-1 and MGF1-SHA-1, empty label (what a Perl
    /// `Crypt::OpenSSL::RSA` peer decrypts). Randomized: two calls differ.
    pub fn encrypt_oaep_sha1(&self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            PublicKind::Modern(key) => encrypt(key, &OAEP_SHA1_MGF1SHA1, plaintext),
            PublicKind::Legacy(key) => key
                .encrypt_oaep_sha1(plaintext)
                .ok_or(KeyError::Operation("encryption")),
        }
    }

    /// Encrypts with RSA-OAEP, SHA-256 and MGF1-SHA-256, empty label. A legacy key
    /// refuses.
    pub fn encrypt_oaep_sha256(&self, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            PublicKind::Modern(key) => encrypt(key, &OAEP_SHA256_MGF1SHA256, plaintext),
            PublicKind::Legacy(_) => Err(KeyError::LegacyOnly { bits: self.bits() }),
        }
    }

    /// The key as DER SubjectPublicKeyInfo (what `openssl pkey -pubin -outform DER` prints).
    pub fn spki_der(&self) -> Vec<u8> {
        self.spki.clone()
    }

    /// `SHA256:` and the unpadded base64 of the SHA-256 of [`RsaPublicKey::spki_der`], in
    /// the style of `ssh-keygen -l`.
    pub fn fingerprint(&self) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.spki);
        format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_ref()))
    }

    /// The modulus length in bits.
    pub fn bits(&self) -> usize {
        match &self.key {
            PublicKind::Modern(key) => key.key_size_bits(),
            PublicKind::Legacy(key) => key.bits(),
        }
    }

    /// Whether this is a key under [`MIN_RSA_BITS`], loaded for the v1 "ssl" mode only.
    pub fn is_legacy(&self) -> bool {
        matches!(self.key, PublicKind::Legacy(_))
    }
}

fn encrypt(
    key: &PublicEncryptingKey,
    algorithm: &'static OaepAlgorithm,
    plaintext: &[u8],
) -> Result<Vec<u8>, KeyError> {
    let failed = |_| KeyError::Operation("encryption");
    let oaep = OaepPublicEncryptingKey::new(key.clone()).map_err(failed)?;
    if plaintext.len() > oaep.max_plaintext_size(algorithm) {
        return Err(KeyError::Operation("encryption"));
    }
    let mut out = vec![0u8; oaep.ciphertext_size()];
    let ct = oaep
        .encrypt(algorithm, plaintext, &mut out, None)
        .map_err(failed)?;
    Ok(ct.to_vec())
}

impl PartialEq for RsaPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki == other.spki
    }
}

impl Eq for RsaPublicKey {}

impl fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublicKey")
            .field("bits", &self.bits())
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|cause| KeyError::Read {
        path: path.to_owned(),
        cause,
    })
}

fn check_bits(bits: usize, origin: &str, min: usize) -> Result<(), KeyError> {
    if bits < min {
        return Err(KeyError::TooSmall {
            origin: origin.to_owned(),
            bits,
            min,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// PEM

/// One decoded PEM block.
struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// Finds the first PEM block whose label is in `wanted` and decodes it.
fn pem_block(text: &str, wanted: &[&str], expected: &str) -> Result<PemBlock, String> {
    let mut found = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        if !wanted.contains(&label) {
            found.push(label.to_owned());
            continue;
        }
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for body in lines.by_ref() {
            if body == end {
                closed = true;
                break;
            }
            if body.contains(':') {
                // RFC 1421 headers: only ever seen on encrypted keys.
                if body.contains("ENCRYPTED") || body.starts_with("DEK-Info") {
                    return Err("encrypted PEM keys are not supported".to_owned());
                }
                continue;
            }
            b64.push_str(body);
        }
        if !closed {
            return Err(format!("missing {end}"));
        }
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| format!("bad base64 in PEM block {label}: {e}"))?;
        return Ok(PemBlock {
            label: label.to_owned(),
            der,
        });
    }
    if found.iter().any(|l| l == "ENCRYPTED PRIVATE KEY") {
        return Err("encrypted PEM keys are not supported".to_owned());
    }
    if found.is_empty() {
        Err(format!("no PEM block found; expected {expected}"))
    } else {
        Err(format!(
            "expected {expected}, found BEGIN {}",
            found.join(", BEGIN ")
        ))
    }
}

// ---------------------------------------------------------------------------------------
// DER: just enough to read modulus sizes and to wrap PKCS#1 into PKCS#8 / SPKI.

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;

/// `AlgorithmIdentifier { rsaEncryption, NULL }`.
const RSA_ALGORITHM_ID: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

/// The content octets of the rsaEncryption OID, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// Reads one DER TLV: returns its content and the bytes after it.
fn read_tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        // 0x80 is BER's indefinite length; more than 4 length octets is absurd for keys.
        if count == 0 || count > 4 {
            return None;
        }
        let (octets, after) = rest.split_at_checked(count)?;
        rest = after;
        octets
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    rest.split_at_checked(len)
}

/// The bit length of a DER INTEGER's content (a positive big-endian number).
fn integer_bits(content: &[u8]) -> usize {
    let significant: &[u8] = match content.iter().position(|&b| b != 0) {
        Some(start) => content.get(start..).unwrap_or_default(),
        None => &[],
    };
    match significant.first() {
        Some(&top) => (significant.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    }
}

/// Modulus size of a PKCS#1 `RSAPrivateKey { version, n, e, d, … }`.
fn pkcs1_private_bits(der: &[u8]) -> Option<usize> {
    let (seq, _) = read_tlv(der, TAG_SEQUENCE)?;
    let (_version, rest) = read_tlv(seq, TAG_INTEGER)?;
    let (modulus, _) = read_tlv(rest, TAG_INTEGER)?;
    Some(integer_bits(modulus))
}

/// Modulus size of a PKCS#1 `RSAPublicKey { n, e }`.
fn pkcs1_public_bits(der: &[u8]) -> Option<usize> {
    let (seq, _) = read_tlv(der, TAG_SEQUENCE)?;
    let (modulus, rest) = read_tlv(seq, TAG_INTEGER)?;
    let (_exponent, _) = read_tlv(rest, TAG_INTEGER)?;
    Some(integer_bits(modulus))
}

/// Checks an `AlgorithmIdentifier` is rsaEncryption.
fn is_rsa_algorithm(alg: &[u8]) -> bool {
    read_tlv(alg, TAG_OID).is_some_and(|(oid, _)| oid == RSA_ENCRYPTION_OID)
}

/// Modulus size of a PKCS#8 `PrivateKeyInfo` holding an RSA key.
fn pkcs8_private_bits(der: &[u8]) -> Result<usize, String> {
    let malformed = || "malformed PKCS#8 private key".to_owned();
    let (seq, _) = read_tlv(der, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (_version, rest) = read_tlv(seq, TAG_INTEGER).ok_or_else(malformed)?;
    let (alg, rest) = read_tlv(rest, TAG_SEQUENCE).ok_or_else(malformed)?;
    if !is_rsa_algorithm(alg) {
        return Err("not an RSA key".to_owned());
    }
    let (inner, _) = read_tlv(rest, TAG_OCTET_STRING).ok_or_else(malformed)?;
    pkcs1_private_bits(inner).ok_or_else(malformed)
}

/// The public half of a PKCS#8 RSA private key, as an SPKI: `RSAPublicKey { n, e }` from
/// its `RSAPrivateKey { version, n, e, … }`.
fn pkcs8_public_spki(der: &[u8]) -> Option<Vec<u8>> {
    let (seq, _) = read_tlv(der, TAG_SEQUENCE)?;
    let (_version, rest) = read_tlv(seq, TAG_INTEGER)?;
    let (_alg, rest) = read_tlv(rest, TAG_SEQUENCE)?;
    let (inner, _) = read_tlv(rest, TAG_OCTET_STRING)?;
    let (key, _) = read_tlv(inner, TAG_SEQUENCE)?;
    let (_version, rest) = read_tlv(key, TAG_INTEGER)?;
    let (modulus, rest) = read_tlv(rest, TAG_INTEGER)?;
    let (exponent, _) = read_tlv(rest, TAG_INTEGER)?;
    let mut content = der_tlv(TAG_INTEGER, modulus);
    content.extend_from_slice(&der_tlv(TAG_INTEGER, exponent));
    Some(wrap_pkcs1_public(&der_tlv(TAG_SEQUENCE, &content)))
}

/// Modulus size of an SPKI holding an RSA key.
fn spki_bits(der: &[u8]) -> Result<usize, String> {
    let malformed = || "malformed SubjectPublicKeyInfo".to_owned();
    let (seq, _) = read_tlv(der, TAG_SEQUENCE).ok_or_else(malformed)?;
    let (alg, rest) = read_tlv(seq, TAG_SEQUENCE).ok_or_else(malformed)?;
    if !is_rsa_algorithm(alg) {
        return Err("not an RSA key".to_owned());
    }
    let (bits, _) = read_tlv(rest, TAG_BIT_STRING).ok_or_else(malformed)?;
    match bits.split_first() {
        Some((0, key)) => pkcs1_public_bits(key).ok_or_else(malformed),
        _ => Err(malformed()),
    }
}

/// Encodes one DER TLV with a definite length.
fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let octets: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | octets.len() as u8);
        out.extend_from_slice(&octets);
    }
    out.extend_from_slice(content);
    out
}

/// PKCS#1 `RSAPrivateKey` → PKCS#8 `PrivateKeyInfo`.
fn wrap_pkcs1_private(pkcs1: &[u8]) -> Vec<u8> {
    let mut content = vec![TAG_INTEGER, 0x01, 0x00];
    content.extend_from_slice(&RSA_ALGORITHM_ID);
    content.extend_from_slice(&der_tlv(TAG_OCTET_STRING, pkcs1));
    der_tlv(TAG_SEQUENCE, &content)
}

/// PKCS#1 `RSAPublicKey` → `SubjectPublicKeyInfo`.
fn wrap_pkcs1_public(pkcs1: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(pkcs1.len() + 1);
    bits.push(0x00);
    bits.extend_from_slice(pkcs1);
    let mut content = RSA_ALGORITHM_ID.to_vec();
    content.extend_from_slice(&der_tlv(TAG_BIT_STRING, &bits));
    der_tlv(TAG_SEQUENCE, &content)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/keys")
            .join(name)
    }

    fn vectors(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/spec/legacy-vectors")
            .join(name)
    }

    const FIXTURE_FINGERPRINT: &str = "SHA256:UjRu/nF35ADaeRAJD1jq6lePBXPJYkPcoZtN28TpAIo";

    #[test]
    fn loads_the_vector_keys() {
        let private = RsaPrivateKey::load(&vectors("agent_private.pem")).unwrap();
        let public = RsaPublicKey::load(&vectors("agent_public.pem")).unwrap();
        assert_eq!(private.bits(), 2048);
        assert_eq!(public.bits(), 2048);
        assert_eq!(private.public_key(), public);
        // openssl pkey -pubin -in agent_public.pem -outform DER | sha256 | base64
        assert_eq!(
            public.fingerprint(),
            "SHA256:VgKID+q+cOGsYBOWwAUJTwahXVVdCqJ3HL6fSmAXrK0"
        );
        let proxy = RsaPublicKey::load(&vectors("proxy_public.pem")).unwrap();
        assert_ne!(proxy, public);
    }

    #[test]
    fn pkcs1_and_spki_forms_are_the_same_key() {
        let private = RsaPrivateKey::load(&testdata("pkcs1_private.pem")).unwrap();
        let pkcs1 = RsaPublicKey::load(&testdata("pkcs1_public.pem")).unwrap();
        let spki = RsaPublicKey::load(&testdata("spki_public.pem")).unwrap();
        assert_eq!(pkcs1, spki);
        assert_eq!(private.public_key(), spki);
        assert_eq!(spki.fingerprint(), FIXTURE_FINGERPRINT);
        assert_eq!(pkcs1.fingerprint(), FIXTURE_FINGERPRINT);
        assert_eq!(spki.spki_der().len(), 294);
    }

    #[test]
    fn round_trips_both_paddings() {
        let private = RsaPrivateKey::load(&testdata("pkcs1_private.pem")).unwrap();
        let public = RsaPublicKey::load(&testdata("pkcs1_public.pem")).unwrap();
        let msg = b"0123456789abcdef";
        let ct1 = public.encrypt_oaep_sha1(msg).unwrap();
        assert_eq!(ct1.len(), 256);
        assert_ne!(ct1, public.encrypt_oaep_sha1(msg).unwrap(), "randomized");
        assert_eq!(private.decrypt_oaep_sha1(&ct1).unwrap(), msg);
        assert!(private.decrypt_oaep_sha256(&ct1).is_err());
        let ct256 = public.encrypt_oaep_sha256(msg).unwrap();
        assert_eq!(private.decrypt_oaep_sha256(&ct256).unwrap(), msg);
        assert!(private.decrypt_oaep_sha1(&ct256).is_err());
    }

    #[test]
    fn decrypts_openssl_ciphertexts() {
        let private = RsaPrivateKey::load(&testdata("pkcs1_private.pem")).unwrap();
        for (file, sha256) in [("oaep_sha1.b64", false), ("oaep_sha256.b64", true)] {
            let b64 = std::fs::read_to_string(testdata(file)).unwrap();
            let ct = STANDARD.decode(b64.trim()).unwrap();
            let pt = if sha256 {
                private.decrypt_oaep_sha256(&ct)
            } else {
                private.decrypt_oaep_sha1(&ct)
            };
            assert_eq!(pt.unwrap(), b"sixteen-byte-key", "{file}");
        }
    }

    #[test]
    fn bad_ciphertexts_fail_without_detail() {
        let private = RsaPrivateKey::load(&testdata("pkcs1_private.pem")).unwrap();
        for ct in [
            &[][..],
            &[0u8; 10][..],
            &[0u8; 256][..],
            &[0xffu8; 256][..],
            &[1u8; 300][..],
        ] {
            let err = private.decrypt_oaep_sha1(ct).unwrap_err();
            assert_eq!(err.to_string(), "RSA decryption failed");
        }
        let public = private.public_key();
        assert!(public.encrypt_oaep_sha1(&[0u8; 214]).is_ok());
        assert!(public.encrypt_oaep_sha1(&[0u8; 215]).is_err());
    }

    #[test]
    fn rejects_small_keys_with_their_size() {
        for name in ["small_pkcs8_private.pem", "small_pkcs1_private.pem"] {
            let err = RsaPrivateKey::load(&testdata(name)).unwrap_err();
            let msg = err.to_string();
            assert!(
                matches!(err, KeyError::TooSmall { bits: 1024, .. }),
                "{msg}"
            );
            assert!(msg.contains(name) && msg.contains("1024 bits"), "{msg}");
        }
        for name in ["small_spki_public.pem", "small_pkcs1_public.pem"] {
            let err = RsaPublicKey::load(&testdata(name)).unwrap_err();
            assert!(
                matches!(err, KeyError::TooSmall { bits: 1024, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn legacy_keys_serve_the_v1_mode_only() {
        let pkcs8 = RsaPrivateKey::load_v1(&testdata("small_pkcs8_private.pem")).unwrap();
        let pkcs1 = RsaPrivateKey::load_v1(&testdata("small_pkcs1_private.pem")).unwrap();
        let spki = RsaPublicKey::load_v1(&testdata("small_spki_public.pem")).unwrap();
        let pkcs1_public = RsaPublicKey::load_v1(&testdata("small_pkcs1_public.pem")).unwrap();
        for key in [&pkcs8, &pkcs1] {
            assert!(key.is_legacy());
            assert_eq!(key.bits(), 1024);
            assert_eq!(key.public_key(), spki, "the public half matches the file");
        }
        assert!(spki.is_legacy() && pkcs1_public.is_legacy());
        assert_eq!(spki, pkcs1_public);
        assert_eq!(spki.bits(), 1024);

        // OAEP-SHA-1 both ways, randomized, the size of the modulus.
        let msg = b"0123456789abcdef";
        let ct = spki.encrypt_oaep_sha1(msg).unwrap();
        assert_eq!(ct.len(), 128);
        assert_ne!(ct, spki.encrypt_oaep_sha1(msg).unwrap(), "randomized");
        assert_eq!(pkcs8.decrypt_oaep_sha1(&ct).unwrap(), msg);
        assert_eq!(pkcs1.decrypt_oaep_sha1(&ct).unwrap(), msg);
        assert!(spki.encrypt_oaep_sha1(&[0u8; 86]).is_ok());
        assert!(spki.encrypt_oaep_sha1(&[0u8; 87]).is_err());
        for bad in [&[][..], &[0u8; 10][..], &[0u8; 128][..], &[0xffu8; 128][..]] {
            let err = pkcs8.decrypt_oaep_sha1(bad).unwrap_err();
            assert_eq!(err.to_string(), "RSA decryption failed");
        }

        // Nothing v2 would ask.
        assert!(matches!(
            pkcs8.decrypt_oaep_sha256(&ct),
            Err(KeyError::LegacyOnly { bits: 1024 })
        ));
        assert!(matches!(
            spki.encrypt_oaep_sha256(msg),
            Err(KeyError::LegacyOnly { bits: 1024 })
        ));

        // A large key loaded for v1 is a modern key.
        let modern = RsaPrivateKey::load_v1(&testdata("pkcs1_private.pem")).unwrap();
        assert!(!modern.is_legacy());
        assert!(!modern.public_key().is_legacy());

        // Interoperates with OpenSSL (the Perl deploy's Crypt::OpenSSL::RSA), if present.
        let dir = tempfile::tempdir().unwrap();
        let ct_path = dir.path().join("ct");
        std::fs::write(&ct_path, &ct).unwrap();
        let decrypted = std::process::Command::new("openssl")
            .args([
                "pkeyutl",
                "-decrypt",
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-inkey",
            ])
            .arg(testdata("small_pkcs8_private.pem"))
            .arg("-in")
            .arg(&ct_path)
            .output();
        match decrypted {
            Ok(out) => assert_eq!(
                out.stdout,
                msg,
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("note: openssl not run ({e}); skipped the cross-check"),
        }
    }

    #[test]
    fn errors_name_the_file_and_cause() {
        let err = RsaPrivateKey::load(Path::new("/nonexistent/key.pem")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/key.pem") && msg.contains("No such file"),
            "{msg}"
        );

        let err = RsaPrivateKey::load(&testdata("spki_public.pem")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("spki_public.pem") && msg.contains("found BEGIN PUBLIC KEY"),
            "{msg}"
        );

        let err = RsaPublicKey::load(&testdata("pkcs1_private.pem")).unwrap_err();
        assert!(
            err.to_string().contains("found BEGIN RSA PRIVATE KEY"),
            "{err}"
        );

        let err = RsaPublicKey::from_pem("hello").unwrap_err();
        assert_eq!(
            err.to_string(),
            "PEM text: no PEM block found; expected a public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)"
        );
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = RsaPrivateKey::from_pem(encrypted).unwrap_err();
        assert!(err
            .to_string()
            .contains("encrypted PEM keys are not supported"));
        let legacy_encrypted = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        let err = RsaPrivateKey::from_pem(legacy_encrypted).unwrap_err();
        assert!(err
            .to_string()
            .contains("encrypted PEM keys are not supported"));
    }

    #[test]
    fn garbage_never_panics() {
        let text = std::fs::read_to_string(testdata("pkcs1_private.pem")).unwrap();
        let block = pem_block(&text, &["RSA PRIVATE KEY"], "").unwrap();
        // Every truncation of the DER, re-armoured, must fail cleanly.
        for cut in 0..block.der.len() {
            let pem = format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
                STANDARD.encode(&block.der[..cut])
            );
            assert!(RsaPrivateKey::from_pem(&pem).is_err());
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                STANDARD.encode(&wrap_pkcs1_private(&block.der)[..cut])
            );
            assert!(RsaPrivateKey::from_pem(&pem).is_err());
        }
        let text = std::fs::read_to_string(testdata("small_pkcs1_private.pem")).unwrap();
        let block = pem_block(&text, &["RSA PRIVATE KEY"], "").unwrap();
        for cut in 0..block.der.len() {
            let pem = format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----\n",
                STANDARD.encode(&block.der[..cut])
            );
            assert!(RsaPrivateKey::from_pem_v1(&pem).is_err());
        }
        assert!(
            RsaPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\n!!\n-----END PUBLIC KEY-----")
                .is_err()
        );
        assert!(RsaPublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA").is_err());
        assert!(read_tlv(&[0x30, 0x80], TAG_SEQUENCE).is_none());
        assert!(read_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1], TAG_SEQUENCE).is_none());
        assert!(read_tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff], TAG_SEQUENCE).is_none());
    }

    #[test]
    fn pkcs1_wrapping_matches_openssl() {
        // The SPKI openssl wrote and our wrapping of the PKCS#1 form must be identical bytes.
        let pkcs1 = std::fs::read_to_string(testdata("pkcs1_public.pem")).unwrap();
        let spki = std::fs::read_to_string(testdata("spki_public.pem")).unwrap();
        let pkcs1 = pem_block(&pkcs1, &["RSA PUBLIC KEY"], "").unwrap().der;
        let spki = pem_block(&spki, &["PUBLIC KEY"], "").unwrap().der;
        assert_eq!(wrap_pkcs1_public(&pkcs1), spki);
        assert_eq!(der_tlv(0x04, &[0; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(der_tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01]), 1);
        assert_eq!(integer_bits(&[]), 0);
    }
}
