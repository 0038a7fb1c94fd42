//! The store, snapshots and resets on real directories.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::*;
use std::os::unix::fs::{symlink, PermissionsExt as _};

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    ws: Workspace,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let ws = open(&base);
    Fixture {
        _dir: dir,
        base,
        ws,
    }
}

fn open(base: &Path) -> Workspace {
    let root = Root::create_beneath(base, Path::new("workspace")).unwrap();
    Workspace::new(root, Layout::new(&base.join("workspace"), None, None))
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn snapshot_only_when_changed_unless_forced() {
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    assert_eq!(dir, f.base.join("workspace/web@s1"));
    write(&dir.join("a.txt"), "one");
    let lock = napp.lock().unwrap();
    let napp = &*lock;
    let a = lock.snapshot("first", false).unwrap().expect("a version");
    assert_eq!(a.version.len(), 64);
    assert!(
        lock.snapshot("again", false).unwrap().is_none(),
        "nothing changed"
    );
    // A new modification time alone is no change.
    std::fs::write(dir.join("a.txt"), "one").unwrap();
    assert!(lock.snapshot("again", false).unwrap().is_none());
    write(&dir.join("a.txt"), "two");
    let b = lock.snapshot("second", false).unwrap().expect("changed");
    let c = lock.snapshot("commit", true).unwrap().expect("forced");
    assert_eq!(c.manifest, b.manifest);
    assert_ne!(c.version, b.version);
    let all = napp.versions().unwrap();
    let ids: Vec<&str> = all.iter().map(|v| v.message.as_str()).collect();
    assert_eq!(ids, ["first", "second", "commit"]);
    let newest = page(&all, 0, 2);
    assert_eq!(newest[0].message, "commit");
    assert_eq!(newest[1].message, "second");
    assert_eq!(page(&all, 2, 5)[0].message, "first");
}

#[test]
fn gitignored_files_are_not_recorded_and_survive_a_reset() {
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    write(&dir.join(".gitignore"), "*.log\ncache/\n");
    write(&dir.join("app.conf"), "v1");
    write(&dir.join("run.log"), "log 1");
    write(&dir.join("cache/blob"), "cached");
    let lock = napp.lock().unwrap();
    let napp = &*lock;
    let a = lock.snapshot("a", false).unwrap().unwrap();
    let (manifest, _) = manifest::walk(napp.root().unwrap().fd()).unwrap();
    let paths: Vec<&[u8]> = manifest.entries.iter().map(Entry::path).collect();
    assert_eq!(paths, [&b".gitignore"[..], b"app.conf"]);
    // Changing an ignored file is no change.
    write(&dir.join("run.log"), "log 2");
    assert!(lock.snapshot("x", false).unwrap().is_none());
    write(&dir.join("app.conf"), "v2");
    write(&dir.join("extra.txt"), "new");
    lock.snapshot("b", false).unwrap().unwrap();
    lock.reset(&a.version[..6], "back").unwrap();
    assert_eq!(read(&dir.join("app.conf")), "v1");
    assert!(!dir.join("extra.txt").exists(), "not in A: removed");
    assert_eq!(read(&dir.join("run.log")), "log 2", "ignored: left alone");
    assert_eq!(read(&dir.join("cache/blob")), "cached");
}

use manifest::Entry;

#[test]
fn reset_is_revert_style_and_restores_modes_dirs_and_links() {
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    let lock = napp.lock().unwrap();
    let napp = &*lock;
    write(&dir.join("v"), "A");
    write(&dir.join("d/e/f"), "deep");
    std::fs::set_permissions(dir.join("v"), std::fs::Permissions::from_mode(0o750)).unwrap();
    symlink("d/e", dir.join("link")).unwrap();
    let a = lock.snapshot("A", false).unwrap().unwrap();
    write(&dir.join("v"), "B");
    std::fs::remove_dir_all(dir.join("d")).unwrap();
    std::fs::remove_file(dir.join("link")).unwrap();
    write(&dir.join("link"), "now a file");
    let b = lock.snapshot("B", false).unwrap().unwrap();
    write(&dir.join("v"), "C");
    std::fs::create_dir(dir.join("new")).unwrap();
    let c = lock.snapshot("C", false).unwrap().unwrap();
    let (new, target) = lock.reset(&a.version[..3], "to A").unwrap();
    assert_eq!(target, a);
    assert_eq!(new.manifest, a.manifest);
    assert_ne!(new.version, a.version);
    assert_eq!(read(&dir.join("v")), "A");
    let mode = std::fs::metadata(dir.join("v"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o750);
    assert_eq!(read(&dir.join("d/e/f")), "deep");
    assert_eq!(
        std::fs::read_link(dir.join("link")).unwrap(),
        Path::new("d/e")
    );
    assert!(!dir.join("new").exists());
    let ids: Vec<String> = napp
        .versions()
        .unwrap()
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(ids, [a.version.clone(), b.version, c.version, new.version]);
    // Nothing changed since the reset: no version on the next push.
    assert!(lock.snapshot("same", false).unwrap().is_none());
    // No staging leftovers.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".deploy-tmp")),
        "{names:?}"
    );
}

#[test]
fn prefixes_short_unknown_or_ambiguous_are_refused() {
    let v = |id: &str| Version {
        version: id.into(),
        time: String::new(),
        message: String::new(),
        manifest: String::new(),
    };
    let all = [v("abc123"), v("abd456"), v("abc789")];
    assert!(matches!(
        find(&all, "ab", "n"),
        Err(Error::BadPrefix { .. })
    ));
    assert!(matches!(
        find(&all, "xyz", "n"),
        Err(Error::BadPrefix { .. })
    ));
    assert!(matches!(
        find(&all, "abe", "n"),
        Err(Error::NoVersion { .. })
    ));
    let e = find(&all, "abc", "n").unwrap_err();
    assert!(matches!(e, Error::Ambiguous { .. }), "{e}");
    assert!(e.to_string().contains("abc123") && e.to_string().contains("abc789"));
    assert_eq!(find(&all, "ABD", "n").unwrap().version, "abd456");
    // The same id twice (a log never has it, but a prefix naming one id is one version).
    assert!(find(&[v("abc1"), v("abc1")], "abc", "n").is_ok());
}

#[test]
fn planted_links_are_never_followed() {
    let f = fixture();
    let outside = f.base.join("outside");
    std::fs::create_dir(&outside).unwrap();
    write(&outside.join("secret"), "outside");
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    let lock = napp.lock().unwrap();
    let napp = &*lock;
    write(&dir.join("d/secret"), "inside");
    let a = lock.snapshot("A", false).unwrap().unwrap();
    // d becomes a link out of the tree.
    std::fs::remove_dir_all(dir.join("d")).unwrap();
    symlink(&outside, dir.join("d")).unwrap();
    let b = lock.snapshot("B", false).unwrap().unwrap();
    let m = napp.store.manifest(&b.manifest).unwrap();
    assert!(
        matches!(m.get(b"d"), Some(Entry::Symlink { .. })),
        "recorded as a link: {m:?}"
    );
    assert!(m.get(b"d/secret").is_none(), "not followed");
    lock.reset(&a.version[..8], "").unwrap();
    assert_eq!(read(&outside.join("secret")), "outside", "untouched");
    assert!(std::fs::symlink_metadata(dir.join("d")).unwrap().is_dir());
    assert_eq!(read(&dir.join("d/secret")), "inside");
    // A NodeApp directory that is itself a link out is refused.
    let other = f.base.join("workspace/evil@s1");
    symlink(&outside, &other).unwrap();
    assert!(f.ws.nodeapp("evil", "s1", true).is_err());
    assert!(
        !f.base.join("workspace/.deploy/versions/evil@s1").exists(),
        "no store for a refused NodeApp"
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn versions_survive_a_new_workspace_and_purge_removes_all() {
    let f = fixture();
    {
        let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
        write(&napp.path().join("x"), "1");
        napp.lock()
            .unwrap()
            .snapshot("one", false)
            .unwrap()
            .unwrap();
    }
    let again = open(&f.base);
    let versions = again.versions("web", "s1").unwrap();
    assert_eq!(versions.len(), 1);
    let list = again.list(Some("s1")).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].current, versions[0].version);
    assert!(again.list(Some("other")).unwrap().is_empty());
    assert!(again.nodeapp("web", "nope", false).unwrap().is_none());
    assert!(again.purge("web", "s1").unwrap());
    assert!(!f.base.join("workspace/web@s1").exists());
    assert!(!f.base.join("workspace/.deploy/versions/web@s1").exists());
    assert!(again.versions("web", "s1").unwrap().is_empty());
    assert!(!again.purge("web", "s1").unwrap());
    assert!(matches!(
        again.nodeapp("..", "s1", true),
        Err(Error::BadName { .. })
    ));
    assert!(matches!(
        again.nodeapp("a", "b/c", true),
        Err(Error::BadName { .. })
    ));
}

#[test]
fn a_line_cut_by_a_crash_is_no_version_and_is_cut_off() {
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    write(&napp.path().join("x"), "1");
    let lock = napp.lock().unwrap();
    let napp = &*lock;
    lock.snapshot("one", false).unwrap().unwrap();
    let log = f.base.join("workspace/.deploy/versions/web@s1/log");
    let mut text = std::fs::read(&log).unwrap();
    text.extend_from_slice(b"{\"version\":\"dead");
    std::fs::write(&log, &text).unwrap();
    assert_eq!(napp.versions().unwrap().len(), 1);
    write(&napp.path().join("x"), "2");
    lock.snapshot("two", false).unwrap().unwrap();
    let messages: Vec<String> = napp
        .versions()
        .unwrap()
        .into_iter()
        .map(|v| v.message)
        .collect();
    assert_eq!(messages, ["one", "two"]);
}

#[test]
fn a_reset_failing_midway_puts_the_previous_tree_back() {
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    let lock = napp.lock().unwrap();
    write(&dir.join(".gitignore"), "*.log\n");
    write(&dir.join("x"), "a file in A");
    let a = lock.snapshot("A", false).unwrap().unwrap();
    // x becomes a directory holding an ignored file: A's file cannot take its name
    // without destroying what the user keeps out of versions.
    std::fs::remove_file(dir.join("x")).unwrap();
    write(&dir.join("x/keep.txt"), "recorded");
    write(&dir.join("x/run.log"), "ignored");
    write(&dir.join("y"), "unrecorded, not ignored");
    let e = lock.reset(&a.version[..4], "").unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::ResetFailed { .. }), "{text}");
    assert!(text.contains("the previous tree was put back"), "{text}");
    assert_eq!(read(&dir.join("x/keep.txt")), "recorded");
    assert_eq!(read(&dir.join("x/run.log")), "ignored");
    assert_eq!(read(&dir.join("y")), "unrecorded, not ignored");
    assert_eq!(
        lock.versions().unwrap().len(),
        1,
        "no version for a failed reset"
    );
}

