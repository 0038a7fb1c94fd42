//! The effective configuration as INI text: what `deploy-agent -T` and
//! `deploy-proxy -T` (`--print-config`) print, after defaults, the files and the
//! command-line flags are merged.
//!
//! ```text
//! # /etc/deploy/deploy_agent.ini, as in effect (defaults, file and flags merged;
//! # secrets hidden)
//! [server]
//! addr = 0.0.0.0
//! port = 3440
//! key_cipher = (hidden)
//! …
//! ```
//!
//! Every key is written, defaults included, in the dialect the files use, so the text
//! parses back to the same configuration except for secrets, which are replaced by
//! `(hidden)` (an empty secret stays empty, so that it still shows). Paths are absolute
//! where the loader resolved them; durations are in seconds; unset optional keys are
//! commented out (`# user = (unset)`). Sections read from other files (jobs, API keys) are summed up in
//! comments.

use super::agent::{AgentConfig, DeployConfig, ScenariosConfig};
use super::proxy::{AgentProtocol, ProxyConfig};
use super::ServerConfig;
use std::fmt::{Display, Write as _};
use std::path::PathBuf;
use std::time::Duration;

/// What a secret is printed as.
const HIDDEN: &str = "(hidden)";

/// An INI text being written.
struct Out(String);

impl Out {
    fn new(path: &std::path::Path) -> Out {
        let mut out = Out(String::new());
        out.comment(&format!(
            "{}, as in effect (defaults, file and flags merged; secrets hidden)",
            path.display()
        ));
        out
    }

    fn comment(&mut self, text: &str) {
        let _ = writeln!(self.0, "# {text}");
    }

    fn section(&mut self, name: &str) {
        if !self.0.ends_with("\n\n") && !self.0.is_empty() {
            self.0.push('\n');
        }
        let _ = writeln!(self.0, "[{name}]");
    }

    fn key(&mut self, key: &str, value: impl Display) {
        let _ = writeln!(self.0, "{key} = {value}");
    }

    fn opt(&mut self, key: &str, value: Option<impl Display>) {
        match value {
            Some(v) => self.key(key, v),
            None => {
                let _ = writeln!(self.0, "# {key} = (unset)");
            }
        }
    }

    fn list<T: Display>(&mut self, key: &str, values: impl IntoIterator<Item = T>) {
        for v in values {
            self.key(&format!("{key}[]"), v);
        }
    }

    fn on_off(&mut self, key: &str, value: bool) {
        self.key(key, if value { "on" } else { "off" });
    }

    fn secs(&mut self, key: &str, value: Duration) {
        self.key(key, value.as_secs());
    }

    fn secret(&mut self, key: &str, value: &str) {
        self.key(key, if value.is_empty() { "" } else { HIDDEN });
    }

    fn path(&mut self, key: &str, value: Option<&PathBuf>) {
        self.opt(key, value.map(|p| p.display()));
    }
}

/// `[server]`, shared by both programs.
fn server(out: &mut Out, s: &ServerConfig) {
    out.section("server");
    out.opt("user", s.user.as_deref());
    out.opt("group", s.group.as_deref());
    out.key("addr", s.addr);
    out.key("port", s.port);
    out.list("listen", &s.listen);
    out.key("backlog", s.backlog);
    out.secs("socket_timeout", s.socket_timeout);
    out.on_off("socket_accept_filter", s.socket_accept_filter);
    out.key("max_prefork", s.max_prefork);
    out.key("max_requests_per_child", s.max_requests_per_child);
    out.secs(
        "max_process_timeout",
        s.max_process_timeout.unwrap_or(Duration::ZERO),
    );
    out.key("max_connections", s.max_connections);
    out.key("max_connections_per_peer", s.max_connections_per_peer);
    out.key("ssl_max_failures", s.ssl_max_failures);
    out.on_off("log_write", s.log_write);
    out.key("log_error_level", s.log_error_level);
    out.key("log_error_path", s.log_error_path.display());
    out.key("log_access_path", s.log_access_path.display());
    out.secret("key_cipher", &s.key_cipher);
    out.on_off("allow_default_secrets", s.allow_default_secrets);
    let ssl = match (s.ssl_both, s.ssl) {
        (true, _) => "both",
        (false, true) => "on",
        (false, false) => "off",
    };
    out.key("ssl", ssl);
    out.path("ssl_private_key", s.ssl_private_key.as_ref());
    out.path("ssl_public_key", s.ssl_public_key.as_ref());
    out.key("process_name", &s.process_name);
    out.on_off("legacy_protocol", s.legacy_protocol);
    out.path("pid_file", s.pid_file.as_ref());
    out.key("state_dir", s.state_dir.display());
    out.on_off("allow_run", s.allow_run);
    out.on_off("allow_upload", s.allow_upload);
    out.on_off("allow_fetch", s.allow_fetch);
    out.on_off("allow_deploy", s.allow_deploy);
    out.key("umask", format_args!("{:03o}", s.umask));
    out.secs(
        "transfer_stall_timeout",
        s.transfer_stall_timeout.unwrap_or(Duration::ZERO),
    );
}

