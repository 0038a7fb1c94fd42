//! The proxy as a daemon: `--check` on the shipped sample and on broken API files
//! (errors name file:line), and SIGTERM stopping the master and its workers.

use crate::util::*;
use nix::sys::signal::Signal;
use std::time::Duration;

#[test]
fn check_accepts_the_shipped_sample_once_its_secrets_are_set() {
    let ini = etc_dir().join("deploy_proxy.ini");
    let (code, stdout, stderr) = run_bin(
        &bins::proxy(),
        &["--check", "--path", ini.to_str().expect("utf-8")],
    );
    // As shipped, both secrets are placeholders.
    assert_eq!(code, 1, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("[server] key_cipher, [client] key_cipher are a default secret"),
        "stderr: {stderr}"
    );
    let dir = Sandbox::new();
    let text = std::fs::read_to_string(&ini)
        .expect("sample")
        .replacen("key_cipher = change-me", "key_cipher = callers-secret", 1)
        .replacen("key_cipher = change-me", "key_cipher = agents-secret", 1);
    std::fs::write(dir.join("deploy_proxy.ini"), text).expect("write");
    std::fs::copy(
        etc_dir().join("deploy_proxy_api.ini"),
        dir.join("deploy_proxy_api.ini"),
    )
    .expect("copy");
    let copy = dir.join("deploy_proxy.ini");
    let (code, stdout, stderr) = run_bin(
        &bins::proxy(),
        &["--check", "--path", copy.to_str().expect("utf-8")],
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("OK (2 API keys, 2 server groups"),
        "stdout: {stdout}"
    );
}

#[test]
fn default_secrets_are_refused_unless_allowed() {
    let dir = Sandbox::new();
    for (section, config) in [
        (
            "[server]",
            ProxyConfig::new("px-weak").server("key_cipher", "65535"),
        ),
        (
            "[client]",
            ProxyConfig::new("px-weak").client("key_cipher", "change-me"),
        ),
    ] {
        let ini = config
            .key("k", "web")
            .servers("web", ["127.0.0.1:3440"])
            .write(dir.path());
        let (code, _, stderr) = run_bin(
            &bins::proxy(),
            &["--foreground", "--path", ini.to_str().expect("utf-8")],
        );
        assert_eq!(code, 1, "{section}: {stderr}");
        assert!(
            stderr.contains(&format!("refusing to start: {}", ini.display()))
                && stderr.contains(&format!("{section} key_cipher is a default secret")),
            "{section}: {stderr}"
        );
    }
    // The shared store's key: a placeholder would let anyone forge the fleet's state.
    let ini = ProxyConfig::new("px-weak-store")
        .key("k", "web")
        .servers("web", ["127.0.0.1:3440"])
        .write(dir.path());
    let mut text = std::fs::read_to_string(&ini).expect("read");
    text.push_str("\n[store]\nbackend = nats\nserver[] = nats://127.0.0.1:9\nkey = change-me\n");
    std::fs::write(&ini, text).expect("write");
    let (code, _, stderr) = run_bin(
        &bins::proxy(),
        &["--foreground", "--path", ini.to_str().expect("utf-8")],
    );
    assert_eq!(code, 1, "[store]: {stderr}");
    assert!(
        stderr.contains("[store] key is a default secret"),
        "[store]: {stderr}"
    );
    // The lab override.
    let _proxy = ProxyConfig::new("px-lab")
        .server("key_cipher", "65535")
        .server("allow_default_secrets", "on")
        .key("k", "web")
        .servers("web", ["127.0.0.1:3440"])
        .start(dir.path());
}

/// The agent and the proxy with `user`/`group` set and state dirs the masters hand
/// over: an order goes through both.
#[test]
fn agent_and_proxy_run_as_nobody() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let agent_dir = Sandbox::new();
    std::fs::set_permissions(agent_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let agent = AgentConfig::new(&agent_dir)
        .server("addr", "127.0.0.1")
        .server("user", "nobody")
        .server("group", "nogroup")
        .server("state_dir", agent_dir.join("new/state").display())
        .start(&agent_dir);
    let dir = Sandbox::new();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let proxy = ProxyConfig::new("px-nobody")
        .server("user", "nobody")
        .server("group", "nogroup")
        .server("state_dir", dir.join("proxy-state").display())
        .key("k", "web")
        .servers("web", [agent.addr()])
        .start(dir.path());
    let worker = proxy.wait_workers_blocking(1)[0];
    let status = std::fs::read_to_string(format!("/proc/{worker}/status")).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "{status}"
    );
    via_proxy(proxy.port(), "k", "groups:web", ECHO, &[]).expect_code(0);
    assert!(proxy.log().contains("started"), "{}", proxy.log());
}

#[test]
fn check_names_the_line_of_a_bad_server_entry() {
    let dir = Sandbox::new();
    for (entry, shown) in [
        ("bad host!", "\"bad host!\""),
        ("127.0.0.1:99999", "\"127.0.0.1:99999\""),
        ("proxy://127.0.0.1:3441", "\"proxy://127.0.0.1:3441\""),
    ] {
        let ini = ProxyConfig::new("px-check")
            .key("k", "web")
            .servers("web", ["127.0.0.1:3440", entry])
            .write(dir.path());
        let (code, stdout, stderr) = run_bin(
            &bins::proxy(),
            &["--check", "--path", ini.to_str().expect("utf-8")],
        );
        assert_eq!(code, 1, "{entry}: stdout: {stdout}\nstderr: {stderr}");
        // [keys], k[] = web, blank, [servers], the good entry, then the bad one: line 6.
        let at = format!(
            "{}:6: [servers] web[]: invalid server {shown}",
            dir.join("api.ini").display()
        );
        assert!(stderr.contains(&at), "{entry}: expected {at:?} in {stderr}");
    }
}

