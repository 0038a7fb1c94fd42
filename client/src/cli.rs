//! Command-line flags and their translation into a run configuration.
//!
//! Every flag of the original `deploy-client` is accepted, in both `--x=v` and `--x v`
//! forms (clap's long options take both). `--ipc-path` and `--worker-method` configured
//! the original's process-per-host fan-out, which no longer exists; they are accepted and
//! ignored. New flags: `--protocol`, `--format`, `--concurrency`, `--follow`, `-q`;
//! for the cluster lock `--lock`, `--lease` and `--token` (see [`crate::lock`]); and
//! for `ssh://` hosts `-F`, `--known-hosts`, `--accept-new-host-keys`, `--identity`,
//! `--password`, `--ssh-keepalive`, `--skip-unreachable`, `--grouped`.

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use deploy_common::crypto::RsaPublicKey;
use deploy_common::fanout::DEFAULT_CONCURRENCY;
use deploy_common::gate;
use deploy_common::legacy::auth::DEFAULT_KEY_CIPHER;
use deploy_common::nodeset;
use deploy_common::order::lock as wire_lock;
use deploy_common::order::release::ReleaseSpec;
use deploy_common::order::sync::SyncRun;
use deploy_common::order::Request;
use deploy_common::ssh::{SshOptions, SshTransport};
use deploy_common::target::{Scheme, Target};
use deploy_common::transport::{AgentTransport, Mux, Protocol, Transport};
use deploy_common::upload::UploadSpec;

use crate::lock::{self as cluster_lock, LockMode};

/// The exit-status table shown at the end of `--help`.
const EXIT_CODES: &str = "\
Exit status:
  0  every host answered 200 and its \"return\" is \"true\" (or absent)
  1  every host answered, but at least one order failed (code other than 200,
     or \"return\" other than \"true\")
  2  usage or local configuration error (bad flag or host, unreadable key file)
  3  at least one host could not be reached, timed out, or broke the protocol,
     or refused SSH authentication or host key (takes precedence over 1;
     with --skip-unreachable, unreachable hosts are only reported)
  4  --order=lock or --lock: the lock could not be taken on every host (it was
     released where it had been taken); the holders are named on stderr
  5  --order=lock or --lock: a host's lease could not be renewed (lock lost);
     an order running under --lock was aborted
  130 interrupted (SIGINT/SIGTERM) while taking the lock or while an order ran
     under --lock; the lock was released. --order=lock ends with 0 when
     interrupted: holding until then is its job. Also while following an rsync
     (--follow): the transfer goes on, and the rkill that stops it is printed

Hosts are written host, host:port, 1.2.3.4:port, [v6addr]:port or a bare v6
address; results are keyed by the host as written (with :port only when it
differs from --port). ssh://[user@]host[:port] is an agentless SSH host
(port 22 unless given; ~/.ssh/config applies), keyed as written. With
--hosts=- they are read from standard input, one per line or separated by
commas or blanks; '#' starts a comment. Node sets as in ClusterShell:
web[01-20] (zero-padded), db[1,3,5-7], h[1-9/2], n[1-2]r[1-4]; `!name` (or
-x name) leaves hosts out.

Strict by default: exec, run, upload and rsync first connect to every host
(and a proxy to every agent) and start nowhere unless all connected; the
others answer 503 \"not started\", naming the hosts that failed.
--skip-unreachable sends the order wherever it can.

--order=run -- CMD ARGS runs CMD like `ssh host CMD ARGS` (the words joined
with spaces, for the remote shell); its output is printed live, each line
prefixed with its host, stdout and stderr apart (raw with -q), and failures
summarised on standard error at the end (`code 17 (3 hosts)`).

--order=upload --upload=PATH... --root=DIR [-- CMD] streams the files as one
tar to every host (SSH hosts; agents with allow_upload = on) and runs CMD in
DIR. --order=sync [--upload=PATH...] -- TOOL ARGS runs TOOL on every SSH host
at once and speaks orgalorg's sync protocol with it (HELLO, NODE, START, SYNC),
so that steps can wait for every host. --lock-file, --root: %h and %p are the
host and port as written.

Octopoda scenarios: deploy-client scenario apply|create|get|list|versions|reset
and deploy-client napp get|versions|reset (see deploy-client scenario --help).

Short forms (Octopoda's node status, file download, node get), any other flag
as for --order: `deploy-client health [HOST...]`, `deploy-client fetch
REMOTE_PATH DIR [HOST...]` (into DIR/<host>/), `deploy-client nodes [PROXY]`
(or --proxy=PROXY; --state=online|unstable|offline).

Environment: DEPLOY_KEY_CIPHER and DEPLOY_API_KEY supply --key-cipher and
--api-key, so that secrets stay out of the process list. RUST_LOG overrides
the log level chosen by -v/-q/--debug.";

/// `--port` when neither the command line nor the defaults file gives one.
const DEFAULT_PORT: u16 = 3441;

/// `--thread-timeout` for agents when not given.
const DEFAULT_THREAD_TIMEOUT: u64 = 30;

/// The orders an agent serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    /// Dry-run a group: what a transfer would do, or whether one runs.
    Status,
    /// Dry-run a group and list the files a transfer would create and delete.
    Rlist,
    /// Start a transfer.
    Rsync,
    /// Kill a running transfer.
    Rkill,
    /// Run a whitelisted job.
    Exec,
    /// Run a command given after `--` (agents with allow_run = on, or SSH hosts).
    Run,
    /// SSH hosts: stream --upload files as one tar into --root, then run the command
    /// after `--` there (if any).
    Upload,
    /// SSH hosts: upload (if --upload), then run the sync tool after `--` on every host
    /// and speak orgalorg's sync protocol with it (barriers between steps).
    Sync,
    /// Take a cluster-wide lock on every host, or on none.
    Lock,
    /// Release a lock.
    Unlock,
    /// Deploy a release from a stretcher manifest (--manifest): prepare on every host,
    /// then switch every host at once.
    Deploy,
    /// List the releases of --dest on every host.
    Releases,
    /// Switch --dest back to the previous release (or --release=PREFIX).
    Rollback,
    /// Confirm a switch made with --confirm-within.
    Confirm,
    /// How each host is doing: CPU, load, memory, disks, uptime, clock offset, version
    /// (`deploy-client health [HOST...]`).
    Health,
    /// Copy a file or directory (--options=REMOTE_PATH) of each host into
    /// --into=DIR/<host>/ (`deploy-client fetch REMOTE_PATH DIR [HOST...]`; agents with
    /// allow_fetch = on, and SSH hosts).
    Fetch,
    /// A proxy's agents and their state from its heartbeat (`deploy-client nodes
    /// [PROXY]`; --state=online|unstable|offline keeps one state).
    Nodes,
    /// Background tasks of agents and ssh:// hosts (`--background`): --options=list, wait,ID[,SECS]
    /// (until it ends, at most SECS, default 25) or cancel,ID.
    Tasks,
}

impl OrderArg {
    /// The order's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderArg::Status => "status",
            OrderArg::Rlist => "rlist",
            OrderArg::Rsync => "rsync",
            OrderArg::Rkill => "rkill",
            OrderArg::Exec => "exec",
            OrderArg::Run => "run",
            OrderArg::Upload => "upload",
            OrderArg::Sync => "sync",
            OrderArg::Lock => "lock",
            OrderArg::Unlock => "unlock",
            OrderArg::Deploy => "deploy",
            OrderArg::Releases => "releases",
            OrderArg::Rollback => "rollback",
            OrderArg::Confirm => "confirm",
            OrderArg::Health => "health",
            OrderArg::Fetch => "fetch",
            OrderArg::Nodes => "nodes",
            OrderArg::Tasks => "tasks",
        }
    }
}

/// Wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// Authenticated, encrypted, streaming protocol of this rewrite.
    V2,
    /// The original Perl deploy's protocol (plain, or "ssl" with --ssl-public-key).
    V1,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One pretty JSON object keyed by host, as the original printed (at the end).
    Json,
    /// One line per host, hosts with identical results folded together.
    Text,
    /// One JSON object per line, as events and results arrive.
    Jsonl,
    /// Output lines as they arrive, prefixed by their host (default for `run`).
    Lines,
    /// `health`, `nodes`: a table, with the cluster's averages (default for them when
    /// standard output is a terminal).
    Table,
}

/// Sends one order to deploy agents (or a deploy proxy) and prints their results.
#[derive(Debug, Parser)]
#[command(
    name = "deploy-client",
    version,
    about = "Send one order to deploy agents or a deploy proxy, in parallel, and print the results",
    after_long_help = EXIT_CODES
)]
pub struct Args {
    /// Hosts to contact, comma separated, as node sets (`web[01-20]`, `db[1,3,5-7]`,
    /// `!web05` to leave one out); `-` reads them from standard input, `@FILE` (or a
    /// path starting with `/` or `./`) from a file.
    /// [required unless the defaults file gives hosts]
    #[arg(long, value_name = "HOST,...")]
    pub hosts: Option<String>,

    /// Proxies serving one fleet (sharing `[store] backend = nats`), tried in order
    /// (comma separated or repeated; replaces --hosts): the next is tried when one
    /// cannot be connected to, or, for orders that only read (status, rlist, health,
    /// nodes, releases, tasks), when its stream is cut before the final reply.
    #[arg(long = "proxy", value_name = "PROXY,...", value_delimiter = ',')]
    pub proxy: Vec<String>,

    /// SSH: hosts written without a scheme are SSH hosts (`[user@]host[:port]`).
    #[arg(long)]
    pub ssh: bool,

    /// SSH: the remote user of hosts that name none; wins over ~/.ssh/config's `User`
    /// (like `ssh -l`).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,

    /// `[ssh] user` of the defaults file: the remote user of hosts that neither name
    /// one nor get one from ~/.ssh/config.
    #[arg(skip)]
    pub default_user: Option<String>,

    /// Hosts to leave out (repeatable): names or node sets like --hosts', e.g.
    /// `-x web05` or `--exclude='db[2-3]'` (in --hosts, `!web05` does the same).
    #[arg(short = 'x', long, value_name = "HOSTS")]
    pub exclude: Vec<String>,

    /// Port of hosts given without one (3441 is the proxy's; agents listen on 3440)
    /// [default: 3441].
    #[arg(long)]
    pub port: Option<u16>,

    /// The order to send.
    #[arg(long, value_enum)]
    pub order: OrderArg,

    /// The order's options: a group, `dest,src`, `job,arg,...` for exec, or the lock's
    /// name for lock and unlock (default `deploy`).
    #[arg(long, default_value = "", hide_default_value = true)]
    pub options: String,

    /// For a proxy: `hosts:h1,h2` or `groups:g1,g2`.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub args: String,

    /// The agents' shared secret.
    #[arg(long, env = "DEPLOY_KEY_CIPHER", hide_env_values = true, default_value = DEFAULT_KEY_CIPHER)]
    pub key_cipher: String,

