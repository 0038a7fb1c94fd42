//! A scenario folder: loaded with every path confined to it, and `scenario create`'s
//! template writer.
//!
//! ```text
//! folder   open(dir, O_PATH|O_DIRECTORY)                  once; every lookup below is
//!                                                         relative to this descriptor
//! yaml     openat2(folder, "deployment.yaml", O_RDONLY, RESOLVE_BENEATH|NO_MAGICLINKS)
//! source   openat2(folder, sourcepath, O_PATH|O_DIRECTORY, same)    must be a directory
//! scripts  openat2(folder, scriptpath, O_PATH|O_DIRECTORY, same)    = sdir
//! script   openat2(sdir,   file,       O_PATH, same) + fstat        must be a regular file
//! ```
//!
//! Why `openat2(RESOLVE_BENEATH)` and not canonicalize-and-compare: the kernel resolves
//! each name once, beneath the descriptor, and refuses (`EXDEV`) any `..`, absolute path
//! or symbolic link that would leave it; a canonicalized string would be checked against
//! one resolution and used with another, and gets `..` through symlinked parents wrong
//! unless done with care everywhere. Unlike `extract/`, symbolic links are *allowed*
//! while they stay beneath (a user's folder may link `hello/src` to `shared/src`), since
//! the folder is the caller's own files, not an archive from the network. A script is
//! resolved beneath its application's `scriptpath`, so `file: ../../other/x.sh` is
//! refused even when `other/` is in the folder, as Octopoda's `scriptpath + file` means
//! it to be. What a `sourcepath` tree holds (links pointing out of it) is for the
//! uploader, which sends links as links.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{self, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, SFlag};

use crate::model::{check_name, Aliases, Application, Deployment, Warning};
use crate::{Error, ALIAS_FILE, DEPLOYMENT_FILE};

/// A scenario folder, opened once.
#[derive(Debug)]
pub struct Folder {
    fd: OwnedFd,
    path: PathBuf,
}

/// A loaded, checked scenario: names resolved, paths confined.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// The folder (absolute, as opened).
    pub root: PathBuf,
    /// `name`.
    pub name: String,
    /// `description`.
    pub description: String,
    /// The applications, in file order.
    pub apps: Vec<App>,
    /// Keys Octopoda would have ignored.
    pub warnings: Vec<Warning>,
}

/// One application with its paths checked and its nodes resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// `name`.
    pub name: String,
    /// `description`.
    pub description: String,
    /// The `sourcepath` directory (inside [`Scenario::root`]).
    pub source: PathBuf,
    /// The `scriptpath` directory (inside [`Scenario::root`]).
    pub script_dir: PathBuf,
    /// Nodes after `alias.yaml`: node names, `@group`s for the proxy, `ssh://` hosts.
    pub nodes: Vec<String>,
    /// The scripts, in file order.
    pub scripts: Vec<Script>,
}

/// One script of an application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The target it implements.
    pub target: String,
    /// The file as written (relative to `scriptpath`).
    pub file: String,
    /// Its order.
    pub order: i64,
    /// The file (inside [`App::script_dir`]).
    pub path: PathBuf,
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

/// `""` and `"./"` mean the directory itself.
fn rel(path: &str) -> &str {
    if path.trim_start_matches("./").is_empty() {
        "."
    } else {
        path
    }
}

