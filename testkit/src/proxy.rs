//! The proxy under test: [`ProxyConfig`] builds `proxy.ini` and its API file `api.ini`
//! in a directory, with test defaults, and starts `deploy-proxy --foreground` on them as
//! a [`Proxy`].
//!
//! ```text
//! proxy.ini                                   api.ini
//! [server]  addr 127.0.0.1, port 0,           [keys]     <key>[] = g1,g2   (key())
//!           key_cipher proxysecret,           [orders]   <key>[] = exec    (orders())
//!           legacy on, one worker,
//!           state in the directory            [names]    <key> = <name>    (name())
//!                                             [servers]  <g>[] = host:port (servers())
//! [client]  key_cipher agentsecret,           [group::<g>] overrides       (group())
//!           proxy_id <id>, thread_timeout 5,
//!           connect_timeout 2
//! [allow::hosts] 127.0.0.1
//! [api]     path = api.ini
//! [ssh]     only what ssh() sets (identity[], known_hosts, config…)
//! …         raw() text (e.g. `[nats]`, `[store]`)
//! ```
//!
//! The proxy prints `deploy-proxy: listening on ADDR` for `addr:port`, each `listen[]`,
//! then the HTTP API (`[client] http_listen`) if any, which is how [`Proxy`] tells them
//! apart.

use crate::bins;
use crate::daemon::Daemon;
use crate::env::{KEY, PROXY_KEY};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

/// A proxy ini and API file under construction.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    server: Vec<(String, String)>,
    client: Vec<(String, String)>,
    hosts: Vec<String>,
    keys: Vec<(String, String)>,
    orders: Vec<(String, String)>,
    names: Vec<(String, String)>,
    servers: Vec<(String, String)>,
    groups: Vec<(String, Vec<(String, String)>)>,
    ssh: Vec<(String, String)>,
    raw: String,
}

fn set(list: &mut Vec<(String, String)>, key: &str, value: String) {
    match list.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => list.push((key.into(), value)),
    }
}