#[test]
fn sigterm_stops_the_master_and_its_workers() {
    let web = Farm::start(51, 1, 2, KEY);
    let dir = Sandbox::new();
    let mut proxy = ProxyConfig::new("px-term")
        .server("max_prefork", 2)
        .http()
        .key("k", "web")
        .servers("web", &web.addrs)
        .start(dir.path());
    let workers = proxy.wait_workers_blocking(2);
    // It serves before it is told to stop.
    via_proxy(proxy.port(), "k", "groups:web", ECHO, &[]).expect_code(0);

    proxy.signal(Signal::SIGTERM);
    let status = proxy
        .wait_exit_blocking(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the proxy did not exit on SIGTERM; log:\n{}", proxy.log()));
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
    wait_until(Duration::from_secs(5), "the workers to exit", || {
        workers.iter().all(|&w| !alive(w)).then_some(())
    });
    // Its ports are closed.
    assert!(std::net::TcpStream::connect(proxy.addr()).is_err());
    assert!(std::net::TcpStream::connect(proxy.http()).is_err());
}

#[test]
fn sigterm_lets_a_fanout_in_flight_finish() {
    let web = Farm::start(52, 1, 2, KEY);
    let silent = Silent::start(ip(52, 250, 1));
    let dir = Sandbox::new();
    let mut proxy = ProxyConfig::new("px-term")
        .client("thread_timeout", 2)
        // No heartbeat: its probe would be the silent agent's first connection, taken
        // below for the fan-out's, and SIGTERM would come before the proxy has even
        // accepted the client (whose connection, still queued, is then reset).
        .client("heartbeat", 0)
        .key("k", "web")
        .servers("web", &web.addrs)
        .servers("web", [silent.addr])
        .start(dir.path());
    let port = proxy.port();
    // Loose: strict would wait for the silent agent before starting anywhere.
    let run = std::thread::spawn(move || {
        via_proxy(port, "k", "groups:web", ECHO, &["--skip-unreachable"])
    });
    // The fan-out is under way once the silent agent has a connection.
    wait_until(
        Duration::from_secs(5),
        "the proxy to reach the silent agent",
        || (silent.accepted() > 0).then_some(()),
    );
    proxy.signal(Signal::SIGTERM);

    let out = run.join().expect("client thread");
    out.expect_code(3);
    let got = records(&out, "exec");
    assert_eq!(
        got.len(),
        3,
        "the request in flight is answered whole: {out:#?}"
    );
    assert_eq!(
        got[&silent.addr.to_string()]["content"],
        "Process Timeout(2)!"
    );
    for host in web.names() {
        assert_echo_ok(&host, &got[&host], "px-term");
    }
    let status = proxy
        .wait_exit_blocking(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the proxy did not exit after SIGTERM; log:\n{}",
                proxy.log()
            )
        });
    assert_eq!(status.code(), Some(0), "log:\n{}", proxy.log());
}

/// Arguments that are not UTF-8: a string flag is a usage error (exit 2) naming the flag,
/// a path flag keeps its bytes (the error is then about the file).
#[test]
fn non_utf8_arguments() {
    let bin = &bins::proxy();
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

/// A missing file's reason is printed once (issue 8 §7).
#[test]
fn missing_config_names_its_reason_once() {
    let (code, _, stderr) = run_bin(
        &bins::proxy(),
        &["--check", "--path", "/nonexistent/deploy_proxy.ini"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/deploy_proxy.ini"), "{stderr}");
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

/// `--version` names the commit the binary was built from.
#[test]
fn version_names_the_commit() {
    bins::assert_version(std::path::Path::new(env!("CARGO_BIN_EXE_deploy-proxy")));
}

/// `-T` prints the effective configuration with both secrets hidden, then checks it;
/// `-t` is `--check`.
#[test]
fn dash_t_upper_prints_the_effective_configuration() {
    let dir = Sandbox::new();
    let ini = ProxyConfig::new("px-dump")
        .client("key_cipher", "agents-secret-words")
        .key("k", "web")
        .servers("web", ["127.0.0.1:3440"])
        .write(dir.path());
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_deploy-proxy"));
    let path = ini.to_str().expect("utf-8");
    let (code, stdout, stderr) = run_bin(bin, &["-T", "--path", path, "--client-port", "4555"]);
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    for want in [
        "[server]\n",
        "\n[client]\nport = 4555\n",
        "\nkey_cipher = (hidden)\n",
        "OK (",
    ] {
        assert!(stdout.contains(want), "{want:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("agents-secret-words"), "{stdout}");
    let (code, check, _) = run_bin(bin, &["-t", "--path", path]);
    assert_eq!(code, 0);
    assert!(check.starts_with(&format!("{path}: OK (")), "{check}");
}
