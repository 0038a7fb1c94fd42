//! A target → the ordered work: phases, stages and steps, with each step's environment
//! and working directory on its node.
//!
//! ```text
//! target   phases                     around the stages
//! default  prepare, then start
//! prepare  prepare                    push every sourcepath first; record a version
//! start | stop | <custom>  itself
//! purge    purge                      remove the NodeApp dirs and the scenario's record after
//! commit   commit (no scripts)        record a version; needs a message
//!
//! phase    stage(order = lowest) ─barrier─ stage(next order) ─barrier─ …
//! stage    every (app, node, script) of that order, across apps and nodes, in parallel
//! ```
//!
//! Octopoda ran one application at a time within an order; a stage here holds all of
//! them, so the same ordering guarantee (nothing of a higher order starts before every
//! lower one ended) is met with more parallelism. An application without a script for
//! the target is skipped (Octopoda's behaviour for custom targets); a target that no
//! application defines is refused, to catch typos. Nodes may still be `@group`s; the
//! proxy expands them when it runs the stage.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::folder::Scenario;
use crate::Error;

/// What `scenario apply DIR [TARGET]` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// None or `default`: prepare, then start.
    Default,
    /// Push the sources, record a version, run the prepare scripts.
    Prepare,
    /// The start scripts.
    Start,
    /// The stop scripts.
    Stop,
    /// The purge scripts, then remove the NodeApps and the scenario's record.
    Purge,
    /// Record a version of every NodeApp (no scripts).
    Commit,
    /// Any other name (`date`).
    Custom(String),
}

impl Target {
    /// `None`, `""` and `"default"` are [`Target::Default`].
    pub fn parse(name: Option<&str>) -> Target {
        match name.unwrap_or("") {
            "" | "default" => Target::Default,
            "prepare" => Target::Prepare,
            "start" => Target::Start,
            "stop" => Target::Stop,
            "purge" => Target::Purge,
            "commit" => Target::Commit,
            other => Target::Custom(other.to_owned()),
        }
    }

    /// The name a script entry uses.
    pub fn name(&self) -> &str {
        match self {
            Target::Default => "default",
            Target::Prepare => "prepare",
            Target::Start => "start",
            Target::Stop => "stop",
            Target::Purge => "purge",
            Target::Commit => "commit",
            Target::Custom(n) => n,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The work of one `apply`.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The scenario's name.
    pub scenario: String,
    /// The phases, in order.
    pub phases: Vec<Phase>,
}

/// The work of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// The target whose scripts run.
    pub target: String,
    /// Push every app's `sourcepath` to its nodes before the stages (`prepare`).
    pub push_sources: bool,
    /// Record a NodeApp version (`prepare`: only if something changed; `commit`: always).
    pub record_version: bool,
    /// Remove the NodeApp directories and the scenario's record after the stages (`purge`).
    pub remove_after: bool,
    /// The stages, by ascending order.
    pub stages: Vec<Stage>,
}

/// Everything of one order; a barrier follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    /// The `order` value.
    pub order: i64,
    /// Its steps, by application (file order) then node.
    pub steps: Vec<Step>,
}

/// One script on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The application.
    pub app: String,
    /// The node (a name, a `@group`, an `ssh://` host).
    pub node: String,
    /// The target.
    pub target: String,
    /// The script's name as written (`OCTOPODA_FILENAME`).
    pub file: String,
    /// The script on the caller's side.
    pub script: PathBuf,
}

/// Where a node keeps scenario data (the agent's configured root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLayout {
    /// The root.
    pub root: PathBuf,
    /// NodeApp directories live here: `<workspace>/<app>@<scenario>`.
    pub workspace: PathBuf,
    /// The file store (Octopoda's `FSTORE`).
    pub fstore: PathBuf,
    /// Logs.
    pub log: PathBuf,
}

impl NodeLayout {
    /// `root/workspace`, `root/fstore`, `root/log`.
    pub fn under(root: &Path) -> NodeLayout {
        NodeLayout {
            root: root.to_path_buf(),
            workspace: root.join("workspace"),
            fstore: root.join("fstore"),
            log: root.join("log"),
        }
    }
}

