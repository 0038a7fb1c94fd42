//! The proxy tests' harness, over `deploy-testkit`: a [`Farm`] of agents on many
//! loopback addresses, and runners for `deploy-client` and `curl` with the output parsed.
//!
//! ```text
//! Farm::start(net=7, processes=2, per_process=11, key)
//!   agent 1: 127.7.1.1 (addr) + 127.7.1.2 … 127.7.1.11 (listen[])   one process,
//!   agent 2: 127.7.2.1 (addr) + 127.7.2.2 … 127.7.2.11 (listen[])   one worker each
//! ```
//!
//! Each agent has its own sandbox, `[allow::hosts] 127.0.0.0/8` (a connection to
//! 127.a.b.c comes from 127.a.b.c), the jobs `service:echo`, `service:sleep` and
//! `service:false`, and listens on port 0 of each address, so a farm costs a few
//! processes however many agents it has, and farms of parallel tests never collide.

#![allow(dead_code)]

pub use deploy_testkit::*;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

/// Bound on one deploy-client or curl run.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// The order every fan-out test sends, and what `/bin/echo hi` prints, base64.
pub const ECHO: &str = "service:echo,hi";
/// `base64("/bin/echo hi")`, the `command` of [`ECHO`]'s reply.
pub const ECHO_COMMAND: &str = "L2Jpbi9lY2hvIGhp";
/// `base64("hi\n")`, the `content` of [`ECHO`]'s reply.
pub const ECHO_CONTENT: &str = "aGkK";

