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
//! The fetched path's directory is opened once (and checked to be the path that was
//! allowed, so a component swapped for a link since the check is refused); the walk
//! then goes by directory descriptors, each opened beneath the last with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` ([`deploy_napp::fs`]), and every
//! file is read the same way, so a file or directory swapped for a link during or
//! after the walk is never followed: no name, size or content from outside. A FIFO,
//! socket or device in the tree refuses the fetch (it is never opened for reading).

use super::Agent;
use base64::Engine as _;
use deploy_common::order::fetch::{expand, link_stays_inside};
use deploy_common::order::{object, Reply, Request};
use deploy_common::server::conn::Events;
use deploy_common::upload::{tar, Entry, Kind, Manifest, UploadError};
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
    let parent_dir = parent.to_owned();
    // Opened once: the walk and every read go beneath this descriptor.
    let base = match open_checked(&parent_dir) {
        Ok(base) => std::sync::Arc::new(base),
        Err(reply) => return reply,
    };
    let walked = {
        let (base, name) = (std::sync::Arc::clone(&base), name.clone());
        tokio::task::spawn_blocking(move || walk(&base, &name)).await
    };
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

/// Opens the directory `dir` (canonical, just allowed) and checks that what was opened
/// is still `dir`: a component swapped for a link since the check is refused (409).
fn open_checked(dir: &Path) -> Result<deploy_extract::Root, Reply> {
    use std::os::fd::AsRawFd as _;
    let root =
        deploy_extract::Root::open(dir).map_err(|e| Reply::error(500, format!("fetch: {e}")))?;
    let opened = std::fs::read_link(format!("/proc/self/fd/{}", root.fd().as_raw_fd()))
        .map_err(|e| Reply::error(500, format!("fetch: {}: {e}", dir.display())))?;
    if opened != dir {
        tracing::warn!(dir = %dir.display(), opened = %opened.display(), "fetch: the directory changed since it was allowed");
        return Err(Reply::error(
            409,
            format!(
                "fetch: {} changed while it was being opened; try again",
                dir.display()
            ),
        ));
    }
    Ok(root)
}

/// Walks `name` beneath `base` by descriptors (see the module docs): the manifest of
/// what the archive holds, names relative to `base`, in archive order.
fn walk(base: &deploy_extract::Root, name: &str) -> Result<Manifest, UploadError> {
    let mut manifest = Manifest::default();
    add(
        &mut manifest,
        base.fd(),
        name,
        name.to_owned(),
        &base.path().join(name),
        0,
    )?;
    Ok(manifest)
}

fn add(
    manifest: &mut Manifest,
    dir: &std::os::fd::OwnedFd,
    file_name: &str,
    name: String,
    local: &Path,
    depth: usize,
) -> Result<(), UploadError> {
    use deploy_napp::fs as nfs;
    use nix::sys::stat::{fstatat, SFlag};
    let shown = || local.display().to_string();
    let read_err = |e: nix::errno::Errno| UploadError::Read {
        path: shown(),
        cause: match e {
            nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => {
                "a symbolic link is in the way (changed during the fetch?)".to_owned()
            }
            e => e.to_string(),
        },
    };
    if depth > nfs::MAX_DEPTH {
        return Err(UploadError::Read {
            path: shown(),
            cause: "too deep".to_owned(),
        });
    }
    let st = fstatat(
        dir,
        nfs::os(file_name.as_bytes()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(read_err)?;
    let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => {
            // Unreadable files are refused now, not mid-stream (never a FIFO: the
            // open is non-blocking and checks the type).
            nfs::open_file(dir, file_name.as_bytes()).map_err(read_err)?;
            Kind::File {
                size: u64::try_from(st.st_size).unwrap_or_default(),
            }
        }
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => {
            let target = nfs::read_link(dir, file_name.as_bytes()).map_err(read_err)?;
            let target =
                String::from_utf8(target).map_err(|_| UploadError::Name { path: shown() })?;
            Kind::Symlink { target }
        }
        _ => return Err(UploadError::Kind { path: shown() }),
    };
    let is_dir = kind == Kind::Dir;
    manifest.entries.push(Entry {
        local: local.to_owned(),
        name: name.clone(),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime: u64::try_from(st.st_mtime).unwrap_or_default(),
    });
    if !is_dir {
        return Ok(());
    }
    let sub = nfs::open_dir(dir, file_name.as_bytes()).map_err(read_err)?;
    for child in nfs::list(&sub).map_err(read_err)? {
        let child_path = local.join(nfs::os(&child));
        let child = String::from_utf8(child).map_err(|_| UploadError::Name {
            path: child_path.display().to_string(),
        })?;
        let child_name = format!("{name}/{child}");
        add(manifest, &sub, &child, child_name, &child_path, depth + 1)?;
    }
    Ok(())
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
