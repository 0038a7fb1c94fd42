//! `ssh://` hosts: the real `deploy-client` binary against ten real sshd instances on
//! 127.0.0.11–20 (ephemeral ports), plus a jump host on 127.0.0.21, each with its own
//! generated host key, all accepting one generated user key for root.
//!
//! The sshd instances are started once for the whole test binary, by a thread that
//! lives as long as the process, with `PR_SET_PDEATHSIG`, so they end with it. Every
//! test has its own HOME (key, known_hosts, config): the real `~/.ssh` is never read.
//! The tests need root (sshd's privilege separation, `PermitRootLogin`) and
//! `/usr/sbin/sshd`; without them they are skipped with a message.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use deploy_testkit::sshd::{cluster, home, HOSTS, JUMP};
use serde_json::Value;

#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs deploy-client with HOME = `home`, no ssh-agent, under a 30 s limit.
pub(crate) fn client(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    client_env(home, args, stdin, &[])
}

pub(crate) fn client_env(
    home: &Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Output {
    client_at(home, None, args, stdin, env)
}

/// Runs deploy-client like [`client`], in the directory `cwd`.
pub(crate) fn client_in(home: &Path, cwd: &Path, args: &[&str]) -> Output {
    client_at(home, Some(cwd), args, None, &[])
}

fn client_at(
    home: &Path,
    cwd: Option<&Path>,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deploy-client"));
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.args(args)
        .env("HOME", home)
        .env("USER", "root")
        .env("DEPLOY_LOCK_FILE", lock_file(home))
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("DEPLOY_KEY_CIPHER")
        .env_remove("DEPLOY_API_KEY")
        .env_remove("RUST_LOG")
        .env("DEPLOY_CLIENT_CONFIG", "")
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn deploy-client");
    if let Some(bytes) = stdin {
        use std::io::Write as _;
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(bytes).expect("write stdin");
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let out = rx.recv_timeout(Duration::from_secs(5));
            let (stdout, stderr) = match &out {
                Ok(Ok(out)) => (
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ),
                _ => Default::default(),
            };
            panic!(
                "deploy-client {args:?} did not finish in 30 s\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
    };
    Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The lock file template of the tests in `home`: the ten sshd share one /tmp, so
/// each host needs its own file (upload and sync take the lock by default).
pub(crate) fn lock_file(home: &Path) -> String {
    format!("{}/%h-%p-%n.lock", home.display())
}

pub(crate) fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[test]
fn ssh_true_and_echo_on_ten_hosts() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = c.all();
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=run", "--", "true"],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(out.stderr, "");

    // ssh semantics: the words are joined for the remote shell, which expands `$`.
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--",
            "echo",
            "hello",
            "$((6*7))",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    let mut expected: Vec<String> = (0..HOSTS)
        .map(|i| format!("{}: hello 42", c.spec(i)))
        .collect();
    expected.sort();
    assert_eq!(sorted_lines(&out.stdout), expected);

    // -q: raw output, no prefix.
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=run", "-q", "--", "echo hi"],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "hi\n".repeat(HOSTS));
}

#[test]
fn ssh_ten_thousand_lines_per_host_never_interleave() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = c.all();
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            // Without a terminal, whose stderr would be its stdout.
            "--no-pty",
            "--",
            "seq -f 'line %g of the test, padded to be long enough to span packets' 1 10000; echo done >&2",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{}", out.stderr);
    let mut next = vec![1u32; HOSTS];
    let prefixes: Vec<String> = (0..HOSTS).map(|i| format!("{}: ", c.spec(i))).collect();
    for line in out.stdout.lines() {
        let host = prefixes
            .iter()
            .position(|p| line.starts_with(p.as_str()))
            .unwrap_or_else(|| panic!("line without a host prefix: {line:?}"));
        let rest = &line[prefixes[host].len()..];
        let expected = format!(
            "line {} of the test, padded to be long enough to span packets",
            next[host]
        );
        assert_eq!(
            rest, expected,
            "host {host}: line cut, mixed or out of order"
        );
        next[host] += 1;
    }
    assert!(next.iter().all(|&n| n == 10_001), "{next:?}");
    // stderr apart from stdout.
    assert_eq!(
        sorted_lines(&out.stderr),
        sorted_lines(
            &prefixes
                .iter()
                .map(|p| format!("{p}done\n"))
                .collect::<String>()
        )
    );
}

#[test]
fn ssh_exit_17_everywhere_is_summarised() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let out = client(
        home.path(),
        &["--hosts", &c.all(), "--order=run", "--", "exit", "17"],
        None,
    );
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr.ends_with("code 17 (10 hosts)\n"),
        "{}",
        out.stderr
    );

    // The json document carries each host's code.
    let out = client(
        home.path(),
        &[
            "--hosts",
            &c.spec(0),
            "--order=run",
            "--format=json",
            "--",
            "echo x; exit 3",
        ],
        None,
    );
    assert_eq!(out.status, 1, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).expect("json");
    let record = &doc[c.spec(0)]["run"];
    assert_eq!(record["returnCode"], "200");
    assert_eq!(record["content"]["code"], "3");
    assert_eq!(record["content"]["return"], "false");
    assert_eq!(record["content"]["content"], "eAo=");
}

/// When only some hosts fail, the summary names them (sorted), per reason; the json
/// document is sorted by host whatever the command line's order.
#[test]
fn ssh_summary_names_the_hosts_that_failed() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let ip = |i: usize| c.hosts[i].0.clone();
    // SSH_CONNECTION is "client port server port": fail on hosts 7 and 2.
    let command = format!(
        "case \"$SSH_CONNECTION\" in *' {} '*|*' {} '*) exit 1;; esac",
        ip(7),
        ip(2)
    );
    let hosts = format!("{},{},{},{}", c.spec(7), c.spec(0), c.spec(2), c.spec(1));
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=run", "--", &command],
        None,
    );
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr.ends_with(&format!(
            "2 of 4 hosts failed: code 1: {}, {}\n",
            c.spec(2),
            c.spec(7)
        )),
        "{}",
        out.stderr
    );
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--format=json",
            "--",
            &command,
        ],
        None,
    );
    let doc: Value = serde_json::from_str(&out.stdout).expect("json");
    let keys: Vec<&String> = doc.as_object().expect("object").keys().collect();
    let mut sorted = [c.spec(0), c.spec(1), c.spec(2), c.spec(7)];
    sorted.sort_by_key(|s| {
        let (ip, port) = s
            .trim_start_matches("ssh://")
            .split_once(':')
            .expect("port");
        let ip: std::net::Ipv4Addr = ip.parse().expect("ip");
        (ip, port.parse::<u16>().expect("port"))
    });
    assert_eq!(keys, sorted.iter().collect::<Vec<_>>());
}

