//! Cryptography shared by both protocols.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`keys`] | RSA keys from PEM files (PKCS#8, PKCS#1, SPKI), OAEP with SHA-1 or SHA-256 |
//! | `legacy_rsa` | OAEP-SHA-1 with 1024- to 2047-bit keys (v1 "ssl" only), through aws-lc's C API |
//!
//! # Design
//!
//! All RSA goes through aws-lc-rs, whose private-key operations are constant-time: the
//! agent and the proxy decrypt attacker-chosen RSA blocks on a network port, which is the
//! case the pure-Rust `rsa` crate's advisory (RUSTSEC-2023-0071, Marvin) is about.
//! aws-lc-rs reads only PKCS#8 and SPKI DER, so [`keys`] strips the PEM armour and wraps
//! PKCS#1 keys itself. aws-lc-rs refuses keys under 2048 bits; the v1 "ssl" mode takes
//! them from migrating fleets (with a warning), through the same aws-lc's C API
//! (`legacy_rsa`, the only `unsafe` code here). Errors are [`KeyError`]; decryption
//! failures carry no detail.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod keys;
mod legacy_rsa;

pub use keys::{KeyError, RsaPrivateKey, RsaPublicKey, MIN_LEGACY_RSA_BITS, MIN_RSA_BITS};
