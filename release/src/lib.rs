//! Releases on a host: stretcher's manifests, artifacts fetched and verified, unpacked
//! by the confined extractor, and — ours — release directories with an atomic switch,
//! rollback and confirm-or-revert.
//!
//! # Design
//!
//! * A [`manifest::Manifest`] is stretcher's YAML, rendered first as a template
//!   (`env`, `must_env`), so stretcher's manifests work unchanged.
//! * [`fetch`] streams `file://`, `http(s)://` and `s3://` sources to a local file while
//!   hashing (constant memory), with stretcher's retry, timeout and bandwidth knobs; the
//!   checksum of a download is verified before a byte is unpacked (a local `file://`
//!   artifact is unpacked while hashed into a staging directory, discarded unless the
//!   digest holds: nothing is switched before it is verified).
//! * [`unpack`] tells tar, gzip and zstd apart by content and hands the stream to
//!   [`deploy_extract`]: nothing can be written outside the release directory,
//!   whatever the archive says.
//! * [`deploy`] runs the two phases (prepare: fetch, verify, pre, unpack; activate: the
//!   strategy, then post) and stretcher's success/failure hooks, so that a fleet can
//!   prepare everywhere before switching anywhere.
//! * [`layout`] is the `sync_strategy: release` layout: `<dest>.releases/<id>`, `dest`
//!   a symbolic link replaced with `rename(2)`, an append-only history, keep-K pruning.
//! * [`ops`]: rollback, confirm, and the revert of unconfirmed switches.
//! * [`event`]: stretcher's event input (a URL line, or Consul's JSON array) and the
//!   record of applied events.
//!
//! This crate carries the HTTP client and the YAML parser, so only programs that deploy
//! releases link them.

pub mod commands;
pub mod deploy;
pub mod event;
pub mod fetch;
pub mod layout;
pub mod manifest;
pub mod ops;
pub mod unpack;

pub use manifest::Manifest;
