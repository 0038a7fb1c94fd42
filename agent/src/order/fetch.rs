//! `fetch`: a file or directory under `[allow::paths]`, streamed back to the caller as
//! one tar archive in `data` events (see [`deploy_common::order::fetch`]). Only where
//! the configuration says `allow_fetch = on`, and only over v2 (v1 has no events).
//!
//! ```text
//! options ─► variables (@log, @root; @workspace, @fstore with [scenarios])
//!   ─► canonical path (links followed) under [allow::paths], else 403
//!   ─► walk (links inside kept as links; those leaving the tree left out)
//!   ─► tar in 64 KiB pieces ─► data events ─► reply {path, name, files, bytes, skipped}
//! ```
//!
//! The walk goes by path; every file is then opened beneath the fetched path's
//! directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so a file or
//! directory swapped for a link since the walk stops the archive (an error naming it)
//! instead of being followed. A directory swapped during the walk itself can show the
//! names and sizes of what it points to, never their contents.

use super::Agent;
use base64::Engine as _;
use deploy_common::order::fetch::{expand, link_stays_inside};
use deploy_common::order::{object, Reply, Request};
use deploy_common::server::conn::Events;
use deploy_common::upload::{tar, Kind, Manifest, UploadError, UploadSpec};
use deploy_common::wire::message::Event;
use serde_json::Value;
use std::path::Path;

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    if !agent.config.server.allow_fetch {
        return Reply::error(403, "fetch is disabled on this agent (allow_fetch = off)");
    }
    if !events.wanted() {
        return Reply::error(400, "fetch needs protocol v2 (the files travel as events)");
    }
    let path = match expand(&request.options, |var| variable(agent, var)) {
        Ok(path) => path,
        Err(e) => return Reply::error(400, e.to_string()),
    };
    let resolved = match agent.config.allow_paths.check(&path) {
        Ok(resolved) => resolved,
        Err(denied) => {
            tracing::info!(path = %path, reason = %denied.reason(), "fetch refused");
            return Reply::error(403, denied.to_string());
        }
    };
    let (Some(parent), Some(name)) = (resolved.parent(), resolved.file_name()) else {
        return Reply::error(
            400,
            format!("fetch {path:?}: cannot fetch the root directory"),
        );
    };
    let Some(name) = name.to_str().map(str::to_owned) else {
        return Reply::error(400, format!("fetch {path:?}: a name that is not UTF-8"));
    };
    if !resolved.exists() {
        return Reply::error(404, format!("fetch {path:?}: no such file or directory"));
    }
    let spec = UploadSpec {
        files: vec![name.clone()],
        relative: true,
        ..UploadSpec::default()
    };
    let parent_dir = parent.to_owned();
    let parent = parent_dir.clone();
    let walked = tokio::task::spawn_blocking(move || Manifest::build(&spec, &parent)).await;
    let mut manifest = match walked {
        Ok(Ok(manifest)) => manifest,
        Ok(Err(UploadError::Kind { path })) => {
            return Reply::error(
                400,
                format!("fetch: {path}: only files, directories and symbolic links can be fetched"),
            )
        }
        Ok(Err(e)) => return Reply::error(500, format!("fetch: {e}")),
        Err(e) => return Reply::error(500, format!("fetch: {e}")),
    };
    let before = manifest.entries.len();
    manifest.entries.retain(|e| match &e.kind {
        Kind::Symlink { target } => {
            let keep = link_stays_inside(&e.name, target);
            if !keep {
                tracing::info!(link = %e.local.display(), target = %target, "fetch: a link leaving the fetched tree left out");
            }
            keep
        }
        _ => true,
    });
    let skipped = before - manifest.entries.len();
    let (files, _) = manifest.totals();
    // Files are read beneath the fetched path's directory through no link: one
    // swapped in since the walk is refused by the kernel, not followed.
    let base = match deploy_extract::Root::open(&parent_dir) {
        Ok(base) => std::sync::Arc::new(base),
        Err(e) => return Reply::error(500, format!("fetch: {e}")),
    };
    let open = |entry: &deploy_common::upload::Entry| {
        let (base, name) = (std::sync::Arc::clone(&base), entry.name.clone());
        async move {
            tokio::task::spawn_blocking(move || base.open_file(Path::new(&name)))
                .await
                .map_err(std::io::Error::other)?
                .map(tokio::fs::File::from_std)
        }
    };
    let sent = tar::stream_with(&manifest, open, |chunk| {
        let data = base64::engine::general_purpose::STANDARD.encode(chunk);
        async move {
            events.send(Event::Data { data }).await;
            Ok::<(), std::convert::Infallible>(())
        }
    })
    .await;
    let bytes = match sent {
        Ok(bytes) => bytes,
        Err(e) => {
            tracing::warn!(path = %resolved.display(), error = %e, "fetch stopped");
            return Reply::error(
                500,
                format!("fetch stopped, the archive is incomplete: {e}"),
            );
        }
    };
    tracing::info!(path = %resolved.display(), files, bytes, skipped, "fetched");
    Reply::ok(object([
        ("return", Value::String("true".into())),
        ("path", Value::String(resolved.display().to_string())),
        ("name", Value::String(name)),
        ("files", Value::String(files.to_string())),
        ("bytes", Value::String(bytes.to_string())),
        ("skipped", Value::String(skipped.to_string())),
    ]))
}

/// The directory a path variable names on this agent, if it has one: with a
/// `[scenarios] workspace`, the paths its scripts see (`OCTOPODA_ROOT`, `_WORKSPACE`,
/// `_FSTORE`, `_LOG`); without, `@root` is `/root` and `@log` the error log's directory.
fn variable(agent: &Agent, var: &str) -> Option<String> {
    let sc = &agent.config.scenarios;
    if let Some(workspace) = sc.workspace.as_deref() {
        let layout = deploy_napp::Layout::new(workspace, sc.fstore.as_deref(), sc.log.as_deref());
        let dir = match var {
            "@root" => layout.root,
            "@workspace" => layout.workspace,
            "@fstore" => layout.fstore,
            "@log" => layout.log,
            _ => return None,
        };
        return Some(dir.display().to_string());
    }
    match var {
        "@root" => Some("/root".to_owned()),
        "@log" => {
            let log = &agent.config.server.log_error_path;
            if log.to_string_lossy().contains("syslog") {
                return None;
            }
            log.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| p.display().to_string())
        }
        // `@workspace`, `@fstore`: only with `[scenarios] workspace`.
        _ => None,
    }
    .filter(|dir| Path::new(dir).is_absolute())
}
