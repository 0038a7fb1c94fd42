//! The proxy's shared state ([`deploy_store`]): scenario versions, leases and the node
//! inventory, in the state directory (`[store] backend = redb`, one proxy) or in a NATS
//! JetStream key-value bucket (`backend = nats`, several proxies serving one fleet).
//!
//! ```text
//! Relay (made in the master, before the fork) ─ SharedStore { config, redb, nats: OnceCell }
//! worker: first use ─► NatsStore::connect (its own connection, on its own runtime)
//! heartbeat thread   ─► SharedStore::connect_now (another connection, on the thread's runtime)
//! ```
//!
//! A connection is made lazily in the process (and runtime) that uses it: the master
//! forks workers, and a connection made before the fork would be shared by none of them.
//! A failed connection is tried again by the next operation.
//!
//! Every value written to the bucket is sealed under `[store] key` (the config refuses
//! `backend = nats` without one), and one that does not verify fails the order that
//! reads it (500, the bucket and key named, logged) rather than be taken.

use deploy_common::config::proxy::{ProxyConfig, ProxyStoreConfig, StoreBackend};
use deploy_store::nats::{NatsStore, Settings};
use deploy_store::{RedbStore, ScenarioStore, StoreError};

/// The store of one proxy worker (see the module documentation).
pub struct SharedStore {
    backend: StoreBackend,
    settings: Settings,
    redb: RedbStore,
    nats: tokio::sync::OnceCell<NatsStore>,
}

/// The NATS client's settings from `[store]`.
pub fn settings(store: &ProxyStoreConfig) -> Settings {
    Settings {
        servers: store.servers.clone(),
        prefix: store.prefix.clone(),
        replicas: store.replicas,
        credentials: store.credentials.clone(),
        user: store.user.clone().zip(store.password.clone()),
        tls_ca: store.tls_ca.clone(),
        tls_client: store.tls_cert.clone().zip(store.tls_key.clone()),
        key: store
            .key
            .as_deref()
            .and_then(deploy_store::seal::StoreKey::new),
    }
}

impl SharedStore {
    /// The store `config` names (no connection yet).
    pub fn new(config: &ProxyConfig) -> SharedStore {
        SharedStore {
            backend: config.store.backend,
            settings: settings(&config.store),
            redb: RedbStore::in_dir(&config.server.state_dir),
            nats: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether the state is shared with other proxies (NATS).
    pub fn shared(&self) -> bool {
        self.backend == StoreBackend::Nats
    }

    /// Where it is, for logs.
    pub fn describe(&self) -> String {
        match self.backend {
            StoreBackend::Redb => self.redb.path().display().to_string(),
            StoreBackend::Nats => format!(
                "nats bucket {} on {}",
                self.settings.bucket(),
                self.settings.servers.join(",")
            ),
        }
    }

    /// This process's NATS connection, made on first use.
    pub async fn nats(&self) -> Result<&NatsStore, StoreError> {
        self.nats
            .get_or_try_init(|| NatsStore::connect(&self.settings))
            .await
    }

    /// Where scenario versions are kept.
    pub async fn versions(&self) -> Result<&dyn ScenarioStore, StoreError> {
        Ok(match self.backend {
            StoreBackend::Redb => &self.redb,
            StoreBackend::Nats => self.nats().await?,
        })
    }
}
