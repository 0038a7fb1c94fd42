//! Everything the deploy programs share: the order model, the wire protocols (v2 and the
//! legacy v1), their cryptography, configuration, access checks, the rsync driver, the
//! fan-out engine and the preforking server core.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`order`] | order names, parameters, the reply envelope and its JSON rendering |
//! | [`legacy`] | the original Perl deploy's HTTP-like framing, `auth_key` and "ssl" envelope |
//! | [`wire`] | the v2 protocol: frames, handshake, encrypted connection |
//! | [`crypto`] | RSA key loading and the primitives both protocols need |
//! | [`config`] | the INI dialect and the typed agent/proxy configuration |
//! | [`access`] | `[allow::hosts]` and `[allow::paths]` checks |
//! | [`rsync`] | rsync argument vectors, output parsing, background transfers |
//! | [`server`] | prefork master/worker, signals, privileges, logging |
//! | [`fanout`] | one order to many targets, concurrently, as a stream of results |
//! | [`gate`] | the connect stage of strict runs: every target connected, or nothing starts |
//! | [`lock`] | the cluster lock: the agent's leases and the all-or-nothing locker |
//! | [`nodeset`] | ClusterShell node sets (`web[01-20]`, `!web05`) → host names |
//! | [`transport`] | delivering one order to one target (v2 or v1) |
//! | [`upload`] | files walked once and streamed as tar (`upload`, `sync`) |
//! | [`report`] | an error and its causes for a person, each message once |
//! | `ssh` | agentless hosts over native SSH (feature `ssh`) |
//!
//! # Design
//!
//! Dependencies point one way: the binaries use these modules, and `order` and `config`
//! sit at the bottom knowing nothing of sockets or crypto. Errors are typed per layer
//! (`thiserror`); no code reachable from the network may panic.

pub mod access;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod crypto;
pub mod fanout;
mod fsutil;
pub mod gate;
pub mod legacy;
pub mod lock;
pub mod nodeset;
pub mod order;
pub mod report;
pub mod rsync;
pub mod server;
#[cfg(feature = "ssh")]
pub mod ssh;
pub mod target;
pub mod transport;
pub mod upload;
pub mod wire;
