//! [`AgentTransport`] against in-process fake agents (see [`testutil`]).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::testutil::{
    agent_keys, canned, closed_port, silent, target, v1_agent, v2_agent, Handler,
};
use super::{AgentTransport, Outcome, Protocol, Transport, Verdict};
use crate::order::{Body, Reply, Request};
use crate::target::Target;
use crate::wire::message::{Event, Stream};

fn transport(protocol: Protocol, key_cipher: &str) -> AgentTransport {
    AgentTransport {
        protocol,
        key_cipher: key_cipher.to_owned(),
        public_key: None,
        connect_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(3),
        pool: None,
    }
}

fn request(order: &str, options: &str) -> Request {
    Request {
        order: order.into(),
        options: options.into(),
        ..Request::default()
    }
}

fn ok_body() -> Reply {
    Reply::ok(
        json!({"return": "true", "content": "aGkK"})
            .as_object()
            .unwrap()
            .clone(),
    )
}

/// Echoes the order's fields back as the body.
fn echo() -> Handler {
    Arc::new(|r: &Request| {
        let body = json!({
            "return": "true",
            "order": r.order,
            "options": r.options,
            "args": r.args,
            "api_key": r.api_key,
            "follow": r.follow.to_string(),
        });
        (
            vec![Event::Line {
                stream: Stream::Stdout,
                line: format!("running {}", r.order),
                partial: false,
            }],
            Duration::ZERO,
            Reply::ok(body.as_object().unwrap().clone()),
        )
    })
}

/// Delivers and collects the events, under a test timeout.
async fn run(t: &AgentTransport, to: &Target, req: &Request) -> (Outcome, Vec<Event>) {
    let (tx, mut rx) = mpsc::channel(16);
    let outcome = tokio::time::timeout(Duration::from_secs(10), t.deliver(to, req, tx))
        .await
        .expect("test timeout");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e.event);
    }
    (outcome, events)
}

#[tokio::test]
async fn v2_round_trip_with_events() {
    let addr = v2_agent("k", None, echo()).await;
    let mut req = request("exec", "job,a&b=c%d");
    req.follow = true;
    req.args = "hosts:x".into();
    req.api_key = "api".into();
    let (outcome, events) = run(&transport(Protocol::V2, "k"), &target(addr), &req).await;
    let reply = outcome.reply().expect("a reply").clone();
    assert_eq!(reply.code, 200);
    assert_eq!(
        reply.content(),
        json!({"return": "true", "order": "exec", "options": "job,a&b=c%d",
               "args": "hosts:x", "api_key": "api", "follow": "true"})
    );
    assert_eq!(
        events,
        vec![Event::Line {
            stream: Stream::Stdout,
            line: "running exec".into(),
            partial: false,
        }]
    );
    assert_eq!(outcome.verdict(), Verdict::Succeeded);
}

