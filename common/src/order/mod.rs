//! The order model: what a caller asks an agent to do and the reply it gets back.
//!
//! An order travels as a [`Request`] (its name and the original's three string fields
//! `options`, `args`, `api_key`) whatever the wire, v1 or v2, and comes back as a
//! [`Reply`]: an HTTP-like status code and a body. Bodies of successful orders are JSON
//! objects whose values are strings, exactly the keys the original agent produced (see
//! each order's file), so that a Perl client reading our agent sees what it expects.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod at;
pub mod exec;
pub mod fetch;
pub mod health;
pub mod lock;
pub mod napp;
pub mod nodes;
pub mod release;
pub mod rkill;
pub mod rlist;
pub mod rsync;
pub mod run;
pub mod scenario_versions;
pub mod status;
pub mod sync;
pub mod tasks;
pub mod upload;

/// The orders an agent serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderName {
    /// Dry-run a group and report what a transfer would do, or that one is running.
    Status,
    /// Dry-run a group and list the files a transfer would create and delete.
    Rlist,
    /// Start a transfer in the background and return its handle.
    Rsync,
    /// Kill a running transfer.
    Rkill,
    /// Run a whitelisted job.
    Exec,
    /// Run an arbitrary command (argv); on agents only with `allow_run = on`.
    Run,
    /// Extract a tar stream (the request's body) under a directory; on agents only with
    /// `allow_upload = on`, and only under `[allow::paths]`.
    Upload,
    /// Take a cluster-wide lock (all hosts or none), held with a lease.
    Lock,
    /// Release a lock.
    Unlock,
    /// Deploy a release from a stretcher manifest (in phases across a fleet).
    Deploy,
    /// List a host's releases and history.
    Releases,
    /// Switch back to an earlier release.
    Rollback,
    /// Confirm a switch that would otherwise revert by itself.
    Confirm,
    /// One step of an Octopoda scenario on one NodeApp ([`napp`]); on agents only with
    /// scenarios enabled.
    Napp,
    /// How the node is doing: CPU, load, memory, disks, uptime, clock ([`health`]).
    Health,
    /// A file or directory of the node, streamed back as tar ([`fetch`]); on agents only
    /// with `allow_fetch = on`, and only under `[allow::paths]`.
    Fetch,
    /// A proxy's view of its agents' state, from its heartbeat ([`nodes`]); agents
    /// answer 501.
    Nodes,
    /// List, wait for or cancel background tasks ([`tasks`]).
    Tasks,
}

impl OrderName {
    /// Every order, in the order the original documents them.
    pub const ALL: [OrderName; 18] = [
        OrderName::Status,
        OrderName::Rlist,
        OrderName::Rsync,
        OrderName::Rkill,
        OrderName::Exec,
        OrderName::Run,
        OrderName::Upload,
        OrderName::Lock,
        OrderName::Unlock,
        OrderName::Deploy,
        OrderName::Releases,
        OrderName::Rollback,
        OrderName::Confirm,
        OrderName::Napp,
        OrderName::Health,
        OrderName::Fetch,
        OrderName::Nodes,
        OrderName::Tasks,
    ];

    /// The original's five orders (all the v1 wire can carry).
    pub const LEGACY: [OrderName; 5] = [
        OrderName::Status,
        OrderName::Rlist,
        OrderName::Rsync,
        OrderName::Rkill,
        OrderName::Exec,
    ];

    /// The name on the wire and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderName::Status => "status",
            OrderName::Rlist => "rlist",
            OrderName::Rsync => "rsync",
            OrderName::Rkill => "rkill",
            OrderName::Exec => "exec",
            OrderName::Run => "run",
            OrderName::Upload => "upload",
            OrderName::Lock => "lock",
            OrderName::Unlock => "unlock",
            OrderName::Deploy => "deploy",
            OrderName::Releases => "releases",
            OrderName::Rollback => "rollback",
            OrderName::Confirm => "confirm",
            OrderName::Napp => "napp",
            OrderName::Health => "health",
            OrderName::Fetch => "fetch",
            OrderName::Nodes => "nodes",
            OrderName::Tasks => "tasks",
        }
    }

    /// Exact, case-sensitive lookup (the original matched a regex; we do not).
    pub fn parse(name: &str) -> Option<OrderName> {
        OrderName::ALL.into_iter().find(|o| o.as_str() == name)
    }
}

