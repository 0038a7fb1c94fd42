//! The error codes of spec §5.2, over every wire where they apply: 401 (wrong or stale
//! key), 403 (path outside `[allow::paths]`; a peer not allowed is closed at once), 404 (unknown order),
//! 405 (bad method), 400 (empty options, legacy wire disabled, plain request to an ssl
//! agent) and 408 (`max_process_timeout`).

use crate::util::*;
use deploy_common::legacy::auth;
use deploy_common::legacy::http::{self, Form};
use deploy_common::wire::WireError;
use std::time::{Duration, Instant};

fn assert_refused(result: Result<Reply, WireError>, code: u16) {
    match result {
        Err(WireError::Refused { code: got, .. }) if got == code => {}
        other => panic!("expected a refused handshake with {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn unauthorized_401_on_every_wire() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let addr = agent.addr();

    for proto in [Proto::V1Plain, Proto::V1Ssl] {
        let r = call_with_key(proto, addr, "wrongsecret", "exec", "service:echo,x").await;
        r.expect_code(401);
        assert_eq!(r.reason, "Unauthorized");
        assert_eq!(r.text, "", "401 has an empty body: {r:?}");
        assert_eq!(r.content_type, "text/plain; charset=utf-8");
    }

    // Inside the 60 s window on either side: accepted.
    for t in [unix_now() - 50, unix_now() + 50] {
        let form = Form {
            auth_key: auth::make_auth_key(KEY, t),
            options: "service:echo,x".into(),
            ..Form::default()
        };
        let r = parse_plain(&v1_raw(addr, &http::encode_request("exec", &form)).await);
        r.expect_code(200);
    }
    // The right key, but a time outside the 60 s window (either side), or no key at all.
    for t in [unix_now() - 120, unix_now() + 120] {
        let form = Form {
            auth_key: auth::make_auth_key(KEY, t),
            options: "service:echo,x".into(),
            ..Form::default()
        };
        let r = parse_plain(&v1_raw(addr, &http::encode_request("exec", &form)).await);
        r.expect_code(401);
    }
    let form = Form {
        options: "service:echo,x".into(),
        ..Form::default()
    };
    parse_plain(&v1_raw(addr, &http::encode_request("exec", &form)).await).expect_code(401);

    // v2: a wrong key_cipher, pinned or not, and a pin of a key the agent does not hold.
    assert_refused(
        v2(addr, "wrongsecret", None, request("exec", "service:echo,x")).await,
        401,
    );
    assert_refused(
        v2(
            addr,
            "wrongsecret",
            Some(&agent_public_key()),
            request("exec", "service:echo,x"),
        )
        .await,
        401,
    );
    assert_refused(
        v2(
            addr,
            KEY,
            Some(&other_public_key()),
            request("exec", "service:echo,x"),
        )
        .await,
        401,
    );
    // A client clock more than 60 s off.
    for skew in [-120i64, 120] {
        let stream = connect(addr).await;
        let params = deploy_common::wire::handshake::ClientParams {
            key_cipher: KEY,
            pinned: None,
            now: unix_now().saturating_add_signed(skew),
        };
        match deploy_common::wire::handshake::client(stream, params).await {
            Err(WireError::Refused { code: 401, message }) => {
                assert!(message.contains("clock"), "{message}")
            }
            Err(other) => panic!("skew {skew}: {other}"),
            Ok(_) => panic!("skew {skew}: handshake accepted"),
        }
    }
    // And the right one works, unpinned too.
    let ok = v2(addr, KEY, None, request("exec", "service:echo,x"))
        .await
        .expect("v2 with the right key");
    ok.expect_code(200);
}

#[tokio::test]
async fn peer_not_allowed_is_closed_without_a_reply() {
    let sb = Sandbox::new();
    // We connect from 127.0.0.1; only 127.0.0.2 is allowed. The peer is checked at
    // accept, before a byte is read: every wire sees the connection closed, nothing else.
    let agent = Config::new(&sb).hosts(&["127.0.0.2"]).start(&sb);
    let addr = agent.addr();
    let plain = http::encode_request("exec", &form("service:echo,x", KEY));
    let got = v1_raw(addr, &plain).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    let e = v2(addr, KEY, None, request("exec", "service:echo,x")).await;
    assert!(
        matches!(e, Err(WireError::Closed | WireError::Io(_))),
        "{e:?}"
    );
}

#[tokio::test]
async fn path_outside_allow_paths_403() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .group(
            "denied",
            &[("dest", "127.0.0.1::DEST"), ("src", "/etc/should-not-sync")],
        )
        .start(&sb);
    for proto in [Proto::V2, Proto::V1Plain, Proto::V1Ssl] {
        for o in ["status", "rlist", "rsync", "rkill"] {
            let r = call(proto, agent.addr(), o, "denied").await;
            r.expect_code(403);
            assert_eq!(r.text, "/etc/should-not-sync is not allowed!", "{o}");
        }
        let outside = format!("{}/x", sb.join("outside").display());
        let r = call(
            proto,
            agent.addr(),
            "status",
            &format!("127.0.0.1::DEST,{outside}"),
        )
        .await;
        r.expect_code(403);
        assert_eq!(r.text, format!("{outside} is not allowed!"));
    }
    assert!(!std::path::Path::new("/etc/should-not-sync").exists());
}

#[tokio::test]
async fn unknown_order_404() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let addr = agent.addr();
    for order in ["nope", "STATUS", "stat.*", ""] {
        let r = parse_plain(&v1_raw(addr, &http::encode_request(order, &form("", KEY))).await);
        r.expect_code(404);
        assert_eq!(r.reason, "Not Found");
        assert_eq!(r.text, "");
    }
    // The first URL segment must be `agent` (the proxy's `api` is not the agent's).
    let bytes = http::encode_request("status", &form("", KEY));
    let bytes = String::from_utf8(bytes)
        .unwrap()
        .replacen("/agent/", "/api/", 1);
    parse_plain(&v1_raw(addr, bytes.as_bytes()).await).expect_code(404);

    let ssl = parse_plain(&v1_ssl_raw(addr, &http::encode_request("nope", &form("", KEY))).await);
    ssl.expect_code(404);

    let r = v2(addr, KEY, None, request("nope", "")).await.expect("v2");
    r.expect_code(404);
}

