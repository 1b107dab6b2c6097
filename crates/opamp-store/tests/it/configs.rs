//! Remote configs on every backend: the shared config suite (`conformance::run_configs`) on the
//! embedded store, through the cache, on Elasticsearch (a fresh index, the `.fleet-agents`
//! system index, and the secured node with fleet-server's service token), plus what only one
//! backend has to prove: the `MAX_CONFIGS` bound, restart durability and a full disk (embedded),
//! the config index's set-up and the refusal to have a system index created by a write
//! (Elasticsearch).

use std::time::Duration;

use futures::future::join_all;
use opamp_proto::InstanceUid;
use opamp_store::cache::{CacheConfig, CachedStore};
use opamp_store::configs::{ConfigStore, MAX_CONFIGS, StoredConfig, to_json};
use opamp_store::conformance::{
    self, SmallDisk, config_name, full_config, minimal_record, stored_config,
};
use opamp_store::embedded::EmbeddedStore;
use opamp_store::{AgentStore, Precondition, StoreError, Version, VersionedConfig};
use tempfile::TempDir;

mod embedded {
    use super::*;

    pub(super) struct Fixture {
        pub store: EmbeddedStore,
        _dir: TempDir,
    }

    impl Fixture {
        pub async fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = EmbeddedStore::open(dir.path()).await.expect("open store");
            Self { store, _dir: dir }
        }
    }

    opamp_store::config_conformance_tests!(Fixture::new().await, |f| &f.store);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_config_suite_passes_on_one_shared_store() {
        let f = Fixture::new().await;
        conformance::run_configs(&f.store).await;
        assert_eq!(f.store.config_versions().await, Ok(vec![]), "every case cleans up");
    }
}

mod cache {
    use super::*;

    struct Fixture {
        store: CachedStore<EmbeddedStore>,
        _dir: TempDir,
    }

    impl Fixture {
        async fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let inner = EmbeddedStore::open(dir.path()).await.expect("open store");
            Self { store: CachedStore::new(inner, CacheConfig::default()), _dir: dir }
        }
    }

    opamp_store::config_conformance_tests!(Fixture::new().await, |f| &f.store);
}

