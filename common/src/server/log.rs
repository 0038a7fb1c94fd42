//! Logging, set up in one place and safe across `fork()`.
//!
//! [`init`] installs one global `tracing` subscriber made of up to three layers:
//!
//! | layer | takes | filter | writes to |
//! |---|---|---|---|
//! | stderr (only with [`LogSettings::foreground`]) | every event, `access` included | `RUST_LOG`, else level ± verbosity | standard error, `tracing` default format; under journald, `<N>`-prefixed lines (below) |
//! | error log (only with [`LogSettings::write`]) | every event **except** target `access` | `RUST_LOG`, else level ± verbosity | [`LogSettings::error_path`] |
//! | access log (only with [`LogSettings::write`]) | **only** target `access`, info and above | fixed | [`LogSettings::access_path`] |
//!
//! The filters are per layer rather than one global `EnvFilter`, so that a quiet
//! `RUST_LOG` or `log_error_level` never silences the access log (the original wrote it
//! whatever the level).
//!
//! # Destinations
//!
//! A path that contains `syslog` (anywhere, any case) means syslog(3): facility
//! `LOG_DAEMON`, options `LOG_PID | LOG_NDELAY`, ident the program name, and the proper
//! priorities (`LOG_ERR`, `LOG_WARNING`, `LOG_INFO`, `LOG_DEBUG`; the original asked for
//! the non-existent `LOG_ERROR`/`LOG_WARN`).
//!
//! Any other path is a strftime template rendered in local time for every line, so
//! `/var/log/deploy/agent_error.%Y%m%d%H.log` gives one file per hour. Files are opened
//! append-only and created with mode 0600; the file is reopened when the rendered name
//! changes or when the file at that name is no longer the one we hold (removed or
//! renamed by logrotate). The template's directory must exist when [`init`] runs, and the
//! file is opened there once, so that a bad path is reported at start-up, naming it.
//!
//! # Line formats
//!
//! ```text
//! error log:  [2026/11/22 10:00:00] warn: [worker exited] pid=1234 status=1
//! access log: 127.0.0.1 - [2026/11/22 10:00:00] "exec service:echo v2" 200 94 3.2ms
//! ```
//!
//! On syslog the error line has no `[time]` prefix (syslog adds its own). Control
//! characters in messages and values are escaped, so one event is always one line.
//!
//! # journald
//!
//! When standard error is journald's stream (`JOURNAL_STREAM`, which systemd sets to
//! the `device:inode` of the stream it connects, names standard error), the stderr
//! layer writes the error-log line without the time (the journal stamps each line)
//! and with the syslog priority in front, as sd-daemon(3) describes, so that
//! `journalctl -p err` finds errors:
//!
//! ```text
//! <3>error: [reload failed; keeping the running configuration] cause=…
//! <4>warn: [worker died; replacing it] pid=1234 code=1
//! <6>info: [deploy-agent started] version=0.1.0 (commit 1a2b3c4d5e6f) workers=2
//! ```
//!
//! # Fork safety
//!
//! There are no background threads (unlike `tracing-appender`'s non-blocking writer,
//! whose worker thread would not exist in a forked child): every line is formatted into
//! a buffer and written with a single `write(2)` on an `O_APPEND` descriptor, so lines
//! from the master and all workers interleave whole. A forked child inherits the open
//! descriptor and the syslog socket and goes on using them. The only rule is the usual
//! one for `fork()`: fork while no other thread is in the middle of logging (the prefork
//! master is single-threaded).

use std::ffi::CString;
use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::net::IpAddr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::format::{Item, StrftimeItems};
use chrono::{DateTime, Local, TimeZone};
use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, FilterExt, LevelFilter};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::Level;

/// The `tracing` target of access-log events; see [`access`].
pub const ACCESS_TARGET: &str = "access";

/// The time format of both logs, as the original wrote it.
const TIME_FORMAT: &str = "%Y/%m/%d %H:%M:%S";