impl ProxyConfig {
    /// Defaults (see the module docs); `id` is the proxy's `proxy_id`, its name in `via`.
    pub fn new(id: &str) -> ProxyConfig {
        let server = [
            ("addr", "127.0.0.1"),
            ("port", "0"),
            ("key_cipher", PROXY_KEY),
            ("legacy_protocol", "on"),
            ("max_prefork", "1"),
            ("socket_timeout", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let client = [
            ("key_cipher", KEY),
            ("proxy_id", id),
            ("thread_timeout", "5"),
            ("connect_timeout", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        ProxyConfig {
            server,
            client,
            hosts: vec!["127.0.0.1".into()],
            keys: Vec::new(),
            orders: Vec::new(),
            names: Vec::new(),
            servers: Vec::new(),
            groups: Vec::new(),
            ssh: Vec::new(),
            raw: String::new(),
        }
    }

    /// Appends raw ini text to `proxy.ini` (other sections, such as `[nats]` or `[store]`).
    pub fn raw(mut self, text: &str) -> ProxyConfig {
        self.raw.push_str(text);
        self
    }

    /// Sets a `[server]` key; `listen` appends a `listen[]` line.
    pub fn server(mut self, key: &str, value: impl ToString) -> ProxyConfig {
        match key {
            "listen" => self.server.push(("listen[]".into(), value.to_string())),
            _ => set(&mut self.server, key, value.to_string()),
        }
        self
    }

    /// Sets a `[client]` key.
    pub fn client(mut self, key: &str, value: impl ToString) -> ProxyConfig {
        set(&mut self.client, key, value.to_string());
        self
    }

    /// Serves the HTTP API on a free 127.0.0.1 port (`[client] http_listen`).
    pub fn http(self) -> ProxyConfig {
        self.client("http_listen", "127.0.0.1:0")
    }

    /// Sets an `[ssh]` key; `identity` appends an `identity[]` line.
    pub fn ssh(mut self, key: &str, value: impl ToString) -> ProxyConfig {
        match key {
            "identity" => self.ssh.push(("identity[]".into(), value.to_string())),
            _ => set(&mut self.ssh, key, value.to_string()),
        }
        self
    }

    /// Replaces `[allow::hosts]`.
    pub fn hosts(mut self, hosts: &[&str]) -> ProxyConfig {
        self.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    /// Adds `[keys] <key>[] = <groups>` (`key` may be `sha256:<hex>`).
    pub fn key(mut self, key: &str, groups: &str) -> ProxyConfig {
        self.keys.push((key.into(), groups.into()));
        self
    }

    /// Adds `[orders] <key>[] = <orders>`.
    pub fn orders(mut self, key: &str, orders: &str) -> ProxyConfig {
        self.orders.push((key.into(), orders.into()));
        self
    }

    /// Adds `[names] <key> = <name>`: the key's name in release records.
    pub fn name(mut self, key: &str, name: &str) -> ProxyConfig {
        self.names.push((key.into(), name.into()));
        self
    }

    /// Adds `[servers] <group>[] = <entry>` for each entry.
    pub fn servers<T: ToString>(
        mut self,
        group: &str,
        entries: impl IntoIterator<Item = T>,
    ) -> ProxyConfig {
        for entry in entries {
            self.servers.push((group.into(), entry.to_string()));
        }
        self
    }

    /// Adds `[servers] <group>[] = proxy://<addr>/<remote group>`.
    pub fn chain(self, group: &str, proxy: SocketAddr, remote_group: &str) -> ProxyConfig {
        self.servers(group, [format!("proxy://{proxy}/{remote_group}")])
    }

    /// Adds a `[group::<name>]` section.
    pub fn group(mut self, name: &str, entries: &[(&str, &str)]) -> ProxyConfig {
        self.groups.push((
            name.into(),
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        self
    }

    /// The text of `proxy.ini` (`state_dir` in `dir`, API file `api.ini` beside it).
    pub fn ini_text(&self, dir: &Path) -> String {
        let mut out = String::from("[server]\n");
        for (k, v) in &self.server {
            out.push_str(&format!("{k} = {v}\n"));
        }
        if !self.server.iter().any(|(k, _)| k == "state_dir") {
            out.push_str(&format!("state_dir = {}\n", dir.display()));
        }
        out.push_str("\n[client]\n");
        for (k, v) in &self.client {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str("\n[allow::hosts]\n");
        for h in &self.hosts {
            out.push_str(&format!("host[] = {h}\n"));
        }
        out.push_str("\n[api]\npath = api.ini\n");
        if !self.ssh.is_empty() {
            out.push_str("\n[ssh]\n");
            for (k, v) in &self.ssh {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !self.raw.is_empty() {
            out.push('\n');
            out.push_str(&self.raw);
        }
        out
    }

    /// The text of `api.ini`.
    pub fn api_text(&self) -> String {
        let mut out = String::from("[keys]\n");
        for (k, v) in &self.keys {
            out.push_str(&format!("{k}[] = {v}\n"));
        }
        if !self.orders.is_empty() {
            out.push_str("\n[orders]\n");
            for (k, v) in &self.orders {
                out.push_str(&format!("{k}[] = {v}\n"));
            }
        }
        if !self.names.is_empty() {
            out.push_str("\n[names]\n");
            for (k, v) in &self.names {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out.push_str("\n[servers]\n");
        for (g, e) in &self.servers {
            out.push_str(&format!("{g}[] = {e}\n"));
        }
        for (name, entries) in &self.groups {
            out.push_str(&format!("\n[group::{name}]\n"));
            for (k, v) in entries {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    /// Writes `proxy.ini` and `api.ini` into `dir` (created if needed); returns the
    /// ini's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        std::fs::create_dir_all(dir).expect("mkdir proxy dir");
        std::fs::write(dir.join("api.ini"), self.api_text()).expect("write api.ini");
        let ini = dir.join("proxy.ini");
        std::fs::write(&ini, self.ini_text(dir)).expect("write proxy.ini");
        ini
    }

    /// Writes the files into `dir` and starts the proxy.
    pub fn start(&self, dir: &Path) -> Proxy {
        let ini = self.write(dir);
        let listens = self.server.iter().filter(|(k, _)| k == "listen[]").count();
        let http = self.client.iter().any(|(k, _)| k == "http_listen");
        let daemon = Daemon::start(&bins::proxy(), &ini, &[], 1 + listens + usize::from(http));
        let http = http.then(|| *daemon.addrs.last().expect("an address"));
        Proxy { daemon, http }
    }
}

/// A running `deploy-proxy --foreground`; derefs to its [`Daemon`].
pub struct Proxy {
    daemon: Daemon,
    http: Option<SocketAddr>,
}

impl Proxy {
    /// The HTTP API's address; panics if it has none.
    pub fn http(&self) -> SocketAddr {
        self.http
            .expect("the proxy has no HTTP API (ProxyConfig::http)")
    }

    /// The main port (what deploy-client's `--port` takes).
    pub fn port(&self) -> u16 {
        self.daemon.addr().port()
    }
}

impl Deref for Proxy {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for Proxy {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_text_ends_the_proxy_ini_after_its_sections() {
        let text = ProxyConfig::new("p")
            .ssh("known_hosts", "/k")
            .raw("[nats]\nserver[] = nats://x\n")
            .raw("[store]\nbackend = nats\n")
            .ini_text(Path::new("/d"));
        assert!(
            text.ends_with(
                "known_hosts = /k\n\n[nats]\nserver[] = nats://x\n[store]\nbackend = nats\n"
            ),
            "{text}"
        );
        let plain = ProxyConfig::new("p").ini_text(Path::new("/d"));
        assert!(plain.ends_with("[api]\npath = api.ini\n"), "{plain}");
    }
}
