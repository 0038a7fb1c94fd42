//! Fetching an artifact (or a manifest) from `file://`, `http(s)://` or `s3://` into a
//! local file, hashing while it streams, in constant memory.
//!
//! ```text
//! file:///srv/a.tar.gz        a local file (copied, so it cannot change under the check;
//!                             or read once through [`Hashing`] while it is unpacked)
//! https://host/a.tar.gz       status checked (2xx), at most 5 redirects, connect and
//!                             read timeouts, a size cap
//! s3://bucket/key             SigV4-signed GET: region from AWS_REGION (or
//!                             AWS_DEFAULT_REGION, else us-east-1), credentials from
//!                             AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
//!                             [/ AWS_SESSION_TOKEN], endpoint from AWS_ENDPOINT_URL_S3 or
//!                             AWS_ENDPOINT_URL (path-style), else AWS's (virtual-hosted)
//! ```
//!
//! Like stretcher, opening the source is retried (`retry` times, `retry_wait` apart) and
//! a failure mid-stream is not; `timeout` bounds the whole download; `max_bandwidth`
//! paces it. Unlike stretcher, an HTTP error status fails at once instead of being
//! hashed as if it were the artifact.

use std::path::Path;
use std::time::{Duration, Instant};

use md5::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::manifest::Algorithm;

/// Limits on one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The whole download (`None`: no limit).
    pub timeout: Option<Duration>,
    /// Bytes per second (`None`: no limit).
    pub max_bandwidth: Option<u64>,
    /// Further attempts to open the source.
    pub retry: u32,
    /// Wait between attempts.
    pub retry_wait: Duration,
    /// Largest artifact accepted.
    pub max_size: u64,
}

impl Limits {
    /// Applies the knobs an order asks for (stretcher's, per order), bounded by these
    /// limits: the stricter bandwidth and timeout win, retries are capped at 10 and the
    /// wait between them at 600 s.
    pub fn narrowed(
        mut self,
        max_bandwidth: Option<u64>,
        timeout_secs: Option<u64>,
        retry: Option<u32>,
        retry_wait_secs: Option<u64>,
    ) -> Limits {
        let stricter = |have: Option<u64>, asked: Option<u64>| match (have, asked) {
            (Some(h), Some(a)) => Some(h.min(a)),
            (h, a) => h.or(a),
        };
        self.max_bandwidth = stricter(self.max_bandwidth, max_bandwidth.filter(|&b| b > 0));
        self.timeout =
            stricter(self.timeout.map(|t| t.as_secs()), timeout_secs).map(Duration::from_secs);
        if let Some(retry) = retry {
            self.retry = retry.min(10);
        }
        if let Some(wait) = retry_wait_secs {
            self.retry_wait = Duration::from_secs(wait.min(600));
        }
        self
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeout: None,
            max_bandwidth: None,
            retry: 0,
            retry_wait: Duration::from_secs(3),
            max_size: 16 << 30,
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL is not one of the supported kinds.
    #[error("unsupported source {0:?} (file://, http://, https://, s3://)")]
    Unsupported(String),
    /// The source could not be opened (after the retries).
    #[error("get src failed: {url}: {reason}")]
    Open {
        /// The source.
        url: String,
        /// Why.
        reason: String,
    },
    /// Reading it failed mid-way.
    #[error("reading {url} failed: {reason}")]
    Read {
        /// The source.
        url: String,
        /// Why.
        reason: String,
    },
    /// It is larger than allowed.
    #[error("{url} is larger than {max} bytes")]
    TooLarge {
        /// The source.
        url: String,
        /// The limit.
        max: u64,
    },
    /// The download took too long.
    #[error("timeout: fetching {url} took more than {after:?}")]
    Timeout {
        /// The source.
        url: String,
        /// The limit.
        after: Duration,
    },
    /// Writing the local copy failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The local file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What was fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes written.
    pub bytes: u64,
    /// The digest of those bytes (lower-case hex), with the algorithm asked for.
    pub hex: String,
    /// How long it took.
    pub elapsed: Duration,
}

/// How far a fetch is: the bytes so far and, when the source said, the whole size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Bytes fetched so far.
    pub bytes: u64,
    /// The source's size (a file's length, an HTTP `Content-Length`), if known.
    pub total: Option<u64>,
}

/// What a fetch tells of its progress, chunk by chunk.
pub type OnProgress<'a> = &'a (dyn Fn(Progress) + Send + Sync);

