//! The release orders on an agent: `deploy` (in phases), `releases`, `rollback` and
//! `confirm`, only where the configuration says `allow_deploy = on`.
//!
//! ```text
//! checks   allow_deploy (403) ─► manifest: by URL under [deploy] manifest[] (403), or
//!          inline with [deploy] inline = on (403) ─► rendered and parsed here (400)
//!          ─► src under [deploy] src[] (403) ─► dest and its releases directory under
//!          [allow::paths] (403) ─► commands only with [deploy] hooks = on (403)
//! phases   prepare (release strategy): fetch, verify, pre, unpack → a new release id
//!          switch: dest → the prepared release, post, success/failure, `switched_at`
//!          abort: the prepared release discarded
//!          all: stretcher's one-shot (every strategy)
//! ```
//!
//! A prepared release is remembered under the agent's state directory
//! (`prepared/<id>`: its dest and releases directory), so that `switch` and `abort` may
//! name only the id: a rollout through a proxy sends one request for hosts whose dests
//! differ (each host renders the manifest with its own environment).
//!
//! The manifest's hooks are arbitrary shell run as the agent's user: that is why they
//! have a switch of their own. The rendered manifest is kept with the release, so
//! `switch` runs the `post` and hooks of the manifest that was prepared. Lines of the
//! deploy's log stream to a client that follows.

