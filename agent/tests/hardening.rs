//! The original's weaknesses (spec §15), each shown closed against the running agent:
//!
//! * shell metacharacters, backslashes and `%0A` newlines in `exec` arguments reach the
//!   program as data (§15.2);
//! * `;` and `$(…)` in inline rsync `dest,src` never reach a shell (§15.1);
//! * `..` and symlinks cannot lead a target out of `[allow::paths]` (§15.3);
//! * `rsync://` sources work (the original mangled them) while local-path, ssh-style and
//!   option-like sources are refused (§4.1, §15.15);
//! * v2 records cannot be replayed or tampered with (§15.5, §15.6);
//! * a client that stalls mid-request is cut off at `socket_timeout` (§15.12);
//! * a huge `Content-Length` is refused at once, not allocated (§15.11);
//! * two concurrent `rsync` orders start one transfer (§15.15);
//! * `rlist` reads rsync's itemized output, so a new file named `deleting x` is new and
//!   a file named `x -> y` is one name (issue 8 §7).

use crate::util::*;
use deploy_common::legacy::http;
use deploy_common::wire::message::Message;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Asserts `path` does not exist, naming the payload that would have created it.
fn assert_absent(path: &Path, payload: &str) {
    assert!(
        !path.exists(),
        "{} was created: {payload:?} reached a shell",
        path.display()
    );
}

#[tokio::test]
async fn exec_arguments_are_data_not_shell() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let p = |n: &str| sb.join(&format!("pwned-{n}"));
    let payloads = [
        (format!("a;touch {}", p("semicolon").display()), "semicolon"),
        (format!("$(touch {})", p("subst").display()), "subst"),
        (format!("`touch {}`", p("backtick").display()), "backtick"),
        (
            format!("a\\;touch {}", p("backslash").display()),
            "backslash",
        ),
        (format!("a && touch {}", p("and").display()), "and"),
        (format!("x > {}", p("redirect").display()), "redirect"),
        (format!("'\"; touch {} #", p("quotes").display()), "quotes"),
        (format!("a\ntouch {}", p("newline").display()), "newline"),
    ];
    for proto in [Proto::V2, Proto::V1Plain, Proto::V1Ssl] {
        for (payload, name) in &payloads {
            let r = call(
                proto,
                agent.addr(),
                "exec",
                &format!("service:echo,{payload}"),
            )
            .await;
            r.expect_code(200);
            assert_eq!(r.s("return"), "true");
            assert_eq!(
                String::from_utf8(unb64(r.s("content"))).unwrap(),
                format!("{payload}\n"),
                "{proto:?}: echo must print the literal text"
            );
            assert_absent(&p(name), payload);
        }
    }

    // The original's own attack: a raw `%0A` in an unescaped v1 body becomes a newline
    // inside the argument, not a second command line.
    let target = p("percent0a");
    let raw_options = format!("service:echo,a%0Atouch {}", target.display());
    let bytes = http::encode_request("exec", &form(&raw_options, KEY));
    let r = parse_plain(&v1_raw(agent.addr(), &bytes).await);
    r.expect_code(200);
    assert_eq!(
        String::from_utf8(unb64(r.s("content"))).unwrap(),
        format!("a\ntouch {}\n", target.display())
    );
    let plain = http::encode_request("exec", &form(&raw_options, KEY));
    let r = parse_plain(&v1_ssl_raw(agent.addr(), &plain).await);
    r.expect_code(200);
    assert_absent(&target, &raw_options);

    // The job name is looked up exactly, not as a pattern.
    let r = call(Proto::V2, agent.addr(), "exec", "service:.*,x").await;
    r.expect_code(400);
    assert_eq!(r.text, "exec[service:.*] not found!");
}

