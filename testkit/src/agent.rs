//! The agent under test: [`AgentConfig`] builds an agent ini (and its jobs file) around a
//! [`Sandbox`], with test defaults, and starts `deploy-agent --foreground` on it as an
//! [`Agent`].
//!
//! ```text
//! [server]        addr 127.0.0.1, port 0, key_cipher agentsecret, legacy on, ssl both
//!                 (v1 plain and ssl) with the test RSA key, one worker, socket_timeout 5,
//!                 max_process_timeout 30
//! [allow::hosts]  127.0.0.1, ::1
//! [allow::paths]  <sandbox>/allowed
//! [jobs]          service:echo, service:sleep, service:false
//! ```

use crate::bins;
use crate::daemon::Daemon;
use crate::env::{agent_private_key_path, KEY};
use crate::sandbox::Sandbox;
use std::path::Path;

/// A running `deploy-agent --foreground`.
pub type Agent = Daemon;

/// An agent ini under construction, with test defaults.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    server: Vec<(String, String)>,
    hosts: Vec<String>,
    paths: Vec<String>,
    groups: Vec<(String, Vec<(String, String)>)>,
    jobs: Vec<(String, String)>,
    raw: String,
    env: Vec<(String, String)>,
}

impl AgentConfig {
    /// Defaults: `127.0.0.1:0`, `key_cipher = agentsecret`, legacy on, `ssl = both` with
    /// the test private key (so v2 pinning, v1 plain and v1 ssl all work), one worker,
    /// `socket_timeout = 5`, `max_process_timeout = 30`, state in the sandbox; peers
    /// `127.0.0.1` and `::1`; the sandbox's `allowed/`; jobs `service:echo`,
    /// `service:sleep`, `service:false`.
    pub fn new(sb: &Sandbox) -> AgentConfig {
        let server = [
            ("addr", "127.0.0.1".to_string()),
            ("port", "0".into()),
            ("key_cipher", KEY.into()),
            ("legacy_protocol", "on".into()),
            ("ssl", "both".into()),
            (
                "ssl_private_key",
                agent_private_key_path().display().to_string(),
            ),
            ("state_dir", sb.join("state").display().to_string()),
            ("max_prefork", "1".into()),
            ("socket_timeout", "5".into()),
            ("max_process_timeout", "30".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        AgentConfig {
            server,
            hosts: vec!["127.0.0.1".into(), "::1".into()],
            paths: vec![sb.allowed().display().to_string()],
            groups: Vec::new(),
            jobs: vec![
                ("service:echo".into(), "/bin/echo %s".into()),
                ("service:sleep".into(), "/bin/sleep %s".into()),
                ("service:false".into(), "/bin/false %s".into()),
            ],
            raw: String::new(),
            env: Vec::new(),
        }
    }

    /// Sets a `[server]` key (replacing a default); `listen` appends `listen[]`.
    pub fn server(mut self, key: &str, value: impl ToString) -> AgentConfig {
        let value = value.to_string();
        if key == "listen" {
            self.server.push(("listen[]".into(), value));
        } else if let Some(slot) = self.server.iter_mut().find(|(k, _)| k == key) {
            slot.1 = value;
        } else {
            self.server.push((key.into(), value));
        }
        self
    }

    /// Removes a `[server]` key (back to the built-in default).
    pub fn without(mut self, key: &str) -> AgentConfig {
        self.server.retain(|(k, _)| k != key);
        self
    }

    /// Replaces `[allow::hosts]`.
    pub fn hosts(mut self, hosts: &[&str]) -> AgentConfig {
        self.hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    /// Adds an `[rsync::group::NAME]` section; keys ending in `[]` are list entries.
    pub fn group(mut self, name: &str, entries: &[(&str, &str)]) -> AgentConfig {
        self.groups.push((
            name.into(),
            entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        self
    }

    /// Appends raw ini text (other sections, such as `[deploy]`).
    pub fn raw(mut self, text: &str) -> AgentConfig {
        self.raw.push_str(text);
        self
    }

    /// Adds an environment variable to the agent's (otherwise clean) environment.
    pub fn env(mut self, key: &str, value: impl ToString) -> AgentConfig {
        self.env.push((key.into(), value.to_string()));
        self
    }

    /// Adds an `[allow::paths]` root.
    pub fn path(mut self, path: impl ToString) -> AgentConfig {
        self.paths.push(path.to_string());
        self
    }

    /// Adds a job.
    pub fn job(mut self, name: &str, template: &str) -> AgentConfig {
        self.jobs.push((name.into(), template.into()));
        self
    }

    /// The jobs file's text.
    pub fn jobs_text(&self) -> String {
        let mut out = String::from("[jobs]\n");
        for (name, template) in &self.jobs {
            out.push_str(&format!("{name} = {template}\n"));
        }
        out
    }

    /// The ini's text (its `[jobs] path` is `jobs.ini`, beside it).
    pub fn ini_text(&self) -> String {
        let mut out = String::from("[server]\n");
        for (k, v) in &self.server {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out.push_str("\n[allow::hosts]\n");
        for h in &self.hosts {
            out.push_str(&format!("host[] = {h}\n"));
        }
        out.push_str("\n[allow::paths]\n");
        for p in &self.paths {
            out.push_str(&format!("path[] = {p}\n"));
        }
        for (name, entries) in &self.groups {
            out.push_str(&format!("\n[rsync::group::{name}]\n"));
            for (k, v) in entries {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out.push_str("\n[jobs]\npath = jobs.ini\n");
        if !self.raw.is_empty() {
            out.push('\n');
            out.push_str(&self.raw);
        }
        out
    }

    /// Writes `agent.ini` and `jobs.ini` into the sandbox and starts the agent.
    pub fn start(&self, sb: &Sandbox) -> Agent {
        std::fs::write(sb.join("jobs.ini"), self.jobs_text()).expect("write jobs.ini");
        if self.env.is_empty() {
            return start_agent(sb.path(), &self.ini_text());
        }
        let ini_path = sb.path().join("agent.ini");
        std::fs::write(&ini_path, self.ini_text()).expect("write agent.ini");
        Daemon::start_env(&bins::agent(), &ini_path, &[], 1, &self.env)
    }
}

/// Writes `ini` to `<dir>/agent.ini`, starts the agent on it and waits for one
/// `listening on` line per listening socket (`addr` plus each `listen[]` line).
pub fn start_agent(dir: &Path, ini: &str) -> Agent {
    let ini_path = dir.join("agent.ini");
    std::fs::write(&ini_path, ini).expect("write agent.ini");
    let expected = 1 + ini
        .lines()
        .filter(|l| l.trim_start().starts_with("listen[]"))
        .count();
    Daemon::start(&bins::agent(), &ini_path, &[], expected)
}
