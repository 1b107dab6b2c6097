//! Opening and closing the configured agent store. The only place opampd names a concrete
//! backend; every other module sees `Arc<dyn AgentStore>`.

use std::sync::Arc;
use std::time::Duration;

use opamp_store::cache::{CacheConfig, CachedStore};
use opamp_store::elasticsearch::{self as es, ElasticsearchStore};
use opamp_store::embedded::EmbeddedStore;
use opamp_store::{AgentStore, StoreError};

use crate::config::{Config, EsAuth, EsConfig, StoreConfig};

/// How long [`Store::close`] waits for the last handle (a draining connection) to go away.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error("opening the embedded store in {dir}: {source}")]
    Embedded { dir: String, source: StoreError },
    #[error("setting up the elasticsearch store: {0}")]
    Elasticsearch(StoreError),
}

/// The opened backend, kept concrete so it can be closed properly.
#[derive(Debug)]
pub enum Store {
    /// Local redb file. Not cached: its reads come from redb's own page cache, and a moka
    /// layer would only add a copy.
    Embedded(Arc<EmbeddedStore>),
    /// Shared Elasticsearch behind the moka read cache (the cache saves a realtime GET per
    /// message; a stale entry is caught by the CAS and refreshed).
    Elasticsearch(Arc<CachedStore<ElasticsearchStore>>),
}

impl Store {
    /// Opens the backend `config` names. Elasticsearch is not contacted here, so a server can
    /// start while the cluster is down; `/readyz` reports it until it answers.
    pub async fn open(config: &Config) -> Result<Self, OpenStoreError> {
        match &config.store {
            StoreConfig::Embedded { data_dir } => EmbeddedStore::open(data_dir)
                .await
                .map(|s| Self::Embedded(Arc::new(s)))
                .map_err(|source| OpenStoreError::Embedded {
                    dir: data_dir.display().to_string(),
                    source,
                }),
            StoreConfig::Elasticsearch(cfg) => {
                let store = ElasticsearchStore::new(es_config(cfg))
                    .map_err(OpenStoreError::Elasticsearch)?;
                let cache =
                    CacheConfig { ttl: config.cache_ttl, max_bytes: config.cache_max_bytes };
                Ok(Self::Elasticsearch(Arc::new(CachedStore::new(store, cache))))
            }
        }
    }

    /// A shared handle for the server.
    pub fn shared(&self) -> Arc<dyn AgentStore> {
        match self {
            Self::Embedded(s) => s.clone(),
            Self::Elasticsearch(s) => s.clone(),
        }
    }

    /// Commits what is queued and releases the backend (the embedded store's file lock, so
    /// the same directory can be opened again). Call after the server stopped.
    pub async fn close(self) -> Result<(), StoreError> {
        match self {
            Self::Embedded(mut s) => {
                // connection tasks aborted at the end of the grace period drop their handles
                // a moment later; wait for them rather than leaving the file locked
                let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
                loop {
                    match Arc::try_unwrap(s) {
                        Ok(store) => return store.close().await,
                        Err(shared) if tokio::time::Instant::now() < deadline => {
                            s = shared;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        Err(shared) => {
                            tracing::warn!("embedded store still in use at close; flushing only");
                            return shared.flush().await;
                        }
                    }
                }
            }
            Self::Elasticsearch(s) => s.flush().await,
        }
    }
}

/// Maps opampd's validated settings onto the backend's, keeping its batching defaults.
fn es_config(cfg: &EsConfig) -> es::EsConfig {
    let mut out = es::EsConfig::new(cfg.url.clone());
    out.index = cfg.index.clone();
    let b = cfg.batching;
    out.bulk_max_items = b.bulk_max_items;
    out.bulk_max_wait = b.bulk_max_wait;
    out.bulks_in_flight = b.bulks_in_flight;
    out.queue_capacity = b.write_queue;
    out.mget_max_items = b.mget_max_items;
    out.mget_max_wait = b.mget_max_wait;
    out.auth = match &cfg.auth {
        EsAuth::None => es::EsAuth::None,
        // "id:key" is the raw pair; anything else is the base64 form Kibana shows as "encoded"
        EsAuth::ApiKey(key) => match key.expose().split_once(':') {
            Some((id, key)) => es::EsAuth::ApiKey { id: id.to_owned(), key: key.to_owned() },
            None => es::EsAuth::EncodedApiKey(key.expose().to_owned()),
        },
        EsAuth::Basic { username, password } => {
            es::EsAuth::Basic { user: username.clone(), password: password.expose().to_owned() }
        }
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{EsBatching, Secret};

    fn es(auth: EsAuth) -> es::EsConfig {
        es_config(&EsConfig {
            url: "http://es:9200".parse().unwrap(),
            index: "agents".into(),
            auth,
            batching: EsBatching::default(),
        })
    }

    #[test]
    fn es_settings_map_onto_the_backend() {
        let cfg = es(EsAuth::None);
        assert_eq!(cfg.index, "agents");
        assert_eq!(cfg.auth, es::EsAuth::None);
        assert_eq!(
            es(EsAuth::ApiKey(Secret::new("id:key"))).auth,
            es::EsAuth::ApiKey { id: "id".into(), key: "key".into() }
        );
        assert_eq!(
            es(EsAuth::ApiKey(Secret::new("ZW5jb2RlZA=="))).auth,
            es::EsAuth::EncodedApiKey("ZW5jb2RlZA==".into())
        );
        assert_eq!(
            es(EsAuth::Basic { username: "u".into(), password: Secret::new("p") }).auth,
            es::EsAuth::Basic { user: "u".into(), password: "p".into() }
        );
    }

    #[test]
    fn batching_flags_reach_the_backend_and_default_to_its_defaults() {
        let backend = es::EsConfig::new("http://es:9200".parse().unwrap());
        let cfg = es(EsAuth::None);
        assert_eq!(
            (cfg.bulk_max_items, cfg.bulk_max_wait, cfg.bulks_in_flight, cfg.queue_capacity),
            (
                backend.bulk_max_items,
                backend.bulk_max_wait,
                backend.bulks_in_flight,
                backend.queue_capacity
            )
        );
        assert_eq!(
            (cfg.mget_max_items, cfg.mget_max_wait),
            (backend.mget_max_items, backend.mget_max_wait)
        );
        let batching = EsBatching {
            bulk_max_items: 7,
            bulk_max_wait: Duration::from_millis(8),
            bulks_in_flight: 9,
            write_queue: 10,
            mget_max_items: 11,
            mget_max_wait: Duration::from_millis(12),
        };
        let cfg = es_config(&EsConfig {
            url: "http://es:9200".parse().unwrap(),
            index: "agents".into(),
            auth: EsAuth::None,
            batching,
        });
        assert_eq!(
            (cfg.bulk_max_items, cfg.bulk_max_wait, cfg.bulks_in_flight, cfg.queue_capacity),
            (7, Duration::from_millis(8), 9, 10)
        );
        assert_eq!((cfg.mget_max_items, cfg.mget_max_wait), (11, Duration::from_millis(12)));
    }
}