#[tokio::test]
async fn rsync_options_never_reach_a_shell() {
    let sb = Sandbox::new();
    let source = sb.join("source");
    make_tree(&source);
    let rsyncd = RsyncDaemon::start(&source);
    let agent = Config::new(&sb).start(&sb);
    let url = rsyncd.url("DEST");
    let p = |n: &str| sb.join(&format!("pwned-{n}"));
    let outside = sb.join("outside").display().to_string();
    let allowed_x = sb.allowed_str("x");

    // Refused before anything runs: 400 (not a daemon source / not absolute / control
    // characters) or 403 (outside the allowed root).
    let refused = [
        (
            format!("{url},{outside};touch {}", p("a").display()),
            "a",
            403,
        ),
        (format!("{url},$(touch {})", p("b").display()), "b", 400),
        (format!("{url},`touch {}`", p("c").display()), "c", 400),
        (
            format!("{url},{allowed_x}\ntouch {}", p("d").display()),
            "d",
            400,
        ),
        (
            format!("$(touch {})::DEST,{allowed_x}", p("e").display()),
            "e",
            400,
        ),
        (
            format!("-e touch {},{allowed_x}", p("f").display()),
            "f",
            400,
        ),
    ];
    for proto in [Proto::V2, Proto::V1Plain] {
        for (options, name, code) in &refused {
            for o in ["status", "rlist", "rsync"] {
                let r = call(proto, agent.addr(), o, options).await;
                assert_eq!(r.code, *code, "{proto:?} {o} {options:?}: {r:?}");
                assert!(r.json.is_none(), "{r:?}");
            }
            assert_absent(&p(name), options);
        }
    }

    // Metacharacters inside a module name are just an unknown module to rsync: the dry
    // run fails cleanly (return "false" with rsync's message) and nothing is executed.
    for (options, name) in [
        (format!("{url};touch {},{allowed_x}", p("h").display()), "h"),
        (
            format!("{url}$(touch {}),{allowed_x}", p("i").display()),
            "i",
        ),
        (
            format!("{url} --rsh='touch {}',{allowed_x}", p("g").display()),
            "g",
        ),
    ] {
        let r = call(Proto::V2, agent.addr(), "status", &options).await;
        match r.code {
            400 => {}
            200 => {
                assert_eq!(r.s("return"), "false", "{r:?}");
                let out = String::from_utf8_lossy(&unb64(r.s("content"))).into_owned();
                assert!(out.contains("Unknown module"), "{out}");
            }
            _ => panic!("{options:?}: {r:?}"),
        }
        // The background path too: the runner must not go through a shell either.
        let r = call(Proto::V2, agent.addr(), "rsync", &options).await;
        assert!(matches!(r.code, 200 | 400), "{r:?}");
        if r.code == 200 {
            eventually(
                Duration::from_secs(10),
                "the failed transfer to end",
                || {
                    // A transfer's state directory gets its `exit` file when it ends.
                    std::fs::read_dir(sb.join("state"))
                        .ok()?
                        .flatten()
                        .all(|d| d.path().join("exit").exists())
                        .then_some(())
                },
            )
            .await;
        }
        assert_absent(&p(name), &options);
    }
}

#[tokio::test]
async fn dotdot_and_symlinks_cannot_escape() {
    let sb = Sandbox::new();
    let allowed = sb.allowed().display().to_string();
    std::os::unix::fs::symlink(sb.join("outside"), sb.allowed().join("link")).unwrap();
    std::os::unix::fs::symlink(sb.join("nowhere"), sb.allowed().join("dangling")).unwrap();
    let agent = Config::new(&sb)
        .group(
            "via-link",
            &[
                ("dest", "127.0.0.1::DEST"),
                ("src", &format!("{allowed}/link/web")),
            ],
        )
        .start(&sb);
    let targets = [
        format!("{allowed}/../outside/x"),
        format!("{allowed}/../../tmp/x"),
        format!("{allowed}/new/../../outside"),
        format!("{allowed}/x/../../../etc"),
        format!("{allowed}/link"),
        format!("{allowed}/link/x"),
        format!("{allowed}/dangling/x"),
        format!("{allowed}-sibling/x"),
    ];
    for proto in [Proto::V2, Proto::V1Plain, Proto::V1Ssl] {
        for target in &targets {
            for o in ["status", "rlist", "rsync", "rkill"] {
                let r = call(proto, agent.addr(), o, &format!("127.0.0.1::DEST,{target}")).await;
                r.expect_code(403);
                assert_eq!(r.text, format!("{target} is not allowed!"), "{o}");
            }
        }
        let r = call(proto, agent.addr(), "status", "via-link").await;
        r.expect_code(403);
        assert_eq!(r.text, format!("{allowed}/link/web is not allowed!"));
    }
    assert_eq!(std::fs::read_dir(sb.join("outside")).unwrap().count(), 0);
}