impl Folder {
    /// Opens the folder at `dir`.
    pub fn open(dir: &Path) -> Result<Folder, Error> {
        let io = |source| Error::Io {
            op: "open the scenario folder",
            path: dir.to_path_buf(),
            source,
        };
        let path = fs::canonicalize(dir).map_err(io)?;
        let fd = fcntl::open(
            &path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            stat::Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        Ok(Folder { fd, path })
    }

    /// The folder's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads a top-level file of the folder; `None` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<String>, Error> {
        let path = self.path.join(name);
        let io = |source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        };
        let fd = match fcntl::openat2(&self.fd, name, how(OFlag::O_RDONLY)) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::EXDEV) => {
                return Err(io(std::io::Error::other(
                    "a symbolic link out of the scenario folder",
                )))
            }
            Err(e) => return Err(io(e.into())),
        };
        let mut text = String::new();
        File::from(fd).read_to_string(&mut text).map_err(io)?;
        Ok(Some(text))
    }

    /// Loads and checks the scenario: `deployment.yaml` (required), `alias.yaml`
    /// (optional), Octopoda's rules, and every path beneath the folder.
    pub fn load(&self) -> Result<Scenario, Error> {
        let file = self.path.join(DEPLOYMENT_FILE);
        let text = self.read(DEPLOYMENT_FILE)?.ok_or_else(|| Error::Io {
            op: "read",
            path: file.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        let deployment = Deployment::parse(&text, &file)?;
        let warnings = deployment.unknown_keys(&file);
        for w in &warnings {
            tracing::warn!(file = %w.file.display(), key = %w.key, "unknown key ignored");
        }
        deployment.validate(&file)?;
        let aliases = match self.read(ALIAS_FILE)? {
            Some(text) => Aliases::parse(&text, &self.path.join(ALIAS_FILE))?,
            None => Aliases::default(),
        };
        let apps = deployment
            .applications
            .iter()
            .enumerate()
            .map(|(i, app)| self.app(&file, i, app, &aliases))
            .collect::<Result<_, _>>()?;
        Ok(Scenario {
            root: self.path.clone(),
            name: deployment.name,
            description: deployment.description,
            apps,
            warnings,
        })
    }

    /// One application's paths checked, its nodes resolved.
    fn app(
        &self,
        file: &Path,
        index: usize,
        app: &Application,
        aliases: &Aliases,
    ) -> Result<App, Error> {
        let at = Place {
            file,
            app: &app.name,
        };
        let folder = "the scenario folder";
        let dir = OFlag::O_PATH | OFlag::O_DIRECTORY;
        let source_key = format!("applications[{index}].sourcepath");
        at.open(&self.fd, &app.sourcepath, dir, &source_key, folder)?;
        let script_key = format!("applications[{index}].scriptpath");
        let sdir = at.open(&self.fd, &app.scriptpath, dir, &script_key, folder)?;
        let within = format!("scriptpath {:?}", app.scriptpath);
        let mut scripts = Vec::with_capacity(app.script.len());
        for (j, s) in app.script.iter().enumerate() {
            let key = format!("applications[{index}].script[{j}].file");
            let fd = at.open(&sdir, &s.file, OFlag::O_PATH, &key, &within)?;
            let regular = stat::fstat(&fd)
                .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG)
                .unwrap_or(false);
            if !regular {
                return Err(at.bad(&key, &s.file, "is not a regular file".into()));
            }
            scripts.push(Script {
                target: s.target.clone(),
                file: s.file.clone(),
                order: s.order,
                path: self.path.join(rel(&app.scriptpath)).join(&s.file),
            });
        }
        let nodes = aliases.resolve(&app.nodes);
        if nodes.is_empty() {
            return Err(Error::NoNodes {
                file: file.to_path_buf(),
                app: app.name.clone(),
                key: format!("applications[{index}].nodes"),
            });
        }
        Ok(App {
            name: app.name.clone(),
            description: app.description.clone(),
            source: self.path.join(rel(&app.sourcepath)),
            script_dir: self.path.join(rel(&app.scriptpath)),
            nodes,
            scripts,
        })
    }
}

/// Where a path of `deployment.yaml` is written, for errors.
struct Place<'a> {
    file: &'a Path,
    app: &'a str,
}

