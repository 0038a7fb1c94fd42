//! `deploy-client scenario …` and `deploy-client napp …`: Octopoda's `octl scen` and
//! `octl napp`, on deploy agents.
//!
//! ```text
//! scenario apply DIR [TARGET] [-m MSG] [--keep-going]   run a target (default: prepare, start)
//! scenario create NAME [APP…] [--dir PARENT]            a template folder
//! scenario get DIR                                      apps, nodes, scripts, NodeApp versions
//! scenario list DIR                                     the scenario folders in DIR (or DIR itself)
//! scenario versions DIR [-o N] [-l N]                   scenario versions, newest first
//! scenario reset DIR -v PREFIX -m MSG                   every NodeApp back to that version
//! napp get HOST [APP@SCENARIO | @SCENARIO]              NodeApps on one node
//! napp versions HOST APP@SCENARIO [-o N] [-l N]         a NodeApp's versions, newest first
//! napp reset HOST APP@SCENARIO -v PREFIX -m MSG         a NodeApp back to a version
//! ```
//!
//! The work is the scenario crate's ([`deploy_scenario::apply`]); this module builds the
//! transport from the flags, prints events as they come (`text`: script lines prefixed
//! `node app:`, each step's result with what the script wrote to `$OCTOPODA_OUTPUT`;
//! `jsonl`: one event a line; `json`: the report at the end) and turns the report into
//! an exit status: 0 every step succeeded, 1 some step failed, 2 nothing was sent
//! (usage, a refused folder, an unreadable script).
//!
//! Scenario versions are kept by the proxy when `--proxy` is given (one history shared
//! by every caller of that proxy, [`crate::proxy_store::ProxyStore`]), else beside the
//! folder (`DIR/.deploy/scenario-versions.jsonl`, [`FolderStore`]).

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use deploy_common::crypto::RsaPublicKey;
use deploy_common::legacy::auth::DEFAULT_KEY_CIPHER;
use deploy_common::order::napp::{self, Action, NappSpec};
use deploy_common::target::Target;
use deploy_common::transport::{AgentTransport, Protocol, Transport};
use deploy_scenario::apply::{self, ApplyEvent, Options, Proxy, Report, StepResult};
use deploy_scenario::store::{ScenarioStore, DEFAULT_LIMIT};
use deploy_scenario::{FolderStore, Target as PlanTarget};
use serde_json::Value;
use tokio::sync::mpsc;

/// Exit status: every step succeeded.
const EXIT_OK: u8 = 0;
/// Exit status: some step failed.
const EXIT_FAILED: u8 = 1;
/// Exit status: nothing was sent (usage, folder, local files).
const EXIT_USAGE: u8 = 2;

/// The proxy's port when `--proxy` names none.
const PROXY_PORT: u16 = 3441;

/// How the nodes are reached, shared by every scenario and napp command.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    /// The agents' shared secret.
    #[arg(long, global = true, env = "DEPLOY_KEY_CIPHER", hide_env_values = true, default_value = DEFAULT_KEY_CIPHER)]
    pub key_cipher: String,

    /// A proxy for `@group` nodes (HOST[:PORT], port 3441 unless given).
    #[arg(long, global = true, value_name = "HOST")]
    pub proxy: Option<String>,

    /// The proxy's secret, when not the agents' (--key-cipher).
    #[arg(
        long,
        global = true,
        env = "DEPLOY_PROXY_KEY_CIPHER",
        hide_env_values = true
    )]
    pub proxy_key_cipher: Option<String>,

    /// The proxy's API key (with --proxy).
    #[arg(
        long,
        global = true,
        env = "DEPLOY_API_KEY",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub api_key: String,

    /// The agents' (and proxy's) RSA public key (PEM), pinned.
    #[arg(long, global = true, value_name = "PEM")]
    pub ssl_public_key: Option<PathBuf>,

    /// Port of nodes written without one.
    #[arg(long, global = true, default_value_t = 3440)]
    pub port: u16,

    /// Seconds to wait for a connection.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub socket_timeout: u64,

    /// Seconds one step (a script on one node, a push) may take.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout: u64,

    /// Most nodes contacted at once per (application, script).
    #[arg(long, global = true, value_name = "N", default_value_t = deploy_common::fanout::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,

    /// Output: `text` (live lines and results), `json` (one report at the end),
    /// `jsonl` (one event a line, the report last).
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// SSH hosts: the NodeApps' workspace (relative to the remote home unless
    /// absolute; `%h`/`%p`: the host and port as written).
    #[arg(long, global = true, value_name = "DIR", default_value = crate::ssh_napp::DEFAULT_WORKSPACE)]
    pub ssh_workspace: String,

    /// SSH: the client configuration file [default: ~/.ssh/config].
    #[arg(short = 'F', long = "ssh-config", global = true, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,

    /// SSH: the known_hosts file [default: ~/.ssh/known_hosts].
    #[arg(long, global = true, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// SSH: append the keys of hosts not yet known to the known_hosts file.
    #[arg(long, global = true)]
    pub accept_new_host_keys: bool,

    /// SSH: a private key to try (repeatable), after the ssh-agent's keys.
    #[arg(short = 'i', long, global = true, value_name = "FILE")]
    pub identity: Vec<PathBuf>,

    /// Log more (repeat for debug).
    #[arg(long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// Output formats of the scenario commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Readable lines.
    Text,
    /// One JSON document at the end.
    Json,
    /// One JSON object a line, as things happen.
    Jsonl,
}

