//! `rsync --relay`: the real client schedules the pipelined relay over real agents, each
//! on its own loopback address (127.0.2x.y): the first pulls from a real rsync daemon, the
//! others receive its chunk stream from each other. Hand-made relay orders put a bad or
//! dying peer in a host's way: it is refused or left, and the host resumes elsewhere.

use crate::util::*;
use std::path::{Path, PathBuf};

/// A fleet of `n` agents on 127.0.<net>.1…n, each with group `web` from `rsyncd` into
/// its own `allowed/web`; agent 1's group runs `wrapper` (if any) as its rsync binary.
struct Fleet {
    agents: Vec<(Sandbox, Agent)>,
}

impl Fleet {
    fn start(net: u8, n: u8, source_url: &str, wrapper: Option<&Path>) -> Fleet {
        let mut agents = Vec::new();
        for i in 1..=n {
            let sb = Sandbox::new();
            let target = sb.allowed().join("web");
            let mut group = vec![
                ("dest", source_url.to_owned()),
                ("src", target.display().to_string()),
            ];
            if let (1, Some(w)) = (i, wrapper) {
                group.push(("rsync", w.display().to_string()));
            }
            let group: Vec<(&str, &str)> = group.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let agent = Config::new(&sb)
                .server("addr", format!("127.0.{net}.{i}"))
                .hosts(&["127.0.0.0/8"])
                .group("web", &group)
                .start(&sb);
            agents.push((sb, agent));
        }
        Fleet { agents }
    }