    /// For a proxy: the API key. Sent only to a server that proved it knows a
    /// non-default --key-cipher, or holds the pinned --ssl-public-key.
    #[arg(
        long,
        env = "DEPLOY_API_KEY",
        hide_env_values = true,
        default_value = "",
        hide_default_value = true
    )]
    pub api_key: String,

    /// The agent's RSA public key (PEM). v2: pinned, only its holder can answer; v1:
    /// switches the "ssl" envelope on.
    #[arg(long, value_name = "PEM")]
    pub ssl_public_key: Option<PathBuf>,

    /// Seconds a host may take for the whole exchange [default: 30; for ssh:// hosts,
    /// no limit, so that `run -- tail -f …` goes on until interrupted].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub thread_timeout: Option<u64>,

    /// NATS servers (comma-separated URLs, `nats://[user:password@]host:port`) through
    /// which `nats://name` hosts are reached; their orders are sealed with --key-cipher.
    #[arg(long, value_name = "URLS", env = "DEPLOY_NATS_SERVERS")]
    pub nats_servers: Option<String>,

    /// A NATS credentials file (`.creds`) for --nats-servers.
    #[arg(long, value_name = "FILE")]
    pub nats_credentials: Option<PathBuf>,

    /// The `nats://name` agents' public keys, pinned by name: lines `<name> <key>` as
    /// `deploy-agent --print-nats-key` prints them. A host with no pin is not sent the
    /// order; a reply not sealed by the pinned key is refused.
    #[arg(long, value_name = "FILE", env = "DEPLOY_NATS_AGENT_KEYS")]
    pub nats_agent_keys: Option<PathBuf>,

    /// Seconds to wait for a connection.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub socket_timeout: u64,

    /// Accepted for compatibility; ignored (there is no IPC queue any more).
    #[arg(long, value_name = "PATH")]
    pub ipc_path: Option<String>,

    /// Accepted for compatibility; ignored (hosts are tasks, not processes).
    #[arg(long, value_name = "fork|thread")]
    pub worker_method: Option<String>,

    /// Log more to standard error (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Log at debug level.
    #[arg(long)]
    pub debug: bool,

    /// Log only errors, and no per-host error lines.
    #[arg(short, long, conflicts_with_all = ["verbose", "debug"])]
    pub quiet: bool,

    /// Wire protocol.
    #[arg(long, value_enum, default_value_t = ProtocolArg::V2)]
    pub protocol: ProtocolArg,

    /// Output format [default: lines for run, else json].
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// `lines`: print each host's output together once it is done, instead of live.
    #[arg(long)]
    pub grouped: bool,

    /// Most hosts contacted at once (raised to the number of SSH hosts for `sync`,
    /// and for `run` and `upload` unless --skip-unreachable, whose hosts must all be
    /// connected before anything starts).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONCURRENCY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    pub concurrency: usize,

    /// Ask the agents to stream output lines and progress while the order runs (v2):
    /// lines go to standard error (to standard output with --format=jsonl); rsync
    /// progress is shown as bars when standard error is a terminal. `rsync` waits for
    /// the transfer's end, attaching to it if it is already running.
    #[arg(long)]
    pub follow: bool,

    /// `rsync`: relay distribution. The first host pulls from the group's source and
    /// cuts its tree into chunks whose SHA-256 list every other host gets; the others
    /// receive the chunks host to host (each checked before it is written or passed on,
    /// so the source sends one copy and every hop runs at once), falling back to an
    /// earlier host if a peer fails or serves a bad chunk. Each result names where the
    /// host pulled from (`from`). Default: `relay` in the defaults file, else off.
    #[arg(long, value_name = "on|off", num_args = 0..=1, require_equals = true, default_missing_value = "on", value_parser = parse_on_off)]
    pub relay: Option<bool>,

    /// `--relay`: how many hosts each host passes the stream on to (1: one chain, each
    /// link used once each way; more: a shallower tree sharing each host's uplink).
    #[arg(long, value_name = "K", default_value_t = deploy_common::rsync::waves::DEFAULT_FANOUT, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub relay_fanout: usize,

    /// `run`: send this file to the command's standard input (`-`: this program's).
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,

    /// `run`, `upload`, `sync`: run the command (and the extraction) under `sudo -n`.
    #[arg(long)]
    pub sudo: bool,

    /// `deploy`: the manifest, a URL the agents fetch (from their [deploy] manifest[]
    /// prefixes), or `@FILE` sent inline (agents with [deploy] inline = on).
    #[arg(long, value_name = "URL|@FILE")]
    pub manifest: Option<String>,

    /// `deploy`, `rollback`: why (recorded with the release on every host).
    #[arg(short = 'm', long, value_name = "TEXT")]
    pub message: Option<String>,

    /// `deploy`: switch in waves of N hosts or P% of them, stopping at the first wave
    /// that fails.
    #[arg(long, value_name = "N|P%")]
    pub batch: Option<String>,

    /// `deploy`: a first wave of K hosts.
    #[arg(long, value_name = "K")]
    pub canary: Option<usize>,

    /// `deploy`: each host reverts to its previous release by itself unless
    /// `--order=confirm` reaches it within this (`90`, `90s`, `5m`, `1h`).
    #[arg(long, value_name = "DURATION")]
    pub confirm_within: Option<String>,

    /// `deploy`: each host waits a random time up to this before fetching (`30s`, `5m`),
    /// so a fleet does not hit the artifact store at once.
    #[arg(long, value_name = "DURATION")]
    pub random_delay: Option<String>,

    /// `deploy`: download rate limit per host (`10M`, `512k`); a host's own limit, if
    /// lower, wins.
    #[arg(long, value_name = "SIZE")]
    pub max_bandwidth: Option<String>,

    /// `deploy`: further attempts to open the artifact's source.
    #[arg(long, value_name = "N")]
    pub retry: Option<u32>,

    /// `deploy`: wait between attempts (`3s`).
    #[arg(long, value_name = "DURATION")]
    pub retry_wait: Option<String>,

    /// `deploy`: limit of each host's download (`10m`); a host's own limit, if shorter,
    /// wins.
    #[arg(long, value_name = "DURATION")]
    pub fetch_timeout: Option<String>,

    /// `deploy`: when a host fails to switch, leave the hosts that switched as they are
    /// (by default they are rolled back).
    #[arg(long)]
    pub no_rollback: bool,

    /// `releases`, `rollback`, `confirm`: the release link (the manifest's dest).
    #[arg(long, value_name = "PATH")]
    pub dest: Option<String>,

    /// `rollback`: the release to go back to (an id prefix of 3+ characters; default:
    /// the previous one).
    #[arg(long = "release", value_name = "ID")]
    pub release_id: Option<String>,

    /// `releases`, `rollback`, `confirm`: the releases directory when not
    /// `<dest>.releases`.
    #[arg(long, value_name = "DIR")]
    pub releases_dir: Option<String>,

    /// `deploy` on `ssh://` hosts: who fetches the artifact. `client` (default): this
    /// client, once (any source), checked and unpacked here by the confined extractor,
    /// the tree streamed to every host. `host`: each host (file:// on it, or http(s)://
    /// with curl), unpacked by its own tar. Agents always fetch for themselves.
    #[arg(long, value_enum, value_name = "WHO", default_value_t = crate::ssh_release::Fetch::Client)]
    pub fetch: crate::ssh_release::Fetch,

    /// `upload`, `sync`: a file or directory to send (repeatable). Directories are sent
    /// whole; modes, times and numeric owners are kept.
    #[arg(long = "upload", value_name = "PATH")]
    pub upload: Vec<String>,

    /// `upload`, `sync`: the remote directory to extract into (created if missing) and
    /// to run the command in; `%h`/`%p` are the host and port as written [sync default:
    /// a fresh `.deploy-runs/<run>-%h-%p` in the remote home, removed at the end].
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,

    /// `upload`, `sync`: keep the paths as given (relative), instead of recreating their
    /// absolute local paths under --root.
    #[arg(long)]
    pub relative: bool,

    /// `upload`, `sync`: do not give the files their local numeric uid/gid (they belong
    /// to the remote user).
    #[arg(long)]
    pub no_preserve_owner: bool,

    /// `run`, `exec`, `rsync`: take the cluster lock NAME (default `deploy`) on every
    /// host first, hold it while the order runs, and release it at the end.
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub lock: Option<String>,

    /// `lock`, `--lock`: the lease in seconds; renewed every third of it.
    #[arg(long, value_name = "SECS", default_value_t = wire_lock::DEFAULT_LEASE, value_parser = clap::value_parser!(u64).range(1..=wire_lock::MAX_LEASE))]
    pub lease: u64,

    /// `unlock`: the token of the lock to release (printed by `--order=lock`); `lock`,
    /// `--lock`: resume a lock held with this token instead of drawing a new one.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,

    /// SSH: the file `flock`ed on each host by `lock` and `--lock`, held by a session
    /// of this run: `%n` the lock's name, `%h`/`%p` the host and port as written
    /// (hosts sharing a file system need their own file), `%%` a `%`.
    #[arg(long, value_name = "PATH", env = "DEPLOY_LOCK_FILE", default_value = deploy_common::ssh::lock::DEFAULT_LOCK_FILE)]
    pub lock_file: String,

    /// SSH: the client configuration file [default: ~/.ssh/config].
    #[arg(short = 'F', long = "ssh-config", value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,

    /// SSH: the known_hosts file [default: ~/.ssh/known_hosts]. Unknown host keys are
    /// refused unless --accept-new-host-keys; a changed key is always refused.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// SSH: append the keys of hosts not yet known to the known_hosts file.
    #[arg(long)]
    pub accept_new_host_keys: bool,

    /// SSH: a private key to try (repeatable), after the ssh-agent's keys.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Vec<PathBuf>,

    /// SSH: ask for a password once (on the terminal) and try it after the keys.
    #[arg(long)]
    pub password: bool,

    /// SSH: send a keep-alive after this many seconds of silence from a server; three
    /// unanswered end the connection (a host that died mid-run fails instead of
    /// hanging the run). 0: never.
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub ssh_keepalive: u64,

    /// Send the order to the hosts that can be reached (not strict: by default exec,
    /// run, upload and rsync start nowhere unless every host connected), and report
    /// those that cannot without failing the run for them.
    #[arg(long)]
    pub skip_unreachable: bool,

    /// `run` on SSH hosts: run the command in DIR (relative to the remote home), like
    /// orgalorg's `-r`; the command does not run where DIR is missing.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// `sync`: keep the default run directory (`~/.deploy-runs/<run>-<host>-<port>`)
    /// on each host instead of removing it when the tool has ended.
    #[arg(long)]
    pub keep_run_dir: bool,

    /// `upload`, `sync`: do not take the cluster lock (taken by default on SSH hosts,
    /// as orgalorg does).
    #[arg(long)]
    pub no_lock: bool,

    /// `--lock` and the default lock of `upload`/`sync`: if the lock cannot be taken
    /// everywhere, warn (naming the holders) and run the order without it (orgalorg's
    /// `-t`).
    #[arg(long)]
    pub no_lock_fail: bool,

    /// SSH `run`: no terminal for the command. By default a command given no --stdin
    /// runs on one, as with orgalorg (output streams line by line, `tail -f` ends with
    /// the run; its stderr then comes on stdout).
    #[arg(long)]
    pub no_pty: bool,

    /// `exec`, `run`: start on every host at this instant, each host waiting on its own
    /// clock: RFC 3339 (`2026-12-02T11:35:00Z`), unix milliseconds, or `HH:MM:SS`
    /// today (local time). A host refuses (409; over SSH, exit code 75) an instant
    /// passed by over 1 s on its clock, or one further ahead than --max-wait.
    #[arg(long, value_name = "TIME", conflicts_with = "delay")]
    pub at: Option<String>,

    /// `exec`, `run`: start on every host at now + DURATION (`500ms`, `3s`, `1m`), the
    /// same instant everywhere (see --at).
    #[arg(long, value_name = "DURATION")]
    pub delay: Option<String>,

    /// With --at or --delay: the longest a host may wait for the instant (`10m`, `1h`)
    /// [default: 1h]; refused here if the instant is further ahead.
    #[arg(long, value_name = "DURATION")]
    pub max_wait: Option<String>,

    /// `exec`, `run`: start the command detached and print its task id at once; on
    /// agents and SSH hosts (`run`) then `--order=tasks --options=list|wait,ID[,SECS]|cancel,ID`
    /// (on SSH hosts the task lives in `~/.deploy/tasks/<id>/`).
    #[arg(long)]
    pub background: bool,

    /// The log lines on standard error: `text`, or `json` (one object per line).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// `fetch`: the local directory each host's files go to, under `DIR/<host>/`
    /// (created if missing).
    #[arg(long, value_name = "DIR")]
    pub into: Option<PathBuf>,

    /// `nodes`: only the agents in this state (online, unstable or offline).
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,

    /// `run`: the command and its arguments, after `--`.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The subcommands beside the flag-driven order (`deploy-client scenario …`): parsed
