//! stretcher's own test semantics (its §3.5), and the release layout, against real
//! archives made by GNU tar, real rsync, real `sh`, and a real HTTP server on loopback.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use deploy_release::commands::Log;
use deploy_release::deploy::{self, Activation, Context, DeployError, Settings};
use deploy_release::fetch::{Hasher, Limits};
use deploy_release::layout::Releases;
use deploy_release::manifest::{Algorithm, Manifest};
use deploy_release::ops;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Lab {
    _t: tempfile::TempDir,
    root: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_owned();
        Lab { _t: t, root }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p)
    }

    /// A source tree `src/` (foo, bar/baz, exclude.txt, test.pid absent) as `name`
    /// with `tar` flags (`-z` for gzip…).
    fn archive(&self, name: &str, version: &str, flags: &[&str]) -> PathBuf {
        let src = self.path(&format!("src-{version}"));
        std::fs::create_dir_all(src.join("bar")).unwrap();
        std::fs::write(src.join("foo"), format!("foo {version}\n")).unwrap();
        std::fs::write(src.join("bar/baz"), "baz\n").unwrap();
        std::fs::write(src.join("exclude.txt"), "bar\n").unwrap();
        std::fs::write(src.join("version"), version).unwrap();
        let out = self.path(name);
        let status = Command::new("tar")
            .args(flags)
            .arg("-cf")
            .arg(&out)
            .arg("-C")
            .arg(&src)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        out
    }

    fn settings(&self) -> Settings {
        Settings {
            work_dir: self.path("work"),
            limits: Limits::default(),
            hooks: true,
            cwd: self.root.clone(),
        }
    }
}

fn digest(path: &Path, algorithm: Algorithm) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(&std::fs::read(path).unwrap());
    h.hex()
}

fn manifest(text: &str) -> Manifest {
    Manifest::parse(text, |k| std::env::var(k).ok()).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run(lab: &Lab, m: &Manifest) -> (Result<deploy::Activated, DeployError>, String) {
    run_with(lab, m, &lab.settings())
}

fn run_with(
    lab: &Lab,
    m: &Manifest,
    settings: &Settings,
) -> (Result<deploy::Activated, DeployError>, String) {
    let _ = lab;
    let log = Log::default();
    let outcome = rt().block_on(deploy::run(
        m,
        settings,
        &Context::default(),
        &Activation::default(),
        &log,
    ));
    (outcome.result, String::from_utf8(log.bytes()).unwrap())
}

#[test]
fn file_sources_with_every_checksum_kind_and_rsync_delete() {
    let lab = Lab::new();
    let tar = lab.archive("test.tar", "1", &[]);
    let dest = lab.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("test.pid"), "stale").unwrap();
    for algorithm in [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Sha512,
    ] {
        let sum = digest(&tar, algorithm).to_uppercase();
        let m = manifest(&format!(
            "src: file://{}\nchecksum: {sum}\ndest: {}\ncommands:\n  pre:\n    - echo pre > {}\n  post:\n    - echo post > {}\n",
            tar.display(),
            dest.display(),
            lab.path("pre").display(),
            lab.path("post").display()
        ));
        let (result, log) = run(&lab, &m);
        result.unwrap_or_else(|e| panic!("{algorithm:?}: {e}\n{log}"));
        assert_eq!(
            std::fs::read_to_string(dest.join("foo")).unwrap(),
            "foo 1\n"
        );
        assert!(
            !dest.join("test.pid").exists(),
            "--delete removed the stale pid file"
        );
        assert!(lab.path("pre").exists() && lab.path("post").exists());
    }
    // The work directory is left empty.
    assert_eq!(std::fs::read_dir(lab.path("work")).unwrap().count(), 0);
}

#[test]
fn excludes_and_exclude_from() {
    let lab = Lab::new();
    let tar = lab.archive("test.tar.gz", "1", &["-z"]);
    let dest = lab.path("dest");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("test.pid"), "keep").unwrap();
    let sum = digest(&tar, Algorithm::Sha256);
    let m = manifest(&format!(
        "src: file://{}\nchecksum: sha256:{sum}\ndest: {}\nexcludes: [\"*.pid\", version]\nexclude_from: exclude.txt\n",
        tar.display(),
        dest.display()
    ));
    let (result, log) = run(&lab, &m);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        std::fs::read_to_string(dest.join("test.pid")).unwrap(),
        "keep"
    );
    assert!(!dest.join("version").exists());
    assert!(
        !dest.join("bar").exists(),
        "excluded by exclude.txt from the archive"
    );
    assert!(dest.join("foo").exists());
}

