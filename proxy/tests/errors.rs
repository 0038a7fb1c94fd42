//! What goes wrong, and where it shows: refusals of the proxy itself (403 at the outer
//! level: unknown key, a group or host outside the key, bad `args`, an order `[orders]`
//! forbids, a caller outside `[allow::hosts]`), and failures of single agents (down,
//! silent, wrong key), which leave the other agents' records untouched.

use crate::util::*;
use deploy_common::config::proxy::ApiKeys;
use serde_json::Value;
use std::time::Duration;

const ID: &str = "px-errors";

/// Three agents in `web` and two in `db`, one proxy; keys: `web-key` (web),
/// `db-key` (db), `both-key` (web,db).
struct Setup {
    proxy: Proxy,
    web: Farm,
    db: Farm,
    _dir: Sandbox,
}

fn setup(net: u8, config: impl FnOnce(ProxyConfig) -> ProxyConfig) -> Setup {
    let web = Farm::start(net, 1, 3, KEY);
    let db = Farm::start(net + 100, 1, 2, KEY);
    let dir = Sandbox::new();
    let proxy = config(
        ProxyConfig::new(ID)
            .key("web-key", "web")
            .key("db-key", "db")
            .key("both-key", "web,db")
            .servers("web", &web.addrs)
            .servers("db", &db.addrs),
    )
    .start(dir.path());
    Setup {
        proxy,
        web,
        db,
        _dir: dir,
    }
}

fn denied(item: &str) -> String {
    format!("You don't have permission to access on this[{item}].")
}

#[test]
fn refusals_of_the_proxy_itself() {
    let s = setup(21, |c| {
        c.orders("status-key", "status").key("status-key", "web")
    });
    let port = s.proxy.port();

    // An unknown key: the first item is named, as in the original.
    let out = via_proxy(port, "no-such-key", "groups:web", ECHO, &[]);
    assert_refused(&out, "403", &denied("web"));
    assert_eq!(
        only_record(&out, "exec").1["returnString"],
        "Permission Denied"
    );

    // A known key without the group, alone or among allowed ones.
    assert_refused(
        &via_proxy(port, "web-key", "groups:db", ECHO, &[]),
        "403",
        &denied("db"),
    );
    assert_refused(
        &via_proxy(port, "web-key", "groups:web,db", ECHO, &[]),
        "403",
        &denied("db"),
    );
    // A group nobody configured.
    assert_refused(
        &via_proxy(port, "both-key", "groups:ghost", ECHO, &[]),
        "403",
        &denied("ghost"),
    );

    // hosts: a server of another group, and an address nobody configured.
    let db0 = s.db.names()[0].clone();
    assert_refused(
        &via_proxy(port, "web-key", &format!("hosts:{db0}"), ECHO, &[]),
        "403",
        &denied(&db0),
    );
    assert_refused(
        &via_proxy(port, "web-key", "hosts:127.9.9.9:1", ECHO, &[]),
        "403",
        &denied("127.9.9.9:1"),
    );

    // args without a kind.
    assert_refused(
        &via_proxy(port, "web-key", "web", ECHO, &[]),
        "403",
        "Syntax error, unrecognized expression: [web]",
    );
    assert_refused(
        &via_proxy(port, "web-key", "servers:web", ECHO, &[]),
        "403",
        "Syntax error, unrecognized expression: [servers:web]",
    );

    // [orders]: status-key may send status only.
    assert_refused(
        &via_proxy(port, "status-key", "groups:web", ECHO, &[]),
        "403",
        "This API key may not send the order [exec].",
    );
}