use super::Agent;
use deploy_common::order::release::{self as release_spec, Phase, ReleaseSpec};
use deploy_common::order::{object, Reply, Request};
use deploy_common::server::conn::Events;
use deploy_common::wire::message::{Event, Stream};
use deploy_release::commands::Log;
use deploy_release::deploy::{self, Activation, Context, Settings};
use deploy_release::fetch::{Limits, Progress};
use deploy_release::layout::Releases;
use deploy_release::{ops, Manifest};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The largest manifest accepted.
const MAX_MANIFEST: u64 = 1 << 20;

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn b64(bytes: &[u8]) -> Value {
    use base64::Engine as _;
    text(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn spec(request: &Request) -> Result<&ReleaseSpec, Reply> {
    request
        .release
        .as_deref()
        .ok_or_else(|| Reply::error(400, format!("{} needs its release fields", request.order)))
}

fn enabled(agent: &Agent) -> Result<(), Reply> {
    if agent.config.server.allow_deploy {
        Ok(())
    } else {
        Err(Reply::error(
            403,
            "releases are disabled on this agent (allow_deploy = off)",
        ))
    }
}

/// The download limits and work directory from `[deploy]`.
pub fn settings(agent: &Agent) -> Settings {
    let d = &agent.config.deploy;
    Settings {
        work_dir: d
            .work_dir
            .clone()
            .unwrap_or_else(|| agent.config.server.state_dir.join("deploy")),
        limits: Limits {
            timeout: d.timeout,
            max_bandwidth: d.max_bandwidth,
            retry: d.retry,
            retry_wait: d.retry_wait,
            ..Limits::default()
        },
        hooks: d.hooks,
        cwd: PathBuf::from("/"),
    }
}

/// [`settings`] with an order's knobs: a caller may ask for a stricter download than
/// the host's `[deploy]` (a lower bandwidth, a shorter timeout), never a looser one;
/// retries are the caller's, at most 10, waits at most 10 minutes.
fn settings_for(agent: &Agent, spec: &ReleaseSpec) -> Settings {
    let mut settings = settings(agent);
    let k = &spec.knobs;
    settings.limits = settings
        .limits
        .narrowed(k.max_bandwidth, k.timeout, k.retry, k.retry_wait);
    settings
}

/// `dest` and the releases directory, both under `[allow::paths]`.
fn releases_for(agent: &Agent, dest: &str, releases_dir: Option<&str>) -> Result<Releases, Reply> {
    if !dest.starts_with('/') {
        return Err(Reply::error(
            400,
            format!("dest {dest:?} must be an absolute path"),
        ));
    }
    let releases = Releases::new(
        Path::new(dest),
        releases_dir.filter(|d| !d.is_empty()).map(Path::new),
    );
    for path in [Path::new(dest), releases.dir()] {
        let text = path.to_string_lossy();
        agent
            .config
            .allow_paths
            .check(&text)
            .map_err(|denied| Reply::error(403, denied.to_string()))?;
    }
    Ok(releases)
}

/// Reads and checks the manifest a `deploy` names.
async fn manifest(agent: &Agent, spec: &ReleaseSpec) -> Result<(Manifest, String), Reply> {
    let d = &agent.config.deploy;
    let raw = if !spec.manifest_url.is_empty() {
        if !d
            .manifests
            .iter()
            .any(|p| spec.manifest_url.starts_with(p.as_str()))
        {
            return Err(Reply::error(
                403,
                format!(
                    "manifest {} is not under any [deploy] manifest[] prefix of this agent",
                    spec.manifest_url
                ),
            ));
        }
        deploy_release::fetch::fetch_text(&spec.manifest_url, &settings(agent).limits, MAX_MANIFEST)
            .await
            .map_err(|e| Reply::error(502, e.to_string()))?
    } else if !spec.manifest.is_empty() {
        if !d.inline {
            return Err(Reply::error(
                403,
                "inline manifests are disabled on this agent ([deploy] inline = off)",
            ));
        }
        spec.manifest.clone()
    } else {
        return Err(Reply::error(400, "deploy needs a manifest (URL or inline)"));
    };
    let rendered = deploy_release::manifest::render(&raw, |k| std::env::var(k).ok())
        .map_err(|e| Reply::error(400, e.to_string()))?;
    let manifest =
        Manifest::parse_rendered(&rendered).map_err(|e| Reply::error(400, e.to_string()))?;
    for key in &manifest.unknown_keys {
        tracing::warn!(key = %key, manifest = %spec.manifest_url, "manifest key not understood; ignored");
    }
    if let Some(src) = &manifest.src {
        if !d.sources.is_empty() && !d.sources.iter().any(|p| src.starts_with(p.as_str())) {
            return Err(Reply::error(
                403,
                format!("src {src} is not under any [deploy] src[] prefix of this agent"),
            ));
        }
    }
    let c = &manifest.commands;
    let no_commands =
        c.pre.is_empty() && c.post.is_empty() && c.success.is_empty() && c.failure.is_empty();
    if !d.hooks && !no_commands {
        return Err(Reply::error(
            403,
            "this manifest has commands, and hooks are disabled on this agent ([deploy] hooks = off)",
        ));
    }
    Ok((manifest, rendered))
}

/// What a deploy streams to a client that follows: its log's lines and how far its
/// fetch is.
enum Note {
    Line(String),
    Progress(Event),
}

/// The fetch's progress, as [`Event::Progress`] at most every 200 ms or each whole
/// percent (and the last one always), so that a fast fetch does not flood a follower.
struct Meter {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Note>>,
    started: std::time::Instant,
    /// When the last event went, and its percent.
    last: std::sync::Mutex<Option<(std::time::Instant, u8)>>,
}

impl Meter {
    fn tell(&self, p: Progress) {
        let Some(tx) = &self.tx else {
            return;
        };
        let percent = match p.total {
            Some(total) if total > 0 => {
                u8::try_from((p.bytes.min(total) * 100) / total).unwrap_or(100)
            }
            _ => 0,
        };
        let now = std::time::Instant::now();
        let done = p.total == Some(p.bytes);
        {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, pct)) = *last {
                if !done && pct == percent && now.duration_since(at) < Duration::from_millis(200) {
                    return;
                }
            }
            *last = Some((now, percent));
        }
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = format!("{:.2}MB/s", p.bytes as f64 / secs / 1e6);
        let _ = tx.send(Note::Progress(Event::Progress {
            bytes: p.bytes,
            percent,
            rate,
        }));
    }
}