/// `127.<a>.<b>.<c>`.
pub fn ip(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// Agents on many addresses, from a few processes.
pub struct Farm {
    /// The agent processes (dropped, so stopped, before their sandboxes go).
    pub agents: Vec<Agent>,
    /// Every agent address, in process then address order.
    pub addrs: Vec<SocketAddr>,
    sandboxes: Vec<Sandbox>,
}

impl Farm {
    /// `processes` agents with key `key`, each on `per_process` addresses
    /// `127.<net>.<p>.1..=per_process` (`p` from 1).
    pub fn start(net: u8, processes: u8, per_process: u8, key: &str) -> Farm {
        let mut farm = Farm {
            agents: Vec::new(),
            addrs: Vec::new(),
            sandboxes: Vec::new(),
        };
        for p in 1..=processes {
            let sb = Sandbox::new();
            let mut config = AgentConfig::new(&sb)
                .server("addr", ip(net, p, 1))
                .server("key_cipher", key)
                .hosts(&["127.0.0.0/8"]);
            for c in 2..=per_process {
                config = config.server("listen", format!("{}:0", ip(net, p, c)));
            }
            let agent = config.start(&sb);
            farm.addrs.extend(agent.addrs.iter().copied());
            farm.agents.push(agent);
            farm.sandboxes.push(sb);
        }
        farm
    }

    /// The addresses as `host:port` strings (how results are keyed).
    pub fn names(&self) -> Vec<String> {
        self.addrs.iter().map(ToString::to_string).collect()
    }
}

/// Runs `deploy-client args…` (environment cleared but `PATH`, and
/// `DEPLOY_KEY_CIPHER` = the proxies' [`PROXY_KEY`]) within [`RUN_LIMIT`].
pub fn client(args: &[&str]) -> Output {
    run_command(
        Command::new(bins::client())
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", PROXY_KEY)
            .env("NO_COLOR", "1"),
        RUN_LIMIT,
    )
}

/// `deploy-client --hosts 127.0.0.1 --port <proxy> --api-key <key> --args <args>
/// --order exec --options <options>` plus `extra`.
pub fn via_proxy(port: u16, key: &str, args: &str, options: &str, extra: &[&str]) -> Output {
    let port = port.to_string();
    let mut all = vec![
        "--hosts",
        "127.0.0.1",
        "--port",
        &port,
        "--api-key",
        key,
        "--args",
        args,
        "--order",
        "exec",
        "--options",
        options,
    ];
    all.extend_from_slice(extra);
    client(&all)
}

/// `deploy-client --hosts <addrs> --key-cipher <key> --order exec --options <options>`:
/// the agents directly.
pub fn direct(addrs: &[SocketAddr], key: &str, options: &str) -> Output {
    let hosts: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    client(&[
        "--hosts",
        &hosts.join(","),
        "--key-cipher",
        key,
        "--order",
        "exec",
        "--options",
        options,
    ])
}

/// The records of a `--format json` document for `order`: host → record
/// (`return`, `serverStatus`, `returnCode`, `returnString`, `content`[, `via`]).
pub fn records(out: &Output, order: &str) -> BTreeMap<String, Map<String, Value>> {
    let doc = out.json();
    let hosts = doc
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {out:#?}"));
    hosts
        .iter()
        .map(|(host, by_order)| {
            let record = by_order
                .get(order)
                .and_then(Value::as_object)
                .unwrap_or_else(|| panic!("{host} has no {order:?} record: {out:#?}"));
            assert_eq!(
                by_order.as_object().map(Map::len),
                Some(1),
                "{host}: one order per host: {out:#?}"
            );
            (host.clone(), record.clone())
        })
        .collect()
}

/// The one record of a document that must hold exactly one host (a proxy's own error).
pub fn only_record(out: &Output, order: &str) -> (String, Map<String, Value>) {
    let records = records(out, order);
    assert_eq!(records.len(), 1, "expected one host: {out:#?}");
    records.into_iter().next().expect("one record")
}

/// A record without its `via`.
pub fn without_via(record: &Map<String, Value>) -> Map<String, Value> {
    let mut record = record.clone();
    record.remove("via");
    record
}

/// Asserts that `record` is a successful `/bin/echo hi`, relayed via `via`.
pub fn assert_echo_ok(host: &str, record: &Map<String, Value>, via: &str) {
    let expected = serde_json::json!({
        "return": 1,
        "serverStatus": 1,
        "returnCode": "200",
        "returnString": "OK",
        "content": {"return": "true", "command": ECHO_COMMAND, "content": ECHO_CONTENT, "code": "0"},
        "via": via,
    });
    assert_eq!(
        &Value::Object(record.clone()),
        &expected,
        "record of {host}"
    );
}

/// Asserts a proxy-level refusal: one record, under the proxy's name, with `code` and
/// the text `content`; exit status 1.
pub fn assert_refused(out: &Output, code: &str, content: &str) {
    let (host, record) = only_record(out, "exec");
    assert_eq!(
        host, "127.0.0.1",
        "the refusal is the proxy's own: {out:#?}"
    );
    assert_eq!(record["returnCode"], code, "{out:#?}");
    assert_eq!(record["return"], 0, "{out:#?}");
    assert_eq!(record["serverStatus"], 1, "{out:#?}");
    assert_eq!(record["content"], content, "{out:#?}");
    out.expect_code(1);
}

/// Whether `curl` is installed; prints a note when it is not.
pub fn have_curl() -> bool {
    let found = Command::new("curl")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("note: curl is not installed; skipping this HTTP API test");
    }
    found
}

/// Runs `curl -s --max-time 20 args…` within [`RUN_LIMIT`].
pub fn curl(args: &[&str]) -> Output {
    run_command(
        Command::new("curl")
            .args(["-s", "--max-time", "20"])
            .args(args),
        RUN_LIMIT,
    )
}

/// Splits `curl -i` output into the status code, the headers (lower-cased names) and
/// the body.
pub fn http_parts(out: &Output) -> (u16, BTreeMap<String, String>, String) {
    let (head, body) = out
        .stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {out:#?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status:?}: {out:#?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, headers, body.to_owned())
}

/// `deploy-client nodes --proxy 127.0.0.1 --port <proxy> --api-key <key> …` as JSON:
/// the proxy's reply content (a text until the first heartbeat round has ended: 503).
pub fn nodes(port: u16, key: &str, extra: &[&str]) -> Value {
    let port = port.to_string();
    let mut args = vec![
        "nodes",
        "--proxy",
        "127.0.0.1",
        "--port",
        &port,
        "--api-key",
        key,
        "--format=json",
    ];
    args.extend_from_slice(extra);
    let out = client(&args);
    let doc = out.json();
    doc["127.0.0.1"]["nodes"]["content"].clone()
}