impl Place<'_> {
    fn bad(&self, key: &str, path: &str, reason: String) -> Error {
        Error::BadPath {
            file: self.file.to_path_buf(),
            app: Some(self.app.to_owned()),
            key: key.to_owned(),
            path: path.to_owned(),
            reason,
        }
    }

    /// Opens `path` beneath `dir`, turning the kernel's refusals into errors that name
    /// the key.
    fn open(
        &self,
        dir: &OwnedFd,
        path: &str,
        flags: OFlag,
        key: &str,
        within: &str,
    ) -> Result<OwnedFd, Error> {
        fcntl::openat2(dir, rel(path), how(flags)).map_err(|e| match e {
            Errno::EXDEV => Error::Escape {
                file: self.file.to_path_buf(),
                app: Some(self.app.to_owned()),
                key: key.to_owned(),
                path: path.to_owned(),
                within: within.to_owned(),
            },
            Errno::ENOENT => self.bad(key, path, "does not exist".into()),
            Errno::ENOTDIR => self.bad(key, path, "is not a directory".into()),
            Errno::ELOOP => self.bad(key, path, "goes through too many symbolic links".into()),
            other => self.bad(key, path, other.desc().into()),
        })
    }
}

/// The scripts `scenario create` writes for each application, by target.
const TEMPLATE_TARGETS: [&str; 5] = ["prepare", "start", "stop", "purge", "user-defined"];

/// `scenario create NAME [APP…]` (Octopoda's `octl scenario create`): makes
/// `parent/NAME/` with a `deployment.yaml` naming every app with the five targets
/// (order 1), an `alias.yaml` with two example groups, and per app `src/README` and
/// `scripts/<target>.sh` that append their target's name to `$OCTOPODA_OUTPUT`.
/// Refuses an existing `NAME`. Returns the folder's path.
pub fn create_template(parent: &Path, scenario: &str, apps: &[&str]) -> Result<PathBuf, Error> {
    template_name("scenario", scenario)?;
    for app in apps {
        template_name("application", app)?;
    }
    let root = parent.join(scenario);
    mkdir(&root)?;
    let mut yaml = format!(
        "# made by deploy-client scenario create\nname: {scenario}\ndescription: \"scenario {scenario}\"\napplications:\n"
    );
    for app in apps {
        yaml.push_str(&format!(
            "- name: \"{app}\"\n  description: \"application {app}\"\n  scriptpath: \"{app}/scripts/\"\n  sourcepath: \"{app}/src/\"\n  nodes:\n    - 'node1'\n    - '@group1'\n  script:\n"
        ));
        for target in TEMPLATE_TARGETS {
            yaml.push_str(&format!(
                "    - target: {target}\n      file: \"{target}.sh\"\n      order: 1\n"
            ));
        }
        let dir = root.join(app);
        for d in [&dir, &dir.join("src"), &dir.join("scripts")] {
            mkdir(d)?;
        }
        write(
            &dir.join("src/README"),
            &format!("README of {app}\n"),
            0o644,
        )?;
        for target in TEMPLATE_TARGETS {
            let script = format!("#!/bin/sh\necho \"{target}\" >> \"$OCTOPODA_OUTPUT\"\n");
            write(&dir.join(format!("scripts/{target}.sh")), &script, 0o755)?;
        }
    }
    write(&root.join(DEPLOYMENT_FILE), &yaml, 0o644)?;
    let alias = "# @name in nodes: an alias below, else a group of the proxy\ngroup1:\n  - 'node3'\n  - 'node4'\ngroup2:\n  - '@group1'\n  - 'node1'\n  - 'node2'\n";
    write(&root.join(ALIAS_FILE), alias, 0o644)?;
    Ok(root)
}

fn template_name(what: &'static str, name: &str) -> Result<(), Error> {
    let bad = |reason| Error::BadTemplateName {
        what,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '"' || c == '\'' || c == '\\')
    {
        return Err(bad("has a quote, a backslash or a control character"));
    }
    check_name(Path::new(DEPLOYMENT_FILE), None, "name", name)
        .map_err(|_| bad("must not contain '@' or '/' and must not be . or .."))
}

fn mkdir(path: &Path) -> Result<(), Error> {
    fs::DirBuilder::new()
        .mode(0o755)
        .create(path)
        .map_err(|source| Error::Io {
            op: "create the directory",
            path: path.to_path_buf(),
            source,
        })
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), Error> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| Error::Io {
            op: "write",
            path: path.to_path_buf(),
            source,
        })
}
