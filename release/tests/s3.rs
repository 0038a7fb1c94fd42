//! `s3://` sources against a real S3-compatible server: moto's standalone server
//! (`moto_server`, PyPI `moto[server]`) on a free loopback port. The bucket, the artifact
//! and the manifest are uploaded with PUTs presigned by rusty-s3 (the library the fetch
//! uses), sent by curl; then a manifest fetched from `s3://` deploys an artifact from
//! `s3://`, and missing keys, buckets and credentials fail naming the HTTP status.
//!
//! The server is found through `DEPLOY_TEST_MOTO`, else `moto_server` on `PATH`, else
//! `/opt/deploy-venv/bin/moto_server` (what `.ci/run` installs). Absent, the test fails
//! when `CI` is set and is skipped (saying why) otherwise.
//!
//! What moto (5.x) can and cannot check, found by trying it:
//! - by default it does not verify signatures at all: a URL presigned with a wrong
//!   secret or an unknown access key is served like a good one, so a wrong secret cannot
//!   be told from a right one here;
//! - with IAM authentication switched on (`POST /moto-api/reset-auth`), it verifies only
//!   `Authorization`-header signatures: any presigned (query-string) URL, valid or not,
//!   makes it fail with a 500 (`KeyError: 'HTTP_AUTHORIZATION'`);
//! - it does refuse an unsigned GET of a private object (403), which is what a fetch
//!   without credentials sends; that is tested.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use deploy_release::commands::Log;
use deploy_release::deploy::{self, Activation, Context, Settings};
use deploy_release::fetch::{self, FetchError, Hasher, Limits};
use deploy_release::manifest::{Algorithm, Manifest};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The credentials moto is given (any pair is accepted, see the module doc).
const KEY_ID: &str = "AKIDEPLOYTEST";
const SECRET: &str = "deploy/test+secret";
const REGION: &str = "us-east-1";

/// Where `moto_server` is, or why there is none.
fn moto_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DEPLOY_TEST_MOTO") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("DEPLOY_TEST_MOTO={} is not a file", p.display()))
        };
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    if let Some(p) = on_path {
        return Ok(p);
    }
    let venv = PathBuf::from("/opt/deploy-venv/bin/moto_server");
    if venv.is_file() {
        return Ok(venv);
    }
    Err(
        "moto_server not found (DEPLOY_TEST_MOTO, PATH, /opt/deploy-venv/bin); \
         install it with: python3 -m venv /opt/deploy-venv && \
         /opt/deploy-venv/bin/pip install 'moto[server]'"
            .into(),
    )
}

/// A running `moto_server` on 127.0.0.1, killed on drop (its log replayed).
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    /// Starts moto, or `None` (skip) when it is absent and `CI` is not set.
    fn start(dir: &Path) -> Option<Moto> {
        let bin = match moto_binary() {
            Ok(bin) => bin,
            Err(why) if std::env::var_os("CI").is_some() => panic!("CI is set: {why}"),
            Err(why) => {
                eprintln!("skipped: {why}");
                return None;
            }
        };
        let log = dir.join("moto.log");
        // A port free a moment ago; moto binds it itself (it cannot take a socket).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut moto = Moto { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}):\n{}", moto.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on 127.0.0.1:{port} within 30 s:\n{}",
                moto.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn bucket(&self, name: &str) -> rusty_s3::Bucket {
        rusty_s3::Bucket::new(
            self.endpoint().parse().unwrap(),
            rusty_s3::UrlStyle::Path,
            name.to_owned(),
            REGION,
        )
        .unwrap()
    }

    /// Creates bucket `name` with a presigned PUT.
    fn create_bucket(&self, name: &str) {
        use rusty_s3::S3Action as _;
        let creds = rusty_s3::Credentials::new(KEY_ID, SECRET);
        let bucket = self.bucket(name);
        let url = bucket.create_bucket(&creds).sign(Duration::from_secs(600));
        curl_put(url.as_str(), None);
    }

    /// Uploads `file` as `key` with a presigned PUT.
    fn put(&self, bucket: &str, key: &str, file: &Path) {
        use rusty_s3::S3Action as _;
        let creds = rusty_s3::Credentials::new(KEY_ID, SECRET);
        let bucket = self.bucket(bucket);
        let url = bucket
            .put_object(Some(&creds), key)
            .sign(Duration::from_secs(600));
        curl_put(url.as_str(), Some(file));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- moto_server log ---\n{}", self.log_text());
        }
    }
}

