//! The `[nats]` section: how a program reaches a NATS cluster (agent, client, proxy).
//!
//! ```text
//! [nats]
//! server[] = nats://10.0.0.1:4222     ; one or more; the client reconnects among them
//! user = web1                          ; user/password authentication, or
//! password = …
//! nkey = /etc/deploy/nats.nk           ; an nkey seed file, or
//! credentials = /etc/deploy/nats.creds ; a JWT credentials file (operator mode)
//! tls_ca = /etc/deploy/nats-ca.pem     ; TLS: the CA to verify servers, and a client
//! tls_cert = …                         ; certificate and key when the servers ask
//! tls_key = …
//! name = web1                          ; agent: its subject deploy.agent.<name> (default: host name)
//! group[] = web                        ; agent: also serve deploy.group.<group>
//! alias[] = web1-old                    ; agent: also answer as deploy.agent.<alias>
//! tcp = off                            ; agent: listen on no TCP port at all (NATS only)
//! key = /etc/deploy/nats.key           ; agent: its static X25519 key (default
//!                                      ;   <state_dir>/nats-key, created 0600 if missing)
//! agent_keys = /etc/deploy/nats-agents ; callers: the agents' public keys, pinned by name
//!                                      ;   (lines from `deploy-agent --print-nats-key`)
//! ```
//!
//! Only the transport and the keys are configured here: the orders arriving over NATS
//! are sealed with `[server] key_cipher` like v2 connections, their replies bound to
//! the agent's static key, which callers pin (see the `deploy-nats` crate).

use std::path::PathBuf;

use super::ini::Section;
use super::{ConfigError, Cx};

/// `[nats]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `server[]`: NATS URLs (`nats://host:port`, `tls://host:port`).
    pub servers: Vec<String>,
    /// `user` and `password`.
    pub user: Option<(String, String)>,
    /// `nkey`: a file holding an nkey seed.
    pub nkey: Option<PathBuf>,
    /// `credentials`: a `.creds` file.
    pub credentials: Option<PathBuf>,
    /// `tls_ca`.
    pub tls_ca: Option<PathBuf>,
    /// `tls_cert` and `tls_key`: the client certificate.
    pub tls_cert: Option<(PathBuf, PathBuf)>,
    /// `name` (agent): the subject name; `None`: the host name.
    pub name: Option<String>,
    /// `group[]` (agent).
    pub groups: Vec<String>,
    /// `alias[]` (agent): further names it answers to (a renamed host, or many
    /// endpoints from one process, as `bench/nats.sh` makes them).
    pub aliases: Vec<String>,
    /// `tcp` (agent): whether the agent still listens on TCP (default on).
    pub tcp: bool,
    /// `key` (agent): its static X25519 key file; `None`: `<state_dir>/nats-key`,
    /// created at first use.
    pub key: Option<PathBuf>,
    /// `agent_keys` (callers): the pin file, `<agent name> <base64 public key>` a line;
    /// `None`: no agent is pinned, so none is sent orders.
    pub agent_keys: Option<PathBuf>,
}

impl Default for NatsConfig {
    fn default() -> NatsConfig {
        NatsConfig {
            servers: Vec::new(),
            user: None,
            nkey: None,
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            name: None,
            groups: Vec::new(),
            aliases: Vec::new(),
            tcp: true,
            key: None,
            agent_keys: None,
        }
    }
}

/// Whether `s` is usable as one token of a NATS subject (no `.`, wildcard or space).
pub fn is_subject_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>'))
}

