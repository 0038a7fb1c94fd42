//! `napp`: one step of an Octopoda scenario on one NodeApp of this node (the shapes are
//! in `deploy_common::order::napp`; the NodeApps themselves in [`deploy_napp`]). Only
//! where `[scenarios] enabled = on`, only under its `workspace`, which must lie under
//! `[allow::paths]` (checked canonically on every order).
//!
//! ```text
//! push      lock the NodeApp ─► the body extracted into <workspace>/<app>@<scenario>
//!           (the confined extractor, as upload) ─► a version if anything changed
//! script    script and $OCTOPODA_OUTPUT in fresh private files under <state_dir>/napp
//!           ─► sh SCRIPT in the NodeApp dir with OCTOPODA_*/DEPLOY_* (lines stream
//!           when followed; killed with its group on the deadline or a cut connection)
//!           ─► code, stdout, stderr and the output file, base64
//! commit    lock ─► a version, changed or not
//! versions  newest first, offset/limit
//! reset     lock ─► the version a prefix (≥ 3 hex digits, one match) names, restored
//!           and recorded again (A, B, C, A')
//! get       the NodeApps here (of a scenario, or all)
//! purge     lock ─► the directory and its versions removed
//! ```
//!
//! Refusals: scenarios off or the workspace outside `[allow::paths]` → 403; a missing
//! or bad name, prefix, variable or script → 400; no such NodeApp or version → 404.
//! File work runs on blocking threads; the NodeApp's lock is a `flock` shared by the
//! worker processes.

use super::{process, tarbody, Agent};
use base64::Engine as _;
use deploy_common::order::napp::{valid_name, Action, NappSpec, DEFAULT_VERSIONS_LIMIT};
use deploy_common::order::{flag, object, Reply, Request};
use deploy_common::server::conn::Events;
use deploy_extract::Options;
use deploy_napp::env::{script_env, ScriptVars};
use deploy_napp::{Error as NappError, Layout, Root, Workspace};
use serde_json::Value;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How much of each of stdout, stderr and `$OCTOPODA_OUTPUT` comes back (the end of
/// it): three of them, base64, stay under the wire's 16 MiB record.
const MAX_RETURNED: usize = 3 << 20;

/// The last `max` bytes of `bytes`, said so when some were dropped.
fn tail(mut bytes: Vec<u8>, max: usize) -> Vec<u8> {
    if bytes.len() <= max {
        return bytes;
    }
    let dropped = bytes.len() - max;
    let mut out = b"[deploy-agent: earlier output dropped]\n".to_vec();
    out.extend(bytes.drain(dropped..));
    out
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn b64(bytes: &[u8]) -> Value {
    text(base64::engine::general_purpose::STANDARD.encode(bytes))
}

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    let Some(spec) = request.napp.as_deref() else {
        return Reply::error(400, "napp needs its parameters (the request's napp object)");
    };
    let reply = match checked(agent, spec) {
        Ok(ws) => dispatch(agent, spec, ws, request.follow, events).await,
        Err(reply) => reply,
    };
    if reply.code == 200 {
        tracing::info!(action = spec.action.as_str(), scenario = %spec.scenario, app = %spec.app, "napp");
    }
    reply
}

/// Enabled, names valid, workspace allowed: the workspace, opened.
fn checked(agent: &Agent, spec: &NappSpec) -> Result<Arc<Workspace>, Reply> {
    let sc = &agent.config.scenarios;
    if !sc.enabled {
        return Err(Reply::error(
            403,
            "napp: scenarios are disabled on this agent ([scenarios] enabled = off)",
        ));
    }
    let any = spec.action == Action::Get;
    let name_ok = |name: &str| valid_name(name) || (any && name.is_empty());
    if !name_ok(&spec.scenario) {
        return Err(Reply::error(
            400,
            format!("napp: invalid scenario name {:?} (one component of letters, digits, '_', '-', '.'; not starting with '.' or '-')", spec.scenario),
        ));
    }
    if !name_ok(&spec.app) {
        return Err(Reply::error(
            400,
            format!("napp: invalid application name {:?} (one component of letters, digits, '_', '-', '.'; not starting with '.' or '-')", spec.app),
        ));
    }
    if any && spec.scenario.is_empty() && !spec.app.is_empty() {
        return Err(Reply::error(
            400,
            "napp get: an application needs its scenario",
        ));
    }
    let Some(workspace) = sc.workspace.as_deref() else {
        return Err(Reply::error(500, "napp: [scenarios] has no workspace"));
    };
    let (base, rel) = agent
        .config
        .allow_paths
        .check_beneath(&workspace.to_string_lossy())
        .map_err(|denied| Reply::error(403, format!("napp: [scenarios] workspace: {denied}")))?;
    let root = Root::create_beneath(&base, &rel)
        .map_err(|e| Reply::error(500, format!("napp: [scenarios] workspace: {e}")))?;
    let layout = Layout::new(&base.join(&rel), sc.fstore.as_deref(), sc.log.as_deref());
    Ok(Arc::new(Workspace::new(root, layout)))
}

fn failed(e: &NappError) -> Reply {
    let code = if e.is_caller_error() {
        400
    } else if e.is_not_found() {
        404
    } else {
        500
    };
    Reply::error(code, format!("napp: {e}"))
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NappError> + Send + 'static,
) -> Result<T, Reply> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(&e)),
        Err(e) => Err(Reply::error(500, format!("napp: {e}"))),
    }
}

