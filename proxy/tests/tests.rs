//! Integration tests of `deploy-proxy`: the real proxy binary between the real
//! `deploy-client` (or curl) and real `deploy-agent`s, all on loopback.
//!
//! One test binary (STYLE.md §8) whose modules follow the test plan:
//!
//! | module | covers |
//! |---|---|
//! | [`fanout`] | 24 agents through one proxy: json, text, jsonl (streamed), direct = proxied, v1 shape |
//! | [`errors`] | the proxy's refusals (403, `[orders]`, `[allow::hosts]`) and single-agent failures (down, silent, wrong key) |
//! | [`chain`] | chained proxies (`proxy://`), `via` lists, loop refusal |
//! | [`ssh`] | `ssh://` servers beside an agent (real sshd, root only): `run`, stdin, sudo, authorization, host keys |
//! | [`follow`] | `--follow`: agents' output lines relayed under each agent's name, through a chain too |
//! | [`http`] | the HTTP/JSON API: merged JSON, NDJSON stream (curl); strict parsing, JSON errors, `/healthz`, deadlines (raw bytes) |
//! | [`release`] | rollouts through the proxy (agents with their own dests), nobody switches when one refuses, releases/rollback over v2 and the HTTP API, `apikey:<name>` in the history |
//! | [`fleet`] | `health` and `fetch` relayed; `nodes` from the heartbeat: three agents online, one killed goes offline and comes back, `--state`, `GET /api/nodes` |
//! | [`nats`] | `nats://` agents on a 3-server NATS cluster: a group as one publish (absent member unreachable), an upload relayed, `nodes` via nats |
//! | [`legacy`] | the original wire by hand: form, query string, path parameters |
//! | [`daemon`] | `--check`, errors naming file:line, SIGTERM |
//! | [`strict`] | strict runs start nowhere unless every agent connected (direct and through the proxy); `--skip-unreachable` through it |
//! | [`relay_push`] | `rsync --relay` through the proxy: the proxy schedules the relay over 4 agents (trees, `from`/`pulled`); an agent killed mid-relay routed around; `{"relay":1}` over the HTTP API |
//! | [`upload`] | `upload` through the proxy to 3 agents (the caller's tar body, spooled once), files checked |
//! | [`openapi`] | `docs/openapi.json` checked against the running proxy (every path, method, status and shape; every served route documented) |
//! | [`store`] | several proxies, one fleet: a real 3-server NATS JetStream cluster; scenario history shared, concurrent appends kept once, a NATS server killed; one heartbeat leader across proxies and its takeover |
//! | [`verdicts`] | exit status and failure summary follow the agents' results, over v1 (nested document) and v2 |
//!
//! Every test starts its own agents (a [`util::Farm`]: a few processes listening on
//! many 127.x.y.z addresses) and proxies on port 0, so tests run in parallel; every run
//! of a client is bounded, and every process is stopped when its handle drops. The
//! shared harness is the `deploy-testkit` crate; [`util`] adds the proxy's own helpers.

mod chain;
mod daemon;
mod errors;
mod fanout;
mod fleet;
mod follow;
mod http;
mod legacy;
mod nats;
mod nats_body;
mod nats_fleet;
mod openapi;
mod relay_push;
mod release;
mod ssh;
mod store;
mod strict;
mod timed;
mod upload;
mod util;
mod verdicts;