/// instead of [`Args`] when the first argument names one of them ([`SUBCOMMANDS`]).
#[derive(Debug, Parser)]
#[command(
    name = "deploy-client",
    version,
    about = "Octopoda scenarios and NodeApps on deploy agents"
)]
pub struct Sub {
    /// How the nodes are reached.
    #[command(flatten)]
    pub connect: crate::scenario::Connect,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The first arguments that select [`Sub`] rather than [`Args`].
pub const SUBCOMMANDS: &[&str] = &["scenario", "napp"];

/// A subcommand.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Octopoda scenarios: apply a folder's deployment.yaml, its versions and resets.
    #[command(subcommand)]
    Scenario(crate::scenario::ScenarioCmd),
    /// NodeApps (an application of a scenario on one node): get, versions, reset.
    #[command(subcommand)]
    Napp(crate::scenario::NappCmd),
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (`time`, `level`, `message`, then the fields).
    Json,
}

/// Everything a run needs, validated.
pub struct Config {
    /// The targets, in command-line order, without duplicates.
    pub targets: Vec<Target>,
    /// The order to send.
    pub request: Request,
    /// How to reach the targets (agents, and SSH hosts if any).
    pub transport: Arc<dyn Transport>,
    /// The SSH transport, if any target is an SSH host (for its progress counts).
    pub ssh: Option<Arc<SshTransport>>,
    /// `lines`: each host's output together.
    pub grouped: bool,
    /// Unreachable hosts do not fail the run.
    pub skip_unreachable: bool,
    /// Deliveries at once.
    pub concurrency: usize,
    /// Output format.
    pub format: Format,
    /// Whether per-host errors are reported on standard error.
    pub quiet: bool,
    /// `-v`: remote lines tagged with their stream.
    pub verbose: bool,
    /// `--order=lock` or `--lock`: how the cluster lock is used.
    pub lock: Option<LockMode>,
    /// `--order=deploy`: the waves of the rollout.
    pub rollout: Option<crate::rollout::Plan>,
    /// `--order=fetch`: where each host's files go (`DIR/<host>/`).
    pub fetch_into: Option<PathBuf>,
    /// `rsync --relay`: the fan-out of each server; `None`: no relay.
    pub relay: Option<usize>,
}

/// `on`/`off` (and the usual spellings of a boolean).
pub fn parse_on_off(value: &str) -> Result<bool, String> {
    match value {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!("{value:?}: expected on or off")),
    }
}