fn curl_put(url: &str, file: Option<&Path>) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail-with-body", "-X", "PUT"]);
    match file {
        Some(f) => cmd.arg("--upload-file").arg(f),
        None => cmd.args(["--data-binary", ""]),
    };
    let out = cmd.arg(url).output().expect("curl (is it installed?)");
    assert!(
        out.status.success(),
        "PUT {url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The S3 environment the fetch reads: `AWS_*` set for this process. The whole test is
/// one function, so nothing else reads the environment while it changes.
fn set_s3_env(endpoint: &str, credentials: Option<(&str, &str)>, token: Option<&str>) {
    for v in [
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        std::env::remove_var(v);
    }
    std::env::set_var("AWS_ENDPOINT_URL_S3", endpoint);
    std::env::set_var("AWS_REGION", REGION);
    if let Some((id, secret)) = credentials {
        std::env::set_var("AWS_ACCESS_KEY_ID", id);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
    }
    if let Some(token) = token {
        std::env::set_var("AWS_SESSION_TOKEN", token);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fetch_text(url: &str) -> Result<String, FetchError> {
    rt().block_on(fetch::fetch_text(url, &Limits::default(), 1 << 20))
}

/// A gzipped tar of `foo` and `version` holding `version`.
fn artifact(dir: &Path, version: &str) -> PathBuf {
    let src = dir.join(format!("src-{version}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("foo"), format!("foo {version}\n")).unwrap();
    std::fs::write(src.join("version"), version).unwrap();
    let out = dir.join(format!("app-{version}.tar.gz"));
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    out
}

#[test]
fn s3_sources_against_a_real_s3_server() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let Some(moto) = Moto::start(dir) else {
        return;
    };
    moto.create_bucket("releases");
    // A key with a directory and a space: the signed path must be encoded as S3 expects.
    let tar = artifact(dir, "1");
    moto.put("releases", "builds/app 1.tar.gz", &tar);
    let sum = {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(&std::fs::read(&tar).unwrap());
        h.hex()
    };
    let dest = dir.join("app");
    let manifest_file = dir.join("manifest.yml");
    std::fs::write(
        &manifest_file,
        format!(
            "src: s3://releases/builds/app 1.tar.gz\nchecksum: {sum}\ndest: {}\nsync_strategy: release\n",
            dest.display()
        ),
    )
    .unwrap();
    moto.put("releases", "manifest.yml", &manifest_file);

    set_s3_env(&moto.endpoint(), Some((KEY_ID, SECRET)), None);

    // The manifest itself from s3://, then its artifact from s3://.
    let text = fetch_text("s3://releases/manifest.yml").unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("s3://releases/builds/app 1.tar.gz"), "{text}");
    let m = Manifest::parse(&text, |k| std::env::var(k).ok()).unwrap();
    let settings = Settings {
        work_dir: dir.join("work"),
        limits: Limits::default(),
        hooks: true,
        cwd: dir.to_owned(),
    };
    let log = Log::default();
    let outcome = rt().block_on(deploy::run(
        &m,
        &settings,
        &Context::default(),
        &Activation::default(),
        &log,
    ));
    let log = String::from_utf8_lossy(&log.bytes()).into_owned();
    let activated = outcome.result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(activated.id.is_some(), "{activated:?}");
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "1");
    assert_eq!(
        std::fs::read_to_string(dest.join("foo")).unwrap(),
        "foo 1\n"
    );

    // A wrong key, a wrong bucket: a clean error naming the status, not a deploy of
    // moto's XML error document.
    for (url, status) in [
        ("s3://releases/nope.yml", "404"),
        ("s3://no-such-bucket/manifest.yml", "404"),
    ] {
        let e = fetch_text(url).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, FetchError::Open { .. }), "{url}: {e:?}");
        assert!(
            text.contains(&format!("HTTP status {status}")),
            "{url}: {text}"
        );
        assert!(text.contains(url), "{url}: {text}");
    }
    let wrong = Manifest::parse(&text.replace("app 1.tar.gz", "app 2.tar.gz"), |k| {
        std::env::var(k).ok()
    })
    .unwrap();
    let outcome = rt().block_on(deploy::run(
        &wrong,
        &settings,
        &Context::default(),
        &Activation::default(),
        &Log::default(),
    ));
    let e = outcome.result.unwrap_err().to_string();
    assert!(e.contains("HTTP status 404"), "{e}");
    assert_eq!(std::fs::read_to_string(dest.join("version")).unwrap(), "1");

    // No credentials: an unsigned GET, which S3 (and moto) refuse for a private object.
    set_s3_env(&moto.endpoint(), None, None);
    let e = fetch_text("s3://releases/manifest.yml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("HTTP status 403"), "{e}");

    // A session token is a credential, and a presigned URL carries it in its query:
    // a failed request must not put that URL into the error (and so into logs and
    // replies). A port nobody listens on (free a moment ago) makes the request fail.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    set_s3_env(
        &format!("http://{closed}"),
        Some((KEY_ID, SECRET)),
        Some("SESSION-TOKEN-SECRET"),
    );
    let e = fetch_text("s3://releases/manifest.yml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("s3://releases/manifest.yml"), "{e}");
    assert!(!e.contains("SESSION-TOKEN-SECRET"), "the token leaked: {e}");
    assert!(!e.contains("X-Amz-"), "the signed URL leaked: {e}");
}