impl NatsConfig {
    /// Reads a `[nats]` section; `agent` allows the agent-only keys.
    pub(crate) fn parse(
        cx: &Cx<'_>,
        section: &Section,
        agent: bool,
    ) -> Result<NatsConfig, ConfigError> {
        let mut c = NatsConfig::default();
        let (mut user, mut password, mut cert, mut key) = (None, None, None, None);
        for e in section.entries() {
            match (e.key.as_str(), e.list) {
                ("server", true) => {
                    let v = cx.nonempty(e)?;
                    if !v.contains("://") {
                        return Err(cx.invalid(
                            e,
                            format!("{v:?}: expected a URL, e.g. nats://127.0.0.1:4222"),
                        ));
                    }
                    c.servers.push(v);
                }
                ("group", true) if agent => {
                    let v = cx.nonempty(e)?;
                    if !is_subject_token(&v) {
                        return Err(
                            cx.invalid(e, format!("group {v:?}: no '.', '*', '>' or spaces"))
                        );
                    }
                    c.groups.push(v);
                }
                ("alias", true) if agent => {
                    let v = cx.nonempty(e)?;
                    if !is_subject_token(&v) {
                        return Err(
                            cx.invalid(e, format!("alias {v:?}: no '.', '*', '>' or spaces"))
                        );
                    }
                    c.aliases.push(v);
                }
                ("server" | "group" | "alias", false) => return Err(cx.want_list(e)),
                (_, true) => return Err(cx.want_scalar(e)),
                ("user", _) => user = Some(cx.nonempty(e)?),
                ("password", _) => password = Some(e.value.clone()),
                ("nkey", _) => c.nkey = cx.file(e),
                ("credentials", _) => c.credentials = cx.file(e),
                ("tls_ca", _) => c.tls_ca = cx.file(e),
                ("tls_cert", _) => cert = cx.file(e),
                ("tls_key", _) => key = cx.file(e),
                ("name", _) if agent => {
                    let v = cx.nonempty(e)?;
                    if !is_subject_token(&v) || v.len() > 200 {
                        return Err(
                            cx.invalid(e, format!("name {v:?}: no '.', '*', '>' or spaces"))
                        );
                    }
                    c.name = Some(v);
                }
                ("tcp", _) if agent => c.tcp = cx.boolean(e)?,
                ("key", _) if agent => c.key = cx.file(e),
                ("agent_keys", _) if !agent => c.agent_keys = cx.file(e),
                _ => return Err(cx.unknown_key(e)),
            }
        }
        if c.servers.is_empty() {
            return Err(cx.missing(section, "server[]"));
        }
        match (user, password) {
            (Some(u), Some(p)) => c.user = Some((u, p)),
            (None, None) => {}
            _ => return Err(cx.missing(section, "user and password (both or neither)")),
        }
        match (cert, key) {
            (Some(cert), Some(key)) => c.tls_cert = Some((cert, key)),
            (None, None) => {}
            _ => return Err(cx.missing(section, "tls_cert and tls_key (both or neither)")),
        }
        let auths = usize::from(c.user.is_some())
            + usize::from(c.nkey.is_some())
            + usize::from(c.credentials.is_some());
        if auths > 1 {
            return Err(cx.missing(
                section,
                "one of user/password, nkey or credentials (not several)",
            ));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::AgentConfig;
    use std::path::Path;

    fn agent(text: &str) -> Result<AgentConfig, String> {
        AgentConfig::parse(text, Path::new("/etc/a.ini")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_and_names_file_and_line() {
        let c = agent(
            "[nats]\nserver[] = nats://127.0.0.1:4222\nname = web1\ngroup[] = web\ntcp = off\nuser = u\npassword = p\nalias[] = w1\n",
        )
        .unwrap();
        let n = c.nats.unwrap();
        assert_eq!(n.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(n.name.as_deref(), Some("web1"));
        assert_eq!(n.groups, ["web"]);
        assert_eq!(n.aliases, ["w1"]);
        assert!(!n.tcp);
        assert_eq!(n.user, Some(("u".into(), "p".into())));
        let e = agent("[nats]\nserver[] = nats://x:1\ngroup[] = a.b\n").unwrap_err();
        assert!(e.contains("/etc/a.ini:3"), "{e}");
        let e = agent("[nats]\nserver[] = nats://x:1\nbogus = 1\n").unwrap_err();
        assert!(e.contains("/etc/a.ini:3") && e.contains("bogus"), "{e}");
        let e = agent("[nats]\nserver[] = nats://x:1\nagent_keys = /k\n").unwrap_err();
        assert!(e.contains("agent_keys: unknown key"), "{e}");
        let c = agent("[nats]\nserver[] = nats://x:1\nkey = k\n").unwrap();
        assert_eq!(c.nats.unwrap().key, Some("/etc/k".into()));
        let e = agent("[nats]\nname = a\n").unwrap_err();
        assert!(e.contains("server[]"), "{e}");
        assert!(agent("[server]\nport = 1\n").unwrap().nats.is_none());
    }
}