#[test]
fn mv_strategy_and_dest_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::new();
    let tar = lab.archive("test.tar.zst", "1", &["--zstd"]);
    let dest = lab.path("dest");
    let sum = digest(&tar, Algorithm::Sha1);
    let text = format!(
        "src: file://{}\nchecksum: {sum}\ndest: {}\nsync_strategy: mv\ndest_mode: 0751\n",
        tar.display(),
        dest.display()
    );
    let (result, log) = run(&lab, &manifest(&text));
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o751);
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "1");
    // mv onto an existing dest fails, as in stretcher.
    let (result, _) = run(&lab, &manifest(&text));
    assert!(result.unwrap_err().to_string().contains("already exists"));
}

#[test]
fn checksum_mismatch_truncated_and_hostile_archives_fail() {
    let lab = Lab::new();
    let tar = lab.archive("test.tar", "1", &[]);
    let dest = lab.path("dest");
    let m = |src: &Path, sum: &str| {
        manifest(&format!(
            "src: file://{}\nchecksum: {sum}\ndest: {}\nsync_strategy: release\n",
            src.display(),
            dest.display()
        ))
    };
    let (result, _) = run(&lab, &m(&tar, &"0".repeat(64)));
    assert!(
        matches!(result, Err(DeployError::Checksum { .. })),
        "{result:?}"
    );
    // Truncated: the checksum matches the truncated bytes, the archive is cut.
    let bytes = std::fs::read(&tar).unwrap();
    let cut = lab.path("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2 + 100]).unwrap();
    let (result, _) = run(&lab, &m(&cut, &digest(&cut, Algorithm::Sha256)));
    assert!(result.unwrap_err().to_string().contains("truncated"));
    // Hostile: an entry with `..`.
    let mut h = vec![0u8; 512];
    h[..9].copy_from_slice(b"../pwned\0");
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(b"00000000000\0");
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h.extend_from_slice(&[0u8; 1024]);
    let hostile = lab.path("hostile.tar");
    std::fs::write(&hostile, &h).unwrap();
    let (result, _) = run(&lab, &m(&hostile, &digest(&hostile, Algorithm::Sha256)));
    assert!(result.unwrap_err().to_string().contains("`..`"));
    assert!(!lab.path("pwned").exists());
    // None of them left a release behind, nor a staging tree (a local release artifact
    // is unpacked while it is hashed: a wrong digest discards what was unpacked).
    assert!(Releases::new(&dest, None).ids().is_empty());
    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(lab.path("dest.releases"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|n| n.to_string_lossy().starts_with(".meta")
            || n.to_string_lossy().starts_with(".lock")),
        "{left:?}"
    );
    // A gzip artifact whose digest is right, read once: every byte hashed, unpacked.
    let gz = lab.archive("ok.tar.gz", "7", &["-z"]);
    let (result, log) = run(&lab, &m(&gz, &digest(&gz, Algorithm::Sha256)));
    result.unwrap();
    assert!(log.contains("while hashing"), "{log}");
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "7");
}

#[test]
fn commands_only_pre_failure_and_the_log_on_stdin() {
    let lab = Lab::new();
    let got = lab.path("got");
    let m = manifest(&format!(
        "commands:\n  pre:\n    - echo hello-pre\n  post:\n    - echo hello-post\n  success:\n    - true\n    - cat > {}\n  failure:\n    - echo failed > {}\n",
        got.display(),
        lab.path("failed").display()
    ));
    let (result, log) = run(&lab, &m);
    result.unwrap();
    let piped = std::fs::read_to_string(&got).unwrap();
    assert!(
        piped.contains("hello-pre") && piped.contains("hello-post"),
        "{piped}"
    );
    assert!(log.contains("hello-post"));
    assert!(!lab.path("failed").exists());
    let m = manifest(&format!(
        "commands:\n  pre:\n    - exit 1\n  failure:\n    - cat > {}\n",
        got.display()
    ));
    let (result, _) = run(&lab, &m);
    assert_eq!(
        result.unwrap_err().to_string(),
        "failed: exit 1 exit status 1"
    );
    assert!(std::fs::read_to_string(&got)
        .unwrap()
        .contains("deploy failed"));
    // Hooks disabled: refused before anything runs.
    let settings = Settings {
        hooks: false,
        ..lab.settings()
    };
    let (result, _) = run_with(&lab, &m, &settings);
    assert!(matches!(result, Err(DeployError::HooksDisabled)));
}

