//! Integration tests of `deploy-agent`: the real binary, real sockets, a real rsync
//! daemon, and clients for all three wires (v2, v1 plain, v1 "ssl").
//!
//! One test binary (STYLE.md §8) whose modules follow the test plan:
//!
//! | module | covers |
//! |---|---|
//! | [`orders`] | every order end to end over each wire |
//! | [`attach`] | a transfer followed by a second client, its progress in `status`, Ctrl-C of a follower |
//! | [`errors`] | the error codes 400, 401, 403, 404, 405, 408 |
//! | [`exposure`] | untrusted peers: checked at accept, capped, no v1 ssl oracle |
//! | [`hardening`] | the original's weaknesses (spec §15), each shown closed |
//! | [`process`] | prefork model: workers, signals, respawn, recycling, reload, titles |
//! | [`ipv6`] | serving on `::1` |
//! | [`lock`] | `lock`/`unlock` and the cluster lock across agents, heartbeats, loss |
//! | [`golden`] | the original's captured wire vectors replayed against the agent |
//! | [`config`] | `--check` on the shipped samples and on broken files |
//! | [`fleet`] | `health` cross-checked with `/proc`; `fetch` from three agents, refusals |
//! | [`upload`] | `upload`: a tar body from the real client, extracted under `[allow::paths]` |
//! | [`systemd`] | sd_notify (READY, STATUS, RELOADING, STOPPING, watchdog) and journald priorities |
//! | [`release`] | releases: rollouts in two phases, rollback, confirm-or-revert, stretcher's event mode |
//! | [`napp`] | Octopoda NodeApps: pushes, versions, `.gitignore`, resets, scripts, refusals |
//! | [`timed`] | `--at`/`--delay` across agents, refusals, `--background` tasks listed, waited for, cancelled |
//! | [`relay`] | `rsync --relay`: waves over six agents, a tampering peer, a peer dying while serving |
//! | [`netns`] | faults on network namespaces: a black-holed agent, 30 % loss, a link cut mid-transfer, a relay peer dying mid-relay |
//! | [`nats`] | agents reached over NATS only: orders, a server killed, tampered/replayed/wrongly keyed orders, permissions |
//! | [`migration`] | what Perl deploy fleets bring: 1024-bit keys (v1 "ssl" only, with warnings), ssl callers of an agent with v1 off |
//!
//! Every test has its own sandbox, ports and agent, so they run in parallel. The harness
//! is in [`util`].

mod attach;
mod config;
mod errors;
mod exposure;
mod fleet;
mod golden;
mod hardening;
mod ipv6;
mod lock;
mod migration;
mod napp;
mod nats;
mod netns;
mod ops;
mod orders;
mod process;
mod relay;
mod release;
mod serf;
mod systemd;
mod timed;
mod upload;
mod util;
