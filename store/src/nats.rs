//! The state shared by several proxies: one NATS JetStream key-value bucket, every write
//! a compare-and-swap on a key's revision.
//!
//! ```text
//! bucket <prefix>state (history 1, file storage, `replicas` copies: 3 survives one server)
//!   v.<hex scenario>.<n>      ScenarioVersion n (n from 0) as JSON, written with `create`
//!   v.<hex scenario>.head     a hint: the next free n (only ever moved forward, by CAS)
//!   l.<hex name>              Lease as JSON (create / update at revision / delete at revision)
//!   inventory                 the node inventory (the heartbeat leader's table), opaque JSON
//! every value               sealed: "d1." HMAC-SHA256 tag "." payload (crate::seal), the tag
//!                           under [store] key, bound to the bucket and the key name
//!
//! append   n = head; loop { create v.<s>.<n>: ok → done; exists → n += 1 }
//!          then head = max(head, n + 1) at head's revision (a lost race is harmless)
//! list     from head (or 0) on: get v.<s>.<n> while present → oldest first
//! acquire  entry l.<name> → lease::decide → create (none) or update at its revision;
//!          a moved revision (another proxy wrote first) → read again, decide again
//! ```
//!
//! Two proxies appending at once both try slot n; `create` lets exactly one of them
//! have it and the other moves on to n + 1, so no entry is lost nor written twice. The
//! head is only a hint for the next appender: a proxy that dies between its slot and the
//! head leaves a hint one short, which the next append and every list walk past. Scenario
//! names and lease names are hex-encoded into keys (NATS keys allow few characters).
//!
//! Every request is tried again for up to [`OP_TIMEOUT`]: the client reconnects to
//! another server of the cluster by itself and the bucket's stream elects a new leader,
//! which loses the requests in flight. A write whose answer was lost is settled by
//! reading the key back (every value written is unique), so a retried `create` never
//! takes two slots. An operation that cannot finish by then fails with the server's
//! error rather than hanging an order.
//!
//! The bucket is not trusted: whoever may write to it is not thereby a proxy of the
//! fleet. Every value is sealed ([`crate::seal`]) and opened on read; one that does not
//! verify (written without the key, or a genuine value moved to another key) fails the
//! operation with [`StoreError::Forged`] naming the bucket and key, and is never taken:
//! not as a version (a list or a `get` with one forged slot fails whole), not as a lease
//! (`acquire` fails rather than grant or refuse on it), not as the head hint nor the
//! inventory. An operator clears it with `nats kv del <bucket> <key>`. A bucket written
//! by a release that did not seal is refused the same way: start such a fleet on a new
//! `prefix` (or purge the bucket).

use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use bytes::Bytes;

use crate::lease::{decide, Acquired, Lease, LeaseStore};
use crate::seal::StoreKey;
use crate::versions::{pick, BoxFuture, Page, ScenarioStore, ScenarioVersion, StoreError};

/// The longest one store operation may take.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest one request may take before it is tried again.
const ATTEMPT: Duration = Duration::from_secs(2);

/// The pause before trying a failed request again.
const PAUSE: Duration = Duration::from_millis(100);

/// The most compare-and-swap rounds an operation tries before giving up.
const MAX_ROUNDS: usize = 1000;

/// How to reach the bucket.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `nats://host:port` URLs of the cluster's servers.
    pub servers: Vec<String>,
    /// The bucket's name is this prefix followed by `state`.
    pub prefix: String,
    /// Copies of the bucket (3: the store survives one server's loss).
    pub replicas: usize,
    /// A `.creds` file (JWT and nkey seed), if the cluster wants one.
    pub credentials: Option<std::path::PathBuf>,
    /// User and password, if the cluster wants them.
    pub user: Option<(String, String)>,
    /// A CA file to verify the servers' TLS certificates with (implies TLS).
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate and key for TLS, if the cluster wants one.
    pub tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// The key every value is sealed with (`[store] key`); [`NatsStore::connect`]
    /// refuses to work without one.
    pub key: Option<StoreKey>,
}

impl Settings {
    /// The bucket's name.
    pub fn bucket(&self) -> String {
        format!("{}state", self.prefix)
    }
}

/// A connection to the shared bucket.
#[derive(Clone)]
pub struct NatsStore {
    kv: kv::Store,
    bucket: String,
    seal: StoreKey,
}

fn remote(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("nats: {what}: {e}"))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