impl Args {
    /// The log filter the flags ask for.
    pub fn log_level(&self) -> &'static str {
        match (self.quiet, self.verbose, self.debug) {
            (true, _, _) => "error",
            (false, 0, false) => "warn",
            (false, 1, false) => "info",
            (false, 0..=2, _) => "debug",
            _ => "trace",
        }
    }

    /// Validates the flags; `stdin` supplies the hosts for `--hosts=-`.
    pub fn into_config(
        self,
        stdin: impl FnOnce() -> std::io::Result<String>,
    ) -> anyhow::Result<Config> {
        check_required(&self)?;
        let release = release_spec(&self)?;
        if let Some(path) = &self.ipc_path {
            tracing::info!(path = %path, "--ipc-path is accepted for compatibility and ignored");
        }
        if let Some(method) = &self.worker_method {
            tracing::info!(method = %method, "--worker-method is accepted for compatibility and ignored");
        }
        let failover_list = self.proxy.join(",");
        let hosts = if self.proxy.is_empty() {
            self.hosts.as_deref()
        } else {
            Some(failover_list.as_str())
        };
        let Some(hosts) = hosts else {
            bail!(
                "no hosts given: --hosts=HOST,... (or hosts = … under [client] in {})",
                crate::defaults::SYSTEM_FILE
            );
        };
        let spec = hosts.trim();
        let list = if !self.proxy.is_empty() {
            hosts.to_owned()
        } else if spec == "-" {
            stdin().context("cannot read hosts from standard input")?
        } else if let Some(path) = hosts_file(spec) {
            std::fs::read_to_string(path)
                .with_context(|| format!("--hosts: cannot read the hosts file {path}"))?
        } else {
            hosts.to_owned()
        };
        let port = self.port.unwrap_or(DEFAULT_PORT);
        let mut targets = parse_targets(&list, &self.exclude, port, self.ssh)?;
        if let Some(user) = &self.user {
            // Checked as the user of an ssh:// host is.
            Target::parse(&format!("ssh://{user}@h"), 22).context("--user")?;
            for target in targets.iter_mut().filter(|t| t.scheme == Scheme::Ssh) {
                target.user.get_or_insert_with(|| user.clone());
            }
        }
        let timed = timed(&self)?;
        // A server that knows only a default secret, with no pinned key, could be
        // anyone: it must not be handed an API key.
        let server_unauthenticated = deploy_common::config::is_default_secret(&self.key_cipher)
            && self.ssl_public_key.is_none();
        let protocol = match self.protocol {
            ProtocolArg::V2 => Protocol::V2,
            ProtocolArg::V1 => Protocol::V1,
        };
        // v1 "ssl" also takes the 1024-bit keys of fleets migrating from the Perl
        // deploy (with a warning); v2 refuses keys under 2048 bits.
        let public_key = match &self.ssl_public_key {
            None => None,
            Some(path) if protocol == Protocol::V1 => {
                let key = RsaPublicKey::load_v1(path).context("--ssl-public-key")?;
                if key.is_legacy() {
                    tracing::warn!(
                        key = %path.display(),
                        bits = key.bits(),
                        "--ssl-public-key is a legacy RSA key, accepted for --protocol=v1 only; replace it with one of at least 2048 bits"
                    );
                }
                Some(Arc::new(key))
            }
            Some(path) => Some(Arc::new(
                RsaPublicKey::load(path).context("--ssl-public-key")?,
            )),
        };
        // Strict (no --skip-unreachable): an order that starts work starts nowhere
        // unless every host connected (`deploy_common::gate`); a proxy is asked to do
        // the same for its agents.
        let strict = !self.skip_unreachable && gate::applies(self.order.as_str());
        if self.follow && protocol == Protocol::V1 {
            tracing::warn!("--follow has no effect with --protocol=v1");
        }
        let agent = AgentTransport {
            protocol,
            key_cipher: self.key_cipher,
            public_key,
            connect_timeout: Duration::from_secs(self.socket_timeout),
            deadline: Duration::from_secs(self.thread_timeout.unwrap_or(DEFAULT_THREAD_TIMEOUT)),
            // A rollout's phases go to the same hosts one after the other: the switch
            // reuses the authenticated connections of the prepare, so that it lands on
            // every host within one round trip rather than one handshake each. A strict
            // run's order goes out on the connections of its connect stage.
            pool: (self.order == OrderArg::Deploy || strict)
                .then(|| Arc::new(deploy_common::transport::agent::Pool::default())),
        };
        let ssh = if targets.iter().any(|t| t.scheme == Scheme::Ssh) {
            let mut options = ssh_options();
            options.config_file = self.ssh_config.clone();
            options.known_hosts = self.known_hosts.clone();
            options.accept_new_host_keys = self.accept_new_host_keys;
            options.identities = self.identity.clone();
            options.connect_timeout = Duration::from_secs(self.socket_timeout);
            options.deadline = self.thread_timeout.map(Duration::from_secs);
            options.keepalive =
                (self.ssh_keepalive > 0).then(|| Duration::from_secs(self.ssh_keepalive));
            options.lock_file = self.lock_file.clone();
            options.pty = !self.no_pty;
            options.default_user = self.default_user.clone();
            if self.password {
                options.password = Some(
                    crate::prompt::secret("SSH password: ")
                        .context("--password needs a terminal to ask on")?,
                );
            }
            Some(Arc::new(SshTransport::new(options)?))
        } else {
            None
        };
        if let Some(ssh) = &ssh {
            // One host written several ways (`ssh://h`, `ssh://h:22`, `ssh://me@h`) is
            // contacted once, as its first spelling.
            let mut seen = HashSet::new();
            targets.retain(|t| {
                let fresh = t.scheme != Scheme::Ssh || seen.insert(ssh.endpoint(t));
                if !fresh {
                    tracing::info!(host = %t, "host given twice; contacting it once");
                }
                fresh
            });
        }
        let nats = if targets.iter().any(|t| t.scheme == Scheme::Nats) {
            let servers = self
                .nats_servers
                .as_deref()
                .context("nats:// hosts need --nats-servers (or [nats] servers in client.ini)")?;
            let config = deploy_common::config::nats::NatsConfig {
                servers: servers
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                credentials: self.nats_credentials.clone(),
                ..Default::default()
            };
            let pins = match &self.nats_agent_keys {
                Some(path) => deploy_nats::identity::AgentKeys::load(path)?,
                None => deploy_nats::identity::AgentKeys::none(),
            };
            let link = Arc::new(deploy_nats::transport::NatsLink::new(config, false));
            Some(Arc::new(deploy_nats::transport::LazyNatsTransport::new(
                link,
                &agent.key_cipher,
                agent.deadline,
                Arc::new(pins),
            )) as Arc<dyn Transport>)
        } else {
            None
        };
        let mut transport: Arc<dyn Transport> = Arc::new(Mux {
            nats,
            agent: Arc::new(agent),
            // Release orders become scripts on SSH hosts (agents run them natively).
            ssh: ssh.clone().map(|t| {
                Arc::new(crate::ssh_release::SshReleases::new(
                    t as Arc<dyn Transport>,
                    self.fetch,
                )) as Arc<dyn Transport>
            }),
        });
        if !self.proxy.is_empty() {
            // One target (the first proxy); the others are its alternates.
            let proxies = std::mem::take(&mut targets);
            targets.extend(proxies.first().cloned());
            transport = Arc::new(crate::failover::Failover::new(transport, proxies));
        }
        let live = matches!(
            self.order,
            OrderArg::Run | OrderArg::Upload | OrderArg::Sync
        );
        let fleet_view = matches!(self.order, OrderArg::Health | OrderArg::Nodes);
        // A background run prints its task ids, not output lines.
        let format = self.format.unwrap_or(if live && !self.background {
            Format::Lines
        } else if fleet_view && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
            Format::Table
        } else {
            Format::Json
        });
        if format == Format::Table && !fleet_view {
            bail!("--format=table is for --order=health and nodes");
        }
        let fetch_into = crate::fetch::check(
            self.order == OrderArg::Fetch,
            self.into.as_deref(),
            &self.options,
            protocol == Protocol::V1,
        )?;
        let state = match (&self.state, self.order) {
            (None, _) => None,
            (Some(state), OrderArg::Nodes) => Some(
                deploy_common::order::nodes::State::parse(state)
                    .ok_or_else(|| {
                        anyhow::anyhow!("--state {state:?}: expected online, unstable or offline")
                    })?
                    .as_str()
                    .to_owned(),
            ),
            (Some(_), _) => bail!("--state is for --order=nodes"),
        };
        if matches!(self.order, OrderArg::Run | OrderArg::Sync) && self.command.is_empty() {
            bail!("--order={} needs a command after `--`", self.order.as_str());
        }
        if let Some(dir) = &self.cwd {
            if self.order != OrderArg::Run {
                bail!("--cwd is for --order=run (upload and sync run in --root)");
            }
            if dir.is_empty() || dir.contains('\0') {
                bail!("--cwd {dir:?}: expected a directory");
            }
            if let Some(agent) = targets.iter().find(|t| t.scheme != Scheme::Ssh) {
                bail!("--cwd is for ssh:// hosts; {agent} is an agent (or proxy), which runs commands in its own directory");
            }
        }
        if !live && !self.command.is_empty() {
            bail!("a command after `--` is only for --order=run, upload or sync");
        }
        let mut concurrency = self.concurrency;
        let (upload, sync) = match self.order {
            OrderArg::Upload | OrderArg::Sync => {
                if self.order == OrderArg::Sync {
                    if let Some(agent) = targets.iter().find(|t| t.scheme != Scheme::Ssh) {
                        bail!("--order=sync is for ssh:// hosts; {agent} is an agent");
                    }
                }
                // An upload goes through a proxy (which relays the tar body to its
                // agents); sync meets its hosts at the client's own hub.
                if self.order == OrderArg::Sync
                    && (!self.api_key.is_empty() || !self.args.is_empty())
                {
                    bail!("--order=sync goes to SSH hosts directly, not through a proxy");
                }
                if protocol == Protocol::V1 {
                    bail!("--order={} needs --protocol=v2", self.order.as_str());
                }
                let sync = (self.order == OrderArg::Sync).then(|| {
                    let mut run = SyncRun::new(
                        targets.iter().map(ToString::to_string).collect(),
                        !self.skip_unreachable,
                    );
                    run.scratch = self.root.is_none() && !self.keep_run_dir;
                    run
                });
                if self.upload.is_empty() && self.order == OrderArg::Upload {
                    bail!("--order=upload needs --upload=PATH (repeatable)");
                }
                if self.stdin.is_some() {
                    bail!(
                        "--stdin is not for --order={}: {}",
                        self.order.as_str(),
                        if sync.is_some() {
                            "the tool's standard input carries the sync protocol"
                        } else {
                            "the command after the upload reads no input"
                        }
                    );
                }
                let root = match (&self.root, &sync) {
                    (Some(root), _) => root.clone(),
                    // The tool is always told its run directory.
                    (None, Some(run)) => run.default_root(),
                    (None, None) => bail!("--order=upload needs --root=DIR"),
                };
                let spec = UploadSpec {
                    files: self.upload.clone(),
                    root,
                    relative: self.relative,
                    no_owner: self.no_preserve_owner,
                };
                if !spec.files.is_empty() {
                    // Refuse a missing or odd file now, not once per host; the walk is
                    // kept for the deliveries.
                    let manifest = deploy_common::upload::build_and_keep(&spec)?;
                    for entry in &manifest.entries {
                        // -v names every file sent (to every host).
                        tracing::info!(name = %entry.name, local = %entry.local.display(), "upload");
                    }
                    let (files, bytes) = manifest.totals();
                    tracing::info!(files, bytes, "files to upload");
                }
                if sync.is_some() {
                    // Every tool must run at once to meet at the barriers.
                    concurrency = concurrency.max(targets.len());
                }
                (Some(spec), sync)
            }
            _ => {
                if !self.upload.is_empty() || self.root.is_some() {
                    bail!("--upload and --root are for --order=upload or sync");
                }
                (None, None)
            }
        };
        // Strict (no --skip-unreachable): `run` and `upload` start nowhere unless every
        // SSH host connected and authenticated, like `sync` (see `connect_all_or_none`
        // in the SSH transport): they carry a run whose hosts meet once connected.
        // Agents take an order in one exchange, so for them it does not apply.
        let ssh_nodes: Vec<String> = targets
            .iter()
            .filter(|t| t.scheme == Scheme::Ssh)
            .map(ToString::to_string)
            .collect();
        let sync = match sync {
            None if matches!(self.order, OrderArg::Run | OrderArg::Upload)
                && !self.skip_unreachable
                && ssh_nodes.len() > 1 =>
            {
                // Every host must be connecting at once to meet.
                concurrency = concurrency.max(ssh_nodes.len());
                Some(SyncRun::new(ssh_nodes, true))
            }
            sync => sync,
        };
        if self.hosts.as_deref().map(str::trim) == Some("-")
            && self.stdin.as_deref() == Some(std::path::Path::new("-"))
        {
            bail!("--hosts=- and --stdin=- cannot both read standard input");
        }
        let token = self.token.as_deref();
        if self.no_lock && self.lock.is_some() {
            bail!("--lock and --no-lock contradict each other");
        }
        // As orgalorg (on SSH hosts; agents keep taking it only with --lock).
        let default_lock = matches!(self.order, OrderArg::Upload | OrderArg::Sync)
            && !self.no_lock
            && targets.iter().all(|t| t.scheme == Scheme::Ssh);
        let lock = match (self.order, &self.lock) {
            // As orgalorg: files go out under the cluster lock unless told otherwise.
            (OrderArg::Upload | OrderArg::Sync, None) if default_lock => {
                Some(LockMode::Around(cluster_lock::spec("", self.lease, token)?))
            }
            (OrderArg::Lock, None) => Some(LockMode::Only(cluster_lock::spec(
                &self.options,
                self.lease,
                token,
            )?)),
            (
                OrderArg::Run
                | OrderArg::Exec
                | OrderArg::Rsync
                | OrderArg::Upload
                | OrderArg::Sync,
                Some(name),
            ) => Some(LockMode::Around(cluster_lock::spec(
                name, self.lease, token,
            )?)),
            (_, Some(_)) => bail!("--lock is for --order=run, exec, rsync, upload or sync"),
            (_, None) => None,
        };
        let lock = match lock {
            Some(LockMode::Around(spec)) if self.no_lock_fail => Some(LockMode::Loose(spec)),
            Some(_) if self.no_lock_fail && self.order == OrderArg::Lock => {
                bail!("--no-lock-fail is for an order run under the lock, not --order=lock")
            }
            other => other,
        };
        if lock.is_some() && protocol == Protocol::V1 {
            bail!("the cluster lock needs --protocol=v2");
        }
        let stdin = match &self.stdin {
            None => None,
            Some(path) => {
                let mut bytes = Vec::new();
                if path.as_os_str() == "-" {
                    std::io::stdin()
                        .read_to_end(&mut bytes)
                        .context("reading standard input")?;
                } else {
                    bytes = std::fs::read(path)
                        .with_context(|| format!("--stdin {}", path.display()))?;
                }
                use base64::Engine as _;
                Some(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        };
        if !self.api_key.is_empty() && server_unauthenticated {
            bail!(
                "refusing to send the API key to a server that is not authenticated: \
                 --key-cipher (DEPLOY_KEY_CIPHER) is a default secret and no --ssl-public-key \
                 is pinned, so anyone on the way could pose as the proxy; give the proxy's \
                 [server] key_cipher or pin its public key"
            );
        }
        let rollout = (self.order == OrderArg::Deploy).then(|| crate::rollout::Plan {
            batch: self.batch.clone(),
            canary: self.canary,
            rollback_on_failure: !self.no_rollback,
        });
        if let Some(plan) = &rollout {
            plan.check()?;
            if protocol == Protocol::V1 {
                bail!("--order=deploy needs --protocol=v2");
            }
        }
        let relay = (self.relay == Some(true) && self.order == OrderArg::Rsync)
            .then_some(self.relay_fanout);
        // Through a proxy, the proxy schedules the relay over its agents: the request
        // asks for it, and the client sends one order as usual.
        let (relay, proxy_relay) = if self.proxy.is_empty() {
            (relay, None)
        } else {
            if relay.is_some() && protocol == Protocol::V1 {
                bail!("--relay through a proxy needs --protocol=v2");
            }
            (None, relay)
        };
        let request = Request {
            relay: proxy_relay,
            at: timed.map(|(at, _)| at),
            max_wait: timed.map(|(_, max_wait)| max_wait),
            background: self.background,
            order: self.order.as_str().to_owned(),
            options: state.unwrap_or(self.options),
            args: self.args,
            api_key: self.api_key,
            follow: self.follow || format == Format::Lines,
            argv: match &self.cwd {
                // The words are joined for the remote shell: a `cd` first, and
                // nothing else if it fails (sh, bash, zsh and fish all take this).
                Some(dir) => [format!(
                    "cd {} || exit 1;",
                    deploy_common::ssh::lines::quote(dir)
                )]
                .into_iter()
                .chain(self.command)
                .collect(),
                None => self.command,
            },
            stdin,
            strict,
            sudo: self.sudo,
            token: match self.order {
                OrderArg::Unlock => self.token.unwrap_or_default(),
                _ => String::new(),
            },
            upload: upload.map(Box::new),
            sync: sync.map(Box::new),
            release: release.map(Box::new),
            ..Request::default()
        };
        Ok(Config {
            targets,
            request,
            transport,
            ssh,
            grouped: self.grouped,
            skip_unreachable: self.skip_unreachable,
            concurrency,
            format,
            quiet: self.quiet,
            verbose: self.verbose > 0 && !self.quiet,
            lock,
            rollout,
            fetch_into,
            relay,
        })
    }
}

