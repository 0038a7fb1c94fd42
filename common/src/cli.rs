//! The daemons' shared command-line flags (the original's, spec §10, plus new ones), as a
//! clap `Args` group that deploy-agent and deploy-proxy flatten into their own command
//! lines. A flag overrides the same-named `[server]` key of the INI file, which
//! overrides the built-in default.

use crate::config::{parse_bool, Level, ServerConfig};
use clap::{ArgAction, Args};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// The version `--version` prints, `0.1.0 (commit 1a2b3c4d5e6f)`: the calling crate's
/// version and the git commit its build script (`build/git_commit.rs`) recorded in
/// `DEPLOY_GIT_COMMIT`. A macro, so that both are read when the binary is compiled.
#[macro_export]
macro_rules! version {
    () => {
        concat!(
            env!("CARGO_PKG_VERSION"),
            " (commit ",
            env!("DEPLOY_GIT_COMMIT"),
            ")"
        )
    };
}

/// Parses `on|off|true|false|1|0`.
pub fn on_off(s: &str) -> Result<bool, String> {
    parse_bool(s).ok_or_else(|| format!("expected on|off|true|false|1|0, got {s:?}"))
}

/// Flags shared by deploy-agent and deploy-proxy.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// User to run as after binding (name or uid).
    #[arg(long)]
    pub user: Option<String>,
    /// Group to run as after binding (name or gid).
    #[arg(long)]
    pub group: Option<String>,
    /// Address to listen on.
    #[arg(long)]
    pub addr: Option<IpAddr>,
    /// Port to listen on (0: any free port; the chosen one is printed).
    #[arg(long)]
    pub port: Option<u16>,
    /// Additional listen address (addr:port or [v6]:port); repeatable.
    #[arg(long = "listen", value_name = "ADDR:PORT")]
    pub listen: Vec<SocketAddr>,
    /// listen(2) backlog.
    #[arg(long)]
    pub backlog: Option<u32>,
    /// Number of worker processes.
    #[arg(long = "max-prefork")]
    pub max_prefork: Option<u32>,
    /// A worker is replaced after this many connections (0: never).
    #[arg(long = "max-requests-per-child")]
    pub max_requests_per_child: Option<u64>,
    /// Bound on one request, in seconds (0: none); exceeding it answers 408.
    #[arg(long = "max-process-timeout")]
    pub max_process_timeout: Option<u64>,
    /// Bound on receiving a request, in seconds.
    #[arg(long = "socket-timeout")]
    pub socket_timeout: Option<u64>,
    /// TCP_DEFER_ACCEPT on the listening sockets.
    #[arg(long = "socket-accept-filter", value_parser = on_off)]
    pub socket_accept_filter: Option<bool>,
    /// Write the error and access logs.
    #[arg(long = "log-write", value_parser = on_off)]
    pub log_write: Option<bool>,
    /// Error-log level: emerg alert crit error warn notice info debug (or 0-7).
    #[arg(long = "log-error-level")]
    pub log_error_level: Option<Level>,
    /// Error-log path (strftime template) or "syslog".
    #[arg(long = "log-error-path")]
    pub log_error_path: Option<PathBuf>,
    /// Access-log path (strftime template) or "syslog".
    #[arg(long = "log-access-path")]
    pub log_access_path: Option<PathBuf>,
    /// Shared secret clients must know.
    #[arg(long = "key-cipher", env = "DEPLOY_KEY_CIPHER", hide_env_values = true)]
    pub key_cipher: Option<String>,
    /// RSA private key (PEM) proving the agent's identity (v2) and opening v1 "ssl".
    #[arg(long = "ssl-private-key")]
    pub ssl_private_key: Option<PathBuf>,
    /// Accept the original's v1 wire protocol too.
    #[arg(long = "legacy-protocol", value_parser = on_off)]
    pub legacy_protocol: Option<bool>,
    /// Write the master's pid to this file.
    #[arg(long = "pid-file")]
    pub pid_file: Option<PathBuf>,
    /// Directory for background transfer state.
    #[arg(long = "state-dir")]
    pub state_dir: Option<PathBuf>,
    /// Stay in the foreground and log to stderr (the original's --debug).
    #[arg(long, short = 'f')]
    pub foreground: bool,
    /// Same as --foreground, with debug logging (the original's flag).
    #[arg(long)]
    pub debug: bool,
    /// Check the configuration, print a summary and exit (`-t`, as nginx).
    #[arg(long, short = 't')]
    pub check: bool,
    /// Print the effective configuration (files and flags, secrets hidden), check it
    /// and exit (`-T`, as nginx).
    #[arg(long = "print-config", short = 'T')]
    pub print_config: bool,
    /// More output on stderr (repeatable).
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// Write a man page or shell completions to standard output and exit.
    #[arg(long, value_name = "WHAT", hide = true)]
    pub generate: Option<Generate>,
    /// Less output on stderr.
    #[arg(short, long, action = ArgAction::Count)]
    pub quiet: u8,
}