#[tokio::test]
async fn bad_method_405() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let addr = agent.addr();
    let post =
        String::from_utf8(http::encode_request("exec", &form("service:echo,x", KEY))).unwrap();
    for method in ["PUT", "DELETE", "HEAD"] {
        let bytes = post.replacen("POST", method, 1);
        let r = parse_plain(&v1_raw(addr, bytes.as_bytes()).await);
        r.expect_code(405);
        assert_eq!(r.reason, "Method Not Allowed");
    }
    // No request line at all.
    let r = parse_plain(&v1_raw(addr, b"Content-Length: 0\r\n\r\n").await);
    r.expect_code(405);
    // GET with the query in the URL works (and GET without `?` does not crash anything).
    let get = format!(
        "GET /agent/exec?auth_key={}&options=service:echo,via-get HTTP/1.1\r\n\r\n",
        auth::make_auth_key(KEY, unix_now())
    );
    let r = parse_plain(&v1_raw(addr, get.as_bytes()).await);
    r.expect_code(200);
    assert_eq!(r.s("content"), b64("via-get\n"));
    let r = parse_plain(&v1_raw(addr, b"GET /agent/exec HTTP/1.1\r\n\r\n").await);
    r.expect_code(401);
}

#[tokio::test]
async fn empty_options_400() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let inline_no_dest = format!(",{}", sb.allowed_str("x"));
    for proto in [Proto::V2, Proto::V1Plain, Proto::V1Ssl] {
        for options in ["nosuchgroup", "", "127.0.0.1::DEST,", &inline_no_dest] {
            for o in ["status", "rlist", "rsync", "rkill"] {
                let r = call(proto, agent.addr(), o, options).await;
                r.expect_code(400);
                assert_eq!(r.text, "empty value in options!", "{o} {options:?}");
            }
        }
        let r = call(proto, agent.addr(), "exec", "").await;
        r.expect_code(400);
        assert_eq!(r.text, "exec[] not found!");
    }
}

/// Live processes whose command line is exactly `line`.
fn processes_running(line: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| alive(pid) && cmdline(pid) == line)
        .collect()
}

