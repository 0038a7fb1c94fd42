//! Build script: records the git commit that `--version` prints (see
//! ../build/git_commit.rs, shared by the three binaries).

include!("../build/git_commit.rs");