/// A running digest.
pub enum Hasher {
    /// MD5.
    Md5(md5::Md5),
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
    /// SHA-512.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A new digest.
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest, lower-case hex.
    pub fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha1(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A reader that hashes every byte it passes on, counts them, and fails past a size
/// cap or a deadline: for reading a local artifact once, unpacking it as it is hashed
/// (what is unpacked is exactly what is checked, so the file cannot change between
/// the check and the use).
pub struct Hashing<R> {
    inner: R,
    hasher: Hasher,
    bytes: u64,
    max: u64,
    deadline: Option<Instant>,
}

impl<R: std::io::Read> Hashing<R> {
    /// Hashes what is read from `inner` with `algorithm`, within `limits` (size and
    /// timeout; the bandwidth is not paced here).
    pub fn new(inner: R, algorithm: Algorithm, limits: &Limits) -> Hashing<R> {
        Hashing {
            inner,
            hasher: Hasher::new(algorithm),
            bytes: 0,
            max: limits.max_size,
            deadline: limits.timeout.map(|t| Instant::now() + t),
        }
    }

    /// Reads (and hashes) what is left, then returns the byte count and the digest.
    pub fn finish(mut self) -> std::io::Result<(u64, String)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((self.bytes, self.hasher.hex()))
    }
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timeout: reading the artifact took too long",
            ));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.bytes += n as u64;
        if self.bytes > self.max {
            return Err(std::io::Error::other(format!(
                "the artifact is larger than {} bytes",
                self.max
            )));
        }
        Ok(n)
    }
}

/// An opened source: a stream of chunks.
enum Stream {
    File(tokio::fs::File),
    Http(reqwest::Response),
}

impl Stream {
    /// The size of the whole, if the source says.
    async fn size(&self) -> Option<u64> {
        match self {
            Stream::File(f) => f.metadata().await.ok().map(|m| m.len()),
            Stream::Http(r) => r.content_length(),
        }
    }

    async fn chunk(&mut self, buf: &mut [u8]) -> Result<Option<Vec<u8>>, String> {
        match self {
            Stream::File(f) => match f.read(buf).await {
                Ok(0) => Ok(None),
                Ok(n) => Ok(Some(buf.get(..n).unwrap_or_default().to_vec())),
                Err(e) => Err(e.to_string()),
            },
            Stream::Http(r) => r
                .chunk()
                .await
                .map(|c| c.map(|b| b.to_vec()))
                .map_err(|e| error_chain(&e.without_url())),
        }
    }
}

/// An error with its causes (reqwest's own message is terse). Give it reqwest errors
/// `without_url()`: their text would otherwise carry a presigned URL's credentials.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether a failure to open is worth another attempt.
enum OpenError {
    Retry(String),
    Final(String),
}

fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::limited(5))
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| error_chain(&e))
}

/// The HTTP URL of a source (signing `s3://` ones).
fn http_url(url: &str) -> Result<Option<String>, String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(Some(url.to_owned()));
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        return Ok(None);
    };
    let (bucket, key) = rest
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
        .ok_or_else(|| format!("{url}: expected s3://bucket/key"))?;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let (endpoint, style) = match var("AWS_ENDPOINT_URL_S3").or_else(|| var("AWS_ENDPOINT_URL")) {
        Some(e) => (e, rusty_s3::UrlStyle::Path),
        None => (
            format!("https://s3.{region}.amazonaws.com"),
            rusty_s3::UrlStyle::VirtualHost,
        ),
    };
    let endpoint: url::Url = endpoint
        .parse()
        .map_err(|e| format!("S3 endpoint {endpoint:?}: {e}"))?;
    let bucket = rusty_s3::Bucket::new(endpoint, style, bucket.to_owned(), region)
        .map_err(|e| format!("S3 bucket {bucket:?}: {e}"))?;
    let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
        (Some(id), Some(secret)) => Some(match var("AWS_SESSION_TOKEN") {
            Some(token) => rusty_s3::Credentials::new_with_token(id, secret, token),
            None => rusty_s3::Credentials::new(id, secret),
        }),
        _ => None,
    };
    use rusty_s3::S3Action as _;
    let action = bucket.get_object(credentials.as_ref(), key);
    Ok(Some(action.sign(Duration::from_secs(3600)).to_string()))
}