async fn dispatch(
    agent: &Agent,
    spec: &NappSpec,
    ws: Arc<Workspace>,
    follow: bool,
    events: &Events,
) -> Reply {
    let result = match spec.action {
        Action::Push => push(spec, ws, events).await,
        Action::Script => script(agent, spec, ws, follow, events).await,
        Action::Commit => commit(spec, ws).await,
        Action::Versions => versions(spec, ws).await,
        Action::Reset => reset(spec, ws).await,
        Action::Get => get(spec, ws).await,
        Action::Purge => purge(spec, ws).await,
    };
    result.unwrap_or_else(|reply| reply)
}

fn message(spec: &NappSpec, default: &str) -> String {
    match spec.message.is_empty() {
        true => default.to_owned(),
        false => spec.message.clone(),
    }
}

async fn push(spec: &NappSpec, ws: Arc<Workspace>, events: &Events) -> Result<Reply, Reply> {
    if !events.can_have_body() {
        return Err(Reply::error(
            400,
            "napp push needs protocol v2 (its files travel as the request's body)",
        ));
    }
    let (app, scenario) = (spec.app.clone(), spec.scenario.clone());
    let locked = blocking(move || {
        ws.nodeapp(&app, &scenario, true)?
            .ok_or_else(|| NappError::NotFound {
                napp: deploy_napp::dir_name(&app, &scenario),
            })?
            .lock()
    })
    .await?;
    let root = locked.root().map_err(|e| failed(&e))?;
    let dir = locked.path().display().to_string();
    let (summary, bytes) = tarbody::extract(events, root, Options::default())
        .await
        .inspect_err(|reply| {
            tracing::warn!(dir = %dir, code = reply.code, "napp push refused");
        })?;
    let msg = message(spec, "prepare");
    let version = blocking(move || locked.snapshot(&msg, false)).await?;
    Ok(Reply::ok(object([
        ("return", text("true")),
        ("dir", text(dir)),
        (
            "version",
            text(version.map(|v| v.version).unwrap_or_default()),
        ),
        (
            "files",
            text((summary.files + summary.symlinks).to_string()),
        ),
        ("bytes", text(bytes.to_string())),
    ])))
}

async fn commit(spec: &NappSpec, ws: Arc<Workspace>) -> Result<Reply, Reply> {
    let (app, scenario) = (spec.app.clone(), spec.scenario.clone());
    let msg = message(spec, "commit");
    let version = blocking(move || {
        let locked = ws
            .nodeapp(&app, &scenario, true)?
            .ok_or_else(|| NappError::NotFound {
                napp: deploy_napp::dir_name(&app, &scenario),
            })?
            .lock()?;
        locked.snapshot(&msg, true)
    })
    .await?;
    Ok(Reply::ok(object([
        ("return", text("true")),
        (
            "version",
            text(version.map(|v| v.version).unwrap_or_default()),
        ),
    ])))
}

