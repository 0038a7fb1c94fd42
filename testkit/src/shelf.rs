//! [`Shelf`]: release artifacts and the stretcher manifests that deploy them, for the
//! release tests of the agent, the proxy and stretcher's event mode.
//!
//! ```text
//! <shelf>/src1/version = "1"   v1.tar   m1.yml  (release strategy, dest $DEST, keep 3)
//! <shelf>/src2/version = "2"   v2.tar   m2.yml
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

/// Two tar artifacts (a `version` file saying `1` or `2`) and their manifests, which
/// deploy them with the release strategy to `$DEST` (each agent renders it with its
/// own environment), keeping 3 releases.
pub struct Shelf {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Shelf {
    /// Makes the artifacts and manifests in a new temporary directory.
    pub fn new() -> Shelf {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().to_owned();
        for v in ["1", "2"] {
            let src = path.join(format!("src{v}"));
            std::fs::create_dir_all(&src).expect("mkdir");
            std::fs::write(src.join("version"), v).expect("write");
            let tar = path.join(format!("v{v}.tar"));
            let made = Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg(".")
                .status()
                .expect("tar");
            assert!(made.success(), "tar -cf {}", tar.display());
            let out = Command::new("sha256sum")
                .arg(&tar)
                .output()
                .expect("sha256sum");
            let sum = String::from_utf8_lossy(&out.stdout);
            let sum = sum.split_whitespace().next().expect("a digest");
            std::fs::write(
                path.join(format!("m{v}.yml")),
                format!(
                    "src: file://{}\nchecksum: {sum}\ndest: {{{{ must_env \"DEST\" }}}}\nsync_strategy: release\nkeep: 3\n",
                    tar.display()
                ),
            )
            .expect("write");
        }
        Shelf { _dir: dir, path }
    }

    /// The directory (for an agent's `[deploy] manifest[] = file://<dir>/`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The URL of the manifest of version `v` (`"1"` or `"2"`).
    pub fn manifest(&self, v: &str) -> String {
        format!("file://{}/m{v}.yml", self.path.display())
    }
}

impl Default for Shelf {
    fn default() -> Shelf {
        Shelf::new()
    }
}

/// The `version` file under `dest` (empty if missing).
pub fn version(dest: &Path) -> String {
    std::fs::read_to_string(dest.join("version")).unwrap_or_default()
}