/// `deploy-client scenario …`.
#[derive(Debug, Subcommand)]
pub enum ScenarioCmd {
    /// Run a target of a scenario folder on its nodes (prepare, start, stop, purge,
    /// commit, a custom one; none or `default`: prepare then start).
    Apply {
        /// The scenario folder (with deployment.yaml).
        dir: PathBuf,
        /// The target.
        target: Option<String>,
        /// The version's message (required by `commit`).
        #[arg(short = 'm', long)]
        message: Option<String>,
        /// Run the later orders even after a script failed.
        #[arg(long)]
        keep_going: bool,
    },
    /// Write a template scenario folder NAME (in --dir) with these applications.
    Create {
        /// The scenario's name.
        name: String,
        /// Its applications.
        apps: Vec<String>,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Show a scenario: its applications, nodes and scripts, and each NodeApp's version.
    Get {
        /// The scenario folder.
        dir: PathBuf,
    },
    /// List the scenario folders in DIR (or DIR itself) with their latest version.
    List {
        /// A scenario folder, or a directory of them.
        dir: PathBuf,
    },
    /// List the scenario's versions, newest first.
    Versions {
        /// The scenario folder.
        dir: PathBuf,
        /// Versions to skip.
        #[arg(short = 'o', long, default_value_t = 0)]
        offset: usize,
        /// Versions to show.
        #[arg(short = 'l', long, default_value_t = DEFAULT_LIMIT)]
        limit: usize,
    },
    /// Reset every NodeApp to a scenario version (recorded again as a new version).
    Reset {
        /// The scenario folder.
        dir: PathBuf,
        /// The version (3+ hex digits of its id).
        #[arg(short = 'v', long = "version", value_name = "PREFIX")]
        version: String,
        /// Why.
        #[arg(short = 'm', long)]
        message: String,
    },
}

/// `deploy-client napp …`.
#[derive(Debug, Subcommand)]
pub enum NappCmd {
    /// The NodeApps on a node (of one scenario: `@SCENARIO`; one: `APP@SCENARIO`).
    Get {
        /// The node (an agent).
        host: String,
        /// `APP@SCENARIO` or `@SCENARIO`.
        napp: Option<String>,
    },
    /// A NodeApp's versions, newest first.
    Versions {
        /// The node.
        host: String,
        /// `APP@SCENARIO`.
        napp: String,
        /// Versions to skip.
        #[arg(short = 'o', long, default_value_t = 0)]
        offset: usize,
        /// Versions to show.
        #[arg(short = 'l', long, default_value_t = napp::DEFAULT_VERSIONS_LIMIT)]
        limit: usize,
    },
    /// Reset a NodeApp to a version (recorded again as a new version).
    Reset {
        /// The node.
        host: String,
        /// `APP@SCENARIO`.
        napp: String,
        /// The version (3+ hex digits).
        #[arg(short = 'v', long = "version", value_name = "PREFIX")]
        version: String,
        /// Why.
        #[arg(short = 'm', long)]
        message: String,
    },
}

impl Connect {
    /// The log filter asked for.
    pub fn log_level(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "error",
            (false, 0) => "warn",
            (false, 1) => "info",
            _ => "debug",
        }
    }

