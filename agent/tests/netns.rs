//! Faults on emulated networks (issue 12): every host a Linux network namespace built by
//! the test ([`deploy_testkit::netns::Lab`]), with its own real agent (own config, state
//! dir and directories), a real rsync daemon as the source in a namespace of its own, and
//! the real client in a third. A black-holed agent, a link with 30 % loss, a link cut
//! mid-transfer and restored, a relay peer dying mid-relay.
//!
//! Needs root and network namespaces; elsewhere each test prints `SKIPPED: <why>` and
//! passes (under CI as root, it fails instead). Latency is not emulated (this kernel has
//! no `netem`); bandwidth is `tc tbf`, loss and black holes are nftables rules.

use crate::util::*;
use deploy_testkit::netns::Lab;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A lab with a client host `ctl`, a source host `src` serving `source` with rsync, and
/// agents `a1`…`aN`, each with group `web` pulling the source into its `allowed/web`.
struct Net {
    /// Agents (and their sandboxes), dropped before the lab.
    web: WebFleet,
    source: PathBuf,
    _src_sb: Sandbox,
    lab: Lab,
}

impl std::ops::Deref for Net {
    type Target = WebFleet;
    fn deref(&self) -> &WebFleet {
        &self.web
    }
}

impl Net {
    /// `None` where namespaces cannot be made (the lab printed why). `blob` bytes of noise
    /// join the usual test tree at `blob.bin`; each agent's link is shaped to `rate` if
    /// given.
    fn start(n: usize, blob: usize, rate: Option<&str>) -> Option<Net> {
        Net::start_with(n, blob, rate, |c| c)
    }

    /// [`Net::start`] with each agent's configuration passed through `tweak`.
    fn start_with(
        n: usize,
        blob: usize,
        rate: Option<&str>,
        tweak: impl Fn(Config) -> Config,
    ) -> Option<Net> {
        let mut lab = Lab::new()?;
        lab.add("ctl");
        lab.add("src");
        let src_sb = Sandbox::new();
        let source = source_tree(&src_sb, blob);
        let url = lab.rsync_daemon("src", &source);
        let web = WebFleet::start(n, |i, sb| {
            let name = format!("a{}", i + 1);
            let addr = lab.add(&name);
            if let Some(rate) = rate {
                lab.shape(&name, rate);
            }
            let config = tweak(Config::new(sb))
                .server("addr", addr)
                .hosts(&[&lab.network()])
                .web_group(sb, &url, &[]);
            lab.agent(&name, &config, sb)
        });
        Some(Net {
            web,
            source,
            _src_sb: src_sb,
            lab,
        })
    }

    /// Agent `i`'s (1-based) host as the client writes it (`addr:port`).
    fn host(&self, i: usize) -> String {
        self.addr(i - 1).to_string()
    }

    /// Agent `i`'s (1-based) target directory.
    fn target(&self, i: usize) -> PathBuf {
        self.web.target(i - 1)
    }

    /// `--order=rsync --options=web --follow --thread-timeout=<thread_timeout>` from
    /// `ctl` to every agent, under `limit`.
    fn followed(&self, thread_timeout: u64, limit: Duration) -> Output {
        let thread_timeout = format!("--thread-timeout={thread_timeout}");
        self.client(
            &[
                "--order=rsync",
                "--options=web",
                "--follow",
                &thread_timeout,
            ],
            limit,
        )
    }

    /// `deploy-client args…` from `ctl`, to every agent unless `args` names `--hosts`.
    fn client(&self, args: &[&str], limit: Duration) -> Output {
        let hosts = self.hosts();
        let mut all: Vec<&str> = Vec::new();
        if !args.iter().any(|a| a.starts_with("--hosts")) {
            all.extend(["--hosts", &hosts]);
        }
        all.extend(args);
        self.lab.client("ctl", &all, KEY, limit)
    }
}

/// Host `host`'s entry for `order` in the client's JSON document.
fn entry<'a>(doc: &'a serde_json::Value, host: &str, order: &str) -> &'a serde_json::Value {
    doc.get(host)
        .and_then(|e| e.get(order))
        .unwrap_or_else(|| panic!("no {order} result for {host} in {doc:#}"))
}

fn text<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or_default()
}

