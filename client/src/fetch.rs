//! `fetch`: each host's tar stream (its `data` events) extracted as it arrives into
//! `DIR/<host>/`, by the confined extractor (`deploy-extract`), one blocking thread per
//! host in flight.
//!
//! ```text
//! data event (host) ─► base64 ─► queue ─► extractor thread (Root = DIR/<host>, openat2)
//! host done, 200    ─► End ─► the extractor reads the end blocks ─► summary
//! host done, other  ─► the queue closes: a cut archive, whatever it made stays
//! ```
//!
//! The archive comes from the host, so it is treated as hostile: the extractor refuses
//! absolute names, `..`, links leaving the root, devices, and writes nothing through a
//! symbolic link (the kernel enforces it). A refused archive fails that host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::bail;
use base64::Engine as _;
use deploy_common::order::fetch::dir_for_host;
use deploy_common::upload::pieces::{Piece, PieceReader};
use deploy_extract::{Options, Root, Summary};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Pieces queued for one host's extractor.
const QUEUE: usize = 8;

/// Checks the flags of `fetch`: the remote path and `--into`; returns `--into`.
pub fn check(
    is_fetch: bool,
    into: Option<&Path>,
    remote: &str,
    v1: bool,
) -> anyhow::Result<Option<PathBuf>> {
    match (is_fetch, into) {
        (false, None) => Ok(None),
        (false, Some(_)) => bail!("--into is for --order=fetch"),
        (true, None) => bail!("--order=fetch needs --into=DIR (where each host's files go)"),
        (true, Some(_)) if remote.trim().is_empty() => {
            bail!("--order=fetch needs --options=REMOTE_PATH (absolute, or @log/…, @workspace/…)")
        }
        (true, Some(_)) if v1 => bail!("--order=fetch needs --protocol=v2"),
        (true, Some(dir)) => Ok(Some(dir.to_owned())),
    }
}

/// One host's extraction in flight.
struct Pending {
    tx: Option<mpsc::Sender<Piece>>,
    task: JoinHandle<Result<Summary, String>>,
}

/// Every host's extraction.
pub struct Fetcher {
    dir: PathBuf,
    hosts: HashMap<String, Pending>,
}

impl Fetcher {
    /// Extractions into `dir` (made when the first host's data comes).
    pub fn new(dir: PathBuf) -> Fetcher {
        Fetcher {
            dir,
            hosts: HashMap::new(),
        }
    }

    /// Where `host`'s files go.
    pub fn host_dir(&self, host: &str) -> PathBuf {
        self.dir.join(dir_for_host(host))
    }

    /// Hands a piece of `host`'s archive (base64) to its extractor, starting it.
    pub async fn data(&mut self, host: &str, data: &str) {
        let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.fail(host, format!("bad data from the host: {e}"));
                return;
            }
        };
        if !self.hosts.contains_key(host) {
            let pending = self.start(host);
            self.hosts.insert(host.to_owned(), pending);
        }
        let Some(pending) = self.hosts.get_mut(host) else {
            return;
        };
        if let Some(tx) = &pending.tx {
            if tx.send(Piece::Data(bytes)).await.is_err() {
                // The extractor stopped (its error is the host's result): drop the rest.
                pending.tx = None;
            }
        }
    }

    /// `host` is done: `complete` if its reply says the archive is whole. Returns the
    /// extraction's result, if any data came.
    pub async fn finish(&mut self, host: &str, complete: bool) -> Option<Result<Summary, String>> {
        let mut pending = self.hosts.remove(host)?;
        if let Some(tx) = pending.tx.take() {
            if complete {
                let _ = tx.send(Piece::End).await;
            }
        }
        Some(match pending.task.await {
            Ok(result) => result,
            Err(e) => Err(format!("internal error: {e}")),
        })
    }

    /// Starts `host`'s extractor.
    fn start(&self, host: &str) -> Pending {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (base, name) = (self.dir.clone(), PathBuf::from(dir_for_host(host)));
        let task = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&base)
                .map_err(|e| format!("cannot make {}: {e}", base.display()))?;
            let base = base
                .canonicalize()
                .map_err(|e| format!("{}: {e}", base.display()))?;
            let root = Root::create_beneath(&base, &name).map_err(|e| e.to_string())?;
            let reader = PieceReader::new(rx, "the archive was cut short");
            deploy_extract::extract(reader, &root, &Options::default())
                .map_err(|e| format!("the archive was refused: {e}"))
        });
        Pending { tx: Some(tx), task }
    }

    /// Records a failure of `host` before any extraction.
    fn fail(&mut self, host: &str, why: String) {
        let task = tokio::task::spawn_blocking(move || Err(why));
        if let Some(old) = self
            .hosts
            .insert(host.to_owned(), Pending { tx: None, task })
        {
            old.task.abort();
        }
    }
}