#[test]
fn retries_timeout_and_bandwidth() {
    let lab = Lab::new();
    let dest = lab.path("dest");
    let missing = manifest(&format!(
        "src: file://{}\nchecksum: {}\ndest: {}\n",
        lab.path("nope.tar").display(),
        "a".repeat(40),
        dest.display()
    ));
    let settings = Settings {
        limits: Limits {
            retry: 2,
            retry_wait: Duration::from_millis(200),
            ..Limits::default()
        },
        ..lab.settings()
    };
    let start = Instant::now();
    let (result, _) = run_with(&lab, &missing, &settings);
    assert!(result.unwrap_err().to_string().contains("get src failed"));
    assert!(start.elapsed() >= Duration::from_millis(400), "two waits");
    // 1 MiB at 512 KiB/s: about 2 s; with a 1 s timeout it fails.
    let big = lab.path("big.bin");
    std::fs::write(&big, vec![5u8; 1 << 20]).unwrap();
    let sum = digest(&big, Algorithm::Sha256);
    let m = manifest(&format!(
        "src: file://{}\nchecksum: {sum}\ndest: {}\n",
        big.display(),
        dest.display()
    ));
    let shaped = |timeout| Settings {
        limits: Limits {
            max_bandwidth: Some(512 << 10),
            timeout,
            ..Limits::default()
        },
        ..lab.settings()
    };
    let (result, _) = run_with(&lab, &m, &shaped(Some(Duration::from_secs(1))));
    assert!(result.unwrap_err().to_string().contains("timeout"));
    let start = Instant::now();
    let log = Log::default();
    let work = shaped(None);
    let fetched = rt().block_on(deploy_release::fetch::fetch(
        &format!("file://{}", big.display()),
        &lab.path("copy"),
        Algorithm::Sha256,
        &work.limits,
        &|_| {},
    ));
    drop(log);
    assert_eq!(fetched.unwrap().hex, sum);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

/// A one-shot HTTP server on loopback answering `status` with `body` to every request.
fn http_server(status: u16, body: Vec<u8>) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        for _ in 0..4 {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
            if status == 200 {
                return;
            }
        }
    });
    (format!("http://{addr}"), handle)
}

#[test]
fn http_sources_check_the_status() {
    let lab = Lab::new();
    let tar = lab.archive("test.tar", "1", &[]);
    let bytes = std::fs::read(&tar).unwrap();
    let sum = digest(&tar, Algorithm::Sha256);
    let dest = lab.path("dest");
    let (base, server) = http_server(200, bytes);
    let m = manifest(&format!(
        "src: {base}/test.tar\nchecksum: {sum}\ndest: {}\n",
        dest.display()
    ));
    let (result, log) = run(&lab, &m);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(dest.join("foo").exists());
    server.join().unwrap();
    for status in [404, 500] {
        let (base, _server) = http_server(status, b"not the artifact".to_vec());
        let m = manifest(&format!(
            "src: {base}/test.tar\nchecksum: {sum}\ndest: {}\n",
            dest.display()
        ));
        let (result, _) = run(&lab, &m);
        let e = result.unwrap_err().to_string();
        assert!(e.contains(&format!("HTTP status {status}")), "{e}");
    }
}