/// Runs `work` with a log whose lines, and a meter whose progress, stream to a
/// follower (lines in their order, progress between them).
async fn with_log<T>(
    request: &Request,
    events: &Events,
    work: impl AsyncFnOnce(Log, &Meter) -> T,
) -> (T, Vec<u8>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Note>();
    let following = request.follow && events.wanted();
    let log = if following {
        let tx = tx.clone();
        Log::with_sink(move |line| {
            let _ = tx.send(Note::Line(line.to_owned()));
        })
    } else {
        Log::default()
    };
    let meter = Meter {
        tx: following.then_some(tx),
        started: std::time::Instant::now(),
        last: std::sync::Mutex::new(None),
    };
    let kept = log.keeper();
    let forward = async {
        while let Some(note) = rx.recv().await {
            let event = match note {
                Note::Line(line) => Event::Line {
                    stream: Stream::Stdout,
                    line,
                    partial: false,
                },
                Note::Progress(event) => event,
            };
            events.send(event).await;
        }
    };
    let run = async {
        let result = work(log, &meter).await;
        drop(meter);
        result
    };
    let (result, ()) = tokio::join!(run, forward);
    (result, kept.bytes())
}

fn who(spec: &ReleaseSpec, peer: SocketAddr) -> String {
    if spec.who.is_empty() {
        peer.ip().to_string()
    } else {
        spec.who.clone()
    }
}

fn unix_ms() -> String {
    chrono::Utc::now().timestamp_millis().to_string()
}

/// `deploy`.
pub async fn deploy(agent: &Agent, peer: SocketAddr, request: &Request, events: &Events) -> Reply {
    if let Err(reply) = enabled(agent) {
        return reply;
    }
    let spec = match spec(request) {
        Ok(s) => s,
        Err(reply) => return reply,
    };
    match spec.phase {
        Phase::Prepare | Phase::All => prepare_or_all(agent, peer, request, spec, events).await,
        Phase::Switch => switch(agent, peer, request, spec, events).await,
        Phase::Abort => abort(agent, spec),
    }
}

async fn prepare_or_all(
    agent: &Agent,
    peer: SocketAddr,
    request: &Request,
    spec: &ReleaseSpec,
    events: &Events,
) -> Reply {
    let (manifest, rendered) = match manifest(agent, spec).await {
        Ok(m) => m,
        Err(reply) => return reply,
    };
    let dest = manifest.dest.clone().unwrap_or_default();
    if manifest.dest.is_some() {
        if let Err(reply) = releases_for(agent, &dest, manifest.releases_dir.as_deref()) {
            return reply;
        }
    }
    if spec.phase == Phase::Prepare
        && manifest.strategy != deploy_release::manifest::Strategy::Release
    {
        return Reply::error(
            400,
            "a rollout in phases needs `sync_strategy: release` (rsync and mv deploys run in one phase)",
        );
    }
    let delay = match spec.knobs.random_delay {
        Some(secs) => Duration::from_secs(secs.min(3600)),
        None => agent.config.deploy.random_delay,
    };
    if !delay.is_zero() {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let wait = Duration::from_nanos(u64::from(rand_u32()) * nanos / u64::from(u32::MAX));
        tokio::time::sleep(wait).await;
    }
    let settings = settings_for(agent, spec);
    let context = Context {
        manifest_url: spec.manifest_url.clone(),
        manifest_text: rendered,
        who: who(spec, peer),
        message: spec.message.clone(),
        stamp: (!spec.id.is_empty()).then(|| spec.id.clone()),
    };
    let activation = Activation {
        confirm_within: spec.confirm_within.map(Duration::from_secs),
    };
    if spec.phase == Phase::Prepare {
        let (result, log) = with_log(request, events, async |log: Log, meter: &Meter| {
            deploy::prepare(&manifest, &settings, &context, &log, &|p| meter.tell(p)).await
        })
        .await;
        return match result {
            Ok(prepared) => {
                prepared.cleanup();
                if let Some(id) = &prepared.id {
                    remember(agent, id, &dest, manifest.releases_dir.as_deref());
                }
                Reply::ok(object([
                    ("return", text("true")),
                    ("phase", text("prepare")),
                    ("dest", text(dest)),
                    ("id", text(prepared.id.unwrap_or_default())),
                    ("bytes", text(prepared.bytes.to_string())),
                    ("log", b64(&log)),
                ]))
            }
            Err(e) => Reply::error(500, format!("prepare failed: {e}")),
        };
    }
    let (outcome, log) = with_log(request, events, async |log: Log, _: &Meter| {
        deploy::run(&manifest, &settings, &context, &activation, &log).await
    })
    .await;
    match outcome.result {
        Ok(activated) => {
            if activated.id.is_some() && activation.confirm_within.is_some() {
                watch(agent, &manifest);
            }
            Reply::ok(object([
                ("return", text("true")),
                ("phase", text("all")),
                ("dest", text(dest)),
                ("id", text(activated.id.unwrap_or_default())),
                ("previous", text(activated.previous.unwrap_or_default())),
                ("switched_at", text(unix_ms())),
                ("bytes", text(outcome.bytes.to_string())),
                ("log", b64(&log)),
            ]))
        }
        Err(e) => Reply::error(500, format!("deploy failed: {e}")),
    }
}

