//! What a peer can learn or hold before it is trusted (issue 8 §2, §3):
//!
//! * a peer outside `[allow::hosts]` is closed at accept, before a byte is read;
//! * `max_connections_per_peer` caps one address's live connections;
//! * every v1 "ssl" failure after the RSA unwrap — bad padding, a passphrase that does
//!   not unwrap, a wrong `auth_key` — gets the same sealed 401, byte for byte the same
//!   size, so the envelope is no padding oracle;
//! * `ssl_max_failures` refuses a peer's v1 ssl after repeated failures;
//! * `ssl = off` serves no v1 ssl (its refusal sealed when the agent has its key),
//!   `ssl = on` no v1 plain, `ssl = both` both.

use crate::util::*;
use deploy_common::legacy::{http, ssl, Limits};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// Connects to `addr` from the source address `from` (any 127.0.0.x works on Linux).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind the source address");
    tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

#[tokio::test]
async fn a_refused_peer_is_closed_before_anything_is_read() {
    let sb = Sandbox::new();
    // The defaults allow 127.0.0.1 and ::1 only.
    let agent = Config::new(&sb).start(&sb);
    let started = Instant::now();
    let mut stream = connect_from("127.0.0.2", agent.addr()).await;
    // Nothing sent: the agent must not wait for a first byte (socket_timeout is 5 s).
    let got = read_to_eof(&mut stream, Duration::from_secs(2)).await;
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() < Duration::from_secs(2));
    // The same with a request already sent: no reply, just the close.
    let mut stream = connect_from("127.0.0.2", agent.addr()).await;
    let plain = http::encode_request("exec", &form("service:echo,x", KEY));
    let _ = stream.write_all(&plain).await;
    assert!(read_to_eof(&mut stream, Duration::from_secs(2))
        .await
        .is_empty());
    // Logged as a warning that names the peer.
    eventually(Duration::from_secs(5), "the refusal in the log", || {
        let log = agent.log();
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("127.0.0.2") && l.contains("allow::hosts"))
            .then_some(())
    })
    .await;
    // An allowed peer is served as usual.
    call(Proto::V2, agent.addr(), "exec", "service:echo,x")
        .await
        .expect_code(200);
}

#[tokio::test]
async fn connections_per_peer_are_capped() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("max_connections_per_peer", 2)
        .start(&sb);
    let addr = agent.addr();
    // Two stalled connections from 127.0.0.1 hold its two slots…
    let one = connect(addr).await;
    let _two = connect(addr).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …so a third is closed at once, without a byte.
    let mut third = connect(addr).await;
    assert!(read_to_eof(&mut third, Duration::from_secs(2))
        .await
        .is_empty());
    drop(one);
    drop(_two);
    // Once the stalled ones are gone, the peer is served again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match v2(addr, KEY, None, request("exec", "service:echo,x")).await {
            Ok(r) if r.code == 200 => break,
            other => assert!(Instant::now() < deadline, "never served again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        agent.log().contains("max_connections_per_peer"),
        "{}",
        agent.log()
    );
}

/// Sends a v1 ssl request (raw, already wrapped) and returns the raw answer.
async fn ssl_exchange(addr: SocketAddr, aes: &str, sealed: &[u8]) -> Vec<u8> {
    v1_raw(addr, &ssl::encode_ssl_request(aes, sealed)).await
}

