//! `nodes`: a proxy's agents and their state (from the proxy's heartbeat), as a table
//! (`--format=table`, the default on a terminal) with the counts per state at the end.
//!
//! ```text
//! NAME          GROUP  STATE    LATENCY  VERSION             SINCE
//! 127.0.0.2     web    online   0.4ms    deploy-agent 0.4.0  2m10s
//! 127.0.0.3     web    offline  -        deploy-agent 0.4.0  12s    connection refused
//! 2 online, 0 unstable, 1 offline
//! ```

use deploy_common::order::nodes::Node;
use serde_json::{Map, Value};

use crate::health::{columns, duration};

/// The table of one proxy's answer (`body`), times against `now_ms`.
pub fn table(proxy: &str, body: &Map<String, Value>, now_ms: u64) -> String {
    let nodes: Vec<Node> = body
        .get("nodes")
        .and_then(|n| serde_json::from_value(n.clone()).ok())
        .unwrap_or_default();
    let mut lines: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "GROUP".into(),
        "STATE".into(),
        "LATENCY".into(),
        "VERSION".into(),
        "SINCE".into(),
        String::new(),
    ]];
    for n in &nodes {
        lines.push([
            n.name.clone(),
            n.group.clone(),
            n.state.as_str().to_owned(),
            match n.state {
                deploy_common::order::nodes::State::Online => format!("{:.1}ms", n.latency_ms),
                _ => "-".into(),
            },
            n.version.clone(),
            duration(now_ms.saturating_sub(n.since_ms) / 1000),
            n.error.clone(),
        ]);
    }
    let count = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_owned()
    };
    let mut out = columns(&lines);
    out.push_str(&format!(
        "{}: {} online, {} unstable, {} offline\n",
        proxy,
        count("online"),
        count("unstable"),
        count("offline")
    ));
    out
}