/// Hosts from a file (`--hosts=@FILE`, `./FILE`), without the scheme under `--ssh`,
/// the default user `-u`, and one host written several ways contacted once.
#[test]
fn ssh_hosts_file_default_user_and_spellings() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let (ip0, port0, _) = &c.hosts[0];
    let (ip1, port1, _) = &c.hosts[1];
    // Host 0 three ways (the local user is root); host 1 once, as a node set.
    let (net, last) = ip1.rsplit_once('.').expect("IPv4");
    let list = format!(
        "# web\n{ip0}:{port0}\nssh://{ip0}:{port0}, root@{ip0}:{port0}\n{net}.[{last}]:{port1}\n"
    );
    std::fs::write(home.path().join("hosts"), &list).expect("write");
    let file = format!("@{}", home.path().join("hosts").display());
    for spec in [file.as_str(), "./hosts"] {
        let out = client_in(
            home.path(),
            home.path(),
            &["--ssh", "--hosts", spec, "--order=run", "--", "echo hi"],
        );
        assert_eq!(out.status, 0, "{list}: {out:?}");
        assert_eq!(
            sorted_lines(&out.stdout),
            [
                format!("ssh://{ip0}:{port0}: hi"),
                format!("ssh://{ip1}:{port1}: hi")
            ],
            "{list}: {out:?}"
        );
    }
    // -u: the user of hosts that name none (`nobody`, whose shell refuses to run
    // anything, where root would succeed); a user written wins.
    let hosts = format!("{ip0}:{port0},root@{ip1}:{port1}");
    let out = client(
        home.path(),
        &[
            "--ssh",
            "-u",
            "nobody",
            "--hosts",
            &hosts,
            "--order=run",
            "--",
            "whoami",
        ],
        None,
    );
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("ssh://root@{ip1}:{port1}: root\n")),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("currently not available")
            && out
                .stderr
                .ends_with(&format!("code 1: ssh://{ip0}:{port0}\n")),
        "{out:?}"
    );
    // A missing hosts file is a usage error naming it.
    let out = client(
        home.path(),
        &["--hosts=@/no/such/hosts", "--order=run", "--", "true"],
        None,
    );
    assert_eq!(out.status, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("cannot read the hosts file /no/such/hosts"),
        "{out:?}"
    );
}

/// `run --cwd=DIR`: the command runs there; where DIR is missing it does not run.
#[test]
fn ssh_run_cwd() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let dir = home.path().join("it's here");
    std::fs::create_dir(&dir).expect("mkdir");
    let cwd = format!("--cwd={}", dir.display());
    let hosts = format!("{},{}", c.spec(0), c.spec(1));
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=run", "-q", &cwd, "--", "pwd"],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        out.stdout,
        format!("{d}\n{d}\n", d = dir.display()),
        "{out:?}"
    );
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--cwd=/no/such/dir",
            "--",
            "echo",
            "ran",
        ],
        None,
    );
    assert_eq!(out.status, 1, "{out:?}");
    assert!(!out.stdout.contains("ran"), "{out:?}");
    // Agents run commands in their own directory: refused before contacting anyone.
    let out = client(
        home.path(),
        &[
            "--hosts",
            "127.0.0.1",
            "--order=run",
            "--cwd=/tmp",
            "--",
            "pwd",
        ],
        None,
    );
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("--cwd is for ssh:// hosts"), "{out:?}");
}

/// `-q` copies the output exactly: no newline is added after a last partial line.
#[test]
fn ssh_quiet_output_is_raw() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let out = client(
        home.path(),
        &[
            "--hosts",
            &c.spec(0),
            "--order=run",
            "-q",
            "--",
            "printf 'a\\nbc'",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "a\nbc");
    let out = client(
        home.path(),
        &["--hosts", &c.spec(0), "--order=run", "--", "printf abc"],
        None,
    );
    assert_eq!(out.stdout, format!("{}: abc\n", c.spec(0)));
}

#[test]
fn ssh_stdin_is_sent_to_every_host() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let script = home.path().join("script.sh");
    std::fs::write(&script, "echo one\necho two\n").expect("script");
    let hosts = c.all();
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "-q",
            "--stdin",
            script.to_str().expect("path"),
            "--",
            "sh",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    let mut expected = vec!["one".to_owned(); HOSTS];
    expected.extend(vec!["two".to_owned(); HOSTS]);
    assert_eq!(sorted_lines(&out.stdout), expected);
    // From our own standard input, byte for byte.
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "-q",
            "--stdin=-",
            "--",
            "wc",
            "-c",
        ],
        Some(b"12345\n67890"),
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "11\n".repeat(HOSTS));
    // Without --stdin, the command sees EOF at once (no hang).
    let out = client(
        home.path(),
        &[
            "--hosts",
            &c.spec(0),
            "--order=run",
            "-q",
            "--",
            "cat; echo eof",
        ],
        None,
    );
    assert_eq!((out.status, out.stdout.as_str()), (0, "eof\n"), "{out:?}");
}

#[test]
fn ssh_sudo_covers_every_part_of_the_command() {
    let Some(c) = cluster() else { return };
    if !Path::new("/usr/bin/sudo").exists() {
        eprintln!("ssh_sudo skipped: sudo is not installed");
        return;
    }
    let home = home(c, true);
    let out = client(
        home.path(),
        &[
            "--hosts",
            &c.spec(1),
            "--order=run",
            "-q",
            "--sudo",
            "--",
            "id -u && echo \"it's $(id -un)\"",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "0\nit's root\n");
}

/// Strict across transports: an agent that cannot be reached stops the command on the
/// SSH hosts of the same run too (the connect stage covers every host when agents are
/// among them); loose, the SSH hosts run.
#[test]
fn ssh_hosts_do_not_start_when_an_agent_is_unreachable() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let agent = format!("127.0.0.1:{closed}");
    let hosts = format!("{},{agent},{}", c.spec(0), c.spec(1));
    let marker = home.path().join("ran");
    let command = format!("echo x >> {}", marker.display());
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=run", "--", &command],
        None,
    );
    assert_eq!(out.status, 3, "{out:?}");
    assert!(!marker.exists(), "a command ran in strict mode: {out:?}");
    assert!(
        out.stderr.contains(&format!(
            "the order started nowhere, since {agent} could not be connected to"
        )),
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("not started (2 hosts), unreachable (1 host)"),
        "{out:?}"
    );
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--skip-unreachable",
            "--",
            &command,
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "x\nx\n"
    );
}

