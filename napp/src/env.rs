//! The environment of a scenario script on its node: Octopoda's `OCTOPODA_*` variables
//! (with `OCTOPODA_STOREDIR`, its older name for the file store), the same values as
//! `DEPLOY_*`, and `DEPLOY_TARGET`.
//!
//! The one builder of these variables: the caller's side (`deploy-scenario`'s
//! `plan::Step::env`, for SSH hosts and the values it sends) calls it with its idea of
//! the node's layout; an agent calls it with its own paths, which the caller cannot know.

use std::path::Path;

use crate::Layout;

/// What one script run is about.
#[derive(Debug, Clone, Copy)]
pub struct ScriptVars<'a> {
    /// The node's name (as the scenario names it).
    pub node: &'a str,
    /// The application.
    pub app: &'a str,
    /// The scenario.
    pub scenario: &'a str,
    /// The target (`prepare`, `start`, a custom one).
    pub target: &'a str,
    /// The script's file name in the scenario.
    pub file: &'a str,
    /// The file whose contents go back to the caller.
    pub output: &'a Path,
}

/// The variables, `OCTOPODA_*` first, then `DEPLOY_*`, then `DEPLOY_TARGET`.
pub fn script_env(layout: &Layout, v: &ScriptVars<'_>) -> Vec<(String, String)> {
    let cwd = layout.nodeapp_dir(v.app, v.scenario);
    let path = |p: &Path| p.display().to_string();
    let values = [
        ("NODENAME", v.node.to_owned()),
        ("CURRENTDIR", path(&cwd)),
        ("FILENAME", v.file.to_owned()),
        ("OUTPUT", path(v.output)),
        ("APP", v.app.to_owned()),
        ("SCENARIO", v.scenario.to_owned()),
        ("ROOT", path(&layout.root)),
        ("WORKSPACE", path(&layout.workspace)),
        ("FSTORE", path(&layout.fstore)),
        ("STOREDIR", path(&layout.fstore)),
        ("LOG", path(&layout.log)),
    ];
    let mut env = Vec::with_capacity(values.len() * 2 + 1);
    for prefix in ["OCTOPODA_", "DEPLOY_"] {
        for (k, val) in &values {
            env.push((format!("{prefix}{k}"), val.clone()));
        }
    }
    env.push(("DEPLOY_TARGET".into(), v.target.to_owned()));
    env
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn same_names_as_the_callers_plan() {
        let layout = Layout::new(Path::new("/var/deploy/workspace"), None, None);
        let env: BTreeMap<String, String> = script_env(
            &layout,
            &ScriptVars {
                node: "n2",
                app: "a",
                scenario: "sc",
                target: "start",
                file: "start.sh",
                output: Path::new("/tmp/out.1"),
            },
        )
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
