//! The client's defaults file: what a user would otherwise type on every run.
//!
//! ```text
//! ; ~/.config/deploy/client.ini (then /etc/deploy/client.ini; DEPLOY_CLIENT_CONFIG=FILE
//! ; reads FILE alone, DEPLOY_CLIENT_CONFIG= none)
//! [client]
//! hosts = proxy1              ; --hosts when not given (node sets, @FILE: as on the line)
//! port = 3441                 ; --port
//! format = text               ; --format (json, text, jsonl, lines)
//! relay = on                  ; --relay for `rsync` orders (on, off)
//! [ssh]
//! identity[] = ~/.ssh/deploy  ; --identity (repeatable)
//! known_hosts = ~/.ssh/known_hosts.deploy   ; --known-hosts
//! config = ~/.ssh/config.deploy             ; -F
//! user = deploy               ; the remote user, under ssh_config's User (-u wins over both)
//! [nats]
//! servers = nats://127.0.0.1:4222,nats://10.0.0.2:4222   ; --nats-servers (for nats://name hosts)
//! credentials = ~/.config/deploy/nats.creds               ; --nats-credentials
//! agent_keys = ~/.config/deploy/nats-agents               ; --nats-agent-keys
//! ```
//!
//! Both files are read, the user's winning key by key; a flag on the command line wins
//! over both. `user` is the one key that is not a flag's default: ssh_config's `User`
//! for a host wins over it, where `-u` wins over ssh_config (as `ssh -l` does). The dialect is the daemons' (`deploy_common::config::ini`); unknown
//! sections and keys are errors naming the file and line, like a bad value. `~/` in a
//! path is the home directory.

use std::path::{Path, PathBuf};

use deploy_common::config::ini::{Entry, Ini};
use deploy_common::config::ConfigError;

use crate::cli::{Args, Format};

/// The system-wide defaults file.
pub const SYSTEM_FILE: &str = "/etc/deploy/client.ini";

/// The environment variable naming the only defaults file to read (empty: none).
pub const ENV: &str = "DEPLOY_CLIENT_CONFIG";

/// The defaults one file gives (`None`: the file does not say).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Defaults {
    hosts: Option<String>,
    port: Option<u16>,
    format: Option<Format>,
    relay: Option<bool>,
    identity: Vec<PathBuf>,
    known_hosts: Option<PathBuf>,
    ssh_config: Option<PathBuf>,
    user: Option<String>,
    nats_servers: Option<String>,
    nats_credentials: Option<PathBuf>,
    nats_agent_keys: Option<PathBuf>,
}

