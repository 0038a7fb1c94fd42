//! Octopoda's helloWorld scenario folder (the fixture of the `deploy-scenario` crate),
//! copied for a test with its two nodes renamed: the one setup of the client's scenario
//! tests on agents and on `ssh://` hosts.
//!
//! ```text
//! <dir>/helloWorld/deployment.yaml   nodes 'pi-24' → a, 'pi-240' → b
//!                 /helloworld/…      scripts and sources, as in the fixture
//! ```

use crate::sandbox::copy_tree;
use std::path::{Path, PathBuf};

/// The helloWorld fixture of the scenario crate.
pub const HELLO_WORLD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scenario/tests/fixtures/helloWorld"
);

/// A copy of the helloWorld folder at `<dir>/helloWorld` whose two nodes are `a` (for
/// `pi-24`) and `b` (for `pi-240`); its path.
pub fn hello_world(dir: &Path, a: &str, b: &str) -> PathBuf {
    let folder = dir.join("helloWorld");
    copy_tree(Path::new(HELLO_WORLD), &folder);
    let yaml_path = folder.join("deployment.yaml");
    let yaml = std::fs::read_to_string(&yaml_path).expect("read deployment.yaml");
    let yaml = yaml
        .replace("'pi-240'", &format!("'{b}'"))
        .replace("'pi-24'", &format!("'{a}'"));
    std::fs::write(&yaml_path, yaml).expect("write deployment.yaml");
    folder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_world_names_both_nodes_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let folder = hello_world(dir.path(), "10.0.0.1:1", "10.0.0.2:2");
        let yaml = std::fs::read_to_string(folder.join("deployment.yaml")).unwrap();
        assert!(
            yaml.contains("'10.0.0.1:1'") && yaml.contains("'10.0.0.2:2'"),
            "{yaml}"
        );
        assert!(!yaml.contains("pi-24"), "{yaml}");
        let fixture = std::fs::read_to_string(Path::new(HELLO_WORLD).join("deployment.yaml"))
            .unwrap()
            .replace("'pi-240'", "'10.0.0.2:2'")
            .replace("'pi-24'", "'10.0.0.1:1'");
        assert_eq!(yaml, fixture);
        std::fs::write(
            folder.join("deployment.yaml"),
            std::fs::read(Path::new(HELLO_WORLD).join("deployment.yaml")).unwrap(),
        )
        .unwrap();
        crate::assert_same_tree(Path::new(HELLO_WORLD), &folder);
    }
}
