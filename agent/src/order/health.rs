//! `health`: the node's CPU, load, memory, disks, uptime and clock, read from `/proc`
//! and `statvfs` (see [`deploy_common::order::health`] for the shape).
//!
//! ```text
//! /proc/stat ─ 200 ms ─ /proc/stat      cpu_percent (the only wait; "brief" skips it)
//! /proc/loadavg /proc/meminfo /proc/uptime /proc/cpuinfo
//! statvfs: /, [allow::paths] roots, rsync groups' src   one entry per file system
//! ```
//!
//! Everything is read in a blocking thread; a file that cannot be read leaves its
//! fields at zero rather than failing the order (a container may hide some of them).

use super::Agent;
use deploy_common::order::health::{self as shape, Disk, Health, BRIEF, CPU_SAMPLE};
use deploy_common::order::{Reply, Request};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

pub(super) async fn run(agent: &Agent, request: &Request) -> Reply {
    let started = std::time::Instant::now();
    let version = format!("deploy-agent {}", deploy_common::version!());
    if request.options.trim() == BRIEF {
        return Reply::ok(
            Health {
                host: hostname(),
                version,
                time_ms: now_ms(),
                took_ms: Some(elapsed_ms(started)),
                ..Health::default()
            }
            .to_body(),
        );
    }
    let roots = roots(agent);
    let before = read("/proc/stat").and_then(|t| shape::parse_stat(&t));
    tokio::time::sleep(CPU_SAMPLE).await;
    let after = read("/proc/stat").and_then(|t| shape::parse_stat(&t));
    let sampled = tokio::task::spawn_blocking(move || sample(&roots)).await;
    let mut health = match sampled {
        Ok(health) => health,
        Err(e) => return Reply::error(500, format!("health: {e}")),
    };
    if let (Some(a), Some(b)) = (before, after) {
        health.cpu_percent = shape::cpu_percent(a, b);
    }
    health.version = version;
    health.took_ms = Some(elapsed_ms(started));
    health.time_ms = now_ms();
    Reply::ok(health.to_body())
}

/// `/` and the configured roots, in that order.
fn roots(agent: &Agent) -> Vec<PathBuf> {
    let config = &agent.config;
    let mut roots = vec![PathBuf::from("/")];
    roots.extend(config.allow_paths.roots().iter().cloned());
    roots.extend(config.groups.values().map(|g| PathBuf::from(&g.src)));
    roots
}

/// Everything but the CPU share and the clock.
fn sample(roots: &[PathBuf]) -> Health {
    let (mem_total, mem_used) = read("/proc/meminfo")
        .and_then(|t| shape::parse_meminfo(&t))
        .unwrap_or_default();
    Health {
        host: hostname(),
        cpu_model: read("/proc/cpuinfo")
            .map(|t| shape::parse_cpu_model(&t))
            .unwrap_or_default(),
        cores: cores(),
        load: read("/proc/loadavg")
            .map(|t| shape::parse_loadavg(&t))
            .unwrap_or_default(),
        mem_total,
        mem_used,
        disks: disks(roots),
        uptime_s: read("/proc/uptime")
            .and_then(|t| shape::parse_uptime(&t))
            .unwrap_or_default(),
        ..Health::default()
    }
}

/// One entry per file system: the first root (that exists) on it.
fn disks(roots: &[PathBuf]) -> Vec<Disk> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for root in roots {
        let Ok(meta) = std::fs::metadata(root) else {
            continue;
        };
        if !seen.insert(meta.dev()) {
            continue;
        }
        let Ok(stat) = nix::sys::statvfs::statvfs(root) else {
            continue;
        };
        // fsblkcnt_t is u64 on 64-bit Linux but not everywhere.
        #[allow(clippy::useless_conversion)]
        let (blocks, blocks_free) = (u64::from(stat.blocks()), u64::from(stat.blocks_free()));
        let fragment = stat.fragment_size();
        let total = blocks.saturating_mul(fragment);
        let free = blocks_free.saturating_mul(fragment);
        out.push(Disk {
            path: root.display().to_string(),
            total,
            used: total.saturating_sub(free),
        });
    }
    out
}

/// CPUs this process may run on, as `nproc` counts them: the affinity mask
/// (`Cpus_allowed_list` of `/proc/self/status`), else what the standard library sees.
fn cores() -> u32 {
    read("/proc/self/status")
        .and_then(|t| {
            let list = t
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
            shape::count_cpu_list(list)
        })
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(1)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn elapsed_ms(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}
