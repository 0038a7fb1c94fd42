//! deploy-proxy: authenticates callers by API key, maps keys → groups → agents, and relays
//! one order to many agents at once, streaming or merging their results.
//!
//! # Layout
//!
//! * [`cli`]: flags, applied over the INI files.
//! * [`route`]: how each server of the API file is reached (agents, `ssh://` hosts,
//!   chained proxies).
//! * [`ssh`]: the `[ssh]` options → the one SSH transport of a worker generation.
//! * [`relay`]: the order handler (authorization, fan-out, merging).
//! * [`nodes`]: the heartbeat behind `nodes` (one worker probes, all answer).
//! * [`spool`]: a caller's request body (`upload`, `napp` push), kept once for the
//!   fan-out.
//! * [`store`]: the state shared by callers (and by proxies, on NATS): versions, leases,
//!   the node inventory.
//! * [`versions`]: the proxy's own `scenario-versions` order (through [`store`]).
//! * [`http`]: the HTTP/JSON API server (hyper); what its requests mean is
//!   [`deploy_proxy::api`], the library half, which the fuzz targets call.
//! * `main`: start-up through the daemon core shared with the agent.

mod cli;
mod http;
mod nodes;
mod relay;
mod relay_push;
mod route;
mod spool;
mod ssh;
mod store;
mod versions;

use anyhow::{Context, Result};
use cli::Cli;
use deploy_common::config::proxy::ProxyConfig;
use deploy_common::report;
use deploy_common::server::conn::{self, Policy};
use deploy_common::server::prefork::{self, Program, WorkerSettings};
use deploy_common::server::{daemon, title};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let mut cli: Cli = deploy_common::cli::parse(deploy_common::version!());
    if let Ok(path) = std::path::absolute(&cli.path) {
        cli.path = path;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("deploy-proxy: error: {}", report::chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn load(cli: &Cli) -> Result<ProxyConfig> {
    let mut config = ProxyConfig::load(&cli.path)?;
    cli.apply(&mut config);
    for ignored in &config.ignored {
        eprintln!("deploy-proxy: note: {ignored}");
    }
    Ok(config)
}

struct Generation {
    config: Arc<ProxyConfig>,
    policy: Arc<Policy>,
    relay: Arc<relay::Relay>,
}

fn generation(config: ProxyConfig) -> Result<Generation> {
    // The proxy authenticates callers by API key, as the original did (no auth_key).
    let policy = Policy::new(
        &config.server,
        config.allow_hosts.clone(),
        false,
        &["api", "agent"],
    )
    .with_context(|| config.path.display().to_string())?;
    let config = Arc::new(config);
    let relay = relay::Relay::new(Arc::clone(&config)).map_err(anyhow::Error::msg)?;
    Ok(Generation {
        config,
        policy: Arc::new(policy),
        relay: Arc::new(relay),
    })
}

struct ProxyProgram {
    cli: Cli,
    current: Generation,
}

impl Program for ProxyProgram {
    fn reload(&mut self) -> Result<(), String> {
        let config = load(&self.cli).map_err(|e| report::chain(e.as_ref()).to_string())?;
        self.current = generation(config).map_err(|e| report::chain(e.as_ref()).to_string())?;
        Ok(())
    }

    fn worker(&self, listeners: &[TcpListener]) -> i32 {
        let config = Arc::clone(&self.current.config);
        title::set_title(&format!("{} worker process", config.server.process_name));
        let http_addr = config
            .client
            .http_listen
            .and_then(|_| listeners.last())
            .and_then(|l| l.local_addr().ok());
        let policy = Arc::clone(&self.current.policy);
        let relay = Arc::clone(&self.current.relay);
        // One worker leads the heartbeat (`nodes`); the others stand by.
        nodes::spawn(Arc::clone(&config));
        let allow = Arc::new(config.allow_hosts.clone());
        let socket_timeout = config.server.socket_timeout;
        let settings = WorkerSettings {
            max_requests: config.server.max_requests_per_child,
            max_connections: usize::try_from(config.server.max_connections).unwrap_or(usize::MAX),
            grace: grace(&config),
        };
        prefork::run_worker(listeners, settings, move |stream, peer, stop| {
            let (policy, relay, allow) =
                (Arc::clone(&policy), Arc::clone(&relay), Arc::clone(&allow));
            let is_http = http_addr.is_some() && stream.local_addr().ok() == http_addr;
            async move {
                if is_http {
                    http::serve(stream, peer, allow, relay, socket_timeout).await;
                } else {
                    conn::serve(stream, peer, policy, relay, stop).await;
                }
            }
        })
    }
}

fn grace(config: &ProxyConfig) -> Duration {
    config.client.thread_timeout + Duration::from_secs(2)
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(what) = cli.server.generate {
        use clap::CommandFactory;
        let cmd = Cli::command().version(deploy_common::version!());
        deploy_common::cli::generate_in_section(cmd, what, "8", &mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = load(&cli)?;
    let current = generation(config)?;
    let config = Arc::clone(&current.config);
    if let Some(warning) = &current.policy.key_warning {
        eprintln!("deploy-proxy: warning: {warning}");
    }
    if cli.server.print_config {
        print!("{}", deploy_common::config::dump::proxy(&config));
    }
    if cli.server.check || cli.server.print_config {
        let problems = deploy_common::config::check::proxy_problems(&config);
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("deploy-proxy: {p}");
            }
            anyhow::bail!("{}: {} problem(s)", config.path.display(), problems.len());
        }
        let groups = config.api.server_groups().count();
        println!(
            "{}: OK ({} API keys, {} server groups, proxy id {})",
            config.path.display(),
            config.api.key_count(),
            groups,
            current.relay.id
        );
        return Ok(ExitCode::SUCCESS);
    }
    let weak = deploy_common::config::check::proxy_default_secrets(&config);
    if let Some(refusal) =
        deploy_common::config::check::secrets_refusal(&config.path, &weak, &config.server)
    {
        anyhow::bail!("refusing to start: {refusal}");
    }
    if !weak.is_empty() {
        eprintln!(
            "deploy-proxy: warning: {} is a default secret (allow_default_secrets = on)",
            weak.join(", ")
        );
    }
    let server = config.server.clone();
    let startup = daemon::Startup {
        server: &server,
        program: "deploy-proxy",
        version: deploy_common::version!(),
        foreground: cli.server.foreground(),
        verbosity: cli.server.verbosity(),
        extra: config.client.http_listen.into_iter().collect(),
        grace: grace(&config),
        server_sockets: true,
    };
    drop(config);
    let mut program = ProxyProgram { cli, current };
    let code = daemon::run(startup, &mut program)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
