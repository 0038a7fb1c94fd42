//! deploy-proxy's library half: the pieces of the proxy that are pure functions of their
//! input, so that tests and the fuzz targets (`fuzz/fuzz_targets/http_api.rs`) can call
//! them without starting a daemon.
//!
//! # Layout
//!
//! * [`api`]: an HTTP API request (method, path, query, headers, body) → the order
//!   [`Request`](deploy_common::order::Request) it asks for, or the error status to answer.
//!
//! The daemon itself (flags, routes, relay, the HTTP server around [`api`]) is the
//! `deploy-proxy` binary (`src/main.rs`).

pub mod api;
