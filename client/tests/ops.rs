//! The client as an installed program: `--version`.

/// `--version` names the commit the binary was built from.
#[test]
fn version_names_the_commit() {
    deploy_testkit::bins::assert_version(std::path::Path::new(env!("CARGO_BIN_EXE_deploy-client")));
}
