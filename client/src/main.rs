//! `deploy-client`: sends one order to deploy agents (or a deploy proxy) in parallel and
//! prints their results.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`jsonlog`] | `--log-format=json`: log lines as JSON objects |
//! | [`cli`] | flags (the original's and the new ones) → a validated [`cli::Config`] |
//! | [`defaults`] | `~/.config/deploy/client.ini`, `/etc/deploy/client.ini`: defaults under the flags |
//! | [`render`] | `json` (the original's pretty document), `text` (folded), `jsonl` |
//! | [`prompt`] | secrets (`--password`, passphrases) asked with echo off before the prompt |
//! | [`progress`] | `--follow`: streamed lines and rsync progress bars on standard error |
//! | [`detach`] | Ctrl-C while following `rsync`: the transfer goes on; the `rkill` that stops it |
//! | [`lock`] | `--order=lock` and `--lock`: the cluster lock, its heartbeat and release |
//! | [`lines`] | the `lines` format (default for `run`): live, host-prefixed output; failure summary |
//! | [`status`] | connected / running / done counts of SSH hosts on a terminal |
//! | [`ssh_release`] | release orders on `ssh://` hosts: scripts on the agents' layout |
//! | [`verbs`] | `health`, `fetch`, `nodes` as Octopoda-style short forms of `--order=…` |
//! | [`health`] | `health`: clock offsets, the table and the cluster's averages |
//! | [`fetch`] | `fetch`: each host's tar stream extracted into `DIR/<host>/` (confined) |
//! | [`nodes`] | `nodes`: a proxy's agents and their state, as a table |
//! | [`scenario`] | `deploy-client scenario …` and `napp …`: Octopoda scenarios on agents |
//! | [`ssh_napp`] | scenarios on `ssh://` hosts: `napp` pushes and scripts as SSH upload and `run` |
//! | [`ssh_versions`] | NodeApp versions on `ssh://` hosts, kept on the host in the agents' layout |
//!
//! # Design
//!
//! The binary is thin: it builds a transport (a `Mux` of the agent transport and, when
//! an `ssh://` host is given, the SSH one), hands the targets to [`Fanout`], and
//! renders the stream of events and results as they arrive (`lines`, `jsonl`, live
//! lines and bars) or once all hosts are done (`json`, `text`, sorted by host, so
//! that two runs diff cleanly). One single-threaded Tokio runtime runs every host as a task (two worker
//! threads under a lock, see [`lock`]).
//!
//! Exit status: 0 all succeeded, 1 some order failed, 3 some host unreachable, timed out
//! or broke the protocol (over 1), 2 usage or local error, 4 lock not acquired, 5 lock
//! lost, 130 interrupted under a lock or while following a transfer; a closed standard
//! output (`BrokenPipe`) ends the run quietly with 0.

mod cli;
mod defaults;
mod detach;
mod failover;
mod fetch;
mod health;
mod jsonlog;
mod lines;
mod lock;
mod nodes;
mod progress;
mod prompt;
mod proxy_store;
mod render;
mod rollout;
mod scenario;
mod ssh_napp;
mod ssh_release;
mod ssh_versions;
mod status;
mod verbs;

use deploy_common::report;
use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::sync::Arc;

use deploy_common::fanout::{Fanout, FanoutEvent, HostResult};
use deploy_common::gate;
use deploy_common::order::{Body, Reply};
use deploy_common::target::Scheme;
use deploy_common::transport::{Outcome, ProxyRecord, Verdict};
use deploy_common::wire::message::Event;
use tracing_subscriber::EnvFilter;

use crate::cli::{Args, Config, Format};
use crate::progress::Live;

/// `lines`: bytes buffered before they are written even while events keep coming.
const FLUSH_AT: usize = 64 << 10;

/// Exit status: every host succeeded.
const EXIT_OK: u8 = 0;
/// Exit status: some order failed.
const EXIT_ORDER_FAILED: u8 = 1;
/// Exit status: usage or local configuration error.
const EXIT_USAGE: u8 = 2;
/// Exit status: some host could not be reached, timed out or broke the protocol.
const EXIT_HOST_FAILED: u8 = 3;
/// Exit status: interrupted (SIGINT/SIGTERM), 128 + SIGINT.
const EXIT_INTERRUPTED: u8 = lock::EXIT_INTERRUPTED;

