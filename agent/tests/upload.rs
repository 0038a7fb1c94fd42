//! `upload` to agents: the real deploy-client streams a tar as the request's body (v2
//! `continue`/`data` messages) to real agents, which extract it under `[allow::paths]`
//! in-process (the confined extractor), then run the command that follows (with `allow_run`). Refused
//! without `allow_upload`, outside the allowed paths, and for the command without
//! `allow_run`.

use crate::util::*;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

/// Runs deploy-client in `cwd` with `args`.
fn client_in(cwd: &std::path::Path, args: &[&str]) -> Output {
    run_command(
        Command::new(bins::client())
            .current_dir(cwd)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", KEY)
            .env("NO_COLOR", "1"),
        std::time::Duration::from_secs(30),
    )
}

/// Local files to send: `one.txt`, `run.sh` (mode 750) and `tree/` (a 300 kB file, an
/// empty directory).
fn source(sb: &Sandbox) -> std::path::PathBuf {
    let src = sb.join("src");
    std::fs::create_dir_all(src.join("tree/empty")).unwrap();
    std::fs::write(src.join("one.txt"), "one\n").unwrap();
    std::fs::write(
        src.join("run.sh"),
        "#!/bin/sh\necho ran in \"$PWD\"\ncat one.txt\n",
    )
    .unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    make_blob(&src.join("tree/big.bin"), 300_000);
    src
}

#[test]
fn upload_to_agents_then_run_there() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("allow_upload", "on")
        .server("allow_run", "on")
        .server("listen", "127.0.0.2:0")
        .hosts(&["127.0.0.0/8"])
        .start(&sb);
    let hosts: Vec<String> = agent.addrs.iter().map(ToString::to_string).collect();
    let hosts = hosts.join(",");
    let src = source(&sb);
    let root = format!("--root={}/%h-%p", sb.allowed().display());
    let out = client_in(
        &src,
        &[
            "--hosts",
            &hosts,
            "--order=upload",
            "--relative",
            "--upload=one.txt",
            "--upload=run.sh",
            "--upload=tree",
            &root,
            "--",
            "./run.sh",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    for addr in &agent.addrs {
        let dir = sb.allowed().join(format!("{}-{}", addr.ip(), addr.port()));
        assert_same_tree(&src.join("tree"), &dir.join("tree"));
        assert!(dir.join("tree/empty").is_dir());
        let mode = std::fs::metadata(dir.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
        assert!(
            out.stdout
                .contains(&format!("{addr}: ran in {}\n", dir.display())),
            "{out:#?}"
        );
        assert!(out.stdout.contains(&format!("{addr}: one\n")), "{out:#?}");
    }

    // The JSON result counts what was sent.
    let out = client_in(
        &src,
        &[
            "--hosts",
            &hosts,
            "--order=upload",
            "--relative",
            "--upload=one.txt",
            &root,
            "--format=json",
        ],
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let first = &doc[&hosts.split(',').next().unwrap()]["upload"]["content"];
    assert_eq!(first["files"], "1", "{out:#?}");
    assert_eq!(first["code"], "0", "{out:#?}");
}

#[test]
fn upload_refusals_name_their_reason() {
    let sb = Sandbox::new();
    let src = source(&sb);
    let off = Config::new(&sb).start(&sb);
    let host = off.addr().to_string();
    let root = format!("--root={}", sb.allowed_str("dest"));
    let args = |host: &str, root: &str| {
        let mut v: Vec<String> = [
            "--hosts",
            host,
            "--order=upload",
            "--relative",
            "--upload=one.txt",
            root,
        ]
        .map(String::from)
        .into();
        v.push("--format=text".into());
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        client_in(&src, &refs)
    };
    let out = run(args(&host, &root));
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("allow_upload = off"), "{out:#?}");

    let sb2 = Sandbox::new();
    let on = Config::new(&sb2).server("allow_upload", "on").start(&sb2);
    let host = on.addr().to_string();
    let outside = format!("--root={}", sb2.join("elsewhere").display());
    let out = run(args(&host, &outside));
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("403"), "{out:#?}");
    assert!(
        !sb2.join("elsewhere").exists(),
        "nothing created outside [allow::paths]"
    );

    let mut with_command = args(&host, &format!("--root={}", sb2.allowed_str("dest")));
    with_command.extend(["--".into(), "true".into()]);
    let out = run(with_command);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stdout.contains("allow_run = on"), "{out:#?}");
    assert!(
        !sb2.allowed().join("dest/one.txt").exists(),
        "refused before extracting"
    );
}

