//! `rsync --relay`: the real client schedules relay waves over real agents, each on its
//! own loopback address (127.0.20.x), pulling from a real rsync daemon and from each
//! other; a peer that serves a tampered tree or dies while serving is routed around.

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
    for i in 0..6 {
        assert_same_tree(&source, &fleet.target(i));
        let r = fleet.result(&doc, i);
        assert_eq!(field(&r, "return"), "true", "{r:#}");
        let from = field(&r, "from");
        assert!(!from.is_empty(), "{r:#}");
        assert_eq!(field(&r, "manifest").len(), 64, "{r:#}");
        if from == "source" {
            from_source += 1;
        } else {
            let peers: Vec<String> = (0..6)
                .map(|j| fleet.agents[j].1.addr().to_string())
                .collect();
            assert!(peers.contains(&from), "{from} is no host of the fleet");
        }
    }
    // The source fed the first two hosts (and any whose turn came while one of its
    // slots was free); at least two hosts pulled from peers.
    assert!((2..=4).contains(&from_source), "{}\n{doc:#?}", out.stderr);
}

/// A wrapper for agent 1's rsync that runs `action` before serving (`--daemon`).
fn wrapper(sb: &Sandbox, action: &str) -> PathBuf {
    let path = sb.join("rsync-wrapper");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$1\" = --daemon ]; then\n{action}\nfi\nexec /usr/bin/rsync \"$@\"\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Three agents, one server slot each: agent 1 pulls from the source and is then the
/// first server agent 2 is sent to. The peer misbehaves when it serves; agent 2 must
/// notice and pull again from elsewhere, and every host but agent 1 ends up with the
/// source's tree.
fn misbehaving_peer(net: u8, action: &str) -> serde_json::Value {
    let src_sb = Sandbox::new();
    let source = src_sb.join("source");
    make_tree(&source);
    make_blob(&source.join("blob.bin"), 200_000);
    let rsyncd = RsyncDaemon::start(&source);
    let tools = Sandbox::new();
    let w = wrapper(&tools, action);
    let fleet = Fleet::start(net, 3, &rsyncd.url("DEST/"), Some(&w));
    let (out, doc) = fleet.relay("1");
    assert_eq!(out.code, Some(0), "{out:#?}");
    let first = fleet.result(&doc, 0);
    assert_eq!(field(&first, "from"), "source", "{doc:#?}");
    for i in 1..3 {
        assert_same_tree(&source, &fleet.target(i));
        let r = fleet.result(&doc, i);
        assert_eq!(field(&r, "return"), "true", "{r:#}");
        assert_ne!(
            field(&r, "from"),
            fleet.agents[0].1.addr().to_string(),
            "{doc:#?}"
        );
    }
    fleet.result(&doc, 1)
}

#[test]
fn relay_peer_serving_a_tampered_tree_is_detected_and_routed_around() {
    // Agent 1 changes a byte of its tree right before serving it.
    let second = misbehaving_peer(21, "sed -n 's/^path = //p' \"${2#--config=}\" | while read -r p; do printf X >> \"$p/blob.bin\"; done");
    assert_eq!(field(&second, "attempts"), "2", "{second:#}");
}

#[test]
fn relay_peer_dying_while_serving_is_routed_around() {
    // Agent 1's worker is killed as it starts serving: its listener and children die.
    let second = misbehaving_peer(22, "kill -9 $PPID\nexit 1");
    assert_eq!(field(&second, "attempts"), "2", "{second:#}");
}