/// Remembers a dest with a pending confirm, so the sweeper finds it after a restart.
fn watch(agent: &Agent, manifest: &Manifest) {
    if let Some(dest) = &manifest.dest {
        let releases = Releases::new(
            Path::new(dest),
            manifest.releases_dir.as_deref().map(Path::new),
        );
        if let Err(e) = ops::Watch::new(&agent.config.server.state_dir).add(&releases) {
            tracing::error!(dest = %dest, error = %e, "cannot record the pending confirm");
        }
    }
}

/// Where the record of prepared release `id` is kept.
fn prepared_record(agent: &Agent, id: &str) -> Option<PathBuf> {
    let valid = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        && !id.starts_with('.');
    valid.then(|| agent.config.server.state_dir.join("prepared").join(id))
}

/// Records the dest (and releases directory) of a prepared release.
fn remember(agent: &Agent, id: &str, dest: &str, releases_dir: Option<&str>) {
    let Some(path) = prepared_record(agent, id) else {
        return;
    };
    let record =
        serde_json::json!({"dest": dest, "releases_dir": releases_dir.unwrap_or_default()});
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&path, record.to_string()));
    if let Err(e) = written {
        tracing::warn!(id = %id, error = %e, "cannot record the prepared release; its switch must name the dest");
    }
}

/// The dest and releases directory a `switch`/`abort` addresses: as sent, or those
/// recorded when the release was prepared when the request names only the id, or names
/// its dest but not the releases directory (a manifest's own `releases_dir`, which the
/// caller need not know).
fn addressed(agent: &Agent, spec: &ReleaseSpec) -> Result<(String, String), Reply> {
    let recorded = prepared_at(agent, &spec.id);
    match recorded {
        Some((dest, dir))
            if spec.dest.is_empty() || (spec.dest == dest && spec.releases_dir.is_empty()) =>
        {
            Ok((dest, dir))
        }
        _ if !spec.dest.is_empty() => Ok((spec.dest.clone(), spec.releases_dir.clone())),
        _ => Err(Reply::error(
            404,
            format!(
                "no prepared release {:?} on this host (and no dest given)",
                spec.id
            ),
        )),
    }
}

