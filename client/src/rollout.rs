//! `--order=deploy`: a fleet-wide rollout, not N independent deploys.
//!
//! ```text
//! waves      --canary=K first, then --batch=N|P% (default: every host in one wave)
//! per wave   prepare on every host (fetch, verify, unpack, pre; one release id for all)
//!            ─► any host failed (strict; --skip-unreachable: unreachable ones left out)?
//!                  abort the prepared releases, stop (exit 1 or 3): nobody switched
//!            ─► switch every prepared host at once (one round trip)
//!            ─► a host failed to switch? roll back the hosts of this wave that did
//!               (unless --no-rollback), stop
//! ```
//!
//! Every host gets the same release stamp (the time part of the id; the agent adds the
//! checksum's first digits), so one `switch` request serves the hosts behind a proxy
//! too. Through a proxy the group is one wave. The output is the usual per-host
//! document of the last phase each host went through; a summary on standard error
//! gives the switch skew (latest minus earliest switch instant, from the hosts' own
//! clocks).

use std::collections::BTreeMap;
use std::io::{self, IsTerminal as _, Write as _};
use std::sync::Arc;

use anyhow::bail;
use deploy_common::fanout::{Fanout, FanoutEvent, HostResult};
use deploy_common::order::release::{Phase, MAX_SWITCH_WAIT_MS};
use deploy_common::order::Request;
use deploy_common::target::Target;
use deploy_common::transport::{Outcome, Transport, Verdict};
use deploy_common::wire::message::Event;

use crate::cli::{Config, Format};
use crate::progress::Live;

/// The waves of a rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `--batch`: `N` or `P%`.
    pub batch: Option<String>,
    /// `--canary`: the first wave's size.
    pub canary: Option<usize>,
    /// Roll back a wave's switched hosts when one of them fails to switch.
    pub rollback_on_failure: bool,
}

impl Plan {
    /// Checks the flags.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(batch) = &self.batch {
            if batch_size(batch, 100).is_none() {
                bail!("--batch {batch:?}: expected a number of hosts (5) or a percentage (20%)");
            }
        }
        if self.canary == Some(0) {
            bail!("--canary needs at least one host");
        }
        Ok(())
    }

    /// The waves over `n` hosts, as index lists.
    pub fn waves(&self, n: usize) -> Vec<Vec<usize>> {
        let mut waves = Vec::new();
        let mut next = 0;
        if let Some(k) = self.canary {
            let k = k.min(n);
            waves.push((0..k).collect());
            next = k;
        }
        let size = self
            .batch
            .as_deref()
            .and_then(|b| batch_size(b, n))
            .unwrap_or(n)
            .max(1);
        while next < n {
            let end = (next + size).min(n);
            waves.push((next..end).collect());
            next = end;
        }
        waves
    }
}

/// `N` or `P%` of `n` hosts (at least one).
fn batch_size(text: &str, n: usize) -> Option<usize> {
    match text.strip_suffix('%') {
        Some(p) => {
            let p: usize = p.trim().parse().ok().filter(|p| (1..=100).contains(p))?;
            Some((n * p).div_ceil(100).max(1))
        }
        None => text.trim().parse().ok().filter(|&k| k > 0),
    }
}

/// One host's record of a phase: the agent behind a proxy, or the target itself.
#[derive(Debug, Clone)]
struct Record {
    result: HostResult,
    /// The target it was reached through (its index).
    target: usize,
}

impl Record {
    fn ok(&self) -> bool {
        self.result.outcome.verdict() == Verdict::Succeeded
    }

    fn field(&self, key: &str) -> Option<String> {
        let map = match &self.result.outcome {
            Outcome::Relayed { record, .. } => match record.get("content") {
                Some(serde_json::Value::Object(map)) => Some(map.clone()),
                _ => None,
            },
            other => match other.reply().map(|r| r.content()) {
                Some(serde_json::Value::Object(map)) => Some(map),
                _ => None,
            },
        }?;
        map.get(key).and_then(|v| v.as_str()).map(str::to_owned)
    }
}

/// What a rollout shows on standard error while it runs.
struct Show {
    /// Bars and lines; `None`: nothing (`-q`, or neither a terminal nor `--follow`).
    live: Option<Live>,
    /// The hosts' log lines too (`--follow`), not only their progress.
    lines: bool,
}