impl NatsStore {
    /// Connects to the cluster and opens the bucket, making it if it does not exist.
    /// Refused without [`Settings::key`].
    pub async fn connect(settings: &Settings) -> Result<NatsStore, StoreError> {
        let bucket = settings.bucket();
        let seal = settings.key.clone().ok_or_else(|| StoreError::NoKey {
            bucket: bucket.clone(),
        })?;
        let mut options = async_nats::ConnectOptions::new()
            .name("deploy-proxy")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .request_timeout(Some(ATTEMPT));
        if let Some(path) = &settings.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| remote(&format!("{}", path.display()), e))?;
        }
        if let Some((user, password)) = &settings.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &settings.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &settings.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        let servers: Vec<async_nats::ServerAddr> = settings
            .servers
            .iter()
            .map(|s| s.parse().map_err(|e| remote(&format!("server {s:?}"), e)))
            .collect::<Result<_, _>>()?;
        let client = tokio::time::timeout(OP_TIMEOUT, options.connect(servers.as_slice()))
            .await
            .map_err(|_| remote("connect", "timed out"))?
            .map_err(|e| remote("connect", e))?;
        let js = async_nats::jetstream::new(client);
        let kv = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => {
                // The bucket's stream, made as `create_key_value` makes it. Not through
                // `create_key_value` itself: it first asks for the account's info, which
                // Debian's nats-server 2.9 answers without fields async-nats requires.
                use async_nats::jetstream::stream;
                js.create_stream(stream::Config {
                    name: format!("KV_{bucket}"),
                    description: Some("deploy proxies' shared state".into()),
                    subjects: vec![format!("$KV.{bucket}.>")],
                    max_messages_per_subject: 1,
                    storage: stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    num_replicas: settings.replicas.max(1),
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                })
                .await
                .map_err(|e| {
                    remote(
                        &format!(
                            "create the bucket {bucket} ({} replicas)",
                            settings.replicas
                        ),
                        e,
                    )
                })?;
                js.get_key_value(&bucket)
                    .await
                    .map_err(|e| remote(&format!("open the bucket {bucket}"), e))?
            }
        };
        tracing::info!(bucket = %bucket, "shared store: connected to NATS");
        Ok(NatsStore { kv, bucket, seal })
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A live entry (`None` for none, deleted or purged) and its revision (0 for none).
    /// Retried until [`OP_TIMEOUT`]: while a server dies the client reconnects to another
    /// and the stream may elect a new leader, which loses the requests in flight.
    async fn entry(&self, key: &str) -> Result<(Option<Bytes>, u64), StoreError> {
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        let entry = loop {
            match tokio::time::timeout(ATTEMPT, self.kv.entry(key)).await {
                Ok(Ok(entry)) => break entry,
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(remote(key, e))
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(remote(key, "timed out"))
                }
                Ok(Err(e)) => {
                    tracing::debug!(key, cause = %e, "shared store: read again");
                    tokio::time::sleep(PAUSE).await;
                }
                Err(_) => tracing::debug!(key, "shared store: read timed out; again"),
            }
        };
        Ok(match entry {
            Some(e) if e.operation == Operation::Put => (Some(e.value), e.revision),
            Some(e) => (None, e.revision),
            None => (None, 0),
        })
    }

    /// `payload` sealed for `key` of this bucket.
    fn sealed(&self, key: &str, payload: &[u8]) -> Bytes {
        Bytes::from(self.seal.seal(&self.bucket, key, payload))
    }

    /// The payload of a live entry, opened (a value that does not verify is an error
    /// naming the bucket and key), and the entry's revision.
    async fn read(&self, key: &str) -> Result<(Option<Vec<u8>>, u64), StoreError> {
        let (value, revision) = self.entry(key).await?;
        let Some(value) = value else {
            return Ok((None, revision));
        };
        match self.seal.open(&self.bucket, key, &value) {
            Ok(payload) => Ok((Some(payload.to_vec()), revision)),
            Err(reason) => {
                tracing::error!(bucket = %self.bucket, key, %reason, "shared store: a value that no proxy of this fleet wrote there; refused");
                Err(StoreError::Forged {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    reason,
                })
            }
        }
    }

    fn unreadable(&self, key: &str, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Unreadable {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// Whether `key` now holds `value` (after a write whose answer was lost).
    async fn holds(&self, key: &str, value: &Bytes) -> Result<bool, StoreError> {
        Ok(self.entry(key).await?.0.as_ref() == Some(value))
    }

    /// Creates `key` if it has no live value: `Ok(false)` if it has one. A write whose
    /// answer is lost is settled by reading the key: ours if it holds our value (every
    /// value written here is unique: a version, a lease with its expiry, a count).
    async fn create(&self, key: &str, value: Bytes) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        loop {
            match tokio::time::timeout(ATTEMPT, self.kv.create(key, value.clone())).await {
                Ok(Ok(_)) => return Ok(true),
                Ok(Err(e)) if e.kind() == CreateErrorKind::AlreadyExists => {
                    return self.holds(key, &value).await
                }
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(remote(key, e))
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(remote(key, "timed out"))
                }
                _ => {
                    if self.holds(key, &value).await? {
                        return Ok(true);
                    }
                    tokio::time::sleep(PAUSE).await;
                }
            }
        }
    }

    /// Writes `key` if its revision is still `revision`: `Ok(false)` if it moved (a lost
    /// answer settled as in [`NatsStore::create`]).
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<bool, StoreError> {
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        loop {
            match tokio::time::timeout(ATTEMPT, self.kv.update(key, value.clone(), revision)).await
            {
                Ok(Ok(_)) => return Ok(true),
                Ok(Err(e)) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    return self.holds(key, &value).await
                }
                Ok(Err(e)) if tokio::time::Instant::now() >= deadline => {
                    return Err(remote(key, e))
                }
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(remote(key, "timed out"))
                }
                _ => {
                    if self.holds(key, &value).await? {
                        return Ok(true);
                    }
                    tokio::time::sleep(PAUSE).await;
                }
            }
        }
    }

    /// The next-free hint of `scenario` and its revision.
    async fn head(&self, scenario: &str) -> Result<(u64, u64), StoreError> {
        let key = format!("v.{}.head", hex(scenario));
        let (value, revision) = self.read(&key).await?;
        let n = match value {
            None => 0,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| self.unreadable(&key, "not a slot number"))?,
        };
        Ok((n, revision))
    }

    /// Every version of `scenario`, oldest first.
    async fn all(&self, scenario: &str) -> Result<Vec<ScenarioVersion>, StoreError> {
        let (head, _) = self.head(scenario).await?;
        let prefix = format!("v.{}.", hex(scenario));
        let mut out = Vec::new();
        let mut n = 0u64;
        loop {
            let key = format!("{prefix}{n}");
            // A forged slot fails the whole list: a history with a hole is no history.
            let (value, _) = self.read(&key).await?;
            match value {
                Some(bytes) => {
                    let version: ScenarioVersion = serde_json::from_slice(&bytes).map_err(|e| {
                        self.unreadable(&key, format!("not a scenario version: {e}"))
                    })?;
                    if version.scenario != scenario {
                        return Err(self.unreadable(
                            &key,
                            format!("a version of scenario {:?}", version.scenario),
                        ));
                    }
                    out.push(version);
                }
                // A slot below the hint may be gone only after a forget raced an append.
                None if n >= head => break,
                None => {}
            }
            n = n.saturating_add(1);
        }
        Ok(out)
    }

    async fn append_now(&self, version: &ScenarioVersion) -> Result<(), StoreError> {
        let json = serde_json::to_vec(version)
            .map_err(|e| StoreError::Remote(format!("scenario version: {e}")))?;
        let prefix = format!("v.{}.", hex(&version.scenario));
        let (mut n, _) = self.head(&version.scenario).await?;
        let mut rounds = 0;
        loop {
            let key = format!("{prefix}{n}");
            if self.create(&key, self.sealed(&key, &json)).await? {
                break;
            }
            n = n.saturating_add(1);
            rounds += 1;
            if rounds > MAX_ROUNDS {
                return Err(remote(&prefix, "no free slot after many tries"));
            }
        }
        // Move the hint forward; another appender moving it further wins.
        let head_key = format!("{prefix}head");
        for _ in 0..MAX_ROUNDS {
            let (head, revision) = self.head(&version.scenario).await?;
            if head > n {
                break;
            }
            let next = self.sealed(&head_key, n.saturating_add(1).to_string().as_bytes());
            let done = if revision == 0 {
                self.create(&head_key, next).await?
            } else {
                self.update(&head_key, next, revision).await?
            };
            if done {
                break;
            }
        }
        tracing::info!(scenario = %version.scenario, id = %version.id, slot = n, bucket = %self.bucket, "scenario version recorded");
        Ok(())
    }

    async fn forget_now(&self, scenario: &str) -> Result<(), StoreError> {
        let (head, _) = self.head(scenario).await?;
        let prefix = format!("v.{}.", hex(scenario));
        let mut n = 0u64;
        loop {
            let key = format!("{prefix}{n}");
            let (value, _) = self.entry(&key).await?;
            if value.is_none() && n >= head {
                break;
            }
            self.purge(&key).await?;
            n = n.saturating_add(1);
        }
        self.purge(&format!("{prefix}head")).await
    }

    async fn purge(&self, key: &str) -> Result<(), StoreError> {
        tokio::time::timeout(OP_TIMEOUT, self.kv.purge(key))
            .await
            .map_err(|_| remote(key, "timed out"))?
            .map_err(|e| remote(key, e))
    }

    /// Stores the node inventory (the heartbeat leader's table).
    pub async fn put_inventory(&self, json: Vec<u8>) -> Result<(), StoreError> {
        let value = self.sealed("inventory", &json);
        tokio::time::timeout(OP_TIMEOUT, self.kv.put("inventory", value))
            .await
            .map_err(|_| remote("inventory", "timed out"))?
            .map(|_| ())
            .map_err(|e| remote("inventory", e))
    }

    /// The node inventory, if a leader wrote one.
    pub async fn inventory(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.read("inventory").await?.0)
    }

    async fn lease_entry(&self, key: &str) -> Result<(Option<Lease>, u64), StoreError> {
        let (value, revision) = self.read(key).await?;
        let lease = match value {
            None => None,
            Some(v) => Some(
                serde_json::from_slice(&v)
                    .map_err(|e| self.unreadable(key, format!("not a lease: {e}")))?,
            ),
        };
        Ok((lease, revision))
    }
}

