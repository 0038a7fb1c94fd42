//! `upload` through the proxy: the caller's tar body received once (spooled in the
//! proxy's state dir) and sent to every agent of the groups, one behind a chained proxy
//! (which spools it again), each extracting under its own root (`%h-%p` expanded per
//! agent by the proxy that reaches it); and what cannot carry a body
//! (the HTTP API) is refused before anything is sent.

use crate::util::*;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

/// Three agents, each in its own sandbox, taking uploads under it.
fn agents(net: u8, uploads: &std::path::Path) -> (Vec<Agent>, Vec<Sandbox>) {
    let mut agents = Vec::new();
    let mut sandboxes = Vec::new();
    for p in 1..=3 {
        let sb = Sandbox::new();
        let agent = AgentConfig::new(&sb)
            .server("addr", ip(net, p, 1))
            .server("key_cipher", KEY)
            .server("allow_upload", "on")
            .hosts(&["127.0.0.0/8"])
            .path(uploads.display())
            .start(&sb);
        agents.push(agent);
        sandboxes.push(sb);
    }
    (agents, sandboxes)
}

#[test]
fn upload_through_the_proxy_reaches_every_agent() {
    let dir = Sandbox::new();
    let uploads = dir.join("uploads");
    std::fs::create_dir_all(&uploads).unwrap();
    let (agents, _sandboxes) = agents(41, &uploads);
    let addrs: Vec<_> = agents.iter().flat_map(|a| a.addrs.clone()).collect();
    // Two agents behind this proxy, the third behind a chained one: the body goes
    // through both.
    let far_dir = Sandbox::new();
    let far = ProxyConfig::new("px-upload-far")
        .key("far-key", "web")
        .servers("web", &addrs[2..])
        .start(far_dir.path());
    let proxy = ProxyConfig::new("px-upload")
        .client("proxy_api_key", "far-key")
        .key("up-key", "web,far")
        .servers("web", &addrs[..2])
        .chain("far", far.addr(), "web")
        .group("far", &[("key_cipher", PROXY_KEY)])
        .http()
        .start(dir.path());
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("tree/empty")).unwrap();
    std::fs::write(src.join("one.txt"), "one\n").unwrap();
    std::fs::write(src.join("run.sh"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("run.sh"), std::fs::Permissions::from_mode(0o750)).unwrap();
    // Bigger than a few pieces, so that the spool and each agent's pace matter.
    make_blob(&src.join("tree/big.bin"), 700_000);
    let port = proxy.port().to_string();
    let out = run_command(
        Command::new(bins::client())
            .current_dir(&src)
            .args([
                "--hosts",
                "127.0.0.1",
                "--port",
                &port,
                "--api-key",
                "up-key",
                "--args",
                "groups:web,far",
                "--order=upload",
                "--relative",
                "--upload=one.txt",
                "--upload=run.sh",
                "--upload=tree",
                "--format=json",
            ])
            .arg(format!("--root={}/%h-%p", uploads.display()))
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("DEPLOY_KEY_CIPHER", PROXY_KEY)
            .env("NO_COLOR", "1"),
        RUN_LIMIT,
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    for addr in &addrs {
        // Each agent's own root: the template expanded by the proxy for that agent.
        let got = uploads.join(format!("{}-{}", addr.ip(), addr.port()));
        assert_same_tree(&src.join("tree"), &got.join("tree"));
        assert!(got.join("tree/empty").is_dir());
        assert_eq!(
            std::fs::read_to_string(got.join("one.txt")).unwrap(),
            "one\n"
        );
        let mode = std::fs::metadata(got.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
        let record = &doc[addr.to_string()]["upload"];
        assert_eq!(record["returnCode"], "200", "{addr}: {out:#?}");
    }

    // The HTTP API cannot carry a body: refused, nothing sent.
    let url = format!("http://{}/api/upload?args=groups:web", proxy.http());
    let curl = run_command(
        Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "-X", "POST"])
            .args(["-H", "X-Api-Key: up-key", &url]),
        RUN_LIMIT,
    );
    assert!(curl.stdout.ends_with("\n400"), "{curl:#?}");
    assert!(curl.stdout.contains("protocol v2"), "{curl:#?}");
    drop(agents);
}