/// What [`init`] needs to know, from the command line and the `[server]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Also log to standard error (running in the foreground / `--debug`).
    pub foreground: bool,
    /// Shift of the level: +1 per `-v`, −1 per `-q`.
    pub verbosity: i8,
    /// `log_write`: write the error and access logs at all.
    pub write: bool,
    /// `log_error_level`: the most verbose level written, before `verbosity`.
    pub error_level: Level,
    /// `log_error_path`: a strftime template, or anything containing `syslog`.
    pub error_path: PathBuf,
    /// `log_access_path`: as `error_path`.
    pub access_path: PathBuf,
    /// The program name: the syslog ident.
    pub program: &'static str,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The directory a log file would be created in does not exist.
    #[error("log file {}: directory {} does not exist", path.display(), dir.display())]
    NoDirectory {
        /// The log file, rendered from its template.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The log file could not be opened for appending.
    #[error("log file {}: cannot open: {source}", path.display())]
    Open {
        /// The log file, rendered from its template.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// The path is not a valid strftime template (for example `%Q`).
    #[error("log path {}: invalid strftime template", path.display())]
    Template {
        /// The path as configured.
        path: PathBuf,
    },
    /// The path is not UTF-8, so it cannot be a strftime template.
    #[error("log path {}: not valid UTF-8", path.display())]
    NotUtf8 {
        /// The path as configured.
        path: PathBuf,
    },
    /// `RUST_LOG` is set but is not a valid filter.
    #[error("RUST_LOG={value:?}: {reason}")]
    Filter {
        /// The variable's value.
        value: String,
        /// What the filter parser said.
        reason: String,
    },
    /// A global subscriber (or `log` logger) was installed already.
    #[error("logging was already initialised in this process")]
    AlreadyInitialized,
}

/// Installs the global subscriber described by `settings` (see the module doc).
///
/// Call it once, early, in the master, before forking. `RUST_LOG`, when set, replaces the
/// level derived from `error_level` and `verbosity` for the stderr and error-log layers.
/// Nothing needs to be kept alive or flushed afterwards: every line is written
/// synchronously.
pub fn init(settings: &LogSettings) -> Result<(), LogError> {
    subscriber(settings)?
        .try_init()
        .map_err(|_| LogError::AlreadyInitialized)
}

/// Builds the subscriber [`init`] installs, without installing it (for
/// `tracing::subscriber::with_default` in tests, or a caller that wants to add layers).
/// Opens the log files, so path errors are reported here.
pub fn subscriber(settings: &LogSettings) -> Result<impl Subscriber + Send + Sync, LogError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let stderr = match stderr_is_journal() {
        true => Stderr::Journal,
        false => Stderr::Plain {
            colours: colours_on_stderr(),
        },
    };
    build(settings, rust_log.as_deref(), stderr)
}

/// How the stderr layer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stderr {
    /// `tracing`'s default format, coloured or not.
    Plain {
        /// ANSI colours (a terminal).
        colours: bool,
    },
    /// journald's stream: priority-prefixed error-log lines (see the module docs).
    Journal,
}

/// Whether standard error is the journal's stream: `JOURNAL_STREAM` is set and names
/// the device and inode of descriptor 2 (a program started by systemd that redirects its
/// standard error elsewhere inherits the variable, hence the comparison).
// dev_t and ino_t are u64 on x86_64 Linux, narrower on some other targets.
#[allow(clippy::useless_conversion)]
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.trim().parse::<u64>(), ino.trim().parse::<u64>()) else {
        return false;
    };
    nix::sys::stat::fstat(io::stderr().as_fd())
        .is_ok_and(|st| u64::from(st.st_dev) == dev && u64::from(st.st_ino) == ino)
}

/// Colours on standard error only when it is a terminal and `NO_COLOR` is unset or
/// empty: a pipe, a file or journald gets plain text.
pub fn colours_on_stderr() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The field formatter of the file and syslog layers. A type of its own, so that the
/// span fields they render are kept apart from the stderr layer's: `tracing-subscriber`
/// caches formatted span fields per formatter type, and with one shared type the
/// stderr layer's coloured rendering would end up in the files.
#[derive(Debug, Default)]
struct PlainFields(tracing_subscriber::fmt::format::DefaultFields);