#[tokio::test]
async fn v2_wrong_key_is_a_401_reply() {
    let addr = v2_agent("right", None, echo()).await;
    let (outcome, _) = run(
        &transport(Protocol::V2, "wrong"),
        &target(addr),
        &request("status", "web"),
    )
    .await;
    match outcome {
        Outcome::Reply(Reply {
            code: 401,
            body: Body::Text(text),
        }) => assert!(text.contains("authentication failed"), "{text}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn v2_pinned_key() {
    let (private, public) = agent_keys();
    let addr = v2_agent(
        "k",
        Some(private),
        canned(vec![], Duration::ZERO, ok_body()),
    )
    .await;
    let mut t = transport(Protocol::V2, "k");
    t.public_key = Some(public.clone());
    let (outcome, _) = run(&t, &target(addr), &request("status", "web")).await;
    assert_eq!(outcome, Outcome::Reply(ok_body()));

    // An agent without the key refuses a pinning client.
    let addr = v2_agent("k", None, canned(vec![], Duration::ZERO, ok_body())).await;
    let (outcome, _) = run(&t, &target(addr), &request("status", "web")).await;
    assert_eq!(outcome.reply().map(|r| r.code), Some(400), "{outcome:?}");
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let addr = closed_port().await;
    for protocol in [Protocol::V2, Protocol::V1] {
        let (outcome, _) = run(
            &transport(protocol, "k"),
            &target(addr),
            &request("status", ""),
        )
        .await;
        match &outcome {
            Outcome::Unreachable { address, cause } => {
                assert_eq!(address, &addr.to_string());
                assert!(cause.to_lowercase().contains("refused"), "{cause}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!outcome.server_status());
        assert_eq!(
            outcome.to_json()["content"],
            json!(format!("can't connect to {addr}"))
        );
    }
}

#[tokio::test]
async fn unresolvable_name_is_unreachable() {
    let t = Target::parse("no-such-host.invalid", 3440).unwrap();
    let (outcome, _) = run(&transport(Protocol::V2, "k"), &t, &request("status", "")).await;
    assert!(
        matches!(outcome, Outcome::Unreachable { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn silent_agent_times_out_at_the_deadline() {
    let addr = silent().await;
    for protocol in [Protocol::V2, Protocol::V1] {
        let mut t = transport(protocol, "k");
        t.deadline = Duration::from_millis(300);
        let start = std::time::Instant::now();
        let (outcome, _) = run(&t, &target(addr), &request("status", "")).await;
        assert_eq!(outcome, Outcome::Timeout(Duration::from_millis(300)));
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_eq!(outcome.to_json()["content"], json!("Process Timeout(0.3)!"));
        assert_eq!(outcome.to_json()["serverStatus"], json!(0));
    }
}

#[tokio::test]
async fn v1_plain_round_trip_and_401() {
    let addr = v1_agent("k", None, echo()).await;
    let req = request("exec", "job,a&b=c%d e");
    let (outcome, events) = run(&transport(Protocol::V1, "k"), &target(addr), &req).await;
    assert!(events.is_empty());
    let reply = outcome.reply().expect("reply");
    assert_eq!(reply.code, 200);
    assert_eq!(reply.content()["options"], json!("job,a&b=c%d e"));

    let (outcome, _) = run(&transport(Protocol::V1, "nope"), &target(addr), &req).await;
    assert_eq!(outcome, Outcome::Reply(Reply::empty(401)));
    let record = serde_json::Value::Object(outcome.to_json());
    assert_eq!(
        record.to_string(),
        r#"{"return":0,"serverStatus":1,"returnCode":"401","returnString":"Unauthorized","content":null}"#
    );
}

#[tokio::test]
async fn v1_ssl_round_trip_and_mismatches() {
    let (private, public) = agent_keys();
    let ssl = v1_agent("k", Some(private), echo()).await;
    let plain = v1_agent("k", None, echo()).await;
    let mut t = transport(Protocol::V1, "k");
    t.public_key = Some(public);
    let (outcome, _) = run(&t, &target(ssl), &request("status", "web")).await;
    assert_eq!(outcome.reply().map(|r| r.code), Some(200), "{outcome:?}");
    assert_eq!(outcome.reply().unwrap().content()["options"], json!("web"));

    // ssl client → plain agent.
    let (outcome, _) = run(&t, &target(plain), &request("status", "web")).await;
    match outcome {
        Outcome::Failed(why) => {
            assert!(
                why.contains("protocol mismatch") && why.contains("plain mode"),
                "{why}"
            );
            assert!(why.contains("405"), "{why}");
        }
        other => panic!("{other:?}"),
    }

    // plain client → an agent that answers in ssl mode.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"ssl-length:16\r\n\r\nSalted__12345678")
            .await
            .unwrap();
    });
    let (outcome, _) = run(
        &transport(Protocol::V1, "k"),
        &target(addr),
        &request("status", ""),
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("\"ssl\" mode")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn protocol_version_mismatches_are_explained() {
    // v2 client → v1 agent answering at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
    });
    let (outcome, _) = run(
        &transport(Protocol::V2, "k"),
        &target(addr),
        &request("status", ""),
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("does not speak protocol v2")),
        "{outcome:?}"
    );

    // v1 client → v2-only agent, which sends an Error frame.
    let v2 = v2_agent("k", None, echo()).await;
    let (outcome, _) = run(
        &transport(Protocol::V1, "k"),
        &target(v2),
        &request("status", ""),
    )
    .await;
    assert!(
        matches!(&outcome, Outcome::Failed(why) if why.contains("answered in protocol v2")),
        "{outcome:?}"
    );
}

#[test]
fn verdicts_and_records() {
    let reply =
        |v: serde_json::Value| Outcome::Reply(Reply::ok(v.as_object().unwrap().clone())).verdict();
    assert_eq!(reply(json!({"return": "true"})), Verdict::Succeeded);
    assert_eq!(reply(json!({"x": "1"})), Verdict::Succeeded);
    assert_eq!(reply(json!({"return": "false"})), Verdict::OrderFailed);
    assert_eq!(
        Outcome::Reply(Reply::error(400, "x")).verdict(),
        Verdict::OrderFailed
    );
    assert_eq!(Outcome::Failed("x".into()).verdict(), Verdict::HostFailed);
    let failed = Outcome::Failed("boom".into()).to_json();
    assert_eq!(
        serde_json::Value::Object(failed).to_string(),
        r#"{"return":0,"serverStatus":1,"returnCode":null,"returnString":null,"content":"boom"}"#
    );
    let timeout = Outcome::Timeout(Duration::from_secs(5));
    assert_eq!(timeout.to_json()["content"], json!("Process Timeout(5)!"));
    assert_eq!(timeout.to_string(), "no reply within 5 s");
}

#[test]
fn records_stand_for_their_outcomes() {
    use super::{proxy_records, record_outcome};
    let outcomes = [
        Outcome::Reply(Reply::ok(
            json!({"return": "false", "code": "2"})
                .as_object()
                .unwrap()
                .clone(),
        )),
        Outcome::Reply(Reply::error(403, "no")),
        Outcome::Reply(Reply::empty(401)),
        Outcome::Timeout(Duration::from_millis(2500)),
        Outcome::Failed("boom".into()),
    ];
    for outcome in outcomes {
        let back = record_outcome(&outcome.to_json());
        assert_eq!(back, outcome);
        assert_eq!(back.verdict(), outcome.verdict());
    }
    // The cause of an unreachable host is not in its record.
    let unreachable = Outcome::Unreachable {
        address: "h:1".into(),
        cause: "refused".into(),
    };
    assert_eq!(
        record_outcome(&unreachable.to_json()),
        Outcome::Unreachable {
            address: "h:1".into(),
            cause: String::new(),
        }
    );

    // A proxy's v1 document, and bodies that are not one.
    let doc = json!({
        "a:1": {"exec": Outcome::Failed("x".into()).to_json()},
        "b:1": {"exec": Outcome::Reply(Reply::error(400, "y")).to_json()},
    });
    let records = proxy_records(doc.as_object().unwrap()).unwrap();
    assert_eq!(
        records.iter().map(|(h, o, _)| (*h, *o)).collect::<Vec<_>>(),
        [("a:1", "exec"), ("b:1", "exec")]
    );
    for body in [
        json!({}),
        json!({"return": "true", "code": "0"}),
        json!({"a": {"exec": {"return": "true"}}}),
        json!({"a": {"exec": {"serverStatus": 1}, "status": {"serverStatus": 1}}}),
    ] {
        assert!(proxy_records(body.as_object().unwrap()).is_none(), "{body}");
    }
}
