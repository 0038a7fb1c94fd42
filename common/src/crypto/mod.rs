//! Cryptography shared by both protocols.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`keys`] | RSA keys from PEM files (PKCS#8, PKCS#1, SPKI), OAEP with SHA-1 or SHA-256 |
//!
//! # Design
//!
//! All RSA goes through aws-lc-rs, whose private-key operations are constant-time: the
//! agent and the proxy decrypt attacker-chosen RSA blocks on a network port, which is the
//! case the pure-Rust `rsa` crate's advisory (RUSTSEC-2023-0071, Marvin) is about.
//! aws-lc-rs reads only PKCS#8 and SPKI DER, so [`keys`] strips the PEM armour and wraps
//! PKCS#1 keys itself. Errors are [`KeyError`]; decryption failures carry no detail.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod keys;

pub use keys::{KeyError, RsaPrivateKey, RsaPublicKey, MIN_RSA_BITS};
