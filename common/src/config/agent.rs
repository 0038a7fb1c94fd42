//! The agent's configuration (`deploy_agent.ini` and its jobs file).
//!
//! ```text
//! [server]                    ; ServerConfig: listen address, workers, logs, secret …
//! port = 3440
//! [allow::hosts]              ; who may connect (missing or empty: nobody)
//! host[] = 127.0.0.1
//! [allow::paths]              ; where rsync orders may write (missing or empty: nowhere)
//! path[] = /var/lib/deploy/target
//! [rsync::group::web]         ; a named transfer: --options=web
//! dest = 127.0.0.1::DEST
//! src = /var/lib/deploy/target/web
//! exclude[] = .git
//! [jobs]                      ; the exec order's whitelist (see jobs.rs)
//! path = deploy_agent_exec.ini
//! [deploy]                    ; releases (with [server] allow_deploy = on)
//! manifest[] = https://artifacts.example.org/manifests/
//! hooks = off
//! [scenarios]                 ; Octopoda scenarios: the napp order (off by default)
//! enabled = on
//! workspace = /var/lib/deploy/scenarios/workspace
//! [nats]                      ; orders over NATS too (see nats.rs)
//! server[] = nats://127.0.0.1:4222
//! ```
//!
//! No other sections are allowed, nor keys before the first section header. The shipped
//! `etc/deploy_agent.ini` documents every key with its default.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ini::{Ini, Section};
use super::jobs::Jobs;
use super::{
    apply_allow_hosts, load_referenced, reject_implicit, unknown_section, ConfigError, Cx, Ignored,
    ServerConfig,
};
use crate::access::{HostAllowList, PathAllowList};

/// The sections `deploy_agent.ini` may contain (for the error message).
const AGENT_SECTIONS: &str =
    "server, allow::hosts, allow::paths, rsync::group::<name>, jobs, deploy, scenarios or nats";

/// The prefix of rsync group sections.
const GROUP_PREFIX: &str = "rsync::group::";

/// One `[rsync::group::<name>]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RsyncGroup {
    /// `dest`: the rsync *source* (`host::MODULE/path` or `rsync://host[:port]/MODULE/path`).
    pub dest: String,
    /// `src`: the local *target* directory on the agent.
    pub src: String,
    /// `rsync`: the binary (default `/usr/bin/rsync`).
    pub rsync: PathBuf,
    /// `rsh`: value for `--rsh=`.
    pub rsh: Option<String>,
    /// `exclude[]` values.
    pub exclude: Vec<String>,
    /// `include[]` values.
    pub include: Vec<String>,
    /// `option[]` values: extra rsync arguments, each value split on whitespace as the
    /// original did (so one line can give several).
    pub option: Vec<String>,
}

/// The default rsync binary of a group.
pub const DEFAULT_RSYNC: &str = "/usr/bin/rsync";

/// `[deploy]`: where release manifests and artifacts may come from, and the knobs of
/// their download (stretcher's flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployConfig {
    /// `manifest[]`: URL prefixes a manifest's URL must start with. None: no manifest
    /// by URL.
    pub manifests: Vec<String>,
    /// `src[]`: URL prefixes an artifact's `src` must start with. None: any.
    pub sources: Vec<String>,
    /// `inline`: accept manifests sent inline by the caller. Default off.
    pub inline: bool,
    /// `hooks`: run the manifests' commands (arbitrary shell). Default off.
    pub hooks: bool,
    /// `work_dir`: downloads and staging trees. Default `<state_dir>/deploy`.
    pub work_dir: Option<PathBuf>,
    /// `random_delay` (seconds): wait up to this long before fetching. Default 0.
    pub random_delay: Duration,
    /// `max_bandwidth` (bytes per second, `10M`-style sizes). Default none.
    pub max_bandwidth: Option<u64>,
    /// `retry`: further attempts to open a source. Default 0.
    pub retry: u32,
    /// `retry_wait` (seconds). Default 3.
    pub retry_wait: Duration,
    /// `timeout` (seconds): the whole download. Default none.
    pub timeout: Option<Duration>,
}