#[tokio::test]
async fn process_timeout_408() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("max_process_timeout", 1).start(&sb);
    let addr = agent.addr();
    for (proto, secs) in [
        (Proto::V1Plain, "5.01"),
        (Proto::V1Ssl, "5.02"),
        (Proto::V2, "5.03"),
    ] {
        let line = format!("/bin/sleep {secs}");
        let options = format!("service:sleep,{secs}");
        let started = Instant::now();
        let (r, during) = tokio::join!(call(proto, addr, "exec", &options), async {
            // Watch for the job while the order runs.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                let seen = processes_running(&line);
                if !seen.is_empty() || Instant::now() > deadline {
                    return seen;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let took = started.elapsed();
        assert!(!during.is_empty(), "{proto:?}: the job never ran");
        // The timed-out job is killed (SIGKILL takes effect asynchronously, hence the
        // short wait), not left running for its 5 s.
        eventually(
            Duration::from_millis(1500),
            &format!("{proto:?}: the timed-out job to die"),
            || processes_running(&line).is_empty().then_some(()),
        )
        .await;
        r.expect_code(408);
        assert!(
            took < Duration::from_millis(2500),
            "{proto:?}: 408 took {took:?}"
        );
        if proto != Proto::V2 {
            assert_eq!(r.reason, "Request Timeout");
        }
    }
    // The v2 connection stays usable after a 408.
    let mut conn = v2_connect(addr, KEY, None).await.expect("connect");
    v2_exchange(&mut conn, 1, request("exec", "service:sleep,3"))
        .await
        .expect("first")
        .expect_code(408);
    let r = v2_exchange(&mut conn, 2, request("exec", "service:echo,after"))
        .await
        .expect("second");
    r.expect_code(200);
    assert_eq!(r.s("content"), b64("after\n"));
}

#[tokio::test]
async fn legacy_disabled_400() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("legacy_protocol", "off").start(&sb);
    let addr = agent.addr();
    let plain = http::encode_request_escaped("exec", &form("service:echo,x", KEY));
    let r = parse_plain(&v1_raw(addr, &plain).await);
    r.expect_code(400);
    assert!(r.text.contains("legacy_protocol"), "{r:?}");

    // An ssl client gets the same explanation, sealed with its passphrase (the agent
    // has its private key), so that the Perl client can print it.
    let r = parse_plain(&v1_ssl_raw(addr, &plain).await);
    r.expect_code(400);
    assert!(r.text.contains("legacy_protocol"), "{r:?}");

    // v2 is unaffected.
    v2(addr, KEY, None, request("exec", "service:echo,x"))
        .await
        .expect("v2")
        .expect_code(200);
}

#[tokio::test]
async fn ssl_agent_refuses_plain_400() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("ssl", "on").start(&sb);
    let r = call(Proto::V1Plain, agent.addr(), "exec", "service:echo,x").await;
    r.expect_code(400);
    assert!(r.text.contains("ssl"), "{r:?}");
    let r = call(Proto::V1Ssl, agent.addr(), "exec", "service:echo,x").await;
    r.expect_code(200);
    assert_eq!(r.s("content"), b64("x\n"));
}

#[tokio::test]
async fn agent_without_rsa_key() {
    let sb = Sandbox::new();
    // (`ssl = on|both` need the key, so the v1 mode is plain.)
    let agent = Config::new(&sb)
        .without("ssl_private_key")
        .server("ssl", "off")
        .start(&sb);
    let addr = agent.addr();
    // Pinning a key the agent does not have is an error, not a silent downgrade.
    assert_refused(
        v2(
            addr,
            KEY,
            Some(&agent_public_key()),
            request("exec", "service:echo,x"),
        )
        .await,
        400,
    );
    // Unpinned v2 and v1 plain work; v1 ssl gets a plain-text explanation.
    v2(addr, KEY, None, request("exec", "service:echo,x"))
        .await
        .expect("v2")
        .expect_code(200);
    call(Proto::V1Plain, addr, "exec", "service:echo,x")
        .await
        .expect_code(200);
    let plain = http::encode_request_escaped("exec", &form("service:echo,x", KEY));
    let passphrase = deploy_common::legacy::ssl::new_passphrase().unwrap();
    let aes =
        deploy_common::legacy::ssl::wrap_passphrase(&agent_public_key(), &passphrase).unwrap();
    let sealed = deploy_common::legacy::ssl::seal(&passphrase, &plain).unwrap();
    let raw = v1_raw(
        addr,
        &deploy_common::legacy::ssl::encode_ssl_request(&aes, &sealed),
    )
    .await;
    let r = parse_plain(&raw);
    r.expect_code(400);
    assert!(r.text.contains("ssl = off"), "{r:?}");
}