impl<'w> FormatFields<'w> for PlainFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        writer: Writer<'w>,
        fields: R,
    ) -> fmt::Result {
        self.0.format_fields(writer, fields)
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// [`subscriber`] with `RUST_LOG` passed in, so tests do not depend on the environment.
fn build(
    settings: &LogSettings,
    rust_log: Option<&str>,
    stderr: Stderr,
) -> Result<impl Subscriber + Send + Sync, LogError> {
    let default = default_level(settings.error_level, settings.verbosity);
    let mut layers: Vec<BoxedLayer> = Vec::new();

    if settings.foreground {
        let layer = match stderr {
            Stderr::Plain { colours } => tracing_subscriber::fmt::layer()
                .with_writer(io::stderr)
                .with_ansi(colours)
                .with_filter(env_filter(rust_log, default)?)
                .boxed(),
            Stderr::Journal => tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(PlainFields::default())
                .event_format(ErrorFormat {
                    timestamp: false,
                    priority: true,
                })
                .with_writer(io::stderr)
                .with_filter(env_filter(rust_log, default)?)
                .boxed(),
        };
        layers.push(layer);
    }

    if settings.write {
        let errors = LogSink::open(&settings.error_path, settings.program)?;
        let not_access = filter_fn(|meta: &Metadata<'_>| meta.target() != ACCESS_TARGET);
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(PlainFields::default())
                .event_format(ErrorFormat {
                    timestamp: !errors.is_syslog(),
                    priority: false,
                })
                .with_writer(errors)
                .with_filter(env_filter(rust_log, default)?.and(not_access))
                .boxed(),
        );

        let access = LogSink::open(&settings.access_path, settings.program)?;
        let only_access = filter_fn(|meta: &Metadata<'_>| {
            meta.target() == ACCESS_TARGET && *meta.level() <= tracing::Level::INFO
        });
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .fmt_fields(PlainFields::default())
                .event_format(AccessFormat)
                .with_writer(access)
                .with_filter(only_access)
                .boxed(),
        );
    }

    Ok(tracing_subscriber::registry().with(layers))
}

/// The level from the configuration, moved by `verbosity` steps towards `TRACE` (positive)
/// or towards `OFF` (negative).
fn default_level(level: Level, verbosity: i8) -> LevelFilter {
    const LADDER: [LevelFilter; 6] = [
        LevelFilter::OFF,
        LevelFilter::ERROR,
        LevelFilter::WARN,
        LevelFilter::INFO,
        LevelFilter::DEBUG,
        LevelFilter::TRACE,
    ];
    let base: i16 = match level.tracing_level() {
        tracing::Level::ERROR => 1,
        tracing::Level::WARN => 2,
        tracing::Level::INFO => 3,
        tracing::Level::DEBUG => 4,
        tracing::Level::TRACE => 5,
    };
    let index = (base + i16::from(verbosity)).clamp(0, 5);
    usize::try_from(index)
        .ok()
        .and_then(|i| LADDER.get(i).copied())
        .unwrap_or(LevelFilter::INFO)
}

/// `RUST_LOG` when set and not empty, else `default` for every target.
fn env_filter(rust_log: Option<&str>, default: LevelFilter) -> Result<EnvFilter, LogError> {
    match rust_log.map(str::trim).filter(|s| !s.is_empty()) {
        Some(value) => EnvFilter::builder()
            .parse(value)
            .map_err(|e| LogError::Filter {
                value: value.to_owned(),
                reason: e.to_string(),
            }),
        None => Ok(EnvFilter::default().add_directive(default.into())),
    }
}

