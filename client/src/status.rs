//! A one-line status of SSH hosts on standard error for long runs: how many are
//! connected, running, done. Shown only when standard error is a terminal, and only
//! once a run has lasted a second; output lines are printed above it, and it hides
//! while a passphrase is asked.
//!
//! ```text
//! ⠋ 00:00:03 connected 87/100 · running 80 · done 12/100
//! ```

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deploy_common::ssh::SshStats;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How long a run goes before the status appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// The status line.
pub struct Status {
    stats: Arc<SshStats>,
    total: usize,
    start: Instant,
    bar: Option<ProgressBar>,
}

impl Status {
    /// A status for `total` SSH hosts, if standard error is a terminal.
    pub fn new(stats: Arc<SshStats>, total: usize) -> Option<Status> {
        std::io::stderr().is_terminal().then(|| Status {
            stats,
            total,
            start: Instant::now(),
            bar: None,
        })
    }

    /// Refreshes the counts (and shows the line once the run is long enough).
    pub fn tick(&mut self) {
        if self.stats.prompting() {
            // A passphrase is being asked on the terminal: keep out of its way.
            self.finish();
            return;
        }
        if self.bar.is_none() && self.start.elapsed() >= SHOW_AFTER {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                .with_elapsed(self.start.elapsed());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        }
        let Some(bar) = &self.bar else { return };
        let (_, connected, running, done) = self.stats.snapshot();
        bar.set_message(format!(
            "connected {connected}/{total} · running {running} · done {done}/{total}",
            total = self.total
        ));
        bar.tick();
    }

    /// Runs `f` (which writes output) with the status line out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }

    /// Removes the line.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