    fn transport(&self) -> anyhow::Result<Arc<dyn Transport>> {
        self.transport_with(&self.key_cipher)
    }

    /// The agents' transport, and the SSH one when the scenario names `ssh://` nodes
    /// (`napp` translated there, [`crate::ssh_napp`]).
    fn scenario_transport(
        &self,
        scenario: &deploy_scenario::Scenario,
    ) -> anyhow::Result<(Arc<dyn Transport>, bool)> {
        let any_ssh = scenario
            .apps
            .iter()
            .flat_map(|a| &a.nodes)
            .any(|n| n.starts_with(deploy_common::target::SSH_PREFIX));
        let sources = scenario
            .apps
            .iter()
            .map(|a| (a.name.clone(), a.source.clone()))
            .collect();
        self.transport_for(any_ssh, sources, scenario.root.clone())
    }

    /// The agents' transport, with the SSH one beside it when `any_ssh` (`napp`
    /// translated there, [`crate::ssh_napp`]; `sources` for its pushes).
    fn transport_for(
        &self,
        any_ssh: bool,
        sources: HashMap<String, PathBuf>,
        root: PathBuf,
    ) -> anyhow::Result<(Arc<dyn Transport>, bool)> {
        let agent = self.transport()?;
        if !any_ssh {
            return Ok((agent, false));
        }
        let mut options = crate::cli::ssh_options();
        options.config_file = self.ssh_config.clone();
        options.known_hosts = self.known_hosts.clone();
        options.accept_new_host_keys = self.accept_new_host_keys;
        options.identities = self.identity.clone();
        options.connect_timeout = Duration::from_secs(self.socket_timeout);
        options.deadline = Some(Duration::from_secs(self.timeout));
        options.pty = false;
        let ssh = Arc::new(deploy_common::ssh::SshTransport::new(options)?);
        let napp = crate::ssh_napp::SshNapp::new(ssh, self.ssh_workspace.clone(), sources, root);
        Ok((
            Arc::new(deploy_common::transport::Mux {
                agent,
                ssh: Some(Arc::new(napp)),
                nats: None,
            }),
            true,
        ))
    }

    fn transport_with(&self, key_cipher: &str) -> anyhow::Result<Arc<dyn Transport>> {
        let public_key = match &self.ssl_public_key {
            Some(path) => Some(Arc::new(
                RsaPublicKey::load(path).context("--ssl-public-key")?,
            )),
            None => None,
        };
        Ok(Arc::new(AgentTransport {
            protocol: Protocol::V2,
            key_cipher: key_cipher.to_owned(),
            public_key,
            connect_timeout: Duration::from_secs(self.socket_timeout),
            deadline: Duration::from_secs(self.timeout),
            // Every stage goes to the same nodes: one handshake per node, not per stage.
            pool: Some(Arc::new(deploy_common::transport::agent::Pool::default())),
        }))
    }

    /// Where scenario versions are kept: by the proxy with `--proxy`, else beside the
    /// folder.
    fn store(
        &self,
        scenario: &deploy_scenario::Scenario,
    ) -> anyhow::Result<Arc<dyn ScenarioStore>> {
        Ok(match self.options()?.proxy {
            Some(Proxy {
                target,
                api_key,
                transport: Some(transport),
            }) => Arc::new(crate::proxy_store::ProxyStore {
                transport,
                target,
                api_key,
            }),
            _ => Arc::new(FolderStore::new(&scenario.root)),
        })
    }

    fn options(&self) -> anyhow::Result<Options> {
        let proxy = match &self.proxy {
            None => None,
            Some(spec) => {
                if self.api_key.is_empty() {
                    bail!("--proxy needs --api-key (DEPLOY_API_KEY)");
                }
                let secret = self.proxy_key_cipher.as_deref().unwrap_or(&self.key_cipher);
                if deploy_common::config::is_default_secret(secret) && self.ssl_public_key.is_none()
                {
                    bail!(
                        "refusing to send the API key to a proxy that is not authenticated: \
                         give its secret (--proxy-key-cipher, DEPLOY_PROXY_KEY_CIPHER) or pin \
                         its --ssl-public-key"
                    );
                }
                Some(Proxy {
                    target: Target::parse(spec, PROXY_PORT).context("--proxy")?,
                    api_key: self.api_key.clone(),
                    transport: Some(self.transport_with(secret)?),
                })
            }
        };
        Ok(Options {
            concurrency: self.concurrency.max(1),
            port: self.port,
            proxy,
            ..Options::default()
        })
    }
}