async fn open(url: &str) -> Result<Stream, OpenError> {
    if let Some(path) = url.strip_prefix("file://") {
        return match tokio::fs::File::open(path).await {
            Ok(f) => Ok(Stream::File(f)),
            Err(e) => Err(OpenError::Retry(format!("{path}: {e}"))),
        };
    }
    let Some(http) = http_url(url).map_err(OpenError::Final)? else {
        return Err(OpenError::Final(format!(
            "unsupported source (file://, http://, https://, s3://): {url}"
        )));
    };
    let client = http_client().map_err(OpenError::Final)?;
    let response = client
        .get(&http)
        .send()
        .await
        // Without the URL: a presigned one carries the session token (and the
        // signature) in its query, and this text goes to logs and replies. The caller
        // names the source by its own URL.
        .map_err(|e| OpenError::Retry(error_chain(&e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        Ok(Stream::Http(response))
    } else if status.is_server_error() {
        Err(OpenError::Retry(format!("HTTP status {status}")))
    } else {
        Err(OpenError::Final(format!("HTTP status {status}")))
    }
}

/// Fetches `url` into the file `to` (created, replacing), hashing with `algorithm`;
/// `progress` is told the bytes so far, chunk by chunk.
pub async fn fetch(
    url: &str,
    to: &Path,
    algorithm: Algorithm,
    limits: &Limits,
    progress: OnProgress<'_>,
) -> Result<Fetched, FetchError> {
    let work = fetch_inner(url, to, algorithm, limits, progress);
    match limits.timeout {
        Some(after) => tokio::time::timeout(after, work).await.unwrap_or_else(|_| {
            Err(FetchError::Timeout {
                url: url.to_owned(),
                after,
            })
        }),
        None => work.await,
    }
}

async fn fetch_inner(
    url: &str,
    to: &Path,
    algorithm: Algorithm,
    limits: &Limits,
    progress: OnProgress<'_>,
) -> Result<Fetched, FetchError> {
    if !["file://", "http://", "https://", "s3://"]
        .iter()
        .any(|p| url.starts_with(p))
    {
        return Err(FetchError::Unsupported(url.to_owned()));
    }
    let start = Instant::now();
    let mut attempt = 0;
    let mut stream = loop {
        match open(url).await {
            Ok(s) => break s,
            Err(OpenError::Retry(reason)) if attempt < limits.retry => {
                attempt += 1;
                tracing::warn!(url, attempt, reason = %reason, "cannot open the source; retrying");
                tokio::time::sleep(limits.retry_wait).await;
            }
            Err(OpenError::Retry(reason) | OpenError::Final(reason)) => {
                return Err(FetchError::Open {
                    url: url.to_owned(),
                    reason,
                })
            }
        }
    };
    let write_error = |source| FetchError::Write {
        path: to.display().to_string(),
        source,
    };
    let total = stream.size().await;
    let mut file = tokio::fs::File::create(to).await.map_err(write_error)?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 64 << 10];
    let mut bytes = 0u64;
    let paced = Instant::now();
    while let Some(chunk) = stream
        .chunk(&mut buf)
        .await
        .map_err(|reason| FetchError::Read {
            url: url.to_owned(),
            reason,
        })?
    {
        bytes += chunk.len() as u64;
        if bytes > limits.max_size {
            return Err(FetchError::TooLarge {
                url: url.to_owned(),
                max: limits.max_size,
            });
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_error)?;
        progress(Progress { bytes, total });
        if let Some(rate) = limits.max_bandwidth.filter(|&r| r > 0) {
            let due = Duration::from_secs_f64(bytes as f64 / rate as f64);
            let spent = paced.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
    }
    // No fsync: the download is a scratch file, read back at once and then removed; a
    // crash loses it either way (and syncing N artifacts at once costs more than the
    // rollout's every other step).
    file.flush().await.map_err(write_error)?;
    Ok(Fetched {
        bytes,
        hex: hasher.hex(),
        elapsed: start.elapsed(),
    })
}

/// Fetches a small text (a manifest) of at most `max` bytes.
pub async fn fetch_text(url: &str, limits: &Limits, max: u64) -> Result<String, FetchError> {
    let dir = tempfile_dir()?;
    let path = dir.join("manifest");
    let limits = Limits {
        max_size: max,
        ..limits.clone()
    };
    let result = fetch(url, &path, Algorithm::Sha256, &limits, &|_| {}).await;
    let text = match result {
        Ok(_) => tokio::fs::read(&path)
            .await
            .map_err(|source| FetchError::Write {
                path: path.display().to_string(),
                source,
            }),
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&dir);
    let text = text?;
    String::from_utf8(text).map_err(|_| FetchError::Read {
        url: url.to_owned(),
        reason: "the manifest is not UTF-8".into(),
    })
}

/// A private temporary directory.
fn tempfile_dir() -> Result<std::path::PathBuf, FetchError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "deploy-manifest.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let mut builder = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(&dir).map_err(|source| FetchError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    Ok(dir)
}
