//! Tests against the real `rsync`: a daemon on 127.0.0.1 with an ephemeral port serving
//! temporary trees, foreground runs, and background transfers through the
//! `rsync_runner` example (built by `cargo test`; see `common/examples/rsync_runner.rs`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::*;

/// An `rsync --daemon` serving module `DEST` (a small tree) and `BIG` (one 4 MiB file).
struct Daemon {
    child: Child,
    port: u16,
    /// The tree behind `DEST`.
    source: PathBuf,
    _dir: TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        fs::create_dir_all(source.join("sub")).unwrap();
        fs::create_dir_all(source.join("empty")).unwrap();
        fs::write(source.join("a.txt"), "hello\n").unwrap();
        fs::write(source.join("we\"ird name.txt"), "x").unwrap();
        fs::write(source.join("sub/b"), [b'b'; 100]).unwrap();
        symlink("a.txt", source.join("link")).unwrap();
        let big = dir.path().join("big");
        fs::create_dir(&big).unwrap();
        fs::write(big.join("blob"), vec![7u8; 4 << 20]).unwrap();

        let config = dir.path().join("rsyncd.conf");
        fs::write(
            &config,
            format!(
                "use chroot = no\nuid = {uid}\ngid = {gid}\nlog file = {log}\n\
                 [DEST]\npath = {source}\nread only = yes\n\
                 [BIG]\npath = {big}\nread only = yes\n",
                uid = nix::unistd::geteuid(),
                gid = nix::unistd::getegid(),
                log = dir.path().join("rsyncd.log").display(),
                source = source.display(),
                big = big.display(),
            ),
        )
        .unwrap();

        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("rsync")
                .process_group(0)
                .arg("--daemon")
                .arg("--no-detach")
                .arg(format!("--config={}", config.display()))
                .arg(format!("--port={port}"))
                .arg("--address=127.0.0.1")
                .stdin(Stdio::null())
                .spawn()
                .expect("rsync must be installed");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Daemon {
                        child,
                        port,
                        source,
                        _dir: dir,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break; // Port taken in the meantime: try another.
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("rsync daemon did not start");
    }

