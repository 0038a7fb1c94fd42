//! Cryptographic building blocks shared by both protocols (temporary stub).
pub mod keys;