/// Builds an access-log line:
///
/// ```text
/// <peer> - [<YYYY/MM/DD HH:MM:SS>] "<order> <protocol>" <code> <bytes> <elapsed>[ key=value…]
/// 127.0.0.1 - [2026/11/22 10:00:00] "exec service:echo v2" 200 94 3.2ms
/// ```
///
/// The `-` stands where the original put the peer's reverse-DNS name (not looked up any
/// more). `order` is escaped inside its quotes (`"`, `\` and control characters), an empty
/// order is written `-`, and `extra` values are quoted when they contain spaces, so a
/// peer cannot forge lines or fields.
#[allow(clippy::too_many_arguments)] // one argument per field of the line
pub fn access_line<Tz>(
    peer: IpAddr,
    time: &DateTime<Tz>,
    order: &str,
    protocol: &str,
    code: u16,
    bytes: u64,
    elapsed: Duration,
    extra: &[(&str, &dyn fmt::Display)],
) -> String
where
    Tz: TimeZone,
    Tz::Offset: fmt::Display,
{
    let mut line = format!("{peer} - [{}] \"", time.format(TIME_FORMAT));
    if order.is_empty() {
        line.push('-');
    } else {
        push_quoted_inner(&mut line, order);
    }
    line.push(' ');
    push_quoted_inner(&mut line, protocol);
    // Writing into a String cannot fail.
    let _ = write!(line, "\" {code} {bytes} {}", format_elapsed(elapsed));
    for (key, value) in extra {
        line.push(' ');
        push_escaped(&mut line, key);
        line.push('=');
        push_value(&mut line, &value.to_string());
    }
    line
}

/// Writes one access-log line (see [`access_line`]) for a request that ends now, as an
/// info event with target [`ACCESS_TARGET`].
pub fn access(
    peer: IpAddr,
    order: &str,
    protocol: &str,
    code: u16,
    bytes: u64,
    elapsed: Duration,
    extra: &[(&str, &dyn fmt::Display)],
) {
    let line = access_line(
        peer,
        &Local::now(),
        order,
        protocol,
        code,
        bytes,
        elapsed,
        extra,
    );
    tracing::info!(target: ACCESS_TARGET, "{line}");
}

/// How logs name an API key without revealing it: `sha256:` and the first 12 hex digits
/// of the SHA-256 of the key (whitespace removed, as the proxy compares keys), the same
/// digest a `[keys]` line may hold as `sha256:<64 hex digits>`.
pub fn key_id(api_key: &str) -> String {
    let key: String = api_key.chars().filter(|c| !c.is_whitespace()).collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let mut out = String::from("sha256:");
    for byte in digest.as_ref().iter().take(6) {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// A command line for a log: each argument as is when it is a plain word, else quoted
/// (`"` and `\` escaped), separated by spaces.
pub fn argv_text(argv: &[String]) -> String {
    let mut out = String::new();
    for (i, arg) in argv.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        push_value(&mut out, arg);
    }
    out
}

/// `3.2ms` below a second, `1.234s` from there on.
fn format_elapsed(elapsed: Duration) -> String {
    let micros = elapsed.as_micros();
    if micros < 1_000_000 {
        format!("{}.{}ms", micros / 1000, (micros % 1000) / 100)
    } else {
        let millis = elapsed.as_millis();
        format!("{}.{:03}s", millis / 1000, millis % 1000)
    }
}

/// Appends `s` with control characters escaped (`\n`, `\u{1b}`, …).
fn push_escaped(out: &mut String, s: &str) {
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
}

/// Appends `s` for use between double quotes: `"` and `\` escaped too.
fn push_quoted_inner(out: &mut String, s: &str) {
    for c in s.chars() {
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
}

/// Appends a `key=value` value: as is when it is a plain word, else quoted and escaped.
fn push_value(out: &mut String, s: &str) {
    let plain = !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '\\' || c == '=');
    if plain {
        out.push_str(s);
    } else {
        out.push('"');
        push_quoted_inner(out, s);
        out.push('"');
    }
}

/// The lower-case level name the original used.
fn level_name(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::ERROR => "error",
        tracing::Level::WARN => "warn",
        tracing::Level::INFO => "info",
        tracing::Level::DEBUG => "debug",
        tracing::Level::TRACE => "trace",
    }
}

/// The error-log line: `[time] level: [message] key=value… span_fields…`.
struct ErrorFormat {
    /// Prefix the local time (files); syslog and journald stamp lines themselves.
    timestamp: bool,
    /// Prefix the syslog priority, `<3>` for errors (journald's stream).
    priority: bool,
}

