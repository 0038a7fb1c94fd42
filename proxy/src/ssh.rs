//! The proxy's SSH side: `[ssh]` of the proxy ini → [`SshOptions`] → one
//! [`SshTransport`] per worker generation, made only when some server of the API file
//! is `ssh://`.
//!
//! ```text
//! [ssh] identity[]            → identities (tried in order, then the config's IdentityFile)
//! [ssh] known_hosts           → known_hosts (strict: unknown keys refused …
//! [ssh] accept_new_host_keys  →   … unless on; a changed key always)
//! [ssh] config                → config_file (else ~/.ssh/config if it exists)
//! [ssh] user                  → local_user: the remote user by default
//! [ssh] connect_timeout       → connect_timeout (else [client] connect_timeout)
//! [ssh] keepalive             → keepalive
//! [client] thread_timeout     → deadline: one whole exchange with one host
//! ```
//!
//! # Design
//!
//! A daemon asks nobody: no ssh-agent (its socket would be the starting shell's), no
//! passphrase prompt, no password. `~` is the home of the user the proxy runs as
//! (`[server] user`, else the user that starts it), so the defaults are what `ssh` run
//! as that user would use. The transport reads the configuration and the known_hosts
//! file when it is made (at start-up and on every reload, so a bad file is reported
//! then, and `--check` sees it); key files are read at the first connection, by the
//! worker, so they must be readable by that user. Unlike deploy-client, whose SSH runs
//! may last as long as the command (`tail -f`), every exchange is bounded by
//! `[client] thread_timeout`, as for agents: a proxy never holds a worker forever.

use deploy_common::config::proxy::ProxyConfig;
use deploy_common::ssh::{SshOptions, SshTransport};
use nix::unistd::{Uid, User};
use std::path::PathBuf;
use std::sync::Arc;

/// The SSH transport of a configuration, or `None` when no server is `ssh://`. Errors
/// name the file or the `[ssh]` key.
pub fn transport(config: &ProxyConfig) -> Result<Option<Arc<SshTransport>>, String> {
    if !config.has_ssh_servers() {
        return Ok(None);
    }
    let options = options(config)?;
    let transport = SshTransport::new(options).map_err(|e| format!("[ssh]: {e}"))?;
    tracing::debug!(
        user = %transport.options().local_user,
        home = %transport.options().home.display(),
        "SSH transport ready"
    );
    Ok(Some(Arc::new(transport)))
}

/// The options `[ssh]` (and `[client] thread_timeout`) describe.
fn options(config: &ProxyConfig) -> Result<SshOptions, String> {
    let ssh = &config.ssh;
    let (name, home) = runtime_user(config)?;
    for identity in &ssh.identities {
        std::fs::metadata(identity)
            .map_err(|e| format!("[ssh] identity {}: {e}", identity.display()))?;
    }
    let mut options = SshOptions::new(ssh.user.clone().unwrap_or(name), home);
    options.identities = ssh.identities.clone();
    options.known_hosts = ssh.known_hosts.clone();
    options.accept_new_host_keys = ssh.accept_new_host_keys;
    options.config_file = ssh.config.clone();
    options.connect_timeout = ssh.connect_timeout.unwrap_or(config.client.connect_timeout);
    options.deadline = Some(config.client.thread_timeout);
    options.keepalive = ssh.keepalive;
    // A daemon asks nobody (the defaults, spelt out).
    options.agent_socket = None;
    options.password = None;
    options.passphrase = None;
    Ok(options)
}

/// The name and home directory of the user the proxy runs as: `[server] user`, else
/// the effective user (home from the password database, else `$HOME`, else `/`).
fn runtime_user(config: &ProxyConfig) -> Result<(String, PathBuf), String> {
    if let Some(name) = &config.server.user {
        return match User::from_name(name) {
            Ok(Some(user)) => Ok((user.name, user.dir)),
            Ok(None) => Err(format!("[server] user {name:?}: no such user")),
            Err(e) => Err(format!("[server] user {name:?}: {e}")),
        };
    }
    let uid = Uid::effective();
    match User::from_uid(uid) {
        Ok(Some(user)) => Ok((user.name, user.dir)),
        _ => {
            let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/"), PathBuf::from);
            Ok((uid.to_string(), home))
        }
    }
}
