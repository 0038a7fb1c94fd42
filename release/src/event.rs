//! stretcher's event input, and the record of events already applied.
//!
//! ```text
//! one line         s3://bucket/manifest.yml[\n]     (Serf user-event handler, echo URL |)
//! Consul (JSON)    [{"ID":"…","Name":"deploy","Payload":"<base64 URL>","LTime":7}, …]
//!                  when CONSUL_INDEX is set or the first byte is `[`: the last event
//! ```
//!
//! stretcher redeploys an event delivered twice (a `consul watch` restart re-delivers
//! the last one); we remember applied events by their identity — Consul's `ID`, or
//! Serf's `SERF_USER_LTIME` with the event's name — and skip them.

use base64::Engine as _;
use serde::Deserialize;

/// Why the input is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// Not a JSON array of events.
    #[error("invalid Consul event JSON: {0}")]
    Json(String),
    /// An empty array.
    #[error("no Consul events in the input")]
    Empty,
    /// A payload that is not base64 of UTF-8.
    #[error("the event's payload is not base64 of a URL")]
    Payload,
    /// No URL.
    #[error("no manifest URL in the input")]
    NoUrl,
}

/// One event: the manifest URL and, when known, a stable identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The manifest's URL.
    pub url: String,
    /// A stable identity of the event (for deduplication).
    pub id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConsulEvent {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    payload: Option<String>,
    #[serde(rename = "LTime", default)]
    ltime: u64,
}

/// Reads an event from `input`; `consul` is whether `CONSUL_INDEX` is set, `serf` the
/// `(SERF_USER_EVENT, SERF_USER_LTIME)` pair when set.
pub fn parse(input: &[u8], consul: bool, serf: Option<(&str, &str)>) -> Result<Input, EventError> {
    if consul || input.first() == Some(&b'[') {
        let events: Vec<ConsulEvent> =
            serde_json::from_slice(input).map_err(|e| EventError::Json(e.to_string()))?;
        let last = events.last().ok_or(EventError::Empty)?;
        let payload = last.payload.as_deref().unwrap_or_default();
        let url = base64::engine::general_purpose::STANDARD
            .decode(payload.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(EventError::Payload)?;
        let url = url.trim().to_owned();
        if url.is_empty() {
            return Err(EventError::NoUrl);
        }
        let id = if last.id.is_empty() {
            format!("consul:{}:{}", last.name, last.ltime)
        } else {
            format!("consul:{}", last.id)
        };
        return Ok(Input { url, id: Some(id) });
    }
    let text = String::from_utf8_lossy(input);
    let url = text.lines().next().unwrap_or_default().trim().to_owned();
    if url.is_empty() {
        return Err(EventError::NoUrl);
    }
    let id = serf
        .filter(|(_, ltime)| !ltime.is_empty())
        .map(|(name, ltime)| format!("serf:{name}:{ltime}"));
    Ok(Input { url, id })
}

/// Applied events, one identity a line, in a file (the newest 1,000 kept).
#[derive(Debug, Clone)]
pub struct Applied {
    path: std::path::PathBuf,
}

impl Applied {
    /// The record in `path`.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Applied {
        Applied { path: path.into() }
    }

    /// Whether `id` was applied.
    pub fn contains(&self, id: &str) -> bool {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .any(|l| l == id)
    }

    /// Records `id`.
    pub fn add(&self, id: &str) -> Result<(), crate::layout::LayoutError> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.push(id);
        let skip = lines.len().saturating_sub(1000);
        let mut out = lines.get(skip..).unwrap_or_default().join("\n");
        out.push('\n');
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        crate::layout::write_atomic(&self.path, out.as_bytes())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_consul_arrays() {
        assert_eq!(
            parse(b"s3://b/m.yml\n", false, None).unwrap().url,
            "s3://b/m.yml"
        );
        assert_eq!(
            parse(b"s3://b/m.yml", false, None).unwrap().url,
            "s3://b/m.yml"
        );
        assert_eq!(
            parse(b"file:///m\n", false, Some(("deploy", "7")))
                .unwrap()
                .id
                .as_deref(),
            Some("serf:deploy:7")
        );
        assert_eq!(parse(b"", false, None), Err(EventError::NoUrl));
        let two = br#"[{"ID":"a","Name":"deploy","Payload":"czM6Ly9iL29sZC55bWw=","LTime":1},
                       {"ID":"b","Name":"deploy","Payload":"czM6Ly9iL25ldy55bWw=","LTime":2}]"#;
        let e = parse(two, true, None).unwrap();
        assert_eq!(
            (e.url.as_str(), e.id.as_deref()),
            ("s3://b/new.yml", Some("consul:b"))
        );
        assert_eq!(parse(b"[]", true, None), Err(EventError::Empty));
        assert!(matches!(
            parse(b"s3://x", true, None),
            Err(EventError::Json(_))
        ));
    }

    #[test]
    fn applied_events_are_remembered() {
        let t = tempfile::tempdir().unwrap();
        let a = Applied::new(t.path().join("applied"));
        assert!(!a.contains("consul:b"));
        a.add("consul:b").unwrap();
        assert!(a.contains("consul:b"));
        assert!(!a.contains("consul:c"));
    }
}