impl<S, N> FormatEvent<S, N> for ErrorFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.priority {
            write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        }
        if self.timestamp {
            write!(writer, "[{}] ", Local::now().format(TIME_FORMAT))?;
        }
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        write!(
            writer,
            "{}: [{}]{}",
            level_name(event.metadata().level()),
            fields.message,
            fields.rest
        )?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(formatted) = extensions.get::<FormattedFields<N>>() {
                    if !formatted.is_empty() {
                        let mut escaped = String::new();
                        push_escaped(&mut escaped, formatted);
                        write!(writer, " {escaped}")?;
                    }
                }
            }
        }
        writeln!(writer)
    }
}

/// The access-log line: the event's message is the whole line.
struct AccessFormat;

impl<S, N> FormatEvent<S, N> for AccessFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = FieldCollector::default();
        event.record(&mut fields);
        writeln!(writer, "{}", fields.message)
    }
}

/// Collects an event's message and its other fields as ` key=value`, escaped.
#[derive(Default)]
struct FieldCollector {
    message: String,
    rest: String,
}

impl FieldCollector {
    fn push_field(&mut self, field: &Field, value: &str) {
        // Fields added by the `log` bridge duplicate the metadata.
        if field.name().starts_with("log.") {
            return;
        }
        self.rest.push(' ');
        push_escaped(&mut self.rest, field.name());
        self.rest.push('=');
        push_value(&mut self.rest, value);
    }
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            push_escaped(&mut self.message, value);
        } else {
            self.push_field(field, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let value = format!("{value:?}");
        if field.name() == "message" {
            push_escaped(&mut self.message, &value);
        } else {
            self.push_field(field, &value);
        }
    }
}

/// Where one log goes: syslog, or a file named by a strftime template.
struct LogSink {
    kind: SinkKind,
}

enum SinkKind {
    Syslog,
    File(TemplateFile),
}

impl LogSink {
    /// Syslog when `path` contains `syslog` (any case), else a template file, opened now.
    fn open(path: &Path, program: &'static str) -> Result<LogSink, LogError> {
        if is_syslog_path(path) {
            open_syslog(program);
            Ok(LogSink {
                kind: SinkKind::Syslog,
            })
        } else {
            Ok(LogSink {
                kind: SinkKind::File(TemplateFile::open(path)?),
            })
        }
    }

    fn is_syslog(&self) -> bool {
        matches!(self.kind, SinkKind::Syslog)
    }
}

/// Whether a configured log path means syslog.
fn is_syslog_path(path: &Path) -> bool {
    path.to_string_lossy()
        .to_ascii_lowercase()
        .contains("syslog")
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter {
            sink: self,
            priority: libc::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter<'a> {
        LineWriter {
            sink: self,
            priority: syslog_priority(meta.level()),
            buf: Vec::new(),
        }
    }
}

/// The syslog priority of a `tracing` level.
fn syslog_priority(level: &tracing::Level) -> libc::c_int {
    match *level {
        tracing::Level::ERROR => libc::LOG_ERR,
        tracing::Level::WARN => libc::LOG_WARNING,
        tracing::Level::INFO => libc::LOG_INFO,
        tracing::Level::DEBUG | tracing::Level::TRACE => libc::LOG_DEBUG,
    }
}

/// Buffers one formatted event and hands it to the sink in one piece when flushed or
/// dropped.
struct LineWriter<'a> {
    sink: &'a LogSink,
    priority: libc::c_int,
    buf: Vec<u8>,
}

impl LineWriter<'_> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = match &self.sink.kind {
            SinkKind::Syslog => {
                syslog_line(self.priority, &self.buf);
                Ok(())
            }
            SinkKind::File(file) => file.append(&self.buf),
        };
        self.buf.clear();
        result
    }
}

impl Write for LineWriter<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()
    }
}

impl Drop for LineWriter<'_> {
    fn drop(&mut self) {
        // Nowhere to report a failed log write; the next line tries again.
        let _ = self.emit();
    }
}

/// Calls `openlog` once per process with the program name as ident.
fn open_syslog(program: &str) {
    static IDENT: OnceLock<CString> = OnceLock::new();
    let ident = IDENT.get_or_init(|| CString::new(program.replace('\0', "")).unwrap_or_default());
    // SAFETY: `ident` is a NUL-terminated string in a static, so it outlives every later
    // syslog() call, as openlog(3) requires (it keeps the pointer).
    unsafe {
        libc::openlog(
            ident.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_DAEMON,
        )
    };
}