/// Runs a scenario command; returns the exit status.
pub async fn scenario(cmd: ScenarioCmd, connect: Connect) -> u8 {
    match scenario_inner(cmd, &connect).await {
        Ok(status) => status,
        Err(e) => {
            eprintln!("deploy-client: error: {}", chain(&e));
            EXIT_USAGE
        }
    }
}

/// Runs a napp command; returns the exit status.
pub async fn napp(cmd: NappCmd, connect: Connect) -> u8 {
    match napp_inner(cmd, &connect).await {
        Ok(status) => status,
        Err(e) => {
            eprintln!("deploy-client: error: {}", chain(&e));
            EXIT_USAGE
        }
    }
}

fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn load(dir: &Path) -> anyhow::Result<deploy_scenario::Scenario> {
    let scenario = deploy_scenario::load(dir)?;
    for w in &scenario.warnings {
        eprintln!(
            "deploy-client: warning: {}: unknown key `{}` ignored",
            w.file.display(),
            w.key
        );
    }
    Ok(scenario)
}

async fn scenario_inner(cmd: ScenarioCmd, connect: &Connect) -> anyhow::Result<u8> {
    match cmd {
        ScenarioCmd::Apply {
            dir,
            target,
            message,
            keep_going,
        } => {
            let scenario = load(&dir)?;
            let target = PlanTarget::parse(target.as_deref());
            let (transport, ssh) = connect.scenario_transport(&scenario)?;
            let mut options = connect.options()?;
            options.ssh = ssh;
            options.keep_going = keep_going;
            options.store = Some(connect.store(&scenario)?);
            let (tx, rx) = mpsc::unbounded_channel();
            options.events = Some(tx);
            let printer = tokio::spawn(print_events(rx, connect.format));
            let result =
                apply::apply(&scenario, &target, message.as_deref(), transport, &options).await;
            drop(options);
            let _ = printer.await;
            let report = result?;
            finish(&report, connect.format)
        }
        ScenarioCmd::Create { name, apps, dir } => {
            let apps: Vec<&str> = apps.iter().map(String::as_str).collect();
            let path = deploy_scenario::create_template(&dir, &name, &apps)?;
            println!("{}", path.display());
            Ok(EXIT_OK)
        }
        ScenarioCmd::Get { dir } => {
            let scenario = load(&dir)?;
            let (transport, ssh) = connect.scenario_transport(&scenario)?;
            let mut options = connect.options()?;
            options.ssh = ssh;
            let (versions, steps) = apply::current(&scenario, transport, &options).await?;
            let store = connect.store(&scenario)?;
            let latest = store.list(&scenario.name, 0, 1).await?;
            let failed = steps.iter().any(|s| !s.ok);
            if connect.format != Format::Text {
                let doc = serde_json::json!({
                    "name": scenario.name,
                    "description": scenario.description,
                    "applications": scenario.apps.iter().map(|a| serde_json::json!({
                        "name": a.name,
                        "description": a.description,
                        "nodes": a.nodes,
                        "scripts": a.scripts.iter().map(|s| serde_json::json!({
                            "target": s.target, "file": s.file, "order": s.order,
                        })).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                    "nodeapps": versions,
                    "errors": steps.iter().filter(|s| !s.ok).collect::<Vec<_>>(),
                    "latest": latest.versions.first(),
                    "total_versions": latest.total,
                });
                print_json(&doc)?;
            } else {
                let mut out = io::stdout().lock();
                writeln!(out, "scenario {}: {}", scenario.name, scenario.description)?;
                for app in &scenario.apps {
                    writeln!(out, "  app {}: {}", app.name, app.description)?;
                    for s in &app.scripts {
                        writeln!(out, "    {} {} (order {})", s.target, s.file, s.order)?;
                    }
                    for node in &app.nodes {
                        let v = versions
                            .get(node)
                            .and_then(|apps| apps.get(&app.name))
                            .map(String::as_str);
                        let err = steps
                            .iter()
                            .find(|s| !s.ok && &s.node == node && s.app == app.name)
                            .map(|s| s.error.as_str());
                        match (v, err) {
                            (Some(v), _) => writeln!(out, "    node {node}: version {}", short(v))?,
                            (None, Some(e)) => writeln!(out, "    node {node}: {e}")?,
                            (None, None) => writeln!(out, "    node {node}: not prepared")?,
                        }
                    }
                }
                match latest.versions.first() {
                    Some(v) => writeln!(
                        out,
                        "latest version {} {} {} ({} in all)",
                        short(&v.id),
                        time(v.time),
                        v.message,
                        latest.total
                    )?,
                    None => writeln!(out, "no version recorded")?,
                }
            }
            Ok(if failed { EXIT_FAILED } else { EXIT_OK })
        }
        ScenarioCmd::List { dir } => {
            let folders = if dir.join(deploy_scenario::DEPLOYMENT_FILE).exists() {
                vec![dir.clone()]
            } else {
                let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .with_context(|| format!("{}", dir.display()))?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.join(deploy_scenario::DEPLOYMENT_FILE).is_file())
                    .collect();
                found.sort();
                found
            };
            let mut rows = Vec::new();
            let mut status = EXIT_OK;
            for folder in folders {
                match deploy_scenario::load(&folder) {
                    Ok(s) => {
                        let store = connect.store(&s)?;
                        let page = store.list(&s.name, 0, 1).await?;
                        rows.push(serde_json::json!({
                            "name": s.name,
                            "description": s.description,
                            "folder": folder.display().to_string(),
                            "applications": s.apps.len(),
                            "latest": page.versions.first(),
                            "versions": page.total,
                        }));
                    }
                    Err(e) => {
                        status = EXIT_FAILED;
                        eprintln!("deploy-client: error: {}: {e}", folder.display());
                    }
                }
            }
            if connect.format == Format::Text {
                for r in &rows {
                    let latest = match r["latest"].as_object() {
                        Some(v) => format!(
                            "{} {} {}",
                            short(v["id"].as_str().unwrap_or_default()),
                            time(v["time"].as_u64().unwrap_or_default()),
                            v["message"].as_str().unwrap_or_default()
                        ),
                        None => "no version".into(),
                    };
                    println!(
                        "{}  {} apps  {}  ({})",
                        r["name"].as_str().unwrap_or_default(),
                        r["applications"],
                        latest,
                        r["folder"].as_str().unwrap_or_default()
                    );
                }
            } else {
                print_json(&Value::Array(rows))?;
            }
            Ok(status)
        }
        ScenarioCmd::Versions { dir, offset, limit } => {
            let scenario = load(&dir)?;
            let store = connect.store(&scenario)?;
            let page = store.list(&scenario.name, offset, limit).await?;
            if connect.format == Format::Text {
                for v in &page.versions {
                    let restores = v
                        .restores
                        .as_deref()
                        .map(|r| format!(" (reset to {})", short(r)))
                        .unwrap_or_default();
                    println!(
                        "{}  {}  {}{restores}",
                        short(&v.id),
                        time(v.time),
                        v.message
                    );
                }
                println!("({} of {} versions)", page.versions.len(), page.total);
            } else {
                print_json(&serde_json::to_value(&page)?)?;
            }
            Ok(EXIT_OK)
        }
        ScenarioCmd::Reset {
            dir,
            version,
            message,
        } => {
            let scenario = load(&dir)?;
            let (transport, ssh) = connect.scenario_transport(&scenario)?;
            let mut options = connect.options()?;
            options.ssh = ssh;
            options.store = Some(connect.store(&scenario)?);
            let (tx, rx) = mpsc::unbounded_channel();
            options.events = Some(tx);
            let printer = tokio::spawn(print_events(rx, connect.format));
            let result = apply::reset(&scenario, &version, &message, transport, &options).await;
            drop(options);
            let _ = printer.await;
            finish(&result?, connect.format)
        }
    }
}

/// `APP@SCENARIO` (app may be empty: `@SCENARIO`).
fn split_napp(text: &str) -> anyhow::Result<(String, String)> {
    let Some((app, scenario)) = text.split_once('@') else {
        bail!("{text:?}: expected APP@SCENARIO");
    };
    if !napp::valid_name(scenario) || !(app.is_empty() || napp::valid_name(app)) {
        bail!("{text:?}: expected APP@SCENARIO (letters, digits, '_', '-', '.')");
    }
    Ok((app.to_owned(), scenario.to_owned()))
}

async fn napp_inner(cmd: NappCmd, connect: &Connect) -> anyhow::Result<u8> {
    let (host, spec) = match cmd {
        NappCmd::Get { host, napp } => {
            let (app, scenario) = match napp {
                Some(n) => split_napp(&n)?,
                None => Default::default(),
            };
            let spec = NappSpec {
                action: Action::Get,
                scenario,
                app,
                ..NappSpec::default()
            };
            (host, spec)
        }
        NappCmd::Versions {
            host,
            napp,
            offset,
            limit,
        } => {
            let (app, scenario) = split_napp(&napp)?;
            if app.is_empty() {
                bail!("{napp:?}: name the application (APP@SCENARIO)");
            }
            let spec = NappSpec {
                action: Action::Versions,
                scenario,
                app,
                offset: Some(offset),
                limit: Some(limit),
                ..NappSpec::default()
            };
            (host, spec)
        }
        NappCmd::Reset {
            host,
            napp,
            version,
            message,
        } => {
            let (app, scenario) = split_napp(&napp)?;
            if app.is_empty() {
                bail!("{napp:?}: name the application (APP@SCENARIO)");
            }
            if version.len() < napp::MIN_VERSION_PREFIX {
                bail!(
                    "-v {version:?}: give at least {} hex digits of a version",
                    napp::MIN_VERSION_PREFIX
                );
            }
            let spec = NappSpec {
                action: Action::Reset,
                scenario,
                app,
                version,
                message,
                ..NappSpec::default()
            };
            (host, spec)
        }
    };
    let (transport, ssh) = connect.transport_for(
        host.starts_with(deploy_common::target::SSH_PREFIX),
        HashMap::new(),
        PathBuf::new(),
    )?;
    let mut options = connect.options()?;
    options.ssh = ssh;
    let action = spec.action;
    let step = apply::napp_one(&host, spec, transport, &options).await?;
    if connect.format != Format::Text {
        let mut doc = serde_json::to_value(&step)?;
        // The node's lists are JSON in a string (the wire's string values): unfolded.
        for key in ["napps", "versions"] {
            if let Some(list) = step
                .body
                .get(key)
                .and_then(Value::as_str)
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
            {
                doc[key] = list;
            }
        }
        if let Some(total) = step.body.get("total") {
            doc["total"] = total.clone();
        }
        print_json(&doc)?;
    } else if !step.ok {
        eprintln!("deploy-client: {}: {}", step.node, failure(&step));
    } else {
        let mut out = io::stdout().lock();
        match action {
            Action::Get => {
                let list = parse_list(&step, "napps");
                for n in &list {
                    writeln!(
                        out,
                        "{}@{}  current {}  versions: {}  {}",
                        n["app"].as_str().unwrap_or_default(),
                        n["scenario"].as_str().unwrap_or_default(),
                        short(n["current"].as_str().unwrap_or_default()),
                        n["versions"],
                        n["dir"].as_str().unwrap_or_default()
                    )?;
                }
                if list.is_empty() {
                    writeln!(out, "no NodeApp")?;
                }
            }
            Action::Versions => {
                let current = step
                    .body
                    .get("current")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                for v in parse_list(&step, "versions") {
                    let id = v["version"].as_str().unwrap_or_default();
                    let mark = if id == current { " *" } else { "" };
                    writeln!(
                        out,
                        "{}  {}  {}{mark}",
                        short(id),
                        v["time"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v["time"].to_string()),
                        v["message"].as_str().unwrap_or_default()
                    )?;
                }
                let total = step
                    .body
                    .get("total")
                    .and_then(Value::as_str)
                    .unwrap_or("?");
                writeln!(out, "({total} versions)")?;
            }
            _ => {
                let restored = step
                    .body
                    .get("restored")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{} {}: reset to {}, recorded as {}",
                    step.node,
                    step.app,
                    short(restored),
                    short(&step.version)
                )?;
            }
        }
    }
    Ok(if step.ok { EXIT_OK } else { EXIT_FAILED })
}

fn parse_list(step: &StepResult, key: &str) -> Vec<Value> {
    step.body
        .get(key)
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Vec<Value>>(s).ok())
        .unwrap_or_default()
}

