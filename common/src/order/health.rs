//! The `health` order: how a node is doing (Octopoda's `node status`, and more).
//!
//! ```text
//! request  {"order":"health"}                  (options "brief": version and clock only,
//!                                               the proxy's heartbeat)
//! reply    {"return":"true","host":"web1","version":"deploy-agent 0.4.0 (abc1234)",
//!           "cpu_model":"AMD EPYC 7B13","cores":2,"load":[0.12,0.2,0.31],"cpu_percent":7.5,
//!           "mem_total":4096000000,"mem_used":1024000000,
//!           "disks":[{"path":"/","total":…,"used":…},{"path":"/srv/www","total":…,"used":…}],
//!           "uptime_s":86400,"time_ms":1764672000123,"took_ms":201}
//! ```
//!
//! Sizes are bytes; `mem_used` is `MemTotal - MemAvailable`; `cpu_percent` is the busy
//! share of every CPU between two samples of `/proc/stat` [`CPU_SAMPLE`] apart; disks
//! are `/` and the agent's configured roots (`[allow::paths]`, its rsync groups' `src`),
//! one entry per file system (the first path that names it). `time_ms` is the node's
//! clock when it answered: the caller knows when it asked and when the answer came, and
//! so the node's clock offset, `time_ms - (sent + rtt / 2)`, which it reports per host.
//!
//! The same figures come from `ssh://` hosts: one `sh` command ([`SSH_SCRIPT`]) prints
//! the files and `df -P`, and [`parse_ssh`] reads them here, so both transports give one
//! shape. Every parser takes the text as the kernel writes it and never panics on
//! anything else (a field that does not parse is left out, not guessed).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::time::Duration;

/// How far apart the two `/proc/stat` samples of `cpu_percent` are.
pub const CPU_SAMPLE: Duration = Duration::from_millis(200);

/// `options` of the heartbeat: version and clock only, answered at once.
pub const BRIEF: &str = "brief";

/// One file system's use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The path asked about.
    pub path: String,
    /// Bytes in the file system.
    pub total: u64,
    /// Bytes used (total minus what is free for the superuser, as `df`).
    pub used: u64,
}

/// What a node reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The node's host name.
    #[serde(default)]
    pub host: String,
    /// The agent's version (`ssh` for an SSH host).
    #[serde(default)]
    pub version: String,
    /// The CPU model (`model name` of `/proc/cpuinfo`).
    #[serde(default)]
    pub cpu_model: String,
    /// CPUs this process may run on (what `nproc` says).
    #[serde(default)]
    pub cores: u32,
    /// Load averages over 1, 5 and 15 minutes.
    #[serde(default)]
    pub load: Vec<f64>,
    /// Busy share of all CPUs over [`CPU_SAMPLE`], 0–100.
    #[serde(default)]
    pub cpu_percent: f64,
    /// `MemTotal`, bytes.
    #[serde(default)]
    pub mem_total: u64,
    /// `MemTotal - MemAvailable`, bytes.
    #[serde(default)]
    pub mem_used: u64,
    /// `/` and the configured roots.
    #[serde(default)]
    pub disks: Vec<Disk>,
    /// Seconds since boot.
    #[serde(default)]
    pub uptime_s: u64,
    /// The node's clock when it answered, Unix milliseconds.
    #[serde(default)]
    pub time_ms: u64,
    /// How long the node worked on the order before `time_ms` (an agent; the caller
    /// takes it out of the round trip when it estimates the clock offset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub took_ms: Option<u64>,
}

impl Health {
    /// The reply body: the fields, and `"return":"true"`.
    pub fn to_body(&self) -> Map<String, Value> {
        let mut body = Map::new();
        body.insert("return".into(), super::flag(true));
        if let Ok(Value::Object(map)) = serde_json::to_value(self) {
            body.extend(map);
        }
        body
    }

    /// Reads a reply body back (fields it lacks stay at their defaults).
    pub fn from_body(body: &Value) -> Option<Health> {
        serde_json::from_value(body.clone()).ok()
    }
}

