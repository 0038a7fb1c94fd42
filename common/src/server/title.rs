//! Process titles as seen by `ps`, `top` and `pgrep`.
//!
//! The original renamed its processes `<process_name> master process`, `… worker
//! process` and `… worker:child process` through Perl's `$0`. [`set_title`] does the
//! same on Linux, in the two places tools look:
//!
//! * the thread name (`prctl(PR_SET_NAME)`, at most 15 bytes), shown by `top`, `ps -o
//!   comm` and `pgrep` and read from `/proc/<pid>/comm`;
//! * the original argument strings, shown by `ps -o args` and read from
//!   `/proc/<pid>/cmdline`. Their address range is `arg_start`..`arg_end` in
//!   `/proc/self/stat`; the title is written there, cut to fit, and the rest is zeroed
//!   (as nginx and PostgreSQL do). The area is not grown into the environment, so a
//!   long title on a short command line is truncated.
//!
//! Elsewhere it does nothing. Failures are logged at debug level and otherwise ignored:
//! a title is cosmetic.

/// Sets the process title (see the module doc); the title is cut at its first NUL.
///
/// Call it from the main thread of a single-threaded process: in the master before any
/// thread is started, or in a freshly forked worker. Afterwards `std::env::args()`
/// returns the title instead of the original arguments (std reads the same memory), so
/// read the command line first.
pub fn set_title(title: &str) {
    #[cfg(target_os = "linux")]
    linux::set_title(title);
    #[cfg(not(target_os = "linux"))]
    let _ = title;
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::CString;

    /// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
    pub(super) fn prefix(s: &str, max: usize) -> &str {
        let mut end = max.min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.get(..end).unwrap_or_default()
    }

    /// The kernel keeps 16 bytes of thread name, NUL included.
    const COMM_LEN: usize = 15;

    pub(super) fn set_title(title: &str) {
        let title = title.split('\0').next().unwrap_or_default();
        set_comm(title);
        match std::fs::read("/proc/self/stat") {
            Ok(stat) => match parse_stat(&stat) {
                Some((start, end)) => overwrite_args(start, end, title),
                None => tracing::debug!("no argv area in /proc/self/stat; title not set"),
            },
            Err(e) => tracing::debug!(cause = %e, "cannot read /proc/self/stat; title not set"),
        }
    }

    fn set_comm(title: &str) {
        let Ok(name) = CString::new(prefix(title, COMM_LEN)) else {
            return;
        };
        if let Err(e) = nix::sys::prctl::set_name(&name) {
            tracing::debug!(cause = %e, "prctl(PR_SET_NAME) failed");
        }
    }

    /// `arg_start` and `arg_end` (fields 48 and 49 of `/proc/<pid>/stat`). The second
    /// field, the command name, may contain spaces and parentheses, so fields are counted
    /// from after the last `)`, where field 3 begins.
    pub(super) fn parse_stat(stat: &[u8]) -> Option<(usize, usize)> {
        let close = stat.iter().rposition(|&b| b == b')')?;
        let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
        let mut fields = rest.split_ascii_whitespace().skip(48 - 3);
        let start: usize = fields.next()?.parse().ok()?;
        let end: usize = fields.next()?.parse().ok()?;
        (start != 0 && end > start).then_some((start, end))
    }

    /// Writes `title` over `[start, end)`, NUL-terminated and zero-filled.
    fn overwrite_args(start: usize, end: usize, title: &str) {
        let len = end - start;
        let title = prefix(title, len - 1);
        let dst = start as *mut u8;
        // SAFETY: `[start, end)` is the kernel's record (mm->arg_start/arg_end) of this
        // process's original argument strings, which the kernel placed in our own
        // writable stack mapping at exec; nothing unmaps it. No Rust reference to that
        // memory exists: std keeps only the raw `argv` pointers and reads the strings
        // when `std::env::args()` is called, and the caller guarantees that nothing does
        // so concurrently (see `set_title`). The copy writes `title.len() < len` bytes,
        // the fill the remaining `len - title.len()`, so both stay inside the area, and
        // the source (a `&str`) cannot overlap it. The area stays NUL-terminated, so
        // later readers of the `argv` strings see valid C strings.
        unsafe {
            std::ptr::copy_nonoverlapping(title.as_ptr(), dst, title.len());
            std::ptr::write_bytes(dst.add(title.len()), 0, len - title.len());
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::prefix;
    use super::*;
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, ForkResult, Pid};
    use std::time::{Duration, Instant};

    #[test]
    fn stat_fields_after_the_command_name() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "140736".to_owned();
        fields[49 - 3] = "140800".to_owned();
        let stat = format!("4242 (a) b (c)) {}\n", fields.join(" "));
        assert_eq!(linux::parse_stat(stat.as_bytes()), Some((140_736, 140_800)));
        assert_eq!(linux::parse_stat(b"4242 (x) S 1 2"), None);
        assert_eq!(linux::parse_stat(b"no parenthesis"), None);
        let zero = stat.replace("140736", "0");
        assert_eq!(linux::parse_stat(zero.as_bytes()), None);
    }

    #[test]
    fn prefixes_end_on_char_boundaries() {
        assert_eq!(prefix("deploy::agent: worker", 15), "deploy::agent: ");
        assert_eq!(prefix("ab", 15), "ab");
        assert_eq!(prefix("aé", 2), "a");
        assert_eq!(prefix("", 0), "");
    }

    /// Kills and reaps the child even when an assertion fails.
    struct Child(Pid);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGKILL);
            let _ = waitpid(self.0, None);
        }
    }

    #[test]
    fn title_shows_in_proc() {
        const TITLE: &str = "deploy::agent: worker process";
        // SAFETY: the child only sets its title and sleeps until it is killed.
        let child = match unsafe { fork() }.expect("fork") {
            ForkResult::Child => {
                set_title(TITLE);
                loop {
                    nix::unistd::pause();
                }
            }
            ForkResult::Parent { child } => Child(child),
        };

        let comm_path = format!("/proc/{}/comm", child.0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let comm = loop {
            let comm = std::fs::read_to_string(&comm_path).expect("comm");
            if comm == "deploy::agent: \n" || Instant::now() > deadline {
                break comm;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(comm, "deploy::agent: \n");

        // comm is set before the arguments; give the child a moment to finish.
        let cmdline_path = format!("/proc/{}/cmdline", child.0);
        let cmdline = loop {
            let cmdline = std::fs::read(&cmdline_path).expect("cmdline");
            if cmdline.starts_with(b"deploy::") || Instant::now() > deadline {
                break cmdline;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The whole area: the title (cut to fit), then only NULs.
        assert!(!cmdline.is_empty());
        let shown = cmdline.split(|&b| b == 0).next().unwrap_or_default();
        let expected = TITLE.len().min(cmdline.len() - 1);
        assert_eq!(shown, &TITLE.as_bytes()[..expected], "{cmdline:?}");
        assert!(
            cmdline[shown.len()..].iter().all(|&b| b == 0),
            "{cmdline:?}"
        );
    }
}