    fn url(&self, module: &str) -> String {
        format!("rsync://127.0.0.1:{}/{module}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The daemon and the per-connection processes it forked.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The runner built from `common/examples/rsync_runner.rs`.
fn runner() -> RunnerCommand {
    // The test binary is target/<profile>/deps/deploy_common-<hash>.
    let exe = std::env::current_exe().unwrap();
    let program = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("examples/rsync_runner");
    assert!(
        program.exists(),
        "{} is missing: run `cargo test -p deploy-common` (it builds examples), not `--lib`",
        program.display()
    );
    RunnerCommand {
        program,
        args_prefix: Vec::new(),
    }
}

fn inline(dest: &str, src: &Path) -> RsyncSpec {
    resolve(&format!("{dest},{}", src.display()), &BTreeMap::new()).unwrap()
}

/// A slow transfer of `BIG`: 4 MiB at 50 KiB/s.
fn slow(daemon: &Daemon, target: &Path) -> RsyncSpec {
    let mut groups = BTreeMap::new();
    groups.insert(
        "slow".to_owned(),
        crate::config::agent::RsyncGroup {
            dest: daemon.url("BIG"),
            src: target.display().to_string(),
            option: vec!["--bwlimit=50".into(), "--recursive".into()],
            ..Default::default()
        },
    );
    resolve("slow", &groups).unwrap()
}

/// Relative path → "dir", "file:<content>" or "link:<target>".
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(rel, format!("link:{}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".into());
                walk(root, &path, out);
            } else {
                let content = fs::read(&path).unwrap();
                out.insert(rel, format!("file:{}", String::from_utf8_lossy(&content)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn foreground_dry_run_then_transfer() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("target");
    fs::create_dir_all(target.join("old")).unwrap();
    fs::write(target.join("old/gone"), "o").unwrap();
    fs::write(target.join("stale"), "o").unwrap();
    let spec = inline(&daemon.url("DEST"), &target);

    let dry = tokio::time::timeout(LIMIT, run_foreground(&spec, true, LIMIT))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&dry.output).into_owned();
    assert!(dry.success(), "{text}");
    // 3 `deleting` lines (old/gone, old/, stale) + 3 regular files of 6 + 1 + 100 bytes.
    assert_eq!(
        parse_stats(&text),
        Stats {
            files: 6,
            size: 107
        },
        "{text}"
    );
    let list = parse_file_list(&text);
    let new: BTreeSet<_> = list.new.iter().map(String::as_str).collect();
    let deleted: BTreeSet<_> = list.deleted.iter().map(String::as_str).collect();
    assert_eq!(
        new,
        BTreeSet::from(["a.txt", "link -> a.txt", "sub/b", "we\"ird name.txt"]),
        "{text}"
    );
    assert_eq!(deleted, BTreeSet::from(["old/gone", "stale"]), "{text}");
    assert!(target.join("stale").exists(), "a dry run changes nothing");

    let real = run_foreground(&spec, false, LIMIT).await.unwrap();
    assert!(real.success(), "{}", String::from_utf8_lossy(&real.output));
    assert_eq!(snapshot(&target), snapshot(&daemon.source));

    let again = run_foreground(&spec, true, LIMIT).await.unwrap();
    let text = String::from_utf8_lossy(&again.output).into_owned();
    assert_eq!(parse_stats(&text), Stats::default(), "{text}");
    assert_eq!(parse_file_list(&text), FileList::default(), "{text}");
}

/// Names that look like rsync's human output, or that rsync must escape, are listed by
/// the itemize field and in rsync's escaped form, which decodes back to the bytes on
/// disk (issue 8 §7: a new file `deleting x` was reported as a deletion).
#[tokio::test]
async fn file_list_of_hostile_names() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let daemon = Daemon::start();
    let hostile: [&[u8]; 8] = [
        b"deleting x",
        b"x -> y",
        b" with  space ",
        b"new\nline",
        b"bad\xffname",
        br"back\#012slash",
        b"esc\x1b[31m",
        "ünï".as_bytes(),
    ];
    for name in hostile {
        fs::write(daemon.source.join(OsStr::from_bytes(name)), "h").unwrap();
    }
    symlink("deleting x", daemon.source.join("lnk -> z")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("target");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("deleting y"), "o").unwrap();
    fs::write(target.join("gone -> here"), "o").unwrap();
    let spec = inline(&daemon.url("DEST"), &target);

    let dry = run_foreground(&spec, true, LIMIT).await.unwrap();
    let text = String::from_utf8_lossy(&dry.output).into_owned();
    assert!(dry.success(), "{text}");
    let list = parse_file_list(&text);
    let new: BTreeSet<_> = list.new.iter().map(String::as_str).collect();
    let deleted: BTreeSet<_> = list.deleted.iter().map(String::as_str).collect();
    assert_eq!(
        new,
        BTreeSet::from([
            "a.txt",
            "link -> a.txt",
            "sub/b",
            "we\"ird name.txt",
            "deleting x",
            "x -> y",
            " with  space ",
            r"new\#012line",
            r"bad\#377name",
            r"back\#134#012slash",
            r"esc\#033[31m",
            "ünï",
            "lnk -> z -> deleting x",
        ]),
        "{text}"
    );
    assert_eq!(
        deleted,
        BTreeSet::from(["deleting y", "gone -> here"]),
        "{text}"
    );
    for name in &list.new {
        let bytes = unescape(name);
        if !name.contains(" -> ") || hostile.contains(&bytes.as_slice()) {
            let path = daemon.source.join(OsStr::from_bytes(&bytes));
            assert!(path.exists(), "{name:?} decodes to {bytes:?}, not on disk");
        }
    }
    // 2 deletions + 11 regular files.
    assert_eq!(parse_stats(&text).files, 13, "{text}");
}

#[tokio::test]
async fn foreground_into_missing_target_reports_created_directory() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("new/target");
    let spec = inline(&format!("{}/sub", daemon.url("DEST")), &target);
    let dry = run_foreground(&spec, true, LIMIT).await.unwrap();
    let text = String::from_utf8_lossy(&dry.output).into_owned();
    assert!(dry.success(), "{text}");
    assert_eq!(
        parse_file_list(&text).new,
        [
            format!("created directory {}", target.display()),
            "sub/b".into()
        ],
        "{text}"
    );
}

#[tokio::test]
async fn foreground_errors() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();

    let spec = inline(&daemon.url("NOPE"), work.path());
    let out = run_foreground(&spec, true, LIMIT).await.unwrap();
    let text = String::from_utf8_lossy(&out.output).into_owned();
    assert_eq!(out.status_code, Some(5), "{text}");
    assert_eq!(exit_meaning(5), "error starting client-server protocol");
    // stderr lines arrive in the same stream, in order.
    assert!(text.contains("@ERROR: Unknown module 'NOPE'"), "{text}");
    assert!(text.contains("rsync error:"), "{text}");

    let mut missing = spec.clone();
    missing.rsync = "/nonexistent/rsync".into();
    match run_foreground(&missing, true, LIMIT).await {
        Err(RsyncError::Spawn { binary, .. }) => assert_eq!(binary, missing.rsync),
        other => panic!("{other:?}"),
    }

    let slow = slow(&daemon, &work.path().join("slow"));
    let started = Instant::now();
    match run_foreground(&slow, false, Duration::from_secs(1)).await {
        Err(RsyncError::Timeout { after, .. }) => assert_eq!(after, Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn background_transfer_is_exclusive_and_killable() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let state = StateDir::new(work.path().join("state")).unwrap();
    let spec = slow(&daemon, &work.path().join("target"));
    let sum = checksum(&spec);
    let runner = runner();

    let StartOutcome::Started { pid } = state.start(&spec, &runner).unwrap() else {
        panic!("nothing should be running yet");
    };
    let pids = wait_for("rsync processes", || {
        state.running(&sum).filter(|pids| !pids.is_empty())
    });
    assert!(!pids.contains(&pid), "the runner is not listed");
    match state.start(&spec, &runner).unwrap() {
        StartOutcome::AlreadyRunning { pids: again } => assert!(!again.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(state.last(&sum).is_none(), "no result while running");
    let meta: serde_json::Value =
        serde_json::from_slice(&fs::read(state.root().join(&sum).join("meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["dest"], spec.dest);
    assert_eq!(meta["argv"][0], "--stats");

    let killed = state.kill(&sum);
    assert!(!killed.is_empty());
    let last = wait_for("the runner to record the kill", || state.last(&sum));
    // SIGTERM first: rsync cleans up and exits 20 (or dies of the signal).
    assert!(
        last.code == Some(20) || last.signal == Some(libc::SIGTERM),
        "{last:?}"
    );
    assert!(last.output_tail.is_empty(), "kill removes the output");
    assert!(!state.root().join(&sum).join("output").exists());
    wait_for("the lock to be released", || {
        state.running(&sum).is_none().then_some(())
    });
    assert_eq!(state.kill(&sum), Vec::<u32>::new());
}

#[test]
fn runner_forwards_sigterm_to_rsync() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let state = StateDir::new(work.path().join("state")).unwrap();
    let spec = slow(&daemon, &work.path().join("target"));
    let sum = checksum(&spec);

    let StartOutcome::Started { pid } = state.start(&spec, &runner()).unwrap() else {
        panic!("nothing should be running yet");
    };
    wait_for("rsync processes", || {
        state.running(&sum).filter(|pids| !pids.is_empty())
    });
    let runner_pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(runner_pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let last = wait_for("the runner to record the end", || state.last(&sum));
    // rsync exits with 20 on SIGTERM; it may also die of the signal itself.
    assert!(
        last.code == Some(20) || last.signal == Some(libc::SIGTERM),
        "{last:?}"
    );
    // rsync explains itself when its own handler caught the signal; killed before it
    // installed one (a loaded machine), it just dies of it.
    let text = String::from_utf8_lossy(&last.output_tail).into_owned();
    assert!(
        last.signal == Some(libc::SIGTERM) || text.contains("rsync error"),
        "{text}"
    );
}

#[test]
fn concurrent_starts_start_one_transfer() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let state = StateDir::new(work.path().join("state")).unwrap();
    let spec = slow(&daemon, &work.path().join("target"));
    let runner = runner();

    let outcomes: Vec<StartOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| state.start(&spec, &runner).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let started = outcomes
        .iter()
        .filter(|o| matches!(o, StartOutcome::Started { .. }))
        .count();
    assert_eq!(started, 1, "{outcomes:?}");
    let sum = checksum(&spec);
    wait_for("rsync processes", || {
        state.running(&sum).filter(|p| !p.is_empty())
    });
    assert!(!state.kill(&sum).is_empty());
    wait_for("the runner to finish", || state.last(&sum));
}

#[test]
fn background_quick_transfer_completes() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let state = StateDir::new(work.path().join("state")).unwrap();
    let target = work.path().join("target");
    let spec = inline(&daemon.url("DEST"), &target);
    let sum = checksum(&spec);
    let runner = runner();

    for round in 0..2 {
        let outcome = state.start(&spec, &runner).unwrap();
        assert!(
            matches!(outcome, StartOutcome::Started { .. }),
            "{outcome:?}"
        );
        let last = wait_for("the transfer to finish", || state.last(&sum));
        let text = String::from_utf8_lossy(&last.output_tail).into_owned();
        assert_eq!((last.code, last.signal), (Some(0), None), "{text}");
        assert!(last.finished > 0);
        assert!(text.contains("Number of files"), "{text}");
        assert!(state.output_head(&sum, 9).starts_with(b"receiving"));
        assert_eq!(snapshot(&target), snapshot(&daemon.source));
        if round == 0 {
            assert_eq!(
                parse_stats(&text),
                Stats {
                    files: 3,
                    size: 107
                },
                "{text}"
            );
        } else {
            assert_eq!(parse_stats(&text), Stats::default(), "{text}");
        }
        wait_for("the lock to be released", || {
            state.running(&sum).is_none().then_some(())
        });
    }
}

#[test]
fn background_failures_are_reported() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let state = StateDir::new(work.path().join("state")).unwrap();

    // The runner cannot be executed: an error, and the lock is free again.
    let spec = inline(&daemon.url("NOPE"), &work.path().join("target"));
    let sum = checksum(&spec);
    let broken = RunnerCommand {
        program: "/nonexistent/runner".into(),
        args_prefix: vec![],
    };
    assert!(matches!(
        state.start(&spec, &broken),
        Err(RsyncError::Spawn { .. })
    ));
    // (A child forked meanwhile by a concurrent test may hold a copy for an instant.)
    wait_for("the lock to be released", || {
        state.running(&sum).is_none().then_some(())
    });

    // rsync fails: its exit code and error text are recorded.
    assert!(matches!(
        state.start(&spec, &runner()).unwrap(),
        StartOutcome::Started { .. }
    ));
    let last = wait_for("rsync to fail", || state.last(&sum));
    assert_eq!(last.code, Some(5));
    let head = state.output_head(&sum, 512);
    assert!(String::from_utf8_lossy(&head).contains("rsync error"));

    // rsync cannot be executed: the runner says so.
    let mut missing = spec.clone();
    missing.rsync = "/nonexistent/rsync".into();
    missing.src.push_str("/other");
    let sum = checksum(&missing);
    state.start(&missing, &runner()).unwrap();
    let last = wait_for("the runner to fail", || state.last(&sum));
    assert_eq!(last.code, Some(state::RUNNER_FAILED));
    assert!(String::from_utf8_lossy(&last.output_tail).contains("cannot execute"));
}

#[test]
fn bad_checksums_touch_nothing() {
    let work = tempfile::tempdir().unwrap();
    let state = StateDir::new(work.path()).unwrap();
    for bad in [
        "",
        "..",
        "../../etc",
        "573B0DAF53561FC801514391E34F8B8B",
        "573b0daf53561fc801514391e34f8b8",
        "6853cb50428242fefd6a1c4f3f57c20e/..",
    ] {
        assert_eq!(state.running(bad), None);
        assert_eq!(state.kill(bad), Vec::<u32>::new());
        assert_eq!(state.last(bad), None);
        assert!(state.output_head(bad, 10).is_empty());
    }
}

#[test]
fn state_dir_must_be_private() {
    let work = tempfile::tempdir().unwrap();
    let open = work.path().join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    assert!(matches!(StateDir::new(&open), Err(RsyncError::Io { .. })));
    let file = work.path().join("file");
    fs::write(&file, "").unwrap();
    assert!(StateDir::new(&file).is_err());
    let created = StateDir::new(work.path().join("a/b")).unwrap();
    let mode = fs::metadata(created.root()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn runner_rejects_bad_arguments() {
    let args = |list: &[&str]| {
        list.iter()
            .map(Into::into)
            .collect::<Vec<std::ffi::OsString>>()
    };
    assert_eq!(runner_main(&[]), state::RUNNER_FAILED);
    assert_eq!(
        runner_main(&args(&["/tmp/x", "7", "-x", "/bin/true"])),
        state::RUNNER_FAILED
    );
    assert_eq!(
        runner_main(&args(&["/tmp/x", "1", "--", "/bin/true"])),
        state::RUNNER_FAILED
    );
    // A descriptor that does not hold the lock: refuses before touching anything.
    let work = tempfile::tempdir().unwrap();
    let lock = fs::File::create(work.path().join("lock")).unwrap();
    let held = fs::File::open(work.path().join("lock")).unwrap();
    // SAFETY: flock on a descriptor `held` owns.
    let locked = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(locked, 0);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&lock).to_string();
    let dir = work.path().display().to_string();
    assert_eq!(
        runner_main(&args(&[&dir, &fd, "--", "/bin/true"])),
        state::RUNNER_FAILED
    );
    assert!(!work.path().join("pid").exists());
}

#[test]
fn argv_is_deterministic_and_shell_free() {
    let mut groups = BTreeMap::new();
    groups.insert(
        "g".to_owned(),
        crate::config::agent::RsyncGroup {
            dest: "127.0.0.1::DEST".into(),
            src: "/srv/target/web".into(),
            rsh: Some("ssh -o BatchMode=yes".into()),
            exclude: vec![".git".into(), "*.tmp".into()],
            include: vec!["keep; rm -rf /".into()],
            ..Default::default()
        },
    );
    let spec = resolve("g", &groups).unwrap();
    assert_eq!(checksum(&spec), "6853cb50428242fefd6a1c4f3f57c20e");
    let expected = [
        "--stats",
        "--verbose",
        "--archive",
        "--delete",
        "--force",
        "--dry-run",
        "--rsh=ssh -o BatchMode=yes",
        "--exclude=.git",
        "--exclude=*.tmp",
        "--include=keep; rm -rf /",
        "--out-format=%i %n%L",
        "--",
        "127.0.0.1::DEST",
        "/srv/target/web",
    ];
    assert_eq!(argv(&spec, true), expected.map(std::ffi::OsString::from));

    groups.get_mut("g").unwrap().option = vec!["--recursive".into(), "--times".into()];
    let spec = resolve("g", &groups).unwrap();
    let expected = [
        "--stats",
        "--verbose",
        "--rsh=ssh -o BatchMode=yes",
        "--exclude=.git",
        "--exclude=*.tmp",
        "--include=keep; rm -rf /",
        "--recursive",
        "--times",
        "--out-format=%i %n%L",
        "--",
        "127.0.0.1::DEST",
        "/srv/target/web",
    ];
    assert_eq!(argv(&spec, false), expected.map(std::ffi::OsString::from));
}

#[test]
fn exit_codes() {
    assert_eq!(exit_meaning(0), "success");
    assert_eq!(exit_meaning(23), "partial transfer due to error");
    assert_eq!(
        exit_meaning(24),
        "partial transfer due to vanished source files"
    );
    assert_eq!(exit_meaning(35), "timeout waiting for daemon connection");
    assert_eq!(exit_meaning(7), "unknown");
    assert_eq!(exit_meaning(-1), "unknown");
}

/// A transfer whose source stops answering (its daemon stopped: what a cut link looks
/// like to rsync, which waits for ever) is stopped by the runner's stall watchdog and
/// recorded as rsync's timeout; a slow transfer that still moves is left alone.
#[test]
fn a_stalled_transfer_is_stopped_and_fails_as_a_timeout() {
    let daemon = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let state = StateDir::new(work.path().join("state"))
        .unwrap()
        .with_stall_timeout(Some(Duration::from_secs(2)));
    let spec = slow(&daemon, &work.path().join("target"));
    let sum = checksum(&spec);

    let StartOutcome::Started { .. } = state.start(&spec, &runner()).unwrap() else {
        panic!("nothing should be running yet");
    };
    wait_for("rsync processes", || {
        state.running(&sum).filter(|pids| !pids.is_empty())
    });
    // Slow (50 KiB/s) but moving: twice the window later it still runs.
    std::thread::sleep(Duration::from_secs(4));
    assert!(state.last(&sum).is_none(), "a moving transfer was stopped");
    assert!(state.running(&sum).is_some_and(|p| !p.is_empty()));

    let daemon_group = nix::unistd::Pid::from_raw(i32::try_from(daemon.child.id()).unwrap());
    nix::sys::signal::killpg(daemon_group, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let last = wait_for("the watchdog to stop the transfer", || state.last(&sum));
    let _ = nix::sys::signal::killpg(daemon_group, nix::sys::signal::Signal::SIGCONT);
    assert_eq!(last.code, Some(state::STALLED_CODE), "{last:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&last.output_tail).into_owned();
    assert!(text.contains("no data moved for 2 s"), "{text}");
    wait_for("no transfer left", || {
        state
            .running(&sum)
            .is_none_or(|p| p.is_empty())
            .then_some(())
    });
}

/// What a witness counts as the relayed tree differing from its source: content, names,
/// types and modes; not times, owners or groups (the extractor, not rsync, wrote them).
#[test]
fn witness_differences_are_content_names_and_modes() {
    let text = "receiving incremental file list\n\
                .d..t...... ./\n\
                >f.st...... changed.bin\n\
                >f+++++++++ added\n\
                *deleting   extra\n\
                .f...p..... setuid-now\n\
                .f....og... owned\n\
                .f..t...... touched\n\
                cL+++++++++ link -> /etc/shadow\n\
                \n\
                Number of files: 9\n";
    assert_eq!(
        super::output::differences(text),
        vec![
            ">f.st...... changed.bin",
            ">f+++++++++ added",
            "*deleting   extra",
            ".f...p..... setuid-now",
            "cL+++++++++ link -> /etc/shadow",
        ]
    );
    assert!(super::output::differences(
        "receiving incremental file list\n.d..t...... ./\n\nsent 1 bytes\n"
    )
    .is_empty());
}