impl Show {
    /// Shows nothing (aborts and rollbacks run quietly).
    fn off() -> Show {
        Show {
            live: None,
            lines: false,
        }
    }

    fn event(&mut self, index: usize, host: &str, event: &Event) {
        let Some(live) = &mut self.live else {
            return;
        };
        match event {
            Event::Line { .. } if !self.lines => {}
            other => live.event(index, host, other),
        }
    }

    /// Ends a host's bar with the phase it reached.
    fn finish(&mut self, phase: Phase, record: &HostResult) {
        let Some(live) = &mut self.live else {
            return;
        };
        let message = match (record.outcome.verdict(), phase) {
            (Verdict::Succeeded, Phase::Prepare) => "prepared".to_owned(),
            (Verdict::Succeeded, _) => "done".to_owned(),
            _ => record.outcome.to_string(),
        };
        live.finish(record.index, &record.host, message);
    }
}

/// Sends `request` to `targets` and returns every host's result (an agent relayed by a
/// proxy counts as a host; the proxy's own summary does not).
async fn phase(
    transport: &Arc<dyn Transport>,
    targets: &[Target],
    request: Request,
    show: &mut Show,
) -> Vec<Record> {
    let which = request
        .release
        .as_deref()
        .map(|s| s.phase)
        .unwrap_or_default();
    let fanout = Fanout::new(Arc::clone(transport)).with_concurrency(targets.len().max(1));
    let mut events = fanout.run(targets.to_vec(), request);
    let mut direct: BTreeMap<usize, HostResult> = BTreeMap::new();
    let mut relayed: BTreeMap<usize, Vec<HostResult>> = BTreeMap::new();
    while let Some(event) = events.recv().await {
        match event {
            FanoutEvent::Event {
                index,
                event: Event::Host {
                    host, result, via, ..
                },
                ..
            } => {
                let record = match result {
                    serde_json::Value::Object(map) => map,
                    other => {
                        let mut map = serde_json::Map::new();
                        map.insert("content".into(), other);
                        map
                    }
                };
                let result = HostResult {
                    index,
                    host,
                    outcome: Outcome::Relayed { record, via },
                    elapsed: std::time::Duration::ZERO,
                };
                show.finish(which, &result);
                relayed.entry(index).or_default().push(result);
            }
            FanoutEvent::Event { index, host, event } => show.event(index, &host, &event),
            FanoutEvent::Done(result) => {
                show.finish(which, &result);
                direct.insert(result.index, result);
            }
        }
    }
    let mut out = Vec::new();
    for (index, result) in direct {
        let proxied_ok = result.outcome.reply().is_some_and(|r| r.code == 200);
        match relayed.remove(&index) {
            Some(agents) if proxied_ok && !agents.is_empty() => {
                out.extend(agents.into_iter().map(|result| Record {
                    result,
                    target: index,
                }));
            }
            _ => out.push(Record {
                result,
                target: index,
            }),
        }
    }
    out
}

fn with_phase(base: &Request, phase: Phase, dest: &str, id: &str) -> Request {
    let mut request = base.clone();
    if let Some(spec) = request.release.as_deref_mut() {
        spec.phase = phase;
        if !dest.is_empty() {
            spec.dest = dest.to_owned();
        }
        spec.id = id.to_owned();
        if phase != Phase::Prepare {
            spec.manifest.clear();
            spec.manifest_url.clear();
        }
    }
    request
}

/// How far ahead of now the switch instant is set for `hosts` hosts: time for the
/// requests to fan out (through a proxy, or over new SSH sessions), bounded by what a
/// host accepts ([`MAX_SWITCH_WAIT_MS`]).
fn switch_lead_ms(hosts: usize, ssh: bool) -> i64 {
    deploy_common::order::at::lead_ms(hosts, ssh, MAX_SWITCH_WAIT_MS / 2)
}

fn at_instant(mut request: Request, at: i64) -> Request {
    if let Some(spec) = request.release.as_deref_mut() {
        spec.at = Some(at);
    }
    request
}