impl Defaults {
    /// Parses one file's text (`path` for messages, `home` for `~/`).
    pub fn parse(text: &str, path: &Path, home: Option<&Path>) -> Result<Defaults, ConfigError> {
        let ini = Ini::parse(text, path)?;
        let mut d = Defaults::default();
        let invalid = |section: &str, e: &Entry, reason: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: e.line,
            section: section.to_owned(),
            key: e.written_key(),
            reason,
        };
        let scalar = |section: &str, e: &Entry| -> Result<String, ConfigError> {
            if e.list {
                return Err(invalid(section, e, format!("write {} = VALUE", e.key)));
            }
            if e.value.is_empty() {
                return Err(invalid(section, e, "empty value".to_owned()));
            }
            Ok(e.value.clone())
        };
        let file = |value: String| -> PathBuf {
            match (value.strip_prefix("~/"), home) {
                (Some(rest), Some(home)) => home.join(rest),
                _ => PathBuf::from(value),
            }
        };
        for section in ini.sections() {
            let name = section.name();
            for e in section.entries() {
                match (name, e.key.as_str()) {
                    ("client", "hosts") => d.hosts = Some(scalar(name, e)?),
                    ("client", "port") => {
                        let v = scalar(name, e)?;
                        d.port = match v.parse::<u16>() {
                            Ok(port) if port > 0 => Some(port),
                            _ => {
                                return Err(invalid(name, e, format!("{v:?} is not a port")));
                            }
                        };
                    }
                    ("client", "format") => {
                        use clap::ValueEnum as _;
                        let v = scalar(name, e)?;
                        d.format = Some(Format::from_str(&v, false).map_err(|_| {
                            invalid(
                                name,
                                e,
                                format!("{v:?}: expected json, text, jsonl, lines or table"),
                            )
                        })?);
                    }
                    ("client", "relay") => {
                        let v = scalar(name, e)?;
                        d.relay =
                            Some(crate::cli::parse_on_off(&v).map_err(|r| invalid(name, e, r))?);
                    }
                    ("ssh", "identity") => {
                        if !e.list {
                            return Err(invalid(name, e, "write identity[] = FILE".to_owned()));
                        }
                        d.identity.push(file(e.value.clone()));
                    }
                    ("ssh", "known_hosts") => d.known_hosts = Some(file(scalar(name, e)?)),
                    ("ssh", "config") => d.ssh_config = Some(file(scalar(name, e)?)),
                    ("ssh", "user") => d.user = Some(scalar(name, e)?),
                    ("nats", "servers") => d.nats_servers = Some(scalar(name, e)?),
                    ("nats", "credentials") => d.nats_credentials = Some(file(scalar(name, e)?)),
                    ("nats", "agent_keys") => d.nats_agent_keys = Some(file(scalar(name, e)?)),
                    ("client" | "ssh" | "nats", _) => {
                        return Err(ConfigError::UnknownKey {
                            path: path.to_owned(),
                            line: e.line,
                            section: name.to_owned(),
                            key: e.written_key(),
                        })
                    }
                    _ => {
                        return Err(ConfigError::UnknownSection {
                            path: path.to_owned(),
                            line: section.line(),
                            section: name.to_owned(),
                            expected: "client, ssh or nats",
                        })
                    }
                }
            }
        }
        Ok(d)
    }

    /// `self`, with what it does not say taken from `other`.
    fn or(self, other: Defaults) -> Defaults {
        Defaults {
            hosts: self.hosts.or(other.hosts),
            port: self.port.or(other.port),
            format: self.format.or(other.format),
            relay: self.relay.or(other.relay),
            identity: if self.identity.is_empty() {
                other.identity
            } else {
                self.identity
            },
            known_hosts: self.known_hosts.or(other.known_hosts),
            ssh_config: self.ssh_config.or(other.ssh_config),
            user: self.user.or(other.user),
            nats_servers: self.nats_servers.or(other.nats_servers),
            nats_credentials: self.nats_credentials.or(other.nats_credentials),
            nats_agent_keys: self.nats_agent_keys.or(other.nats_agent_keys),
        }
    }

    /// Fills in what `args` does not say.
    pub fn apply(self, args: &mut Args) {
        if args.hosts.is_none() {
            args.hosts = self.hosts;
        }
        args.port = args.port.or(self.port);
        args.format = args.format.or(self.format);
        args.relay = args.relay.or(self.relay);
        if args.identity.is_empty() {
            args.identity = self.identity;
        }
        args.known_hosts = args.known_hosts.take().or(self.known_hosts);
        args.ssh_config = args.ssh_config.take().or(self.ssh_config);
        args.nats_servers = args.nats_servers.take().or(self.nats_servers);
        args.nats_credentials = args.nats_credentials.take().or(self.nats_credentials);
        args.nats_agent_keys = args.nats_agent_keys.take().or(self.nats_agent_keys);
        // Not `-u`: a default under ssh_config's `User`, where `-u` wins over it.
        args.default_user = self.user;
    }
}

