//! The NATS JetStream backend against a real 3-server cluster on loopback: two stores
//! (two proxies' connections) appending at once lose and duplicate nothing, leases are
//! exclusive across them, and the store outlives one server (an R3 bucket). The bucket
//! is not trusted: values put there by a foreign client without `[store] key`, or a
//! genuine value moved to another key, are refused on read (on one JetStream server).

use deploy_store::nats::{NatsStore, Settings};
use deploy_store::seal::StoreKey;
use deploy_store::{
    Acquired, Lease, LeaseStore, ScenarioStore, ScenarioVersion, StoreError, VersionMap,
};
use deploy_testkit::NatsCluster;
use std::collections::BTreeSet;
use std::time::Duration;

const KEY: &str = "the fleet's store key";

fn settings(cluster: &NatsCluster) -> Settings {
    Settings {
        servers: cluster.client_urls(),
        prefix: "test-".into(),
        replicas: 3,
        key: StoreKey::new(KEY),
        ..Settings::default()
    }
}

/// One JetStream server, a bucket of one copy: enough for the tamper tests.
fn single(dir: &std::path::Path) -> (NatsCluster, Settings) {
    let cluster = NatsCluster::with_jetstream(dir, 1, "");
    let settings = Settings {
        replicas: 1,
        ..settings(&cluster)
    };
    (cluster, settings)
}

