//! The original's captured wire vectors (`shared/spec/legacy-vectors`) replayed against
//! the agent, configured as in the vectors' README ("Configuration the vectors were made
//! against"), with an rsync daemon serving the README's module layout.
//!
//! Each request is sent byte for byte except its `auth_key`, which is re-minted for now
//! with the vector's `key_cipher` (same length, so `Content-Length` stays right); ssl
//! requests are the captured plaintexts re-sealed for the agent's key (the `aes:` block
//! is randomized, so it cannot be replayed). The reply must match the capture:
//!
//! * non-JSON replies (400, 401, 403) byte for byte, the whole response;
//! * JSON replies: status line and headers exactly, body compared as parsed JSON (the
//!   original's key order was random per process).
//!
//! Two deliberate deviations, both fixes of spec §4.9/§15.15 (the original mis-parsed
//! rsync ≥ 3.1 statistics): vector 01's `transferFilesCount`/`transferFilesSize` and
//! vector 02's `transferFilesCount` are the real figures here, so for those the
//! `Content-Length` header is not compared either.

use crate::util::*;
use deploy_common::legacy::auth;
use serde_json::{json, Value};
use std::path::Path;

/// The vectors replayed, in this order (the target state they assume holds throughout:
/// the dry runs and the `rkill` of nothing change nothing).
const CASES: &[&str] = &[
    "01-status-web",
    "02-rlist-opts",
    "03-exec-echo",
    "04-exec-unknown",
    "05-bad-key-cipher",
    "06-path-denied",
    "07-rkill-opts",
    "08-proxy-exec-web.agent-leg",
];

/// The README's rsync module: 120 random files of NNN × 997 bytes, `we"ird.txt`,
/// `sub/s1..5.conf`, `sub/deeper/d1..5`.
fn vector_tree(root: &Path) {
    for n in 1..=120u64 {
        make_blob(&root.join(format!("file{n:03}.txt")), (n * 997) as usize);
    }
    std::fs::write(root.join("we\"ird.txt"), b"weird \"quoted\" name\n").unwrap();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    for n in 1..=5 {
        std::fs::write(root.join(format!("sub/s{n}.conf")), format!("sub {n}\n")).unwrap();
        std::fs::write(root.join(format!("sub/deeper/d{n}")), format!("deep {n}\n")).unwrap();
    }
}

/// Body fields where this agent deliberately differs from the capture, with its value.
fn deviations(case: &str) -> Value {
    match case {
        // 120 × 997 × 121 / 2 + 20 + 5 × 6 + 5 × 7 bytes in 131 files.
        "01-status-web" => json!({"transferFilesCount": "131", "transferFilesSize": "7238305"}),
        // 10 files of 65 bytes; the original reported "0" files.
        "02-rlist-opts" => json!({"transferFilesCount": "10"}),
        // exec results carry the job's exit code (a new key, issue 9).
        "03-exec-echo" | "08-proxy-exec-web.agent-leg" => json!({"code": "0"}),
        _ => json!({}),
    }
}

/// The request of vector `v` with a fresh `auth_key` of the same length.
fn fresh_request(v: &Value) -> Vec<u8> {
    let files = &v["files"];
    let file = if v["mode"] == "plain" {
        files["request"].as_str().unwrap()
    } else {
        files["request_plain"].as_str().unwrap()
    };
    let mut bytes = std::fs::read(vectors_dir().join(file)).unwrap();
    let old = v["auth_key"].as_str().unwrap();
    let needle = format!("auth_key={old}");
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or_else(|| panic!("{}: no {needle:?} in the request", v["id"]))
        + "auth_key=".len();
    let new = auth::make_auth_key(v["key_cipher"].as_str().unwrap(), unix_now());
    assert_eq!(new.len(), old.len(), "auth_key length changed");
    bytes.splice(at..at + old.len(), new.bytes());
    bytes
}

fn split_response(bytes: &[u8]) -> (Vec<String>, Vec<u8>) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(bytes)));
    let head = String::from_utf8(bytes[..at].to_vec()).unwrap();
    (
        head.split("\r\n").map(str::to_owned).collect(),
        bytes[at + 4..].to_vec(),
    )
}