/// A name that is not UTF-8 is recorded (as `{"bytes": base64}`) and put back by a
/// reset; UTF-8 names are written as plain strings, as before.
#[test]
fn non_utf8_names_round_trip() {
    use std::os::unix::ffi::OsStrExt as _;
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9 \n'$(x)");
    std::fs::write(dir.join(odd), "one").unwrap();
    write(&dir.join("plain"), "p");
    let lock = napp.lock().unwrap();
    let a = lock.snapshot("a", false).unwrap().unwrap();
    std::fs::write(dir.join(odd), "two").unwrap();
    lock.snapshot("b", false).unwrap().unwrap();
    let (m, _) = manifest::walk(lock.root().unwrap().fd()).unwrap();
    let json = String::from_utf8(m.to_bytes()).unwrap();
    assert!(json.contains(r#""path":{"bytes":"#), "{json}");
    assert!(json.contains(r#""path":"plain""#), "{json}");
    let back: Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back, m);
    lock.reset(&a.version[..8], "back").unwrap();
    assert_eq!(std::fs::read(dir.join(odd)).unwrap(), b"one");
}

/// The SSH hosts' reset script (`remote::reset_script`, run here by `sh`): a reset
/// that cannot finish (the target wants a file where a directory still holds an
/// ignored file) puts back everything it had moved and exits 73; a possible one
/// makes the tree the target's, ignored files left alone.
#[test]
fn remote_reset_script_undoes_a_failure_and_restores() {
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    let objects = f.base.join("workspace/.deploy/versions/web@s1/objects");
    write(&dir.join(".gitignore"), "*.log\n");
    write(&dir.join("d"), "a file");
    write(&dir.join("x"), "x1");
    let lock = napp.lock().unwrap();
    let a = lock.snapshot("a", false).unwrap().unwrap();
    std::fs::remove_file(dir.join("d")).unwrap();
    write(&dir.join("d/a"), "in d");
    write(&dir.join("d/keep.log"), "ignored");
    write(&dir.join("x"), "x2");
    lock.snapshot("b", false).unwrap().unwrap();
    let run = |target: &Manifest| {
        let (current, _) = manifest::walk(lock.root().unwrap().fd()).unwrap();
        let rules = restore::rules_with(target, |_, sha| {
            Ok(std::fs::read(objects.join(&sha[..2]).join(&sha[2..])).unwrap())
        })
        .unwrap();
        let script = remote::reset_script(&current, target, &rules).unwrap();
        std::process::Command::new("sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&script))
            .env("D", &dir)
            .env("O", &objects)
            .output()
            .unwrap()
    };
    use std::os::unix::ffi::OsStrExt as _;
    let wanted = lock.napp.store.manifest(&a.manifest).unwrap();
    let out = run(&wanted);
    assert_eq!(out.status.code(), Some(73), "{out:?}");
    assert_eq!(read(&dir.join("d/a")), "in d", "moved back");
    assert_eq!(read(&dir.join("x")), "x2", "moved back");
    assert!(!std::fs::read_dir(&dir).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .as_bytes()
        .starts_with(b".deploy-tmp")));
    // Without the ignored file in the way, the same reset goes through.
    std::fs::remove_file(dir.join("d/keep.log")).unwrap();
    let out = run(&wanted);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(read(&dir.join("d")), "a file");
    assert_eq!(read(&dir.join("x")), "x1");
    let (now, _) = manifest::walk(lock.root().unwrap().fd()).unwrap();
    assert_eq!(now, wanted);
}

/// Finding 3 (h7 review): the SSH reset script names every path as `"$D"/'a/b'`, so it
/// follows whatever the directories on the way are when it runs. The tree is walked
/// (fetched) first; if a directory of the NodeApp becomes a symlink meanwhile (the
/// app's own user may write its NodeApp dir; the SSH user is often root), a reset that
/// removes `sub/f` moves the *link's* `f` into its staging dir and deletes it with the
/// staging dir: a file outside the NodeApp is gone. (Target directories are checked
/// with `[ -L ]` before files are put in place; paths being removed are not.) The
/// agent's restore is confined by the kernel (openat2 RESOLVE_BENEATH); this is not.
#[test]
fn remote_reset_script_does_not_remove_through_a_swapped_directory() {
    use std::os::unix::ffi::OsStrExt as _;
    let f = fixture();
    let napp = f.ws.nodeapp("web", "s1", true).unwrap().unwrap();
    let dir = napp.path().to_path_buf();
    let objects = f.base.join("workspace/.deploy/versions/web@s1/objects");
    let outside = f.base.join("outside");
    write(&outside.join("f"), "not the NodeApp's");
    write(&dir.join("keep"), "k");
    let lock = napp.lock().unwrap();
    let a = lock.snapshot("a", false).unwrap().unwrap();
    write(&dir.join("sub/f"), "v2");
    lock.snapshot("b", false).unwrap().unwrap();
    let wanted = lock.napp.store.manifest(&a.manifest).unwrap();
    // The walk (on an SSH host: the fetched tree) sees `sub` a directory…
    let (current, _) = manifest::walk(lock.root().unwrap().fd()).unwrap();
    let rules = restore::rules_with(&wanted, |_, sha| {
        Ok(std::fs::read(objects.join(&sha[..2]).join(&sha[2..])).unwrap())
    })
    .unwrap();
    let script = remote::reset_script(&current, &wanted, &rules).unwrap();
    // … then, before the script runs, `sub` becomes a link out of the NodeApp.
    std::fs::remove_dir_all(dir.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("sub")).unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(std::ffi::OsStr::from_bytes(&script))
        .env("D", &dir)
        .env("O", &objects)
        .output()
        .unwrap();
    assert!(
        outside.join("f").exists(),
        "the reset removed {} through the link (exit {:?})",
        outside.join("f").display(),
        out.status.code()
    );
}
