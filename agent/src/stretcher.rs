//! `deploy-agent stretcher`: stretcher's event mode. It reads one event on stdin — a
//! line with a manifest URL (a Serf user-event handler, `echo URL | …`) or a Consul
//! event JSON array (`CONSUL_INDEX` set or first byte `[`: the last event's payload) —
//! and deploys that manifest on this host, with the agent's configuration deciding what
//! is allowed (`allow_deploy`, `[deploy]`, `[allow::paths]`), exactly as a `deploy`
//! order would.
//!
//! ```text
//! serf agent -event-handler 'user:deploy=deploy-agent stretcher --path /etc/deploy/deploy_agent.ini'
//! serf event deploy https://artifacts.example.org/app.yml
//! ```
//!
//! Exit codes as stretcher's: 1 on failure, 0 on success, and always 0 when
//! `CONSUL_INDEX` is set (so `consul watch` does not treat it as a handler error).
//! Unlike stretcher, an event delivered twice (Consul `ID`, or Serf's `SERF_USER_LTIME`
//! with the event's name) is applied once: the identities of applied events are kept in
//! `<state_dir>/deploy/applied-events`.

use crate::order::{self, Agent};
use clap::Parser;
use deploy_common::config::AgentConfig;
use deploy_common::order::release::{Phase, ReleaseSpec};
use deploy_common::order::Request;
use deploy_common::server::conn::Events;
use deploy_release::event;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// deploy-agent stretcher: deploy the manifest named by one event on stdin.
#[derive(Debug, Parser)]
#[command(name = "deploy-agent stretcher")]
pub struct StretcherCli {
    /// The agent's configuration file (INI).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/deploy/deploy_agent.ini"
    )]
    pub path: PathBuf,
    /// Sleep a random time in [0, SECS) before reading the event ([deploy] random_delay).
    #[arg(long, value_name = "SECS")]
    pub random_delay: Option<u64>,
    /// Download rate limit, e.g. 10M ([deploy] max_bandwidth).
    #[arg(long, value_name = "SIZE")]
    pub max_bandwidth: Option<String>,
    /// Further attempts to open the source ([deploy] retry).
    #[arg(long, value_name = "N")]
    pub retry: Option<u32>,
    /// Seconds between attempts ([deploy] retry_wait).
    #[arg(long, value_name = "SECS")]
    pub retry_wait: Option<u64>,
    /// Limit of the download phase in seconds ([deploy] timeout).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Apply an event even if it was applied before.
    #[arg(long)]
    pub again: bool,
}

/// Runs the subcommand with `args` (after `stretcher`).
pub fn main(args: &[std::ffi::OsString]) -> ExitCode {
    let consul = std::env::var_os("CONSUL_INDEX").is_some();
    let cli = match StretcherCli::try_parse_from(
        std::iter::once(std::ffi::OsString::from("deploy-agent stretcher"))
            .chain(args.iter().cloned()),
    ) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(2);
        }
    };
    let failed = match run(cli, consul) {
        Ok(()) => false,
        Err(e) => {
            eprintln!("deploy-agent stretcher: {e}");
            true
        }
    };
    if failed && !consul {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn run(cli: StretcherCli, consul: bool) -> Result<(), String> {
    let mut config = AgentConfig::load(&cli.path).map_err(|e| e.to_string())?;
    let d = &mut config.deploy;
    if let Some(s) = cli.random_delay {
        d.random_delay = std::time::Duration::from_secs(s);
    }
    if let Some(size) = &cli.max_bandwidth {
        d.max_bandwidth = Some(
            deploy_common::config::agent::parse_size(size)
                .ok_or_else(|| format!("--max-bandwidth {size:?}: expected a size such as 10M"))?,
        );
    }
    if let Some(n) = cli.retry {
        d.retry = n;
    }
    if let Some(s) = cli.retry_wait {
        d.retry_wait = std::time::Duration::from_secs(s);
    }
    if let Some(s) = cli.timeout {
        d.timeout = Some(std::time::Duration::from_secs(s));
    }
    // As stretcher: the random delay comes before the event is read.
    let delay = d.random_delay;
    d.random_delay = std::time::Duration::ZERO;
    if !delay.is_zero() {
        let wait = delay.mul_f64(f64::from(rand_u32()) / f64::from(u32::MAX));
        std::thread::sleep(wait);
    }
    let mut input = Vec::new();
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("cannot read the event: {e}"))?;
    let serf_name = std::env::var("SERF_USER_EVENT").unwrap_or_default();
    let serf_ltime = std::env::var("SERF_USER_LTIME").unwrap_or_default();
    let serf = (!serf_ltime.is_empty()).then_some((serf_name.as_str(), serf_ltime.as_str()));
    let ev = event::parse(&input, consul, serf).map_err(|e| e.to_string())?;
    let applied = event::Applied::new(
        config
            .server
            .state_dir
            .join("deploy")
            .join("applied-events"),
    );
    if let Some(id) = &ev.id {
        if !cli.again && applied.contains(id) {
            eprintln!("deploy-agent stretcher: event {id} was applied already; skipped");
            return Ok(());
        }
    }
    eprintln!("deploy-agent stretcher: deploying {}", ev.url);
    let agent = Agent::new(Arc::new(config))?;
    let request = Request {
        order: "deploy".into(),
        release: Some(Box::new(ReleaseSpec {
            manifest_url: ev.url.clone(),
            phase: Phase::All,
            who: format!("stretcher event {}", ev.id.as_deref().unwrap_or("-")),
            ..ReleaseSpec::default()
        })),
        ..Request::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let reply = runtime.block_on(order::release::deploy(
        &agent,
        peer,
        &request,
        &Events::none(),
    ));
    match &reply.body {
        deploy_common::order::Body::Json(map) => {
            if let Some(serde_json::Value::String(log)) = map.get("log") {
                use base64::Engine as _;
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(log) {
                    eprint!("{}", String::from_utf8_lossy(&bytes));
                }
            }
        }
        deploy_common::order::Body::Text(text) => eprintln!("{text}"),
        deploy_common::order::Body::Empty => {}
    }
    if reply.code != 200 {
        return Err(format!("deploy of {} failed ({})", ev.url, reply.code));
    }
    if let Some(id) = &ev.id {
        applied.add(id).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u32::from_le_bytes(b)
}