#[test]
fn ssh_unreachable_strict_and_loose() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let dead = format!("ssh://127.0.0.1:{closed}");
    let hosts = format!("{},{dead},{}", c.spec(0), c.spec(1));
    // Strict (the default): every host or none. The two reachable hosts connected,
    // but nothing ran on them, since the third could not be reached.
    let marker = home.path().join("ran");
    let command = format!("echo ok; echo x >> {}", marker.display());
    let out = client(
        home.path(),
        &["--hosts", &hosts, "--order=run", "--", &command],
        None,
    );
    assert_eq!(out.status, 3, "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    assert!(!marker.exists(), "a command ran in strict mode: {out:?}");
    assert!(
        out.stderr.contains(&format!("not started (strict: every host or none; --skip-unreachable runs on the others): {dead} failed (can't connect")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "error: {dead}: can't connect to 127.0.0.1:{closed}"
        )),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unreachable (1 host)"),
        "{}",
        out.stderr
    );

    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--skip-unreachable",
            "--",
            &command,
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 2, "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap_or_default(),
        "x\nx\n"
    );
    assert!(
        out.stderr.contains(&format!(
            "note: 1 unreachable host skipped (--skip-unreachable): {dead}"
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn ssh_host_key_mismatch_is_refused() {
    let Some(c) = cluster() else { return };
    let home = home(c, false);
    // Host 0 recorded with host 1's key.
    let known = home.path().join(".ssh/known_hosts");
    let (ip, port, _) = &c.hosts[0];
    std::fs::write(&known, format!("# first\n[{ip}]:{port} {}\n", c.hosts[1].2)).expect("write");
    let spec = c.spec(0);
    for extra in [&[][..], &["--accept-new-host-keys"][..]] {
        let mut args = vec!["--hosts", spec.as_str(), "--order=run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "echo", "never"]);
        let out = client(home.path(), &args, None);
        assert_eq!(out.status, 3, "{out:?}");
        assert_eq!(out.stdout, "");
        assert!(out.stderr.contains("HOST KEY MISMATCH"), "{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("{}:2", known.display())),
            "names the file and line: {}",
            out.stderr
        );
    }
}

#[test]
fn ssh_unknown_host_strict_then_accept_new() {
    let Some(c) = cluster() else { return };
    let home = home(c, false);
    let known = home.path().join("kh");
    let known_arg = known.to_str().expect("path");
    let hosts = format!("{},{}", c.spec(2), c.spec(3));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "--hosts",
            hosts.as_str(),
            "--order=run",
            "--known-hosts",
            known_arg,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "echo", "ok"]);
        client(home.path(), &args, None)
    };
    let out = run(&[]);
    assert_eq!(out.status, 3, "{out:?}");
    assert!(out.stderr.contains("is not known"), "{}", out.stderr);
    assert!(out.stderr.contains("SHA256:"), "{}", out.stderr);
    assert!(out
        .stderr
        .contains(&format!("[{}]:{}", c.hosts[2].0, c.hosts[2].1)));
    assert!(!known.exists());

    let out = run(&["--accept-new-host-keys"]);
    assert_eq!(out.status, 0, "{out:?}");
    let text = std::fs::read_to_string(&known).expect("known_hosts written");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains(&c.hosts[2].2) && text.contains(&c.hosts[3].2),
        "{text}"
    );

    let out = run(&[]);
    assert_eq!(out.status, 0, "now known: {out:?}");
}

/// `-u USER` wins over ssh_config's `User` (the command line over the configuration,
/// like `ssh -l`), and a user written in the host wins over both; without `-u` the
/// configuration's `User` holds. The defaults file's `[ssh] user` is a default: it
/// comes after ssh_config's `User`. (`nobody`'s shell refuses to run anything, where
/// root's succeeds.)
#[test]
fn ssh_user_flag_wins_over_ssh_config_user() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let (ip, port, _) = &c.hosts[5];
    std::fs::write(
        home.path().join(".ssh/config"),
        format!("Host web1\n  HostName {ip}\n  Port {port}\n  User nobody\n"),
    )
    .expect("config");
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec!["--hosts", "ssh://web1", "--order=run", "--no-pty"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "id", "-un"]);
        client_env(home.path(), &args, None, env)
    };
    // The configuration's User.
    let out = run(&[], &[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stdout.contains("currently not available"), "{out:?}");
    // -u wins over it, in both spellings.
    for flag in [&["-u", "root"][..], &["--user=root"][..]] {
        let out = run(flag, &[]);
        assert_eq!(out.status, 0, "{flag:?}: {out:?}");
        assert_eq!(out.stdout, "ssh://web1: root\n", "{flag:?}: {out:?}");
    }
    // A user written in the host wins over -u.
    let out = client(
        home.path(),
        &[
            "--hosts",
            "ssh://root@web1",
            "-u",
            "nobody",
            "--order=run",
            "--",
            "id",
            "-un",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "ssh://root@web1: root\n", "{out:?}");
    // The defaults file's user comes after the configuration's User (it is a default,
    // not the command line), and before the local user for hosts the
    // configuration says nothing about.
    let defaults = home.path().join("client.ini");
    std::fs::write(&defaults, "[ssh]\nuser = root\n").expect("defaults");
    let env = [("DEPLOY_CLIENT_CONFIG", defaults.to_str().expect("path"))];
    let out = run(&[], &env);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stdout.contains("currently not available"), "{out:?}");
    std::fs::write(&defaults, "[ssh]\nuser = nobody\n").expect("defaults");
    let other = c.spec(6);
    let out = client_env(
        home.path(),
        &["--hosts", &other, "--order=run", "--", "id", "-un"],
        None,
        &env,
    );
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stdout.contains("currently not available"), "{out:?}");
    // And -u wins over it.
    let out = client_env(
        home.path(),
        &[
            "--hosts",
            &other,
            "-u",
            "root",
            "--order=run",
            "--",
            "id",
            "-un",
        ],
        None,
        &env,
    );
    assert_eq!(out.status, 0, "{out:?}");
}