    fn hosts(&self) -> String {
        self.agents
            .iter()
            .map(|(_, a)| a.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn target(&self, i: usize) -> PathBuf {
        self.agents[i].0.allowed().join("web")
    }

    /// `deploy-client --order=rsync --options=web --relay`; the JSON results by host.
    fn relay(&self, fanout: &str) -> (Output, serde_json::Map<String, serde_json::Value>) {
        let out = deploy_client(
            &[
                "--hosts",
                &self.hosts(),
                "--order=rsync",
                "--options=web",
                "--relay",
                "--relay-fanout",
                fanout,
                "--format=json",
            ],
            KEY,
        );
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"));
        let map = doc.as_object().cloned().unwrap_or_default();
        (out, map)
    }

    fn result(
        &self,
        doc: &serde_json::Map<String, serde_json::Value>,
        i: usize,
    ) -> serde_json::Value {
        let host = self.agents[i].1.addr().to_string();
        doc.get(&host)
            .and_then(|r| r.get("rsync"))
            .and_then(|r| r.get("content"))
            .cloned()
            .unwrap_or_else(|| panic!("no result for {host} in {doc:#?}"))
    }
}

fn field(v: &serde_json::Value, key: &str) -> String {
    v.get(key)
        .and_then(|x| x.as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn relay_to_six_agents_pulls_from_peers_and_every_tree_matches() {
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    make_blob(&source.join("blob.bin"), 300_000);
    let rsyncd = RsyncDaemon::start(&source);
    let fleet = Fleet::start(20, 6, &rsyncd.url("DEST/"), None);
    let (out, doc) = fleet.relay("2");
    assert_eq!(out.code, Some(0), "{out:#?}");
    let mut from_source = 0;
    let mut from_peer_of = std::collections::HashSet::new();
    for i in 0..6 {
        assert_same_tree(&source, &fleet.target(i));
        let r = fleet.result(&doc, i);
        assert_eq!(field(&r, "return"), "true", "{r:#}");
        let from = field(&r, "from");
        assert!(!from.is_empty(), "{r:#}");
        if from == "source" {
            assert_eq!(field(&r, "manifest").len(), 64, "{r:#}");
            from_source += 1;
        } else {
            let peers: Vec<String> = (0..6)
                .map(|j| fleet.agents[j].1.addr().to_string())
                .collect();
            assert!(peers.contains(&from), "{from} is no host of the fleet");
            // Checked by the first host's shape: no file read back and re-hashed.
            assert_eq!(field(&r, "shape").len(), 64, "{r:#}");
            assert_eq!(field(&r, "manifest"), "", "{r:#}");
            assert_eq!(field(&r, "refused"), "", "{r:#}");
            from_peer_of.insert(from);
        }
    }
    // The source fed the first host only; with two children each, the others pulled
    // from the first three hosts.
    assert_eq!(from_source, 1, "{}\n{doc:#?}", out.stderr);
    assert_eq!(from_peer_of.len(), 3, "{doc:#?}");
}

#[test]
fn relay_chain_of_five_agents_with_fanout_one() {
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    make_blob(&source.join("blob.bin"), 3_500_000);
    let rsyncd = RsyncDaemon::start(&source);
    let fleet = Fleet::start(26, 5, &rsyncd.url("DEST/"), None);
    let (out, doc) = fleet.relay("1");
    assert_eq!(out.code, Some(0), "{out:#?}");
    for i in 0..5 {
        assert_same_tree(&source, &fleet.target(i));
        let r = fleet.result(&doc, i);
        assert_eq!(field(&r, "return"), "true", "{r:#}");
        let want = if i == 0 {
            "source".to_owned()
        } else {
            fleet.agents[i - 1].1.addr().to_string()
        };
        assert_eq!(field(&r, "from"), want, "{doc:#?}");
    }
}

/// A wrapper for agent 1's rsync that runs `action` before it pulls.
fn wrapper(sb: &Sandbox, action: &str) -> PathBuf {
    let path = sb.join("rsync-wrapper");
    std::fs::write(
        &path,
        format!("#!/bin/sh\n{action}\nexec /usr/bin/rsync \"$@\"\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn relay_first_host_dying_while_pulling_hands_the_role_to_the_next() {
    // Agent 1's worker is killed as it starts pulling from the source.
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    make_blob(&source.join("blob.bin"), 200_000);
    let rsyncd = RsyncDaemon::start(&source);
    let tools = Sandbox::new();
    let w = wrapper(&tools, "kill -9 $PPID\nexit 1");
    let fleet = Fleet::start(22, 3, &rsyncd.url("DEST/"), Some(&w));
    let (_out, doc) = fleet.relay("1");
    let second = fleet.result(&doc, 1);
    assert_eq!(field(&second, "from"), "source", "{doc:#?}");
    assert_same_tree(&source, &fleet.target(1));
    assert_same_tree(&source, &fleet.target(2));
    let third = fleet.result(&doc, 2);
    assert_eq!(
        field(&third, "from"),
        fleet.agents[1].1.addr().to_string(),
        "{doc:#?}"
    );
}

/// The relay stream's chunk size.
const CHUNK: u64 = deploy_common::rsync::stream::DEFAULT_CHUNK;

/// A token for hand-made relay orders.
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

impl Fleet {
    /// The agents' addresses (`peers=`).
    fn ips(&self) -> String {
        self.agents
            .iter()
            .map(|(_, a)| a.addr().ip().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One hand-made relay order to agent `i`; its result.
    fn order(&self, i: usize, args: &str) -> serde_json::Value {
        let host = self.agents[i].1.addr().to_string();
        let out = deploy_client(
            &[
                "--hosts",
                &host,
                "--order=rsync",
                "--options=web",
                &format!("--args={args}"),
                "--format=json",
            ],
            KEY,
        );
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"));
        doc.get(&host)
            .and_then(|r| r.get("rsync"))
            .and_then(|r| r.get("content"))
            .cloned()
            .unwrap_or_else(|| panic!("no result for {host} in {doc:#?}"))
    }

    /// Agent `i` pulls from the source and serves the stream; its result.
    fn first(&self, i: usize) -> serde_json::Value {
        let ip = self.agents[i].1.addr().ip();
        let r = self.order(
            i,
            &format!(
                "relay pull token={TOKEN} serve=1 stream=1 bind={ip} peers={}",
                self.ips()
            ),
        );
        assert_eq!(field(&r, "return"), "true", "{r:#}");
        r
    }

    /// Agent `i` receives the stream from `from` (stream addresses) as `first` lists it.
    fn chain(&self, i: usize, first: &serde_json::Value, from: &[String]) -> serde_json::Value {
        let ip = self.agents[i].1.addr().ip();
        self.order(
            i,
            &format!(
                "relay chain token={TOKEN} from={} list={} expect={} serve=1 bind={ip} peers={}",
                from.join(","),
                field(first, "list"),
                field(first, "manifest"),
                self.ips()
            ),
        )
    }

    /// Agent `i`'s spool of the hand-made order.
    fn spool(&self, i: usize) -> PathBuf {
        self.agents[i]
            .0
            .join("state")
            .join("relay")
            .join(TOKEN)
            .join("stream")
    }
}

/// Agent 1 pulls from the source, agent 2 from agent 1; then `spoil` damages agent 1's
/// spool, and agent 3 is sent to agent 1 first, agent 2 next. Returns agent 3's result
/// and the stream addresses of agents 1 and 2.
fn third_host_after(
    net: u8,
    spoil: impl FnOnce(&Fleet, &Path),
) -> (serde_json::Value, String, String) {
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    make_blob(&source.join("blob.bin"), 3_500_000);
    let rsyncd = RsyncDaemon::start(&source);
    let fleet = Fleet::start(net, 3, &rsyncd.url("DEST/"), None);
    let first = fleet.first(0);
    assert!(
        field(&first, "chunks").parse::<u32>().unwrap() >= 4,
        "{first:#}"
    );
    let a = field(&first, "stream");
    let second = fleet.chain(1, &first, std::slice::from_ref(&a));
    assert_eq!(field(&second, "return"), "true", "{second:#}");
    assert_same_tree(&source, &fleet.target(1));
    let b = field(&second, "stream");
    spoil(&fleet, &fleet.spool(0));
    let third = fleet.chain(2, &first, &[a.clone(), b.clone()]);
    assert_eq!(field(&third, "return"), "true", "{third:#}");
    assert_same_tree(&source, &fleet.target(2));
    (third, a, b)
}

#[test]
fn relay_peer_serving_a_bad_chunk_is_refused_and_the_host_resumes_elsewhere() {
    // One byte of agent 1's third chunk changes after agent 2 got it.
    let (third, a, b) = third_host_after(23, |_, spool| {
        let mut bytes = std::fs::read(spool).unwrap();
        bytes[2 * CHUNK as usize + 10] ^= 1;
        std::fs::write(spool, bytes).unwrap();
    });
    assert_eq!(field(&third, "refused"), a, "{third:#}");
    assert_eq!(field(&third, "from"), b, "{third:#}");
    // Two good chunks from agent 1, the rest from agent 2 from chunk 2 on.
    assert!(
        field(&third, "pulled").starts_with(&format!("{a}:2,{b}:")),
        "{third:#}"
    );
    assert_eq!(field(&third, "resumed"), "1", "{third:#}");
}

#[test]
fn relay_peer_dying_mid_stream_is_left_and_the_host_resumes_at_its_offset() {
    // Agent 1's spool ends in the middle of its second chunk: it closes the connection
    // there, as if it died.
    let (third, a, b) = third_host_after(24, |_, spool| {
        let f = std::fs::OpenOptions::new().write(true).open(spool).unwrap();
        f.set_len(CHUNK + 1000).unwrap();
    });
    assert_eq!(field(&third, "refused"), "", "{third:#}");
    assert_eq!(field(&third, "from"), b, "{third:#}");
    assert!(
        field(&third, "pulled").starts_with(&format!("{a}:1,{b}:")),
        "{third:#}"
    );
}

#[test]
fn relay_peer_killed_is_routed_around() {
    let (third, a, b) = third_host_after(25, |fleet, _| {
        let agent = &fleet.agents[0].1;
        for pid in agent.workers() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        agent.signal(nix::sys::signal::Signal::SIGKILL);
    });
    assert_eq!(field(&third, "from"), b, "{third:#}");
    assert!(!field(&third, "pulled").contains(&a), "{third:#}");
}

#[test]
fn relay_stream_refuses_strangers_and_wrong_tokens() {
    use std::io::{BufRead, BufReader, Write};
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    let rsyncd = RsyncDaemon::start(&source);
    let fleet = Fleet::start(27, 2, &rsyncd.url("DEST/"), None);
    let first = fleet.first(0);
    let a: std::net::SocketAddr = field(&first, "stream").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let from = |ip: &str| {
        let s = rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(std::net::SocketAddr::new(ip.parse().unwrap(), 0))
                .unwrap();
            sock.connect(a).await.unwrap().into_std().unwrap()
        });
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s
    };
    // Not of the fleet: closed without a word.
    let mut stranger = BufReader::new(from("127.0.27.9"));
    let mut line = String::new();
    assert_eq!(stranger.read_line(&mut line).unwrap_or(0), 0, "{line}");
    // Of the fleet, with a wrong proof: refused.
    let s = from("127.0.27.2");
    let mut r = BufReader::new(s.try_clone().unwrap());
    line.clear();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("DRLY1 "), "{line}");
    (&s).write_all(format!("{} 0\n", "00".repeat(32)).as_bytes())
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "NO\n");
    // A chain order with another token gets nothing either.
    let ip = fleet.agents[1].1.addr().ip();
    let r = fleet.order(
        1,
        &format!(
            "relay chain token={} from={a} list={} expect={} bind={ip} peers={}",
            "f".repeat(32),
            field(&first, "list"),
            field(&first, "manifest"),
            fleet.ips()
        ),
    );
    assert_eq!(field(&r, "return"), "false", "{r:#}");
    assert!(field(&r, "error").contains("refused"), "{r:#}");
}

/// The live `rsync --daemon` processes below `master` (an agent's process tree).
fn relay_daemons(master: i32) -> Vec<i32> {
    let below = |mut pid: i32| {
        while let Some((_, ppid)) = proc_stat(pid) {
            if ppid == master {
                return true;
            }
            if ppid <= 1 {
                return false;
            }
            pid = ppid;
        }
        false
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| alive(pid) && cmdline(pid).contains("--daemon") && below(pid))
        .collect()
}

/// Review findings 4 and 6: the store-and-forward relay served a peer's tree through an
/// `rsync --daemon` per connection, which outlived the order when a fleet address said
/// nothing and carried the token on its command line (world-readable). That mode is
/// refused now: no daemon is started, and a pull from a peer's daemon is refused too.
#[test]
fn store_and_forward_relay_orders_are_refused() {
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    let rsyncd = RsyncDaemon::start(&source);
    let fleet = Fleet::start(29, 2, &rsyncd.url("DEST/"), None);
    let ip = fleet.agents[0].1.addr().ip();
    let host = fleet.agents[0].1.addr().to_string();
    for args in [
        format!(
            "relay pull token={TOKEN} serve=1 ttl=3 bind={ip} peers={}",
            fleet.ips()
        ),
        format!("relay pull token={TOKEN} from=rsync://relay@{ip}:1/relay/"),
    ] {
        let out = deploy_client(
            &[
                "--hosts",
                &host,
                "--order=rsync",
                "--options=web",
                &format!("--args={args}"),
                "--format=json",
            ],
            KEY,
        );
        let doc: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"));
        let rec = &doc[&host]["rsync"];
        assert_eq!(rec["returnCode"], "400", "{args}: {doc:#}");
        assert!(
            rec["content"].to_string().contains("no longer supported"),
            "{args}: {doc:#}"
        );
    }
    let master = fleet.agents[0].1.pid();
    assert!(
        relay_daemons(master).is_empty(),
        "an rsync --daemon was started"
    );
}

/// A chain order with the first host's `shape` checks the extracted tree by it (no file
/// re-hashed): a clean target passes and reports that shape; a target holding a file
/// the source does not have fails, as does a shape that is not the tree's.
#[test]
fn relay_chain_checks_the_tree_by_the_first_hosts_shape() {
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    make_blob(&source.join("blob.bin"), 1_500_000);
    let rsyncd = RsyncDaemon::start(&source);
    let fleet = Fleet::start(28, 3, &rsyncd.url("DEST/"), None);
    let first = fleet.first(0);
    let shape = field(&first, "shape");
    assert_eq!(shape.len(), 64, "{first:#}");
    let a = field(&first, "stream");
    let chain = |i: usize, shape: &str| {
        let ip = fleet.agents[i].1.addr().ip();
        fleet.order(
            i,
            &format!(
                "relay chain token={TOKEN} from={a} list={} expect={} shape={shape} bind={ip} peers={}",
                field(&first, "list"),
                field(&first, "manifest"),
                fleet.ips()
            ),
        )
    };
    let r = chain(1, &shape);
    assert_eq!(field(&r, "return"), "true", "{r:#}");
    assert_eq!(field(&r, "shape"), shape, "{r:#}");
    assert_same_tree(&source, &fleet.target(1));

    std::fs::create_dir_all(fleet.target(2)).unwrap();
    std::fs::write(fleet.target(2).join("stray"), b"not from the source").unwrap();
    let r = chain(2, &shape);
    assert_eq!(field(&r, "return"), "false", "{r:#}");
    assert!(field(&r, "error").contains("shape"), "{r:#}");

    std::fs::remove_file(fleet.target(2).join("stray")).unwrap();
    let r = chain(2, &"0".repeat(64));
    assert_eq!(field(&r, "return"), "false", "{r:#}");
    assert!(field(&r, "error").contains("shape"), "{r:#}");
    let r = chain(2, &shape);
    assert_eq!(field(&r, "return"), "true", "{r:#}");
    assert_same_tree(&source, &fleet.target(2));
}
