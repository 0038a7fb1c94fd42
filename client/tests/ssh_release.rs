//! Releases on `ssh://` hosts: the real `deploy-client` rolling out stretcher manifests
//! to real sshd instances (see [`crate::ssh`]), each host with its own `dest`
//! (`%h-%p` in the manifest), and the layout it leaves read back by the Rust layout
//! code of the agents (`deploy_release::layout::Releases`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deploy_release::fetch::Hasher;
use deploy_release::layout::Releases;
use deploy_release::manifest::Algorithm;
use deploy_testkit::sshd::{cluster, home, Cluster};
use serde_json::Value;

use crate::ssh::{client, Output};

/// Artifacts and manifests in a temporary directory; hosts' dests beside them.
struct Shelf {
    dir: tempfile::TempDir,
}

impl Shelf {
    fn new() -> Shelf {
        Shelf {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A tar.gz whose `version` file says `version`; returns its path and sha256.
    fn artifact(&self, version: &str) -> (PathBuf, String) {
        let tree = self.path().join(format!("tree-{version}"));
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        std::fs::write(tree.join("version"), version).unwrap();
        std::fs::write(tree.join("bin/app"), format!("#!/bin/sh\necho {version}\n")).unwrap();
        let archive = self.path().join(format!("app-{version}.tar.gz"));
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(&tree)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        (archive.clone(), sha256(&archive))
    }

    /// A manifest for `version` (the release strategy, dest `<shelf>/%h-%p/app`).
    fn manifest(&self, version: &str, checksum: Option<&str>, extra: &str) -> String {
        let (archive, sum) = self.artifact(version);
        let path = self.path().join(format!("app-{version}.yml"));
        std::fs::write(
            &path,
            format!(
                "src: file://{}\nchecksum: {}\ndest: {}/%h-%p/app\nsync_strategy: release\nkeep: 3\n{extra}",
                archive.display(),
                checksum.unwrap_or(&sum),
                self.path().display()
            ),
        )
        .unwrap();
        format!("@{}", path.display())
    }

    /// Host `i`'s dest.
    fn dest(&self, c: &Cluster, i: usize) -> PathBuf {
        let (ip, port, _) = &c.hosts[i];
        self.path().join(format!("{ip}-{port}/app"))
    }

    /// `--dest` for every host.
    fn dest_arg(&self) -> String {
        format!("--dest={}/%h-%p/app", self.path().display())
    }
}

fn sha256(path: &Path) -> String {
    let mut h = Hasher::new(Algorithm::Sha256);
    h.update(&std::fs::read(path).unwrap());
    h.hex()
}

fn version(dest: &Path) -> String {
    std::fs::read_to_string(dest.join("version")).unwrap_or_default()
}

fn hosts(c: &Cluster, n: usize) -> String {
    (0..n).map(|i| c.spec(i)).collect::<Vec<_>>().join(",")
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:#?}"))
}

/// The names in a releases directory that are not dot files.
fn release_dirs(dest: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dest.with_file_name("app.releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn ssh_release_rollout_history_releases_rollback() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let shelf = Shelf::new();
    let hosts = hosts(c, 3);
    // post and success hooks run on each host, with the host's own dest.
    let hooks = "commands:\n  pre:\n    - cat > \"$DEPLOY_DEST.pre-stdin\"\n  post:\n    - echo \"$DEPLOY_RELEASE\" > \"$DEPLOY_DEST.post\"\n  success:\n    - cat > \"$DEPLOY_DEST.success\"\n";
    let m1 = shelf.manifest("1", None, hooks);
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=deploy",
            "--manifest",
            &m1,
            "-m",
            "first",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    assert!(out.stderr.contains("3 of 3 hosts switched"), "{out:#?}");
    let doc = json(&out);
    let id1 = doc[c.spec(0)]["deploy"]["content"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..3 {
        let record = &doc[c.spec(i)]["deploy"]["content"];
        assert_eq!(record["phase"], "switch", "{out:#?}");
        assert_eq!(
            record["id"],
            id1.as_str(),
            "every host names the release alike"
        );
        assert!(record["switched_at"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .is_ok());
        let dest = shelf.dest(c, i);
        assert_eq!(version(&dest), "1");
        assert_eq!(
            std::fs::read_link(&dest).unwrap(),
            dest.with_file_name("app.releases").join(&id1),
            "dest is a link to the release"
        );
        assert_eq!(
            std::fs::read_to_string(dest.with_file_name("app.post")).unwrap(),
            format!("{id1}\n")
        );
        // The script comes on sh's standard input; none of it reaches a hook.
        assert_eq!(
            std::fs::read_to_string(dest.with_file_name("app.pre-stdin")).unwrap(),
            ""
        );
        let log = std::fs::read_to_string(dest.with_file_name("app.success")).unwrap();
        assert!(
            log.contains(&format!("switched {} to {id1}", dest.display())),
            "{log}"
        );
        let releases = dest.with_file_name("app.releases");
        assert!(releases
            .join(".meta")
            .join(format!("{id1}.manifest"))
            .is_file());
        assert!(!releases.join(format!(".staging-{id1}")).exists());
        assert!(!releases.join(format!(".download-{id1}")).exists());
    }

    // v2: the link moves, the history grows.
    let m2 = shelf.manifest("2", None, "");
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=deploy",
            "--manifest",
            &m2,
            "-m",
            "second",
            "--follow",
            "--fetch=host",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    // --follow: each host's log (this host fetched), the result line kept out of it.
    let spec1 = c.spec(1);
    assert!(
        out.stderr.contains(&format!("{spec1}: fetching file://")),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains(&format!("{spec1}: switched ")),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("\"return\""), "{out:#?}");
    let id2 = json(&out)[c.spec(1)]["deploy"]["content"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(id2 > id1);
    for i in 0..3 {
        assert_eq!(version(&shelf.dest(c, i)), "2");
    }

    // The agents' layout code reads what the scripts wrote: the same files.
    let dest0 = shelf.dest(c, 0);
    let layout = Releases::new(&dest0, None);
    assert_eq!(layout.current().as_deref(), Some(id2.as_str()));
    assert_eq!(layout.previous().as_deref(), Some(id1.as_str()));
    assert_eq!(layout.ids(), [id1.clone(), id2.clone()]);
    let listed = layout.list();
    assert_eq!(listed[0].meta.id, id2);
    assert!(listed[0].current);
    assert_eq!(listed[0].meta.state, "active");
    assert_eq!(listed[0].meta.message, "second");
    assert_eq!(listed[1].meta.state, "inactive");
    assert!(listed[1].meta.src.starts_with("file://"));
    assert!(listed[1].meta.checksum.starts_with("sha256:"));
    assert!(
        listed[1].meta.who.starts_with("root@"),
        "{:?}",
        listed[1].meta
    );
    let history = layout.history();
    assert_eq!(history.len(), 2, "{history:?}");
    assert_eq!(history[1].action, "switch");
    assert_eq!(history[1].id, id2);
    assert_eq!(history[1].from, id1);
    assert_eq!(history[1].message, "second");
    assert_eq!(layout.pending(), None);
    // The agents' own rollback works on it too, and so does the lock (flock) between
    // them; then back to v2 by the scripts below.
    let (to, from) = deploy_release::ops::rollback(&layout, None, "rust", "").unwrap();
    assert_eq!(
        (to.as_str(), from.as_deref()),
        (id1.as_str(), Some(id2.as_str()))
    );
    assert_eq!(version(&dest0), "1");

    // releases: the agents' reply shape, the current one marked.
    let dest_arg = shelf.dest_arg();
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=releases", &dest_arg],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    let doc = json(&out);
    let content = &doc[c.spec(0)]["releases"]["content"];
    assert_eq!(content["current"], id1.as_str());
    let listed: Value = serde_json::from_str(content["releases"].as_str().unwrap()).unwrap();
    assert_eq!(listed[0]["id"], id2.as_str());
    assert_eq!(listed[0]["current"], false);
    assert_eq!(listed[1]["id"], id1.as_str());
    assert_eq!(listed[1]["current"], true);
    assert_eq!(listed[1]["message"], "first");
    let history: Value = serde_json::from_str(content["history"].as_str().unwrap()).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 3);
    assert_eq!(history[2]["action"], "rollback");
    assert_eq!(history[2]["who"], "rust");
    assert_eq!(
        doc[c.spec(2)]["releases"]["content"]["current"],
        id2.as_str()
    );

    // rollback by the scripts: host 0 by id prefix (back to v2), the others to the
    // previous release (v1); revert-style, the history only grows.
    let out = client(
        home.path(),
        &[
            "--hosts",
            &c.spec(0),
            "--order=rollback",
            &dest_arg,
            &format!("--release={}", &id2[..id2.len() - 2]),
            "-m",
            "forward",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    assert_eq!(version(&dest0), "2");
    let rest = format!("{},{}", c.spec(1), c.spec(2));
    let out = client(
        home.path(),
        &["--hosts", &rest, "--order=rollback", &dest_arg, "-m", "bad"],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    let record = &json(&out)[c.spec(1)]["rollback"]["content"];
    assert_eq!(record["id"], id1.as_str());
    assert_eq!(record["previous"], id2.as_str());
    for i in 1..3 {
        let dest = shelf.dest(c, i);
        assert_eq!(version(&dest), "1");
        let history = Releases::new(&dest, None).history();
        let actions: Vec<&str> = history.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["switch", "switch", "rollback"]);
        assert_eq!(history[2].message, "bad");
        assert_eq!(Releases::new(&dest, None).meta(&id2).state, "inactive");
    }
    let actions: Vec<String> = Releases::new(&dest0, None)
        .history()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["switch", "switch", "rollback", "rollback"]);

    // Errors come back as an agent gives them: an unknown prefix, nothing to confirm.
    let out = client(
        home.path(),
        &[
            "--hosts",
            &c.spec(0),
            "--order=rollback",
            &dest_arg,
            "--release=zzzz",
        ],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    let record = &json(&out)[c.spec(0)]["rollback"];
    assert_eq!(record["returnCode"], "409");
    assert_eq!(
        record["content"],
        "rollback failed: no release matches \"zzzz\""
    );
    let out = client(
        home.path(),
        &["--hosts", &c.spec(0), "--order=confirm", &dest_arg],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    assert_eq!(
        json(&out)[c.spec(0)]["confirm"]["content"],
        "no switch waits for a confirm"
    );

    // Keep 3: a fourth and a fifth release prune the oldest, never current or previous.
    for v in ["3", "4"] {
        let m = shelf.manifest(v, None, "");
        let out = client(
            home.path(),
            &["--hosts", &c.spec(0), "--order=deploy", "--manifest", &m],
            None,
        );
        assert_eq!(out.status, 0, "{out:#?}");
    }
    let left = release_dirs(&dest0);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(!left.contains(&id1), "{left:?}");
    assert!(left.contains(&id2));
    assert_eq!(version(&dest0), "4");
}

#[test]
fn ssh_release_failures_switch_nobody_or_roll_back() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let shelf = Shelf::new();
    let hosts: String = (3..6).map(|i| c.spec(i)).collect::<Vec<_>>().join(",");
    let m1 = shelf.manifest("1", None, "");
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=deploy", "--manifest", &m1],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");

    // One host fails its `pre`: nobody switches, the prepared releases are discarded.
    let blocked = shelf.dest(c, 5).with_file_name("block");
    std::fs::write(&blocked, "").unwrap();
    let pre = "commands:\n  pre:\n    - test ! -e \"$(dirname \"$DEPLOY_DEST\")/block\"\n";
    let m2 = shelf.manifest("2", None, pre);
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=deploy", "--manifest", &m2],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    assert!(out.stderr.contains("nobody in it switched"), "{out:#?}");
    assert!(
        out.stdout.contains("prepare failed: pre command failed"),
        "{out:#?}"
    );
    for i in 3..6 {
        let dest = shelf.dest(c, i);
        assert_eq!(version(&dest), "1", "nobody switched");
        assert_eq!(
            release_dirs(&dest).len(),
            1,
            "the prepared release was discarded"
        );
        assert_eq!(Releases::new(&dest, None).history().len(), 1);
    }

    // A wrong checksum: refused before anything is unpacked.
    let wrong = "0".repeat(64);
    let m3 = shelf.manifest("3", Some(&wrong), "");
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=deploy", "--manifest", &m3],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    let doc = json(&out);
    let why = doc[c.spec(3)]["deploy"]["content"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "prepare failed: checksum mismatch: expected sha256:{wrong}, got sha256:"
        )),
        "{why}"
    );
    for i in 3..6 {
        let dest = shelf.dest(c, i);
        assert_eq!(version(&dest), "1");
        let dirs: Vec<String> = std::fs::read_dir(dest.with_file_name("app.releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !dirs
                .iter()
                .any(|n| n.starts_with(".staging-") || n.starts_with(".download-")),
            "nothing left behind: {dirs:?}"
        );
    }

    // A hostile archive (a `..` name) is refused whole.
    let up = shelf.path().join("hostile/in");
    std::fs::create_dir_all(&up).unwrap();
    std::fs::write(shelf.path().join("hostile/evil"), "x").unwrap();
    let archive = shelf.path().join("hostile.tar");
    let status = Command::new("tar")
        .arg("-cPf")
        .arg(&archive)
        .arg("../evil")
        .current_dir(&up)
        .status()
        .unwrap();
    assert!(status.success());
    let manifest = shelf.path().join("hostile.yml");
    std::fs::write(
        &manifest,
        format!(
            "src: file://{}\nchecksum: {}\ndest: {}/%h-%p/app\nsync_strategy: release\n",
            archive.display(),
            sha256(&archive),
            shelf.path().display()
        ),
    )
    .unwrap();
    let at = format!("@{}", manifest.display());
    // By the client's extractor (the default), and by the host's checks.
    let out = client(
        home.path(),
        &["--hosts", &c.spec(3), "--order=deploy", "--manifest", &at],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    assert!(
        out.stdout.contains("archive refused at \\\"../evil\\\""),
        "{out:#?}"
    );
    let out = client(
        home.path(),
        &[
            "--hosts",
            &c.spec(3),
            "--order=deploy",
            "--manifest",
            &at,
            "--fetch=host",
        ],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    assert!(out.stdout.contains("absolute or .. names"), "{out:#?}");
    assert_eq!(version(&shelf.dest(c, 3)), "1");

    // One host fails to switch (its dest became a real directory): the hosts that
    // switched are rolled back, and the failing one ran its failure hooks.
    let odd = shelf.dest(c, 5);
    std::fs::remove_file(&odd).unwrap();
    std::fs::create_dir(&odd).unwrap();
    let failure = "commands:\n  failure:\n    - cat > \"$DEPLOY_DEST.failure\"\n";
    let m4 = shelf.manifest("4", None, failure);
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=deploy", "--manifest", &m4],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    assert!(out.stderr.contains("2 hosts rolled back"), "{out:#?}");
    let why = json(&out)[c.spec(5)]["deploy"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.contains("is not a symbolic link to a release"), "{why}");
    let log = std::fs::read_to_string(odd.with_file_name("app.failure")).unwrap();
    assert!(log.contains("deploy failed"), "{log}");
    for i in 3..5 {
        let dest = shelf.dest(c, i);
        assert_eq!(version(&dest), "1", "rolled back");
        let actions: Vec<String> = Releases::new(&dest, None)
            .history()
            .into_iter()
            .map(|e| e.action)
            .collect();
        assert_eq!(actions, ["switch", "switch", "rollback"]);
    }
}

#[test]
fn ssh_release_unconfirmed_switch_reverts() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let shelf = Shelf::new();
    let hosts = format!("{},{},{}", c.spec(6), c.spec(7), c.spec(8));
    let m1 = shelf.manifest("1", None, "");
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=deploy", "--manifest", &m1],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    let m2 = shelf.manifest("2", None, "");
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=deploy",
            "--manifest",
            &m2,
            "--confirm-within=2s",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    let (kept, reverted, rebooted) = (shelf.dest(c, 6), shelf.dest(c, 7), shelf.dest(c, 8));
    assert_eq!(version(&kept), "2");
    assert_eq!(version(&reverted), "2");
    // The third host "reboots": its detached reverter is gone (its script names its
    // releases directory).
    let releases_dir = rebooted.with_file_name("app.releases");
    let killed = Command::new("pkill")
        .args(["-f", &format!("R='{}'", releases_dir.display())])
        .status()
        .unwrap();
    assert!(killed.success(), "the reverter was running");
    let pending = Releases::new(&kept, None).pending().expect("pending");
    assert_eq!(
        Some(pending.id.as_str()),
        Releases::new(&kept, None).current().as_deref()
    );
    // One host is confirmed in time, the other is not.
    let dest_arg = shelf.dest_arg();
    let out = client(
        home.path(),
        &["--hosts", &c.spec(6), "--order=confirm", &dest_arg],
        None,
    );
    assert_eq!(out.status, 0, "{out:#?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    // The reverter clears the pending confirm last, after the switch and the history.
    while Releases::new(&reverted, None).pending().is_some() && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(version(&reverted), "1", "not confirmed: reverted");
    assert_eq!(version(&kept), "2", "confirmed: kept");
    let history = Releases::new(&reverted, None).history();
    assert_eq!(history.last().unwrap().action, "revert");
    assert_eq!(Releases::new(&reverted, None).pending(), None);
    let history = Releases::new(&kept, None).history();
    assert_eq!(history.last().unwrap().action, "confirm");

    // Nobody reverted the rebooted host in time: a confirm after the deadline is
    // refused, and reverts it (as its deadline said) instead of keeping the release.
    assert_eq!(version(&rebooted), "2");
    let out = client(
        home.path(),
        &["--hosts", &c.spec(8), "--order=confirm", &dest_arg],
        None,
    );
    assert_ne!(out.status, 0, "{out:#?}");
    assert!(out.stdout.contains("came after the deadline"), "{out:#?}");
    assert_eq!(version(&rebooted), "1", "reverted by the late confirm");
    let history = Releases::new(&rebooted, None).history();
    assert_eq!(history.last().unwrap().action, "revert");
}

/// An HTTP server on loopback serving `body` to every request until dropped; counts
/// the requests.
struct Counting {
    url: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

fn counting_server(body: Vec<u8>) -> Counting {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/app.tar.gz", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&hits);
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    Counting { url, hits }
}

#[test]
fn ssh_release_fetched_once_by_the_client() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let shelf = Shelf::new();
    let hosts = hosts(c, 2);
    let (archive, sum) = shelf.artifact("1");
    let server = counting_server(std::fs::read(&archive).unwrap());
    let manifest = shelf.path().join("http.yml");
    std::fs::write(
        &manifest,
        format!(
            "src: {}\nchecksum: {sum}\ndest: {}/%h-%p/app\nsync_strategy: release\n",
            server.url,
            shelf.path().display()
        ),
    )
    .unwrap();
    let m = format!("@{}", manifest.display());
    let deploy = |fetch: &str| {
        client(
            home.path(),
            &[
                "--hosts",
                &hosts,
                "--order=deploy",
                "--manifest",
                &m,
                &format!("--fetch={fetch}"),
            ],
            None,
        )
    };
    let out = deploy("client");
    assert_eq!(out.status, 0, "{out:#?}");
    assert_eq!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fetch for the whole fleet"
    );
    for i in 0..2 {
        let dest = shelf.dest(c, i);
        assert_eq!(version(&dest), "1", "{out:#?}");
        assert_eq!(
            std::fs::read_to_string(dest.join("bin/app")).unwrap(),
            "#!/bin/sh\necho 1\n"
        );
        assert_eq!(release_dirs(&dest).len(), 1);
    }
    // --fetch=host: the hosts fetch for themselves, one request each.
    std::thread::sleep(Duration::from_millis(5));
    let out = deploy("host");
    assert_eq!(out.status, 0, "{out:#?}");
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 3);

    // A hostile archive (a link out of the tree, then a file through it) is refused by
    // the client's extractor: no host receives anything, nothing is written outside.
    let outside = shelf.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let evil = shelf.path().join("evil.tar");
    let py = format!(
        "import tarfile, io\nt = tarfile.open({evil:?}, 'w')\nl = tarfile.TarInfo('link'); l.type = tarfile.SYMTYPE; l.linkname = {outside:?}; t.addfile(l)\nd = b'pwned'\nf = tarfile.TarInfo('link/x'); f.size = len(d); t.addfile(f, io.BytesIO(d))\nt.close()\n",
        evil = evil.display().to_string(),
        outside = outside.display().to_string(),
    );
    assert!(Command::new("python3")
        .args(["-c", &py])
        .status()
        .unwrap()
        .success());
    let manifest = shelf.path().join("evil.yml");
    std::fs::write(
        &manifest,
        format!(
            "src: file://{}\nchecksum: {}\ndest: {}/%h-%p/app\nsync_strategy: release\n",
            evil.display(),
            sha256(&evil),
            shelf.path().display()
        ),
    )
    .unwrap();
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=deploy",
            "--manifest",
            &format!("@{}", manifest.display()),
            "--fetch=client",
        ],
        None,
    );
    assert_eq!(out.status, 1, "{out:#?}");
    assert!(out.stderr.contains("nobody in it switched"), "{out:#?}");
    assert!(!outside.join("x").exists(), "nothing written outside");
    for i in 0..2 {
        let dest = shelf.dest(c, i);
        assert_eq!(version(&dest), "1", "nobody switched");
        let staging: Vec<_> = std::fs::read_dir(dest.with_file_name("app.releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".staging"))
            .collect();
        assert!(staging.is_empty(), "{staging:?}");
    }
}