/// The NodeApp directory of `app` in `scenario`.
pub fn nodeapp_dir(layout: &NodeLayout, app: &str, scenario: &str) -> PathBuf {
    layout.workspace.join(format!("{app}@{scenario}"))
}

impl Step {
    /// The script's working directory: its NodeApp directory.
    pub fn cwd(&self, layout: &NodeLayout, scenario: &str) -> PathBuf {
        nodeapp_dir(layout, &self.app, scenario)
    }

    /// The script's environment: Octopoda's `OCTOPODA_*` variables (with
    /// `OCTOPODA_STOREDIR`, its older name for the file store) and the same values as
    /// `DEPLOY_*`, plus `DEPLOY_TARGET`. `output` is the file whose contents the caller
    /// gets back.
    pub fn env(&self, layout: &NodeLayout, scenario: &str, output: &Path) -> Vec<(String, String)> {
        let layout = deploy_napp::Layout {
            root: layout.root.clone(),
            workspace: layout.workspace.clone(),
            fstore: layout.fstore.clone(),
            log: layout.log.clone(),
        };
        deploy_napp::env::script_env(
            &layout,
            &deploy_napp::env::ScriptVars {
                node: &self.node,
                app: &self.app,
                scenario,
                target: &self.target,
                file: &self.file,
                output,
            },
        )
    }
}

/// The plan of `target` on `scenario`. `message` is `-m`'s, which `commit` requires.
pub fn plan(scenario: &Scenario, target: &Target, message: Option<&str>) -> Result<Plan, Error> {
    let phases = match target {
        Target::Default => vec![
            phase(scenario, &Target::Prepare)?,
            phase(scenario, &Target::Start)?,
        ],
        Target::Commit => {
            if message.is_none_or(str::is_empty) {
                return Err(Error::CommitNeedsMessage {
                    scenario: scenario.name.clone(),
                });
            }
            vec![Phase {
                target: "commit".into(),
                push_sources: false,
                record_version: true,
                remove_after: false,
                stages: Vec::new(),
            }]
        }
        other => vec![phase(scenario, other)?],
    };
    Ok(Plan {
        scenario: scenario.name.clone(),
        phases,
    })
}