#[test]
fn ssh_config_alias_with_hostname_port_user_identity() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    // The key only where the config says, not at a default path.
    std::fs::remove_file(home.path().join(".ssh/id_ed25519")).expect("rm");
    std::fs::create_dir_all(home.path().join("keys")).expect("mkdir");
    std::fs::copy(c.user_key(), home.path().join("keys/deploy")).expect("copy");
    let (ip, port, _) = &c.hosts[4];
    std::fs::write(
        home.path().join(".ssh/config"),
        format!(
            "Host web? !web9\n  HostName {ip}\n  Port {port}\n  User root\n  IdentityFile ~/keys/deploy\n\
             Host *\n  User nobody\n  Port 1\n"
        ),
    )
    .expect("config");
    let out = client(
        home.path(),
        &[
            "--hosts",
            "ssh://web1",
            "--order=run",
            "--",
            "echo",
            "$USER",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "ssh://web1: root\n");

    // -F names another file; without the key the host refuses us.
    let other = home.path().join("other_config");
    std::fs::write(
        &other,
        format!("Host web1\n  HostName {ip}\n  Port {port}\n"),
    )
    .expect("w");
    let out = client(
        home.path(),
        &[
            "--hosts",
            "ssh://web1",
            "--order=run",
            "-F",
            other.to_str().expect("path"),
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(out.status, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("authentication as \"root\" refused by ssh://web1"),
        "{}",
        out.stderr
    );
    // --identity supplies the key.
    let key = home.path().join("keys/deploy");
    let out = client(
        home.path(),
        &[
            "--hosts",
            "ssh://web1",
            "--order=run",
            "-F",
            other.to_str().expect("path"),
            "--identity",
            key.to_str().expect("path"),
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
}

#[test]
fn ssh_proxy_jump_through_another_host() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let (jump_ip, jump_port, _) = &c.hosts[JUMP];
    let behind = [6, 7, 8];
    let mut config = String::new();
    for i in behind {
        let (ip, port, _) = &c.hosts[i];
        config.push_str(&format!(
            "Host behind{i}\n  HostName {ip}\n  Port {port}\n  ProxyJump root@{jump_ip}:{jump_port}\n"
        ));
    }
    config.push_str("Host nowhere\n  HostName 127.0.0.1\n  ProxyJump root@127.0.0.1:1\n");
    std::fs::write(home.path().join(".ssh/config"), config).expect("config");
    let log = c.dir.join(format!("sshd{JUMP}.log"));
    let count = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    let forwards = |i: usize| {
        let (ip, port, _) = &c.hosts[i];
        count(&format!("target {ip} port {port}"))
    };
    let before: Vec<usize> = behind.iter().map(|&i| forwards(i)).collect();
    let logins = count("Accepted publickey");
    let hosts = behind
        .iter()
        .map(|i| format!("ssh://behind{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--",
            "echo $SSH_CONNECTION",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    for i in behind {
        let (ip, port, _) = &c.hosts[i];
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("ssh://behind{i}: "))
                    && l.ends_with(&format!(" {ip} {port}"))),
            "{}",
            out.stdout
        );
    }
    // The jump host's sshd opened a channel to each target, over one shared login.
    let mut waited = 0;
    while behind.iter().zip(&before).any(|(&i, &b)| forwards(i) == b) && waited < 100 {
        std::thread::sleep(Duration::from_millis(20));
        waited += 1;
    }
    for (&i, &b) in behind.iter().zip(&before) {
        assert_eq!(forwards(i), b + 1, "jump host forwards to host {i}");
    }
    assert_eq!(
        count("Accepted publickey"),
        logins + 1,
        "one login at the jump host"
    );

    // An unreachable jump host makes its targets unreachable.
    let out = client(
        home.path(),
        &["--hosts", "ssh://nowhere", "--order=run", "--", "true"],
        None,
    );
    assert_eq!(out.status, 3, "{out:?}");
    assert!(
        out.stderr
            .contains("can't connect to 127.0.0.1:1: via jump host root@127.0.0.1:1: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("unreachable (1 host)"),
        "{}",
        out.stderr
    );
}

#[test]
fn ssh_jsonl_events_and_grouped_output() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = format!("{},{}", c.spec(7), c.spec(8));
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--format=jsonl",
            "--no-pty",
            "--",
            "echo out; echo err >&2",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    for host in [c.spec(7), c.spec(8)] {
        let of_host: Vec<&Value> = lines.iter().filter(|l| l["host"] == host).collect();
        assert!(of_host
            .contains(&&serde_json::json!({"host": host, "stream": "stdout", "line": "out"})));
        assert!(of_host
            .contains(&&serde_json::json!({"host": host, "stream": "stderr", "line": "err"})));
        let last = of_host.last().expect("result");
        assert_eq!(last["order"], "run", "the result comes last: {of_host:?}");
        assert_eq!(last["result"]["content"]["code"], "0");
    }

    // --grouped: each host's lines together.
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--grouped",
            "--",
            "for i in 1 2 3; do echo $i; sleep 0.1; done",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    let got: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(got.len(), 6, "{got:?}");
    for chunk in got.chunks(3) {
        let host = chunk[0].split(": ").next().expect("prefix");
        assert_eq!(
            chunk.to_vec(),
            vec![
                format!("{host}: 1"),
                format!("{host}: 2"),
                format!("{host}: 3")
            ],
        );
    }
}

#[test]
fn ssh_agent_is_tried_first() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    std::fs::remove_file(home.path().join(".ssh/id_ed25519")).expect("rm");
    let socket = home.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let added = Command::new("ssh-add")
        .arg(c.user_key())
        .env("SSH_AUTH_SOCK", &socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("ssh-add");
    assert!(added.success());
    let out = client_env(
        home.path(),
        &[
            "--hosts",
            &c.spec(9),
            "--order=run",
            "-q",
            "--",
            "echo via agent",
        ],
        None,
        &[("SSH_AUTH_SOCK", socket.to_str().expect("path"))],
    );
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout, "via agent\n");
}

#[test]
fn ssh_thread_timeout_bounds_a_run_only_when_given() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let spec = c.spec(3);
    let out = client(
        home.path(),
        &[
            "--hosts",
            &spec,
            "--order=run",
            "--thread-timeout=3",
            "--",
            "echo started; sleep 10",
        ],
        None,
    );
    assert_eq!(out.status, 3, "{out:?}");
    assert_eq!(out.stdout, format!("{spec}: started\n"));
    assert!(out.stderr.contains("no reply within 3 s"), "{}", out.stderr);
    assert!(out.stderr.contains("timed out (1 host)"), "{}", out.stderr);
    // Without --thread-timeout there is no deadline (the agents' 30 s does not apply).
    let out = client(
        home.path(),
        &[
            "--hosts",
            &spec,
            "--order=run",
            "--",
            "sleep 1.5; echo finished",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
}

#[test]
fn ssh_hosts_from_standard_input_mixed_with_comments() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let list = format!("# web\n{}\n{} # second\n\n", c.spec(1), c.spec(2));
    let out = client(
        home.path(),
        &["--hosts=-", "--order=run", "--", "echo", "x"],
        Some(list.as_bytes()),
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        sorted_lines(&out.stdout),
        sorted_lines(&format!("{}: x\n{}: x\n", c.spec(1), c.spec(2)))
    );
}

/// `deploy-client` as [`client_env`] runs it, left running.
fn running(home: &Path, args: &[&str]) -> crate::util::Running {
    let mut cmd = crate::util::command(args);
    cmd.env("HOME", home)
        .env("USER", "root")
        .env("DEPLOY_LOCK_FILE", lock_file(home))
        .env_remove("SSH_AUTH_SOCK");
    crate::util::Running::start(cmd)
}

/// The processes that have `file` open.
fn holders_of(file: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == file))
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn ssh_lock_held_by_one_run_is_refused_to_a_second() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = c.all();
    let template = home.path().join("%h-%p.lock");
    let lock_file = format!("--lock-file={}", template.display());
    let lock = [
        "--hosts",
        &hosts,
        "--order=lock",
        "--format=text",
        &lock_file,
    ];
    let mut first = running(home.path(), &lock);
    first
        .wait_for("locked on 10 hosts; waiting for interrupt")
        .await;
    let holder = format!(":{}", first.pid());
    for i in 0..HOSTS {
        let (ip, port, _) = &c.hosts[i];
        let file = home.path().join(format!("{ip}-{port}.lock.holder"));
        let text = std::fs::read_to_string(&file).expect("holder file");
        assert!(
            text.starts_with("root@") && text.trim_end().ends_with(&holder),
            "{text}"
        );
    }

    // A second locker, and an order under --lock, are refused naming the holder.
    let second = client(home.path(), &lock, None);
    assert_eq!(second.status, 4, "{second:?}");
    assert!(
        second
            .stderr
            .contains("not acquired on 10 of 10 hosts (held by root@"),
        "{second:?}"
    );
    assert!(second.stderr.contains(&holder), "{second:?}");
    let run = [
        "--hosts",
        &hosts,
        "--order=run",
        "--lock",
        &lock_file,
        "--",
        "echo",
        "ran",
    ];
    let refused = client(home.path(), &run, None);
    assert_eq!(refused.status, 4, "{refused:?}");
    assert_eq!(refused.stdout, "", "the order must not run");

    // Interrupted, the holder releases everywhere; then the order runs under the lock.
    first.signal(nix::sys::signal::Signal::SIGINT);
    let out = first.finish(Duration::from_secs(10)).await;
    assert_eq!(out.status, 0, "{out:?}");
    let ran = client(home.path(), &run, None);
    assert_eq!(ran.status, 0, "{ran:?}");
    assert_eq!(ran.stdout.matches(": ran\n").count(), HOSTS, "{ran:?}");
}