/// Reads the defaults files (see the module documentation); `env` is the value of
/// [`ENV`], `home` the home directory.
pub fn load(env: Option<&str>, home: Option<&Path>) -> Result<Defaults, ConfigError> {
    let read = |path: &Path, optional: bool| -> Result<Defaults, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Defaults::parse(&text, path, home),
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(Defaults::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    };
    match env {
        Some("") => Ok(Defaults::default()),
        Some(file) => read(Path::new(file), false),
        None => {
            let user = match home {
                Some(home) => read(&home.join(".config/deploy/client.ini"), true)?,
                None => Defaults::default(),
            };
            Ok(user.or(read(Path::new(SYSTEM_FILE), true)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Defaults, ConfigError> {
        Defaults::parse(
            text,
            Path::new("/x/client.ini"),
            Some(Path::new("/home/me")),
        )
    }

    #[test]
    fn keys_and_paths() {
        let d = parse(
            "[client]\nhosts = web[1-2]\nport = 3440\nformat = text\n\
             [ssh]\nidentity[] = ~/.ssh/a\nidentity[] = /k/b\nknown_hosts = ~/kh\nconfig = /c\nuser = deploy\n",
        )
        .unwrap();
        assert_eq!(d.hosts.as_deref(), Some("web[1-2]"));
        assert_eq!((d.port, d.format), (Some(3440), Some(Format::Text)));
        assert_eq!(
            d.identity,
            [PathBuf::from("/home/me/.ssh/a"), PathBuf::from("/k/b")]
        );
        assert_eq!(d.known_hosts, Some(PathBuf::from("/home/me/kh")));
        assert_eq!(d.ssh_config, Some(PathBuf::from("/c")));
        assert_eq!(d.user.as_deref(), Some("deploy"));
    }

    #[test]
    fn nats_servers_and_credentials() {
        let d = parse(
            "[nats]\nservers = nats://a:4222,nats://b:4222\ncredentials = ~/n.creds\nagent_keys = ~/k\n",
        )
        .unwrap();
        assert_eq!(d.nats_agent_keys, Some(PathBuf::from("/home/me/k")));
        assert_eq!(
            d.nats_servers.as_deref(),
            Some("nats://a:4222,nats://b:4222")
        );
        assert_eq!(d.nats_credentials, Some(PathBuf::from("/home/me/n.creds")));
        assert!(parse("[nats]\nbogus = 1\n")
            .unwrap_err()
            .to_string()
            .starts_with("/x/client.ini:2:"));
    }

    #[test]
    fn relay_default() {
        assert_eq!(parse("[client]\nrelay = on\n").unwrap().relay, Some(true));
        assert_eq!(parse("[client]\nrelay = off\n").unwrap().relay, Some(false));
        assert_eq!(parse("").unwrap().relay, None);
        assert_eq!(
            parse("[client]\nrelay = maybe\n").unwrap_err().to_string(),
            "/x/client.ini:2: [client] relay: \"maybe\": expected on or off"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, message) in [
            (
                "[client]\nport = 0\n",
                "/x/client.ini:2: [client] port: \"0\" is not a port",
            ),
            (
                "[client]\nformat = yaml\n",
                "/x/client.ini:2: [client] format: \"yaml\": expected json, text, jsonl, lines or table",
            ),
            (
                "[client]\n\nhots = a\n",
                "/x/client.ini:3: [client] hots: unknown key",
            ),
            (
                "[server]\nport = 1\n",
                "/x/client.ini:1: unknown section [server] (expected client, ssh or nats)",
            ),
            (
                "[ssh]\nidentity = a\n",
                "/x/client.ini:2: [ssh] identity: write identity[] = FILE",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn the_shipped_file_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../etc/client.ini");
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            Defaults::parse(&text, Path::new(path), None).unwrap(),
            Defaults::default()
        );
        // Uncommented, every example is accepted.
        let all = text.replace("\n# ", "\n");
        let d = Defaults::parse(&all, Path::new(path), Some(Path::new("/h"))).unwrap();
        assert_eq!(d.port, Some(3441));
        assert_eq!(d.user.as_deref(), Some("deploy"));
    }

    #[test]
    fn the_users_file_wins_key_by_key() {
        let user = parse("[client]\nport = 1\n").unwrap();
        let system = parse("[client]\nport = 2\nformat = json\n").unwrap();
        let d = user.or(system);
        assert_eq!((d.port, d.format), (Some(1), Some(Format::Json)));
        assert_eq!(load(Some(""), None).unwrap(), Defaults::default());
        let e = load(Some("/no/such/client.ini"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/no/such/client.ini: cannot read"), "{e}");
    }
}
