//! `upload`: a tar stream, sent as the request's body, extracted in-process under a
//! directory that `[allow::paths]` allows, then optionally a command run there. Only
//! where the agent's configuration says `allow_upload = on` (and, for the command,
//! `allow_run = on`).
//!
//! ```text
//! checks (403/400) ─► open the allowed root, make ROOT beneath it (openat2, no links)
//!   ─► ask the client for the body ─► each piece to the extractor (a blocking thread)
//!   ─► end: the extractor reads the end blocks ─► the command (argv, no shell) in ROOT
//! ```
//!
//! The archive is the caller's, and the agent often runs as root, so no other program
//! reads it: [`deploy_extract`] parses every header itself and makes every entry
//! relative to ROOT's directory descriptor through no symbolic link (the kernel
//! enforces it), refusing hard links, devices, FIFOs, absolute names, `..`, links that
//! point out of ROOT and any header or pax key it does not model. Files never keep the
//! archive's owners, nor setuid, setgid, sticky or group/other write bits. Each file is
//! written under a temporary name and renamed into place when complete, so a cut body
//! or a refused entry leaves no truncated file; complete entries before it stay. The
//! extraction runs as the agent's user; `sudo` applies to the command only.
//!
//! If the extraction stops early (a refused entry, a full disk), the rest of the body
//! is read and dropped, so the client gets the reply rather than a broken connection
//! (see [`tarbody`], shared with `napp`'s push).

use super::{process, tarbody, Agent};
use deploy_common::order::run::ran;
use deploy_common::order::upload::sent;
use deploy_common::order::{Reply, Request};
use deploy_common::server::conn::Events;
use deploy_extract::{Options, Root};

pub(super) async fn run(agent: &Agent, request: &Request, events: &Events) -> Reply {
    let server = &agent.config.server;
    if !server.allow_upload {
        return Reply::error(403, "upload is disabled on this agent (allow_upload = off)");
    }
    if !request.argv.is_empty() && !server.allow_run {
        return Reply::error(
            403,
            "a command after upload needs allow_run = on on this agent",
        );
    }
    let Some(spec) = request.upload.as_deref() else {
        return Reply::error(400, "upload needs its files and root");
    };
    if !events.can_have_body() {
        return Reply::error(
            400,
            "upload needs protocol v2 (its files travel as the request's body)",
        );
    }
    let (base, rel) = match agent.config.allow_paths.check_beneath(&spec.root) {
        Ok(found) => found,
        Err(denied) => return Reply::error(403, denied.to_string()),
    };
    let root = match Root::create_beneath(&base, &rel) {
        Ok(root) => root,
        Err(e) => return Reply::error(403, e.to_string()),
    };
    let root_text = root.path().to_string_lossy().into_owned();
    let (summary, bytes) = match tarbody::extract(events, root, Options::default()).await {
        Ok(done) => done,
        Err(reply) => {
            tracing::warn!(root = %root_text, code = reply.code, "upload refused");
            return reply;
        }
    };
    let files = usize::try_from(summary.files + summary.symlinks).unwrap_or(usize::MAX);
    if request.argv.is_empty() {
        return Reply::ok(sent(ran(0, "extract", b""), &root_text, files, bytes));
    }
    let command = process::with_sudo(request.sudo, &request.argv);
    let finished = process::run_in(
        &command,
        None,
        request.follow,
        events,
        std::path::Path::new(&root_text),
    )
    .await;
    let body = ran(finished.code, &command.join(" "), &finished.output);
    Reply::ok(sent(body, &root_text, files, bytes))
}