fn phase(scenario: &Scenario, target: &Target) -> Result<Phase, Error> {
    let name = target.name();
    let mut by_order: BTreeMap<i64, Vec<Step>> = BTreeMap::new();
    for app in &scenario.apps {
        for script in app.scripts.iter().filter(|s| s.target == name) {
            let steps = by_order.entry(script.order).or_default();
            steps.extend(app.nodes.iter().map(|node| Step {
                app: app.name.clone(),
                node: node.clone(),
                target: name.to_owned(),
                file: script.file.clone(),
                script: script.path.clone(),
            }));
        }
    }
    if by_order.is_empty() {
        return Err(Error::UnknownTarget {
            scenario: scenario.name.clone(),
            target: name.to_owned(),
        });
    }
    Ok(Phase {
        target: name.to_owned(),
        push_sources: *target == Target::Prepare,
        record_version: *target == Target::Prepare,
        remove_after: *target == Target::Purge,
        stages: by_order
            .into_iter()
            .map(|(order, steps)| Stage { order, steps })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::{App, Script};

    fn app(name: &str, nodes: &[&str], scripts: &[(&str, i64)]) -> App {
        App {
            name: name.into(),
            description: String::new(),
            source: PathBuf::new(),
            script_dir: PathBuf::from("/s"),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            scripts: scripts
                .iter()
                .map(|(t, o)| Script {
                    target: t.to_string(),
                    file: format!("{t}.sh"),
                    order: *o,
                    path: PathBuf::from(format!("/s/{name}/{t}.sh")),
                })
                .collect(),
        }
    }

    fn scen() -> Scenario {
        Scenario {
            root: PathBuf::from("/s"),
            name: "sc".into(),
            description: String::new(),
            apps: vec![
                app(
                    "a",
                    &["n1", "n2"],
                    &[("prepare", 2), ("start", 0), ("date", 1)],
                ),
                app("b", &["n2"], &[("prepare", -1), ("start", 0)]),
                app("c", &["n3"], &[("prepare", 2), ("start", 5)]),
            ],
            warnings: Vec::new(),
        }
    }

    fn shape(p: &Phase) -> Vec<(i64, Vec<String>)> {
        p.stages
            .iter()
            .map(|s| {
                let steps = s
                    .steps
                    .iter()
                    .map(|x| format!("{}/{}", x.app, x.node))
                    .collect();
                (s.order, steps)
            })
            .collect()
    }

    #[test]
    fn stages_by_ascending_order_across_apps_and_nodes() {
        let p = plan(&scen(), &Target::Prepare, None).unwrap();
        assert_eq!(p.phases.len(), 1);
        let ph = &p.phases[0];
        assert!(ph.push_sources && ph.record_version && !ph.remove_after);
        assert_eq!(
            shape(ph),
            [
                (-1, vec!["b/n2".to_string()]),
                (2, vec!["a/n1".into(), "a/n2".into(), "c/n3".into()]),
            ]
        );
    }

    #[test]
    fn default_is_prepare_then_start() {
        for t in [None, Some(""), Some("default")] {
            let p = plan(&scen(), &Target::parse(t), None).unwrap();
            let names: Vec<&str> = p.phases.iter().map(|p| p.target.as_str()).collect();
            assert_eq!(names, ["prepare", "start"]);
            assert_eq!(
                shape(&p.phases[1]),
                [
                    (0, vec!["a/n1".to_string(), "a/n2".into(), "b/n2".into()]),
                    (5, vec!["c/n3".into()])
                ]
            );
        }
    }

    #[test]
    fn custom_targets_skip_apps_without_them_and_unknown_ones_are_refused() {
        let p = plan(&scen(), &Target::parse(Some("date")), None).unwrap();
        assert_eq!(
            shape(&p.phases[0]),
            [(1, vec!["a/n1".to_string(), "a/n2".into()])]
        );
        let e = plan(&scen(), &Target::parse(Some("dat")), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scenario \"sc\": no application defines target \"dat\""
        );
    }

    #[test]
    fn commit_needs_a_message_and_runs_no_scripts() {
        let e = plan(&scen(), &Target::Commit, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "scenario \"sc\": target \"commit\" needs a message (-m)"
        );
        let p = plan(&scen(), &Target::Commit, Some("v2")).unwrap();
        assert!(p.phases[0].record_version && p.phases[0].stages.is_empty());
    }

    #[test]
    fn purge_removes_after() {
        let mut s = scen();
        for a in &mut s.apps {
            a.scripts[0].target = "purge".into();
        }
        let p = plan(&s, &Target::Purge, None).unwrap();
        assert!(p.phases[0].remove_after && !p.phases[0].push_sources);
    }

    #[test]
    fn env_and_cwd() {
        let p = plan(&scen(), &Target::Start, None).unwrap();
        let step = &p.phases[0].stages[0].steps[1];
        let layout = NodeLayout::under(Path::new("/var/deploy"));
        assert_eq!(
            step.cwd(&layout, "sc"),
            Path::new("/var/deploy/workspace/a@sc")
        );
        let env: BTreeMap<String, String> = step
            .env(&layout, "sc", Path::new("/tmp/out.1"))
            .into_iter()
            .collect();
        for prefix in ["OCTOPODA_", "DEPLOY_"] {
            let get = |k: &str| env[&format!("{prefix}{k}")].as_str();
            assert_eq!(get("NODENAME"), "n2");
            assert_eq!(get("CURRENTDIR"), "/var/deploy/workspace/a@sc");
            assert_eq!(get("FILENAME"), "start.sh");
            assert_eq!(get("OUTPUT"), "/tmp/out.1");
            assert_eq!(get("APP"), "a");
            assert_eq!(get("SCENARIO"), "sc");
            assert_eq!(get("ROOT"), "/var/deploy");
            assert_eq!(get("WORKSPACE"), "/var/deploy/workspace");
            assert_eq!(get("FSTORE"), "/var/deploy/fstore");
            assert_eq!(get("STOREDIR"), "/var/deploy/fstore");
            assert_eq!(get("LOG"), "/var/deploy/log");
        }
        assert_eq!(env["DEPLOY_TARGET"], "start");
        assert_eq!(env.len(), 23);
    }
}