/// Fills a store with `MAX_CONFIGS` configs; then a create is refused with a message, while a
/// replace, a create of an existing name (a conflict) and a create after a delete still behave.
async fn the_config_bound_holds<S: ConfigStore>(store: &S, fill: impl AsyncFnOnce(&S, &str)) {
    let prefix = config_name("bound");
    fill(store, &prefix).await;
    let versions = store.config_versions().await.expect("versions");
    assert_eq!(versions.len(), MAX_CONFIGS);

    let one_more = stored_config(&format!("{prefix}-one-more"), "a: 1");
    let refused = store.put_config(&one_more, Precondition::Absent).await;
    assert!(
        matches!(&refused, Err(StoreError::Backend(why)) if why.contains(&MAX_CONFIGS.to_string())),
        "{refused:?}"
    );
    assert_eq!(store.get_config(one_more.config.name()).await, Ok(None));

    let (name, version) = versions[0].clone();
    let again = stored_config(&name, "a: 1");
    assert_eq!(store.put_config(&again, Precondition::Absent).await, Err(StoreError::Conflict));
    let replaced = stored_config(&name, "a: replaced");
    let version =
        store.put_config(&replaced, Precondition::Version(version)).await.expect("replace");
    store.delete_config(&name, version).await.expect("delete");
    store.put_config(&one_more, Precondition::Absent).await.expect("room for one again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_holds_at_most_max_configs() {
    let f = embedded::Fixture::new().await;
    the_config_bound_holds(&f.store, async |store, prefix| {
        // concurrent creates share commits
        let configs: Vec<StoredConfig> =
            (0..MAX_CONFIGS).map(|i| stored_config(&format!("{prefix}-{i:04}"), "a: 1")).collect();
        for chunk in configs.chunks(250) {
            let results =
                join_all(chunk.iter().map(|c| store.put_config(c, Precondition::Absent))).await;
            assert!(results.iter().all(Result::is_ok), "{results:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_configs_survive_reopen_and_versions_carry_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let config = full_config(&config_name("durable"));
    let name = config.config.name().to_owned();
    let v1 = store.put_config(&config, Precondition::Absent).await.expect("create");
    let gone = stored_config(&config_name("gone"), "a: 1");
    let gone_v = store.put_config(&gone, Precondition::Absent).await.expect("create");
    store.delete_config(gone.config.name(), gone_v).await.expect("delete");
    store.close().await.expect("close");

    let store = EmbeddedStore::open(dir.path()).await.expect("reopen");
    assert_eq!(
        store.get_config(&name).await,
        Ok(Some(VersionedConfig { stored: config.clone(), version: v1 }))
    );
    assert_eq!(store.config_versions().await, Ok(vec![(name.clone(), v1)]));
    // the version counter survived: the deleted config, created again, gets no old version
    let again = store.put_config(&gone, Precondition::Absent).await.expect("create again");
    assert!(again != gone_v && again != v1, "{again:?}");
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_unreadable_config_bytes_are_corrupt_not_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = EmbeddedStore::open(dir.path()).await.expect("open");
    let good = stored_config(&config_name("good"), "a: 1");
    store.put_config(&good, Precondition::Absent).await.expect("create");
    store.close().await.expect("close");

    let mut tampered = to_json(&stored_config("tampered", "a: 1"));
    tampered["files"]["collector.yaml"]["body"] = "a: 2".into();
    let mut other_name = to_json(&stored_config("someone-else", "a: 1"));
    other_name["updated_at"] = 5.into();
    {
        let table: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("configs");
        let db = redb::Database::create(dir.path().join("agents.redb")).expect("raw open");
        let txn = db.begin_write().expect("begin");
        {
            let mut t = txn.open_table(table).expect("table");
            let value = |json: &[u8]| [&7u64.to_be_bytes()[..], json].concat();
            t.insert("short", [1u8, 2].as_slice()).expect("insert");
            t.insert("not-json", value(b"{\"schema_version\":").as_slice()).expect("insert");
            t.insert("tampered", value(tampered.to_string().as_bytes()).as_slice())
                .expect("insert");
            t.insert("renamed", value(other_name.to_string().as_bytes()).as_slice())
                .expect("insert");
        }
        txn.commit().expect("commit");
    }

    let store = EmbeddedStore::open(dir.path()).await.expect("reopen");
    for name in ["not-json", "tampered", "renamed", "short"] {
        let got = store.get_config(name).await;
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{name}: {got:?}");
    }
    assert!(matches!(store.config_versions().await, Err(StoreError::Corrupt(_))));
    let version = Version { seq_no: 7, primary_term: 1 };
    let replace =
        store.put_config(&stored_config("short", "a: 1"), Precondition::Version(version)).await;
    assert!(matches!(replace, Err(StoreError::Corrupt(_))), "{replace:?}");
    // a readable-enough one can be replaced at its version, which repairs it
    store
        .put_config(&stored_config("tampered", "a: 1"), Precondition::Version(version))
        .await
        .expect("replace of an unreadable config at its version");
    assert!(matches!(store.get_config("tampered").await, Ok(Some(_))));
    assert!(matches!(store.get_config(good.config.name()).await, Ok(Some(_))));
    store.close().await.expect("close");
}

/// Config writes go through the agents' writer, so a full disk is the same: `Unavailable`,
/// nothing applied, and writes resume by themselves once there is room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_config_writes_unavailable_and_applies_nothing() {
    let Some(disk) = SmallDisk::mount("8m") else { return };
    let store = EmbeddedStore::open(disk.path()).await.expect("open on the small disk");
    let kept = stored_config(&config_name("kept"), "a: 1");
    let kept_v = store.put_config(&kept, Precondition::Absent).await.expect("room on the disk");

    let filler = disk.fill();
    let big = |i: usize| {
        let body =
            format!("# {i}\n{}", "x".repeat(opamp_core::remote_config::MAX_CONFIG_BYTES - 16));
        stored_config(&config_name("big"), &body)
    };
    let mut refused = None;
    for i in 0..100 {
        let config = big(i);
        match store.put_config(&config, Precondition::Absent).await {
            Ok(_) => {}
            Err(err) => {
                assert!(
                    matches!(&err, StoreError::Unavailable(why) if why.contains("disk full")),
                    "a full disk is retryable and named: {err:?}"
                );
                refused = Some(config);
                break;
            }
        }
    }
    let refused = refused.expect("the full disk refused a config write");

    std::fs::remove_file(&filler).expect("free the disk");
    let started = std::time::Instant::now();
    loop {
        match store.get_config(refused.config.name()).await {
            Ok(got) => {
                assert_eq!(got, None, "a refused config write applied");
                break;
            }
            Err(err) if err.is_transient() => {
                assert!(started.elapsed() < Duration::from_secs(15), "no recovery: {err:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("after the disk freed up: {err:?}"),
        }
    }
    loop {
        match store.put_config(&refused, Precondition::Absent).await {
            Ok(_) => break,
            Err(err) if err.is_transient() => {
                assert!(started.elapsed() < Duration::from_secs(15), "no recovery: {err:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the retried config write: {err:?}"),
        }
    }
    assert_eq!(
        store.get_config(kept.config.name()).await,
        Ok(Some(VersionedConfig { stored: kept, version: kept_v }))
    );
    store.close().await.expect("close");
    drop(disk);
}

mod es {
    use super::*;
    use elasticsearch::http::request::JsonBody;
    use elasticsearch::indices::{IndicesDeleteParts, IndicesGetMappingParts, IndicesRefreshParts};
    use elasticsearch::{BulkParts, Elasticsearch, GetParts, IndexParts};
    use opamp_store::elasticsearch::{
        DEFAULT_FLEET_CONFIG_INDEX, DEFAULT_INDEX, ElasticsearchStore, EsConfig,
    };
    use serde_json::{Value, json};

    use opamp_store::conformance::test_es_url as es_url;

    /// Deletes `index` and the state index opampd derives from its name, if any.
    async fn delete_index(client: &Elasticsearch, index: &str) {
        let state = format!("{index}-opampd-state");
        let response = client
            .indices()
            .delete(IndicesDeleteParts::Index(&[index, &state]))
            .ignore_unavailable(true)
            .send()
            .await
            .unwrap();
        let status = response.status_code().as_u16();
        assert!(matches!(status, 200 | 404), "delete {index}: {status}");
    }

    /// The concrete indices an index or alias name resolves to.
    async fn resolve(client: &Elasticsearch, name: &str) -> Vec<String> {
        let path = format!("/_resolve/index/{name}?expand_wildcards=all");
        let response = client
            .send(
                elasticsearch::http::Method::Get,
                &path,
                Default::default(),
                Option::<&()>::None,
                Option::<String>::None,
                None,
            )
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let mut out: Vec<String> = Vec::new();
        for i in body["indices"].as_array().into_iter().flatten() {
            out.extend(i["name"].as_str().map(str::to_owned));
        }
        for a in body["aliases"].as_array().into_iter().flatten() {
            out.extend(
                a["indices"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|i| i.as_str().map(str::to_owned)),
            );
        }
        out.sort();
        out
    }

    async fn store_on(index: &str, config_index: Option<String>) -> Option<ElasticsearchStore> {
        let mut cfg = EsConfig::new(es_url()?);
        cfg.index = index.to_owned();
        cfg.config_index = config_index;
        Some(ElasticsearchStore::connect(cfg).await.expect("connect to test elasticsearch"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn config_suite_passes_on_a_fresh_index_with_the_derived_config_index() {
        let index = format!("opampd-test-{}", InstanceUid::new_v7());
        let Some(store) = store_on(&index, None).await else { return };
        let config_index = format!("{index}-opampd-configs");
        assert_eq!(store.config().config_index(), config_index);
        conformance::run_configs(&store).await;
        assert_eq!(store.config_versions().await, Ok(vec![]), "every case cleans up");

        // the config index has opampd's mapping; the agent index maps the counted fields
        let client = store.client();
        let response = client
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&[&config_index, &index]))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let configs = &body[&config_index]["mappings"];
        assert_eq!(configs["dynamic"], json!("false"), "{configs}");
        assert_eq!(configs["properties"]["name"]["type"], "keyword");
        assert_eq!(configs["properties"]["hash"]["type"], "keyword");
        assert_eq!(configs["properties"]["updated_at"]["type"], "date");
        assert_eq!(configs["properties"]["files"]["enabled"], false);
        let rc = &body[&index]["mappings"]["properties"]["opampd"]["properties"]["remote_config"];
        for field in ["desired_name", "desired_hash", "offered_hash", "reported_hash", "status"] {
            assert_eq!(rc["properties"][field]["type"], "keyword", "{field}: {rc}");
        }
        delete_index(client, &config_index).await;
        delete_index(client, &index).await;
    }

    /// On the `.fleet-agents` system index opampd cannot map the counted fields: the rollout
    /// counts search them as runtime fields. The config index is a plain one beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn config_suite_passes_beside_the_fleet_agents_system_index() {
        let config_index = format!("opampd-test-{}-configs", InstanceUid::new_v7());
        let Some(store) = store_on(DEFAULT_INDEX, Some(config_index.clone())).await else {
            return;
        };
        conformance::run_configs(&store).await;
        delete_index(store.client(), &config_index).await;
    }

    /// A config index in the `.fleet-agents*` system index pattern (what the default was before
    /// it was measured; an operator may still name one): Elasticsearch refuses to create it
    /// explicitly, and a first write would create it with the `.fleet-agents` alias, breaking
    /// every read of an agent by id. So config writes are refused while it does not exist, and
    /// `.fleet-agents` stays one index. The default next to `.fleet-agents` is outside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_config_index_only_a_write_could_create_is_not_created() {
        let Some(default) = store_on(DEFAULT_INDEX, None).await else { return };
        assert_eq!(default.config().config_index(), DEFAULT_FLEET_CONFIG_INDEX);
        let Some(store) =
            store_on(DEFAULT_INDEX, Some(".fleet-agents-opampd-configs".to_owned())).await
        else {
            return;
        };
        let config_index = store.config().config_index();
        let client = store.client();
        assert_eq!(
            resolve(client, &config_index).await,
            Vec::<String>::new(),
            "{config_index} exists on the test node: it carries the .fleet-agents alias and \
             breaks .fleet-agents; restart the node (scripts/elasticsearch.sh stop && start)"
        );

        assert_eq!(store.config_versions().await, Ok(vec![]));
        let name = config_name("refused");
        assert_eq!(store.get_config(&name).await, Ok(None));
        let refused = store.put_config(&stored_config(&name, "a: 1"), Precondition::Absent).await;
        assert!(
            matches!(&refused, Err(StoreError::Backend(why)) if why.contains(&config_index)),
            "{refused:?}"
        );
        let version = Version { seq_no: 0, primary_term: 1 };
        let update =
            store.put_config(&stored_config(&name, "a: 1"), Precondition::Version(version)).await;
        assert!(matches!(update, Err(StoreError::Backend(_))), "{update:?}");
        assert_eq!(store.delete_config(&name, version).await, Err(StoreError::Conflict));

        assert_eq!(
            resolve(client, &config_index).await,
            Vec::<String>::new(),
            "created by a write"
        );
        assert_eq!(resolve(client, DEFAULT_INDEX).await, [".fleet-agents-7"]);
        let record = minimal_record(InstanceUid::new_v7());
        let v = store.put(&record, Precondition::Absent).await.expect("agents still written");
        assert_eq!(store.get(record.instance_uid).await.unwrap().unwrap().version, v);
    }

    /// What a write that created the config index from the agents' system index descriptor
    /// leaves behind, rebuilt with plain indices: the agent index is an alias over the real agent
    /// index and the config index. opampd refuses such a config index.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_config_index_behind_the_agent_alias_is_refused() {
        let Some(url) = es_url() else { return };
        let alias = format!("opampd-test-{}", InstanceUid::new_v7());
        let (agents, configs) = (format!("{alias}-agents"), format!("{alias}-configs"));
        let mut cfg = EsConfig::new(url);
        cfg.index = agents.clone();
        cfg.config_index = Some(configs.clone());
        let setup = ElasticsearchStore::connect(cfg).await.expect("connect");
        setup.config_versions().await.expect("creates the config index");
        let client = setup.client();
        let response = client
            .indices()
            .update_aliases()
            .body(json!({ "actions": [
                { "add": { "index": agents, "alias": alias, "is_write_index": true } },
                { "add": { "index": configs, "alias": alias } },
            ] }))
            .send()
            .await
            .unwrap();
        assert!(response.status_code().is_success());

        let store = store_on(&alias, Some(configs.clone())).await.expect("store on the alias");
        let got = store.config_versions().await;
        assert!(
            matches!(&got, Err(StoreError::Backend(why)) if why.contains("behind") && why.contains(&configs)),
            "{got:?}"
        );
        let put =
            store.put_config(&stored_config(&config_name("x"), "a: 1"), Precondition::Absent).await;
        assert!(matches!(put, Err(StoreError::Backend(_))), "{put:?}");
        delete_index(client, &configs).await;
        delete_index(client, &agents).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn elasticsearch_holds_at_most_max_configs() {
        let index = format!("opampd-test-{}", InstanceUid::new_v7());
        let Some(store) = store_on(&index, None).await else { return };
        let config_index = store.config().config_index();
        the_config_bound_holds(&store, async |store, prefix| {
            // loaded raw in one bulk: a thousand creates with a refresh each would be slow
            store.config_versions().await.expect("sets the config index up");
            let mut lines = Vec::new();
            for i in 0..MAX_CONFIGS {
                let name = format!("{prefix}-{i:04}");
                lines.push(json!({ "create": { "_id": name } }).into());
                lines.push(JsonBody::new(to_json(&stored_config(&name, "a: 1"))));
            }
            let response = store
                .client()
                .bulk(BulkParts::Index(&config_index))
                .refresh(elasticsearch::params::Refresh::True)
                .body(lines)
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["errors"], false, "bulk load of configs");
        })
        .await;
        delete_index(store.client(), &config_index).await;
        delete_index(store.client(), &index).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn config_documents_are_plain_json_and_a_tampered_one_reads_as_corrupt() {
        let index = format!("opampd-test-{}", InstanceUid::new_v7());
        let Some(store) = store_on(&index, None).await else { return };
        let config_index = store.config().config_index();
        let client = store.client();
        let config = full_config(&config_name("plain"));
        let name = config.config.name().to_owned();
        store.put_config(&config, Precondition::Absent).await.expect("create");
        let doc: Value = client
            .get(GetParts::IndexId(&config_index, &name))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["_source"], to_json(&config));

        let mut source = doc["_source"].clone();
        source["files"]["extra.json"]["body"] = json!("{\"changed\": true}");
        let response = client
            .index(IndexParts::IndexId(&config_index, &name))
            .body(source)
            .send()
            .await
            .unwrap();
        assert!(response.status_code().is_success());
        let got = store.get_config(&name).await;
        assert!(matches!(got, Err(StoreError::Corrupt(_))), "{got:?}");

        // a document under another name than its id
        let other = config_name("other");
        let response = client
            .index(IndexParts::IndexId(&config_index, &other))
            .body(to_json(&config))
            .send()
            .await
            .unwrap();
        assert!(response.status_code().is_success());
        assert!(matches!(store.get_config(&other).await, Err(StoreError::Corrupt(_))));
        delete_index(client, &config_index).await;
        delete_index(client, &index).await;
    }

    /// The agent documents carry `opampd.remote_config`, which a plain search filters on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_documents_show_desired_and_reported_config() {
        let index = format!("opampd-test-{}", InstanceUid::new_v7());
        let Some(store) = store_on(&index, None).await else { return };
        let client = store.client();
        let record = conformance::full_record(InstanceUid::new_v7());
        store.put(&record, Precondition::Absent).await.expect("create");
        store.flush().await.expect("the agent document is written");
        client.indices().refresh(IndicesRefreshParts::Index(&[&index])).send().await.unwrap();
        let response = client
            .search(elasticsearch::SearchParts::Index(&[&index]))
            .body(json!({ "query": { "bool": { "filter": [
                { "term": { "opampd.remote_config.desired_name": "collectors-ü" } },
                { "term": { "opampd.remote_config.status": "failed" } },
                { "term": { "opampd.remote_config.reported_hash": "010203" } },
                { "term": { "opampd.remote_config.offered_hash": "08".repeat(32) } },
            ] } } }))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let hits = body["hits"]["hits"].as_array().expect("hits");
        assert_eq!(hits.len(), 1, "{body}");
        assert_eq!(hits[0]["_source"]["opampd"]["remote_config"]["error"], "bad yaml");
        delete_index(client, &index).await;
    }
}

mod secured {
    use super::*;
    use futures::FutureExt;
    use opamp_store::elasticsearch::{
        DEFAULT_FLEET_CONFIG_INDEX, DEFAULT_INDEX, ElasticsearchStore,
    };
    use opamp_store::secured_cluster::SecuredCluster;
    use std::panic::AssertUnwindSafe;

    /// With fleet-server's service token a config index in the `.fleet-agents*` system index
    /// pattern (`.fleet-agents-opampd-configs`) cannot be created by opampd and must not be
    /// created by a write: that would put the `.fleet-agents` alias on it. On a node where it
    /// does not exist, config writes are refused with the reason; on a node where an earlier
    /// write did create it, it is found behind `.fleet-agents` and refused as a config index.
    /// Either way opampd changes nothing about what `.fleet-agents` resolves to.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_config_index_under_fleet_agents_is_never_created_or_used() {
        let Some(cluster) = SecuredCluster::connect().await else { return };
        cluster
            .run(Duration::from_secs(60), async |cluster| {
                let before = cluster.resolve(DEFAULT_INDEX).await;
                let mut cfg = cluster.es_config(DEFAULT_INDEX);
                assert_eq!(cfg.config_index(), DEFAULT_FLEET_CONFIG_INDEX, "not the default");
                cfg.config_index = Some(".fleet-agents-opampd-configs".to_owned());
                let store =
                    ElasticsearchStore::connect(cfg).await.expect("connect with the service token");
                let config_index = store.config().config_index();
                let name = config_name("refused");
                let put =
                    store.put_config(&stored_config(&name, "a: 1"), Precondition::Absent).await;
                let refusal = match put {
                    Err(StoreError::Backend(why)) => why,
                    other => panic!("a config write on the default config index: {other:?}"),
                };
                assert!(refusal.contains(&config_index), "{refusal}");
                if before.contains(&config_index) {
                    eprintln!(
                        "NOTE: the secured node's {DEFAULT_INDEX} alias includes {config_index} \
                         (created by an earlier write); opampd refuses it: {refusal}"
                    );
                    assert!(refusal.contains("behind"), "{refusal}");
                    assert!(matches!(store.config_versions().await, Err(StoreError::Backend(_))));
                } else {
                    assert!(refusal.contains("does not exist"), "{refusal}");
                    assert_eq!(store.config_versions().await, Ok(vec![]));
                    assert_eq!(store.get_config(&name).await, Ok(None));
                    let record = minimal_record(InstanceUid::new_v7());
                    store.put(&record, Precondition::Absent).await.expect("agents still written");
                    assert!(store.get(record.instance_uid).await.expect("and read").is_some());
                    assert!(!cluster.resolve(DEFAULT_INDEX).await.contains(&config_index));
                }
                assert_eq!(
                    cluster.resolve(DEFAULT_INDEX).await.contains(&config_index),
                    before.contains(&config_index)
                );
                assert!(
                    cluster.resolve(DEFAULT_INDEX).await.len() <= before.len().max(1),
                    "opampd put no index behind {DEFAULT_INDEX}"
                );
            })
            .await;
    }

    /// What works with the service token: a `.fleet-policies-*` index outside the
    /// `.fleet-policies-[0-9]+*` system pattern, which the token may create (opampd does, with its
    /// mapping, no alias) and read, write, search and count. The whole config suite passes on it,
    /// with the rollout counts searching `.fleet-agents` through runtime fields.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_config_suite_passes_with_the_service_token_on_a_fleet_policies_index() {
        let Some(cluster) = SecuredCluster::connect().await else { return };
        cluster
            .run(Duration::from_secs(120), async |cluster| {
                let config_index = format!(".fleet-policies-opampd-test-{}", InstanceUid::new_v7());
                let mut cfg = cluster.es_config(DEFAULT_INDEX);
                cfg.config_index = Some(config_index.clone());
                let store = ElasticsearchStore::connect(cfg).await.expect("connect");
                let outcome = AssertUnwindSafe(async {
                    conformance::run_configs(&store).await;
                    let resolved = cluster.resolve(&config_index).await;
                    assert_eq!(resolved, std::slice::from_ref(&config_index), "no alias");
                })
                .catch_unwind()
                .await;
                cluster.delete_index(&config_index).await;
                if let Err(panic) = outcome {
                    std::panic::resume_unwind(panic);
                }
            })
            .await;
    }
}
