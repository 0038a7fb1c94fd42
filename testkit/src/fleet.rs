//! [`WebFleet`]: agents, each in a sandbox of its own, whose group `web` pulls one source
//! into their own `allowed/web` — the fleet of the relay tests (through the client and
//! through the proxy) and of the network-namespace fault tests.
//!
//! ```text
//! agent i (from 0)   <sb i>/agent.ini   [rsync::group::web] dest = <source url>
//!                                                            src  = <sb i>/allowed/web
//! ```
//!
//! The caller chooses each agent's configuration (its address, peers, other keys) and
//! how it starts (on loopback, or inside a namespace host); the fleet keeps the agents
//! with their sandboxes and answers the questions every such test asks (the hosts for
//! `--hosts`, an agent's address and target directory).

use crate::{Agent, AgentConfig, Sandbox};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Group `web` of [`AgentConfig::web_group`]: pulls from a source into `allowed/web`.
pub const GROUP: &str = "web";

/// Agents with group `web`, in start order, with their sandboxes.
pub struct WebFleet {
    /// `(sandbox, agent)` of each agent, in start order.
    pub agents: Vec<(Sandbox, Agent)>,
}

impl WebFleet {
    /// Starts `n` agents: agent `i` (from 0) gets a fresh sandbox and is started by
    /// `start(i, sb)` (from a configuration with [`AgentConfig::web_group`] in it, on
    /// this machine or in a namespace host).
    pub fn start(n: usize, mut start: impl FnMut(usize, &Sandbox) -> Agent) -> WebFleet {
        let agents = (0..n)
            .map(|i| {
                let sb = Sandbox::new();
                let agent = start(i, &sb);
                (sb, agent)
            })
            .collect();
        WebFleet { agents }
    }

    /// [`WebFleet::start`] with agent `i` configured by `config(i, sb)` and started on
    /// this machine ([`AgentConfig::start`]).
    pub fn local(n: usize, mut config: impl FnMut(usize, &Sandbox) -> AgentConfig) -> WebFleet {
        WebFleet::start(n, |i, sb| config(i, sb).start(sb))
    }

    /// Agent `i`'s (from 0) address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.agents[i].1.addr()
    }

    /// Every agent's `addr:port`, comma-separated (what `--hosts` takes).
    pub fn hosts(&self) -> String {
        self.agents
            .iter()
            .map(|(_, a)| a.addr().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Agent `i`'s (from 0) target directory, `<sb>/allowed/web`.
    pub fn target(&self, i: usize) -> PathBuf {
        target(&self.agents[i].0)
    }
}

/// The target directory of group `web` in `sb`.
pub fn target(sb: &Sandbox) -> PathBuf {
    sb.allowed().join(GROUP)
}

impl AgentConfig {
    /// Adds group `web`: `dest = url` (the source), `src = <sb>/allowed/web`, and `extra`
    /// keys (such as `rsync`, another rsync binary).
    pub fn web_group(self, sb: &Sandbox, url: &str, extra: &[(&str, &str)]) -> AgentConfig {
        let target = target(sb).display().to_string();
        let mut entries = vec![("dest", url), ("src", target.as_str())];
        entries.extend_from_slice(extra);
        self.group(GROUP, &entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_group_pulls_the_source_into_the_sandbox_target() {
        let sb = Sandbox::new();
        let text = AgentConfig::new(&sb)
            .web_group(&sb, "rsync://h/DEST/", &[("rsync", "/w")])
            .ini_text();
        let want = format!(
            "[rsync::group::web]\ndest = rsync://h/DEST/\nsrc = {}\nrsync = /w\n",
            sb.allowed().join("web").display()
        );
        assert!(text.contains(&want), "{text}");
    }
}