#[tokio::test]
async fn ssh_lock_lost_when_the_remote_holder_is_killed() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = c.all();
    let template = home.path().join("%h-%p.lock");
    let lock_file = format!("--lock-file={}", template.display());
    let mut first = running(
        home.path(),
        &["--hosts", &hosts, "--order=lock", "--lease=3", &lock_file],
    );
    first.wait_for("waiting for interrupt").await;
    let (ip, port, _) = &c.hosts[3];
    let file = home.path().join(format!("{ip}-{port}.lock"));
    let pids = holders_of(&file);
    assert!(!pids.is_empty(), "nobody holds {}", file.display());
    for pid in pids {
        testkit_kill(pid);
    }
    // The heartbeat (every second) notices, and the run ends with exit 5.
    let out = first.finish(Duration::from_secs(15)).await;
    assert_eq!(out.status, 5, "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("lock deploy lost on {}", c.spec(3)))
            && out.stderr.contains("the lock holder was killed (SIGKILL)"),
        "{out:?}"
    );
    // Every other host was released: the lock can be taken again at once.
    let again = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--lock",
            &lock_file,
            "--",
            "true",
        ],
        None,
    );
    assert_eq!(again.status, 0, "{again:?}");
}

fn testkit_kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// The root directory of host `i` for a `--root=<base>/%h-%p`.
fn host_root(c: &deploy_testkit::sshd::Cluster, base: &Path, i: usize) -> std::path::PathBuf {
    let (ip, port, _) = &c.hosts[i];
    base.join(format!("{ip}-{port}"))
}