#[tokio::test]
async fn rlist_names_that_look_like_rsync_output() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let sb = Sandbox::new();
    let source = sb.join("source");
    std::fs::create_dir_all(&source).unwrap();
    for name in [&b"deleting x"[..], b"x -> y", b"a  b ", b"n\nl", b"bad\xff"] {
        std::fs::write(source.join(OsStr::from_bytes(name)), "s").unwrap();
    }
    let rsyncd = RsyncDaemon::start(&source);
    let agent = Config::new(&sb).start(&sb);
    let target = sb.allowed_str("names");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(Path::new(&target).join("deleting y"), "t").unwrap();
    let options = format!("rsync://127.0.0.1:{}/DEST,{target}", rsyncd.port);
    for proto in [Proto::V2, Proto::V1Plain] {
        let r = call(proto, agent.addr(), "rlist", &options).await;
        r.expect_code(200);
        let mut new = r.list("transferNewFiles");
        new.sort();
        assert_eq!(
            new,
            ["a  b ", r"bad\#377", "deleting x", r"n\#012l", "x -> y"],
            "{r:?}"
        );
        assert_eq!(r.list("transferDeleteFiles"), ["deleting y"], "{r:?}");
        assert_eq!(r.s("transferFilesCount"), "6", "{r:?}");
    }
}

#[tokio::test]
async fn sources_rsync_url_works_local_paths_refused() {
    let sb = Sandbox::new();
    let source = sb.join("source");
    make_tree(&source);
    let rsyncd = RsyncDaemon::start(&source);
    let agent = Config::new(&sb).start(&sb);
    let target = sb.allowed_str("inline");
    // An rsync:// URL with a port and a doubled slash inside: the scheme survives the
    // slash collapsing (the original turned it into `rsync:/`).
    let options = format!("rsync://127.0.0.1:{}/DEST//sub,{target}", rsyncd.port);
    for proto in [Proto::V2, Proto::V1Plain, Proto::V1Ssl] {
        let r = call(proto, agent.addr(), "rlist", &options).await;
        r.expect_code(200);
        assert_eq!(r.s("return"), "true", "{r:?}");
        let mut new = r.list("transferNewFiles");
        new.retain(|n| !n.starts_with("created directory"));
        new.sort();
        assert_eq!(
            new,
            [
                "sub/deeper/d1",
                "sub/deeper/d2",
                "sub/deeper/d3",
                "sub/deeper/d4",
                "sub/deeper/d5",
                "sub/s1.conf",
                "sub/s2.conf",
                "sub/s3.conf",
                "sub/s4.conf",
                "sub/s5.conf"
            ]
        );
    }
    let r = call(Proto::V2, agent.addr(), "rsync", &options).await;
    r.expect_code(200);
    eventually(Duration::from_secs(10), "inline transfer", || {
        std::fs::read(sb.allowed().join("inline/sub/deeper/d5"))
            .ok()
            .filter(|c| c == b"deep 5\n")
    })
    .await;

    // Local files, ssh-style and option-like sources are refused.
    let x = sb.allowed_str("x");
    for dest in [
        "/etc",
        "/etc/",
        "localhost:/etc",
        "root@localhost:/etc",
        "-av",
        "--files-from=/etc/passwd",
        "file:///etc",
        "rsync://",
        "127.0.0.1::",
    ] {
        let r = call(Proto::V2, agent.addr(), "status", &format!("{dest},{x}")).await;
        r.expect_code(400);
        assert!(r.json.is_none(), "{dest}: {r:?}");
    }
    assert!(!sb.allowed().join("x").exists());
}

