//! Opening the configured agent store. The only place opampd names a concrete backend; every
//! other module sees `Arc<dyn AgentStore>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use opamp_core::AgentRecord;
use opamp_proto::InstanceUid;
use opamp_store::{AgentStore, Precondition, StoreError, Version, Versioned};

use crate::config::{Config, StoreConfig};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoreError {
    #[error("opening the embedded store: {0}")]
    Embedded(String),
    #[error("opening the elasticsearch store: {0}")]
    Elasticsearch(String),
}

/// Opens the backend `config` names.
pub async fn open_store(config: &Config) -> Result<Arc<dyn AgentStore>, OpenStoreError> {
    match &config.store {
        // TEMPORARY until opamp_store::embedded lands
        StoreConfig::Embedded { .. } => Ok(Arc::new(MemStore::default())),
        StoreConfig::Elasticsearch(_) => Err(OpenStoreError::Elasticsearch("not yet".into())),
    }
}

#[derive(Debug, Default)]
struct MemStore(Mutex<HashMap<InstanceUid, Versioned>>);

#[async_trait]
impl AgentStore for MemStore {
    async fn get(&self, uid: InstanceUid) -> Result<Option<Versioned>, StoreError> {
        Ok(self.0.lock().unwrap().get(&uid).cloned())
    }
    async fn put(&self, record: &AgentRecord, precondition: Precondition) -> Result<Version, StoreError> {
        let mut m = self.0.lock().unwrap();
        let cur = m.get(&record.instance_uid).map(|v| v.version);
        let next = match (cur, precondition) {
            (None, Precondition::Absent) => Version { seq_no: 1, primary_term: 1 },
            (Some(c), Precondition::Version(v)) if c == v => Version { seq_no: c.seq_no + 1, primary_term: 1 },
            _ => return Err(StoreError::Conflict),
        };
        m.insert(record.instance_uid, Versioned { record: record.clone(), version: next });
        Ok(next)
    }
    async fn ready(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn list(&self, _after: Option<InstanceUid>, _limit: usize) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(vec![])
    }
}