impl Default for DeployConfig {
    fn default() -> DeployConfig {
        DeployConfig {
            manifests: Vec::new(),
            sources: Vec::new(),
            inline: false,
            hooks: false,
            work_dir: None,
            random_delay: Duration::ZERO,
            max_bandwidth: None,
            retry: 0,
            retry_wait: Duration::from_secs(3),
            timeout: None,
        }
    }
}

/// `[scenarios]`: Octopoda scenarios on this agent (the `napp` order). Scenario scripts
/// are code sent by the caller, so they run only when `enabled = on`, and only under
/// `workspace`, which must lie under `[allow::paths]` (the agent refuses to start
/// otherwise; `--check` says so).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScenariosConfig {
    /// `enabled`: serve `napp`. Default off.
    pub enabled: bool,
    /// `workspace`: NodeApp directories (`<workspace>/<app>@<scenario>`) and their
    /// versions (`<workspace>/.deploy/versions`). Required when enabled.
    pub workspace: Option<PathBuf>,
    /// `fstore`: the file store scripts see as `OCTOPODA_FSTORE`. Default: beside the
    /// workspace (`<workspace>/../fstore`).
    pub fstore: Option<PathBuf>,
    /// `log`: the log directory scripts see as `OCTOPODA_LOG`. Default: `<workspace>/../log`.
    pub log: Option<PathBuf>,
}

/// `10M`, `512k`, `1G`, `1000` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Agent-only facts gathered while reading the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentExtras {
    /// Keys accepted for compatibility but without effect (e.g. a group's
    /// `queue_path`); the binary should warn about each.
    pub ignored: Vec<Ignored>,
}

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// The ini file this was read from.
    pub path: PathBuf,
    /// `[server]`.
    pub server: ServerConfig,
    /// `[allow::hosts] host[]`: peers allowed to connect. Missing section: nobody.
    pub allow_hosts: HostAllowList,
    /// `[allow::paths] path[]`: where rsync orders may write. Missing section: nowhere.
    pub allow_paths: PathAllowList,
    /// `[rsync::group::<name>]` sections by name.
    pub groups: BTreeMap<String, RsyncGroup>,
    /// `[jobs] path`, resolved against the ini's directory. `None`: no jobs.
    pub jobs_path: Option<PathBuf>,
    /// The jobs read from `jobs_path` (only by [`AgentConfig::load`]; empty after
    /// [`AgentConfig::parse`]).
    pub jobs: Jobs,
    /// `[deploy]`.
    pub deploy: DeployConfig,
    /// `[scenarios]`.
    pub scenarios: ScenariosConfig,
    /// Agent-only extras.
    pub agent: AgentExtras,
    /// `[nats]`: orders over NATS too (see [`super::nats`]).
    pub nats: Option<super::nats::NatsConfig>,
}

impl AgentConfig {
    /// The configuration of an agent started without a file: defaults everywhere, nobody
    /// admitted, no groups, no jobs.
    pub fn defaults(path: &Path) -> AgentConfig {
        AgentConfig {
            path: path.to_path_buf(),
            server: ServerConfig::agent_defaults(),
            allow_hosts: HostAllowList::new(),
            allow_paths: PathAllowList::new(),
            groups: BTreeMap::new(),
            jobs_path: None,
            jobs: Jobs::default(),
            deploy: DeployConfig::default(),
            scenarios: ScenariosConfig::default(),
            agent: AgentExtras::default(),
            nats: None,
        }
    }