/// A version as `versions` lists it.
fn shown(v: &deploy_napp::Version) -> Value {
    serde_json::json!({"version": v.version, "time": v.time, "message": v.message})
}

async fn versions(spec: &NappSpec, ws: Arc<Workspace>) -> Result<Reply, Reply> {
    let (app, scenario) = (spec.app.clone(), spec.scenario.clone());
    let all = blocking(move || ws.versions(&app, &scenario)).await?;
    let page = deploy_napp::page(
        &all,
        spec.offset.unwrap_or(0),
        spec.limit.unwrap_or(DEFAULT_VERSIONS_LIMIT),
    );
    let listed: Vec<Value> = page.iter().map(shown).collect();
    Ok(Reply::ok(object([
        ("return", text("true")),
        (
            "versions",
            text(serde_json::to_string(&listed).unwrap_or_default()),
        ),
        ("total", text(all.len().to_string())),
        (
            "current",
            text(all.last().map(|v| v.version.clone()).unwrap_or_default()),
        ),
    ])))
}

async fn reset(spec: &NappSpec, ws: Arc<Workspace>) -> Result<Reply, Reply> {
    let (app, scenario) = (spec.app.clone(), spec.scenario.clone());
    let (prefix, msg) = (spec.version.clone(), spec.message.clone());
    let (new, target) = blocking(move || {
        let napp = deploy_napp::dir_name(&app, &scenario);
        let locked = ws
            .nodeapp(&app, &scenario, false)?
            .ok_or(NappError::NotFound { napp })?
            .lock()?;
        locked.reset(&prefix, &msg)
    })
    .await?;
    Ok(Reply::ok(object([
        ("return", text("true")),
        ("version", text(new.version)),
        ("restored", text(target.version)),
    ])))
}

async fn get(spec: &NappSpec, ws: Arc<Workspace>) -> Result<Reply, Reply> {
    let (app, scenario) = (spec.app.clone(), spec.scenario.clone());
    let mut list =
        blocking(move || ws.list((!scenario.is_empty()).then_some(scenario.as_str()))).await?;
    if !app.is_empty() {
        list.retain(|n| n.app == app);
    }
    Ok(Reply::ok(object([
        ("return", text("true")),
        (
            "napps",
            text(serde_json::to_string(&list).unwrap_or_default()),
        ),
    ])))
}

async fn purge(spec: &NappSpec, ws: Arc<Workspace>) -> Result<Reply, Reply> {
    let (app, scenario) = (spec.app.clone(), spec.scenario.clone());
    let existed = blocking(move || ws.purge(&app, &scenario)).await?;
    Ok(Reply::ok(object([
        ("return", text("true")),
        ("existed", flag(existed)),
    ])))
}

/// Private files of one script run, removed when dropped (also when the order is).
struct Scratch {
    paths: Vec<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A new empty file (mode 0600) under `dir`, not there before.
fn fresh_file(dir: &Path, what: &str) -> std::io::Result<(PathBuf, std::fs::File)> {
    let mut attempt = 0u32;
    loop {
        let mut random = [0u8; 8];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random))?;
        let name = format!(
            "{what}.{}.{:016x}",
            std::process::id(),
            u64::from_le_bytes(random)
        );
        let path = dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// The end of the script's `$OCTOPODA_OUTPUT` file. The script may have replaced it:
/// only a regular file is read (a link is not followed, a FIFO or device not opened
/// for good: `O_NONBLOCK` keeps a FIFO with no writer from stalling the open), and only
/// its last [`MAX_RETURNED`] bytes. Anything else reads as empty.
fn read_output(path: &Path) -> Vec<u8> {
    use std::io::Seek as _;
    let mut output = Vec::new();
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return output;
    };
    let Ok(meta) = f.metadata() else {
        return output;
    };
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "napp script: $OCTOPODA_OUTPUT is no longer a regular file; not read");
        return output;
    }
    // Only the end is kept: start there.
    let skip = meta.len().saturating_sub(MAX_RETURNED as u64);
    if skip > 0 && f.seek(std::io::SeekFrom::Start(skip)).is_ok() {
        output = b"[deploy-agent: earlier output dropped]\n".to_vec();
    }
    let _ = f.take(MAX_RETURNED as u64).read_to_end(&mut output);
    output
}

