//! The manifest's hooks: each line run with `sh -c`, in order, the first failure
//! failing the list, their output kept in the deploy [`Log`] (and streamed to its sink);
//! `success`/`failure` commands get the whole log so far on stdin (each its own full
//! copy; a command that does not read it is fine).

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// A deploy's log: every line, kept for `success`/`failure` and the reply, and passed
/// to a sink as it comes (a terminal, the order's event stream).
#[derive(Clone, Default)]
pub struct Log {
    kept: Arc<Mutex<Vec<u8>>>,
    sink: Option<Sink>,
}

/// Where each line goes as it comes.
type Sink = Arc<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").finish_non_exhaustive()
    }
}

/// Most bytes of log kept (older lines beyond it are dropped, and said so).
const MAX_LOG: usize = 4 << 20;

impl Log {
    /// A log that also passes each line to `sink`.
    pub fn with_sink(sink: impl Fn(&str) + Send + Sync + 'static) -> Log {
        Log {
            kept: Arc::default(),
            sink: Some(Arc::new(sink)),
        }
    }

    /// A handle on the kept bytes alone: unlike a clone, it does not keep the sink (and
    /// whatever the sink holds, such as a channel's sender) alive.
    pub fn keeper(&self) -> Log {
        Log {
            kept: Arc::clone(&self.kept),
            sink: None,
        }
    }

    /// Adds a line.
    pub fn line(&self, text: &str) {
        if let Some(sink) = &self.sink {
            sink(text);
        }
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() + text.len() < MAX_LOG {
            kept.extend_from_slice(text.as_bytes());
            kept.push(b'\n');
        }
    }

    /// Everything so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A failed hook.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed: {command} {status}")]
pub struct CommandError {
    /// The line.
    pub command: String,
    /// `exit status N`, or why it could not run.
    pub status: String,
}

/// Runs `lines` in order in `cwd` with `env` added; stops at the first failure.
pub async fn run_list(
    kind: &str,
    lines: &[String],
    cwd: &Path,
    env: &[(String, String)],
    stdin: Option<&[u8]>,
    log: &Log,
) -> Result<(), CommandError> {
    for line in lines {
        log.line(&format!("{kind}: {line}"));
        run_one(line, cwd, env, stdin, log).await?;
    }
    Ok(())
}

async fn run_one(
    line: &str,
    cwd: &Path,
    env: &[(String, String)],
    stdin: Option<&[u8]>,
    log: &Log,
) -> Result<(), CommandError> {
    let failed = |status: String| CommandError {
        command: line.to_owned(),
        status,
    };
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(format!("cannot start: {e}")))?;
    let feed = child.stdin.take().map(|mut pipe| {
        let bytes = stdin.unwrap_or_default().to_vec();
        tokio::spawn(async move {
            // A command that does not read its input is fine (EPIPE ignored).
            let _ = pipe.write_all(&bytes).await;
        })
    });
    let out = child.stdout.take();
    let err = child.stderr.take();
    let (status, (), ()) = tokio::join!(child.wait(), pump(out, log), pump(err, log));
    if let Some(feed) = feed {
        feed.abort();
    }
    let status = status.map_err(|e| failed(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failed(match status.code() {
            Some(code) => format!("exit status {code}"),
            None => "killed by a signal".into(),
        }))
    }
}

/// Each line of `pipe` into `log`, to its end.
async fn pump(pipe: Option<impl tokio::io::AsyncRead + Unpin>, log: &Log) {
    if let Some(pipe) = pipe {
        let mut lines = tokio::io::BufReader::new(pipe).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            log.line(&l);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_stop_at_the_first_failure_and_pipe_the_log() {
        let t = tempfile::tempdir().unwrap();
        let log = Log::default();
        let lines = [
            "echo one".to_owned(),
            "exit 1".to_owned(),
            "echo never".to_owned(),
        ];
        let e = run_list("pre", &lines, t.path(), &[], None, &log)
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "failed: exit 1 exit status 1");
        let text = String::from_utf8(log.bytes()).unwrap();
        assert!(
            text.contains("one\n") && !text.contains("never\n"),
            "{text}"
        );
        // Each success command gets the whole log; one that ignores it is fine.
        let big = vec![b'x'; 100_000];
        let out = t.path().join("got");
        let lines = ["true".to_owned(), format!("cat > {}", out.display())];
        run_list("success", &lines, t.path(), &[], Some(&big), &log)
            .await
            .unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), big);
    }
}
