//! Opening and closing the configured agent store. The only place opampd names a concrete
//! backend; every other module sees `Arc<dyn Backend>` (agents and remote configs).

use std::sync::Arc;
use std::time::Duration;

use opamp_store::cache::CachedStore;
use opamp_store::elasticsearch::ElasticsearchStore;
use opamp_store::embedded::EmbeddedStore;
use opamp_store::{AgentStore, Backend, StoreError};

use crate::config::{Config, StoreConfig};

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
    /// Opens the backend `config` names. Elasticsearch is not waited for here, so a server can
    /// start while the cluster is down: the store sets its index up in the background (retried
    /// until it works), `/readyz` is 503 until the index's primary shard is active, and agents
    /// arriving before that wait for the set-up or get 503 + Retry-After.
    pub async fn open(config: &Config) -> Result<Self, OpenStoreError> {
        // the backend registers its metric series when built: the recorder must exist by then
        let _ = crate::telemetry::metrics_handle();
        match &config.store {
            StoreConfig::Embedded { data_dir } => EmbeddedStore::open(data_dir)
                .await
                .map(|s| Self::Embedded(Arc::new(s)))
                .map_err(|source| OpenStoreError::Embedded {
                    dir: data_dir.display().to_string(),
                    source,
                }),
            StoreConfig::Elasticsearch { es, cache } => {
                let store = ElasticsearchStore::new(es.as_ref().clone())
                    .map_err(OpenStoreError::Elasticsearch)?;
                Ok(Self::Elasticsearch(Arc::new(CachedStore::new(store, *cache))))
            }
        }
    }

    /// A shared handle for the server.
    pub fn shared(&self) -> Arc<dyn Backend> {
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
