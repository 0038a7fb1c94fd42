//! What fleets migrating from the Perl deploy bring along: 1024-bit RSA keys, accepted
//! for the v1 "ssl" mode only and loudly (at start-up and in `--check`), never for v2;
//! and Perl clients in "ssl" mode, which read why an agent with `legacy_protocol = off`
//! or `ssl = off` refuses them.

use crate::util::*;
use serde_json::Value;
use std::path::PathBuf;

/// A fresh 1024-bit RSA key pair in the sandbox (`openssl genrsa 1024`): private and
/// public PEM paths; `None` without openssl.
fn small_key(sb: &Sandbox) -> Option<(PathBuf, PathBuf)> {
    let private = sb.join("small.pem");
    let public = sb.join("small_pub.pem");
    openssl(&["genrsa", "-out", private.to_str()?, "1024"])?;
    openssl(&[
        "rsa",
        "-in",
        private.to_str()?,
        "-pubout",
        "-out",
        public.to_str()?,
    ])?;
    Some((private, public))
}

/// `--check` on `config` written into the sandbox: exit code and stderr.
fn check(sb: &Sandbox, config: &Config) -> (i32, String) {
    std::fs::write(sb.join("jobs.ini"), config.jobs_text()).unwrap();
    let ini = sb.join("agent.ini");
    std::fs::write(&ini, config.ini_text()).unwrap();
    let (code, _, stderr) = run_agent(&["--check", "--path", ini.to_str().unwrap()]);
    (code, stderr)
}

/// The one record of a `deploy-client` JSON document.
fn record(out: &Output) -> serde_json::Map<String, Value> {
    let doc = out.json();
    let (_, by_order) = doc
        .as_object()
        .and_then(|m| m.iter().next())
        .unwrap_or_else(|| panic!("no host: {out:#?}"));
    by_order["exec"].as_object().cloned().unwrap()
}

#[test]
fn a_1024_bit_key_serves_v1_ssl_only_and_loudly() {
    let sb = Sandbox::new();
    let Some((private, public)) = small_key(&sb) else {
        return;
    };
    let config = Config::new(&sb).server("ssl_private_key", private.display());

    // --check passes, and says so.
    let (code, stderr) = check(&sb, &config);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning")
            && stderr.contains("1024-bit RSA key")
            && stderr.contains("v1 \"ssl\" mode only"),
        "{stderr}"
    );

    // The agent starts, with the same warning.
    let agent = config.start(&sb);
    assert!(
        agent.log().contains("1024-bit RSA key"),
        "warned at start: {}",
        agent.log()
    );
    let host = agent.addr().to_string();
    let public = public.to_str().unwrap();

    // v1 "ssl" with the 1024-bit public key: the order runs.
    let out = deploy_client(
        &[
            "--hosts",
            &host,
            "--protocol=v1",
            "--ssl-public-key",
            public,
            "--order=exec",
            "--options=service:echo,hi",
        ],
        KEY,
    );
    out.expect_code(0);
    let rec = record(&out);
    assert_eq!(rec["returnCode"], "200", "{out:#?}");
    assert_eq!(rec["content"]["content"], b64("hi\n"), "{out:#?}");
    assert!(out.stderr.contains("legacy RSA key"), "{out:#?}");

    // v2 refuses to pin it, before connecting.
    let out = deploy_client(
        &[
            "--hosts",
            &host,
            "--ssl-public-key",
            public,
            "--order=exec",
            "--options=service:echo,hi",
        ],
        KEY,
    );
    out.expect_code(2);
    assert!(
        out.stderr.contains("1024 bits is too small"),
        "{}",
        out.stderr
    );
    // v2 without a pin is served, without the key.
    let out = deploy_client(
        &[
            "--hosts",
            &host,
            "--order=exec",
            "--options=service:echo,hi",
        ],
        KEY,
    );
    out.expect_code(0);

    // Where no v1 "ssl" mode would use it, the key is refused as before.
    for (key, value) in [("legacy_protocol", "off"), ("ssl", "off")] {
        let (code, stderr) = check(&sb, &config.clone().server(key, value));
        assert_eq!(code, 1, "{key} = {value}: {stderr}");
        assert!(stderr.contains("1024 bits is too small"), "{stderr}");
    }
}

/// With `legacy_protocol = off`, a v1 "ssl" caller (the Perl client's dialect, spoken
/// by our client with `--protocol=v1 --ssl-public-key`) reads the reason: the refusal is
/// sealed with its passphrase, not sent in plain text that the Perl client could only
/// show as `Protocol mismatch.`.
#[test]
fn a_v1_ssl_caller_reads_why_v1_is_off() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb).server("legacy_protocol", "off").start(&sb);
    let host = agent.addr().to_string();
    let public = agent_public_key_path();
    let out = deploy_client(
        &[
            "--hosts",
            &host,
            "--protocol=v1",
            "--ssl-public-key",
            public.to_str().unwrap(),
            "--order=exec",
            "--options=service:echo,hi",
        ],
        KEY,
    );
    let rec = record(&out);
    assert_eq!(rec["returnCode"], "400", "{out:#?}");
    let reason = rec["content"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the legacy (v1) protocol is disabled on this server"),
        "{out:#?}"
    );
    out.expect_code(1);
}

/// With `ssl = off`, a v1 "ssl" caller reads the reason too: the agent has its private
/// key (for v2), so the refusal is sealed with the caller's passphrase instead of sent
/// in plain text, which the Perl client (and ours) could only take for a protocol
/// mismatch.
#[test]
fn a_v1_ssl_caller_reads_why_ssl_is_off() {
    let sb = Sandbox::new();
    let agent = Config::new(&sb)
        .server("legacy_protocol", "on")
        .server("ssl", "off")
        .start(&sb);
    let host = agent.addr().to_string();
    let public = agent_public_key_path();
    let out = deploy_client(
        &[
            "--hosts",
            &host,
            "--protocol=v1",
            "--ssl-public-key",
            public.to_str().unwrap(),
            "--order=exec",
            "--options=service:echo,hi",
        ],
        KEY,
    );
    let rec = record(&out);
    assert_eq!(rec["returnCode"], "400", "{out:#?}");
    let reason = rec["content"].as_str().unwrap_or_default();
    assert!(
        reason.contains("does not serve the v1 ssl mode (ssl = off)"),
        "{out:#?}"
    );
    out.expect_code(1);
    // The plain mode is still served.
    let out = deploy_client(
        &[
            "--hosts",
            &host,
            "--protocol=v1",
            "--order=exec",
            "--options=service:echo,hi",
        ],
        KEY,
    );
    out.expect_code(0);
}