    /// Reads `path`, then the jobs file it names.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let ini = Ini::load(path)?;
        let mut config = AgentConfig::from_ini(&ini)?;
        if let Some(jobs_path) = &config.jobs_path {
            let jobs_ini = load_referenced(&ini, "jobs", "path", jobs_path)?;
            config.jobs = Jobs::from_ini(&jobs_ini)?;
        }
        Ok(config)
    }

    /// Parses the text of an agent ini; `path` names it in errors and anchors relative
    /// paths. The jobs file is **not** read ([`AgentConfig::load`] does that).
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_ini(&Ini::parse(text, path)?)
    }

    /// Builds the configuration from a parsed ini (without reading the jobs file).
    pub fn from_ini(ini: &Ini) -> Result<AgentConfig, ConfigError> {
        let mut config = AgentConfig::defaults(ini.path());
        for section in ini.sections() {
            reject_implicit(ini, section)?;
            let cx = Cx::new(ini, section);
            match section.name() {
                "server" => config.server.apply(&cx, section)?,
                "nats" => config.nats = Some(super::nats::NatsConfig::parse(&cx, section, true)?),
                "allow::hosts" => apply_allow_hosts(&cx, section, &mut config.allow_hosts)?,
                "allow::paths" => {
                    for e in section.entries() {
                        match (e.key.as_str(), e.list) {
                            ("path", true) => config
                                .allow_paths
                                .push_root(&e.value)
                                .map_err(|err| cx.invalid(e, err.to_string()))?,
                            ("path", false) => return Err(cx.want_list(e)),
                            _ => return Err(cx.unknown_key(e)),
                        }
                    }
                }
                "jobs" => {
                    for e in section.entries() {
                        match (e.key.as_str(), e.list) {
                            ("path", false) => config.jobs_path = cx.file(e),
                            ("path", true) => return Err(cx.want_scalar(e)),
                            _ => return Err(cx.unknown_key(e)),
                        }
                    }
                }
                "deploy" => {
                    let d = &mut config.deploy;
                    for e in section.entries() {
                        match (e.key.as_str(), e.list) {
                            ("manifest", true) => d.manifests.push(cx.nonempty(e)?),
                            ("src", true) => d.sources.push(cx.nonempty(e)?),
                            ("manifest" | "src", false) => return Err(cx.want_list(e)),
                            (_, true) => return Err(cx.want_scalar(e)),
                            ("inline", _) => d.inline = cx.boolean(e)?,
                            ("hooks", _) => d.hooks = cx.boolean(e)?,
                            ("work_dir", _) => d.work_dir = Some(cx.absolute(e)?),
                            ("random_delay", _) => d.random_delay = cx.seconds(e)?,
                            ("max_bandwidth", _) => {
                                d.max_bandwidth = Some(parse_size(&e.value).ok_or_else(|| {
                                    cx.invalid(e, "expected a size such as 10M, 512k or 1000")
                                })?)
                            }
                            ("retry", _) => d.retry = cx.number(e)?,
                            ("retry_wait", _) => d.retry_wait = cx.seconds(e)?,
                            ("timeout", _) => d.timeout = Some(cx.seconds(e)?),
                            _ => return Err(cx.unknown_key(e)),
                        }
                    }
                }
                "scenarios" => {
                    let sc = &mut config.scenarios;
                    for e in section.entries() {
                        match (e.key.as_str(), e.list) {
                            ("enabled" | "workspace" | "fstore" | "log", true) => {
                                return Err(cx.want_scalar(e))
                            }
                            ("enabled", _) => sc.enabled = cx.boolean(e)?,
                            ("workspace", _) => sc.workspace = Some(cx.absolute(e)?),
                            ("fstore", _) => sc.fstore = Some(cx.absolute(e)?),
                            ("log", _) => sc.log = Some(cx.absolute(e)?),
                            _ => return Err(cx.unknown_key(e)),
                        }
                    }
                    if sc.enabled && sc.workspace.is_none() {
                        return Err(cx.missing(section, "workspace"));
                    }
                }
                name => match name.strip_prefix(GROUP_PREFIX) {
                    Some(group) => {
                        let parsed = parse_group(&cx, section, group, &mut config.agent)?;
                        config.groups.insert(group.to_owned(), parsed);
                    }
                    None => return Err(unknown_section(ini, section, AGENT_SECTIONS)),
                },
            }
        }
        Ok(config)
    }
}