/// Aggregate CPU times of the first line of `/proc/stat`: (busy, total) jiffies.
pub fn parse_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest counted in user already).
    // Saturating: the text may come from a hostile SSH host (no overflow panic).
    let total: u64 = values
        .iter()
        .take(8)
        .fold(0u64, |sum, v| sum.saturating_add(*v));
    let idle = values
        .get(3)
        .copied()
        .unwrap_or(0)
        .saturating_add(values.get(4).copied().unwrap_or(0));
    Some((total.saturating_sub(idle), total))
}

/// The busy share between two [`parse_stat`] samples, 0–100.
pub fn cpu_percent(before: (u64, u64), after: (u64, u64)) -> f64 {
    let busy = after.0.saturating_sub(before.0) as f64;
    let total = after.1.saturating_sub(before.1) as f64;
    if total <= 0.0 {
        return 0.0;
    }
    (busy / total * 1000.0).round() / 10.0
}

/// The number of CPUs in a kernel CPU list (`0-3,6,8-9`); `None` if it does not parse
/// or is empty.
pub fn count_cpu_list(list: &str) -> Option<u32> {
    let mut count = 0u32;
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        let (low, high) = part.split_once('-').unwrap_or((part, part));
        let (low, high): (u32, u32) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
        count = count.checked_add(high.checked_sub(low)?.checked_add(1)?)?;
    }
    (count > 0).then_some(count)
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Vec<f64> {
    text.split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// `(MemTotal, MemTotal - MemAvailable)` in bytes, from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:").or_else(|| {
        field("MemFree:")?
            .checked_add(field("Buffers:")?)?
            .checked_add(field("Cached:")?)
    })?;
    Some((total, total.saturating_sub(available)))
}

/// Whole seconds since boot, from `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Option<u64> {
    let first = text.split_whitespace().next()?;
    let seconds: f64 = first.parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then_some(seconds as u64)
}

/// The CPU model named in `/proc/cpuinfo` (`model name`, or `Hardware`/`cpu model` on
/// other architectures).
pub fn parse_cpu_model(text: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            matches!(key.trim(), "model name" | "Hardware" | "cpu model" | "cpu")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default()
}

/// The file systems of `df -P -k` output: (mount point as asked, total, used) in bytes.
pub fn parse_df(text: &str) -> Vec<Disk> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // Filesystem 1024-blocks Used Available Capacity Mounted-on
            let total: u64 = fields.get(1)?.parse().ok()?;
            let used: u64 = fields.get(2)?.parse().ok()?;
            let path = fields.get(5..)?.join(" ");
            Some(Disk {
                path,
                total: total.checked_mul(1024)?,
                used: used.checked_mul(1024)?,
            })
        })
        .collect()
}

/// The command run on an `ssh://` host: sections marked `@@name`, read by [`parse_ssh`].
pub const SSH_SCRIPT: &str = "\
LC_ALL=C; export LC_ALL; \
echo @@stat1; head -n 1 /proc/stat; sleep 0.2; echo @@stat2; head -n 1 /proc/stat; \
echo @@loadavg; cat /proc/loadavg; echo @@meminfo; cat /proc/meminfo; \
echo @@uptime; cat /proc/uptime; echo @@cpuinfo; grep -m 4 -E '^(model name|Hardware|cpu model)' /proc/cpuinfo; \
echo @@nproc; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; echo @@host; uname -n; \
echo @@df; df -P -k /; echo @@date; date +%s%N";