impl std::fmt::Display for OrderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One order as an agent (or proxy) receives it, independent of the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Order name as sent; validated by the receiver (unknown → 404).
    pub order: String,
    /// `--options`: a group name, or `dest,src`, or `job,arg,…` for `exec`.
    #[serde(default)]
    pub options: String,
    /// `--args`: for a proxy, `hosts:…` or `groups:…`.
    #[serde(default)]
    pub args: String,
    /// `--api-key`: for a proxy.
    #[serde(default)]
    pub api_key: String,
    /// v2 only: stream output lines and progress while the order runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
    /// v2 only: the proxies this request already went through (loop detection).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
    /// v2 only, to a proxy: all or nothing. The proxy connects to (and authenticates
    /// with) every server the request selects before it sends the order to any, and
    /// sends it nowhere unless all connected ([`crate::gate`]). deploy-client sets it for
    /// the orders that start work ([`crate::gate::ORDERS`]) unless
    /// `--skip-unreachable`; absent (the original's requests), the proxy delivers to
    /// whoever it can reach.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// `run`: the command and its arguments (ssh semantics: joined with spaces and
    /// given to the remote shell over SSH; on agents, run as argv).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// `run`: bytes for the command's stdin, base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// `run`: run under `sudo -n`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sudo: bool,
    /// `lock`: lease in seconds; the holder renews it (heartbeat) before it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// `lock`/`unlock`: who holds the lock (user@host:pid), shown to a second locker.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub holder: String,
    /// `lock`/`unlock`: the secret that proves a lock is ours (see [`lock`]): chosen by
    /// the locker, sent again to renew (heartbeat) and to release. A field of its own, not
    /// part of `options`, so that it never appears in access logs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// `upload`, `sync`: the files to send and where ([`upload`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Box<crate::upload::UploadSpec>>,
    /// `sync`: the run's protocol prefix and hosts ([`sync`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<Box<sync::SyncRun>>,
    /// `deploy`, `releases`, `rollback`, `confirm`: what is asked ([`release`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Box<release::ReleaseSpec>>,
    /// `napp`: the scenario step asked ([`napp`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub napp: Option<Box<napp::NappSpec>>,
    /// `exec`, `run`: start at this instant (unix ms, caller's clock), each host waiting
    /// on its own clock; refused by a host that cannot honour it ([`at`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// With `at`: the longest a host may wait for it, ms ([`at::DEFAULT_MAX_WAIT_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<u64>,
    /// `exec`, `run` on agents: start the command detached and answer with its task id
    /// at once ([`tasks`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
    /// `scenario-versions` (a proxy's own order): what is asked of its store
    /// ([`scenario_versions`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scenario_versions: Option<Box<scenario_versions::VersionsSpec>>,
    /// `rsync` sent to a proxy with `--relay`: the proxy pushes it to its agents as a
    /// relay ([`crate::rsync::waves`]) with this many children per host, instead of one
    /// order per agent. Agents ignore it (the relay reaches them as `args`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<usize>,
    /// Not on the wire: a body a proxy received from its caller, sent as is to each
    /// server instead of reading `upload`'s files (which are the caller's, not the
    /// proxy's) ([`crate::upload::body`]).
    #[serde(skip)]
    pub body: Option<crate::upload::body::SharedBody>,
}

/// The body of a reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A JSON object (order results), sent as `application/json`.
    Json(Map<String, Value>),
    /// A text message (errors), sent as `text/plain`.
    Text(String),
    /// Nothing.
    Empty,
}

/// An order's outcome: an HTTP-like status code and a body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// 200, 400, 401, 403, 404, 405, 408, 423 (`lock`: held by another), 500.
    pub code: u16,
    /// The body.
    pub body: Body,
}

impl Reply {
    /// A 200 reply carrying a JSON object.
    pub fn ok(body: Map<String, Value>) -> Reply {
        Reply {
            code: 200,
            body: Body::Json(body),
        }
    }

    /// An error reply with a text body.
    pub fn error(code: u16, text: impl Into<String>) -> Reply {
        Reply {
            code,
            body: Body::Text(text.into()),
        }
    }

    /// An error reply with no body (401, 404, 405 in the original).
    pub fn empty(code: u16) -> Reply {
        Reply {
            code,
            body: Body::Empty,
        }
    }

    /// The reason phrase of [`Reply::code`], as the original wrote it.
    pub fn reason(&self) -> &'static str {
        reason(self.code)
    }

    /// The body as a JSON value, the way deploy-client prints `content`.
    pub fn content(&self) -> Value {
        match &self.body {
            Body::Json(map) => Value::Object(map.clone()),
            Body::Text(text) => Value::String(text.clone()),
            Body::Empty => Value::Null,
        }
    }
}

/// Reason phrases of the original (note 403 is "Permission Denied").
pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Permission Denied",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        423 => "Locked",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        508 => "Loop Detected",
        _ => "Unknown",
    }
}

/// Builds a JSON object of string values in the given key order.
pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// `"true"`/`"false"`, the original's booleans.
pub fn flag(b: bool) -> Value {
    Value::String(if b { "true" } else { "false" }.to_owned())
}

/// A list of strings as a JSON array of strings.
pub fn strings<S: ToString>(items: impl IntoIterator<Item = S>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(|s| Value::String(s.to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_names_round_trip() {
        for o in OrderName::ALL {
            assert_eq!(OrderName::parse(o.as_str()), Some(o));
        }
        assert_eq!(OrderName::parse("stat.*"), None);
        assert_eq!(OrderName::parse("STATUS"), None);
    }

    #[test]
    fn reasons_match_the_original() {
        assert_eq!(reason(403), "Permission Denied");
        assert_eq!(Reply::empty(401).content(), Value::Null);
    }
}
