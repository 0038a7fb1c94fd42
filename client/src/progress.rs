//! Live display of streamed events on standard error (`--follow` with the `json` and
//! `text` formats): output lines prefixed by their host, and for `rsync` one progress bar
//! per host while standard error is a terminal.
//!
//! ```text
//! web01: sending incremental file list
//! web01   [###########>            ]  45% 12.34MB/s
//! web02   [########################] 100% 200 OK
//! ```

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};

use deploy_common::fanout::HostResult;
use deploy_common::wire::message::{Event, Stream};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Streams events to standard error as they arrive.
pub struct Live {
    bars: Option<MultiProgress>,
    /// By target and host (the agents behind one proxy share its target).
    by_host: HashMap<(usize, String), ProgressBar>,
    style: Option<ProgressStyle>,
    width: usize,
}

impl Live {
    /// A display; progress bars only if `bars` and standard error is a terminal.
    /// `width` is the longest host name, for alignment.
    pub fn new(bars: bool, width: usize) -> Live {
        let on = bars && std::io::stderr().is_terminal();
        let style =
            ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
                .ok()
                .map(|s| s.progress_chars("#>-"));
        Live {
            bars: on.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            by_host: HashMap::new(),
            style,
            width,
        }
    }

    /// Shows one event.
    pub fn event(&mut self, index: usize, host: &str, event: &Event) {
        match event {
            // Relayed results are shown with the other results; fetched bytes go to
            // their files.
            Event::Host { .. } | Event::Data { .. } => {}
            Event::Line { stream, line, .. } => {
                let text = match stream {
                    Stream::Stdout => format!("{host}: {line}"),
                    Stream::Stderr => format!("{host}: (stderr) {line}"),
                };
                self.println(&text);
            }
            Event::Progress {
                bytes,
                percent,
                rate,
            } => {
                let Some(multi) = &self.bars else {
                    return;
                };
                let bar = self
                    .by_host
                    .entry((index, host.to_owned()))
                    .or_insert_with(|| {
                        let bar = multi.add(ProgressBar::new(100));
                        if let Some(style) = &self.style {
                            bar.set_style(style.clone());
                        }
                        bar.set_prefix(format!("{host:<w$}", w = self.width));
                        bar
                    });
                bar.set_position(u64::from(*percent).min(100));
                bar.set_message(format!("{rate} {}", human_bytes(*bytes)));
            }
        }
    }

    /// Ends the host's bar, if it has one, with its outcome.
    pub fn done(&mut self, result: &HostResult) {
        self.finish(result.index, &result.host, result.outcome.to_string());
    }

    /// Ends the bar of `host` (of target `index`), if it has one, with `message`.
    pub fn finish(&mut self, index: usize, host: &str, message: String) {
        if let Some(bar) = self.by_host.remove(&(index, host.to_owned())) {
            bar.finish_with_message(message);
        }
    }

    /// Prints a line above the bars (or plainly, without bars).
    pub fn println(&self, text: &str) {
        match &self.bars {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }
}

/// `1.5 MiB` and the like.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = UNITS[0];
    for next in UNITS.iter().skip(1) {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "B" {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(5), "5 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
