//! `deploy-agent --check`: the shipped `etc/` sample passes; broken files fail with exit
//! status 1 and an error that names the file, the line and the key.

use crate::util::*;

#[test]
fn shipped_sample_passes_check_once_its_secret_is_set() {
    let ini = etc_dir().join("deploy_agent.ini");
    // As shipped, its key_cipher is a placeholder: --check (and start-up) refuse it.
    let (code, _, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("[server] key_cipher is a default secret"),
        "{stderr}"
    );
    // With a secret of its own (and an rsync this machine has), it passes.
    let sb = Sandbox::new();
    let rsync = ["/usr/bin/rsync", "/usr/local/bin/rsync"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("/bin/true");
    let text = std::fs::read_to_string(&ini)
        .unwrap()
        .replace("key_cipher = change-me", "key_cipher = a-real-secret")
        .replace("rsync = /usr/bin/rsync", &format!("rsync = {rsync}"));
    std::fs::write(sb.join("deploy_agent.ini"), text).unwrap();
    std::fs::copy(
        etc_dir().join("deploy_agent_exec.ini"),
        sb.join("deploy_agent_exec.ini"),
    )
    .unwrap();
    let copy = sb.join("deploy_agent.ini");
    let (code, stdout, stderr) = run_agent(&["--check", "--path", copy.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
    // The summary counts what the sample defines: one group, the sample's one job.
    assert!(stdout.contains("1 groups"), "{stdout}");
    assert!(stdout.contains("1 jobs"), "{stdout}");
}

#[test]
fn check_catches_what_would_fail_later() {
    let sb = Sandbox::new();
    let config = Config::new(&sb)
        .group(
            "web",
            &[
                ("dest", "rsync://127.0.0.1:8730/DEST"),
                ("src", "/etc/not-allowed"),
                ("rsync", "/nonexistent/rsync"),
                ("option[]", "--delete"),
            ],
        )
        .job("app:gone", "/nonexistent/tool %s");
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    std::fs::write(sb.join("agent.ini"), config.ini_text()).unwrap();
    let ini = sb.join("agent.ini");
    let (code, _, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    for want in [
        "[rsync::group::web] rsync: /nonexistent/rsync is not an executable file",
        "[rsync::group::web] src: /etc/not-allowed is outside every [allow::paths] path",
        "[rsync::group::web] option[]: neither -a/--archive nor -r/--recursive",
        "[jobs] app:gone: program \"/nonexistent/tool\" is not an executable file",
        "4 problem(s)",
    ] {
        assert!(stderr.contains(want), "expected {want:?} in {stderr}");
    }
}

#[test]
fn test_configs_pass_check() {
    let sb = Sandbox::new();
    let config = Config::new(&sb).group(
        "web",
        &[
            ("dest", "rsync://127.0.0.1:8730/DEST"),
            ("src", &sb.allowed_str("web")),
            ("exclude[]", ".git"),
        ],
    );
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    std::fs::write(sb.join("agent.ini"), config.ini_text()).unwrap();
    let ini = sb.join("agent.ini");
    let (code, stdout, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
}

/// Writes `text` as an ini (with an empty jobs file) and runs `--check` on it.
fn check(text: &str) -> (i32, String, std::path::PathBuf, Sandbox) {
    let sb = Sandbox::new();
    std::fs::write(sb.join("jobs.ini"), "[jobs]\n").unwrap();
    let ini = sb.join("agent.ini");
    std::fs::write(&ini, text).unwrap();
    let (code, _stdout, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    (code, stderr, ini, sb)
}

#[test]
fn bad_port_names_file_and_line() {
    let (code, stderr, ini, _sb) = check("[server]\naddr = 127.0.0.1\nport = 34x0\n");
    assert_eq!(code, 1, "{stderr}");
    let want = format!("{}:3:", ini.display());
    assert!(stderr.contains(&want), "expected {want:?} in {stderr:?}");
    assert!(stderr.contains("port"), "{stderr}");
    assert!(stderr.contains("34x0"), "{stderr}");
}

#[test]
fn unknown_key_is_named() {
    let (code, stderr, ini, _sb) = check("[server]\nport = 3440\nfrobnicate = yes\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("frobnicate"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:3:", ini.display())),
        "{stderr}"
    );
    let (code, stderr, _, _sb) = check("[server]\nport = 3440\n[sever]\nport = 1\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("sever"), "{stderr}");
}

#[test]
fn missing_file_and_bad_jobs_fail() {
    let (code, _, stderr) = run_agent(&["--check", "--path", "/nonexistent/deploy_agent.ini"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/deploy_agent.ini"), "{stderr}");

    let sb = Sandbox::new();
    std::fs::write(sb.join("jobs.ini"), "[jobs]\nx = 'unbalanced\n").unwrap();
    std::fs::write(sb.join("agent.ini"), "[jobs]\npath = jobs.ini\n").unwrap();
    let ini = sb.join("agent.ini");
    let (code, _, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:", sb.join("jobs.ini").display())),
        "{stderr}"
    );
}

#[test]
fn ssl_without_private_key_fails_check() {
    let (code, stderr, _, _sb) = check("[server]\nssl = on\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("ssl_private_key"), "{stderr}");
}

#[test]
fn port_in_use_fails_to_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let sb = Sandbox::new();
    let config = Config::new(&sb).server("port", port);
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    std::fs::write(sb.join("agent.ini"), config.ini_text()).unwrap();
    let mut child = std::process::Command::new(AGENT_BIN)
        .args(["--foreground", "--path"])
        .arg(sb.join("agent.ini"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("deploy-agent kept running although port {port} is taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the error names the address: {stderr}"
    );
    drop(taken);
}

/// The man page and completions come from the binary itself (packaging uses them).
#[test]
fn generates_man_page_and_completions() {
    let run = |what: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deploy-agent"))
            .args(["--generate", what])
            .output()
            .unwrap()
    };
    let man = run("man");
    assert!(man.status.success());
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(text.contains(".TH deploy-agent"), "{text}");
    assert!(text.contains("max\\-prefork"), "{text}");
    let bash = run("bash");
    assert!(bash.status.success());
    assert!(String::from_utf8_lossy(&bash.stdout).contains("--key-cipher"));
    assert!(!run("nonsense").status.success());
}

/// Arguments that are not UTF-8: a string flag is a usage error (exit 2) naming the flag,
/// a path flag keeps its bytes (the error is then about the file).
#[test]
fn non_utf8_arguments() {
    let bin = std::path::Path::new(AGENT_BIN);
    let (code, _, stderr) = run_bin_bytes(bin, &[b"--check", b"--user=\xff"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'--user <USER>'"), "{stderr}");
    assert!(stderr.contains(r#""\xFF""#), "{stderr}");
    let (code, _, stderr) = run_bin_bytes(bin, &[b"--check", b"--key-cipher", b"k\xfe"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'--key-cipher"), "{stderr}");
    let (code, _, stderr) = run_bin_bytes(bin, &[b"--check", b"--path=/nonexistent/\xff.ini"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A missing file's reason is printed once (issue 8 §7: the error message repeated its
/// cause, "…(os error 2): No such file or directory (os error 2)").
#[test]
fn missing_files_name_their_reason_once() {
    let (code, _, stderr) = run_agent(&["--check", "--path", "/nonexistent/deploy_agent.ini"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");

    let sb = Sandbox::new();
    std::fs::write(
        sb.join("agent.ini"),
        "[jobs]\npath = /nonexistent/jobs.ini\n",
    )
    .unwrap();
    let ini = sb.join("agent.ini");
    let (code, _, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/jobs.ini"), "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

/// `--version` names the commit the binary was built from.
#[test]
fn version_names_the_commit() {
    bins::assert_version(std::path::Path::new(AGENT_BIN));
}

/// `-t` is `--check` (as nginx's): the shipped sample's placeholder secret is caught.
#[test]
fn dash_t_is_check() {
    let ini = etc_dir().join("deploy_agent.ini");
    let (code, stdout, stderr) = run_agent(&["-t", "--path", ini.to_str().unwrap()]);
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("default secret"), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
}

/// `-T` prints the effective configuration: the file's keys, the flags over them, and
/// the defaults of keys the file does not give; the secret is hidden. Then it checks.
#[test]
fn dash_t_upper_prints_the_effective_configuration() {
    let sb = Sandbox::new();
    let config = Config::new(&sb)
        .server("key_cipher", "very-secret-words")
        .server("max_prefork", 3);
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    std::fs::write(sb.join("agent.ini"), config.ini_text()).unwrap();
    let ini = sb.join("agent.ini");
    let args = ["-T", "--path", ini.to_str().unwrap(), "--port", "4321"];
    let (code, stdout, stderr) = run_agent(&args);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    for want in [
        "[server]\n",
        "\nport = 4321\n",
        "\nmax_prefork = 3\n",
        "\nbacklog = 1024\n",
        "\nkey_cipher = (hidden)\n",
        "\n[allow::hosts]\nhost[] = 127.0.0.1/32\n",
        "OK (",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("very-secret-words"), "{stdout}");
    let (code, long, _) = run_agent(&[
        "--print-config",
        "--path",
        ini.to_str().unwrap(),
        "--port",
        "4321",
    ]);
    assert_eq!((code, long), (0, stdout));
}