fn deploy(out: &mut Out, d: &DeployConfig) {
    out.section("deploy");
    out.list("manifest", &d.manifests);
    out.list("src", &d.sources);
    out.on_off("inline", d.inline);
    out.on_off("hooks", d.hooks);
    out.path("work_dir", d.work_dir.as_ref());
    out.secs("random_delay", d.random_delay);
    out.opt("max_bandwidth", d.max_bandwidth);
    out.key("retry", d.retry);
    out.secs("retry_wait", d.retry_wait);
    out.opt("timeout", d.timeout.map(|t| t.as_secs()));
}

fn scenarios(out: &mut Out, s: &ScenariosConfig) {
    out.section("scenarios");
    out.on_off("enabled", s.enabled);
    out.path("workspace", s.workspace.as_ref());
    out.path("fstore", s.fstore.as_ref());
    out.path("log", s.log.as_ref());
}

/// The agent's effective configuration (see the module docs).
pub fn agent(c: &AgentConfig) -> String {
    let mut out = Out::new(&c.path);
    server(&mut out, &c.server);
    out.section("allow::hosts");
    out.list("host", c.allow_hosts.nets());
    out.section("allow::paths");
    out.list("path", c.allow_paths.roots().iter().map(|p| p.display()));
    for (name, g) in &c.groups {
        out.section(&format!("rsync::group::{name}"));
        out.key("dest", &g.dest);
        out.key("src", &g.src);
        out.key("rsync", g.rsync.display());
        out.opt("rsh", g.rsh.as_deref());
        out.list("exclude", &g.exclude);
        out.list("include", &g.include);
        out.list("option", &g.option);
    }
    if let Some(jobs) = &c.jobs_path {
        out.section("jobs");
        out.key("path", jobs.display());
        let names: Vec<&str> = c.jobs.names().collect();
        out.comment(&format!("{} job(s): {}", names.len(), names.join(" ")));
    }
    deploy(&mut out, &c.deploy);
    scenarios(&mut out, &c.scenarios);
    out.0
}

