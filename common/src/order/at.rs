//! Timed orders: every host starts at one wall-clock instant, each on its own clock.
//!
//! ```text
//! request  {"order":"run","argv":[…],"at":1796211300000,"max_wait":3600000}
//!          at        the instant, unix milliseconds by the caller's clock
//!          max_wait  the longest a host may wait for it, ms (absent: DEFAULT_MAX_WAIT_MS)
//! reply    the order's own, plus "started_at":"<unix ms, the host's clock>" (agents)
//! refusal  409 "run: the start instant 2026-12-02T11:35:00.000Z passed 2350 ms ago by
//!          this host's clock (2026-12-02T11:35:02.350Z); tolerance 1000 ms"
//! ```
//!
//! As Octopoda's time alignment (`-ta`), a host sleeps until its local equivalent of the
//! instant and refuses a start it could not honour: an instant passed by more than
//! [`TOLERANCE_MS`] (its clock is ahead, or the request came late), or one further ahead
//! than the caller allows (its clock is behind). [`timing`] is the one decision, shared
//! with the release switch ([`super::release::switch_wait`]), which never refuses.
//! The lead of an instant the client picks itself ([`lead_ms`]) is shared too.
//!
//! [`parse_at`] and [`parse_duration`] read the client's `--at` and `--delay`.

use std::time::Duration;

/// How late a host may start (its clock a little ahead of the caller's, or the request
/// delayed on its way) and still run the order at once rather than refuse it.
pub const TOLERANCE_MS: i64 = 1_000;

/// The longest a host waits for an instant when the request says nothing
/// (`Request::max_wait`): one hour.
pub const DEFAULT_MAX_WAIT_MS: i64 = 3_600_000;

/// The longest wait a host accepts whatever `max_wait` the caller sends (a day), so
/// that an authenticated caller cannot hold a connection and a worker's order forever.
pub const MAX_WAIT_CEILING_MS: i64 = 24 * 3_600_000;

/// The request's `max_wait` as the host applies it: the default when absent, never
/// over [`MAX_WAIT_CEILING_MS`].
pub fn max_wait_ms(max_wait: Option<u64>) -> i64 {
    max_wait
        .map_or(DEFAULT_MAX_WAIT_MS, |ms| {
            i64::try_from(ms).unwrap_or(i64::MAX)
        })
        .min(MAX_WAIT_CEILING_MS)
}

/// Where an instant lies for a host's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    /// Ahead by this much (zero: it is now), within the allowed wait.
    Wait(Duration),
    /// Passed this many milliseconds ago.
    Passed(i64),
    /// This many milliseconds ahead: over the allowed wait.
    TooFar(i64),
}

/// Where instant `at` lies for a clock reading `now` (both unix ms), allowing a wait of
/// `max_wait_ms`.
pub fn timing(at: i64, now: i64, max_wait_ms: i64) -> Timing {
    let ahead = at.saturating_sub(now);
    if ahead > max_wait_ms {
        Timing::TooFar(ahead)
    } else if ahead >= 0 {
        Timing::Wait(Duration::from_millis(u64::try_from(ahead).unwrap_or(0)))
    } else {
        Timing::Passed(ahead.saturating_neg())
    }
}

/// A timed order's wait on this host, or why it refuses (the 409 text): `order` names
/// the order, `at` and `max_wait` are the request's, `now` this host's clock.
pub fn admit(order: &str, at: i64, max_wait: Option<u64>, now: i64) -> Result<Duration, String> {
    let max_wait = max_wait_ms(max_wait);
    match timing(at, now, max_wait) {
        Timing::Wait(wait) => Ok(wait),
        Timing::Passed(late) if late <= TOLERANCE_MS => Ok(Duration::ZERO),
        Timing::Passed(late) => Err(format!(
            "{order}: the start instant {} passed {late} ms ago by this host's clock ({}); \
             tolerance {TOLERANCE_MS} ms",
            rfc3339(at),
            rfc3339(now)
        )),
        Timing::TooFar(ahead) => Err(format!(
            "{order}: the start instant {} is {ahead} ms ahead of this host's clock ({}), \
             over the longest wait allowed ({max_wait} ms)",
            rfc3339(at),
            rfc3339(now)
        )),
    }
}

/// How long a request waits for its instant before it runs, as the caller's clock
/// sees it (zero if it has none, or it passed): a transport adds it to its deadline.
pub fn wait_of(at: Option<i64>, max_wait: Option<u64>, now: i64) -> Duration {
    let Some(at) = at else {
        return Duration::ZERO;
    };
    let max = max_wait_ms(max_wait);
    let ahead = at.saturating_sub(now).clamp(0, max.max(0));
    Duration::from_millis(u64::try_from(ahead).unwrap_or(0))
}

