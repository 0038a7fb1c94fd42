//! One deploy on one host, in two phases so that a fleet can prepare everywhere before
//! anything switches anywhere.
//!
//! ```text
//! prepare   fetch src (retries, timeout, bandwidth) while hashing ─► verify checksum
//!           ─► pre ─► unpack (confined) into a staging directory ─► chmod dest_mode
//!           (a file:// release with no pre and no bandwidth cap: read once, unpacked
//!           into the staging directory while hashed, discarded unless the digest holds)
//!           release strategy: staging renamed to <releases>/<id>, recorded `prepared`
//! activate  rsync: rsync -a --delete [--exclude …] [--exclude-from …] tree/ dest/
//!           mv:    rename(tree, dest) (fails if dest exists, as stretcher)
//!           release: switch dest to <id> (atomic), history, prune, optional confirm
//!           ─► post
//! finish    success or failure commands, the whole log on stdin
//! ```
//!
//! [`run`] does all three, as stretcher does for one event. Without `src`, only the
//! commands run (pre, post, then success or failure).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::commands::{self, CommandError, Log};
use crate::fetch::{self, FetchError, Limits};
use crate::layout::{self, Event, LayoutError, Meta, Pending, Releases};
use crate::manifest::{Manifest, Strategy};
use crate::unpack::{self, UnpackError};

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Fetching the artifact failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The artifact is not what the manifest says.
    #[error("checksum mismatch: expected {algorithm}:{expected}, got {algorithm}:{got}")]
    Checksum {
        /// The algorithm.
        algorithm: &'static str,
        /// What the manifest says.
        expected: String,
        /// What was fetched.
        got: String,
    },
    /// Unpacking failed.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// A hook failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The release layout failed.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Another file-system step failed.
    #[error("{what}: {reason}")]
    Step {
        /// The step.
        what: String,
        /// Why.
        reason: String,
    },
    /// Hooks are not allowed here.
    #[error("this manifest has commands, and hooks are disabled here")]
    HooksDisabled,
}

fn step(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeployError {
    let what = what.into();
    move |e| DeployError::Step {
        what,
        reason: e.to_string(),
    }
}

/// Where and how deploys run on this host.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A private directory for downloads and staging trees (not for releases).
    pub work_dir: PathBuf,
    /// Fetch limits.
    pub limits: Limits,
    /// Whether the manifest's commands may run.
    pub hooks: bool,
    /// The working directory of the commands.
    pub cwd: PathBuf,
}

/// Who asked, and why.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The manifest's URL (empty: inline).
    pub manifest_url: String,
    /// The rendered manifest's text (kept with a release).
    pub manifest_text: String,
    /// Who asked.
    pub who: String,
    /// Their message.
    pub message: String,
    /// The time part of the release id, when the caller chooses it (so that every
    /// host of a rollout names the release alike); otherwise this host's clock.
    pub stamp: Option<String>,
}

/// A prepared deploy, ready to activate.
#[derive(Debug)]
pub struct Prepared {
    /// The release id (release strategy).
    pub id: Option<String>,
    /// The unpacked tree (rsync and mv strategies), in the work directory.
    tree: Option<PathBuf>,
    /// The work directory of this deploy (removed by [`Prepared::cleanup`]).
    scratch: Option<PathBuf>,
    /// Bytes fetched.
    pub bytes: u64,
}

