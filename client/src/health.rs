//! `health`: each host's figures, its clock offset as seen from here, and the table
//! (`--format=table`, the default on a terminal) with the cluster's averages.
//!
//! ```text
//! HOST        CORES  LOAD 1/5/15      CPU%  MEM               DISK /            UPTIME  OFFSET  VERSION
//! 127.0.0.1   2      0.52 0.40 0.31   7.5   1.2G/3.8G (31%)   12G/40G (30%)     3d4h    +0ms    deploy-agent 0.4.0
//! average     2.0    0.52 0.40 0.31   7.5   31%               30%
//! ```
//!
//! Offset: the host stamps `time_ms` just before answering, having worked `took_ms`;
//! the network round trip is the exchange's time less that work, and the answer took
//! half of it to come back, so `offset = time_ms + (elapsed - took_ms) / 2 - received`.
//! Through a proxy the elapsed time is the whole run's so far (the proxy's hop counts).
//! An SSH host's exchange includes the connection, so its offset is reported against
//! the arrival time alone (too high by at most the one-way delay).

use std::fmt::Write as _;

use deploy_common::order::health::Health;
use serde_json::{Map, Value};

/// Adds `offset_ms` (the host's clock minus ours) to a 200 body, given when the answer
/// `received` (Unix ms) and how long the exchange took (`elapsed_ms`).
pub fn add_offset(body: &mut Map<String, Value>, received_ms: u64, elapsed_ms: u64) {
    let Some(time) = body.get("time_ms").and_then(Value::as_u64) else {
        return;
    };
    let took = body.get("took_ms").and_then(Value::as_u64);
    let one_way = match took {
        Some(took) => elapsed_ms.saturating_sub(took) / 2,
        None => 0,
    };
    let offset = i128::from(time) + i128::from(one_way) - i128::from(received_ms);
    let offset = i64::try_from(offset).unwrap_or(i64::MAX);
    body.insert("offset_ms".into(), Value::from(offset));
}

/// One host's row.
pub struct Row {
    /// The host as named.
    pub host: String,
    /// Its figures, or why there are none.
    pub health: Result<(Health, i64), String>,
}

/// The table, hosts in the given order, averages of the hosts that answered at the end.
pub fn table(rows: &[Row]) -> String {
    let mut lines: Vec<[String; 9]> = vec![[
        "HOST".into(),
        "CORES".into(),
        "LOAD 1/5/15".into(),
        "CPU%".into(),
        "MEM".into(),
        "DISK".into(),
        "UPTIME".into(),
        "OFFSET".into(),
        "VERSION".into(),
    ]];
    let mut errors = Vec::new();
    let mut answered: Vec<&Health> = Vec::new();
    for row in rows {
        let (h, offset) = match &row.health {
            Ok((h, offset)) => (h, *offset),
            Err(why) => {
                errors.push(format!("{}: {why}", row.host));
                continue;
            }
        };
        answered.push(h);
        let disks: Vec<String> = h
            .disks
            .iter()
            .map(|d| format!("{} {}", d.path, used(d.used, d.total)))
            .collect();
        lines.push([
            row.host.clone(),
            h.cores.to_string(),
            load(&h.load),
            format!("{:.1}", h.cpu_percent),
            used(h.mem_used, h.mem_total),
            disks.join(", "),
            duration(h.uptime_s),
            format!("{offset:+}ms"),
            h.version.clone(),
        ]);
    }
    if !answered.is_empty() {
        let n = answered.len() as f64;
        let avg = |f: &dyn Fn(&Health) -> f64| answered.iter().map(|h| f(h)).sum::<f64>() / n;
        let loads: Vec<f64> = (0..3)
            .map(|i| avg(&|h: &Health| h.load.get(i).copied().unwrap_or_default()))
            .collect();
        let share = |u: u64, t: u64| {
            if t == 0 {
                0.0
            } else {
                u as f64 * 100.0 / t as f64
            }
        };
        let disk = avg(&|h: &Health| {
            h.disks
                .first()
                .map(|d| share(d.used, d.total))
                .unwrap_or_default()
        });
        lines.push([
            format!("average ({})", answered.len()),
            format!("{:.1}", avg(&|h: &Health| f64::from(h.cores))),
            load(&loads),
            format!("{:.1}", avg(&|h: &Health| h.cpu_percent)),
            format!("{:.0}%", avg(&|h: &Health| share(h.mem_used, h.mem_total))),
            format!("/ {disk:.0}%"),
            duration(avg(&|h: &Health| h.uptime_s as f64) as u64),
            String::new(),
            String::new(),
        ]);
    }
    let mut out = columns(&lines);
    for e in errors {
        let _ = writeln!(out, "{e}");
    }
    out
}

/// Rows of cells as aligned columns, two spaces apart.
pub fn columns<const N: usize>(lines: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for line in lines {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in lines {
        let mut text = String::new();
        for (cell, w) in line.iter().zip(widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        let _ = writeln!(out, "{}", text.trim_end());
    }
    out
}

fn load(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `1.2G/3.8G (31%)`.
fn used(used: u64, total: u64) -> String {
    let pct = if total == 0 {
        0.0
    } else {
        used as f64 * 100.0 / total as f64
    };
    format!("{}/{} ({pct:.0}%)", size(used), size(total))
}

/// Bytes, short: `512M`, `1.2G`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let unit = UNITS.get(unit).copied().unwrap_or("B");
    if value < 10.0 && unit != "B" {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// Seconds, short: `3d4h`, `5h12m`, `42s`.
pub fn duration(s: u64) -> String {
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m{}s", s % 60),
        (0, h, m) => format!("{h}h{m}m"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_units() {
        let mut body = Map::new();
        body.insert("time_ms".into(), Value::from(10_000u64));
        body.insert("took_ms".into(), Value::from(200u64));
        add_offset(&mut body, 10_050, 300);
        // One way: (300 - 200) / 2 = 50; the answer left at 10000 and arrived at 10050.
        assert_eq!(body.get("offset_ms"), Some(&Value::from(0)));
        assert_eq!(size(1536 * 1024 * 1024), "1.5G");
        assert_eq!(size(100), "100B");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d4h");
        assert_eq!(duration(42), "42s");
    }
}