/// How far ahead of now to set an instant the client picks for `hosts` hosts: time for
/// the requests to fan out (through a proxy, or over new SSH sessions), at most `cap`.
pub fn lead_ms(hosts: usize, ssh: bool, cap: i64) -> i64 {
    let hosts = i64::try_from(hosts).unwrap_or(i64::MAX / 8);
    // Measured through a proxy to 50 agent processes on a loaded 2-core machine, the
    // switch requests took up to ~250 ms to reach every agent: 150 + 3 ms a host let one
    // run in three miss the instant (skew 109 ms), 250 + 5 ms a host none.
    let base: i64 = if ssh { 800 } else { 250 };
    base.saturating_add(hosts.saturating_mul(5)).min(cap)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `ms` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || format!("{ms} ms"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// `--at`: RFC 3339 (`2026-12-02T11:35:00Z`, `…+01:00`), unix milliseconds
/// (`1796211300000`), or `HH:MM:SS[.fff]` today in local time; unix ms.
pub fn parse_at(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse::<i64>()
            .map_err(|e| format!("--at={text}: {e}"))
            .and_then(|ms| {
                // Seconds would be a 1970 instant: say so rather than refuse later.
                if ms < 100_000_000_000 {
                    Err(format!(
                        "--at={text}: unix time is in milliseconds (this reads as 1970)"
                    ))
                } else {
                    Ok(ms)
                }
            });
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(t) {
        return Ok(t.timestamp_millis());
    }
    for format in ["%H:%M:%S%.f", "%H:%M:%S"] {
        if let Ok(time) = chrono::NaiveTime::parse_from_str(t, format) {
            let today = chrono::Local::now().date_naive().and_time(time);
            return today
                .and_local_timezone(chrono::Local)
                .earliest()
                .map(|t| t.timestamp_millis())
                .ok_or_else(|| format!("--at={text}: no such local time today"));
        }
    }
    Err(format!(
        "--at={text}: expected RFC 3339 (2026-12-02T11:35:00Z), unix milliseconds, or HH:MM:SS today"
    ))
}

/// `--delay`, `--max-wait`: `500ms`, `3s`, `1m`, `2h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration like 500ms, 3s, 1m, 2h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("{text:?}: unit must be ms, s, m or h")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?}: too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_and_admission() {
        assert_eq!(
            timing(1_250, 1_000, 10_000),
            Timing::Wait(Duration::from_millis(250))
        );
        assert_eq!(timing(900, 1_000, 10_000), Timing::Passed(100));
        assert_eq!(timing(20_000, 1_000, 10_000), Timing::TooFar(19_000));
        assert_eq!(admit("run", 900, None, 1_000), Ok(Duration::ZERO));
        let late = admit("run", 1_000, None, 1_000 + TOLERANCE_MS + 1).unwrap_err();
        assert!(late.contains("passed 1001 ms ago"), "{late}");
        assert!(late.contains("1970-01-01T00:00:01.000Z"), "{late}");
        let far = admit("exec", 100_000, Some(5_000), 1_000).unwrap_err();
        assert!(
            far.contains("over the longest wait allowed (5000 ms)"),
            "{far}"
        );
        assert_eq!(
            wait_of(Some(3_000), None, 1_000),
            Duration::from_millis(2_000)
        );
        assert_eq!(
            wait_of(Some(3_000), Some(500), 1_000),
            Duration::from_millis(500)
        );
        assert_eq!(wait_of(None, None, 1_000), Duration::ZERO);
        let week = 7 * 24 * 3_600_000;
        let far = admit("run", 1_000 + week, Some(u64::MAX), 1_000).unwrap_err();
        assert!(far.contains("(86400000 ms)"), "capped: {far}");
    }

    #[test]
    fn instants_and_durations() {
        assert_eq!(parse_at("1764675300000"), Ok(1_764_675_300_000));
        assert!(parse_at("1764675300").is_err(), "seconds");
        assert_eq!(parse_at("2026-12-02T11:35:00.5Z"), Ok(1_796_211_300_500));
        assert_eq!(parse_at("2026-12-02T12:35:00+01:00"), Ok(1_796_211_300_000));
        assert!(parse_at("12:00:00").is_ok());
        assert!(parse_at("tomorrow").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("3d").is_err());
        assert!(parse_duration("ms").is_err());
        assert_eq!(lead_ms(10, false, 5_000), 300);
        assert_eq!(lead_ms(10_000, true, 5_000), 5_000);
    }
}