/// The proxy's effective configuration (see the module docs).
pub fn proxy(c: &ProxyConfig) -> String {
    let mut out = Out::new(&c.path);
    server(&mut out, &c.server);
    let k = &c.client;
    out.section("client");
    out.key("port", k.port);
    out.secs("thread_timeout", k.thread_timeout);
    out.secs("socket_timeout", k.socket_timeout);
    out.secret("key_cipher", &k.key_cipher);
    out.on_off("ssl", k.ssl);
    out.path("ssl_public_key", k.ssl_public_key.as_ref());
    out.key("concurrency", k.concurrency);
    out.secs("connect_timeout", k.connect_timeout);
    let protocol = match k.protocol {
        AgentProtocol::V2 => "v2",
        AgentProtocol::V1 => "v1",
    };
    out.key("protocol", protocol);
    match &k.proxy_api_key {
        Some(key) => out.secret("proxy_api_key", key),
        None => out.opt("proxy_api_key", None::<&str>),
    }
    out.opt("proxy_id", k.proxy_id.as_deref());
    out.opt("http_listen", k.http_listen);
    out.secs("heartbeat", k.heartbeat);
    out.opt(
        "heartbeat_timeout",
        k.heartbeat_timeout.map(|d| d.as_secs()),
    );
    out.section("allow::hosts");
    out.list("host", c.allow_hosts.nets());
    let st = &c.store;
    out.section("store");
    out.key(
        "backend",
        match st.backend {
            super::proxy::StoreBackend::Redb => "redb",
            super::proxy::StoreBackend::Nats => "nats",
        },
    );
    out.list("server", st.servers.iter());
    out.key("prefix", &st.prefix);
    out.key("replicas", st.replicas);
    out.path("credentials", st.credentials.as_ref());
    out.opt("user", st.user.as_deref());
    if let Some(password) = &st.password {
        out.secret("password", password);
    }
    if let Some(key) = &st.key {
        out.secret("key", key);
    }
    out.path("tls_ca", st.tls_ca.as_ref());
    out.path("tls_cert", st.tls_cert.as_ref());
    out.path("tls_key", st.tls_key.as_ref());
    if let Some(api) = &c.api_path {
        out.section("api");
        out.key("path", api.display());
        let groups: Vec<&str> = c.api.server_groups().collect();
        out.comment(&format!(
            "{} API key(s); server groups: {}",
            c.api.key_count(),
            groups.join(" ")
        ));
    }
    let s = &c.ssh;
    out.section("ssh");
    out.list("identity", s.identities.iter().map(|p| p.display()));
    out.path("known_hosts", s.known_hosts.as_ref());
    out.on_off("accept_new_host_keys", s.accept_new_host_keys);
    out.path("config", s.config.as_ref());
    out.opt("user", s.user.as_deref());
    out.opt("connect_timeout", s.connect_timeout.map(|t| t.as_secs()));
    out.secs("keepalive", s.keepalive.unwrap_or(Duration::ZERO));
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const AGENT: &str = "\
[server]
port = 4000
key_cipher = s3cret
listen[] = 127.0.0.2:4001
ssl = both
umask = 027
[allow::hosts]
host[] = 10.0.0.0/8
[allow::paths]
path[] = /srv
[rsync::group::web]
dest = rsync://h/M/x
src = /srv/web
exclude[] = .git
option[] = -a --delete
[deploy]
manifest[] = https://example.invalid/m/
timeout = 60
[scenarios]
enabled = on
workspace = /srv/scenarios/workspace
log = /var/log/scenarios
";

    /// The dump parses back to the same configuration, secrets aside, and hides them.
    #[test]
    fn agent_dump_round_trips_but_hides_secrets() {
        let path = Path::new("/etc/deploy/deploy_agent.ini");
        let config = AgentConfig::parse(AGENT, path).unwrap();
        let text = agent(&config);
        assert!(!text.contains("s3cret"), "{text}");
        assert!(text.contains("key_cipher = (hidden)"), "{text}");
        assert!(text.contains("umask = 027"), "{text}");
        let mut again = AgentConfig::parse(&text, path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again.server.key_cipher, HIDDEN);
        again.server.key_cipher = config.server.key_cipher.clone();
        assert_eq!(again, config, "{text}");
    }

    #[test]
    fn proxy_dump_round_trips_but_hides_secrets() {
        let path = Path::new("/etc/deploy/deploy_proxy.ini");
        let text_in = "[server]\nkey_cipher = a\n[client]\nkey_cipher = b2b2\nproxy_api_key = k3y\nhttp_listen = 127.0.0.1:3442\n[ssh]\nkeepalive = 15\n";
        let config = ProxyConfig::parse(text_in, path).unwrap();
        let text = proxy(&config);
        for secret in ["b2b2", "k3y", "= a\n"] {
            assert!(!text.contains(secret), "{secret}: {text}");
        }
        let mut again = ProxyConfig::parse(&text, path).unwrap_or_else(|e| panic!("{e}\n{text}"));
        again.server.key_cipher = config.server.key_cipher.clone();
        again.client.key_cipher = config.client.key_cipher.clone();
        again.client.proxy_api_key = config.client.proxy_api_key.clone();
        assert_eq!(again, config, "{text}");
    }
}