/// The files under `dir` whose names do not start with `.` (rsync's temporary files
/// do), recursively.
fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(regular_files(&path));
        } else if !e.file_name().to_string_lossy().starts_with('.') {
            out.push(path);
        }
    }
    out
}

/// Asserts that nothing half-written is passed off as a file at `target`: every file
/// there (rsync's dot-prefixed temporary files aside) has its full content from
/// `source`, and the big `blob.bin` is not among them.
fn assert_no_partial_file(source: &Path, target: &Path) {
    for file in regular_files(target) {
        let rel = file.strip_prefix(target).expect("under the target");
        assert_ne!(
            rel,
            Path::new("blob.bin"),
            "blob.bin arrived whole after all"
        );
        assert!(
            std::fs::read(&file).ok() == std::fs::read(source.join(rel)).ok(),
            "{} differs from the source's",
            file.display()
        );
    }
}

/// Total size of the files under `dir`, temporary ones included.
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                bytes_under(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

/// Waits (at most `limit`) until `done` holds, polling every 20 ms.
fn wait_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let t = Instant::now();
    while !done() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn black_holed_agent_is_named_and_the_order_ends_within_its_deadline() {
    let Some(mut net) = Net::start(4, 100_000, None) else {
        return;
    };
    net.lab.black_hole("a4");
    let gone = net.host(4);
    let limit = Duration::from_secs(25);
    // The connect stage gives up on a4 after --socket-timeout (2 s); some slack for the
    // loaded machine, far below the 10 s --thread-timeout.
    let deadline = Duration::from_secs(8);
    let common = ["--socket-timeout=2", "--thread-timeout=10", "--format=json"];
    let exec = ["--order=exec", "--options=service:echo,hello"];
    let rsync = ["--order=rsync", "--options=web", "--follow"];

    // Strict (the default): a4 is named as unreachable, the others are not started,
    // naming it, and the run fails.
    for (order, name) in [(&exec[..], "exec"), (&rsync[..], "rsync")] {
        let args: Vec<&str> = order.iter().chain(&common).copied().collect();
        let out = net.client(&args, limit);
        assert_eq!(out.code, Some(3), "{out:#?}");
        assert!(out.elapsed < deadline, "{:?}: {out:#?}", out.elapsed);
        assert!(
            out.stderr.contains(&format!("{gone}: can't connect")),
            "{out:#?}"
        );
        let doc = out.json();
        let dead = entry(&doc, &gone, name);
        assert!(text(dead, "content").contains("can't connect"), "{doc:#}");
        for i in 1..=3 {
            let e = entry(&doc, &net.host(i), name);
            assert_eq!(text(e, "returnCode"), "503", "{doc:#}");
            let why = text(e, "content");
            assert!(
                why.contains("not started") && why.contains(&gone),
                "{doc:#}"
            );
            assert!(why.contains("timed out"), "{doc:#}");
            assert!(!net.target(i).exists(), "a transfer started on a{i}");
        }
    }

    // --skip-unreachable: the others run and their results are right; a4 is reported
    // as skipped, which by design (and as documented) does not fail the run.
    for (order, name) in [(&exec[..], "exec"), (&rsync[..], "rsync")] {
        let args: Vec<&str> = order
            .iter()
            .chain(&common)
            .copied()
            .chain(["--skip-unreachable"])
            .collect();
        let out = net.client(&args, limit);
        assert_eq!(out.code, Some(0), "{out:#?}");
        assert!(out.elapsed < deadline, "{:?}: {out:#?}", out.elapsed);
        assert!(
            out.stderr.contains(&format!(
                "unreachable host skipped (--skip-unreachable): {gone}"
            )),
            "{out:#?}"
        );
        let doc = out.json();
        assert!(
            text(entry(&doc, &gone, name), "content").contains("can't connect"),
            "{doc:#}"
        );
        for i in 1..=3 {
            let reply = entry(&doc, &net.host(i), name);
            assert_eq!(text(reply, "returnCode"), "200", "{doc:#}");
            let content = reply.get("content").expect("content");
            assert_eq!(text(content, "return"), "true", "{doc:#}");
            if name == "exec" {
                assert_eq!(text(content, "content"), b64("hello\n"), "{doc:#}");
            } else {
                assert_same_tree(&net.source, &net.target(i));
            }
        }
    }
    assert!(!net.agents[3].0.allowed().join("web").exists());
}

#[test]
fn lossy_link_30_percent_inbound_push_completes() {
    // 30 % of the packets a1 receives (the data of its pull) are dropped; its
    // acknowledgements pass. TCP retransmits: measured here, 4 MiB in about 5 s.
    let Some(mut net) = Net::start(1, 3 << 20, None) else {
        return;
    };
    net.lab.loss_inbound("a1", 30);
    let out = net.followed(40, Duration::from_secs(50));
    assert_eq!(out.code, Some(0), "{out:#?}");
    let reply = entry(&out.json(), &net.host(1), "rsync").clone();
    assert_eq!(text(&reply["content"], "exitCode"), "0", "{reply:#}");
    assert_same_tree(&net.source, &net.target(1));
}

#[test]
fn lossy_link_30_percent_each_way_fails_cleanly_within_the_deadline() {
    // 30 % each way (data and acknowledgements, SYNs included) on a 256 kbit/s link.
    // Loss alone is a dice roll: a CI run once got 3 MiB through it in 3.5 s, so the
    // rate is what makes the push certain not to finish within the agent's
    // max_process_timeout (8 s): at best 256 KiB of the 3 MiB get through. It must end
    // there, named, with nothing half-written passed off as a file; once the link heals,
    // a re-run completes.
    let Some(mut net) = Net::start_with(1, 3 << 20, Some("256kbit"), |c| {
        c.server("max_process_timeout", 8)
    }) else {
        return;
    };
    net.lab.loss("a1", 30);
    let host = net.host(1);
    let out = net.client(
        &[
            "--order=rsync",
            "--options=web",
            "--follow",
            "--socket-timeout=5",
            "--thread-timeout=20",
        ],
        Duration::from_secs(40),
    );
    // Either the agent's 408 (max_process_timeout) came back through the loss (exit 1),
    // or the connection or the reply was lost and the client's deadline named the host
    // (exit 3); never success, never past --thread-timeout.
    assert!(matches!(out.code, Some(1 | 3)), "{out:#?}");
    assert!(out.elapsed < Duration::from_secs(24), "{out:#?}");
    assert!(
        out.stderr.contains(&host) || out.stdout.contains(&host),
        "{out:#?}"
    );
    let doc = out.json();
    let reply = entry(&doc, &host, "rsync");
    assert_ne!(text(reply, "returnCode"), "200", "{doc:#}");
    assert_no_partial_file(&net.source, &net.target(1));

    net.lab.heal("a1");
    net.lab.unshape("a1");
    let out = net.client(
        &[
            "--order=rsync",
            "--options=web",
            "--follow",
            "--thread-timeout=40",
        ],
        Duration::from_secs(50),
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_same_tree(&net.source, &net.target(1));
}

#[test]
fn link_cut_mid_transfer_fails_cleanly_and_a_rerun_completes() {
    // 4 MiB over 8 Mbit/s: about 4 s, cut after 512 KiB.
    let Some(net) = Net::start(1, 4 << 20, Some("8mbit")) else {
        return;
    };
    let host = net.host(1);
    let target = net.target(1);
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| net.followed(8, Duration::from_secs(30)));
        wait_for(Duration::from_secs(20), "512 KiB at a1", || {
            bytes_under(&target) >= 512 << 10
        });
        net.lab.cut("a1");
        client.join().expect("client thread")
    });
    // The client's deadline ends the order, naming the host; nothing half-written is
    // passed off as a file (rsync writes into dot-prefixed temporary files).
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert!(out.elapsed < Duration::from_secs(11), "{out:#?}");
    assert!(
        out.stderr.contains(&format!("{host}: no reply within 8 s")),
        "{out:#?}"
    );
    let doc = out.json();
    assert!(
        text(entry(&doc, &host, "rsync"), "content").contains("Timeout"),
        "{doc:#}"
    );
    assert_no_partial_file(&net.source, &target);

    // Restored, the agent's transfer (still waiting on its connection: rsync's receiver
    // has no deadline of its own) resumes as TCP retransmits, or a new one starts; the
    // re-run follows it to the end and the trees are identical.
    net.lab.restore("a1");
    net.lab.unshape("a1");
    let out = net.followed(30, Duration::from_secs(40));
    assert_eq!(out.code, Some(0), "{out:#?}");
    let doc = out.json();
    let content = &entry(&doc, &host, "rsync")["content"];
    assert_eq!(text(content, "exitCode"), "0", "{doc:#}");
    assert_same_tree(&net.source, &target);
}