/// Releases: switch, keep-K, rollback by prefix (revert-style history), and a reader
/// looping on `dest` during 100 switches never sees a mixed or missing tree.
#[test]
fn releases_switch_atomically_keep_k_and_roll_back() {
    let lab = Lab::new();
    let dest = lab.path("app");
    let mut ids = Vec::new();
    for v in 1..=4 {
        let tar = lab.archive(&format!("v{v}.tar"), &v.to_string(), &[]);
        let sum = digest(&tar, Algorithm::Sha256);
        let m = manifest(&format!(
            "src: file://{}\nchecksum: {sum}\ndest: {}\nsync_strategy: release\nkeep: 3\n",
            tar.display(),
            dest.display()
        ));
        let (result, log) = run(&lab, &m);
        let activated = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
        assert_eq!(
            std::fs::read_to_string(dest.join("version")).unwrap(),
            v.to_string()
        );
        ids.push(activated.id.unwrap());
        assert!(
            ids[v - 1].ends_with(&sum[..8]),
            "{} carries the checksum",
            ids[v - 1]
        );
    }
    let releases = Releases::new(&dest, None);
    assert_eq!(releases.ids(), ids[1..], "keep 3: the oldest pruned");
    // Roll back to the previous, then by prefix to the oldest kept.
    let (to, from) = ops::rollback(&releases, None, "me@here", "bad build").unwrap();
    assert_eq!(
        (to.as_str(), from.as_deref()),
        (ids[2].as_str(), Some(ids[3].as_str()))
    );
    let hash = ids[1].rsplit('-').next().unwrap();
    let (to, _) = ops::rollback(&releases, Some(&hash[..4]), "me@here", "").unwrap();
    assert_eq!(to, ids[1]);
    assert!(
        ops::rollback(&releases, Some("20"), "", "").is_err(),
        "too short"
    );
    let history: Vec<String> = releases
        .history()
        .iter()
        .map(|e| format!("{}:{}", e.action, e.id))
        .collect();
    assert_eq!(history.len(), 6);
    assert_eq!(history[4], format!("rollback:{}", ids[2]));
    assert_eq!(history[5], format!("rollback:{}", ids[1]));
    let listed = releases.list();
    assert!(listed.iter().any(|l| l.current && l.meta.id == ids[1]));

    // Atomicity: 100 switches between two releases while a reader checks every file.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let dest = dest.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Through one resolved directory, so the three reads are of one tree.
                let dir = std::fs::canonicalize(&dest).expect("dest always resolves");
                let v = std::fs::read_to_string(dir.join("version")).expect("version");
                let foo = std::fs::read_to_string(dir.join("foo")).expect("foo");
                assert_eq!(foo, format!("foo {v}\n"), "a mixed tree");
                reads += 1;
            }
            reads
        })
    };
    for i in 0..100 {
        releases.switch(&ids[2 + i % 2]).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

#[test]
fn unconfirmed_switches_revert() {
    let lab = Lab::new();
    let dest = lab.path("app");
    let mut last = None;
    for v in 1..=2 {
        let tar = lab.archive(&format!("v{v}.tar"), &v.to_string(), &[]);
        let sum = digest(&tar, Algorithm::Sha256);
        let m = manifest(&format!(
            "src: file://{}\nchecksum: {sum}\ndest: {}\nsync_strategy: release\n",
            tar.display(),
            dest.display()
        ));
        let log = Log::default();
        let activation = Activation {
            confirm_within: Some(Duration::from_secs(60)),
        };
        let outcome = rt().block_on(deploy::run(
            &m,
            &lab.settings(),
            &Context::default(),
            &activation,
            &log,
        ));
        last = outcome.result.unwrap().id;
    }
    let releases = Releases::new(&dest, None);
    let watch = ops::Watch::new(&lab.path("state"));
    watch.add(&releases).unwrap();
    let pending = releases.pending().unwrap();
    assert_eq!(Some(pending.id.clone()), last);
    // Not yet due: nothing happens.
    assert!(watch.sweep(pending.deadline - 1).is_empty());
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "2");
    // Due (as after an agent restart: only the files remain): reverted to v1.
    let watch = ops::Watch::new(&lab.path("state"));
    let reverted = watch.sweep(pending.deadline);
    assert_eq!(reverted.len(), 1);
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "1");
    assert!(releases.pending().is_none());
    assert_eq!(releases.history().last().unwrap().action, "revert");
    // A confirmed switch stays.
    let hash = pending.id.rsplit('-').next().unwrap();
    let (to, _) = ops::rollback(&releases, Some(hash), "", "").unwrap();
    assert_eq!(to, pending.id);
    let wait_until = |deadline| {
        releases
            .set_pending(Some(&deploy_release::layout::Pending {
                id: to.clone(),
                previous: pending.previous.clone(),
                deadline,
            }))
            .unwrap();
    };
    wait_until(100);
    assert_eq!(
        ops::confirm(&releases, "me", 99).unwrap(),
        ops::Confirmed::Confirmed(to.clone())
    );
    watch.add(&releases).unwrap();
    assert!(watch.sweep(i64::MAX).is_empty());
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "2");
    // A confirm after the deadline (the host was down when it passed) reverts.
    wait_until(100);
    assert_eq!(
        ops::confirm(&releases, "me", 100).unwrap(),
        ops::Confirmed::TooLate {
            id: to.clone(),
            previous: pending.previous.clone()
        }
    );
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "1");
    assert!(releases.pending().is_none());
    assert_eq!(
        ops::confirm(&releases, "me", 0).unwrap(),
        ops::Confirmed::Nothing
    );
}