/// The first 12 hex digits of an id.
fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Unix milliseconds as local time.
fn time(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn print_json(value: &Value) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::other)?;
    writeln!(out)
}

fn failure(step: &StepResult) -> String {
    match (step.code, step.error.is_empty()) {
        (Some(code), true) => format!("exit {code}"),
        (Some(code), false) => format!("exit {code}: {}", step.error),
        (None, _) => step.error.clone(),
    }
}

/// Prints events as they come: `text` on a terminal's terms, `jsonl` one a line;
/// `json` prints lines on standard error only (the report comes at the end).
async fn print_events(mut rx: mpsc::UnboundedReceiver<ApplyEvent>, format: Format) {
    while let Some(event) = rx.recv().await {
        let _ = print_event(&event, format);
    }
}

fn print_event(event: &ApplyEvent, format: Format) -> io::Result<()> {
    if format == Format::Jsonl {
        let mut out = io::stdout().lock();
        serde_json::to_writer(&mut out, event).map_err(io::Error::other)?;
        writeln!(out)?;
        return out.flush();
    }
    match event {
        ApplyEvent::Line {
            node,
            app,
            stream,
            line,
        } => {
            if format == Format::Text && *stream == "stdout" {
                let mut out = io::stdout().lock();
                writeln!(out, "{node} {app}: {line}")?;
                out.flush()?;
            } else {
                eprintln!("{node} {app}: {line}");
            }
        }
        _ if format == Format::Json => {}
        ApplyEvent::Stage {
            phase,
            action,
            order,
            steps,
        } => {
            if action == "versions" {
                return Ok(());
            }
            let what = match order {
                Some(order) => format!("order {order}"),
                None => action.clone(),
            };
            println!("== {phase}: {what} ({steps} step{})", plural(*steps));
        }
        ApplyEvent::Step(step) => {
            if step.action == "versions" && step.ok {
                return Ok(());
            }
            let mut out = io::stdout().lock();
            let label = step.label();
            if step.ok {
                let detail = match (step.code, step.version.as_str()) {
                    (Some(code), _) => format!(" (exit {code})"),
                    (None, "") => String::new(),
                    (None, v) => format!(" (version {})", short(v)),
                };
                writeln!(out, "ok   {label}{detail}")?;
            } else {
                writeln!(out, "FAIL {label}: {}", failure(step))?;
            }
            for line in step.output.lines() {
                writeln!(out, "     | {line}")?;
            }
            out.flush()?;
        }
        ApplyEvent::Stopped { reason } => eprintln!("deploy-client: stopped: {reason}"),
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Prints the report's end and judges it.
fn finish(report: &Report, format: Format) -> anyhow::Result<u8> {
    match format {
        Format::Json => print_json(&serde_json::to_value(report)?)?,
        Format::Jsonl => {
            let mut doc = serde_json::to_value(report)?;
            doc["kind"] = Value::from("report");
            println!("{}", serde_json::to_string(&doc)?);
        }
        Format::Text => {
            // Asking the NodeApps' versions is bookkeeping, not a step, unless it failed.
            let shown = report
                .steps
                .iter()
                .filter(|s| s.action != "versions" || !s.ok);
            let failed = shown.clone().filter(|s| !s.ok).count();
            let ok = shown.count() - failed;
            println!(
                "scenario {}: {}: {ok} step{} ok, {failed} failed",
                report.scenario,
                report.target,
                plural(ok)
            );
            for s in report.steps.iter().filter(|s| !s.ok) {
                println!("  failed: {}: {}", s.label(), failure(s));
            }
            if let Some(v) = &report.recorded {
                println!("recorded version {} ({})", short(&v.id), v.message);
            }
        }
    }
    Ok(if report.ok { EXIT_OK } else { EXIT_FAILED })
}