impl ScenarioStore for NatsStore {
    fn list<'a>(
        &'a self,
        scenario: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StoreError>> {
        Box::pin(async move {
            let all = self.all(scenario).await?;
            let total = all.len();
            let versions = all.into_iter().rev().skip(offset).take(limit).collect();
            Ok(Page { versions, total })
        })
    }

    fn get<'a>(
        &'a self,
        scenario: &'a str,
        prefix: &'a str,
    ) -> BoxFuture<'a, Result<ScenarioVersion, StoreError>> {
        Box::pin(async move { pick(scenario, prefix, self.all(scenario).await?) })
    }

    fn append<'a>(&'a self, version: &'a ScenarioVersion) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.append_now(version))
    }

    fn forget<'a>(&'a self, scenario: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.forget_now(scenario))
    }
}

impl LeaseStore for NatsStore {
    fn acquire<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
        owner: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Acquired, StoreError>> {
        Box::pin(async move {
            let key = format!("l.{}", hex(name));
            for _ in 0..MAX_ROUNDS {
                let (current, revision) = self.lease_entry(&key).await?;
                let decided = decide(current.as_ref(), name, holder, owner, ttl, crate::unix_ms());
                let Acquired::Granted(lease) = &decided else {
                    return Ok(decided);
                };
                let json =
                    serde_json::to_vec(lease).map_err(|e| StoreError::Remote(e.to_string()))?;
                let bytes = self.sealed(&key, &json);
                let written = if current.is_none() {
                    self.create(&key, bytes).await?
                } else {
                    self.update(&key, bytes, revision).await?
                };
                if written {
                    return Ok(decided);
                }
                // Another proxy wrote first: read again and decide again.
            }
            Err(remote(&key, "the lease kept changing"))
        })
    }

    fn release<'a>(
        &'a self,
        name: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let key = format!("l.{}", hex(name));
            let (current, revision) = self.lease_entry(&key).await?;
            if current.is_none_or(|l| l.holder != holder) {
                return Ok(false);
            }
            match tokio::time::timeout(
                OP_TIMEOUT,
                self.kv.delete_expect_revision(&key, Some(revision)),
            )
            .await
            .map_err(|_| remote(&key, "timed out"))?
            {
                Ok(()) => Ok(true),
                // The lease moved (it expired and another took it): not ours to release.
                Err(e) if e.to_string().contains("wrong last sequence") => Ok(false),
                Err(e) => Err(remote(&key, e)),
            }
        })
    }

    fn holder<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Lease>, StoreError>> {
        Box::pin(async move {
            let (lease, _) = self.lease_entry(&format!("l.{}", hex(name))).await?;
            Ok(lease.filter(|l| l.live(crate::unix_ms())))
        })
    }
}