/// Reads one `[rsync::group::<name>]` section.
fn parse_group(
    cx: &Cx<'_>,
    section: &Section,
    name: &str,
    extras: &mut AgentExtras,
) -> Result<RsyncGroup, ConfigError> {
    if name.is_empty() || name.contains([',', '|']) || name.chars().any(char::is_whitespace) {
        return Err(ConfigError::Syntax {
            path: cx.path.to_path_buf(),
            line: section.line(),
            message: format!(
                "[{}]: invalid group name {name:?} (must be non-empty, without ',', '|' or spaces)",
                section.name()
            ),
        });
    }
    let mut group = RsyncGroup {
        rsync: PathBuf::from(DEFAULT_RSYNC),
        ..RsyncGroup::default()
    };
    let (mut dest, mut src) = (None, None);
    for e in section.entries() {
        match (e.key.as_str(), e.list) {
            ("exclude", true) => group.exclude.push(e.value.clone()),
            ("include", true) => group.include.push(e.value.clone()),
            // The original split the value on whitespace (`option[] = --recursive
            // --times` is two arguments); an argument cannot contain a space.
            ("option", true) => group
                .option
                .extend(cx.nonempty(e)?.split_whitespace().map(str::to_owned)),
            ("exclude" | "include" | "option", false) => return Err(cx.want_list(e)),
            ("dest" | "src" | "rsync" | "rsh" | "queue_path", true) => {
                return Err(cx.want_scalar(e))
            }
            ("dest", _) => dest = Some(cx.nonempty(e)?),
            ("src", _) => src = Some(cx.nonempty(e)?),
            ("rsync", _) => group.rsync = PathBuf::from(cx.nonempty(e)?),
            ("rsh", _) => group.rsh = cx.opt_string(e),
            ("queue_path", _) => extras.ignored.push(Ignored {
                path: cx.path.to_path_buf(),
                line: e.line,
                section: cx.section.to_owned(),
                key: e.written_key(),
                note: "the original documented it but never used it; transfer state lives in [server] state_dir",
            }),
            _ => return Err(cx.unknown_key(e)),
        }
    }
    group.dest = dest.ok_or_else(|| cx.missing(section, "dest"))?;
    group.src = src.ok_or_else(|| cx.missing(section, "src"))?;
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const ETC_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/deploy_agent.ini");
    const ETC_EXEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/deploy_agent_exec.ini");

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("/etc/deploy/deploy_agent.ini"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn deploy_section() {
        let c = parse(
            "[server]\nallow_deploy = on\n[deploy]\nmanifest[] = https://a/\nsrc[] = s3://b/\n\
             hooks = on\nmax_bandwidth = 10M\nretry = 3\ntimeout = 60\n",
        )
        .unwrap();
        assert!(c.server.allow_deploy);
        assert_eq!(c.deploy.manifests, ["https://a/"]);
        assert_eq!(c.deploy.sources, ["s3://b/"]);
        assert!(c.deploy.hooks && !c.deploy.inline);
        assert_eq!(c.deploy.max_bandwidth, Some(10 << 20));
        assert_eq!(c.deploy.retry, 3);
        assert_eq!(c.deploy.timeout, Some(Duration::from_secs(60)));
        assert!(err("[deploy]\nmax_bandwidth = fast\n").contains("max_bandwidth"));
        assert!(err("[deploy]\nmanifest = x\n").contains("manifest"));
        assert_eq!(parse_size("512k"), Some(512 << 10));
    }

    #[test]
    fn scenarios_section() {
        let c = parse("[scenarios]\nenabled = on\nworkspace = /srv/sc/ws\nlog = /var/log/sc\n")
            .unwrap();
        assert!(c.scenarios.enabled);
        assert_eq!(
            c.scenarios.workspace.as_deref(),
            Some(Path::new("/srv/sc/ws"))
        );
        assert_eq!(c.scenarios.fstore, None);
        assert_eq!(c.scenarios.log.as_deref(), Some(Path::new("/var/log/sc")));
        assert!(!parse("").unwrap().scenarios.enabled, "off by default");
        assert_eq!(
            err("\n[scenarios]\nenabled = on\n"),
            "/etc/deploy/deploy_agent.ini:2: [scenarios]: missing key workspace"
        );
        assert_eq!(
            err("[scenarios]\nworkspace = ws\n"),
            "/etc/deploy/deploy_agent.ini:2: [scenarios] workspace: path \"ws\" must be absolute"
        );
        assert!(err("[scenarios]\nenable = on\n").contains(":2: [scenarios] enable: unknown key"));
        assert!(err("[scenarios]\nenabled = maybe\n").contains(":2: [scenarios] enabled"));
    }

    #[test]
    fn shipped_agent_ini_loads() {
        let c = AgentConfig::load(Path::new(ETC_AGENT)).unwrap();
        assert_eq!(c.server.addr.to_string(), "0.0.0.0");
        assert_eq!(c.server.port, 3440);
        assert_eq!(c.server.key_cipher, "change-me");
        assert!(c.allow_hosts.allows("127.0.0.1".parse::<IpAddr>().unwrap()));
        assert!(c.allow_hosts.allows("::1".parse::<IpAddr>().unwrap()));
        assert!(!c.allow_hosts.allows("10.1.2.3".parse::<IpAddr>().unwrap()));
        assert_eq!(
            c.allow_paths.roots(),
            [PathBuf::from("/var/lib/deploy/target")]
        );
        let web = &c.groups["web"];
        assert_eq!(web.dest, "127.0.0.1::DEST");
        assert_eq!(web.src, "/var/lib/deploy/target/web");
        assert_eq!(web.exclude, [".git"]);
        assert_eq!(web.rsync, PathBuf::from(DEFAULT_RSYNC));
        let etc = Path::new(ETC_AGENT).parent().unwrap();
        assert_eq!(
            c.jobs_path.as_deref(),
            Some(etc.join("deploy_agent_exec.ini").as_path())
        );
        assert!(c.jobs.get("service:echo").is_some());
        assert!(
            c.jobs.get("app:date").is_none(),
            "no sample whose arguments can be a privileged program's options"
        );
        assert!(c.jobs.get("service:nginx").is_none(), "commented out");
        // The sample documents the defaults: parsing it changes nothing else.
        let mut want = ServerConfig::agent_defaults();
        want.key_cipher = "change-me".into();
        assert_eq!(c.server, want);
    }

    #[test]
    fn shipped_exec_ini_parses() {
        let jobs = Jobs::load(Path::new(ETC_EXEC)).unwrap();
        let echo = jobs.get("service:echo").unwrap();
        let a = vec!["hello".to_string(), "world".to_string()];
        assert_eq!(echo.argv(&a).unwrap(), ["/bin/echo", "hello", "world"]);
        assert_eq!(echo.display(&a), "/bin/echo hello world");
    }

    #[test]
    fn defaults_without_sections() {
        let c = parse("").unwrap();
        assert_eq!(
            c,
            AgentConfig::defaults(Path::new("/etc/deploy/deploy_agent.ini"))
        );
        assert!(c.allow_hosts.is_empty() && c.allow_paths.is_empty());
        assert!(c.jobs.is_empty() && c.jobs_path.is_none() && c.groups.is_empty());
    }

    #[test]
    fn groups() {
        let c = parse(
            "[rsync::group::web]\n\
             dest = host::DEST/sub\n\
             src = /srv/web\n\
             rsync = /opt/rsync\n\
             rsh = ssh -p 2222 -o BatchMode=yes\n\
             exclude[] = .git\nexclude[] = *.tmp\n\
             include[] = keep/\n\
             option[] = --delete\noption[] = --bwlimit=1000\noption[] =  --recursive   --times \n\
             queue_path = /tmp\n\
             [rsync::group::db]\ndest = a::B\nsrc = /srv/db\n",
        )
        .unwrap();
        assert_eq!(c.groups.keys().collect::<Vec<_>>(), ["db", "web"]);
        let web = &c.groups["web"];
        assert_eq!(web.rsync, PathBuf::from("/opt/rsync"));
        assert_eq!(web.rsh.as_deref(), Some("ssh -p 2222 -o BatchMode=yes"));
        assert_eq!(web.exclude, [".git", "*.tmp"]);
        assert_eq!(web.include, ["keep/"]);
        assert_eq!(
            web.option,
            ["--delete", "--bwlimit=1000", "--recursive", "--times"]
        );
        assert_eq!(c.groups["db"].rsync, PathBuf::from(DEFAULT_RSYNC));
        assert_eq!(c.agent.ignored.len(), 1);
        assert_eq!(
            c.agent.ignored[0].to_string(),
            "/etc/deploy/deploy_agent.ini:12: [rsync::group::web] queue_path: ignored (the original documented it but never used it; transfer state lives in [server] state_dir)"
        );
    }

    #[test]
    fn jobs_path_resolution() {
        let c = parse("[jobs]\npath = exec.ini\n").unwrap();
        assert_eq!(c.jobs_path, Some(PathBuf::from("/etc/deploy/exec.ini")));
        assert!(c.jobs.is_empty(), "parse does not read the jobs file");
        let c = parse("[jobs]\npath = /opt/jobs.ini\n").unwrap();
        assert_eq!(c.jobs_path, Some(PathBuf::from("/opt/jobs.ini")));
    }

    #[test]
    fn load_reads_jobs_relative_to_ini() {
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("agent.ini");
        std::fs::write(&ini, "[server]\nport = 1\n\n[jobs]\npath = jobs/exec.ini\n").unwrap();
        let e = AgentConfig::load(&ini).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{}:5: [jobs] path: cannot read {}/jobs/exec.ini: ",
                ini.display(),
                dir.path().display()
            )),
            "{e}"
        );
        std::fs::create_dir(dir.path().join("jobs")).unwrap();
        std::fs::write(dir.path().join("jobs/exec.ini"), "[x]\nj = /bin/true %s\n").unwrap();
        let c = AgentConfig::load(&ini).unwrap();
        assert_eq!(c.jobs.len(), 1);
        std::fs::write(dir.path().join("jobs/exec.ini"), "[x]\n\nj = 'oops\n").unwrap();
        let e = AgentConfig::load(&ini).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}/jobs/exec.ini:3: [x] j: unbalanced ' quote in template \"'oops\"",
                dir.path().display()
            )
        );
    }

    #[test]
    fn errors() {
        for (text, want) in [
            (
                "[server]\nport = 1\n[sever]\nport = 2\n",
                "/etc/deploy/deploy_agent.ini:3: unknown section [sever] (expected server, allow::hosts, allow::paths, rsync::group::<name>, jobs, deploy, scenarios or nats)",
            ),
            ("[client]\n", "/etc/deploy/deploy_agent.ini:1: unknown section [client] (expected server, allow::hosts, allow::paths, rsync::group::<name>, jobs, deploy, scenarios or nats)"),
            (
                "port = 3440\n[server]\n",
                "/etc/deploy/deploy_agent.ini:1: key \"port\" before the first [section] header",
            ),
            (
                "[allow::hosts]\nhost = 1.2.3.4\n",
                "/etc/deploy/deploy_agent.ini:2: [allow::hosts] host: is a list: write `host[] = …`",
            ),
            (
                "[allow::hosts]\nhost[] = 1.2.3.4/40\n",
                "/etc/deploy/deploy_agent.ini:2: [allow::hosts] host[]: invalid host \"1.2.3.4/40\" (expected an IP address, a network like 10.0.0.0/8, or a host name)",
            ),
            (
                "[allow::hosts]\nhosts[] = 1.2.3.4\n",
                "/etc/deploy/deploy_agent.ini:2: [allow::hosts] hosts[]: unknown key",
            ),
            (
                "[allow::paths]\npath[] = srv\n",
                "/etc/deploy/deploy_agent.ini:2: [allow::paths] path[]: allowed path \"srv\" must be absolute",
            ),
            (
                "[rsync::group::web]\nsrc = /x\n",
                "/etc/deploy/deploy_agent.ini:1: [rsync::group::web]: missing key dest",
            ),
            (
                "[rsync::group::web]\ndest = a::B\nsrc = /x\nexclude = .git\n",
                "/etc/deploy/deploy_agent.ini:4: [rsync::group::web] exclude: is a list: write `exclude[] = …`",
            ),
            (
                "[rsync::group::web]\ndest = a::B\nsrc = /x\nexlude[] = .git\n",
                "/etc/deploy/deploy_agent.ini:4: [rsync::group::web] exlude[]: unknown key",
            ),
            (
                "[rsync::group::]\n",
                "/etc/deploy/deploy_agent.ini:1: [rsync::group::]: invalid group name \"\" (must be non-empty, without ',', '|' or spaces)",
            ),
            (
                "\n[rsync::group::a,b]\n",
                "/etc/deploy/deploy_agent.ini:2: [rsync::group::a,b]: invalid group name \"a,b\" (must be non-empty, without ',', '|' or spaces)",
            ),
            (
                "[jobs]\nfile = x\n",
                "/etc/deploy/deploy_agent.ini:2: [jobs] file: unknown key",
            ),
        ] {
            assert_eq!(err(text), want, "{text:?}");
        }
    }
}