/// Runs the rollout; returns the exit code.
pub async fn run(config: Config, plan: Plan) -> io::Result<u8> {
    let Config {
        targets,
        request,
        transport,
        skip_unreachable,
        format,
        quiet,
        ..
    } = config;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    // On a terminal each host's progress shows (bytes fetched, then the phase reached):
    // the hosts are asked to stream, and their log lines show only with --follow.
    let lines = request.follow && !quiet;
    let bars =
        !quiet && matches!(format, Format::Json | Format::Text) && io::stderr().is_terminal();
    let mut request = request;
    request.follow |= bars;
    let width = targets
        .iter()
        .map(|t| t.to_string().len())
        .max()
        .unwrap_or_default();
    let mut show = Show {
        live: (bars || lines).then(|| Live::new(bars, width)),
        lines,
    };
    let mut finals: Vec<HostResult> = Vec::new();
    let mut code = crate::EXIT_OK;
    let mut switched_total = 0usize;
    // Hosts: the agents behind a proxy count one each, targets not reached count too.
    let mut hosts_total = targets.len();
    let mut notes: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    for (n, wave) in plan.waves(targets.len()).into_iter().enumerate() {
        let wave_targets: Vec<Target> = wave
            .iter()
            .filter_map(|&i| targets.get(i).cloned())
            .collect();
        // Phase 1: prepare everywhere.
        let prepare_start = std::time::Instant::now();
        let prepared = phase(
            &transport,
            &wave_targets,
            with_phase(&request, Phase::Prepare, "", &stamp),
            &mut show,
        )
        .await;
        let prepare_time = prepare_start.elapsed();
        hosts_total = hosts_total - wave_targets.len() + prepared.len();
        let (ok, failed): (Vec<&Record>, Vec<&Record>) = prepared.iter().partition(|r| r.ok());
        let blocking: Vec<&&Record> = failed
            .iter()
            .filter(|r| {
                !(skip_unreachable && matches!(r.result.outcome, Outcome::Unreachable { .. }))
            })
            .collect();
        // Every prepared host names its release alike: one switch request per id. Its
        // dest is sent when the hosts share it; hosts whose dests differ (each renders
        // the manifest with its own environment; or agents behind a proxy, which one
        // request reaches) find theirs from the id.
        let mut by_id: BTreeMap<String, (Option<String>, Vec<&Record>)> = BTreeMap::new();
        for r in &ok {
            let dest = r.field("dest").unwrap_or_default();
            let entry = by_id
                .entry(r.field("id").unwrap_or_default())
                .or_insert_with(|| (Some(dest.clone()), Vec::new()));
            if entry.0.as_deref() != Some(dest.as_str()) {
                entry.0 = None;
            }
            entry.1.push(r);
        }
        let dest_of = |d: &Option<String>| d.clone().unwrap_or_default();
        if !blocking.is_empty() {
            for (id, (dest, _)) in &by_id {
                let _ = phase(
                    &transport,
                    &wave_targets,
                    with_phase(&request, Phase::Abort, &dest_of(dest), id),
                    &mut Show::off(),
                )
                .await;
            }
            notes.push(format!(
                "wave {}: prepare failed on {} of {} hosts ({}); nobody in it switched, prepared releases discarded",
                n + 1,
                blocking.len(),
                prepared.len(),
                blocking.iter().map(|r| r.result.host.as_str()).collect::<Vec<_>>().join(", ")
            ));
            code = if blocking
                .iter()
                .any(|r| r.result.outcome.verdict() == Verdict::HostFailed)
            {
                crate::EXIT_HOST_FAILED
            } else {
                crate::EXIT_ORDER_FAILED
            };
            finals.extend(prepared.into_iter().map(|r| r.result));
            break;
        }
        // Phase 2: switch every prepared host at once: at one instant, far enough
        // ahead for the requests to reach every host (one that gets it late switches
        // as soon as it does).
        let switch_start = std::time::Instant::now();
        let ssh = wave_targets
            .iter()
            .any(|t| t.scheme == deploy_common::target::Scheme::Ssh);
        let at = chrono::Utc::now().timestamp_millis() + switch_lead_ms(ok.len(), ssh);
        let mut switched: Vec<Record> = Vec::new();
        for (id, (dest, hosts)) in &by_id {
            let mut ts: Vec<usize> = hosts.iter().map(|r| r.target).collect();
            ts.sort_unstable();
            ts.dedup();
            let group: Vec<Target> = ts
                .iter()
                .filter_map(|&i| wave_targets.get(i).cloned())
                .collect();
            switched.extend(
                phase(
                    &transport,
                    &group,
                    at_instant(with_phase(&request, Phase::Switch, &dest_of(dest), id), at),
                    &mut show,
                )
                .await,
            );
        }
        let switch_time = switch_start.elapsed();
        let instants: Vec<i64> = switched
            .iter()
            .filter(|r| r.ok())
            .filter_map(|r| r.field("switched_at")?.parse().ok())
            .collect();
        let skew = match (instants.iter().min(), instants.iter().max()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        };
        notes.push(format!(
            "wave {}: {} hosts prepared in {:.2}s, {} switched in {:.0} ms (switch skew {skew} ms)",
            n + 1,
            ok.len(),
            prepare_time.as_secs_f64(),
            instants.len(),
            switch_time.as_secs_f64() * 1000.0,
        ));
        let switch_failed: Vec<&Record> = switched.iter().filter(|r| !r.ok()).collect();
        switched_total += instants.len();
        if !switch_failed.is_empty() {
            code = crate::EXIT_ORDER_FAILED;
            if plan.rollback_on_failure {
                // Each switched host goes back on its own dest; behind a proxy, only
                // the agents that switched are named (`hosts:`), so that a host that
                // failed to switch is not rolled back past its current release.
                let mut back_groups: BTreeMap<(String, usize), Vec<String>> = BTreeMap::new();
                for r in switched.iter().filter(|r| r.ok()) {
                    let relayed = matches!(r.result.outcome, Outcome::Relayed { .. });
                    back_groups
                        .entry((r.field("dest").unwrap_or_default(), r.target))
                        .or_default()
                        .extend(relayed.then(|| r.result.host.clone()));
                }
                let mut rolled_back = 0;
                for ((dest, target), agents) in back_groups {
                    let Some(t) = wave_targets.get(target).cloned() else {
                        continue;
                    };
                    let mut back = with_phase(&request, Phase::All, &dest, "");
                    back.order = "rollback".into();
                    if !agents.is_empty() {
                        back.args = format!("hosts:{}", agents.join(","));
                    }
                    let rolled = phase(&transport, &[t], back, &mut Show::off()).await;
                    rolled_back += rolled.iter().filter(|r| r.ok()).count();
                }
                notes.push(format!(
                    "wave {}: switch failed on {}; {rolled_back} hosts rolled back",
                    n + 1,
                    switch_failed
                        .iter()
                        .map(|r| r.result.host.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                ));
            }
            finals.extend(switched.into_iter().map(|r| r.result));
            finals.extend(failed.into_iter().map(|r| r.result.clone()));
            break;
        }
        finals.extend(switched.into_iter().map(|r| r.result));
        finals.extend(failed.into_iter().map(|r| r.result.clone()));
    }
    notes.push(format!(
        "{switched_total} of {hosts_total} hosts switched in {:.2}s",
        started.elapsed().as_secs_f64()
    ));
    let mut out = io::BufWriter::new(io::stdout().lock());
    let refs: Vec<&HostResult> = finals.iter().collect();
    match format {
        Format::Json => {
            crate::render::write_perl_pretty(&mut out, &crate::render::document("deploy", &refs))?
        }
        Format::Text | Format::Lines | Format::Table => {
            crate::render::write_text(&mut out, "deploy", &refs)?
        }
        Format::Jsonl => {
            for r in &refs {
                serde_json::to_writer(&mut out, &crate::render::result_line("deploy", r))
                    .map_err(io::Error::other)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    if !quiet {
        for note in notes {
            eprintln!("deploy-client: {note}");
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves() {
        let plan = |batch: Option<&str>, canary| Plan {
            batch: batch.map(str::to_owned),
            canary,
            rollback_on_failure: true,
        };
        assert_eq!(plan(None, None).waves(3), vec![vec![0, 1, 2]]);
        assert_eq!(
            plan(Some("2"), None).waves(5),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(
            plan(Some("50%"), Some(1)).waves(5),
            vec![vec![0], vec![1, 2, 3], vec![4]]
        );
        assert!(plan(Some("0"), None).check().is_err());
        assert!(plan(Some("150%"), None).check().is_err());
    }
}