/// The `ssl-length` header and the sealed bytes of an ssl answer.
async fn ssl_parts(raw: &[u8]) -> (usize, Vec<u8>) {
    let mut reader = raw;
    let (head, ciphertext) = ssl::read_ssl_response(&mut reader, &Limits::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "not an ssl answer ({e}): {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    assert!(reader.is_empty(), "trailing bytes after the ssl answer");
    (head.length, ciphertext)
}

#[tokio::test]
async fn every_ssl_failure_gets_the_same_answer() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("ssl_max_failures", 0).start(&sb);
    let addr = agent.addr();
    let passphrase = ssl::new_passphrase().unwrap();
    let aes = ssl::wrap_passphrase(&agent_public_key(), &passphrase).unwrap();

    // A wrong auth_key: the envelope opens, the key does not match.
    let wrong_key = http::encode_request("exec", &form("service:echo,x", "not-the-key"));
    let wrong = ssl_exchange(addr, &aes, &ssl::seal(&passphrase, &wrong_key).unwrap()).await;
    let (wrong_len, wrong_sealed) = ssl_parts(&wrong).await;
    let reply = parse_plain(&ssl::open(&passphrase, &wrong_sealed).unwrap());
    reply.expect_code(401);

    // A good request whose padding was tampered with (the byte before the last block
    // changes the last block's padding byte). It must not close the connection nor
    // answer anything else.
    let good = http::encode_request("exec", &form("service:echo,x", KEY));
    let mut tampered = ssl::seal(&passphrase, &good).unwrap();
    let n = tampered.len();
    for flip in [0x01u8, 0x40, 0xff] {
        tampered[n - 17] ^= flip;
        let raw = ssl_exchange(addr, &aes, &tampered).await;
        tampered[n - 17] ^= flip;
        let (len, sealed) = ssl_parts(&raw).await;
        assert_eq!(raw.len(), wrong.len(), "flip {flip:#x}: {raw:?}");
        assert_eq!(len, wrong_len);
        assert_eq!(&sealed[..8], ssl::MAGIC);
        assert_eq!(&raw[..raw.len() - len], &wrong[..wrong.len() - wrong_len]);
        // Sealed with the client's passphrase, like the wrong-key answer.
        if let Ok(plain) = ssl::open(&passphrase, &sealed) {
            assert_eq!(parse_plain(&plain).code, 401);
        }
    }

    // Bytes that do not decrypt to a request at all, and a passphrase that does not
    // unwrap: the same size again (the latter sealed under a passphrase nobody knows).
    let garbage = ssl::seal(&passphrase, b"no request in here").unwrap();
    let raw = ssl_exchange(addr, &aes, &garbage).await;
    assert_eq!(raw.len(), wrong.len());
    let other = ssl::new_passphrase().unwrap();
    let raw = ssl_exchange(addr, "QUFBQQ==", &ssl::seal(&other, &wrong_key).unwrap()).await;
    assert_eq!(raw.len(), wrong.len(), "{raw:?}");
    assert!(ssl::open(&other, &ssl_parts(&raw).await.1).is_err());

    // And the untampered request works.
    let raw = ssl_exchange(addr, &aes, &ssl::seal(&passphrase, &good).unwrap()).await;
    let (_, sealed) = ssl_parts(&raw).await;
    parse_plain(&ssl::open(&passphrase, &sealed).unwrap()).expect_code(200);
}

#[tokio::test]
async fn repeated_ssl_failures_refuse_the_peer() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("ssl_max_failures", 3).start(&sb);
    let addr = agent.addr();
    for _ in 0..3 {
        v1_ssl(addr, "exec", "service:echo,x", "not-the-key")
            .await
            .expect_code(401);
    }
    // The fourth, even a good one, is closed before anything is read or decrypted.
    let passphrase = ssl::new_passphrase().unwrap();
    let aes = ssl::wrap_passphrase(&agent_public_key(), &passphrase).unwrap();
    let good = http::encode_request("exec", &form("service:echo,x", KEY));
    let raw = ssl_exchange(addr, &aes, &ssl::seal(&passphrase, &good).unwrap()).await;
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    // The log line is written as the connection closes: wait for it, not race it.
    eventually(
        Duration::from_secs(5),
        "the ssl_max_failures refusal in the log",
        || agent.log().contains("ssl_max_failures").then_some(()),
    )
    .await;
    // Only v1 ssl: v2 and v1 plain are still served to that peer.
    for proto in [Proto::V2, Proto::V1Plain] {
        call(proto, addr, "exec", "service:echo,x")
            .await
            .expect_code(200);
    }
}

/// With `legacy_protocol = off` a v1 ssl caller still costs a private-key operation
/// (its refusal is sealed), so requests that do not open count as failures there too.
#[tokio::test]
async fn ssl_failures_count_when_v1_is_off() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("legacy_protocol", "off")
        .server("ssl_max_failures", 3)
        .start(&sb);
    let addr = agent.addr();
    let good = http::encode_request("exec", &form("service:echo,x", KEY));
    let exchange = |key: deploy_common::crypto::RsaPublicKey| {
        let good = good.clone();
        async move {
            let passphrase = ssl::new_passphrase().unwrap();
            let aes = ssl::wrap_passphrase(&key, &passphrase).unwrap();
            ssl_exchange(addr, &aes, &ssl::seal(&passphrase, &good).unwrap()).await
        }
    };
    // Wrapped for another key: answered (sealed, unreadable), and counted.
    for _ in 0..3 {
        assert!(!exchange(other_public_key()).await.is_empty());
    }
    // The fourth, even for the right key, is closed before anything is decrypted.
    let raw = exchange(agent_public_key()).await;
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    assert!(agent.log().contains("ssl_max_failures"), "{}", agent.log());
}