/// Sends `archive` as an upload's body with a raw v2 client; returns the reply's code
/// and text.
fn raw_upload(addr: std::net::SocketAddr, root: &str, archive: &[u8]) -> (u16, String) {
    use deploy_common::wire::message::Message;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = v2_connect(addr, KEY, None).await.expect("connect");
        let mut request = request("upload", "");
        request.upload = Some(Box::new(deploy_common::upload::UploadSpec {
            files: vec!["x".into()],
            root: root.to_owned(),
            ..Default::default()
        }));
        conn.send(&Message::Request { id: 1, request })
            .await
            .unwrap();
        match conn.recv().await.unwrap() {
            Some(Message::Continue { id: 1 }) => {}
            other => panic!("expected continue, got {other:?}"),
        }
        for piece in archive.chunks(1000) {
            conn.send(&Message::data(1, piece, false)).await.unwrap();
        }
        conn.send(&Message::data(1, &[], true)).await.unwrap();
        loop {
            match conn.recv().await.unwrap() {
                Some(Message::Reply {
                    code, text, body, ..
                }) => break (code, text.unwrap_or_else(|| format!("{body:?}"))),
                Some(Message::Event { .. }) => continue,
                other => panic!("expected the reply, got {other:?}"),
            }
        }
    })
}

/// A hostile (or careless) archive cannot write outside the root: not through a link
/// already under it, nor one it makes itself; no hard links, no devices.
#[test]
fn hostile_archives_are_refused() {
    use deploy_common::upload::{tar, Entry, Kind};
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("allow_upload", "on").start(&sb);
    let dest = sb.allowed().join("dest");
    let outside = sb.join("outside");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("etc")).unwrap();
    let entry = |name: &str, kind: Kind| Entry {
        local: "/dev/null".into(),
        name: name.into(),
        kind,
        mode: 0o4755,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    let archive = |entries: &[Entry]| {
        let mut out: Vec<u8> = entries.iter().flat_map(tar::header).collect();
        out.extend_from_slice(&[0u8; 1024]);
        out
    };
    let root = dest.display().to_string();
    let file = || Kind::File { size: 0 };
    for (entries, why) in [
        (vec![entry("etc/pwned", file())], "symbolic link"),
        (
            vec![
                entry(
                    "l",
                    Kind::Symlink {
                        target: outside.display().to_string(),
                    },
                ),
                entry("l/pwned", file()),
            ],
            "absolute path",
        ),
        (vec![entry("../pwned", file())], "`..`"),
    ] {
        let (code, text) = raw_upload(agent.addr(), &root, &archive(&entries));
        assert_eq!(code, 400, "{text}");
        assert!(text.contains(why), "{text}");
    }
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing outside"
    );
    // A hard link to a file outside the root.
    let mut h = tar::header(&entry("hard", file()));
    h[156] = b'1';
    let target = format!("{}/x", outside.display());
    h[157..157 + target.len()].copy_from_slice(target.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h.extend_from_slice(&[0u8; 1024]);
    let (code, text) = raw_upload(agent.addr(), &root, &h);
    assert_eq!((code, text.contains("hard links")), (400, true), "{text}");
    // A fine archive still goes in, without its setuid bit.
    let (code, text) = raw_upload(agent.addr(), &root, &archive(&[entry("ok", file())]));
    assert_eq!(code, 200, "{text}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dest.join("ok"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o755, "no setuid bit");
}

/// The order's deadline passes while its body still flows: the client still gets the
/// 408 (the agent reads the rest of the body before closing, instead of resetting the
/// connection under the reply).
#[test]
fn a_deadline_during_the_body_still_answers() {
    use deploy_common::wire::message::Message;
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("allow_upload", "on")
        .server("max_process_timeout", 1)
        .start(&sb);
    let root = sb.allowed_str("dest");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let code = runtime.block_on(async {
        let mut conn = v2_connect(agent.addr(), KEY, None).await.expect("connect");
        let mut request = request("upload", "");
        request.upload = Some(Box::new(deploy_common::upload::UploadSpec {
            files: vec!["x".into()],
            root,
            ..Default::default()
        }));
        conn.send(&Message::Request { id: 1, request })
            .await
            .unwrap();
        assert!(matches!(
            conn.recv().await.unwrap(),
            Some(Message::Continue { id: 1 })
        ));
        let zeros = vec![0u8; 60_000];
        conn.send(&Message::data(1, &zeros, false)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        // Past the deadline: the rest of the body, about 3 MB.
        for _ in 0..50 {
            conn.send(&Message::data(1, &zeros, false)).await.unwrap();
        }
        conn.send(&Message::data(1, &[], true)).await.unwrap();
        match conn.recv().await {
            Ok(Some(Message::Reply { code, .. })) => code,
            other => panic!("expected the reply, got {other:?}"),
        }
    });
    assert_eq!(code, 408);
}

/// One raw tar header block (`gnu`: old-GNU magic, else POSIX ustar).
fn raw_header(name: &[u8], typeflag: u8, size: usize, gnu: bool) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..124].copy_from_slice(b"0000000\x000000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[257..265].copy_from_slice(if gnu { b"ustar  \0" } else { b"ustar\x0000" });
    reseal(&mut h);
    h
}

fn reseal(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// `data` padded to whole blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// One pax record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let inner = key.len() + value.len() + 3;
    let mut len = inner + 1;
    while format!("{len}").len() + inner != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// The four archives of the security review, each of which showed the old guard one
/// name while GNU tar extracted another, through a link `esc -> outside` already under
/// the root. Every one is refused or lands inside; nothing is written outside.
#[test]
fn the_reviews_parser_differentials_write_nothing_outside() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("allow_upload", "on").start(&sb);
    let dest = sb.allowed().join("dest");
    let outside = sb.join("outside");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, dest.join("esc")).unwrap();
    // And one whose name is not UTF-8 (the old guard checked a lossy decoding of it).
    std::os::unix::fs::symlink(&outside, dest.join(std::ffi::OsStr::from_bytes(b"\xffesc")))
        .unwrap();
    let root = dest.display().to_string();
    let end = vec![0u8; 1024];
    let file = |h: Vec<u8>| [h, padded(b"pwned\n")].concat();

    // 1. pax GNU.sparse.name: GNU tar extracts under that name.
    let rec = pax_record("GNU.sparse.name", b"esc/pwned1");
    let sparse = [
        raw_header(b"PaxHeader", b'x', rec.len(), false),
        padded(&rec),
        file(raw_header(b"innocent1", b'0', 6, false)),
        end.clone(),
    ]
    .concat();
    // 2. pax path, then a GNU long name: tar takes the pax path.
    let rec = pax_record("path", b"esc/pwned2");
    let long = b"innocent2\0";
    let both = [
        raw_header(b"PaxHeader", b'x', rec.len(), false),
        padded(&rec),
        raw_header(b"././@LongLink", b'L', long.len(), true),
        padded(long),
        file(raw_header(b"innocent2", b'0', 6, false)),
        end.clone(),
    ]
    .concat();
    // 3. old-GNU magic with bytes at offset 345 (not a prefix for old GNU).
    let mut h = raw_header(b"pwned3", b'0', 6, true);
    h[345..348].copy_from_slice(b"esc");
    reseal(&mut h);
    let gnu = [file(h), end.clone()].concat();
    // 4. a name through the non-UTF-8 link.
    let odd = [
        file(raw_header(b"\xffesc/pwned4", b'0', 6, false)),
        end.clone(),
    ]
    .concat();
    for (what, archive) in [("sparse", sparse), ("pax+L", both), ("odd", odd)] {
        let (code, text) = raw_upload(agent.addr(), &root, &archive);
        assert_eq!(code, 400, "{what}: {text}");
    }
    // Old GNU: the name is `pwned3`, under the root.
    let (code, text) = raw_upload(agent.addr(), &root, &gnu);
    assert_eq!(code, 200, "{text}");
    assert!(dest.join("pwned3").is_file());
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "nothing outside"
    );
    for name in ["innocent1", "innocent2"] {
        assert!(!dest.join(name).exists(), "{name}");
    }
}

