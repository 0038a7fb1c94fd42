//! [`Wake`]: waits for a background transfer to change — its output file growing, its
//! exit being recorded, its runner exiting — without polling on a timer.
//!
//! ```text
//! inotify on <state>/<checksum>/ (IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE)
//!      ┐
//! pidfd of the runner (readable once it has exited)        ─► wait() returns
//!      ┘
//! a backstop timer (SAFETY_NET), should neither be available or an event be lost
//! ```
//!
//! A follower reads what is new after every wake, so it sees each line as soon as the
//! runner writes it and the end as soon as the runner exits, instead of up to a polling
//! interval later. inotify and `pidfd_open(2)` (Linux 5.3) are both optional: without
//! them the backstop makes this a slow poll, never a hang.

use std::os::fd::{AsFd as _, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use tokio::io::unix::AsyncFd;

/// The longest a wait lasts when nothing is heard (a lost event, no inotify).
pub const SAFETY_NET: Duration = Duration::from_secs(1);

/// What a follower waits on.
pub struct Wake {
    /// The inotify descriptor watching the transfer directory.
    dir: Option<AsyncFd<OwnedFd>>,
    /// The runner's pidfd.
    runner: Option<AsyncFd<OwnedFd>>,
}

impl Wake {
    /// Watches the transfer directory `dir` and, if given, the runner `pid`.
    pub fn new(dir: &Path, pid: Option<u32>) -> Wake {
        let dir = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .ok()
            .and_then(|inotify| {
                let flags = AddWatchFlags::IN_MODIFY
                    | AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_CREATE;
                inotify.add_watch(dir, flags).ok()?;
                register(OwnedFd::from(inotify))
            });
        let runner = pid.and_then(pidfd).and_then(register);
        Wake { dir, runner }
    }

    /// Returns when the directory changed, the runner exited, or after [`SAFETY_NET`].
    /// Once the runner has exited, only the directory and the backstop wake.
    pub async fn wait(&mut self) {
        let dir = async {
            match &self.dir {
                Some(fd) => match fd.readable().await {
                    Ok(mut guard) => {
                        // Drain the queue: the caller rereads the state whatever it says.
                        let mut buf = [0u8; 4096];
                        while matches!(nix::unistd::read(fd.get_ref().as_fd(), &mut buf), Ok(n) if n > 0)
                        {
                        }
                        guard.clear_ready();
                    }
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        let mut runner_gone = false;
        let runner = async {
            match &self.runner {
                Some(fd) => {
                    // A pidfd stays readable once its process has exited.
                    let _ = fd.readable().await;
                    runner_gone = true;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = dir => {}
            () = runner => {}
            () = tokio::time::sleep(SAFETY_NET) => {}
        }
        if runner_gone {
            self.runner = None;
        }
    }
}

/// Registers `fd` with the reactor (readable interest).
fn register(fd: OwnedFd) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd owns `fd`, which stays open and the same for its lifetime.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// `pidfd_open(pid)`; `None` where the kernel has no pidfds or the process is gone.
fn pidfd(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: the descriptor was just returned to us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_on_a_write_and_on_the_runners_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .expect("sleep");
        let mut wake = Wake::new(dir.path(), Some(child.id()));
        assert!(wake.dir.is_some(), "inotify");
        assert!(wake.runner.is_some(), "pidfd");
        let started = std::time::Instant::now();
        let path = dir.path().join("output");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::write(path, b"line\n").expect("write");
        });
        wake.wait().await;
        assert!(started.elapsed() < SAFETY_NET, "woken by the write");
        writer.await.expect("writer");
        // Nothing more is written: the runner's exit wakes it.
        wake.wait().await;
        let _ = child.wait();
        assert!(wake.runner.is_none(), "woken by the exit");
    }
}
