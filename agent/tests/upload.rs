//! `upload` to agents: the real deploy-client streams a tar as the request's body (v2
//! `continue`/`data` messages) to real agents, which extract it under `[allow::paths]`
//! with the real `tar`, then run the command that follows (with `allow_run`). Refused
//! without `allow_upload`, outside the allowed paths, and for the command without
//! `allow_run`.

use crate::util::*;
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