/// A body cut in the middle of a file leaves the complete files and no partial one
/// under its final name (nor a temporary file).
#[test]
fn a_cut_upload_leaves_no_partial_file() {
    use deploy_common::wire::message::Message;
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("allow_upload", "on").start(&sb);
    let dest = sb.allowed().join("cut");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("second"), b"old contents").unwrap();
    let big = vec![7u8; 200_000];
    let archive = [
        raw_header(b"first", b'0', 3, false),
        padded(b"one"),
        raw_header(b"second", b'0', big.len(), false),
        padded(&big),
    ]
    .concat();
    let root = dest.display().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut conn = v2_connect(agent.addr(), KEY, None).await.expect("connect");
        let mut request = request("upload", "");
        request.upload = Some(Box::new(deploy_common::upload::UploadSpec {
            files: vec!["x".into()],
            root,
            ..Default::default()
        }));
        conn.send(&Message::Request { id: 1, request })
            .await
            .unwrap();
        assert!(matches!(
            conn.recv().await.unwrap(),
            Some(Message::Continue { id: 1 })
        ));
        // Half of the second file, then the connection goes away.
        for piece in archive[..100_000].chunks(30_000) {
            conn.send(&Message::data(1, piece, false)).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(conn);
    });
    // The agent notices the cut at once; give it a moment to clean up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let names: Vec<String> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut names = names;
        names.sort();
        if names == ["first", "second"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left: {names:?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(dest.join("first")).unwrap(), b"one");
    assert_eq!(
        std::fs::read(dest.join("second")).unwrap(),
        b"old contents",
        "the old file stays until a new one is complete"
    );
}