/// Records everything written through it and can flip one byte of the next write.
struct Tap {
    inner: TcpStream,
    written: Arc<Mutex<Vec<u8>>>,
    corrupt_next: Arc<Mutex<Option<usize>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut data = buf.to_vec();
        if let Some(at) = *self.corrupt_next.lock().unwrap() {
            if let Some(b) = data.get_mut(at) {
                *b ^= 0x01;
            }
        }
        let poll = Pin::new(&mut self.inner).poll_write(cx, &data);
        if let Poll::Ready(Ok(n)) = &poll {
            self.written.lock().unwrap().extend_from_slice(&buf[..*n]);
            *self.corrupt_next.lock().unwrap() = None;
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type TappedConn = deploy_common::wire::connection::SecureConnection<Tap>;

async fn tapped(
    addr: std::net::SocketAddr,
) -> (TappedConn, Arc<Mutex<Vec<u8>>>, Arc<Mutex<Option<usize>>>) {
    let written = Arc::new(Mutex::new(Vec::new()));
    let corrupt = Arc::new(Mutex::new(None));
    let tap = Tap {
        inner: connect(addr).await,
        written: Arc::clone(&written),
        corrupt_next: Arc::clone(&corrupt),
    };
    let params = deploy_common::wire::handshake::ClientParams {
        key_cipher: KEY,
        pinned: Some(&agent_public_key()),
        now: unix_now(),
    };
    let conn = tokio::time::timeout(
        IO_TIMEOUT,
        deploy_common::wire::handshake::client(tap, params),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake");
    (conn, written, corrupt)
}

/// Expects the agent to end the connection without sending anything more.
async fn expect_closed_without_reply(conn: &mut TappedConn) {
    match tokio::time::timeout(Duration::from_secs(5), conn.recv()).await {
        Ok(Ok(None)) | Ok(Err(_)) => {}
        Ok(Ok(Some(m))) => panic!("the agent answered a bad record: {m:?}"),
        Err(_) => panic!("the agent kept the connection open after a bad record"),
    }
}

#[tokio::test]
async fn v2_replayed_record_is_rejected() {
    let sb = Sandbox::new();
    let marker = sb.join("ran-twice");
    let agent = Config::new(&sb)
        .job("service:append", "/usr/bin/tee -a %s")
        .start(&sb);
    let (mut conn, written, _) = tapped(agent.addr()).await;
    let mark = written.lock().unwrap().len();
    conn.send(&Message::Request {
        id: 1,
        request: request("exec", &format!("service:append,{}", marker.display())),
    })
    .await
    .unwrap();
    let record = written.lock().unwrap()[mark..].to_vec();
    match tokio::time::timeout(IO_TIMEOUT, conn.recv()).await {
        Ok(Ok(Some(Message::Reply { code: 200, .. }))) => {}
        other => panic!("first request: {other:?}"),
    }
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();
    // The same sealed record again, byte for byte, on the same connection.
    conn.get_mut().write_all(&record).await.unwrap();
    expect_closed_without_reply(&mut conn).await;
    assert!(!marker.exists(), "the replayed order ran again");
}

#[tokio::test]
async fn v2_tampered_record_is_rejected() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("socket_timeout", 2).start(&sb);
    for offset in [3usize, 10, 40] {
        let (mut conn, _, corrupt) = tapped(agent.addr()).await;
        // Flip one bit of the next record: in its length prefix (3), or inside the
        // ciphertext (10, 40).
        *corrupt.lock().unwrap() = Some(offset);
        let _ = conn
            .send(&Message::Request {
                id: 1,
                request: request("exec", "service:echo,tampered"),
            })
            .await;
        expect_closed_without_reply(&mut conn).await;
    }
    // A clean connection still works afterwards.
    let r = call(Proto::V2, agent.addr(), "exec", "service:echo,ok").await;
    r.expect_code(200);
}

#[tokio::test]
async fn stalled_clients_are_cut_at_socket_timeout() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("socket_timeout", 2).start(&sb);
    let addr = agent.addr();
    let stall = |prefix: &'static [u8]| async move {
        let mut stream = connect(addr).await;
        stream.write_all(prefix).await.unwrap();
        let started = Instant::now();
        let got = read_to_eof(&mut stream, Duration::from_secs(6)).await;
        (started.elapsed(), got)
    };
    let (plain, body_short, ssl, v2, idle) = tokio::join!(
        stall(b"POST /agent/status HT"),
        stall(b"POST /agent/exec HTTP/1.1\r\nContent-Length: 100\r\n\r\nauth_key="),
        stall(b"aes:QV/yezs1Ign"),
        stall(b"\0DEP"),
        stall(b""),
    );
    for (name, (took, got)) in [
        ("half a request line", plain),
        ("short body", body_short),
        ("half an ssl header", ssl),
        ("half the v2 magic", v2),
        ("nothing", idle),
    ] {
        assert!(
            took <= Duration::from_secs(3),
            "{name}: connection held {took:?} with socket_timeout = 2"
        );
        // Either a plain 408 or a bare close; never an order's reply.
        if !got.is_empty() {
            let r = parse_plain(&got);
            assert!(matches!(r.code, 400 | 408), "{name}: {r:?}");
        }
    }
    // The agent still serves.
    call(Proto::V1Plain, addr, "exec", "service:echo,x")
        .await
        .expect_code(200);
}