/// The dest and releases directory recorded for the prepared release `id`.
fn prepared_at(agent: &Agent, id: &str) -> Option<(String, String)> {
    let text = std::fs::read_to_string(prepared_record(agent, id)?).ok()?;
    let record: serde_json::Map<String, Value> = serde_json::from_str(&text).ok()?;
    let field = |k: &str| {
        record
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Some((field("dest"), field("releases_dir")))
}

/// Forgets the record of a prepared release once it is switched to or discarded.
fn forget(agent: &Agent, id: &str) {
    if let Some(path) = prepared_record(agent, id) {
        let _ = std::fs::remove_file(path);
    }
}

/// The manifest kept with a prepared release.
fn kept_manifest(releases: &Releases, id: &str) -> Result<Manifest, Reply> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Err(Reply::error(400, format!("invalid release id {id:?}")));
    }
    let path = releases.dir().join(".meta").join(format!("{id}.manifest"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Reply::error(
            404,
            format!("no prepared release {id} ({}: {e})", path.display()),
        )
    })?;
    Manifest::parse_rendered(&text).map_err(|e| Reply::error(500, e.to_string()))
}

async fn switch(
    agent: &Agent,
    peer: SocketAddr,
    request: &Request,
    spec: &ReleaseSpec,
    events: &Events,
) -> Reply {
    let (dest, releases_dir) = match addressed(agent, spec) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let releases = match releases_for(agent, &dest, Some(&releases_dir)) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let manifest = match kept_manifest(&releases, &spec.id) {
        Ok(m) => m,
        Err(reply) => return reply,
    };
    if manifest.dest.as_deref() != Some(dest.as_str()) {
        return Reply::error(400, "the release was prepared for another dest");
    }
    let context = Context {
        who: who(spec, peer),
        message: spec.message.clone(),
        ..Context::default()
    };
    let activation = Activation {
        confirm_within: spec.confirm_within.map(Duration::from_secs),
    };
    let settings = settings(agent);
    let id = spec.id.clone();
    let ((result, switched_at), log) = with_log(request, events, async |log: Log, _: &Meter| {
        // Every host of the rollout renames at the caller's instant, not as the
        // requests happen to arrive.
        let now = chrono::Utc::now().timestamp_millis();
        match (spec.at, release_spec::switch_wait(spec.at, now)) {
            (_, Some(wait)) => tokio::time::sleep(wait).await,
            (Some(at), None) if at > now => log.line(&format!(
                "the switch instant is {} s ahead of this host's clock: switching now",
                (at - now) / 1000
            )),
            _ => {}
        }
        let switched = deploy::switch(
            &manifest,
            Path::new(&dest),
            &id,
            &context,
            &activation,
            "switch",
            &log,
        );
        // The instant of the rename itself (what a fleet's skew is about), not the end
        // of the bookkeeping after it.
        let switched_at = match &switched {
            Ok(a) => a.switched_at.map_or_else(unix_ms, |ms| ms.to_string()),
            Err(_) => unix_ms(),
        };
        let result = match switched {
            Ok(activated) => {
                let env = vec![("DEPLOY_RELEASE".to_owned(), id.clone())];
                deploy_release::commands::run_list(
                    "post",
                    &manifest.commands.post,
                    &settings.cwd,
                    &env,
                    None,
                    &log,
                )
                .await
                .map(|()| activated)
                .map_err(deploy::DeployError::from)
            }
            Err(e) => Err(e),
        };
        deploy::finish(&manifest, &settings, &result, &log).await;
        (result, switched_at)
    })
    .await;
    match result {
        Ok(activated) => {
            forget(agent, &id);
            if activation.confirm_within.is_some() {
                watch(agent, &manifest);
            }
            Reply::ok(object([
                ("return", text("true")),
                ("phase", text("switch")),
                ("dest", text(dest)),
                ("id", text(id)),
                ("previous", text(activated.previous.unwrap_or_default())),
                ("switched_at", text(switched_at)),
                ("log", b64(&log)),
            ]))
        }
        Err(e) => Reply::error(500, format!("switch failed: {e}")),
    }
}