#[test]
fn ssh_upload_a_file_two_files_and_a_directory() {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = c.all();
    let src = home.path().join("src");
    std::fs::create_dir_all(src.join("tree/sub")).expect("mkdir");
    std::fs::create_dir_all(src.join("tree/empty")).expect("mkdir");
    std::fs::write(src.join("one.txt"), "one\n").expect("write");
    std::fs::write(src.join("two.sh"), "#!/bin/sh\necho two\n").expect("write");
    std::fs::set_permissions(src.join("two.sh"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(src.join("tree/sub/big.bin"), &big).expect("write");
    std::os::unix::fs::chown(src.join("one.txt"), Some(4242), Some(4343)).expect("chown");
    let base = home.path().join("up");
    let root = format!("--root={}/%h-%p", base.display());
    let upload = |args: &[&str]| {
        let mut all = vec!["--hosts", &hosts, "--order=upload"];
        all.extend_from_slice(args);
        client_in(home.path(), &src, &all)
    };

    // One file, relative layout, owner kept.
    let out = upload(&["--relative", "--upload=one.txt", &root, "-q"]);
    assert_eq!(out.status, 0, "{out:?}");
    for i in 0..HOSTS {
        let file = host_root(c, &base, i).join("one.txt");
        assert_eq!(std::fs::read_to_string(&file).expect("uploaded"), "one\n");
        let meta = std::fs::metadata(&file).expect("meta");
        assert_eq!((meta.uid(), meta.gid()), (4242, 4343));
    }

    // Two files, then a command run in the root on every host.
    let out = upload(&[
        "--relative",
        "--upload=one.txt",
        "--upload=two.sh",
        "--no-preserve-owner",
        &root,
        "--",
        "./two.sh",
        "&&",
        "cat",
        "one.txt",
    ]);
    assert_eq!(out.status, 0, "{out:?}");
    for i in 0..HOSTS {
        assert!(
            out.stdout
                .contains(&format!("{}: two\n{}: one\n", c.spec(i), c.spec(i)))
                || (out.stdout.contains(&format!("{}: two\n", c.spec(i)))
                    && out.stdout.contains(&format!("{}: one\n", c.spec(i)))),
            "{out:?}"
        );
        let dir = host_root(c, &base, i);
        let mode = std::fs::metadata(dir.join("two.sh"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o750);
        assert_eq!(
            std::fs::metadata(dir.join("one.txt")).expect("meta").uid(),
            0
        );
    }

    // A directory, absolute layout (the local path recreated under the root).
    let out = upload(&["--upload=tree", &root]);
    assert_eq!(out.status, 0, "{out:?}");
    let inside = src
        .join("tree")
        .strip_prefix("/")
        .expect("absolute")
        .to_owned();
    for i in 0..HOSTS {
        let tree = host_root(c, &base, i).join(&inside);
        assert_eq!(std::fs::read(tree.join("sub/big.bin")).expect("big"), big);
        assert!(tree.join("empty").is_dir());
    }

    // A root with a quote and a space, and a command with a trailing comment, run by
    // `sh` whatever the login shell.
    let odd = format!("--root={}/it's a dir/%h-%p", base.display());
    let out = upload(&[
        "--relative",
        "--upload=one.txt",
        &odd,
        "--",
        "cat",
        "one.txt",
        "#",
        "a comment",
    ]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout.matches(": one\n").count(), HOSTS, "{out:?}");
    assert!(host_root(c, &base.join("it's a dir"), 0)
        .join("one.txt")
        .exists());

    // Under --sudo: the extraction and the command.
    let out = upload(&[
        "--relative",
        "--upload=one.txt",
        &root,
        "--sudo",
        "--",
        "id",
        "-u",
        "&&",
        "cat",
        "one.txt",
    ]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout.matches(": 0\n").count(), HOSTS, "{out:?}");

    // A command that fails after the upload, and a file that does not exist.
    let out = upload(&["--relative", "--upload=one.txt", &root, "--", "exit", "17"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("code 17 (10 hosts)"), "{out:?}");
    let out = upload(&["--upload=nope", &root]);
    assert_eq!(out.status, 2, "{out:?}");
    assert!(out.stderr.contains("cannot read nope"), "{out:?}");
}

/// A sync tool: counts the NODE lines, waits longer the earlier its host comes in the
/// list, prints phase 1, then meets every host at a barrier before phase 2.
const SYNC_TOOL: &str = r#"#!/bin/bash
read -r prefix hello || exit 0
nodes=0; me=0
while read -r p kind node current; do
  case "$kind" in
    NODE) nodes=$((nodes+1)); [ "$current" = CURRENT ] && me=$nodes ;;
    START) break ;;
  esac
done
echo "dir $DEPLOY_RUN_DIR pwd $PWD nodes $nodes"
sleep "0.$((nodes - me))"
echo "phase1"
echo "$prefix SYNC phase1 done"
got=0
while [ "$got" -lt "$nodes" ] && read -r p kind node desc; do
  [ "$kind" = SYNC ] && got=$((got+1))
done
echo "phase2 after $got"
"#;

/// A sync run's setting: a HOME, the tool in `src/tool.sh`, roots `runs/%h-%p`.
struct SyncSetup {
    home: tempfile::TempDir,
    src: std::path::PathBuf,
    base: std::path::PathBuf,
}

impl SyncSetup {
    fn new(c: &deploy_testkit::sshd::Cluster, tool: &str) -> SyncSetup {
        let home = home(c, true);
        let src = home.path().join("src");
        std::fs::create_dir_all(&src).expect("mkdir");
        std::fs::write(src.join("tool.sh"), tool).expect("write");
        let base = home.path().join("runs");
        SyncSetup { home, src, base }
    }

    /// `--order=sync` of the tool on `hosts`, with `extra` flags.
    fn sync(&self, hosts: &str, extra: &[&str]) -> Output {
        let root = format!("--root={}/%h-%p", self.base.display());
        let mut args = vec![
            "--hosts",
            hosts,
            "--order=sync",
            "--relative",
            "--upload=tool.sh",
            &root,
        ];
        args.extend_from_slice(extra);
        args.extend(["--", "bash", "tool.sh"]);
        client_in(self.home.path(), &self.src, &args)
    }
}

/// An `ssh://` host on a loopback port where nothing listens.
fn dead_host() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!(
        "ssh://127.0.0.1:{}",
        closed.local_addr().expect("addr").port()
    )
}

#[test]
fn ssh_sync_two_phase_barrier() {
    let Some(c) = cluster() else { return };
    let s = SyncSetup::new(c, SYNC_TOOL);
    let hosts = c.all();
    let out = s.sync(&hosts, &[]);
    assert_eq!(out.status, 0, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let phase1: Vec<usize> = (0..lines.len())
        .filter(|&n| lines[n].ends_with(": phase1"))
        .collect();
    let phase2: Vec<usize> = (0..lines.len())
        .filter(|&n| lines[n].ends_with(": phase2 after 10"))
        .collect();
    assert_eq!((phase1.len(), phase2.len()), (HOSTS, HOSTS), "{out:?}");
    assert!(
        phase1.iter().max() < phase2.iter().min(),
        "a phase 2 before a phase 1:\n{}",
        out.stdout
    );
    for i in 0..HOSTS {
        let dir = host_root(c, &s.base, i);
        let told = format!("{}: dir {d} pwd {d} nodes 10", c.spec(i), d = dir.display());
        assert!(out.stdout.contains(&told), "{told:?} in {out:?}");
    }
    assert!(
        !out.stdout.contains("ORGALORG:"),
        "protocol lines are not output: {out:?}"
    );

    // Strict: an unreachable host stops the run at the cluster lock (taken by
    // default); without the lock it aborts the run before START; loose: it is left out.
    let with_dead = format!("{hosts},{}", dead_host());
    let out = s.sync(&with_dead, &[]);
    assert_eq!(out.status, 4, "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    let out = s.sync(&with_dead, &["--no-lock"]);
    assert_eq!(out.status, 3, "{out:?}");
    assert!(!out.stdout.contains("phase1"), "{out:?}");
    assert_eq!(
        out.stderr
            .matches(": 503 Service Unavailable not started (strict: every host or none; --skip-unreachable runs on the others): ssh://127.0.0.1:")
            .count(),
        HOSTS,
        "{out:?}"
    );
    assert!(
        out.stderr
            .contains("not started (10 hosts), unreachable (1 host)"),
        "{out:?}"
    );
    let out = s.sync(&with_dead, &["--skip-unreachable"]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(
        out.stdout.matches(": phase2 after 10\n").count(),
        HOSTS,
        "{out:?}"
    );
}

const FAILING_TOOL: &str = r#"#!/bin/bash
touch started
read -r prefix hello || exit 0
nodes=0; me=0
while read -r p kind node current; do
  case "$kind" in
    NODE) nodes=$((nodes+1)); [ "$current" = CURRENT ] && me=$nodes ;;
    START) break ;;
  esac
done
[ "$me" = 1 ] && exit 3
echo "$prefix SYNC waiting"
got=0
while [ "$got" -lt "$nodes" ] && read -r p kind node desc; do
  [ "$kind" = SYNC ] && got=$((got+1))
done
echo "left the barrier with $got"
"#;

#[test]
fn ssh_sync_nothing_starts_before_start_and_a_failed_tool_ends_the_run() {
    let Some(c) = cluster() else { return };
    let s = SyncSetup::new(c, FAILING_TOOL);
    let hosts = c.all();

    // Strict, with an unreachable host: nothing is uploaded and no tool starts
    // anywhere (`started` is the tool's first act, before it reads anything).
    let out = s.sync(&format!("{hosts},{}", dead_host()), &["--no-lock"]);
    assert_eq!(out.status, 3, "{out:?}");
    for i in 0..HOSTS {
        let dir = host_root(c, &s.base, i);
        assert!(!dir.join("tool.sh").exists(), "uploaded: {out:?}");
        assert!(
            !dir.join("started").exists(),
            "a tool ran before START: {out:?}"
        );
    }

    // A tool that fails after START ends the others' input: nobody waits forever.
    let out = s.sync(&hosts, &[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("code 3 (1 host)"), "{out:?}");
    assert_eq!(
        out.stderr.matches(": sync: aborted: ssh://").count(),
        HOSTS - 1,
        "{out:?}"
    );
    assert_eq!(
        out.stdout.matches(": left the barrier with").count(),
        HOSTS - 1,
        "{out:?}"
    );
}

/// A paused reader (a pager) blocks the client's standard output for longer than the
/// lease: the output waits, the SSH lock's heartbeat does not.
#[test]
fn ssh_lock_heartbeat_survives_a_blocked_stdout() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = format!("{},{}", c.spec(0), c.spec(1));
    let lock_file = format!("--lock-file={}/%h-%p.lock", home.path().display());
    let child = Command::new(env!("CARGO_BIN_EXE_deploy-client"))
        .args([
            "--hosts",
            &hosts,
            "--order=run",
            "--lock",
            "--lease=2",
            &lock_file,
            "--",
            "seq",
            "1",
            "300000",
        ])
        .env("HOME", home.path())
        .env("USER", "root")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Nobody reads for 5 s (2.5 leases) while the hosts send 4 MB.
    std::thread::sleep(Duration::from_secs(5));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("deploy-client did not finish");
        })
        .expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        600_000,
        "{stderr}"
    );
}