impl ServerArgs {
    /// Applies the flags over a loaded configuration.
    pub fn apply(&self, s: &mut ServerConfig) {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = &self.$field { s.$field = v.clone(); } )* };
        }
        set!(
            addr,
            port,
            backlog,
            max_prefork,
            max_requests_per_child,
            socket_accept_filter,
            log_write,
            log_error_level,
            log_error_path,
            log_access_path,
            key_cipher,
            legacy_protocol,
            state_dir
        );
        if let Some(v) = &self.user {
            s.user = Some(v.clone());
        }
        if let Some(v) = &self.group {
            s.group = Some(v.clone());
        }
        if let Some(v) = self.max_process_timeout {
            s.max_process_timeout = (v > 0).then(|| Duration::from_secs(v));
        }
        if let Some(v) = self.socket_timeout {
            s.socket_timeout = Duration::from_secs(v.max(1));
        }
        if let Some(v) = &self.ssl_private_key {
            s.ssl_private_key = Some(v.clone());
        }
        if let Some(v) = &self.pid_file {
            s.pid_file = Some(v.clone());
        }
        s.listen.extend(self.listen.iter().copied());
    }

    /// Whether the process stays attached to the terminal.
    pub fn foreground(&self) -> bool {
        self.foreground || self.debug
    }

    /// Verbosity for the stderr log: -q… negative, -v… positive; --debug counts as -vv.
    pub fn verbosity(&self) -> i8 {
        let extra = if self.debug { 2 } else { 0 };
        i8::try_from(self.verbose)
            .unwrap_or(i8::MAX)
            .saturating_add(extra)
            - i8::try_from(self.quiet).unwrap_or(i8::MAX)
    }
}

/// What `--generate` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// A man page (roff) on standard output.
    Man,
    /// bash completions.
    Bash,
    /// zsh completions.
    Zsh,
    /// fish completions.
    Fish,
}

/// Writes the man page (section 1, user commands) or completions of `cmd` (the binary's
/// own clap command) to `out`; used by the hidden `--generate` flag of every program,
/// and by packaging. A closed output (`| head`) is not an error.
pub fn generate(
    cmd: clap::Command,
    what: Generate,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    generate_in_section(cmd, what, "1", out)
}

/// [`generate`] with the man page in `section` (`8` for the daemons, which the systemd
/// units cite as `man:deploy-agent(8)`).
pub fn generate_in_section(
    mut cmd: clap::Command,
    what: Generate,
    section: &'static str,
    out: &mut dyn std::io::Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_owned();
    let mut buf: Vec<u8> = Vec::new();
    let shell = match what {
        Generate::Man => {
            clap_mangen::Man::new(cmd.clone())
                .section(section)
                .render(&mut buf)?;
            None
        }
        Generate::Bash => Some(clap_complete::Shell::Bash),
        Generate::Zsh => Some(clap_complete::Shell::Zsh),
        Generate::Fish => Some(clap_complete::Shell::Fish),
    };
    if let Some(shell) = shell {
        clap_complete::generate(shell, &mut cmd, name, &mut buf);
    }
    match out.write_all(&buf).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Parses the process's arguments into `P`, like `P::parse()`, except that a value that is
/// not UTF-8 where a string is expected is refused as a usage error (exit 2) that names
/// the flag and shows the value, instead of clap's "invalid UTF-8 was detected in one or
/// more arguments". Flags typed as paths (`PathBuf`, `OsString`) keep any bytes.
///
/// Every argument whose value parser yields a `String` gets [`Utf8`] instead; that
/// includes a custom parser returning `String`, so such a flag must validate elsewhere.
///
/// `version` replaces the command's version (see [`version!`](crate::version)).
pub fn parse<P: clap::Parser>(version: &'static str) -> P {
    let mut cmd = utf8_strings(P::command()).version(version);
    let mut matches = cmd.clone().get_matches();
    P::from_arg_matches_mut(&mut matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Gives every `String`-valued argument of `cmd` (and of its subcommands) the [`Utf8`]
/// value parser.
pub fn utf8_strings(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|arg| {
        if arg.get_value_parser().type_id() == std::any::TypeId::of::<String>() {
            arg.value_parser(Utf8)
        } else {
            arg
        }
    })
    .mut_subcommands(utf8_strings)
}

/// A `String` value parser whose error for bytes that are not UTF-8 names the argument.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8;

impl clap::builder::TypedValueParser for Utf8 {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        value.to_str().map(str::to_owned).ok_or_else(|| {
            let name = arg.map_or_else(|| "an argument".to_owned(), |a| format!("'{a}'"));
            cmd.clone().error(
                clap::error::ErrorKind::InvalidUtf8,
                format!("the value of {name} is not valid UTF-8: {value:?}"),
            )
        })
    }
}

#[cfg(test)]
mod utf8_tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[derive(Debug, Parser)]
    struct Flags {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        path: Option<PathBuf>,
        #[arg(last = true)]
        rest: Vec<String>,
    }

    fn try_parse(args: &[&[u8]]) -> Result<Flags, clap::Error> {
        let argv =
            std::iter::once(OsStr::new("prog")).chain(args.iter().map(|a| OsStr::from_bytes(a)));
        let mut matches = utf8_strings(Flags::command()).try_get_matches_from(argv)?;
        Flags::from_arg_matches_mut(&mut matches)
    }

    #[test]
    fn a_string_flag_that_is_not_utf8_is_named() {
        let err = try_parse(&[b"--name=a\xffb"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidUtf8);
        let text = err.to_string();
        assert!(text.contains("'--name <NAME>'"), "{text}");
        assert!(text.contains(r#""a\xFFb""#), "{text}");
        let err = try_parse(&[b"--", b"\xfe"]).unwrap_err();
        assert!(err.to_string().contains("[REST]"), "{err}");
    }

    #[test]
    fn a_path_flag_keeps_any_bytes() {
        let flags = try_parse(&[b"--path=/tmp/\xff", b"--name=ok"]).unwrap();
        assert_eq!(
            flags.path.unwrap().as_os_str().as_bytes(),
            b"/tmp/\xff".as_slice()
        );
        assert_eq!(flags.name.as_deref(), Some("ok"));
    }
}
