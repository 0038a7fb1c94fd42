//! Constants of the test world (the agents' key, time bounds), the shared spec's test
//! RSA keys, the repository's `etc/` samples, and small helpers (time, base64, polling).

use base64::Engine;
use deploy_common::crypto::keys::RsaPublicKey;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The agents' shared secret in these tests (the golden vectors' too).
pub const KEY: &str = "agentsecret";
/// The proxies' `[server] key_cipher` in these tests: the secret their callers (the
/// client, `DEPLOY_KEY_CIPHER` in the proxy tests) prove they know. Daemons refuse
/// default secrets, so the test world has none.
pub const PROXY_KEY: &str = "proxysecret";
/// Bound on any single network exchange.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a daemon printing its listening lines.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The workspace root.
pub fn workspace_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The shared spec's legacy vectors and test keys (`../shared` beside the workspace).
pub fn vectors_dir() -> PathBuf {
    workspace_dir().join("../shared/spec/legacy-vectors")
}

/// The repository's `etc/` samples.
pub fn etc_dir() -> PathBuf {
    workspace_dir().join("etc")
}

/// The agent's test private key (PEM path).
pub fn agent_private_key_path() -> PathBuf {
    vectors_dir().join("agent_private.pem")
}

/// The agent's test public key (PEM path).
pub fn agent_public_key_path() -> PathBuf {
    vectors_dir().join("agent_public.pem")
}

/// The agent's test public key.
pub fn agent_public_key() -> RsaPublicKey {
    RsaPublicKey::load(&agent_public_key_path()).expect("agent_public.pem")
}

/// Another RSA key (the proxy's), which the agent does not hold.
pub fn other_public_key() -> RsaPublicKey {
    RsaPublicKey::load(&vectors_dir().join("proxy_public.pem")).expect("proxy_public.pem")
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Standard base64 of `bytes`.
pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64 (panics with the input on failure).
pub fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("bad base64 {text:?}: {e}"))
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for tests without a runtime: polls every 20 ms, blocking the thread.
pub fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