#[test]
fn allowed_selections_reach_exactly_their_agents() {
    let s = setup(22, |c| {
        c.orders("exec-key", "exec,status").key("exec-key", "db")
    });
    let port = s.proxy.port();
    let web = s.web.names();

    // hosts: a subset of the key's servers, by host:port.
    let pick = format!("hosts:{},{}", web[0], web[2]);
    let out = via_proxy(port, "web-key", &pick, ECHO, &[]);
    out.expect_code(0);
    let got = records(&out, "exec");
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        [&web[0], &web[2]],
        "{out:#?}"
    );

    // groups: the union of the groups.
    let out = via_proxy(port, "both-key", "groups:web,db", ECHO, &[]);
    out.expect_code(0);
    let mut all = web.clone();
    all.extend(s.db.names());
    all.sort();
    assert_eq!(records(&out, "exec").into_keys().collect::<Vec<_>>(), all);

    // A key restricted by [orders] may send what it lists.
    let out = via_proxy(port, "exec-key", "groups:db", ECHO, &[]);
    out.expect_code(0);
    assert_eq!(records(&out, "exec").len(), 2);
}

#[test]
fn hashed_keys_work() {
    // The sample API file's example, computed independently with sha256sum.
    const SAMPLE: &str = "sha256:0fdd93d2188ce4987e70277a5fef28d4fbf22637e279eb76ab1e88c0dcfca107";
    assert_eq!(ApiKeys::hashed_form("change-me-web-only"), SAMPLE);
    let s = setup(23, |c| c.key(SAMPLE, "web"));
    let out = via_proxy(
        s.proxy.port(),
        "change-me-web-only",
        "groups:web",
        ECHO,
        &[],
    );
    out.expect_code(0);
    for (host, record) in records(&out, "exec") {
        assert_echo_ok(&host, &record, ID);
    }
    // The hash itself is not a key.
    let out = via_proxy(s.proxy.port(), SAMPLE, "groups:web", ECHO, &[]);
    assert_refused(&out, "403", &denied("web"));
}

#[test]
fn callers_outside_allow_hosts_are_refused() {
    let s = setup(24, |c| c.hosts(&["127.0.0.2"]));
    // Refused at accept, before a byte is read: the connection is closed, on both wires.
    for protocol in [&[][..], &["--protocol", "v1"][..]] {
        let out = via_proxy(s.proxy.port(), "web-key", "groups:web", ECHO, protocol);
        let (_, record) = only_record(&out, "exec");
        assert_ne!(record["returnCode"], "200", "{out:#?}");
        assert!(
            s.proxy.log().contains("not allowed by [allow::hosts]"),
            "{}",
            s.proxy.log()
        );
        assert_ne!(out.code, Some(0), "{out:#?}");
    }
}

#[test]
fn an_agent_that_is_down_fails_alone() {
    let (_hold, down) = refusing_addr(ip(25, 250, 1));
    let s = setup(25, |c| c.servers("web", [down]));
    // Loose: the others run, the down agent is skipped (strict: see `strict`).
    let out = via_proxy(
        s.proxy.port(),
        "web-key",
        "groups:web",
        ECHO,
        &["--skip-unreachable"],
    );
    out.expect_code(0);
    let got = records(&out, "exec");
    assert_eq!(got.len(), 4, "{out:#?}");
    let dead = &got[&down.to_string()];
    assert_eq!(
        Value::Object(dead.clone()),
        serde_json::json!({
            "return": 0,
            "serverStatus": 0,
            "returnCode": null,
            "returnString": null,
            "content": format!("can't connect to {down}"),
            "via": ID,
        })
    );
    for host in s.web.names() {
        assert_echo_ok(&host, &got[&host], ID);
    }
    assert!(
        out.stderr
            .contains(&format!("deploy-client: skipped: {down}: ")),
        "the failed agent is reported on stderr: {out:#?}"
    );
}

