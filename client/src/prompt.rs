//! Asking for a secret (`--password`, a key's passphrase) on the terminal, as OpenSSH's
//! `readpassphrase(3)` does: echo is turned off *before* the prompt is printed, so a
//! secret typed (or fed) the instant the prompt appears is never echoed, and the
//! terminal is restored on every way out, a signal included.
//!
//! ```text
//! open /dev/tty ─► save termios ─► catch INT/TERM/HUP/QUIT ─► echo off (TCSAFLUSH)
//!   ─► print prompt ─► read a line (poll: tty | self-pipe) ─► restore termios, handlers
//!   a signal meanwhile: the handler restores termios at once and wakes the reader,
//!   which restores the handlers and raises the signal again (its usual effect follows)
//! ```
//!
//! `rpassword` prints the prompt first and only then turns echo off: whatever is typed
//! in between is echoed (issue 9: 36 of 40 tries with input fed on the prompt).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicI32, AtomicPtr, Ordering};
use std::sync::Mutex;

/// The signals that would end the process (or stop it reading) during a prompt.
const SIGNALS: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// The terminal of the prompt in progress (-1: none), for the signal handler.
static TTY: AtomicI32 = AtomicI32::new(-1);
/// Its saved settings (null: none), for the signal handler.
static SAVED: AtomicPtr<libc::termios> = AtomicPtr::new(std::ptr::null_mut());
/// The write end of the self-pipe that wakes the reader (-1: none).
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The signal caught during the prompt (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);
/// One prompt at a time (the statics above are its state).
static ONE: Mutex<()> = Mutex::new(());

/// Prints `prompt` on the terminal and reads one line with echo off; the line without
/// its end. An error if there is no terminal, or if a signal came (it is raised again
/// once the terminal is restored).
pub fn secret(prompt: &str) -> io::Result<String> {
    let _one = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open("/dev/tty")?;
    let fd = tty.as_raw_fd();
    // SAFETY: a zeroed termios is a valid value for tcgetattr to fill in.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open for the whole call; `saved` is a valid termios.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (wake_read, wake_write) = self_pipe()?;
    let guard = Prompt::start(&tty, saved, &wake_write)?;
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK | libc::ECHONL);
    // SAFETY: fd is open; `quiet` is a valid termios.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Only now, with echo off, may the prompt appear.
    tty.write_all(prompt.as_bytes())?;
    tty.flush()?;
    let line = read_line(&mut tty, &wake_read);
    let _ = tty.write_all(b"\n");
    drop(guard);
    let caught = CAUGHT.swap(0, Ordering::SeqCst);
    if caught != 0 {
        // SAFETY: raising a signal on ourselves; its restored disposition applies.
        unsafe {
            libc::raise(caught);
        }
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    line
}

/// Reads up to a newline (or end of input) from `tty`, unless `wake` becomes readable.
fn read_line(tty: &mut File, wake: &File) -> io::Result<String> {
    let mut line: Vec<u8> = Vec::new();
    loop {
        let mut fds = [
            libc::pollfd {
                fd: tty.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the length given.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted && CAUGHT.load(Ordering::SeqCst) == 0 {
                continue;
            }
            return Err(e);
        }
        let [tty_fd, wake_fd] = fds;
        if wake_fd.revents != 0 || CAUGHT.load(Ordering::SeqCst) != 0 {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
        }
        if tty_fd.revents == 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        let n = match tty.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(end) = chunk.iter().position(|&b| b == b'\n' || b == b'\r') {
            line.extend_from_slice(chunk.get(..end).unwrap_or_default());
            break;
        }
        line.extend_from_slice(chunk);
        if n == 0 {
            break;
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))
}

/// A non-blocking, close-on-exec pipe: (read end, write end).
fn self_pipe() -> io::Result<(File, File)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read, write] = fds;
    // SAFETY: both descriptors were just made and are owned by nobody else.
    Ok(unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(read), File::from_raw_fd(write))
    })
}

/// A prompt in progress: the saved terminal settings and signal handlers, restored on
/// drop (every way out of [`secret`]).
struct Prompt {
    fd: libc::c_int,
    saved: *mut libc::termios,
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Prompt {
    /// Publishes the prompt's state to the signal handler, then installs it.
    fn start(tty: &File, saved: libc::termios, wake: &File) -> io::Result<Prompt> {
        let saved = Box::into_raw(Box::new(saved));
        SAVED.store(saved, Ordering::SeqCst);
        TTY.store(tty.as_raw_fd(), Ordering::SeqCst);
        WAKE.store(wake.as_raw_fd(), Ordering::SeqCst);
        CAUGHT.store(0, Ordering::SeqCst);
        let mut prompt = Prompt {
            fd: tty.as_raw_fd(),
            saved,
            previous: Vec::new(),
        };
        for signal in SIGNALS {
            // SAFETY: a zeroed sigaction is valid; the handler only calls
            // async-signal-safe functions (tcsetattr, write) on state published above.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                // No SA_RESTART: a read in this thread is interrupted.
                action.sa_flags = 0;
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) != 0 {
                    return Err(io::Error::last_os_error());
                }
                prompt.previous.push((signal, old));
            }
        }
        Ok(prompt)
    }
}

impl Drop for Prompt {
    fn drop(&mut self) {
        // SAFETY: `saved` came from Box::into_raw in `start` and is freed only here,
        // after the handlers that read it are gone.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, self.saved);
            for (signal, old) in self.previous.drain(..) {
                libc::sigaction(signal, &old, std::ptr::null_mut());
            }
            TTY.store(-1, Ordering::SeqCst);
            WAKE.store(-1, Ordering::SeqCst);
            SAVED.store(std::ptr::null_mut(), Ordering::SeqCst);
            drop(Box::from_raw(self.saved));
        }
    }
}

/// The handler during a prompt: restore the terminal now (whatever happens next), note
/// the signal, wake the reader.
extern "C" fn on_signal(signal: libc::c_int) {
    let fd = TTY.load(Ordering::SeqCst);
    let saved = SAVED.load(Ordering::SeqCst);
    if fd >= 0 && !saved.is_null() {
        // SAFETY: tcsetattr is async-signal-safe; `saved` stays valid while the handler
        // is installed (it is freed after the handlers are restored).
        unsafe {
            libc::tcsetattr(fd, libc::TCSANOW, saved);
        }
    }
    CAUGHT.store(signal, Ordering::SeqCst);
    let wake = WAKE.load(Ordering::SeqCst);
    if wake >= 0 {
        let byte = 1u8;
        // SAFETY: write is async-signal-safe; the pipe is non-blocking.
        unsafe {
            libc::write(wake, (&byte as *const u8).cast(), 1);
        }
    }
}