fn valid_var(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

async fn script(
    agent: &Agent,
    spec: &NappSpec,
    ws: Arc<Workspace>,
    follow: bool,
    events: &Events,
) -> Result<Reply, Reply> {
    let code = base64::engine::general_purpose::STANDARD
        .decode(spec.script.as_bytes())
        .map_err(|e| Reply::error(400, format!("napp script: the script is not base64: {e}")))?;
    for (k, v) in &spec.env {
        if !valid_var(k) || v.contains('\0') {
            return Err(Reply::error(
                400,
                format!("napp script: invalid variable {k:?} (a name of letters, digits and '_', a value without NUL)"),
            ));
        }
    }
    for (what, value) in [("file", &spec.file), ("target", &spec.target)] {
        if value.contains('\0') || value.contains('\n') {
            return Err(Reply::error(
                400,
                format!("napp script: invalid {what} {value:?}"),
            ));
        }
    }
    let (app, scenario) = (spec.app.clone(), spec.scenario.clone());
    let layout: Layout = ws.layout().clone();
    let dir = blocking(move || ws.nodeapp_dir(&app, &scenario)).await?;
    let cwd = dir.path().to_path_buf();
    drop(dir);
    // The script and its output file: private, never in the NodeApp directory.
    let scratch_dir = agent.config.server.state_dir.join("napp");
    let made = std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch_dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        });
    let io_failed = |e: std::io::Error| {
        Reply::error(500, format!("napp script: {}: {e}", scratch_dir.display()))
    };
    made.map_err(io_failed)?;
    let (script_path, mut file) = fresh_file(&scratch_dir, "script").map_err(io_failed)?;
    let mut scratch = Scratch {
        paths: vec![script_path.clone()],
    };
    file.write_all(&code).map_err(io_failed)?;
    drop(file);
    let (output_path, file) = fresh_file(&scratch_dir, "output").map_err(io_failed)?;
    drop(file);
    scratch.paths.push(output_path.clone());

    let hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let node = spec
        .env
        .get("OCTOPODA_NODENAME")
        .cloned()
        .unwrap_or(hostname);
    let vars = ScriptVars {
        node: &node,
        app: &spec.app,
        scenario: &spec.scenario,
        target: &spec.target,
        file: &spec.file,
        output: &output_path,
    };
    // The caller's variables first; the node's own (its paths) override them.
    let mut env: Vec<(String, String)> = spec.env.clone().into_iter().collect();
    env.extend(script_env(&layout, &vars));
    let argv = ["/bin/sh".to_owned(), script_path.display().to_string()];
    let job = process::Job {
        argv: &argv,
        stdin: None,
        follow,
        cwd: &cwd,
        env: &env,
        apart: true,
    };
    let finished = process::run_job(job, events).await;
    let output = tokio::task::spawn_blocking(move || read_output(&output_path))
        .await
        .unwrap_or_default();
    drop(scratch);
    tracing::info!(
        scenario = %spec.scenario,
        app = %spec.app,
        target = %spec.target,
        file = %spec.file,
        code = finished.code,
        "napp script ended"
    );
    Ok(Reply::ok(object([
        ("return", flag(finished.code == 0)),
        ("code", text(finished.code.to_string())),
        ("output", b64(&output)),
        ("stdout", b64(&tail(finished.output, MAX_RETURNED))),
        ("stderr", b64(&tail(finished.stderr, MAX_RETURNED))),
    ])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_keep_the_end() {
        assert_eq!(tail(b"abc".to_vec(), 3), b"abc");
        assert_eq!(
            tail(b"abcdef".to_vec(), 2),
            b"[deploy-agent: earlier output dropped]\nef"
        );
    }
}