#[test]
fn a_silent_agent_times_out_alone_within_thread_timeout() {
    let silent = Silent::start(ip(26, 250, 1));
    let s = setup(26, |c| {
        c.client("thread_timeout", 2).servers("web", [silent.addr])
    });
    // Loose: strict would wait for it and start nothing.
    let out = via_proxy(
        s.proxy.port(),
        "web-key",
        "groups:web",
        ECHO,
        &["--skip-unreachable"],
    );
    out.expect_code(3);
    assert!(
        silent.accepted() >= 1,
        "the proxy connected to the silent agent"
    );
    let got = records(&out, "exec");
    assert_eq!(got.len(), 4, "{out:#?}");
    let hung = &got[&silent.addr.to_string()];
    assert_eq!(hung["serverStatus"], 0, "{out:#?}");
    assert_eq!(hung["returnCode"], Value::Null, "{out:#?}");
    assert_eq!(hung["content"], "Process Timeout(2)!", "{out:#?}");
    for host in s.web.names() {
        assert_echo_ok(&host, &got[&host], ID);
    }
    assert!(
        out.elapsed >= Duration::from_millis(1900) && out.elapsed < Duration::from_millis(3500),
        "the run took {:?}; the proxy's per-agent deadline is 2 s",
        out.elapsed
    );
}

#[test]
fn an_agent_with_another_key_is_unauthorized_alone() {
    let odd = Farm::start(177, 1, 1, "another-secret");
    let s = setup(27, |c| {
        c.key("web-key", "odd")
            .servers("odd", &odd.addrs)
            // The proxy's key for group `odd` is wrong.
            .group("odd", &[("key_cipher", "not-the-secret")])
    });
    // Loose: strict would not start on the others (see `strict`).
    let out = via_proxy(
        s.proxy.port(),
        "web-key",
        "groups:web,odd",
        ECHO,
        &["--skip-unreachable"],
    );
    out.expect_code(1);
    let got = records(&out, "exec");
    assert_eq!(got.len(), 4, "{out:#?}");
    let odd_record = &got[&odd.names()[0]];
    assert_eq!(odd_record["return"], 0, "{out:#?}");
    assert_eq!(odd_record["serverStatus"], 1, "{out:#?}");
    assert_eq!(odd_record["returnCode"], "401", "{out:#?}");
    assert_eq!(odd_record["returnString"], "Unauthorized", "{out:#?}");
    assert_eq!(odd_record["via"], ID, "{out:#?}");
    for host in s.web.names() {
        assert_echo_ok(&host, &got[&host], ID);
    }
}

/// The cluster lock is refused (501) by the proxy itself: a lock must be every host's
/// own answer (and an SSH host's lock would be a session of the proxy's worker that no
/// client could release). An upload whose caller sends no body is refused: its files
/// are the caller's, never read on the proxy's own disk whatever `upload` names.
/// Nothing reaches the agents.
#[test]
fn lock_is_not_relayed_nor_an_upload_read_on_the_proxy() {
    let s = setup(23, |c| c);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], s.proxy.port()).into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = s._dir.path().join("secret.txt");
    std::fs::write(&secret, "proxy-local secret\n").unwrap();
    for order in ["lock", "unlock"] {
        let mut request = deploy_testkit::request(order, "");
        request.api_key = "web-key".into();
        request.args = "groups:web".into();
        let reply = runtime
            .block_on(deploy_testkit::v2(addr, PROXY_KEY, None, request))
            .expect("v2 exchange");
        assert_eq!(reply.code, 501, "{order}: {reply:?}");
        assert!(
            reply.text.contains("not through a proxy"),
            "{order}: {reply:?}"
        );
    }
    // An upload naming a file of the proxy's: the proxy asks the caller for the body
    // (`continue`), it does not read the file; a caller that then goes away sends
    // nothing anywhere.
    let mut request = deploy_testkit::request("upload", "");
    request.api_key = "web-key".into();
    request.args = "groups:web".into();
    request.upload = Some(Box::new(deploy_common::upload::UploadSpec {
        files: vec![secret.display().to_string()],
        root: "/tmp".into(),
        ..Default::default()
    }));
    let first = runtime.block_on(async {
        let mut conn = deploy_testkit::v2_connect(addr, PROXY_KEY, None)
            .await
            .expect("handshake");
        conn.send(&deploy_common::wire::message::Message::Request { id: 1, request })
            .await
            .expect("send");
        conn.recv().await.expect("recv")
    });
    assert!(
        matches!(
            first,
            Some(deploy_common::wire::message::Message::Continue { id: 1 })
        ),
        "{first:?}"
    );
    let _ = &s.web;
}