/// SSH options from the environment: the local user, home, ssh-agent socket, and a
/// passphrase prompt on the terminal.
pub(crate) fn ssh_options() -> SshOptions {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten();
    let name = std::env::var("USER")
        .ok()
        .or_else(|| user.as_ref().map(|u| u.name.clone()))
        .unwrap_or_else(|| "root".to_owned());
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .or_else(|| user.map(|u| u.dir))
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut options = SshOptions::new(name, home);
    options.agent_socket = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    options.passphrase = Some(Arc::new(|path: &std::path::Path| {
        crate::prompt::secret(&format!("Enter passphrase for key '{}': ", path.display())).ok()
    }));
    options
}

/// Whether `exclusion` (a host given after `!` or to `--exclude`) names `target`: the
/// same scheme, host and port, and the same user if the exclusion names one.
fn excludes(exclusion: &Target, target: &Target) -> bool {
    exclusion.scheme == target.scheme
        && exclusion.host == target.host
        && exclusion.port == target.port
        && (exclusion.user.is_none() || exclusion.user == target.user)
}

/// The hosts file a `--hosts` value names: `@FILE`, or a path starting with `/` or `./`.
fn hosts_file(spec: &str) -> Option<&str> {
    spec.strip_prefix('@')
        .or_else(|| (spec.starts_with('/') || spec.starts_with("./")).then_some(spec))
}

