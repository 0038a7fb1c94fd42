//! Pre-flight checks of a parsed configuration: what `--check` reports beyond syntax,
//! and what a daemon refuses to start with.
//!
//! | check | agent | proxy | refused at start |
//! |---|---|---|---|
//! | a secret is a default ([`super::is_default_secret`]) | `[server] key_cipher` | `[server]`, `[client]`, `[group::*]` `key_cipher`; `[store] key` with `backend = nats` | yes, unless `allow_default_secrets = on` |
//! | `state_dir` unusable by `[server] user` | yes | yes | yes (see `server::statedir`) |
//! | a group's rsync binary is missing | yes | — | no |
//! | a job's program is missing | yes | — | no |
//! | a group's `src` is outside `[allow::paths]` | yes | — | no (its orders get 403) |
//! | a group's `option[]` has neither `-a` nor `-r` | yes | — | no |
//! | `[scenarios]` enabled with a workspace outside `[allow::paths]` | yes | — | yes ([`scenarios_refusal`]) |
//!
//! Each problem is one line naming the file, the section and the key.

use super::{AgentConfig, ProxyConfig, ServerConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The `[section] key` names of the agent's secrets that are defaults.
pub fn agent_default_secrets(config: &AgentConfig) -> Vec<String> {
    server_secret(&config.server)
}

/// The `[section] key` names of the proxy's secrets that are defaults: its callers'
/// (`[server] key_cipher`), its agents' (`[client] key_cipher`, a group's override) and,
/// with a shared NATS store, the fleet's (`[store] key`).
pub fn proxy_default_secrets(config: &ProxyConfig) -> Vec<String> {
    let mut weak = server_secret(&config.server);
    let groups: Vec<&str> = config.api.server_groups().collect();
    // The [client] secret matters only if some group falls back on it.
    let uses_client = groups.is_empty()
        || groups.iter().any(|g| {
            config
                .api
                .group_override(g)
                .and_then(|o| o.key_cipher.as_deref())
                .is_none()
        });
    if uses_client && super::is_default_secret(&config.client.key_cipher) {
        weak.push("[client] key_cipher".into());
    }
    if config.store.backend == super::proxy::StoreBackend::Nats
        && config
            .store
            .key
            .as_deref()
            .is_none_or(super::is_default_secret)
    {
        weak.push("[store] key".into());
    }
    for group in groups {
        if let Some(key) = config
            .api
            .group_override(group)
            .and_then(|o| o.key_cipher.as_deref())
        {
            if super::is_default_secret(key) {
                weak.push(format!("[group::{group}] key_cipher"));
            }
        }
    }
    weak
}

fn server_secret(server: &ServerConfig) -> Vec<String> {
    match super::is_default_secret(&server.key_cipher) {
        true => vec!["[server] key_cipher".into()],
        false => Vec::new(),
    }
}

/// The refusal for default secrets, `None` if there are none or they are allowed.
pub fn secrets_refusal(file: &Path, weak: &[String], server: &ServerConfig) -> Option<String> {
    if weak.is_empty() || server.allow_default_secrets {
        return None;
    }
    Some(format!(
        "{}: {} {} a default secret (empty, 65535 or change-me): anyone can guess it; \
         set a secret of your own (or, in a lab only, `allow_default_secrets = on` in [server])",
        file.display(),
        weak.join(", "),
        if weak.len() == 1 { "is" } else { "are" }
    ))
}

/// The refusal for scenarios enabled with a workspace outside `[allow::paths]` (its
/// scripts and files must stay where the agent may write), `None` if all is well. As
/// for a group's `src`, the check is canonical when the path resolves and lexical
/// otherwise; every `napp` order checks the workspace canonically again.
pub fn scenarios_refusal(config: &AgentConfig) -> Option<String> {
    let sc = &config.scenarios;
    let workspace = sc.workspace.as_ref().filter(|_| sc.enabled)?;
    if inside_allowed(config, &workspace.to_string_lossy()) {
        return None;
    }
    Some(format!(
        "{}: [scenarios] workspace: {} is not under an [allow::paths] path; \
         scenarios write files and run scripts only where the agent may write",
        config.path.display(),
        workspace.display()
    ))
}

/// Everything `deploy-agent --check` reports beyond syntax (one line each).
pub fn agent_problems(config: &AgentConfig) -> Vec<String> {
    let file = config.path.display();
    let mut problems = Vec::new();
    let weak = agent_default_secrets(config);
    problems.extend(secrets_refusal(&config.path, &weak, &config.server));
    if let Err(e) = crate::server::statedir::check(
        &config.server.state_dir,
        config.server.user.as_deref(),
        config.server.group.as_deref(),
    ) {
        problems.push(format!("{file}: [server] {e}"));
    }
    problems.extend(scenarios_refusal(config));
    for (name, group) in &config.groups {
        let section = format!("[rsync::group::{name}]");
        if !is_executable(&group.rsync) {
            problems.push(format!(
                "{file}: {section} rsync: {} is not an executable file",
                group.rsync.display()
            ));
        }
        if !inside_allowed(config, &group.src) {
            problems.push(format!(
                "{file}: {section} src: {} is outside every [allow::paths] path (its orders would be refused)",
                group.src
            ));
        }
        if !group.option.is_empty() && !group.option.iter().any(|o| recursive(o)) {
            problems.push(format!(
                "{file}: {section} option[]: neither -a/--archive nor -r/--recursive \
                 (option[] replaces the default --archive --delete --force, so directories would be skipped)"
            ));
        }
    }
    for name in config.jobs.names() {
        let Some(job) = config.jobs.get(name) else {
            continue;
        };
        let Some(program) = job.argv(&[]).ok().and_then(|a| a.into_iter().next()) else {
            continue;
        };
        if find_program(&program).is_none() {
            problems.push(format!(
                "{file}: [jobs] {name}: program {program:?} is not an executable file"
            ));
        }
    }
    problems
}

/// Everything `deploy-proxy --check` reports beyond syntax (one line each).
pub fn proxy_problems(config: &ProxyConfig) -> Vec<String> {
    let mut problems = Vec::new();
    let weak = proxy_default_secrets(config);
    problems.extend(secrets_refusal(&config.path, &weak, &config.server));
    if let Err(e) = crate::server::statedir::check(
        &config.server.state_dir,
        config.server.user.as_deref(),
        config.server.group.as_deref(),
    ) {
        problems.push(format!("{}: [server] {e}", config.path.display()));
    }
    problems
}

/// `-a`, `--archive`, `-r`, `--recursive`, or a short-option cluster with `a` or `r`.
fn recursive(option: &str) -> bool {
    match option {
        "--archive" | "--recursive" => true,
        o if o.starts_with("--") => false,
        o => o.strip_prefix('-').is_some_and(|cluster| {
            cluster
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .any(|c| c == 'a' || c == 'r')
        }),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The program as `exec` would start it: a path with a `/` as is, else searched in
/// the `PATH` jobs run with.
fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(program))
    .find(|p| is_executable(p))
}

/// Whether `src` lies under an allowed path: canonically when it resolves, else
/// lexically (a sample's paths need not exist on the machine that checks it).
fn inside_allowed(config: &AgentConfig, src: &str) -> bool {
    if config.allow_paths.check(src).is_ok() {
        return true;
    }
    let normal = |p: &Path| -> Option<PathBuf> {
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::RootDir => out.push("/"),
                Component::Normal(n) => out.push(n),
                Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        Some(out)
    };
    let Some(src) = normal(Path::new(src)) else {
        return false;
    };
    config
        .allow_paths
        .roots()
        .iter()
        .filter_map(|r| normal(r))
        .any(|root| src.starts_with(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recursive_options() {
        for yes in [
            "-a",
            "--archive",
            "-r",
            "--recursive",
            "-avz",
            "-rlpt",
            "-vr",
        ] {
            assert!(recursive(yes), "{yes}");
        }
        for no in [
            "--delete",
            "-v",
            "--bwlimit=1000",
            "-lptgoD",
            "--rsh=ar",
            "a",
        ] {
            assert!(!recursive(no), "{no}");
        }
    }

    fn agent(text: &str) -> AgentConfig {
        AgentConfig::parse(text, Path::new("/e/agent.ini")).unwrap()
    }

    #[test]
    fn agent_problems_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let c = agent(&format!(
            "[server]\nkey_cipher = change-me\nstate_dir = {}\n\
             [allow::paths]\npath[] = /srv/allowed\n\
             [rsync::group::ok]\ndest = a::B\nsrc = /srv/allowed/x\noption[] = -avz\nrsync = /bin/sh\n\
             [rsync::group::bad]\ndest = a::B\nsrc = /etc/x\nrsync = /nonexistent/rsync\n\
             option[] = --delete\n",
            state.display()
        ));
        let problems = agent_problems(&c);
        let text = problems.join("\n");
        assert_eq!(problems.len(), 4, "{text}");
        assert!(
            text.contains("/e/agent.ini: [server] key_cipher is a default secret"),
            "{text}"
        );
        assert!(
            text.contains("[rsync::group::bad] rsync: /nonexistent/rsync"),
            "{text}"
        );
        assert!(
            text.contains("[rsync::group::bad] src: /etc/x is outside"),
            "{text}"
        );
        assert!(
            text.contains("[rsync::group::bad] option[]: neither"),
            "{text}"
        );

        let mut c = c;
        c.server.allow_default_secrets = true;
        assert_eq!(agent_problems(&c).len(), 3);
    }

    #[test]
    fn scenarios_workspace_must_be_allowed() {
        let on = |ws: &str| {
            agent(&format!(
                "[allow::paths]\npath[] = /srv/allowed\n[scenarios]\nenabled = on\nworkspace = {ws}\n"
            ))
        };
        assert_eq!(scenarios_refusal(&on("/srv/allowed/sc/ws")), None);
        let refusal = scenarios_refusal(&on("/srv/other")).unwrap();
        assert!(
            refusal.starts_with("/e/agent.ini: [scenarios] workspace: /srv/other is not under an [allow::paths] path"),
            "{refusal}"
        );
        assert!(scenarios_refusal(&on("/srv/allowed/../etc")).is_some());
        let mut off = on("/srv/other");
        off.scenarios.enabled = false;
        assert_eq!(scenarios_refusal(&off), None, "off: nothing to refuse");
        assert!(agent_problems(&on("/srv/other"))
            .iter()
            .any(|p| p.contains("[scenarios] workspace")));
    }

    #[test]
    fn a_default_store_key_is_refused() {
        let proxy = |store: &str| {
            ProxyConfig::parse(
                &format!("[server]\nkey_cipher = s3cret\n[client]\nkey_cipher = s3cret\n{store}"),
                Path::new("/e/proxy.ini"),
            )
            .unwrap()
        };
        let nats = "[store]\nbackend = nats\nserver[] = nats://a:4222\n";
        assert!(proxy_default_secrets(&proxy("")).is_empty());
        assert!(proxy_default_secrets(&proxy(&format!("{nats}key = fleet s3cret\n"))).is_empty());
        // Only the nats backend uses the key.
        assert!(proxy_default_secrets(&proxy("[store]\nkey = change-me\n")).is_empty());
        for weak in ["change-me", "65535", "CHANGE-ME "] {
            let c = proxy(&format!("{nats}key = {weak}\n"));
            assert_eq!(proxy_default_secrets(&c), ["[store] key"], "{weak}");
            let refusal =
                secrets_refusal(&c.path, &proxy_default_secrets(&c), &c.server).unwrap_or_default();
            assert!(
                refusal.starts_with("/e/proxy.ini: [store] key is a default secret"),
                "{refusal}"
            );
            let mut allowed = c.clone();
            allowed.server.allow_default_secrets = true;
            assert!(
                secrets_refusal(&c.path, &proxy_default_secrets(&allowed), &allowed.server)
                    .is_none()
            );
        }
    }

    #[test]
    fn missing_job_programs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("jobs.ini"),
            "[jobs]\nok = /bin/echo %s\nbare = echo\nmissing = /nonexistent/prog %s\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("agent.ini"),
            format!(
                "[server]\nkey_cipher = s3cret\nstate_dir = {}\n[jobs]\npath = jobs.ini\n",
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let c = AgentConfig::load(&dir.path().join("agent.ini")).unwrap();
        let problems = agent_problems(&c);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("[jobs] missing: program \"/nonexistent/prog\""));
    }
}