impl Prepared {
    /// Removes the downloads and staging trees.
    pub fn cleanup(&self) {
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What an activation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Activated {
    /// The release now current (release strategy).
    pub id: Option<String>,
    /// The one current before.
    pub previous: Option<String>,
    /// Releases removed by pruning.
    pub pruned: Vec<String>,
    /// The instant `dest` was switched (the rename), in Unix milliseconds (release
    /// strategy): the history, states and pruning that follow do not count.
    pub switched_at: Option<i64>,
}

fn check_hooks(manifest: &Manifest, settings: &Settings) -> Result<(), DeployError> {
    let c = &manifest.commands;
    let any =
        !(c.pre.is_empty() && c.post.is_empty() && c.success.is_empty() && c.failure.is_empty());
    if any && !settings.hooks {
        return Err(DeployError::HooksDisabled);
    }
    Ok(())
}

/// A fresh scratch directory under the work directory.
fn scratch(settings: &Settings) -> Result<PathBuf, DeployError> {
    std::fs::create_dir_all(&settings.work_dir).map_err(step(format!(
        "cannot create {}",
        settings.work_dir.display()
    )))?;
    for n in 0..1000u32 {
        let dir = settings
            .work_dir
            .join(format!("deploy.{}.{n}", std::process::id()));
        let mut builder = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(step(format!("cannot create {}", dir.display()))(e)),
        }
    }
    Err(DeployError::Step {
        what: "scratch directory".into(),
        reason: "no free name".into(),
    })
}

/// Phase 1: fetch, verify, pre, unpack.
pub async fn prepare(
    manifest: &Manifest,
    settings: &Settings,
    context: &Context,
    log: &Log,
    progress: fetch::OnProgress<'_>,
) -> Result<Prepared, DeployError> {
    check_hooks(manifest, settings)?;
    let env = hook_env(manifest, None);
    let (Some(src), Some(dest)) = (&manifest.src, &manifest.dest) else {
        commands::run_list(
            "pre",
            &manifest.commands.pre,
            &settings.cwd,
            &env,
            None,
            log,
        )
        .await?;
        return Ok(Prepared {
            id: None,
            tree: None,
            scratch: None,
            bytes: 0,
        });
    };
    let scratch = scratch(settings)?;
    let result = prepare_in(
        manifest,
        settings,
        context,
        log,
        progress,
        src,
        Path::new(dest),
        &scratch,
    )
    .await;
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn prepare_in(
    manifest: &Manifest,
    settings: &Settings,
    context: &Context,
    log: &Log,
    progress: fetch::OnProgress<'_>,
    src: &str,
    dest: &Path,
    scratch: &Path,
) -> Result<Prepared, DeployError> {
    let env = hook_env(manifest, None);
    let mut bytes = 0;
    let mut artifact = None;
    let mut hash = String::new();
    // A local artifact for a release, with nothing to run between fetch and unpack:
    // read once, hashed while it is unpacked into the staging directory (removed if the
    // digest is wrong), instead of copied, read back and unpacked.
    let one_pass = match (&manifest.checksum, src.strip_prefix("file://")) {
        (Some(checksum), Some(path))
            if manifest.strategy == Strategy::Release
                && manifest.commands.pre.is_empty()
                && settings.limits.max_bandwidth.is_none_or(|r| r == 0) =>
        {
            hash = checksum.hex.clone();
            Some((checksum.clone(), PathBuf::from(path)))
        }
        _ => None,
    };
    if let Some(checksum) = manifest.checksum.as_ref().filter(|_| one_pass.is_none()) {
        let path = scratch.join("artifact");
        log.line(&format!("fetching {src}"));
        let fetched =
            fetch::fetch(src, &path, checksum.algorithm, &settings.limits, progress).await?;
        log.line(&format!(
            "Wrote {} bytes to {} (in {:.3}s)",
            fetched.bytes,
            path.display(),
            fetched.elapsed.as_secs_f64()
        ));
        if fetched.hex != checksum.hex {
            return Err(DeployError::Checksum {
                algorithm: checksum.algorithm.as_str(),
                expected: checksum.hex.clone(),
                got: fetched.hex,
            });
        }
        bytes = fetched.bytes;
        hash = checksum.hex.clone();
        artifact = Some(path);
    }
    commands::run_list(
        "pre",
        &manifest.commands.pre,
        &settings.cwd,
        &env,
        None,
        log,
    )
    .await?;
    let releases = Releases::new(dest, manifest.releases_dir.as_deref().map(Path::new));
    let (id, tree) = match manifest.strategy {
        Strategy::Release => {
            releases.ensure()?;
            if hash.is_empty() {
                hash = format!("{:08x}", rand_u32());
            }
            let id = match &context.stamp {
                Some(stamp) => releases.id_with_stamp(stamp, &hash)?,
                None => releases.new_id(&hash),
            };
            (Some(id.clone()), releases.staging(&id))
        }
        Strategy::Rsync | Strategy::Mv => (None, scratch.join("tree")),
    };
    std::fs::create_dir_all(&tree).map_err(step(format!("cannot create {}", tree.display())))?;
    let filled = match (&artifact, &one_pass) {
        (_, Some((checksum, path))) => {
            log.line(&format!("unpacking {src} while hashing it"));
            let read = read_local(
                path.clone(),
                src.to_owned(),
                tree.clone(),
                checksum.algorithm,
                settings.limits.clone(),
            )
            .await;
            match read {
                Ok((n, hex)) if hex == checksum.hex => {
                    bytes = n;
                    progress(fetch::Progress {
                        bytes: n,
                        total: Some(n),
                    });
                    log.line(&format!("Read and unpacked {n} bytes"));
                    Ok(())
                }
                Ok((_, hex)) => Err(DeployError::Checksum {
                    algorithm: checksum.algorithm.as_str(),
                    expected: checksum.hex.clone(),
                    got: hex,
                }),
                Err(e) => Err(e),
            }
        }
        (Some(artifact), None) => {
            let (artifact, into) = (artifact.clone(), tree.clone());
            tokio::task::spawn_blocking(move || {
                unpack::unpack(&artifact, &into, &deploy_extract::Options::default())
            })
            .await
            .map_err(|e| DeployError::Step {
                what: "unpack".into(),
                reason: e.to_string(),
            })?
            .map(drop)
            .map_err(DeployError::from)
        }
        (None, None) => rsync_tree(src, &tree, log).await,
    };
    if let Err(e) = filled {
        let _ = std::fs::remove_dir_all(&tree);
        return Err(e);
    }
    set_mode(&tree, manifest.dest_mode)?;
    if let Some(artifact) = &artifact {
        let _ = std::fs::remove_file(artifact);
    }
    if let Some(id) = &id {
        let final_dir = releases.path(id);
        std::fs::rename(&tree, &final_dir)
            .map_err(step(format!("cannot rename into {}", final_dir.display())))?;
        releases.record(&Meta {
            id: id.clone(),
            src: src.to_owned(),
            checksum: manifest
                .checksum
                .as_ref()
                .map(|c| format!("{}:{}", c.algorithm.as_str(), c.hex))
                .unwrap_or_default(),
            manifest: context.manifest_url.clone(),
            time: layout::now(),
            who: context.who.clone(),
            message: context.message.clone(),
            state: "prepared".into(),
        })?;
        let text_path = releases.dir().join(".meta").join(format!("{id}.manifest"));
        layout::write_atomic(&text_path, context.manifest_text.as_bytes())?;
        log.line(&format!("prepared release {id}"));
    }
    Ok(Prepared {
        id,
        tree: (manifest.strategy != Strategy::Release).then_some(tree),
        scratch: Some(scratch.to_owned()),
        bytes,
    })
}

/// Reads the local artifact at `path` once, unpacking it into `into` while hashing it
/// (opening it retried as a fetch is); returns the byte count and the digest.
async fn read_local(
    path: PathBuf,
    url: String,
    into: PathBuf,
    algorithm: crate::manifest::Algorithm,
    limits: Limits,
) -> Result<(u64, String), DeployError> {
    let mut attempt = 0;
    let file = loop {
        match std::fs::File::open(&path) {
            Ok(f) => break f,
            Err(e) if attempt < limits.retry => {
                attempt += 1;
                tracing::warn!(url = %url, attempt, reason = %e, "cannot open the source; retrying");
                tokio::time::sleep(limits.retry_wait).await;
            }
            Err(e) => {
                return Err(FetchError::Open {
                    url,
                    reason: format!("{}: {e}", path.display()),
                }
                .into())
            }
        }
    };
    tokio::task::spawn_blocking(move || {
        let mut reader = fetch::Hashing::new(file, algorithm, &limits);
        unpack::unpack_from(
            &mut reader,
            &url,
            &into,
            &deploy_extract::Options::default(),
        )?;
        reader.finish().map_err(|e| {
            DeployError::from(FetchError::Read {
                url: url.clone(),
                reason: e.to_string(),
            })
        })
    })
    .await
    .map_err(|e| DeployError::Step {
        what: "unpack".into(),
        reason: e.to_string(),
    })?
}

/// Copies an `rsync://` tree into `into`.
async fn rsync_tree(src: &str, into: &Path, log: &Log) -> Result<(), DeployError> {
    let src = if src.ends_with('/') {
        src.to_owned()
    } else {
        format!("{src}/")
    };
    let mut into_arg = into.as_os_str().to_owned();
    into_arg.push("/");
    let out = tokio::process::Command::new("rsync")
        .args(["-a", "--delete", "--"])
        .arg(&src)
        .arg(&into_arg)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(step("cannot run rsync"))?;
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        log.line(line);
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(DeployError::Step {
            what: format!("rsync {src}"),
            reason: format!("exit status {}", out.status.code().unwrap_or(-1)),
        })
    }
}

fn set_mode(dir: &Path, mode: u32) -> Result<(), DeployError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(step(format!("cannot chmod {}", dir.display())))
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom(&mut b);
    u32::from_le_bytes(b)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Environment for the hooks.
fn hook_env(manifest: &Manifest, id: Option<&str>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if let Some(dest) = &manifest.dest {
        env.push(("DEPLOY_DEST".to_owned(), dest.clone()));
    }
    if let Some(id) = id {
        env.push(("DEPLOY_RELEASE".to_owned(), id.to_owned()));
    }
    env
}

/// Options of an activation.
#[derive(Debug, Clone, Default)]
pub struct Activation {
    /// Revert by itself unless confirmed within this.
    pub confirm_within: Option<Duration>,
}

/// Phase 2: put the prepared tree in place, then `post`.
pub async fn activate(
    manifest: &Manifest,
    prepared: &Prepared,
    settings: &Settings,
    context: &Context,
    activation: &Activation,
    log: &Log,
) -> Result<Activated, DeployError> {
    let mut activated = Activated::default();
    if let Some(dest) = &manifest.dest {
        let dest = Path::new(dest);
        match (&prepared.id, &prepared.tree) {
            (Some(id), _) => {
                activated = switch(manifest, dest, id, context, activation, "switch", log)?;
            }
            (None, Some(tree)) if manifest.strategy == Strategy::Mv => {
                if std::fs::symlink_metadata(dest).is_ok() {
                    return Err(DeployError::Step {
                        what: format!("mv {} {}", tree.display(), dest.display()),
                        reason: "dest already exists".into(),
                    });
                }
                std::fs::rename(tree, dest).map_err(step(format!(
                    "mv {} {}",
                    tree.display(),
                    dest.display()
                )))?;
                log.line(&format!("moved into {}", dest.display()));
            }
            (None, Some(tree)) => rsync_into(manifest, tree, dest, log).await?,
            (None, None) => {}
        }
    }
    let env = hook_env(manifest, activated.id.as_deref());
    commands::run_list(
        "post",
        &manifest.commands.post,
        &settings.cwd,
        &env,
        None,
        log,
    )
    .await?;
    Ok(activated)
}

/// Switches `dest` to release `id` under the layout's lock, recording it.
pub fn switch(
    manifest: &Manifest,
    dest: &Path,
    id: &str,
    context: &Context,
    activation: &Activation,
    action: &str,
    log: &Log,
) -> Result<Activated, DeployError> {
    let releases = Releases::new(dest, manifest.releases_dir.as_deref().map(Path::new));
    let _lock = releases.lock()?;
    let (previous, switched_at) = releases.switch_timed(id)?;
    releases.append(&Event {
        time: layout::now(),
        action: action.to_owned(),
        id: id.to_owned(),
        from: previous.clone().unwrap_or_default(),
        who: context.who.clone(),
        message: context.message.clone(),
    })?;
    releases.set_state(id, "active")?;
    if let Some(prev) = &previous {
        if prev != id {
            let _ = releases.set_state(prev, "inactive");
        }
    }
    match (activation.confirm_within, &previous) {
        (Some(within), Some(prev)) => releases.set_pending(Some(&Pending {
            id: id.to_owned(),
            previous: prev.clone(),
            deadline: chrono::Utc::now().timestamp()
                + i64::try_from(within.as_secs()).unwrap_or(i64::MAX / 2),
        }))?,
        _ => releases.set_pending(None)?,
    }
    let pruned = releases.prune(manifest.keep);
    log.line(&format!(
        "switched {} to {id}{}",
        dest.display(),
        previous
            .as_deref()
            .map(|p| format!(" (from {p})"))
            .unwrap_or_default()
    ));
    Ok(Activated {
        id: Some(id.to_owned()),
        previous,
        pruned,
        switched_at: Some(switched_at),
    })
}

async fn rsync_into(
    manifest: &Manifest,
    tree: &Path,
    dest: &Path,
    log: &Log,
) -> Result<(), DeployError> {
    let mut cmd = tokio::process::Command::new("rsync");
    cmd.args(["-a", "--delete", "-v"]);
    for pattern in &manifest.excludes {
        cmd.arg(format!("--exclude={pattern}"));
    }
    if let Some(file) = &manifest.exclude_from {
        cmd.arg("--exclude-from").arg(tree.join(file));
    }
    let mut from = tree.as_os_str().to_owned();
    from.push("/");
    let mut to = dest.as_os_str().to_owned();
    to.push("/");
    cmd.arg("--").arg(&from).arg(&to).kill_on_drop(true);
    let out = cmd.output().await.map_err(step("cannot run rsync"))?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        log.line(line);
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(DeployError::Step {
            what: format!("rsync into {}", dest.display()),
            reason: format!("exit status {}", out.status.code().unwrap_or(-1)),
        })
    }
}