fn main() -> ExitCode {
    if let Some(code) = generate() {
        return code;
    }
    if let Some(code) = subcommand() {
        return code;
    }
    let mut args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("deploy-client: error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_tracing(args.log_level(), args.log_format);
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(std::path::PathBuf::from);
    let env = std::env::var(defaults::ENV).ok();
    match defaults::load(env.as_deref(), home.as_deref()) {
        Ok(defaults) => defaults.apply(&mut args),
        Err(e) => {
            eprintln!("deploy-client: error: {}", report::chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    }
    tracing::debug!(
        version = deploy_common::version!(),
        "deploy-client starting"
    );
    let mut config = match args.into_config(cli::read_stdin) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("deploy-client: error: {}", report::chain(e.as_ref()));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Under a lock, connections (an SSH host's lock session among them) are served by
    // worker threads, so that a blocked standard output (a paused pager) stalls the
    // output but never the heartbeat; otherwise one thread does everything.
    let mut builder = if config.lock.is_some() {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("deploy-client: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let status = match (config.lock.take(), config.rollout.take()) {
        (Some(mode), _) => runtime.block_on(lock::run(config, mode)),
        (None, Some(plan)) => runtime.block_on(rollout::run(config, plan)),
        (None, None) => runtime.block_on(run(config)),
    };
    match status {
        Ok(status) => ExitCode::from(status),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("deploy-client: error: cannot write the output: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// The flags, after the short forms (`health`, `fetch`, `nodes`) are rewritten
/// ([`verbs`]); a usage error exits as clap's do.
fn parse_args() -> Result<Args, verbs::VerbError> {
    use clap::{CommandFactory, FromArgMatches};
    let argv = verbs::rewrite(std::env::args_os().collect())?;
    let mut cmd =
        deploy_common::cli::utf8_strings(Args::command()).version(deploy_common::version!());
    let mut matches = cmd.clone().get_matches_from(argv);
    Ok(Args::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut cmd).exit()))
}

/// `deploy-client scenario …` / `napp …` (see [`cli::SUBCOMMANDS`]): `None` when the
/// first argument names none, and the flag-driven order runs.
fn subcommand() -> Option<ExitCode> {
    use clap::Parser as _;
    let first = std::env::args_os().nth(1)?;
    if !cli::SUBCOMMANDS.iter().any(|s| first == *s) {
        return None;
    }
    let sub = cli::Sub::parse();
    init_tracing(sub.connect.log_level(), cli::LogFormat::Text);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("deploy-client: error: cannot start the runtime: {e}");
            return Some(ExitCode::from(EXIT_USAGE));
        }
    };
    let connect = sub.connect;
    let status = runtime.block_on(async move {
        match sub.command {
            cli::Command::Scenario(cmd) => scenario::scenario(cmd, connect).await,
            cli::Command::Napp(cmd) => scenario::napp(cmd, connect).await,
        }
    });
    Some(ExitCode::from(status))
}

/// Logs to standard error at the level of the flags, unless `RUST_LOG` says otherwise,
/// as text or as JSON lines (`--log-format`).
fn init_tracing(level: &str, format: cli::LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    if format == cli::LogFormat::Json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(io::stderr)
            .event_format(jsonlog::JsonFormat)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        // Colours only on a terminal: a pipe or a file gets plain text.
        .with_ansi(deploy_common::server::log::colours_on_stderr())
        .with_target(false)
        .init();
}

/// The hidden `--generate=man|bash|zsh|fish` (before normal parsing, since `--order`
/// is otherwise required): writes the man page or completions and exits.
fn generate() -> Option<ExitCode> {
    use clap::{CommandFactory, ValueEnum};
    // `args_os`: `std::env::args` panics on an argument that is not UTF-8; such an
    // argument is left to clap, which refuses it as a usage error.
    let mut args = std::env::args_os().skip(1);
    let what = loop {
        let arg = args.next()?;
        let Some(arg) = arg.to_str() else { continue };
        if let Some(v) = arg.strip_prefix("--generate=") {
            break v.to_owned();
        }
        if arg == "--generate" {
            break args.next()?.to_string_lossy().into_owned();
        }
    };
    let Ok(what) = deploy_common::cli::Generate::from_str(&what, true) else {
        eprintln!("deploy-client: error: --generate takes man, bash, zsh or fish");
        return Some(ExitCode::from(EXIT_USAGE));
    };
    let cmd = Args::command()
        .version(deploy_common::version!())
        .arg(clap::Arg::new("generate").long("generate").hide(true));
    match deploy_common::cli::generate(cmd, what, &mut io::stdout()) {
        Ok(()) => Some(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("deploy-client: error: {e}");
            Some(ExitCode::from(EXIT_USAGE))
        }
    }
}

/// Starts the fan-out: relay waves for `rsync --relay` (`relay`: each server's
/// fan-out), else one delivery per target.
fn start(
    fanout: &Fanout,
    transport: &Arc<dyn deploy_common::transport::Transport>,
    relay: Option<usize>,
    targets: Vec<deploy_common::target::Target>,
    request: deploy_common::order::Request,
) -> tokio::sync::mpsc::Receiver<FanoutEvent> {
    match relay {
        Some(k) => deploy_common::rsync::waves::run(Arc::clone(transport), targets, request, k),
        None => fanout.run(targets, request),
    }
}

/// Runs the order on every target and prints the results; returns the exit status.
async fn run(config: Config) -> io::Result<u8> {
    let Config {
        targets,
        request,
        transport,
        ssh,
        grouped,
        skip_unreachable,
        concurrency,
        format,
        quiet,
        verbose,
        lock: _,
        rollout: _,
        fetch_into,
        relay,
    } = config;
    let mut fetcher = fetch_into.map(fetch::Fetcher::new);
    let run_started = unix_ms();
    let ssh_hosts = targets.iter().filter(|t| t.scheme == Scheme::Ssh).count();
    let mut status = match (&ssh, quiet, format) {
        (Some(ssh), false, Format::Lines | Format::Json | Format::Text) => {
            status::Status::new(ssh.stats(), ssh_hosts)
        }
        _ => None,
    };
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(200));
    let order = request.order.clone();
    let count = targets.len();
    let width = targets
        .iter()
        .map(|t| t.to_string().len())
        .max()
        .unwrap_or_default();
    let mut live = (request.follow && matches!(format, Format::Json | Format::Text))
        .then(|| Live::new(order == "rsync", width));
    let mut lines = (format == Format::Lines)
        .then(|| lines::Lines::new(&order, quiet, grouped).tagged(verbose));
    // Lines are printed as they come (or spilled, --grouped) and the summary needs
    // only the codes: no host's output stays in memory once printed. (Not for other
    // orders: the release orders' replies are parsed.)
    if let Some(ssh) = &ssh {
        if lines.is_some() && matches!(order.as_str(), "run" | "upload" | "sync") {
            ssh.keep_output(0);
        }
    }
    let fanout = Fanout::new(Arc::clone(&transport)).with_concurrency(concurrency);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut results: Vec<Option<HostResult>> = (0..count).map(|_| None).collect();

    // Agents' results relayed by a proxy, per proxy (index), in arrival order.
    let mut relayed: Vec<Vec<HostResult>> = (0..count).map(|_| Vec::new()).collect();
    // Proxies that answered a v1 request with their agents' document: shown as they
    // answered (the original's nested shape), judged by their agents' records.
    let mut nested: Vec<bool> = vec![false; count];
    // Events taken apart from a v1 proxy's document, handled before the next one.
    let mut pending: VecDeque<FanoutEvent> = VecDeque::new();
    // A followed transfer runs on without its follower: on SIGINT/SIGTERM the client
    // says so, and how to stop it, and exits.
    let following_transfer = order == "rsync" && request.follow;
    let hosts_written = following_transfer.then(|| {
        targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    });
    // Strict: an order that starts work starts nowhere unless every host connected
    // (the agents' connect stage; SSH hosts alone meet at their own barrier). A proxy
    // is one host here: it does the same for its agents (`request.strict`).
    let gated = request.strict && targets.iter().any(|t| t.scheme == Scheme::Agent);
    let mut events = if gated {
        let entries = targets
            .iter()
            .map(|t| (Arc::clone(&transport), t.clone()))
            .collect();
        match gate::connect_all(entries, &request, concurrency).await {
            Ok(()) => start(&fanout, &transport, relay, targets, request),
            Err(results) => {
                if !quiet {
                    let culprits: Vec<String> = results
                        .iter()
                        .filter(|r| !r.outcome.reply().is_some_and(lines::is_not_started))
                        .map(|r| r.host.clone())
                        .collect();
                    eprintln!(
                        "deploy-client: error: strict: the order started nowhere, since {} could not be connected to (--skip-unreachable runs on the others)",
                        culprits.join(", ")
                    );
                }
                gate::into_events(results)
            }
        }
    } else {
        start(&fanout, &transport, relay, targets, request)
    };
    // On SIGINT/SIGTERM the commands on SSH hosts are interrupted (SIGINT, then
    // SIGKILL) and the run ends once they have; a second signal quits.
    let mut signals = match (&ssh, following_transfer) {
        (Some(_), _) | (None, true) => Some(lock::Signals::new()?),
        (None, false) => None,
    };
    let mut interrupted = false;
    loop {
        let event = if let Some(event) = pending.pop_front() {
            event
        } else {
            tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
                () = async { if let Some(s) = &mut signals { s.recv().await } }, if signals.is_some() => {
                    if let Some(hosts) = &hosts_written {
                        // Bars off the terminal before the message.
                        drop(live.take());
                        let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
                        eprintln!("{}", detach::message(&argv, hosts));
                        out.flush()?;
                        return Ok(EXIT_INTERRUPTED);
                    }
                    if interrupted {
                        std::process::exit(i32::from(EXIT_INTERRUPTED));
                    }
                    interrupted = true;
                    if let Some(ssh) = &ssh {
                        eprintln!("deploy-client: interrupted; stopping the commands on the SSH hosts (again to quit now)");
                        ssh.interrupt();
                    }
                    continue;
                }
                _ = ticker.tick(), if status.is_some() => {
                    if let Some(status) = &mut status {
                        status.tick();
                    }
                    continue;
                }
            }
        };
        match event {
            FanoutEvent::Event {
                index,
                host: _,
                event:
                    Event::Host {
                        host,
                        order: _,
                        result,
                        via,
                    },
            } => {
                let mut result = result;
                if order == "health" {
                    if let Some(content) = result.get_mut("content").and_then(|c| c.as_object_mut())
                    {
                        let now = unix_ms();
                        health::add_offset(content, now, now.saturating_sub(run_started));
                    }
                }
                let mut result = HostResult {
                    index,
                    host,
                    outcome: Outcome::Relayed {
                        record: match result {
                            serde_json::Value::Object(map) => map,
                            other => {
                                let mut map = serde_json::Map::new();
                                map.insert("content".into(), other);
                                map
                            }
                        },
                        via,
                    },
                    elapsed: std::time::Duration::ZERO,
                };
                if let Some(fetcher) = &mut fetcher {
                    finish_fetch(fetcher, &mut result).await;
                }
                if result.outcome.verdict() == Verdict::HostFailed && !quiet {
                    let skipped = skip_unreachable && is_unreachable(&result.outcome);
                    eprintln!(
                        "deploy-client: {}: {}: {}",
                        if skipped { "skipped" } else { "error" },
                        result.host,
                        result.outcome
                    );
                }
                if format == Format::Jsonl {
                    json_line(&mut out, &render::result_line(&order, &result))?;
                }
                // An agent behind a proxy is done: its held lines (--grouped), or its
                // result if it streamed nothing; its bar ends.
                if let Some(lines) = &mut lines {
                    lines.done(&result, false);
                }
                if let Some(live) = &mut live {
                    live.done(&result);
                }
                if let Some(list) = relayed.get_mut(index) {
                    list.push(result);
                }
            }
            FanoutEvent::Event {
                index: _,
                host,
                event: Event::Data { data },
            } if fetcher.is_some() => {
                if let Some(fetcher) = &mut fetcher {
                    fetcher.data(&host, &data).await;
                }
            }
            FanoutEvent::Event { index, host, event } => match (&mut live, format) {
                (_, Format::Jsonl) => json_line(&mut out, &render::event_line(&host, &event))?,
                (_, Format::Lines) => {
                    if let Some(lines) = &mut lines {
                        lines.event(index, &host, &event);
                    }
                }
                (Some(live), _) => live.event(index, &host, &event),
                (None, _) => {}
            },
            FanoutEvent::Done(result)
                if relayed.get(result.index).is_some_and(Vec::is_empty)
                    && v1_document(&result).is_some() =>
            {
                // A proxy's answer to a v1 request holds its agents' records: each is
                // taken like a record a v2 proxy streams (judged, summarised, shown by
                // jsonl), then the proxy's own result, as it answered.
                let index = result.index;
                for (host, order, record) in v1_document(&result).unwrap_or_default() {
                    pending.push_back(FanoutEvent::Event {
                        index,
                        host: result.host.clone(),
                        event: Event::Host {
                            host: host.to_owned(),
                            order: order.to_owned(),
                            result: serde_json::Value::Object(record.clone()),
                            via: result.host.clone(),
                        },
                    });
                }
                if let Some(flag) = nested.get_mut(index) {
                    *flag = true;
                }
                pending.push_back(FanoutEvent::Done(result));
            }
            FanoutEvent::Done(mut result) => {
                if let Some(fetcher) = &mut fetcher {
                    finish_fetch(fetcher, &mut result).await;
                }
                if order == "health" {
                    if let Outcome::Reply(Reply {
                        code: 200,
                        body: Body::Json(body),
                    }) = &mut result.outcome
                    {
                        let elapsed = u64::try_from(result.elapsed.as_millis()).unwrap_or(0);
                        health::add_offset(body, unix_ms(), elapsed);
                    }
                }
                tracing::info!(
                    host = %result.host,
                    outcome = %result.outcome,
                    elapsed_ms = result.elapsed.as_millis() as u64,
                    "host done"
                );
                if let Some(live) = &mut live {
                    live.done(&result);
                }
                let is_nested = nested.get(result.index).copied().unwrap_or(false);
                if let Some(lines) = lines.as_mut().filter(|_| !is_nested) {
                    lines.done(&result, true);
                }
                if result.outcome.verdict() == Verdict::HostFailed && !quiet {
                    let skipped = skip_unreachable && is_unreachable(&result.outcome);
                    let line = format!(
                        "deploy-client: {}: {}: {}",
                        if skipped { "skipped" } else { "error" },
                        result.host,
                        result.outcome
                    );
                    if let Some(lines) = &mut lines {
                        flush_lines(lines, &mut out, &status)?;
                    }
                    match (&live, &status) {
                        (Some(live), _) => live.println(&line),
                        (None, Some(status)) => status.suspend(|| eprintln!("{line}")),
                        (None, None) => eprintln!("{line}"),
                    }
                }
                // A proxy's own summary is not a host's result once its agents' were
                // streamed.
                let relayed_here = relayed.get(result.index).is_some_and(|r| !r.is_empty())
                    && result.outcome.reply().is_some_and(|r| r.code == 200);
                if format == Format::Jsonl && !relayed_here {
                    json_line(&mut out, &render::result_line(&order, &result))?;
                }
                if let Some(slot) = results.get_mut(result.index) {
                    *slot = Some(result);
                }
            }
        }
        if let Some(lines) = &mut lines {
            // Write when the events pause (or much is buffered), not per line.
            if events.is_empty() || lines.buffered() >= FLUSH_AT {
                flush_lines(lines, &mut out, &status)?;
            }
        }
    }
    if let Some(lines) = &mut lines {
        flush_lines(lines, &mut out, &status)?;
    }
    if let Some(status) = &mut status {
        status.finish();
    }

    // A proxy that relayed its agents' results is replaced by them; a proxy that
    // refused (403…) or failed stays, under its own name. A v1 proxy's document is
    // shown as it came (the original's shape), but its agents' results are what
    // counts.
    let mut expected = 0;
    let mut done: Vec<&HostResult> = Vec::new();
    let mut shown: Vec<&HostResult> = Vec::new();
    for ((result, relayed), is_nested) in results.iter().zip(&relayed).zip(&nested) {
        let proxied_ok = result
            .as_ref()
            .is_some_and(|r| r.outcome.reply().is_some_and(|reply| reply.code == 200));
        if proxied_ok && !relayed.is_empty() {
            expected += relayed.len();
            done.extend(relayed.iter());
            if *is_nested {
                shown.extend(result.iter());
            } else {
                shown.extend(relayed.iter());
            }
        } else {
            expected += 1;
            done.extend(result.iter());
            shown.extend(result.iter());
        }
    }
    // Deterministic documents: by host, not by arrival or command-line order.
    if matches!(format, Format::Json | Format::Text | Format::Table) {
        render::sort_by_host(&mut done);
        render::sort_by_host(&mut shown);
    }
    match format {
        Format::Json => render::write_perl_pretty(&mut out, &render::document(&order, &shown))?,
        Format::Text => render::write_text(&mut out, &order, &shown)?,
        Format::Table if order == "nodes" => {
            for result in &shown {
                match result.outcome.reply() {
                    Some(Reply {
                        code: 200,
                        body: Body::Json(body),
                    }) => out.write_all(nodes::table(&result.host, body, unix_ms()).as_bytes())?,
                    _ => writeln!(out, "{}: {}", result.host, result.outcome)?,
                }
            }
        }
        Format::Table => {
            let rows: Vec<health::Row> = shown.iter().map(|r| health_row(r)).collect();
            out.write_all(health::table(&rows).as_bytes())?;
        }
        Format::Jsonl => {}
        Format::Lines => {
            if let Some(summary) = lines::summary(&done, skip_unreachable) {
                eprintln!("deploy-client: {summary}");
            }
        }
    }
    let unreachable: Vec<&str> = done
        .iter()
        .filter(|r| is_unreachable(&r.outcome))
        .map(|r| r.host.as_str())
        .collect();
    if skip_unreachable && !unreachable.is_empty() && !quiet {
        eprintln!(
            "deploy-client: note: {} unreachable host{} skipped (--skip-unreachable): {}",
            unreachable.len(),
            if unreachable.len() == 1 { "" } else { "s" },
            unreachable.join(", ")
        );
    }
    out.flush()?;
    let judged: Vec<&HostResult> = done
        .iter()
        .copied()
        .filter(|r| !(skip_unreachable && is_unreachable(&r.outcome)))
        .collect();
    if interrupted {
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(exit_status(&judged, expected - (done.len() - judged.len())))
}

/// Unix time now, milliseconds.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Ends `result`'s extraction (`fetch`): a refused or cut archive fails the host.
async fn finish_fetch(fetcher: &mut fetch::Fetcher, result: &mut HostResult) {
    let complete = result.outcome.verdict() == Verdict::Succeeded;
    match fetcher.finish(&result.host, complete).await {
        Some(Ok(summary)) if complete => tracing::info!(
            host = %result.host,
            into = %fetcher.host_dir(&result.host).display(),
            files = summary.files,
            bytes = summary.bytes,
            "fetched"
        ),
        Some(Err(why)) if complete => {
            result.outcome = Outcome::Failed(format!(
                "fetch into {}: {why}",
                fetcher.host_dir(&result.host).display()
            ));
        }
        _ => {}
    }
}

/// A host's row of the health table.
fn health_row(result: &HostResult) -> health::Row {
    let content = match &result.outcome {
        Outcome::Reply(Reply {
            code: 200,
            body: Body::Json(body),
        }) => Some(serde_json::Value::Object(body.clone())),
        Outcome::Relayed { record, .. } if result.outcome.verdict() == Verdict::Succeeded => {
            record.get("content").cloned()
        }
        _ => None,
    };
    let parsed = content.and_then(|c| {
        let offset = c
            .get("offset_ms")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0);
        deploy_common::order::health::Health::from_body(&c).map(|h| (h, offset))
    });
    health::Row {
        host: result.host.clone(),
        health: parsed.ok_or_else(|| result.outcome.to_string()),
    }
}

/// Whether a host could not be reached: directly, or as an agent's record a proxy
/// relayed (`--skip-unreachable` leaves both out of the exit status alike).
fn is_unreachable(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Unreachable { .. } => true,
        Outcome::Relayed { record, .. } => matches!(
            deploy_common::transport::record_outcome(record),
            Outcome::Unreachable { .. }
        ),
        _ => false,
    }
}

/// The agents' records in a proxy's answer to a v1 request (`{agent: {order: record}}`,
/// spec §5.4); `None` for any other result.
fn v1_document(result: &HostResult) -> Option<Vec<ProxyRecord<'_>>> {
    match result.outcome.reply()? {
        Reply {
            code: 200,
            body: Body::Json(map),
        } => deploy_common::transport::proxy_records(map),
        _ => None,
    }
}

/// Writes the `lines` output buffered so far, out of the status line's way.
fn flush_lines(
    lines: &mut lines::Lines,
    out: &mut impl Write,
    status: &Option<status::Status>,
) -> io::Result<()> {
    match status {
        Some(status) => status.suspend(|| lines.flush(out)),
        None => lines.flush(out),
    }
}

/// Writes one compact JSON line and flushes it.
fn json_line(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// 3 if a host failed (or is missing), else 1 if an order failed, else 0.
fn exit_status(results: &[&HostResult], expected: usize) -> u8 {
    let worst = results.iter().map(|r| r.outcome.verdict()).max();
    if results.len() < expected {
        return EXIT_HOST_FAILED;
    }
    match worst {
        Some(Verdict::HostFailed) => EXIT_HOST_FAILED,
        Some(Verdict::OrderFailed) => EXIT_ORDER_FAILED,
        Some(Verdict::Succeeded) | None => EXIT_OK,
    }
}
