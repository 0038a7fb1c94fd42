//! Scenario folders on disk: Octopoda's helloWorld example, path escapes (`..`, absolute,
//! symbolic links), aliases, unknown keys, and `scenario create`'s template.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use deploy_scenario::{create_template, load, plan, Error, Target};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/helloWorld")
}

/// A copy of the helloWorld fixture at `<tmp>/scen`, to be changed by a test.
fn copy_fixture(tmp: &Path) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &dest);
            } else {
                fs::copy(e.path(), dest).unwrap();
            }
        }
    }
    let dir = tmp.join("scen");
    copy(&fixture(), &dir);
    dir
}

/// Replaces the first occurrence of `from` in the folder's deployment.yaml.
fn edit(dir: &Path, from: &str, to: &str) {
    let file = dir.join("deployment.yaml");
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains(from), "{from:?} not in deployment.yaml");
    fs::write(file, text.replacen(from, to, 1)).unwrap();
}

fn load_err(dir: &Path) -> String {
    load(dir).unwrap_err().to_string()
}

/// `(order, ["app/node", …])` of each stage of the plan's phase `i`.
fn stages(dir: &Path, target: Option<&str>, phase: usize) -> Vec<(i64, Vec<String>)> {
    let scen = load(dir).unwrap();
    let plan = plan(&scen, &Target::parse(target), None).unwrap();
    plan.phases[phase]
        .stages
        .iter()
        .map(|s| {
            let steps = s.steps.iter().map(|x| format!("{}/{}", x.app, x.node));
            (s.order, steps.collect())
        })
        .collect()
}

fn st(order: i64, steps: &[&str]) -> (i64, Vec<String>) {
    (order, steps.iter().map(|s| s.to_string()).collect())
}

#[test]
fn hello_world_loads_as_octopoda_reads_it() {
    let scen = load(&fixture()).unwrap();
    assert_eq!(scen.name, "helloWorld");
    assert_eq!(scen.description, "a scenario to print hello world");
    assert!(scen.warnings.is_empty(), "{:?}", scen.warnings);
    let apps: Vec<(&str, Vec<&str>)> = scen
        .apps
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.nodes.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        apps,
        [
            ("helloPrinter", vec!["pi-24"]),
            ("worldPrinter", vec!["pi-240"]),
            ("helloWorldPrinter", vec!["pi-24", "pi-240"]),
        ]
    );
    let root = fs::canonicalize(fixture()).unwrap();
    let hello = &scen.apps[0];
    assert_eq!(hello.source, root.join("hello/src/"));
    let date = hello.scripts.iter().find(|s| s.target == "date").unwrap();
    assert_eq!(date.path, root.join("hello/scripts/date.sh"));
    assert!(date.path.is_file());
}

#[test]
fn hello_world_orders_become_stages() {
    let dir = fixture();
    let hw = ["helloWorldPrinter/pi-24", "helloWorldPrinter/pi-240"];
    let prepare = vec![
        st(1, &["helloPrinter/pi-24", "worldPrinter/pi-240"]),
        st(2, &hw),
    ];
    let start = vec![
        st(1, &["helloPrinter/pi-24"]),
        st(2, &["worldPrinter/pi-240"]),
        st(3, &hw),
    ];
    assert_eq!(stages(&dir, Some("prepare"), 0), prepare);
    assert_eq!(stages(&dir, None, 0), prepare);
    assert_eq!(stages(&dir, None, 1), start);
    assert_eq!(stages(&dir, Some("stop"), 0), start);
    assert_eq!(
        stages(&dir, Some("date"), 0),
        [st(1, &["helloPrinter/pi-24"]), st(3, &hw)]
    );
}

#[test]
fn sourcepath_outside_the_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let file = fs::canonicalize(&dir).unwrap().join("deployment.yaml");
    for bad in ["../../etc", "/etc", "hello/../../"] {
        edit(
            &dir,
            "sourcepath: \"hello/src/\"",
            &format!("sourcepath: \"{bad}\""),
        );
        assert_eq!(
            load_err(&dir),
            format!(
                "{}: application \"helloPrinter\": key `applications[0].sourcepath`: {bad:?} is outside the scenario folder (through `..`, an absolute path or a symbolic link)",
                file.display()
            )
        );
        edit(
            &dir,
            &format!("sourcepath: \"{bad}\""),
            "sourcepath: \"hello/src/\"",
        );
    }
    load(&dir).unwrap();
}

