//! Octopoda scenarios for deploy: a scenario folder brought over unchanged, read as
//! Octopoda reads it, checked by Octopoda's rules (and a few of ours), and turned into
//! the ordered plan that the client and the proxy will run on agents and `ssh://` hosts.
//!
//! # Layout
//!
//! | module | owns |
//! |---|---|
//! | [`model`] | `deployment.yaml` and `alias.yaml` as data, unknown keys, Octopoda's validation rules, alias expansion |
//! | [`folder`] | loading a folder with every path confined to it (`openat2(RESOLVE_BENEATH)`), `scenario create`'s template |
//! | [`plan`] | a target → phases → stages (one per `order`) of (app, node, script) steps, with each step's env and cwd |
//! | [`apply`] | running a plan as `napp` orders through a `Transport` (Fanout per stage, barrier between stages); scenario reset |
//! | [`store`] | scenario versions and the [`ScenarioStore`] trait; [`FolderStore`], a JSON-lines file beside the folder |
//!
//! # Design
//!
//! * A scenario folder is code and data sent by the caller, so every path it names is
//!   opened beneath the folder's directory descriptor (and a script beneath its app's
//!   `scriptpath`): the kernel, not a string check, refuses `..`, absolute paths and
//!   symbolic links that leave it.
//! * Octopoda ignores unknown keys silently; here they are returned as
//!   [`model::Warning`]s so a typo (`scripts:` for `script:`) is seen.
//! * Octopoda runs one app at a time per `order`; the [`plan::Plan`] groups every
//!   (app, node, script) of one `order` into a stage that runs in parallel, with a
//!   barrier before the next stage. Only [`apply`] touches the network, through the
//!   caller's `Transport`.
//! * `@name` node entries are resolved through `alias.yaml`; a name that is not an
//!   alias stays `@name`, a group for the proxy to expand (Octopoda's workgroups).

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod apply;
pub mod folder;
pub mod model;
pub mod plan;
pub mod store;

use std::path::{Path, PathBuf};

pub use apply::{apply, ApplyError, ApplyEvent, Options, Proxy, Report, StepResult};
pub use folder::{create_template, App, Folder, Scenario, Script};
pub use model::{Aliases, Deployment, Warning};
pub use plan::{plan, NodeLayout, Phase, Plan, Stage, Step, Target};
pub use store::{FolderStore, ScenarioStore, ScenarioVersion, StoreError};

/// The file Octopoda reads a scenario from, at the top of the folder.
pub const DEPLOYMENT_FILE: &str = "deployment.yaml";
/// The optional alias file beside it.
pub const ALIAS_FILE: &str = "alias.yaml";

/// Opens the folder at `dir` and loads its scenario ([`Folder::load`]).
pub fn load(dir: &Path) -> Result<Scenario, Error> {
    Folder::open(dir)?.load()
}

/// Everything that can be wrong with a scenario folder or a plan. Each variant names the
/// file, and where it applies the application and the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path at fault.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The YAML could not be parsed (the message carries line and column).
    #[error("{file}: {message}")]
    Yaml {
        /// The file.
        file: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A required key is missing or empty.
    #[error("{file}: {}key `{key}` is missing or empty", app_prefix(.app))]
    Missing {
        /// The file.
        file: PathBuf,
        /// The application, when the key is one of an application's.
        app: Option<String>,
        /// The key, as a path (`applications[1].nodes`).
        key: String,
    },
    /// A name that would break the NodeApp directory `<app>@<scenario>`.
    #[error("{file}: {}key `{key}`: {value:?} {reason}", app_prefix(.app))]
    BadName {
        /// The file.
        file: PathBuf,
        /// The application, when the key is one of an application's.
        app: Option<String>,
        /// The key.
        key: String,
        /// The value refused.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// Two applications have the same name.
    #[error("{file}: application {app:?} is defined twice (key `{key}`)")]
    DuplicateApp {
        /// The file.
        file: PathBuf,
        /// The name.
        app: String,
        /// The second definition's key.
        key: String,
    },
    /// A target appears twice in one application (Octopoda's rule).
    #[error("{file}: application {app:?}: key `{key}`: target {target:?} is already defined")]
    DuplicateTarget {
        /// The file.
        file: PathBuf,
        /// The application.
        app: String,
        /// The second definition's key.
        key: String,
        /// The target.
        target: String,
    },
    /// An application lacks one of `prepare`, `start`, `stop`, `purge` (Octopoda's rule).
    #[error("{file}: application {app:?}: key `{key}`: target {target:?} is not implemented by a script (every application needs prepare, start, stop and purge)")]
    MissingTarget {
        /// The file.
        file: PathBuf,
        /// The application.
        app: String,
        /// The application's `script` key.
        key: String,
        /// The missing target.
        target: &'static str,
    },
    /// A path leaves the folder (or a script leaves its `scriptpath`).
    #[error("{file}: {}key `{key}`: {path:?} is outside {within} (through `..`, an absolute path or a symbolic link)", app_prefix(.app))]
    Escape {
        /// The file.
        file: PathBuf,
        /// The application.
        app: Option<String>,
        /// The key.
        key: String,
        /// The path as written.
        path: String,
        /// What it must stay in (`the scenario folder`, `scriptpath "hello/scripts/"`).
        within: String,
    },
    /// A path does not name what it must (a directory for `sourcepath`/`scriptpath`,
    /// a regular file for a script).
    #[error("{file}: {}key `{key}`: {path:?} {reason}", app_prefix(.app))]
    BadPath {
        /// The file.
        file: PathBuf,
        /// The application.
        app: Option<String>,
        /// The key.
        key: String,
        /// The path as written.
        path: String,
        /// What is wrong (`does not exist`, `is not a directory`…).
        reason: String,
    },
    /// An application's `nodes` come to nothing once `alias.yaml` is applied.
    #[error("{file}: application {app:?}: key `{key}`: no node left once alias.yaml is applied")]
    NoNodes {
        /// The deployment file.
        file: PathBuf,
        /// The application.
        app: String,
        /// The application's `nodes` key.
        key: String,
    },
    /// `alias.yaml` refers to itself in a loop.
    #[error("{file}: alias loop: {chain}")]
    AliasLoop {
        /// The alias file.
        file: PathBuf,
        /// The aliases in the loop, `a -> b -> a`.
        chain: String,
    },
    /// A target that no application defines.
    #[error("scenario {scenario:?}: no application defines target {target:?}")]
    UnknownTarget {
        /// The scenario.
        scenario: String,
        /// The target asked for.
        target: String,
    },
    /// `commit` was asked for without a message.
    #[error("scenario {scenario:?}: target \"commit\" needs a message (-m)")]
    CommitNeedsMessage {
        /// The scenario.
        scenario: String,
    },
    /// `scenario create` was given a name it cannot use.
    #[error("scenario create: {what} {name:?} {reason}")]
    BadTemplateName {
        /// `scenario` or `application`.
        what: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

fn app_prefix(app: &Option<String>) -> String {
    match app {
        Some(a) => format!("application {a:?}: "),
        None => String::new(),
    }
}