/// Sends one line to syslog at `priority` (facility `LOG_DAEMON`).
fn syslog_line(priority: libc::c_int, line: &[u8]) {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let bytes: Vec<u8> = line
        .iter()
        .map(|&b| if b == 0 { b'?' } else { b })
        .collect();
    if let Ok(message) = CString::new(bytes) {
        // SAFETY: a constant "%s" format with exactly one argument, a NUL-terminated
        // string that lives across the call.
        unsafe {
            libc::syslog(
                libc::LOG_DAEMON | priority,
                c"%s".as_ptr(),
                message.as_ptr(),
            )
        };
    }
}

/// A log file whose name is a strftime template, rendered for every line.
struct TemplateFile {
    /// The template, made absolute at start-up (the daemon later changes to `/`).
    template: PathBuf,
    items: Vec<Item<'static>>,
    current: Mutex<Option<OpenLog>>,
}

/// The file currently written, with its identity to notice rotation.
struct OpenLog {
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
}

impl TemplateFile {
    /// Checks the template and opens the file it names now.
    fn open(template: &Path) -> Result<TemplateFile, LogError> {
        let template = if template.is_relative() {
            std::env::current_dir()
                .map(|dir| dir.join(template))
                .unwrap_or_else(|_| template.to_path_buf())
        } else {
            template.to_path_buf()
        };
        let text = template.to_str().ok_or_else(|| LogError::NotUtf8 {
            path: template.clone(),
        })?;
        let items = StrftimeItems::new(text)
            .parse_to_owned()
            .map_err(|_| LogError::Template {
                path: template.clone(),
            })?;
        let file = TemplateFile {
            template,
            items,
            current: Mutex::new(None),
        };
        let path = file
            .render(&Local::now())
            .ok_or_else(|| LogError::Template {
                path: file.template.clone(),
            })?;
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                return Err(LogError::NoDirectory {
                    path: path.clone(),
                    dir: dir.to_path_buf(),
                });
            }
        }
        let open = OpenLog::open(&path).map_err(|source| LogError::Open { path, source })?;
        *file.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(open);
        Ok(file)
    }

    /// The file name for `time`, or `None` if an item cannot be rendered.
    fn render<Tz>(&self, time: &DateTime<Tz>) -> Option<PathBuf>
    where
        Tz: TimeZone,
        Tz::Offset: fmt::Display,
    {
        let mut name = String::new();
        write!(name, "{}", time.format_with_items(self.items.iter())).ok()?;
        Some(PathBuf::from(name))
    }

    /// Appends one whole line, reopening when the name changed or the file was rotated.
    fn append(&self, line: &[u8]) -> io::Result<()> {
        let path = self
            .render(&Local::now())
            .ok_or_else(|| io::Error::other("cannot render log file name"))?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let reuse = current
            .as_ref()
            .is_some_and(|open| open.path == path && open.still_linked());
        if !reuse {
            *current = None;
            *current = Some(OpenLog::open(&path)?);
        }
        match current.as_mut() {
            Some(open) => open.file.write_all(line),
            None => Ok(()),
        }
    }
}

