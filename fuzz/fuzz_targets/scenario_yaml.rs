//! Octopoda's scenario files: `Deployment::parse` + `unknown_keys` + `validate`,
//! `Aliases::parse` + `resolve`, and `plan` on the applications parsed.
//!
//! Invariants checked:
//! * nothing panics on any text;
//! * a `Deployment` that validates has a name and description, unique application
//!   names without `@` or `/`, and every application defines prepare, start, stop and
//!   purge once each;
//! * aliases come out fully expanded: no entry `@a` where `a` is an alias, no
//!   duplicates; `resolve` keeps each node once;
//! * a plan's stages are in strictly ascending order, each holds only steps of its
//!   target, and their count is the sum of the nodes of the applications defining it.

#![no_main]

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use deploy_scenario::folder::{App, Scenario, Script};
use deploy_scenario::model::REQUIRED_TARGETS;
use deploy_scenario::{plan, Aliases, Deployment, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("fuzz/deployment.yaml");
    if let Ok(aliases) = Aliases::parse(text, Path::new("fuzz/alias.yaml")) {
        check_aliases(&aliases);
    }
    let Ok(d) = Deployment::parse(text, file) else {
        return;
    };
    let _ = d.unknown_keys(file);
    if d.validate(file).is_err() {
        return;
    }
    assert!(!d.name.is_empty() && !d.description.is_empty());
    let mut names = HashSet::new();
    for app in &d.applications {
        assert!(names.insert(&app.name), "duplicate app {:?}", app.name);
        assert!(!app.name.contains(['@', '/']));
        let targets: Vec<&str> = app.script.iter().map(|s| s.target.as_str()).collect();
        let unique: HashSet<&str> = targets.iter().copied().collect();
        assert_eq!(unique.len(), targets.len());
        for t in REQUIRED_TARGETS {
            assert!(unique.contains(t), "{t} missing in {:?}", app.name);
        }
    }
    check_plans(&d);
});

fn check_aliases(aliases: &Aliases) {
    for k in aliases.names() {
        let Some(nodes) = aliases.get(k) else {
            continue;
        };
        let unique: HashSet<&String> = nodes.iter().collect();
        assert_eq!(unique.len(), nodes.len(), "duplicates in {k}");
        for n in nodes {
            if let Some(a) = n.strip_prefix('@') {
                assert!(aliases.get(a).is_none(), "{k} left @{a} unexpanded");
            }
        }
        let resolved = aliases.resolve(&[format!("@{k}"), format!("@{k}")]);
        assert_eq!(resolved, nodes, "resolve of @{k}");
    }
}

fn check_plans(d: &Deployment) {
    let apps: Vec<App> = d
        .applications
        .iter()
        .map(|a| App {
            name: a.name.clone(),
            description: a.description.clone(),
            source: PathBuf::new(),
            script_dir: PathBuf::new(),
            nodes: Aliases::default().resolve(&a.nodes),
            scripts: a
                .script
                .iter()
                .map(|s| Script {
                    target: s.target.clone(),
                    file: s.file.clone(),
                    order: s.order,
                    path: PathBuf::from(&s.file),
                })
                .collect(),
        })
        .collect();
    let scen = Scenario {
        root: PathBuf::new(),
        name: d.name.clone(),
        description: d.description.clone(),
        apps,
        warnings: Vec::new(),
    };
    let mut targets: Vec<String> = scen
        .apps
        .iter()
        .flat_map(|a| a.scripts.iter().map(|s| s.target.clone()))
        .collect();
    targets.sort();
    targets.dedup();
    for t in targets {
        let target = Target::parse(Some(&t));
        let Ok(p) = plan(&scen, &target, Some("m")) else {
            continue;
        };
        // commit runs no scripts, whatever entries name it.
        for phase in p.phases.iter().filter(|p| p.target != "commit") {
            for pair in phase.stages.windows(2) {
                assert!(pair[0].order < pair[1].order, "stages out of order");
            }
            let steps: usize = phase.stages.iter().map(|s| s.steps.len()).sum();
            assert!(phase
                .stages
                .iter()
                .all(|s| s.steps.iter().all(|x| x.target == phase.target)));
            let want: usize = scen
                .apps
                .iter()
                .filter(|a| a.scripts.iter().any(|s| s.target == phase.target))
                .map(|a| a.nodes.len())
                .sum();
            assert_eq!(steps, want, "steps of {}", phase.target);
        }
    }
}