fn abort(agent: &Agent, spec: &ReleaseSpec) -> Reply {
    let (dest, releases_dir) = match addressed(agent, spec) {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let releases = match releases_for(agent, &dest, Some(&releases_dir)) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    if spec.id.is_empty() || spec.id.contains('/') || spec.id.starts_with('.') {
        return Reply::error(400, format!("invalid release id {:?}", spec.id));
    }
    if releases.current().as_deref() == Some(spec.id.as_str()) {
        return Reply::error(409, format!("{} is the current release", spec.id));
    }
    let _ = std::fs::remove_dir_all(releases.path(&spec.id));
    let _ = releases.set_state(&spec.id, "discarded");
    forget(agent, &spec.id);
    Reply::ok(object([
        ("return", text("true")),
        ("phase", text("abort")),
        ("id", text(spec.id.clone())),
    ]))
}

/// `releases`.
pub(super) fn list(agent: &Agent, request: &Request) -> Reply {
    let releases = match addressed_releases(agent, request) {
        Ok((releases, _)) => releases,
        Err(reply) => return reply,
    };
    let listed = releases.list();
    Reply::ok(object([
        ("return", text("true")),
        ("current", text(releases.current().unwrap_or_default())),
        (
            "releases",
            text(serde_json::to_string(&listed).unwrap_or_default()),
        ),
        (
            "history",
            text(serde_json::to_string(&releases.history()).unwrap_or_default()),
        ),
        (
            "pending",
            text(
                releases
                    .pending()
                    .and_then(|p| serde_json::to_string(&p).ok())
                    .unwrap_or_default(),
            ),
        ),
    ]))
}

/// The releases a `releases`, `rollback` or `confirm` order names (enabled, fields present, under
/// `[allow::paths]`), and the request's release fields.
fn addressed_releases<'r>(
    agent: &Agent,
    request: &'r Request,
) -> Result<(Releases, &'r ReleaseSpec), Reply> {
    enabled(agent)?;
    let spec = spec(request)?;
    Ok((
        releases_for(agent, &spec.dest, Some(&spec.releases_dir))?,
        spec,
    ))
}

/// `rollback`.
pub(super) fn rollback(agent: &Agent, peer: SocketAddr, request: &Request) -> Reply {
    let (releases, spec) = match addressed_releases(agent, request) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    match ops::rollback(&releases, Some(&spec.id), &who(spec, peer), &spec.message) {
        Ok((to, from)) => Reply::ok(object([
            ("return", text("true")),
            ("id", text(to)),
            ("previous", text(from.unwrap_or_default())),
            ("switched_at", text(unix_ms())),
        ])),
        Err(e) => Reply::error(409, format!("rollback failed: {e}")),
    }
}

/// `confirm`.
pub(super) fn confirm(agent: &Agent, peer: SocketAddr, request: &Request) -> Reply {
    let (releases, spec) = match addressed_releases(agent, request) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    match ops::confirm(&releases, &who(spec, peer), chrono::Utc::now().timestamp()) {
        Ok(ops::Confirmed::Confirmed(id)) => {
            Reply::ok(object([("return", text("true")), ("id", text(id))]))
        }
        Ok(ops::Confirmed::TooLate { id, previous }) => Reply::error(
            409,
            format!("the confirm came after the deadline: {id} was reverted to {previous}"),
        ),
        Ok(ops::Confirmed::Nothing) => Reply::error(409, "no switch waits for a confirm"),
        Err(e) => Reply::error(500, format!("confirm failed: {e}")),
    }
}

/// Reverts unconfirmed switches whose deadline passed, every second, on a thread of
/// its own (each worker runs one; the layout's lock makes a second revert a no-op).
pub fn start_sweeper(state_dir: PathBuf) {
    let watch = ops::Watch::new(&state_dir);
    let spawned = std::thread::Builder::new()
        .name("confirm-sweeper".into())
        .spawn(move || loop {
            watch.sweep(chrono::Utc::now().timestamp());
            std::thread::sleep(Duration::from_secs(1));
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the confirm sweeper");
    }
}

fn rand_u32() -> u32 {
    use std::io::Read as _;
    let mut b = [0u8; 4];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    u32::from_le_bytes(b)
}