impl OpenLog {
    fn open(path: &Path) -> io::Result<OpenLog> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let meta = file.metadata()?;
        Ok(OpenLog {
            path: path.to_path_buf(),
            file,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether `path` still names the file we hold (not removed or rotated away).
    fn still_linked(&self) -> bool {
        std::fs::metadata(&self.path)
            .map(|meta| meta.dev() == self.dev && meta.ino() == self.ino)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::os::unix::fs::PermissionsExt;

    /// Standard error without colours, not the journal.
    const PLAIN: Stderr = Stderr::Plain { colours: false };

    fn settings(dir: &Path) -> LogSettings {
        LogSettings {
            foreground: false,
            verbosity: 0,
            write: true,
            error_level: Level::Info,
            error_path: dir.join("error.%Y.log"),
            access_path: dir.join("access.log"),
            program: "deploy-test",
        }
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).expect("log file")
    }

    fn year() -> String {
        Local::now().format("%Y").to_string()
    }

    #[test]
    fn template_renders_local_time() {
        let file = TemplateFile::open(Path::new("/tmp/agent_error.%Y%m%d%H.log")).expect("open");
        let time = Local
            .with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
            .single()
            .expect("time");
        assert_eq!(
            file.render(&time),
            Some(PathBuf::from("/tmp/agent_error.2026112210.log"))
        );
    }

    #[test]
    fn bad_templates_and_directories_name_the_path() {
        let err = TemplateFile::open(Path::new("/tmp/x.%Q.log"))
            .err()
            .expect("bad template");
        assert!(matches!(err, LogError::Template { .. }), "{err}");
        assert!(err.to_string().contains("/tmp/x.%Q.log"), "{err}");

        let err = TemplateFile::open(Path::new("/nonexistent-deploy-dir/error.log"))
            .err()
            .expect("missing directory");
        assert!(matches!(err, LogError::NoDirectory { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("/nonexistent-deploy-dir/error.log"),
            "{err}"
        );
    }

    #[test]
    fn syslog_paths() {
        assert!(is_syslog_path(Path::new("syslog")));
        assert!(is_syslog_path(Path::new("/dev/SysLog")));
        assert!(is_syslog_path(Path::new("use-SYSLOG-please")));
        assert!(!is_syslog_path(Path::new("/var/log/deploy/error.log")));
        assert_eq!(syslog_priority(&tracing::Level::ERROR), libc::LOG_ERR);
        assert_eq!(syslog_priority(&tracing::Level::WARN), libc::LOG_WARNING);
    }

    #[test]
    fn levels_from_config_and_verbosity() {
        assert_eq!(default_level(Level::Info, 0), LevelFilter::INFO);
        assert_eq!(default_level(Level::Info, 1), LevelFilter::DEBUG);
        assert_eq!(default_level(Level::Info, 5), LevelFilter::TRACE);
        assert_eq!(default_level(Level::Info, -1), LevelFilter::WARN);
        assert_eq!(default_level(Level::Info, -100), LevelFilter::OFF);
        assert_eq!(default_level(Level::Crit, 0), LevelFilter::ERROR);
        assert_eq!(default_level(Level::Debug, 0), LevelFilter::DEBUG);
        assert!(env_filter(Some("deploy=debug,warn"), LevelFilter::INFO).is_ok());
        let err = env_filter(Some("=[{"), LevelFilter::INFO).expect_err("bad filter");
        assert!(err.to_string().contains("RUST_LOG"), "{err}");
    }

    #[test]
    fn access_lines() {
        let time = Local
            .with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
            .single()
            .expect("time");
        let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let line = access_line(
            peer,
            &time,
            "exec service:echo",
            "v2",
            200,
            94,
            Duration::from_micros(3250),
            &[],
        );
        assert_eq!(
            line,
            "127.0.0.1 - [2026/11/22 10:00:00] \"exec service:echo v2\" 200 94 3.2ms"
        );

        let host = "web 1";
        let line = access_line(
            "::1".parse().expect("ip"),
            &time,
            "exec \"x\"\n127.0.0.1 - forged",
            "v1",
            403,
            0,
            Duration::from_millis(1500),
            &[("host", &host), ("n", &3)],
        );
        assert_eq!(
            line,
            "::1 - [2026/11/22 10:00:00] \"exec \\\"x\\\"\\n127.0.0.1 - forged v1\" 403 0 \
             1.500s host=\"web 1\" n=3"
        );
        assert!(!line.contains('\n'));
        assert!(
            access_line(peer, &time, "", "v2", 400, 1, Duration::ZERO, &[])
                .contains("\"- v2\" 400 1 0.0ms")
        );
    }

    #[test]
    fn errors_and_access_go_to_their_own_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let subscriber = build(&settings(dir.path()), None, PLAIN).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(pid = 12, status = "exit 1", "worker exited");
            tracing::debug!("too verbose for info");
            let span = tracing::info_span!("conn", peer = "10.0.0.1");
            let _enter = span.enter();
            tracing::error!(cause = %"boom", "bad\nline");
            access(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                "exec service:echo",
                "v2",
                200,
                94,
                Duration::from_micros(3200),
                &[],
            );
        });

        let errors = read(dir.path(), &format!("error.{}.log", year()));
        let lines: Vec<&str> = errors.lines().collect();
        assert_eq!(lines.len(), 2, "{errors}");
        let (stamp, rest) = lines[0].split_at(22);
        assert!(stamp.starts_with('[') && stamp.ends_with("] "), "{stamp}");
        assert_eq!(rest, "warn: [worker exited] pid=12 status=\"exit 1\"");
        assert!(
            lines[1].ends_with("error: [bad\\nline] cause=boom peer=\"10.0.0.1\""),
            "{}",
            lines[1]
        );
        assert!(!errors.contains("exec service:echo"));

        let access = read(dir.path(), "access.log");
        let lines: Vec<&str> = access.lines().collect();
        assert_eq!(lines.len(), 1, "{access}");
        assert!(lines[0].starts_with("127.0.0.1 - ["), "{access}");
        assert!(lines[0].ends_with("] \"exec service:echo v2\" 200 94 3.2ms"));

        for name in [format!("error.{}.log", year()), "access.log".to_owned()] {
            let mode = std::fs::metadata(dir.path().join(&name))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }

    #[test]
    fn files_are_appended_and_reopened_after_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        std::fs::write(&path, "old line\n").expect("write");
        let subscriber = build(&settings(dir.path()), None, PLAIN).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: ACCESS_TARGET, "first");
            std::fs::rename(&path, dir.path().join("access.log.1")).expect("rotate");
            tracing::info!(target: ACCESS_TARGET, "second");
            tracing::debug!(target: ACCESS_TARGET, "debug is not an access line");
        });
        assert_eq!(read(dir.path(), "access.log.1"), "old line\nfirst\n");
        assert_eq!(read(dir.path(), "access.log"), "second\n");
    }

    #[test]
    fn rust_log_replaces_the_level_but_not_the_access_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let subscriber = build(&settings(dir.path()), Some("error"), PLAIN).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("hidden");
            tracing::error!("shown");
            tracing::info!(target: ACCESS_TARGET, "always");
        });
        let errors = read(dir.path(), &format!("error.{}.log", year()));
        assert!(errors.contains("error: [shown]") && !errors.contains("hidden"));
        assert_eq!(read(dir.path(), "access.log"), "always\n");
    }

    #[test]
    fn syslog_destination_opens_nothing_and_does_not_fail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.error_path = PathBuf::from("SYSLOG");
        settings.access_path = PathBuf::from("syslog:daemon");
        let subscriber = build(&settings, None, PLAIN).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(test = true, "deploy-common log test: syslog line\0with NUL");
            tracing::info!(target: ACCESS_TARGET, "deploy-common log test: access line");
        });
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }

    #[test]
    fn files_get_no_colours_even_when_stderr_has_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.foreground = true;
        let subscriber =
            build(&settings, None, Stderr::Plain { colours: true }).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("conn", peer = "10.0.0.1", order = 7);
            let _enter = span.enter();
            tracing::warn!(
                cause = "boom",
                "deploy-common log test: coloured on stderr only"
            );
            tracing::info!(target: ACCESS_TARGET, "deploy-common log test: access");
        });
        let errors = read(dir.path(), &format!("error.{}.log", year()));
        assert!(errors.contains("peer=\"10.0.0.1\""), "{errors:?}");
        for text in [errors, read(dir.path(), "access.log")] {
            assert!(
                !text.contains('\u{1b}') && !text.contains("\\u{1b}"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn nothing_is_opened_without_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = settings(dir.path());
        settings.write = false;
        settings.error_path = PathBuf::from("/nonexistent-deploy-dir/error.log");
        assert!(build(&settings, None, PLAIN).is_ok());
        settings.write = true;
        let err = build(&settings, None, PLAIN).err().expect("missing dir");
        assert!(err.to_string().contains("/nonexistent-deploy-dir"), "{err}");
    }
}
