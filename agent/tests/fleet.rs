//! The fleet's state on agents, through the real deploy-client: `health` (its figures
//! cross-checked with this machine's `/proc`) and `fetch` (a tree from three agents on
//! 127.0.0.x, identical to the original; outside `[allow::paths]` refused; a link out of
//! the tree not followed; refused without `allow_fetch`).

use crate::util::*;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

/// An agent on `addr` with `allow_fetch` as given and the sandbox's `allowed/`.
fn agent_on(sb: &Sandbox, addr: &str, fetch: bool) -> Agent {
    Config::new(sb)
        .server("addr", addr)
        .server("allow_fetch", if fetch { "on" } else { "off" })
        .hosts(&["127.0.0.0/8"])
        .start(sb)
}

fn client(args: &[&str]) -> Output {
    deploy_client(args, KEY)
}

fn proc_field(file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(file).unwrap();
    let line = text.lines().find(|l| l.starts_with(key)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn health_matches_proc() {
    let sb = Sandbox::new();
    let agent = agent_on(&sb, "127.0.0.1", false);
    let host = agent.addr().to_string();
    let out = client(&["health", &host, "--format=json"]);
    out.expect_code(0);
    let doc = out.json();
    let content = &doc[&host]["health"]["content"];
    assert_eq!(content["return"], "true", "{doc:#}");
    let nproc = std::process::Command::new("nproc").output().unwrap();
    let nproc: u64 = String::from_utf8_lossy(&nproc.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(content["cores"].as_u64(), Some(nproc), "{content:#}");
    assert_eq!(
        content["mem_total"].as_u64(),
        Some(proc_field("/proc/meminfo", "MemTotal:") * 1024)
    );
    let used = content["mem_used"].as_u64().unwrap();
    assert!(used > 0 && used < content["mem_total"].as_u64().unwrap());
    assert_eq!(content["load"].as_array().map(Vec::len), Some(3));
    let cpu = content["cpu_percent"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&cpu), "{cpu}");
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let reported = content["uptime_s"].as_u64().unwrap() as f64;
    assert!(
        reported <= uptime && uptime - reported < 60.0,
        "{reported} vs {uptime}"
    );
    let model = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let model = model.lines().find_map(|l| {
        l.strip_prefix("model name")
            .map(|m| m.trim_start_matches([' ', '\t', ':']).trim().to_owned())
    });
    if let Some(model) = model {
        assert_eq!(content["cpu_model"], model.as_str());
    }
    // `/` first, then the allowed root (on its own file system or folded into `/`'s).
    let disks = content["disks"].as_array().unwrap();
    assert_eq!(disks[0]["path"], "/");
    let root = nix::sys::statvfs::statvfs("/").unwrap();
    assert_eq!(
        disks[0]["total"].as_u64(),
        Some(root.blocks() as u64 * root.fragment_size() as u64)
    );
    // The clock is this machine's: the offset is the estimate's error only.
    let offset = content["offset_ms"].as_i64().unwrap();
    assert!(offset.abs() < 1000, "offset {offset}");
    assert!(content["version"]
        .as_str()
        .unwrap()
        .starts_with("deploy-agent "));

    // The table: the host's row and the averages.
    let out = client(&["health", &host, "--format=table"]);
    out.expect_code(0);
    assert!(out.stdout.starts_with("HOST"), "{}", out.stdout);
    assert!(out.stdout.contains(&host), "{}", out.stdout);
    assert!(out.stdout.contains("average (1)"), "{}", out.stdout);
}

/// `tree/`: a file, a 300 kB file in a subdirectory, a link inside, a link out.
fn tree(sb: &Sandbox, secret: &Path) {
    let t = sb.allowed().join("tree");
    std::fs::create_dir_all(t.join("sub")).unwrap();
    std::fs::write(t.join("one.txt"), "one\n").unwrap();
    make_blob(&t.join("sub/big.bin"), 300_000);
    symlink("sub/big.bin", t.join("inside")).unwrap();
    symlink(secret, t.join("outside")).unwrap();
    symlink("../../..", t.join("sub/climb")).unwrap();
}

#[test]
fn fetch_from_three_agents() {
    let secret_dir = Sandbox::new();
    let secret = secret_dir.join("secret.txt");
    std::fs::write(&secret, "not for you\n").unwrap();
    // A directory every agent allows, for one fetch of one path from all three.
    let shared_root = Sandbox::new();
    let shared = shared_root.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("same.txt"), "same everywhere\n").unwrap();
    let sandboxes: Vec<Sandbox> = (0..3).map(|_| Sandbox::new()).collect();
    let agents: Vec<Agent> = sandboxes
        .iter()
        .enumerate()
        .map(|(i, sb)| {
            tree(sb, &secret);
            Config::new(sb)
                .server("addr", format!("127.0.0.{}", i + 2))
                .server("allow_fetch", "on")
                .path(shared_root.path().display())
                .hosts(&["127.0.0.0/8"])
                .start(sb)
        })
        .collect();
    let hosts: Vec<String> = agents.iter().map(|a| a.addr().to_string()).collect();
    let out_dir = Sandbox::new();

    // One path, three agents, one run: DIR/<host>/shared/… each.
    let all = out_dir.join("all");
    let out = client(&[
        "fetch",
        shared.to_str().unwrap(),
        all.to_str().unwrap(),
        &hosts.join(","),
        "--format=json",
    ]);
    out.expect_code(0);
    for host in &hosts {
        assert_eq!(
            std::fs::read(all.join(host).join("shared/same.txt")).unwrap(),
            b"same everywhere\n",
            "{host}"
        );
    }

    // Each agent's tree: files identical, the link inside kept as a link, the links
    // leaving the tree neither followed nor made.
    let into = out_dir.join("got");
    for (sb, host) in sandboxes.iter().zip(&hosts) {
        let remote = sb.allowed().join("tree").display().to_string();
        let out = client(&[
            "fetch",
            &remote,
            into.to_str().unwrap(),
            host,
            "--format=json",
        ]);
        out.expect_code(0);
        let content = &out.json()[host.as_str()]["fetch"]["content"];
        assert_eq!(content["skipped"], "2", "{content:#}");
        let got = into.join(host).join("tree");
        assert_eq!(std::fs::read(got.join("one.txt")).unwrap(), b"one\n");
        assert_eq!(
            std::fs::read(got.join("sub/big.bin")).unwrap(),
            std::fs::read(sb.allowed().join("tree/sub/big.bin")).unwrap()
        );
        assert_eq!(
            std::fs::read_link(got.join("inside")).unwrap(),
            Path::new("sub/big.bin")
        );
        assert!(std::fs::symlink_metadata(got.join("outside")).is_err());
        assert!(std::fs::symlink_metadata(got.join("sub/climb")).is_err());
    }

    // Outside [allow::paths]: refused, nothing written.
    let denied = out_dir.join("denied");
    let out = client(&[
        "fetch",
        secret.to_str().unwrap(),
        denied.to_str().unwrap(),
        &hosts[0],
        "--format=json",
    ]);
    out.expect_code(1);
    let record = &out.json()[hosts[0].as_str()]["fetch"];
    assert_eq!(record["returnCode"], "403", "{record:#}");
    assert!(!denied.join(&hosts[0]).exists());
    // Named through a link inside an allowed root that points out: resolved, refused.
    let out = client(&[
        "fetch",
        sandboxes[0]
            .allowed()
            .join("tree/outside")
            .to_str()
            .unwrap(),
        denied.to_str().unwrap(),
        &hosts[0],
        "--format=json",
    ]);
    out.expect_code(1);
    assert_eq!(out.json()[hosts[0].as_str()]["fetch"]["returnCode"], "403");
    assert!(!denied.join(&hosts[0]).exists());
}

#[test]
fn fetch_is_off_by_default() {
    let sb = Sandbox::new();
    std::fs::write(sb.allowed().join("x.txt"), "x").unwrap();
    let agent = agent_on(&sb, "127.0.0.1", false);
    let host = agent.addr().to_string();
    let out = client(&[
        "fetch",
        sb.allowed().join("x.txt").to_str().unwrap(),
        sb.join("out").to_str().unwrap(),
        &host,
        "--format=json",
    ]);
    out.expect_code(1);
    let record = &out.json()[host.as_str()]["fetch"];
    assert_eq!(record["returnCode"], "403");
    assert!(record["content"].as_str().unwrap().contains("allow_fetch"));
}

#[test]
fn fetch_path_variables() {
    let sb = Sandbox::new();
    let workspace = sb.allowed().join("ws");
    std::fs::create_dir_all(workspace.join("app@s")).unwrap();
    std::fs::write(workspace.join("app@s/out.txt"), "from the nodeapp\n").unwrap();
    let agent = Config::new(&sb)
        .server("allow_fetch", "on")
        .raw(&format!(
            "[scenarios]\nenabled = on\nworkspace = {}\n",
            workspace.display()
        ))
        .start(&sb);
    let host = agent.addr().to_string();
    let into = sb.join("got");
    let out = client(&[
        "fetch",
        "@workspace/app@s",
        into.to_str().unwrap(),
        &host,
        "--format=json",
    ]);
    out.expect_code(0);
    assert_eq!(
        std::fs::read_to_string(into.join(&host).join("app@s/out.txt")).unwrap(),
        "from the nodeapp\n"
    );

    // Without [scenarios], @workspace is refused, named.
    let plain = Sandbox::new();
    let agent = agent_on(&plain, "127.0.0.1", true);
    let host = agent.addr().to_string();
    let out = client(&[
        "fetch",
        "@workspace/app@s",
        plain.join("got").to_str().unwrap(),
        &host,
        "--format=json",
    ]);
    out.expect_code(1);
    let record = &out.json()[host.as_str()]["fetch"];
    assert_eq!(record["returnCode"], "400");
    assert!(
        record["content"].as_str().unwrap().contains("@workspace"),
        "{record}"
    );
}

/// A directory of the fetched tree swapped again and again with a link to a directory
/// outside (RENAME_EXCHANGE, atomic) while fetches run: whatever each fetch gets or
/// refuses, no name from outside ever shows, in the files or in the reply. The walk
/// goes by descriptors opened through no link, so a swap between looking at an entry
/// and descending into it cannot lead it out.
#[test]
fn a_directory_swapped_for_a_link_during_fetches_shows_nothing_outside() {
    let sb = Sandbox::new();
    let outside = Sandbox::new();
    let secret = outside.join("secret");
    std::fs::create_dir_all(secret.join("hidden-dir-4f2a")).unwrap();
    std::fs::write(secret.join("hidden-name-4f2a.txt"), "x").unwrap();
    let tree = sb.allowed().join("tree");
    const PAIRS: usize = 16;
    for p in 0..PAIRS {
        std::fs::create_dir_all(tree.join(format!("d{p}/inner"))).unwrap();
        std::fs::write(tree.join(format!("d{p}/a.txt")), "a\n").unwrap();
        symlink(&secret, tree.join(format!("l{p}"))).unwrap();
    }
    let agent = agent_on(&sb, "127.0.0.1", true);
    let host = agent.addr().to_string();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (stop, tree) = (std::sync::Arc::clone(&stop), tree.clone());
        std::thread::spawn(move || {
            let pairs: Vec<_> = (0..PAIRS)
                .map(|p| (tree.join(format!("d{p}")), tree.join(format!("l{p}"))))
                .collect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (d, l) in &pairs {
                    nix::fcntl::renameat2(
                        nix::fcntl::AT_FDCWD,
                        d,
                        nix::fcntl::AT_FDCWD,
                        l,
                        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                    )
                    .unwrap();
                }
            }
        })
    };
    let out_dir = Sandbox::new();
    let mut leaks = Vec::new();
    for i in 0..150 {
        let into = out_dir.join(&format!("got{i}"));
        let out = client(&[
            "fetch",
            tree.to_str().unwrap(),
            into.to_str().unwrap(),
            &host,
            "--format=json",
        ]);
        let text = format!("{}{}", out.stdout, out.stderr);
        if text.contains("4f2a") {
            leaks.push(format!("fetch {i}: the reply names it: {text}"));
        }
        let listed = Command::new("find").arg(&into).output().unwrap();
        if String::from_utf8_lossy(&listed.stdout).contains("4f2a") {
            leaks.push(format!("fetch {i}: the files name it"));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    swapper.join().unwrap();
    assert!(leaks.is_empty(), "{leaks:#?}");
}