#[tokio::test]
async fn huge_content_length_is_refused_quickly() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let worker = agent.wait_workers(1).await[0];
    let before = vm_hwm_kib(worker);
    for length in ["1073741824", "99999999999999999999", "-1"] {
        let mut stream = connect(agent.addr()).await;
        let head = format!("POST /agent/status HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        // The start of a body; the agent must not wait for the rest of it.
        let started = Instant::now();
        stream.write_all(&[b'a'; 1024]).await.unwrap();
        let got = read_to_eof(&mut stream, Duration::from_secs(4)).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "Content-Length {length}: answered after {:?}",
            started.elapsed()
        );
        let r = parse_plain(&got);
        r.expect_code(400);
    }
    let after = vm_hwm_kib(worker);
    assert!(
        after < before + 64 * 1024,
        "worker peak memory grew from {before} KiB to {after} KiB"
    );
    call(Proto::V1Plain, agent.addr(), "exec", "service:echo,x")
        .await
        .expect_code(200);
}

#[tokio::test]
async fn concurrent_rsync_orders_start_one_transfer() {
    let sb = Sandbox::new();
    let source = sb.join("slow");
    make_blob(&source.join("big.bin"), 2 << 20);
    let rsyncd = RsyncDaemon::start(&source);
    let agent = Config::new(&sb)
        .server("max_prefork", 2)
        .group(
            "slow",
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &sb.allowed_str("slow")),
                ("option[]", "--archive"),
                ("option[]", "--bwlimit=100"),
            ],
        )
        .start(&sb);
    let addr = agent.addr();
    let replies = tokio::join!(
        call(Proto::V2, addr, "rsync", "slow"),
        call(Proto::V2, addr, "rsync", "slow"),
        call(Proto::V1Plain, addr, "rsync", "slow"),
        call(Proto::V1Plain, addr, "rsync", "slow"),
        call(Proto::V1Ssl, addr, "rsync", "slow"),
    );
    let replies = [replies.0, replies.1, replies.2, replies.3, replies.4];
    let started = replies
        .iter()
        .filter(|r| r.code == 200 && r.body().contains_key("checksum"))
        .count();
    let running = replies
        .iter()
        .filter(|r| r.code == 200 && r.body().get("alreadyRsync") == Some(&"true".into()))
        .count();
    assert_eq!((started, running), (1, 4), "{replies:#?}");
    let killed = call(Proto::V2, addr, "rkill", "slow").await;
    killed.expect_code(200);
    eventually(Duration::from_secs(10), "status idle after rkill", || {
        std::fs::read_dir(sb.join("state"))
            .ok()?
            .flatten()
            .all(|d| d.path().join("exit").exists())
            .then_some(())
    })
    .await;
}
