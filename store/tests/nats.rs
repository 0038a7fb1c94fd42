//! The NATS JetStream backend against a real 3-server cluster on loopback: two stores
//! (two proxies' connections) appending at once lose and duplicate nothing, leases are
//! exclusive across them, and the store outlives one server (an R3 bucket).

use deploy_store::nats::{NatsStore, Settings};
use deploy_store::{Acquired, LeaseStore, ScenarioStore, ScenarioVersion, VersionMap};
use deploy_testkit::NatsCluster;
use std::collections::BTreeSet;
use std::time::Duration;

fn settings(cluster: &NatsCluster) -> Settings {
    Settings {
        servers: cluster.client_urls(),
        prefix: "test-".into(),
        replicas: 3,
        ..Settings::default()
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