#[test]
fn a_symlink_out_of_the_folder_is_refused_one_inside_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let src = dir.join("hello/src");
    fs::remove_dir_all(&src).unwrap();
    symlink(&outside, &src).unwrap();
    assert!(
        matches!(load(&dir), Err(Error::Escape { key, .. }) if key == "applications[0].sourcepath")
    );
    // Relative link out of the folder.
    fs::remove_file(&src).unwrap();
    symlink("../../outside", &src).unwrap();
    assert!(matches!(load(&dir), Err(Error::Escape { .. })));
    // deployment.yaml and alias.yaml themselves.
    for name in ["alias.yaml", "deployment.yaml"] {
        let path = dir.join(name);
        fs::rename(&path, outside.join(name)).ok();
        symlink(outside.join(name), &path).unwrap();
        assert_eq!(
            load_err(&dir),
            format!(
                "{}: read: a symbolic link out of the scenario folder",
                fs::canonicalize(&dir).unwrap().join(name).display()
            )
        );
        fs::remove_file(&path).unwrap();
        fs::rename(outside.join(name), &path).ok();
    }
    // A link that stays in the folder is the user's business.
    fs::remove_file(&src).unwrap();
    symlink("../world/src", &src).unwrap();
    let scen = load(&dir).unwrap();
    assert_eq!(
        scen.apps[0].source,
        fs::canonicalize(&dir).unwrap().join("hello/src/")
    );
}

#[test]
fn a_script_outside_its_scriptpath_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let file = fs::canonicalize(&dir).unwrap().join("deployment.yaml");
    // Inside the folder, but outside the app's scriptpath.
    edit(
        &dir,
        "file: \"run.sh\"",
        "file: \"../../world/scripts/run.sh\"",
    );
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: application \"helloPrinter\": key `applications[0].script[1].file`: \"../../world/scripts/run.sh\" is outside scriptpath \"hello/scripts/\" (through `..`, an absolute path or a symbolic link)",
            file.display()
        )
    );
    edit(
        &dir,
        "file: \"../../world/scripts/run.sh\"",
        "file: \"run.sh\"",
    );
    // The same through a symbolic link.
    let run = dir.join("hello/scripts/run.sh");
    fs::remove_file(&run).unwrap();
    symlink("../../world/scripts/run.sh", &run).unwrap();
    assert!(
        matches!(load(&dir), Err(Error::Escape { key, .. }) if key == "applications[0].script[1].file")
    );
    fs::remove_file(&run).unwrap();
    fs::copy(fixture().join("hello/scripts/run.sh"), &run).unwrap();
    load(&dir).unwrap();
    // scriptpath itself out of the folder.
    edit(
        &dir,
        "scriptpath: \"world/scripts/\"",
        "scriptpath: \"../\"",
    );
    assert!(
        matches!(load(&dir), Err(Error::Escape { key, .. }) if key == "applications[1].scriptpath")
    );
}

#[test]
fn missing_and_wrong_kind_paths_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let file = fs::canonicalize(&dir).unwrap().join("deployment.yaml");
    let at = |app: &str, key: &str, path: &str, why: &str| {
        format!(
            "{}: application \"{app}\": key `{key}`: \"{path}\" {why}",
            file.display()
        )
    };
    fs::remove_file(dir.join("world/scripts/stop.sh")).unwrap();
    assert_eq!(
        load_err(&dir),
        at(
            "worldPrinter",
            "applications[1].script[2].file",
            "stop.sh",
            "does not exist"
        )
    );
    fs::create_dir(dir.join("world/scripts/stop.sh")).unwrap();
    assert_eq!(
        load_err(&dir),
        at(
            "worldPrinter",
            "applications[1].script[2].file",
            "stop.sh",
            "is not a regular file"
        )
    );
    fs::remove_dir(dir.join("world/scripts/stop.sh")).unwrap();
    fs::write(dir.join("world/scripts/stop.sh"), "").unwrap();
    edit(
        &dir,
        "sourcepath: \"world/src/\"",
        "sourcepath: \"world/src/README\"",
    );
    assert_eq!(
        load_err(&dir),
        at(
            "worldPrinter",
            "applications[1].sourcepath",
            "world/src/README",
            "is not a directory"
        )
    );
    let src = dir.join("world/src");
    fs::remove_dir_all(&src).unwrap();
    symlink("src", &src).unwrap();
    edit(
        &dir,
        "sourcepath: \"world/src/README\"",
        "sourcepath: \"world/src/\"",
    );
    assert_eq!(
        load_err(&dir),
        at(
            "worldPrinter",
            "applications[1].sourcepath",
            "world/src/",
            "goes through too many symbolic links"
        )
    );
    fs::remove_file(dir.join("deployment.yaml")).unwrap();
    assert!(load_err(&dir).starts_with(&format!("{}: read: ", file.display())));
}