/// Every process below `pid`.
fn descendants(pid: i32) -> Vec<i32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for child in deploy_testkit::procfs::children(p) {
            all.push(child);
            todo.push(child);
        }
    }
    all
}

/// A host that stops answering mid-run (its sshd session frozen) is given up after the
/// keep-alives go unanswered, instead of hanging the run; the other host finishes.
#[test]
fn ssh_keepalive_gives_up_on_a_frozen_host() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = format!("{},{}", c.spec(4), c.spec(5));
    let child = Command::new(env!("CARGO_BIN_EXE_deploy-client"))
        .args([
            "--hosts",
            &hosts,
            "--order=run",
            "--ssh-keepalive=1",
            "--",
            "sleep 4; echo slept",
        ])
        .env("HOME", home.path())
        .env("USER", "root")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let listener: i32 = std::fs::read_to_string(c.dir.join("sshd4.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    // Wait for host 4's command, then freeze its whole session.
    let started = std::time::Instant::now();
    let frozen = loop {
        let below = descendants(listener);
        if below
            .iter()
            .any(|&p| deploy_testkit::procfs::cmdline(p).contains("sleep 4"))
        {
            break below;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no session");
        std::thread::sleep(Duration::from_millis(20));
    };
    for &pid in &frozen {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGSTOP,
        );
    }
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx.recv_timeout(Duration::from_secs(20));
    for &pid in &frozen {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let out = out
        .unwrap_or_else(|_| {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the run hung on the frozen host");
        })
        .expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert_eq!(stdout, format!("{}: slept\n", c.spec(5)), "{stderr}");
    assert!(stderr.contains(&c.spec(4)), "{stderr}");
}

/// Loose mode: an unreachable host is left out of the lock and the order; strict, it
/// keeps the lock from being taken anywhere.
#[test]
fn ssh_lock_with_an_unreachable_host_strict_and_loose() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = format!("{},{}", c.all(), dead_host());
    let lock_file = format!("--lock-file={}/%h-%p.lock", home.path().display());
    let args = [
        "--hosts",
        &hosts,
        "--order=run",
        "--lock",
        &lock_file,
        "--",
        "echo",
        "hi",
    ];
    let strict = client(home.path(), &args, None);
    assert_eq!(strict.status, 4, "{strict:?}");
    assert_eq!(strict.stdout, "", "{strict:?}");
    let mut loose = args.to_vec();
    loose.insert(0, "--skip-unreachable");
    let out = client(home.path(), &loose, None);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(out.stdout.matches(": hi\n").count(), HOSTS, "{out:?}");
    assert!(
        out.stderr
            .contains("1 unreachable host left out of lock deploy"),
        "{out:?}"
    );
}

/// Host `i`'s processes whose command line contains `needle`.
fn remote_processes(c: &deploy_testkit::sshd::Cluster, i: usize, needle: &str) -> Vec<i32> {
    let listener: i32 = std::fs::read_to_string(c.dir.join(format!("sshd{i}.pid")))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    descendants(listener)
        .into_iter()
        .filter(|&p| deploy_testkit::procfs::cmdline(p).contains(needle))
        .collect()
}

/// A command that reports SIGINT, then sleeps.
fn trapping(seconds: &str) -> String {
    format!("trap 'echo got INT; exit 7' INT; sleep {seconds}")
}

/// Ctrl-C interrupts the commands on the hosts (their process groups get SIGINT, which
/// they may handle, then SIGKILL), with and without a lock; the run ends with 130 once
/// they have, and nothing is left running.
#[tokio::test]
async fn ssh_interrupt_stops_the_remote_commands() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = format!("{},{}", c.spec(6), c.spec(7));
    let lock_file = format!("--lock-file={}/%h-%p.lock", home.path().display());
    for (extra, seconds) in [(None, "301"), (Some(lock_file.as_str()), "302")] {
        let needle = format!("sleep {seconds}");
        let command = trapping(seconds);
        let mut args = vec!["--hosts", &hosts, "--order=run"];
        if let Some(lock_file) = extra {
            args.extend(["--lock", lock_file]);
        }
        args.extend(["--", &command]);
        let run = running(home.path(), &args);
        let started = std::time::Instant::now();
        while (6..8).any(|i| remote_processes(c, i, &needle).is_empty()) {
            assert!(started.elapsed() < Duration::from_secs(10), "not started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run.signal(nix::sys::signal::Signal::SIGINT);
        let out = run.finish(Duration::from_secs(10)).await;
        assert_eq!(out.status, 130, "{extra:?}: {out:?}");
        for i in 6..8 {
            let said = format!("{}: got INT\n", c.spec(i));
            assert!(out.stdout.contains(&said), "{extra:?}: {out:?}");
        }
        let gone = std::time::Instant::now();
        while (6..8).any(|i| !remote_processes(c, i, &needle).is_empty()) {
            assert!(
                gone.elapsed() < Duration::from_secs(5),
                "{needle} still runs on a host after the interrupt"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A run cut by --thread-timeout interrupts its commands on the hosts as Ctrl-C does
/// (rather than just dropping their connections).
#[test]
fn ssh_thread_timeout_stops_the_remote_commands() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = format!("{},{}", c.spec(8), c.spec(9));
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "--thread-timeout=1",
            "--",
            &trapping("304"),
        ],
        None,
    );
    assert_eq!(out.status, 3, "{out:?}");
    assert!(out.stderr.contains("no reply within 1 s"), "{out:?}");
    for i in 8..10 {
        let said = format!("{}: got INT\n", c.spec(i));
        assert!(
            out.stdout.contains(&said),
            "interrupted, not cut off: {out:?}"
        );
    }
    let gone = std::time::Instant::now();
    while (8..10).any(|i| !remote_processes(c, i, "sleep 304").is_empty()) {
        assert!(
            gone.elapsed() < Duration::from_secs(5),
            "sleep 304 still runs on a host after the timeout"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Strict `upload`: with one host unreachable, no file reaches the others and no
/// command runs there; loose (`--skip-unreachable`), the others get it.
#[test]
fn ssh_strict_upload_starts_nowhere_unless_every_host_connects() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let dead = dead_host();
    let hosts = format!("{},{dead},{}", c.spec(0), c.spec(1));
    let src = home.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    std::fs::write(src.join("one.txt"), "one\n").expect("write");
    let base = home.path().join("up");
    let root = format!("--root={}/%h-%p", base.display());
    // Without the default lock (whose refusal, exit 4, would come first).
    let args = [
        "--hosts",
        &hosts,
        "--order=upload",
        "--relative",
        "--upload=one.txt",
        &root,
        "--no-lock",
        "--",
        "cat one.txt",
    ];
    let out = client_in(home.path(), &src, &args);
    assert_eq!(out.status, 3, "{out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    for i in 0..2 {
        assert!(!host_root(c, &base, i).exists(), "{out:?}");
    }
    assert!(out.stderr.contains(&format!("{dead} failed")), "{out:?}");

    let mut loose = args.to_vec();
    loose.insert(0, "--skip-unreachable");
    let out = client_in(home.path(), &src, &loose);
    assert_eq!(out.status, 0, "{out:?}");
    for i in 0..2 {
        assert!(host_root(c, &base, i).join("one.txt").exists(), "{out:?}");
    }
}

/// `upload` and `sync` refuse what they cannot do, before contacting anyone: exit 2 and
/// the reason.
#[test]
fn upload_and_sync_usage_errors() {
    let home = tempfile::tempdir().expect("home");
    let ssh = "ssh://127.0.0.1:1";
    for (args, needle) in [
        (
            vec!["--hosts", ssh, "--order=upload", "--root=/tmp/x"],
            "needs --upload",
        ),
        (
            vec!["--hosts", ssh, "--order=upload", "--upload=Cargo.toml"],
            "needs --root",
        ),
        (
            vec!["--hosts", ssh, "--order=upload", "--upload=", "--root=/x"],
            "empty path",
        ),
        (
            vec!["--hosts", ssh, "--order=sync"],
            "needs a command after `--`",
        ),
        (
            vec!["--hosts", "127.0.0.1:1", "--order=sync", "--", "true"],
            "is an agent",
        ),
        (
            // An upload goes through a proxy now; sync meets its hosts at the
            // client's hub.
            vec!["--hosts", ssh, "--order=sync", "--api-key=k", "--", "true"],
            "not through a proxy",
        ),
        (
            vec!["--hosts", ssh, "--order=sync", "--stdin=-", "--", "true"],
            "--stdin is not for --order=sync",
        ),
        (
            vec!["--hosts", ssh, "--order=run", "--root=/x", "--", "true"],
            "--upload and --root are for",
        ),
    ] {
        let out = client(home.path(), &args, None);
        assert_eq!(out.status, 2, "{args:?}: {out:?}");
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

/// `--at` on SSH hosts: each host's shell waits on its own clock, then runs the
/// command; none starts before the instant. (The hosts' refusals, exit 75, are shown
/// by the wait script's unit test: a past instant never leaves this client.)
#[test]
fn ssh_timed_run_starts_at_the_instant() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let hosts = c.all();
    let at = deploy_common::order::at::now_ms() + 2_000;
    let at_flag = format!("--at={at}");
    let out = client(
        home.path(),
        &[
            "--hosts",
            &hosts,
            "--order=run",
            "-q",
            &at_flag,
            "--",
            "date",
            "+%s%N",
        ],
        None,
    );
    assert_eq!(out.status, 0, "{out:?}");
    let starts: Vec<i64> = out
        .stdout
        .lines()
        .map(|l| l.trim().parse::<i64>().expect("date") / 1_000_000)
        .collect();
    assert_eq!(starts.len(), HOSTS, "{out:?}");
    for start in starts {
        assert!(
            start >= at,
            "a host started at {start}, before {at}: {out:?}"
        );
    }
}

/// `--background` on an SSH host: the command is detached (its own session, so the
/// SSH session's end leaves it running) under `~/.deploy/tasks/<id>/`, and `tasks
/// list|wait|cancel` answer for it as an agent does: the exit code waited for, a
/// cancelled task's process group gone.
#[test]
fn ssh_background_tasks_listed_waited_cancelled() {
    let Some(c) = cluster() else { return };
    let home = home(c, true);
    let host = c.spec(0);
    let start = |command: &str| {
        let out = client(
            home.path(),
            &[
                "--hosts",
                &host,
                "--order=run",
                "--background",
                "--",
                command,
            ],
            None,
        );
        assert_eq!(out.status, 0, "{out:?}");
        let doc: Value = serde_json::from_str(&out.stdout).expect("json");
        let body = &doc[&host]["run"]["content"];
        let task = body["task"].as_str().expect("task id").to_owned();
        assert_eq!(task.len(), 32, "{out:?}");
        let pid: i32 = body["pid"].as_str().unwrap().parse().unwrap();
        (task, pid)
    };
    let tasks = |args: &[&str]| {
        let mut all = vec!["tasks"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[host.as_str(), "--format=json"]);
        let out = client(home.path(), &all, None);
        let doc: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        (out.status, doc[&host]["tasks"]["content"].clone())
    };

    let (done, _) = start("echo started; exit 3");
    let (status, body) = tasks(&["wait", &done, "10"]);
    assert_eq!(status, 1, "the task failed, so does the wait: {body}");
    assert_eq!(body["state"], "done", "{body}");
    assert_eq!(body["code"], "3", "{body}");
    assert_eq!(body["content"], "c3RhcnRlZAo=", "its output's tail: {body}");

    let (long, pid) = start("echo started; exec sleep 300");
    let (status, body) = tasks(&["wait", &long, "1"]);
    assert_eq!(status, 1, "{body}");
    assert_eq!(body["state"], "running", "{body}");
    let group = nix::unistd::Pid::from_raw(-pid);
    assert!(nix::sys::signal::kill(group, None).is_ok(), "running");
    let (status, body) = tasks(&["list"]);
    assert_eq!(status, 0, "{body}");
    let list: Value = serde_json::from_str(body["tasks"].as_str().unwrap()).unwrap();
    let states: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap().into(),
                t["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        states.contains(&(long.clone(), "running".into())),
        "{states:?}"
    );
    assert!(
        states.contains(&(done.clone(), "done".into())),
        "{states:?}"
    );

    let (status, body) = tasks(&["cancel", &long]);
    assert_eq!(status, 0, "{body}");
    assert_eq!(body["state"], "cancelled", "{body}");
    let mut gone = false;
    for _ in 0..50 {
        if nix::sys::signal::kill(group, None).is_err() {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "the task's process group is gone");
    let (_, body) = tasks(&["wait", &long, "1"]);
    assert_eq!(body["state"], "cancelled", "{body}");
    let (status, body) = tasks(&["cancel", &"0".repeat(32)]);
    assert_ne!(status, 0, "{body}");
}