/// The figures of an SSH host from the output of [`SSH_SCRIPT`].
pub fn parse_ssh(output: &str) -> Health {
    let mut sections: Vec<(&str, String)> = Vec::new();
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            sections.push((name.trim(), String::new()));
        } else if let Some((_, text)) = sections.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    let get = |name: &str| {
        sections
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.as_str())
            .unwrap_or_default()
    };
    let (mem_total, mem_used) = parse_meminfo(get("meminfo")).unwrap_or_default();
    let cpu = match (parse_stat(get("stat1")), parse_stat(get("stat2"))) {
        (Some(a), Some(b)) => cpu_percent(a, b),
        _ => 0.0,
    };
    let time_ms = get("date")
        .trim()
        .parse::<u128>()
        .ok()
        .and_then(|ns| u64::try_from(ns / 1_000_000).ok())
        // A `date` without %N prints it literally: whole seconds then.
        .or_else(|| {
            let text = get("date");
            let secs: u64 = text
                .trim()
                .trim_end_matches('N')
                .trim_end_matches('%')
                .parse()
                .ok()?;
            secs.checked_mul(1000)
        })
        .unwrap_or_default();
    let disks = parse_df(get("df"))
        .into_iter()
        .map(|d| Disk {
            path: "/".to_owned(),
            ..d
        })
        .take(1)
        .collect();
    Health {
        host: get("host").trim().to_owned(),
        version: "ssh".to_owned(),
        cpu_model: parse_cpu_model(get("cpuinfo")),
        cores: get("nproc").trim().parse().unwrap_or_default(),
        load: parse_loadavg(get("loadavg")),
        cpu_percent: cpu,
        mem_total,
        mem_used,
        disks,
        uptime_s: parse_uptime(get("uptime")).unwrap_or_default(),
        time_ms,
        took_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_stat(stat), Some((150, 1000)));
        assert_eq!(cpu_percent((150, 1000), (250, 1200)), 50.0);
        assert_eq!(cpu_percent((1, 1), (1, 1)), 0.0);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_loadavg("0.10 0.20 0.30 1/100 42\n"), [0.1, 0.2, 0.3]);
        let mem = "MemTotal:       2048 kB\nMemFree: 100 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(parse_meminfo(mem), Some((2048 * 1024, 1024 * 1024)));
        assert_eq!(parse_uptime("12345.67 100.0\n"), Some(12345));
        assert_eq!(count_cpu_list("0-3,6,8-9\n"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(parse_uptime("-1 0"), None);
        assert_eq!(
            parse_cpu_model("processor : 0\nmodel name\t: Some CPU @ 2GHz\n"),
            "Some CPU @ 2GHz"
        );
    }

    #[test]
    fn ssh_output() {
        let out = "@@stat1\ncpu  100 0 50 800 50 0 0 0\n@@stat2\ncpu  200 0 50 900 50 0 0 0\n\
                   @@loadavg\n1.00 2.00 3.00 1/1 1\n@@meminfo\nMemTotal: 4 kB\nMemAvailable: 1 kB\n\
                   @@uptime\n99.5 1\n@@cpuinfo\nmodel name : X\n@@nproc\n8\n@@host\nweb1\n\
                   @@df\nFilesystem 1024-blocks Used Available Capacity Mounted on\n/dev/sda1 100 40 60 40% /\n\
                   @@date\n1764672000123456789\n";
        let h = parse_ssh(out);
        assert_eq!(h.cores, 8);
        assert_eq!(h.cpu_percent, 50.0);
        assert_eq!((h.mem_total, h.mem_used), (4096, 3072));
        assert_eq!(
            h.disks,
            [Disk {
                path: "/".into(),
                total: 102_400,
                used: 40_960
            }]
        );
        assert_eq!(h.time_ms, 1_764_672_000_123);
        assert_eq!((h.host.as_str(), h.uptime_s, h.load.len()), ("web1", 99, 3));
        assert_eq!(parse_ssh("nonsense").cores, 0);
    }

    #[test]
    fn body_round_trip() {
        let h = Health {
            cores: 2,
            load: vec![0.5, 0.25, 0.0],
            ..Health::default()
        };
        let body = h.to_body();
        assert_eq!(body.get("return"), Some(&Value::String("true".into())));
        assert_eq!(Health::from_body(&Value::Object(body)), Some(h));
    }

    /// Figures from a hostile SSH host that overflow a sum: no panic, no wrap-around.
    #[test]
    fn overflowing_figures_do_not_panic() {
        let max = u64::MAX;
        let stat = format!("cpu  {max} {max} 1 {max} {max} 0 0 0\n");
        let (busy, total) = parse_stat(&stat).unwrap();
        assert_eq!(total, u64::MAX);
        assert!(busy <= total);
        let kib = u64::MAX / 1024;
        let mem = format!("MemTotal: 8 kB\nMemFree: {kib} kB\nBuffers: {kib} kB\nCached: 1 kB\n");
        assert_eq!(parse_meminfo(&mem), None);
    }
}