/// Parses a host list (node sets: `web[01-20]`, `db[1,3,5-7]`, `!web05`; see
/// [`nodeset`]) into targets, leaving out those `exclude` (more node sets) names and
/// dropping repeated hosts (results are keyed by host).
///
/// With `ssh` (`--ssh`), a host written without a scheme is an SSH host
/// (`[user@]host[:port]`).
pub fn parse_targets(
    text: &str,
    exclude: &[String],
    port: u16,
    ssh: bool,
) -> anyhow::Result<Vec<Target>> {
    let parse = |spec: &str| match ssh && !spec.contains("://") {
        true => Target::parse(
            &format!("{}{spec}", deploy_common::target::SSH_PREFIX),
            port,
        )
        .map_err(|e| deploy_common::target::TargetError {
            spec: spec.to_owned(),
            reason: e.reason,
        }),
        false => Target::parse(spec, port),
    };
    let mut set = nodeset::parse_list(text, nodeset::DEFAULT_LIMIT)?;
    for pattern in exclude {
        let more = nodeset::parse_list(pattern, nodeset::DEFAULT_LIMIT)
            .with_context(|| format!("--exclude {pattern:?}"))?;
        // `-x web1` and `-x '!web1'` both exclude.
        set.exclude.extend(more.include);
        set.exclude.extend(more.exclude);
    }
    let excluded: Vec<Target> = set
        .exclude
        .iter()
        .map(|spec| parse(spec))
        .collect::<Result<_, _>>()?;
    let mut seen = HashSet::new();
    let mut targets = Vec::new();
    for spec in &set.include {
        let target = parse(spec)?;
        if excluded.iter().any(|x| excludes(x, &target)) {
            continue;
        }
        if seen.insert(target.to_string()) {
            targets.push(target);
        } else {
            tracing::info!(host = %target, "host given twice; contacting it once");
        }
    }
    if targets.is_empty() {
        bail!("no hosts given");
    }
    Ok(targets)
}

/// Reads all of standard input.
pub fn read_stdin() -> std::io::Result<String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok(text)
}

/// `90`, `90s`, `5m`, `2h`, `1d` as seconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `--at`/`--delay`/`--max-wait`/`--background`, checked: the instant (unix ms) and the
/// longest wait (ms) of a timed `exec` or `run`.
fn timed(args: &Args) -> anyhow::Result<Option<(i64, u64)>> {
    use deploy_common::order::at;
    let runs = matches!(args.order, OrderArg::Exec | OrderArg::Run);
    if args.background {
        if !runs {
            bail!("--background is for --order=exec or run");
        }
        if args.stdin.is_some() {
            bail!("--background: a detached command reads no --stdin");
        }
    }
    if (args.background || args.at.is_some() || args.delay.is_some())
        && args.protocol == ProtocolArg::V1
    {
        bail!("--at, --delay and --background need --protocol=v2 (the v1 wire cannot carry them)");
    }
    if args.at.is_none() && args.delay.is_none() {
        if args.max_wait.is_some() {
            bail!("--max-wait goes with --at or --delay");
        }
        return Ok(None);
    }
    if !runs {
        bail!("--at and --delay are for --order=exec or run");
    }
    let max_wait = match &args.max_wait {
        Some(text) => at::parse_duration(text).map_err(|e| anyhow::anyhow!("--max-wait: {e}"))?,
        None => std::time::Duration::from_millis(at::DEFAULT_MAX_WAIT_MS.unsigned_abs()),
    };
    let max_ms = u64::try_from(max_wait.as_millis()).unwrap_or(u64::MAX);
    let now = at::now_ms();
    let instant = match (&args.at, &args.delay) {
        (Some(text), _) => at::parse_at(text).map_err(|e| anyhow::anyhow!(e))?,
        (None, Some(text)) => {
            let delay = at::parse_duration(text).map_err(|e| anyhow::anyhow!("--delay: {e}"))?;
            now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
        }
        (None, None) => return Ok(None),
    };
    // The caller's own clock decides what it can: hosts judge the rest on theirs.
    match at::timing(instant, now, i64::try_from(max_ms).unwrap_or(i64::MAX)) {
        at::Timing::TooFar(ahead) => bail!(
            "--at {}: {} s ahead, over --max-wait ({} s)",
            at::rfc3339(instant),
            ahead / 1000,
            max_ms / 1000
        ),
        at::Timing::Passed(late) if late > at::TOLERANCE_MS => bail!(
            "--at {}: passed {} ms ago (this machine's clock reads {})",
            at::rfc3339(instant),
            late,
            at::rfc3339(now)
        ),
        _ => {}
    }
    tracing::info!(at = %at::rfc3339(instant), max_wait_ms = max_ms, "timed run");
    Ok(Some((instant, max_ms)))
}

