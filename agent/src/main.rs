//! deploy-agent: the daemon on every host. It binds its sockets, drops privileges and
//! forks workers that serve orders over the v2 protocol (and, when enabled, the
//! original's v1 wire).
//!
//! # Layout
//!
//! * [`cli`]: flags, applied over the INI file.
//! * [`nats`]: `[nats]`: one worker serves the orders arriving over NATS.
//! * [`order`]: one file per order, and the [`order::Agent`] handler.
//! * [`stretcher`]: `deploy-agent stretcher`, stretcher's event mode (Serf, Consul).
//! * `main`: start-up (config, bind, daemonize, privileges, pid file) and the prefork
//!   master from `deploy_common::server::prefork`.

mod cli;
mod nats;
mod order;
mod stretcher;

use anyhow::{Context, Result};
use cli::Cli;
use deploy_common::config::AgentConfig;
use deploy_common::report;
use deploy_common::server::conn::{self, Policy};
use deploy_common::server::prefork::{self, Program, WorkerSettings};
use deploy_common::server::{daemon, title};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == order::RUNNER_SUBCOMMAND) {
        let code = deploy_common::rsync::runner_main(args.get(2..).unwrap_or_default());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if args.get(1).is_some_and(|a| a == "stretcher") {
        return stretcher::main(args.get(2..).unwrap_or_default());
    }
    let mut cli: Cli = deploy_common::cli::parse(deploy_common::version!());
    // The daemon changes to /; keep the configuration findable for SIGHUP.
    if let Ok(path) = std::path::absolute(&cli.path) {
        cli.path = path;
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("deploy-agent: error: {}", report::chain(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

fn load(cli: &Cli) -> Result<AgentConfig> {
    let mut config = AgentConfig::load(&cli.path)?;
    cli.server.apply(&mut config.server);
    Ok(config)
}

/// The connection policy and the order handler of one worker generation.
struct Generation {
    config: Arc<AgentConfig>,
    policy: Arc<Policy>,
}

fn generation(config: AgentConfig) -> Result<Generation> {
    let policy = Policy::new(&config.server, config.allow_hosts.clone(), true, &["agent"])
        .with_context(|| config.path.display().to_string())?;
    Ok(Generation {
        config: Arc::new(config),
        policy: Arc::new(policy),
    })
}

struct AgentProgram {
    cli: Cli,
    current: Generation,
}

impl Program for AgentProgram {
    fn reload(&mut self) -> Result<(), String> {
        let config = load(&self.cli).map_err(|e| report::chain(e.as_ref()).to_string())?;
        if let Some(refusal) = deploy_common::config::check::scenarios_refusal(&config) {
            return Err(refusal);
        }
        let old = &self.current.config.server;
        if config.server.addr != old.addr
            || config.server.port != old.port
            || config.server.listen != old.listen
        {
            tracing::warn!("listen addresses changed; they take effect only after a restart");
        }
        self.current = generation(config).map_err(|e| report::chain(e.as_ref()).to_string())?;
        Ok(())
    }

    fn worker(&self, listeners: &[TcpListener]) -> i32 {
        let config = Arc::clone(&self.current.config);
        title::set_title(&format!("{} worker process", config.server.process_name));
        let agent = match order::Agent::new(Arc::clone(&config)) {
            Ok(agent) => Arc::new(agent),
            Err(e) => {
                tracing::error!(cause = %e, "worker cannot start");
                return 1;
            }
        };
        if config.server.allow_deploy {
            order::release::start_sweeper(config.server.state_dir.clone());
        }
        let policy = Arc::clone(&self.current.policy);
        let settings = WorkerSettings {
            max_requests: config.server.max_requests_per_child,
            max_connections: usize::try_from(config.server.max_connections).unwrap_or(usize::MAX),
            grace: grace(&config),
        };
        let task = nats::task(&config, &agent, &policy);
        prefork::run_worker_with(
            listeners,
            settings,
            move |stream, peer, stop| {
                conn::serve(stream, peer, Arc::clone(&policy), Arc::clone(&agent), stop)
            },
            task,
        )
    }
}

fn grace(config: &AgentConfig) -> Duration {
    config
        .server
        .max_process_timeout
        .unwrap_or(Duration::from_secs(30))
        .min(Duration::from_secs(30))
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(what) = cli.server.generate {
        use clap::CommandFactory;
        let cmd = Cli::command().version(deploy_common::version!());
        deploy_common::cli::generate_in_section(cmd, what, "8", &mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = load(&cli)?;
    if cli.print_nats_key {
        print!("{}", nats::print_key(&config)?);
        return Ok(ExitCode::SUCCESS);
    }
    let current = generation(config)?;
    let config = Arc::clone(&current.config);
    if let Some(warning) = &current.policy.key_warning {
        eprintln!("deploy-agent: warning: {warning}");
    }
    if cli.server.print_config {
        print!("{}", deploy_common::config::dump::agent(&config));
    }
    if cli.server.check || cli.server.print_config {
        let problems = deploy_common::config::check::agent_problems(&config);
        if !problems.is_empty() {
            for p in &problems {
                eprintln!("deploy-agent: {p}");
            }
            anyhow::bail!("{}: {} problem(s)", config.path.display(), problems.len());
        }
        println!(
            "{}: OK ({} groups, {} jobs, {} allowed host entries, {} allowed paths)",
            config.path.display(),
            config.groups.len(),
            config.jobs.len(),
            config.allow_hosts.nets().len(),
            config.allow_paths.roots().len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let weak = deploy_common::config::check::agent_default_secrets(&config);
    if let Some(refusal) =
        deploy_common::config::check::secrets_refusal(&config.path, &weak, &config.server)
    {
        anyhow::bail!("refusing to start: {refusal}");
    }
    if let Some(refusal) = deploy_common::config::check::scenarios_refusal(&config) {
        anyhow::bail!("refusing to start: {refusal}");
    }
    if !weak.is_empty() {
        eprintln!(
            "deploy-agent: warning: {} is a default secret (allow_default_secrets = on)",
            weak.join(", ")
        );
    }
    let server = config.server.clone();
    let startup = daemon::Startup {
        server: &server,
        program: "deploy-agent",
        version: deploy_common::version!(),
        foreground: cli.server.foreground(),
        verbosity: cli.server.verbosity(),
        extra: Vec::new(),
        grace: grace(&config),
        // `[nats] tcp = off`: reached over NATS only, no port at all.
        server_sockets: config.nats.as_ref().is_none_or(|n| n.tcp),
    };
    drop(config);
    let mut program = AgentProgram { cli, current };
    let code = daemon::run(startup, &mut program)?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
