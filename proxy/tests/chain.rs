//! Chained proxies: `[servers] far[] = proxy://<B>/web` makes proxy A ask proxy B for
//! B's group `web` (with `[client] proxy_api_key`), and B's agents reach the client
//! through A with `via` `A > B`. A loop (A → B → A) ends at the proxy that sees itself
//! in the request's `via` list (508), promptly.
//!
//! A reaches B over v2 with the key of the chained group: `[group::far] key_cipher` (or
//! `[client] key_cipher`, the agents' secret), which must be B's `[server] key_cipher`.

use crate::util::*;
use std::time::Duration;

const A: &str = "px-A";
const B: &str = "px-B";
/// Proxy A's v2 pre-shared key (`[server] key_cipher`).
const A_SECRET: &str = "a-server-secret";
/// Proxy B's v2 pre-shared key.
const B_SECRET: &str = "b-server-secret";

/// Proxy B with its agents in `web` (3) and `db` (2), key `b-key` → web,db.
struct Far {
    proxy: Proxy,
    web: Farm,
    db: Farm,
    _dir: Sandbox,
}

fn far(net: u8) -> Far {
    let web = Farm::start(net, 1, 3, KEY);
    let db = Farm::start(net + 100, 1, 2, KEY);
    let dir = Sandbox::new();
    let proxy = ProxyConfig::new(B)
        .server("key_cipher", B_SECRET)
        .key("b-key", "web,db")
        .servers("web", &web.addrs)
        .servers("db", &db.addrs)
        .start(dir.path());
    Far {
        proxy,
        web,
        db,
        _dir: dir,
    }
}

#[test]
fn a_chained_proxy_relays_its_agents_with_via() {
    let b = far(31);
    let local = Farm::start(231, 1, 2, KEY);
    let dir = Sandbox::new();
    let a = ProxyConfig::new(A)
        .client("proxy_api_key", "b-key")
        .key("a-key", "local,far")
        .servers("local", &local.addrs)
        .chain("far", b.proxy.addr(), "web")
        .group("far", &[("key_cipher", B_SECRET)])
        .start(dir.path());

    let out = via_proxy(a.port(), "a-key", "groups:far", ECHO, &[]);
    out.expect_code(0);
    let got = records(&out, "exec");
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        b.web.names(),
        "{out:#?}"
    );
    for (host, record) in &got {
        assert_echo_ok(host, record, &format!("{A} > {B}"));
    }

    // Local agents and chained ones together, each with its own path.
    let out = via_proxy(
        a.port(),
        "a-key",
        "groups:local,far",
        ECHO,
        &["--format", "text"],
    );
    out.expect_code(0);
    let text = out.stdout.clone();
    assert!(
        text.contains(&format!(
            "(3): 200 OK return=true command=\"/bin/echo hi\" code=0 (via {A} > {B})"
        )),
        "{out:#?}"
    );
    assert!(
        text.contains(&format!(
            "(2): 200 OK return=true command=\"/bin/echo hi\" code=0 (via {A})"
        )),
        "{out:#?}"
    );

    // A v1 client gets A's nested document, B's agents in it.
    let out = via_proxy(
        a.port(),
        "a-key",
        "groups:local,far",
        ECHO,
        &["--protocol", "v1"],
    );
    out.expect_code(0);
    let (_, outer) = only_record(&out, "exec");
    let inner = outer["content"].as_object().expect("nested document");
    let mut want: Vec<String> = local.names();
    want.extend(b.web.names());
    want.sort();
    let mut have: Vec<String> = inner.keys().cloned().collect();
    have.sort();
    assert_eq!(have, want, "{out:#?}");
}

#[test]
fn a_chained_proxy_that_refuses_shows_as_one_record() {
    let b = far(32);
    let dir = Sandbox::new();
    let a = ProxyConfig::new(A)
        .client("proxy_api_key", "not-b-key")
        .key("a-key", "far")
        .chain("far", b.proxy.addr(), "web")
        .group("far", &[("key_cipher", B_SECRET)])
        .start(dir.path());
    let out = via_proxy(a.port(), "a-key", "groups:far", ECHO, &[]);
    out.expect_code(1);
    let (host, record) = only_record(&out, "exec");
    assert_eq!(host, b.proxy.addr().to_string(), "{out:#?}");
    assert_eq!(record["returnCode"], "403", "{out:#?}");
    assert_eq!(
        record["content"], "You don't have permission to access on this[web].",
        "{out:#?}"
    );
    assert_eq!(record["via"], A, "{out:#?}");
}

#[test]
fn a_proxy_loop_is_refused_promptly() {
    // A's port is chosen first, so that B can name it.
    let a_port = free_port();
    let (dir_a, dir_b) = (Sandbox::new(), Sandbox::new());
    let b = ProxyConfig::new(B)
        .server("key_cipher", B_SECRET)
        .client("proxy_api_key", "a-key")
        .key("b-key", "back")
        .servers("back", [format!("proxy://127.0.0.1:{a_port}/far")])
        .group("back", &[("key_cipher", A_SECRET)])
        .start(dir_b.path());
    let a = ProxyConfig::new(A)
        .server("port", a_port)
        .server("key_cipher", A_SECRET)
        .client("proxy_api_key", "b-key")
        .key("a-key", "far")
        .chain("far", b.addr(), "back")
        .group("far", &[("key_cipher", B_SECRET)])
        .start(dir_a.path());

    let out = via_proxy(
        a.port(),
        "a-key",
        "groups:far",
        ECHO,
        &["--key-cipher", A_SECRET],
    );
    out.expect_code(1);
    let (host, record) = only_record(&out, "exec");
    assert_eq!(
        host,
        format!("127.0.0.1:{a_port}"),
        "A, as B names it: {out:#?}"
    );
    assert_eq!(record["returnCode"], "508", "{out:#?}");
    assert_eq!(record["via"], format!("{A} > {B}"), "{out:#?}");
    let content = record["content"].as_str().unwrap_or_default();
    assert!(
        content.contains("proxy loop") && content.contains(A) && content.contains(B),
        "the refusal names the loop: {out:#?}"
    );
    assert!(
        out.elapsed < Duration::from_secs(3),
        "a loop is refused at once, not by a timeout: {:?}",
        out.elapsed
    );
}

#[test]
fn two_groups_chained_to_one_proxy_stay_apart() {
    let b = far(33);
    let dir = Sandbox::new();
    let a = ProxyConfig::new(A)
        .client("proxy_api_key", "b-key")
        .key("a-key", "far-web,far-db")
        .chain("far-db", b.proxy.addr(), "db")
        .chain("far-web", b.proxy.addr(), "web")
        .group("far-db", &[("key_cipher", B_SECRET)])
        .group("far-web", &[("key_cipher", B_SECRET)])
        .start(dir.path());
    for (group, want) in [("far-web", b.web.names()), ("far-db", b.db.names())] {
        let out = via_proxy(a.port(), "a-key", &format!("groups:{group}"), ECHO, &[]);
        out.expect_code(0);
        assert_eq!(
            records(&out, "exec").into_keys().collect::<Vec<_>>(),
            want,
            "groups:{group} through A: {out:#?}"
        );
    }
}