/// What an order cannot go without, refused here (exit 2) rather than by every host:
/// the rsync-family orders name a group (or `dest,src`), `exec` a job; `run` and
/// `sync` a command (checked with the format, below).
fn check_required(args: &Args) -> anyhow::Result<()> {
    let what = match args.order {
        OrderArg::Exec => "JOB[,ARG...] (a job of the agents' jobs file)",
        OrderArg::Status | OrderArg::Rlist | OrderArg::Rsync | OrderArg::Rkill => {
            "GROUP (an [rsync::group::GROUP] of the agents) or DEST,SRC"
        }
        _ => return Ok(()),
    };
    if args.options.trim().is_empty() {
        bail!("--order={} needs --options={what}", args.order.as_str());
    }
    Ok(())
}

/// The release fields of `deploy`, `releases`, `rollback` and `confirm`.
fn release_spec(args: &Args) -> anyhow::Result<Option<ReleaseSpec>> {
    let release_order = matches!(
        args.order,
        OrderArg::Deploy | OrderArg::Releases | OrderArg::Rollback | OrderArg::Confirm
    );
    if args.order != OrderArg::Deploy
        && (args.random_delay.is_some()
            || args.max_bandwidth.is_some()
            || args.retry.is_some()
            || args.retry_wait.is_some()
            || args.fetch_timeout.is_some())
    {
        bail!("--random-delay, --max-bandwidth, --retry, --retry-wait and --fetch-timeout are for --order=deploy");
    }
    if !release_order {
        if args.manifest.is_some() || args.dest.is_some() || args.release_id.is_some() {
            bail!("--manifest, --dest and --release are for --order=deploy, releases, rollback or confirm");
        }
        if args.batch.is_some() || args.canary.is_some() || args.confirm_within.is_some() {
            bail!("--batch, --canary and --confirm-within are for --order=deploy");
        }
        return Ok(None);
    }
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut spec = ReleaseSpec {
        who: format!("{user}@{host}"),
        message: args.message.clone().unwrap_or_default(),
        releases_dir: args.releases_dir.clone().unwrap_or_default(),
        ..ReleaseSpec::default()
    };
    if args.order == OrderArg::Deploy {
        match args.manifest.as_deref() {
            None => bail!("--order=deploy needs --manifest=URL (or @FILE)"),
            Some(file) if file.starts_with('@') => {
                let path = &file[1..];
                spec.manifest =
                    std::fs::read_to_string(path).with_context(|| format!("--manifest {path}"))?;
            }
            Some(url) => spec.manifest_url = url.to_owned(),
        }
        let duration = |flag: &str, value: &Option<String>| -> anyhow::Result<Option<u64>> {
            value
                .as_deref()
                .map(|v| {
                    parse_duration(v).ok_or_else(|| {
                        anyhow::anyhow!("--{flag} {v:?}: expected e.g. 90, 90s, 5m or 1h")
                    })
                })
                .transpose()
        };
        spec.knobs = deploy_common::order::release::Knobs {
            random_delay: duration("random-delay", &args.random_delay)?,
            max_bandwidth: args
                .max_bandwidth
                .as_deref()
                .map(|v| {
                    deploy_common::config::agent::parse_size(v).ok_or_else(|| {
                        anyhow::anyhow!(
                            "--max-bandwidth {v:?}: expected a size such as 10M or 512k"
                        )
                    })
                })
                .transpose()?,
            retry: args.retry,
            retry_wait: duration("retry-wait", &args.retry_wait)?,
            timeout: duration("fetch-timeout", &args.fetch_timeout)?,
        };
        if let Some(within) = &args.confirm_within {
            spec.confirm_within = Some(parse_duration(within).ok_or_else(|| {
                anyhow::anyhow!("--confirm-within {within:?}: expected e.g. 90, 90s, 5m or 1h")
            })?);
        }
        if args.dest.is_some() {
            bail!("--order=deploy takes dest from the manifest, not --dest");
        }
    } else {
        spec.dest = match &args.dest {
            Some(dest) => dest.clone(),
            None => bail!(
                "--order={} needs --dest=PATH (the manifest's dest)",
                args.order.as_str()
            ),
        };
        if args.order == OrderArg::Rollback {
            spec.id = args.release_id.clone().unwrap_or_default();
        } else if args.release_id.is_some() {
            bail!("--release is for --order=rollback");
        }
        if args.manifest.is_some() {
            bail!("--manifest is for --order=deploy");
        }
    }
    Ok(Some(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists() {
        let names = |text: &str, exclude: &[&str]| -> Vec<String> {
            let exclude: Vec<String> = exclude.iter().map(|s| s.to_string()).collect();
            parse_targets(text, &exclude, 3441, false)
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            names("a,b c\n# comment\n d # trailing\n\n[::1]:9,,e", &[]),
            ["a", "b", "c", "d", "[::1]:9", "e"]
        );
        assert_eq!(names("a,a:3441,a:1,b", &[]), ["a", "a:1", "b"]);
        assert_eq!(
            names("web[1-4],db[1,3] !web2", &["web3:3441", "!db3"]),
            ["web1", "web4", "db1"]
        );
        // An exclusion without a user names the host whatever the user.
        assert_eq!(
            names("ssh://root@h[1-2],ssh://u@h3", &["ssh://h1", "ssh://x@h3"]),
            ["ssh://root@h2", "ssh://u@h3"]
        );
        // --ssh: no scheme needed; errors name the host as written.
        let t = parse_targets("root@web[1-2]:2222,h", &[], 3441, true).unwrap();
        let shown: Vec<String> = t.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["ssh://root@web1:2222", "ssh://root@web2:2222", "ssh://h"]
        );
        assert!(t.iter().all(|t| t.scheme == Scheme::Ssh));
        assert_eq!((t[2].port, t[0].user.as_deref()), (22, Some("root")));
        let e = parse_targets("h:0", &[], 1, true).unwrap_err().to_string();
        assert!(e.contains("bad host \"h:0\""), "{e}");
        assert_eq!(hosts_file("@x"), Some("x"));
        assert_eq!(hosts_file("./x"), Some("./x"));
        assert_eq!(hosts_file("/etc/x"), Some("/etc/x"));
        assert_eq!(hosts_file("x,y"), None);
        assert!(parse_targets(" # nothing", &[], 1, false).is_err());
        assert!(parse_targets("a", &["a".to_owned()], 1, false).is_err());
        let e = parse_targets("a", &["b[1-".to_owned()], 1, false).unwrap_err();
        assert!(format!("{e:#}").contains("--exclude \"b[1-\""), "{e:#}");
        let e = parse_targets("good,bad:port", &[], 1, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad:port"), "{e}");
    }

    #[test]
    fn flags_in_both_forms() {
        let a = Args::try_parse_from([
            "deploy-client",
            "--hosts=h",
            "--order",
            "exec",
            "--options=job,x",
            "--port",
            "3440",
            "-vv",
            "--format=text",
            "--ipc-path=/tmp/x",
        ])
        .unwrap();
        assert_eq!(a.order, OrderArg::Exec);
        assert_eq!(a.port, Some(3440));
        assert_eq!(a.log_level(), "debug");
        assert_eq!(a.format, Some(Format::Text));
        assert!(Args::try_parse_from(["deploy-client", "--hosts=h", "--order=nope"]).is_err());
        assert!(Args::try_parse_from([
            "deploy-client",
            "--hosts=h",
            "--order=exec",
            "--concurrency=0"
        ])
        .is_err());
    }
}