/// A foreign client of the bucket: NATS credentials, no `[store] key`.
async fn foreign(settings: &Settings) -> async_nats::jetstream::kv::Store {
    let client = async_nats::connect(settings.servers[0].as_str())
        .await
        .unwrap();
    async_nats::jetstream::new(client)
        .get_key_value(settings.bucket())
        .await
        .unwrap()
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Asserts `result` is the refusal of `key`, and that its message names bucket and key.
#[track_caller]
fn refused<T: std::fmt::Debug>(result: Result<T, StoreError>, key: &str) {
    match result {
        Err(e @ StoreError::Forged { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("nats bucket test-state key ") && text.contains(key),
                "{text}"
            );
            let StoreError::Forged { key: k, .. } = e else {
                unreachable!()
            };
            assert_eq!(k, key);
        }
        other => panic!("{key}: expected a refusal, got {other:?}"),
    }
}

fn version(scenario: &str, message: &str) -> ScenarioVersion {
    let mut map = VersionMap::new();
    map.entry("node".into())
        .or_default()
        .insert("app".into(), message.into());
    ScenarioVersion::new(scenario, message, map, None)
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test timed out")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_from_two_stores_are_all_kept_once() {
    let cluster = NatsCluster::jetstream();
    within(async {
        let a = NatsStore::connect(&settings(&cluster)).await.unwrap();
        let b = NatsStore::connect(&settings(&cluster)).await.unwrap();
        let per_store = 25;
        let appends = |store: NatsStore, tag: &'static str| async move {
            for i in 0..per_store {
                store
                    .append(&version("s", &format!("{tag}{i}")))
                    .await
                    .unwrap();
            }
        };
        let (ra, rb) = tokio::join!(
            tokio::spawn(appends(a.clone(), "a")),
            tokio::spawn(appends(b.clone(), "b"))
        );
        ra.unwrap();
        rb.unwrap();
        let page = b.list("s", 0, 1000).await.unwrap();
        assert_eq!(page.total, 2 * per_store, "{page:?}");
        let messages: BTreeSet<String> = page.versions.iter().map(|v| v.message.clone()).collect();
        assert_eq!(messages.len(), 2 * per_store, "duplicates: {page:?}");
        // Newest first, each store's own appends in its order.
        let a_order: Vec<&str> = page
            .versions
            .iter()
            .rev()
            .filter(|v| v.message.starts_with('a'))
            .map(|v| v.message.as_str())
            .collect();
        let expected: Vec<String> = (0..per_store).map(|i| format!("a{i}")).collect();
        assert_eq!(a_order, expected);
        // get by prefix and forget work across stores.
        let first = page.versions.last().unwrap().clone();
        assert_eq!(a.get("s", &first.id[..8]).await.unwrap(), first);
        a.forget("s").await.unwrap();
        assert_eq!(b.list("s", 0, 10).await.unwrap().total, 0);
        b.append(&version("s", "after")).await.unwrap();
        assert_eq!(a.list("s", 0, 10).await.unwrap().total, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_exclusive_across_stores_and_one_server_may_die() {
    let mut cluster = NatsCluster::jetstream();
    let a = within(NatsStore::connect(&settings(&cluster)))
        .await
        .unwrap();
    let b = within(NatsStore::connect(&settings(&cluster)))
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    within(async {
        // Racing for one free lease: exactly one grant.
        let (ga, gb) = tokio::join!(
            a.acquire("l", "ta", "A", ttl),
            b.acquire("l", "tb", "B", ttl)
        );
        let granted = [ga.unwrap(), gb.unwrap()]
            .iter()
            .filter(|g| matches!(g, Acquired::Granted(_)))
            .count();
        assert_eq!(granted, 1);
        let holder = a.holder("l").await.unwrap().unwrap();
        let (mine, other) = if holder.holder == "ta" {
            (&a, &b)
        } else {
            (&b, &a)
        };
        let (my_token, other_token) = if holder.holder == "ta" {
            ("ta", "tb")
        } else {
            ("tb", "ta")
        };
        assert!(matches!(
            other.acquire("l", other_token, "X", ttl).await.unwrap(),
            Acquired::Held(_)
        ));
        assert!(!other.release("l", other_token).await.unwrap());
        assert!(mine.release("l", my_token).await.unwrap());
        assert!(matches!(
            other.acquire("l", other_token, "X", ttl).await.unwrap(),
            Acquired::Granted(_)
        ));
        a.append(&version("k", "before")).await.unwrap();
    })
    .await;
    cluster.kill(0);
    within(async {
        // The R3 bucket keeps working on the two servers left (the clients reconnect).
        b.append(&version("k", "during")).await.unwrap();
        let page = a.list("k", 0, 10).await.unwrap();
        assert_eq!(page.total, 2, "{}", cluster.logs());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_written_without_the_key_are_refused_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, settings) = single(dir.path());
    within(async {
        let store = NatsStore::connect(&settings).await.unwrap();
        let genuine = version("s", "genuine");
        store.append(&genuine).await.unwrap();
        let kv = foreign(&settings).await;
        // An invented version in the next slot, in clear as the store once wrote them.
        let invented = version("s", "invented");
        let slot = format!("v.{}.1", hex("s"));
        kv.put(&slot, serde_json::to_vec(&invented).unwrap().into())
            .await
            .unwrap();
        // The whole history is refused, not the forged entry skipped nor taken.
        refused(store.list("s", 0, 10).await, &slot);
        refused(store.get("s", &genuine.id[..8]).await, &slot);
        refused(store.get("s", &invented.id[..8]).await, &slot);
        // The same in the sealed format with a tag of another key.
        let other = StoreKey::new("another fleet's key").unwrap();
        kv.put(
            &slot,
            other
                .seal(
                    &settings.bucket(),
                    &slot,
                    &serde_json::to_vec(&invented).unwrap(),
                )
                .into(),
        )
        .await
        .unwrap();
        refused(store.list("s", 0, 10).await, &slot);
        // A forged head hint is not taken either (it would send appends and lists far).
        let head = format!("v.{}.head", hex("s"));
        kv.put(&head, "1000000".into()).await.unwrap();
        refused(store.append(&version("s", "next")).await, &head);

        // The inventory likewise.
        kv.put("inventory", "{\"nodes\":[]}".into()).await.unwrap();
        refused(store.inventory().await, "inventory");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genuine_values_moved_to_another_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, settings) = single(dir.path());
    within(async {
        let store = NatsStore::connect(&settings).await.unwrap();
        store.append(&version("s", "first")).await.unwrap();
        store.append(&version("s", "second")).await.unwrap();
        let kv = foreign(&settings).await;
        // Slot 0's value replayed into slot 2: a duplicate, genuine but not written there.
        let from = format!("v.{}.0", hex("s"));
        let to = format!("v.{}.2", hex("s"));
        let value = kv.get(&from).await.unwrap().unwrap();
        kv.put(&to, value).await.unwrap();
        refused(store.list("s", 0, 10).await, &to);
        // Slot 1's value over slot 0 (an older version's place rewritten).
        let one = kv.get(format!("v.{}.1", hex("s"))).await.unwrap().unwrap();
        kv.put(&from, one).await.unwrap();
        kv.purge(&to).await.unwrap();
        refused(store.list("s", 0, 10).await, &from);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_share_history_under_one_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, settings) = single(dir.path());
    within(async {
        let a = NatsStore::connect(&settings).await.unwrap();
        let b = NatsStore::connect(&settings).await.unwrap();
        a.append(&version("s", "from a")).await.unwrap();
        b.append(&version("s", "from b")).await.unwrap();
        let page = a.list("s", 0, 10).await.unwrap();
        let messages: Vec<&str> = page.versions.iter().map(|v| v.message.as_str()).collect();
        assert_eq!(messages, ["from b", "from a"]);
        assert!(matches!(
            b.acquire("l", "tb", "B", Duration::from_secs(60))
                .await
                .unwrap(),
            Acquired::Granted(_)
        ));
        assert!(matches!(
            a.acquire("l", "ta", "A", Duration::from_secs(60))
                .await
                .unwrap(),
            Acquired::Held(h) if h.holder == "tb"
        ));
        a.put_inventory(b"{\"n\":1}".to_vec()).await.unwrap();
        assert_eq!(b.inventory().await.unwrap().unwrap(), b"{\"n\":1}");

        // A proxy with another key reads none of it as genuine.
        let stranger = NatsStore::connect(&Settings {
            key: StoreKey::new("not the fleet's key"),
            ..settings.clone()
        })
        .await
        .unwrap();
        refused(
            stranger.list("s", 0, 10).await,
            &format!("v.{}.head", hex("s")),
        );
        refused(stranger.holder("l").await, &format!("l.{}", hex("l")));

        // And without a key there is no store at all.
        let none = NatsStore::connect(&Settings {
            key: None,
            ..settings.clone()
        })
        .await;
        assert!(
            matches!(&none, Err(StoreError::NoKey { bucket }) if bucket == "test-state"),
            "{:?}",
            none.err()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_written_without_the_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, settings) = single(dir.path());
    within(async {
        let store = NatsStore::connect(&settings).await.unwrap();
        let kv = foreign(&settings).await;
        // A lease held by nobody, put live into the leader's key: not taken as held,
        // not overwritten as free.
        let lease_key = format!("l.{}", hex("leader"));
        let fake = Lease {
            name: "leader".into(),
            holder: "thief".into(),
            owner: "mallory".into(),
            expires_ms: deploy_store::unix_ms() + 3_600_000,
        };
        kv.put(&lease_key, serde_json::to_vec(&fake).unwrap().into())
            .await
            .unwrap();
        refused(store.holder("leader").await, &lease_key);
        refused(
            store
                .acquire("leader", "t", "me", Duration::from_secs(60))
                .await,
            &lease_key,
        );
        refused(store.release("leader", "thief").await, &lease_key);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_moved_to_another_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_cluster, settings) = single(dir.path());
    within(async {
        let store = NatsStore::connect(&settings).await.unwrap();
        let kv = foreign(&settings).await;
        // A live lease on one name copied to another: the copy is refused.
        let ttl = Duration::from_secs(600);
        assert!(matches!(
            store.acquire("a", "ta", "A", ttl).await.unwrap(),
            Acquired::Granted(_)
        ));
        let a = kv.get(format!("l.{}", hex("a"))).await.unwrap().unwrap();
        let b_key = format!("l.{}", hex("b"));
        kv.put(&b_key, a).await.unwrap();
        refused(store.holder("b").await, &b_key);
        refused(store.acquire("b", "tb", "B", ttl).await, &b_key);
        // The original still verifies where it was written.
        assert_eq!(store.holder("a").await.unwrap().unwrap().holder, "ta");
    })
    .await;
}
