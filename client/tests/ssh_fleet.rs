//! `health` and `fetch` on `ssh://` hosts (the real sshd cluster of [`crate::ssh`], all
//! on this machine): the figures match this machine's `/proc`; a tree fetched from
//! three hosts arrives whole under `DIR/<host>/`; a host whose archive holds a link
//! leaving the tree is refused by the confined extractor, and nothing lands outside.

use crate::ssh::client;
use deploy_testkit::sshd::{cluster, home};
use serde_json::Value;

#[test]
fn ssh_health_matches_proc() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = format!("{},{}", c.spec(0), c.spec(1));
    let out = client(home.path(), &["health", &hosts, "--format=json"], None);
    assert_eq!(out.status, 0, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).expect("json");
    let nproc = std::process::Command::new("nproc").output().expect("nproc");
    let nproc: u64 = String::from_utf8_lossy(&nproc.stdout)
        .trim()
        .parse()
        .expect("nproc");
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    let mem_total: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal");
    for i in 0..2 {
        let content = &doc[c.spec(i)]["health"]["content"];
        assert_eq!(content["cores"].as_u64(), Some(nproc), "{content:#}");
        assert_eq!(content["mem_total"].as_u64(), Some(mem_total * 1024));
        assert_eq!(content["version"], "ssh");
        assert_eq!(content["disks"][0]["path"], "/");
        assert!(content["disks"][0]["total"].as_u64().unwrap() > 0);
        assert!(
            content["offset_ms"].as_i64().unwrap().abs() < 2000,
            "{content:#}"
        );
    }
    let out = client(home.path(), &["health", &hosts, "--format=table"], None);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stdout.contains("average (2)"), "{}", out.stdout);
}

#[test]
fn ssh_fetch_from_three_hosts_and_a_hostile_archive() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let src = home.path().join("remote/tree");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("one.txt"), "one\n").expect("write");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("sub/big.bin"), &big).expect("write");
    std::os::unix::fs::symlink("one.txt", src.join("inside")).expect("symlink");
    let hosts: Vec<String> = (0..3).map(|i| c.spec(i)).collect();
    let into = home.path().join("got");
    let out = client(
        home.path(),
        &[
            "fetch",
            src.to_str().unwrap(),
            into.to_str().unwrap(),
            &hosts.join(","),
            "--format=json",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    for host in &hosts {
        let dir = into
            .join(deploy_common::order::fetch::dir_for_host(host))
            .join("tree");
        assert_eq!(std::fs::read(dir.join("one.txt")).expect("one"), b"one\n");
        assert_eq!(std::fs::read(dir.join("sub/big.bin")).expect("big"), big);
        assert_eq!(
            std::fs::read_link(dir.join("inside")).expect("link"),
            std::path::Path::new("one.txt")
        );
    }

    // A link out of the tree (an SSH host has no [allow::paths] to leave it out): the
    // archive is refused, the host fails, and nothing is written through the link.
    let secret = home.path().join("secret");
    std::fs::create_dir_all(&secret).expect("mkdir");
    std::os::unix::fs::symlink(&secret, src.join("escape")).expect("symlink");
    let hostile = home.path().join("hostile");
    let out = client(
        home.path(),
        &[
            "fetch",
            src.to_str().unwrap(),
            hostile.to_str().unwrap(),
            &hosts[0],
            "--format=json",
        ],
        None,
    );
    assert_eq!(out.status, 3, "{out:?}");
    assert!(
        out.stdout.contains("the archive was refused"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("escape"), "{}", out.stdout);
    assert_eq!(std::fs::read_dir(&secret).expect("secret").count(), 0);
}