#[tokio::test]
async fn ssl_off_serves_no_v1_ssl_and_on_no_v1_plain() {
    let sb = Sandbox::new();
    let off = Config::new(&sb).server("ssl", "off").start(&sb);
    let good = http::encode_request("exec", &form("service:echo,x", KEY));
    // The explanation is sealed with the caller's passphrase (the agent has its private
    // key, for v2), so that the Perl client can print it; nothing is run.
    let r = parse_plain(&v1_ssl_raw(off.addr(), &good).await);
    r.expect_code(400);
    assert!(r.text.contains("ssl = off"), "{r:?}");
    call(Proto::V1Plain, off.addr(), "exec", "service:echo,x")
        .await
        .expect_code(200);

    let sb = Sandbox::new();
    let on = Config::new(&sb).server("ssl", "on").start(&sb);
    call(Proto::V1Ssl, on.addr(), "exec", "service:echo,x")
        .await
        .expect_code(200);
    call(Proto::V1Plain, on.addr(), "exec", "service:echo,x")
        .await
        .expect_code(400);
}

#[tokio::test]
async fn the_log_names_keys_commands_auth_failures_and_transfer_ends() {
    let sb = Sandbox::new();
    let source = sb.join("source");
    make_tree(&source);
    let rsyncd = RsyncDaemon::start(&source);
    let target = sb.allowed().join("web");
    let agent = Config::new(&sb)
        .server("allow_run", "on")
        .group(
            "web",
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &target.display().to_string()),
            ],
        )
        .start(&sb);
    let addr = agent.addr();

    // A `run` with an API key: the access line has the command and the key's hash only.
    let mut run = request("run", "");
    run.argv = vec!["/bin/echo".into(), "hello there".into()];
    run.api_key = "very-secret-api-key".into();
    let reply = v2(addr, KEY, None, run).await.expect("v2");
    assert_eq!(reply.code, 200, "{reply:?}");
    // An auth failure on each wire: a WARN line with the peer's address.
    let _ = v2(addr, "wrong-key", None, request("exec", "service:echo,x")).await;
    v1_plain(addr, "exec", "service:echo,x", "wrong-key")
        .await
        .expect_code(401);
    // A followed transfer: its end is logged with code, bytes and time.
    let mut rsync = request("rsync", "web");
    rsync.follow = true;
    v2(addr, KEY, None, rsync)
        .await
        .expect("v2")
        .expect_code(200);

    let log = eventually(Duration::from_secs(10), "the transfer's end", || {
        let log = agent.log();
        log.contains("transfer finished").then_some(log)
    })
    .await;
    let run_line = log
        .lines()
        .find(|l| l.contains("\"run v2\" 200"))
        .unwrap_or_else(|| panic!("no access line for run: {log}"));
    assert!(
        run_line.contains("argv=\"/bin/echo \\\"hello there\\\"\""),
        "{run_line}"
    );
    let key = deploy_common::server::log::key_id("very-secret-api-key");
    assert!(key.starts_with("sha256:") && key.len() == 19, "{key}");
    assert!(run_line.contains(&format!("key={key}")), "{run_line}");
    assert!(!log.contains("very-secret-api-key"), "{log}");
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("127.0.0.1"))
        .collect();
    assert!(
        warns.iter().any(|l| l.contains("handshake failed")),
        "{warns:#?}"
    );
    assert!(warns.iter().any(|l| l.contains("auth_key")), "{warns:#?}");
    let end = log
        .lines()
        .find(|l| l.contains("transfer finished"))
        .unwrap_or_default();
    assert!(end.contains("code=0"), "{end}");
    assert!(end.contains("elapsed="), "{end}");
    assert!(!end.contains("bytes=-"), "{end}");
    // Standard error is a pipe here: no colours.
    assert!(!log.contains('\u{1b}'), "{log:?}");
}