#[tokio::test]
async fn legacy_vectors_replayed() {
    let index: Value =
        serde_json::from_slice(&std::fs::read(vectors_dir().join("vectors.json")).unwrap())
            .unwrap();
    let sb = Sandbox::new();
    let source = sb.join("DEST");
    vector_tree(&source);
    let rsyncd = RsyncDaemon::start(&source);
    let target = sb.allowed().display().to_string();
    std::fs::create_dir(sb.allowed().join("opts")).unwrap();
    let agent = Config::new(&sb)
        .hosts(&["127.0.0.1", "127.0.0.0/8"])
        .group(
            "web",
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &format!("{target}/web")),
                ("exclude[]", ".git"),
            ],
        )
        .group(
            "opts",
            &[
                ("dest", &rsyncd.url("DEST/sub")),
                ("src", &format!("{target}/opts")),
                ("option[]", "--recursive"),
                ("option[]", "--times"),
            ],
        )
        .group(
            "slow",
            &[
                ("dest", &rsyncd.url("DEST")),
                ("src", &format!("{target}/slow")),
                ("option[]", "--archive"),
                ("option[]", "--bwlimit=300"),
            ],
        )
        .group(
            "denied",
            &[("dest", "127.0.0.1::DEST"), ("src", "/etc/should-not-sync")],
        )
        .job("app:date", "/bin/date %s")
        .start(&sb);

    let mut replayed = 0;
    for case in CASES {
        for mode in ["plain", "ssl"] {
            let id = format!("{case}.{mode}");
            let v = index["vectors"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["id"] == id.as_str())
                .unwrap_or_else(|| panic!("no vector {id}"));
            let expected = &v["expected"];
            let request = fresh_request(v);
            let (got, captured) = if mode == "plain" {
                (
                    v1_raw(agent.addr(), &request).await,
                    std::fs::read(vectors_dir().join(v["files"]["response"].as_str().unwrap()))
                        .unwrap(),
                )
            } else {
                (
                    v1_ssl_raw(agent.addr(), &request).await,
                    std::fs::read(
                        vectors_dir().join(v["files"]["response_plain"].as_str().unwrap()),
                    )
                    .unwrap(),
                )
            };
            let (head, body) = split_response(&got);
            assert_eq!(
                head[0],
                format!(
                    "HTTP/1.1 {} {}",
                    expected["code"],
                    expected["reason"].as_str().unwrap()
                ),
                "{id}: status line"
            );
            let want_headers: Vec<&str> = expected["headers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap())
                .collect();
            let deviation = deviations(case);
            let deviates = !deviation.as_object().unwrap().is_empty();
            if deviates {
                let strip = |hs: Vec<&str>| -> Vec<String> {
                    hs.into_iter()
                        .filter(|h| !h.starts_with("Content-Length:"))
                        .map(str::to_owned)
                        .collect()
                };
                assert_eq!(
                    strip(head[1..].iter().map(String::as_str).collect()),
                    strip(want_headers),
                    "{id}: headers"
                );
            } else {
                assert_eq!(head[1..], want_headers, "{id}: headers");
            }
            match &expected["body_json"] {
                Value::Null => {
                    assert_eq!(
                        String::from_utf8_lossy(&body),
                        expected["body"].as_str().unwrap(),
                        "{id}: body"
                    );
                    assert_eq!(
                        String::from_utf8_lossy(&got),
                        String::from_utf8_lossy(&captured),
                        "{id}: the whole response, byte for byte"
                    );
                }
                want => {
                    let mut want = want.clone();
                    for (k, val) in deviation.as_object().unwrap() {
                        want[k] = val.clone();
                    }
                    let ours: Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                        panic!(
                            "{id}: body is not JSON ({e}): {}",
                            String::from_utf8_lossy(&body)
                        )
                    });
                    assert_eq!(ours, want, "{id}: JSON body");
                }
            }
            replayed += 1;
        }
    }
    assert_eq!(replayed, CASES.len() * 2);
    assert!(
        !sb.allowed().join("web").exists(),
        "a status must not transfer"
    );
}

/// Parsing quirks of the original server that Perl clients (or hand-written scripts)
/// rely on (spec §2.3, §2.5): bare-LF lines, header names in any case, `+` and `%XX`
/// decoding, a GET query, and the `WHO` banner of the ssl mode.
#[tokio::test]
async fn v1_parsing_like_the_original() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).start(&sb);
    let addr = agent.addr();
    let key = auth::make_auth_key(KEY, unix_now());

    let body = format!("auth_key={key}&options=service:echo,a+b,c%2Cd,%41&args=&api_key=");
    let bare_lf = format!(
        "POST /agent/exec HTTP/1.1\ncontent-LENGTH: {}\n\n{body}",
        body.len()
    );
    let r = parse_plain(&v1_raw(addr, bare_lf.as_bytes()).await);
    r.expect_code(200);
    // `+` is a space, `%41` an `A`; `%2C` decodes to a comma before the split, so it
    // separates arguments as in the original.
    assert_eq!(r.s("content"), b64("a b c d A\n"));
    assert_eq!(r.s("command"), b64("/bin/echo a b c d A"));

    // Unknown form keys are ignored; the last duplicate wins.
    let body = format!("x=1&options=service:echo,first&auth_key={key}&options=service:echo,last");
    let req = format!(
        "POST /agent/exec HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = parse_plain(&v1_raw(addr, req.as_bytes()).await);
    r.expect_code(200);
    assert_eq!(r.s("content"), b64("last\n"));

    // `WHO` before the ssl headers gets the banner, then the normal ssl exchange.
    let plain =
        deploy_common::legacy::http::encode_request_escaped("exec", &form("service:echo,who", KEY));
    let passphrase = deploy_common::legacy::ssl::new_passphrase().unwrap();
    let aes =
        deploy_common::legacy::ssl::wrap_passphrase(&agent_public_key(), &passphrase).unwrap();
    let sealed = deploy_common::legacy::ssl::seal(&passphrase, &plain).unwrap();
    let mut request =
        format!("WHO\r\naes:{aes}\r\nssl-length:{}\r\n\r\n", sealed.len()).into_bytes();
    request.extend_from_slice(&sealed);
    let raw = v1_raw(addr, &request).await;
    let rest = raw
        .strip_prefix(b"DEPLOY-SSL\r\n")
        .unwrap_or_else(|| panic!("no banner: {:?}", String::from_utf8_lossy(&raw)));
    let mut reader: &[u8] = rest;
    let (_, ciphertext) = deploy_common::legacy::ssl::read_ssl_response(
        &mut reader,
        &deploy_common::legacy::Limits::default(),
    )
    .await
    .unwrap();
    let r = parse_plain(&deploy_common::legacy::ssl::open(&passphrase, &ciphertext).unwrap());
    r.expect_code(200);
    assert_eq!(r.s("content"), b64("who\n"));
}