#[test]
fn validation_errors_name_file_app_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let file = fs::canonicalize(&dir).unwrap().join("deployment.yaml");
    edit(&dir, "target: purge", "target: clean");
    assert_eq!(
        load_err(&dir),
        format!("{}: application \"helloPrinter\": key `applications[0].script`: target \"purge\" is not implemented by a script (every application needs prepare, start, stop and purge)", file.display())
    );
}

#[test]
fn aliases_and_unknown_keys_through_the_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    fs::write(
        dir.join("alias.yaml"),
        "pis: ['pi-24', '@more']\nmore: ['pi-240', 'ssh://u@127.0.0.1:2222']\n",
    )
    .unwrap();
    edit(
        &dir,
        "- 'pi-240'\n  script",
        "- '@pis'\n    - '@proxygroup'\n  scripts: []\n  script",
    );
    let scen = load(&dir).unwrap();
    assert_eq!(
        scen.apps[1].nodes,
        ["pi-24", "pi-240", "ssh://u@127.0.0.1:2222", "@proxygroup"]
    );
    let warned: Vec<String> = scen.warnings.iter().map(|w| w.key.clone()).collect();
    assert_eq!(warned, ["applications[1].scripts"]);
    edit(&dir, "    - '@proxygroup'\n", "");
    fs::write(dir.join("alias.yaml"), "pis: []\nmore: ['@pis']\n").unwrap();
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: application \"worldPrinter\": key `applications[1].nodes`: no node left once alias.yaml is applied",
            fs::canonicalize(&dir).unwrap().join("deployment.yaml").display()
        )
    );
    fs::write(dir.join("alias.yaml"), "pis: ['@more']\nmore: ['@pis']\n").unwrap();
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: alias loop: more -> pis -> more",
            fs::canonicalize(&dir).unwrap().join("alias.yaml").display()
        )
    );
}

#[test]
fn scenario_create_writes_a_folder_that_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = create_template(tmp.path(), "shop", &["web", "db"]).unwrap();
    let scen = load(&dir).unwrap();
    assert_eq!(scen.name, "shop");
    assert!(scen.warnings.is_empty());
    assert_eq!(scen.apps.len(), 2);
    assert_eq!(scen.apps[1].name, "db");
    assert_eq!(scen.apps[1].nodes, ["node1", "node3", "node4"]);
    let targets: Vec<&str> = scen.apps[0]
        .scripts
        .iter()
        .map(|s| s.target.as_str())
        .collect();
    assert_eq!(
        targets,
        ["prepare", "start", "stop", "purge", "user-defined"]
    );
    let steps = plan(&scen, &Target::parse(Some("user-defined")), None).unwrap();
    assert_eq!(steps.phases[0].stages[0].steps.len(), 6);
    assert!(dir.join("web/src/README").is_file());
    // Never over an existing folder, never a name that breaks `<app>@<scenario>`.
    assert!(matches!(
        create_template(tmp.path(), "shop", &[]),
        Err(Error::Io { .. })
    ));
    for bad in ["a@b", "../x", "", "q\"uote"] {
        assert!(matches!(
            create_template(tmp.path(), "ok", &[bad]),
            Err(Error::BadTemplateName { .. })
        ));
    }
}