/// Discards a prepared release that will not be switched to.
pub fn discard(manifest: &Manifest, prepared: &Prepared) {
    if let (Some(id), Some(dest)) = (&prepared.id, &manifest.dest) {
        let releases = Releases::new(
            Path::new(dest),
            manifest.releases_dir.as_deref().map(Path::new),
        );
        if releases.current().as_deref() != Some(id.as_str()) {
            let _ = std::fs::remove_dir_all(releases.path(id));
            let _ = releases.set_state(id, "discarded");
        }
    }
    prepared.cleanup();
}

/// What [`run`] did.
#[derive(Debug)]
pub struct Outcome {
    /// The activation, or why it failed.
    pub result: Result<Activated, DeployError>,
    /// Bytes fetched.
    pub bytes: u64,
}

/// A whole deploy: prepare, activate, then `success` or `failure` with the log.
pub async fn run(
    manifest: &Manifest,
    settings: &Settings,
    context: &Context,
    activation: &Activation,
    log: &Log,
) -> Outcome {
    let mut bytes = 0;
    let result = async {
        let prepared = prepare(manifest, settings, context, log, &|_| {}).await?;
        bytes = prepared.bytes;
        let activated = activate(manifest, &prepared, settings, context, activation, log).await;
        if activated.is_err() {
            discard(manifest, &prepared);
        } else {
            prepared.cleanup();
        }
        activated
    }
    .await;
    finish(manifest, settings, &result, log).await;
    Outcome { result, bytes }
}

/// stretcher's last step: the `success` or `failure` commands, each given the whole log
/// on stdin; their own failures are only logged, as stretcher does.
pub async fn finish(
    manifest: &Manifest,
    settings: &Settings,
    result: &Result<Activated, DeployError>,
    log: &Log,
) {
    let (kind, lines) = match result {
        Ok(_) => ("success", &manifest.commands.success),
        Err(e) => {
            log.line(&format!("deploy failed: {e}"));
            ("failure", &manifest.commands.failure)
        }
    };
    if !lines.is_empty() && settings.hooks {
        let env = hook_env(manifest, result.as_ref().ok().and_then(|a| a.id.as_deref()));
        let input = log.bytes();
        if let Err(e) =
            commands::run_list(kind, lines, &settings.cwd, &env, Some(&input), log).await
        {
            log.line(&format!("{kind} command {e}"));
        }
    }
}
