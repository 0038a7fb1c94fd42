//! Test helpers shared by the integration tests of `deploy-agent` and `deploy-proxy`:
//! everything needed to run the real binaries on loopback and talk to them.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`env`](mod@env) | constants (keys, time bounds), the shared spec's test keys, `etc/`, [`eventually`] |
//! | [`bins`] | where the workspace's binaries are (built on demand when missing) |
//! | [`sandbox`] | [`Sandbox`] temporary directories, source trees and their comparison |
//! | [`procfs`] | `/proc` readers (state, parent, children, command line, memory) and signals |
//! | [`nats`] | real `nats-server` processes: one, or a routed cluster, with users and permissions, with or without JetStream; a server killable mid-test |
//! | [`net`] | free and refusing ports, [`Silent`] peers that accept and never answer |
//! | [`netns`] | [`Lab`](netns::Lab): hosts as network namespaces on a bridge, shaped, cut, black-holed, lossy |
//! | [`rsyncd`] | [`RsyncDaemon`]: a real `rsync --daemon` with read-only modules; [`RsyncSource`], a source tree it serves |
//! | [`fleet`] | [`WebFleet`]: agents whose group `web` pulls one source (relay and namespace tests) |
//! | [`daemon`] | [`Daemon`]: a `--foreground` server process learnt from its `listening on` lines |
//! | [`agent`] | [`AgentConfig`]: an agent ini around a sandbox, started as an [`Agent`] |
//! | [`proxy`] | [`ProxyConfig`]: a proxy ini and its API file, started as a [`Proxy`] |
//! | [`clients`] | in-process clients of the three wires: v2, v1 plain, v1 "ssl" |
//! | [`sshd`] | ten real `sshd` instances and a jump host on loopback, user and host keys |
//! | [`command`] | running any command (deploy-client, curl) under a deadline, lines timestamped; [`Spawned`] to interact with one |
//! | [`shelf`] | [`Shelf`]: release artifacts and the manifests deploying them |
//! | [`scenario`] | Octopoda's helloWorld scenario folder, copied with its nodes renamed |
//!
//! # Design
//!
//! Tests drive real processes (agents, proxies, rsync, the client), so tokio's paused
//! clock cannot stand in for them; instead every wait is bounded: each network exchange
//! runs under a timeout, each polling loop has a deadline, and each child process is
//! killed (and its output replayed on a failing test) when its handle drops. Every test
//! gets its own sandbox and port-0 listeners, so tests run in parallel.
//!
//! The crate is a regular library (`publish = false`) rather than a `tests/util.rs`
//! copied between crates: the agent's tests re-export it, the proxy's tests use it to
//! start agents as well as proxies.

pub mod agent;
pub mod bins;
pub mod clients;
pub mod command;
pub mod daemon;
pub mod env;
pub mod fleet;
pub mod nats;
pub mod net;
pub mod netns;
pub mod procfs;
pub mod proxy;
pub mod rsyncd;
pub mod sandbox;
pub mod scenario;
pub mod shelf;
pub mod sshd;

pub use agent::{start_agent, Agent, AgentConfig};
pub use clients::*;
pub use command::{deploy_client, openssl, run_bin, run_bin_bytes, run_command, Output, Spawned};
pub use daemon::Daemon;
pub use env::*;
pub use fleet::WebFleet;
pub use nats::NatsCluster;
pub use net::*;
pub use procfs::*;
pub use proxy::{Proxy, ProxyConfig};
pub use rsyncd::{RsyncDaemon, RsyncSource};
pub use sandbox::*;