/// A link cut for good under a background transfer: rsync's receiver would wait on its
/// connection for ever (and later orders of the group would attach to it); the runner's
/// stall watchdog (`transfer_stall_timeout`) stops it and records rsync's timeout code,
/// so once the link is back a new order starts a fresh transfer that completes.
#[test]
fn a_transfer_stalled_by_a_cut_link_is_stopped_by_the_watchdog() {
    let Some(net) = Net::start_with(1, 4 << 20, Some("8mbit"), |c| {
        c.server("transfer_stall_timeout", 3)
    }) else {
        return;
    };
    let target = net.target(1);
    // Started in the background (no --follow): the order returns, the transfer runs on.
    let out = net.client(
        &["--order=rsync", "--options=web", "--thread-timeout=20"],
        Duration::from_secs(30),
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    wait_for(Duration::from_secs(20), "512 KiB at a1", || {
        bytes_under(&target) >= 512 << 10
    });
    net.lab.cut("a1");
    let state = net.agents[0].0.join("state");
    let stopped = |name: &str| -> Option<String> {
        let dirs = std::fs::read_dir(&state).ok()?;
        dirs.filter_map(|d| std::fs::read_to_string(d.ok()?.path().join(name)).ok())
            .next()
    };
    // 3 s without data, a tick of the watchdog, SIGTERM; on a loaded machine, 20 s.
    wait_for(
        Duration::from_secs(20),
        "the watchdog to stop rsync",
        || stopped("exit").is_some(),
    );
    let exit: serde_json::Value = serde_json::from_str(&stopped("exit").unwrap()).unwrap();
    assert_eq!(exit["code"], 30, "{exit}");
    assert!(
        stopped("output").is_some_and(|o| o.contains("no data moved for 3 s")),
        "{:?}",
        stopped("output")
    );
    assert_no_partial_file(&net.source, &target);

    net.lab.restore("a1");
    net.lab.unshape("a1");
    let out = net.followed(30, Duration::from_secs(40));
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_same_tree(&net.source, &target);
}

#[test]
fn relay_peer_dying_mid_relay_is_routed_around() {
    // Four agents on 8 Mbit/s links in one chain (--relay-fanout=1): a1 pulls from the
    // source and streams to a2, a2 to a3, a3 to a4. a1 is killed while the chain is
    // being fed (connections reset): the others end with the whole tree, not from a1.
    let Some(net) = Net::start(4, 2 << 20, Some("8mbit")) else {
        return;
    };
    let a1 = net.host(1);
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| {
            net.client(
                &[
                    "--order=rsync",
                    "--options=web",
                    "--relay",
                    "--relay-fanout=1",
                    "--format=json",
                    "--thread-timeout=40",
                ],
                Duration::from_secs(50),
            )
        });
        wait_for(Duration::from_secs(30), "a1 serving", || {
            net.target(1).join("blob.bin").exists()
                && (2..=4)
                    .filter(|&i| bytes_under(&net.target(i)) > 256 << 10)
                    .count()
                    >= 2
        });
        net.lab.kill_host("a1");
        client.join().expect("client thread")
    });
    assert_eq!(out.code, Some(0), "{out:#?}");
    let doc = out.json();
    assert_eq!(
        text(&entry(&doc, &a1, "rsync")["content"], "from"),
        "source"
    );
    let mut retried = 0;
    for i in 2..=4 {
        assert_same_tree(&net.source, &net.target(i));
        let content = &entry(&doc, &net.host(i), "rsync")["content"];
        assert_eq!(text(content, "return"), "true", "{doc:#}");
        assert_ne!(text(content, "from"), a1, "{doc:#}");
        if text(content, "attempts") != "1" {
            retried += 1;
        }
    }
    assert!(retried >= 1, "no host was routed around a1: {doc:#}");
    // The failed chain pull is logged, naming a1's stream (its address, another port).
    let a1_ip = a1.rsplit_once(':').map_or(a1.as_str(), |(ip, _)| ip);
    assert!(
        out.stderr.contains("chain pull failed") && out.stderr.contains(&format!("{a1_ip}:")),
        "the failed pull is not logged: {out:#?}"
    );
}
