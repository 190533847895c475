//! The DAGs a process knows: the folder as it is now, and every older version a run still names.
//!
//! A run keeps the DAG version it started on, so the scheduler and the server look DAGs up by
//! (dag_id, version): the current file when it is that version, else the source the database
//! stored when the version was first seen, parsed once and kept. Lookups take `&self`, so the
//! server's handlers share one catalog without holding a lock across a database read.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value as Json;

use super::EngineError;
use crate::dag::load::{Loaded, load_folder};
use crate::dag::{Dag, ParseOptions, parse_dag};
use crate::operator::Registry;
use crate::store::{DagRecord, Store};
use crate::time::now;

/// A DAG version's identity in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VersionKey {
    dag_id: String,
    version: String,
}

impl VersionKey {
    fn of(dag: &Dag) -> VersionKey {
        VersionKey {
            dag_id: dag.id.clone(),
            version: dag.version.clone(),
        }
    }
}

/// What a reload found, beside what it loaded: the DAGs whose file or version changed.
pub struct Reloaded {
    pub loaded: Loaded,
    pub changed: Vec<String>,
}

pub struct DagCatalog {
    store: Arc<dyn Store>,
    registry: Arc<Registry>,
    /// dag_id -> the DAG as its file says now.
    current: HashMap<String, Arc<Dag>>,
    /// Every version parsed so far, the current ones included. Locked only around map reads and
    /// writes, never across a database call.
    versions: Mutex<HashMap<VersionKey, Arc<Dag>>>,
}

impl DagCatalog {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>) -> DagCatalog {
        DagCatalog {
            store,
            registry,
            current: HashMap::new(),
            versions: Mutex::new(HashMap::new()),
        }
    }

    /// The database the catalog reads stored versions from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// How DAG files are parsed everywhere the engine parses them.
    pub fn parse_options() -> ParseOptions {
        ParseOptions::default()
    }

    /// The DAGs of the folder as last loaded.
    pub fn current(&self) -> impl Iterator<Item = &Arc<Dag>> {
        self.current.values()
    }

    pub fn get(&self, dag_id: &str) -> Option<&Arc<Dag>> {
        self.current.get(dag_id)
    }

    /// Loads `folder` and records what it found in the database; a broken file is recorded
    /// with its problems and skipped.
    pub async fn reload(&mut self, folder: &Path) -> Result<Reloaded, EngineError> {
        let loaded = self.load(folder.to_path_buf()).await?;
        let mut changed = Vec::new();
        let mut records = Vec::new();
        let mut current = HashMap::new();
        for dag in &loaded.dags {
            let dag = Arc::new(dag.clone());
            let same = self
                .current
                .get(&dag.id)
                .is_some_and(|old| old.version == dag.version && old.path == dag.path);
            if !same {
                records.push(record(&dag));
                changed.push(dag.id.clone());
            }
            self.remember(dag.clone());
            current.insert(dag.id.clone(), dag);
        }
        let present: Vec<String> = current.keys().cloned().collect();
        let errors = error_texts(&loaded);
        for p in errors.values().flatten() {
            tracing::warn!("{p}");
        }
        self.store
            .sync_dags(&records, &present, &errors, now())
            .await?;
        self.current = current;
        Ok(Reloaded { loaded, changed })
    }

    /// Parsing a folder of files is blocking work: it runs off the async threads.
    async fn load(&self, folder: PathBuf) -> Result<Loaded, EngineError> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || {
            if !folder.exists() {
                return Ok(Loaded::default());
            }
            load_folder(&folder, registry.as_ref(), &DagCatalog::parse_options()).map_err(
                |source| EngineError::DagsFolder {
                    folder: folder.clone(),
                    source,
                },
            )
        })
        .await
        .map_err(EngineError::Panicked)?
    }

    fn remember(&self, dag: Arc<Dag>) {
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(VersionKey::of(&dag), dag);
    }

    /// The DAG a run started on: the current file if it is that version, else the stored
    /// source. None when the version is not stored or no longer parses (logged).
    pub async fn version(
        &self,
        dag_id: &str,
        version: &str,
    ) -> Result<Option<Arc<Dag>>, EngineError> {
        let key = VersionKey {
            dag_id: dag_id.to_string(),
            version: version.to_string(),
        };
        let cached = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        let Some(stored) = self.store.dag_source(dag_id, version).await? else {
            return Ok(None);
        };
        match parse_dag(
            Path::new(&stored.fileloc),
            &stored.source,
            self.registry.as_ref(),
            &DagCatalog::parse_options(),
        ) {
            Ok(dag) => {
                let dag = Arc::new(dag);
                self.remember(dag.clone());
                Ok(Some(dag))
            }
            Err(problems) => {
                tracing::error!(
                    "stored version {version} of DAG {dag_id} no longer parses: {}",
                    problems.first().map(|p| p.message.as_str()).unwrap_or("")
                );
                Ok(None)
            }
        }
    }
}

fn error_texts(loaded: &Loaded) -> BTreeMap<String, Vec<String>> {
    loaded
        .errors
        .iter()
        .map(|(p, probs)| {
            (
                p.display().to_string(),
                probs.iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect()
}

/// The row the database keeps of a DAG version: what the pages and the API list.
fn record(dag: &Dag) -> DagRecord {
    DagRecord {
        dag_id: dag.id.clone(),
        fileloc: dag.path.display().to_string(),
        version: dag.version.clone(),
        description: dag.description.clone(),
        schedule: dag.schedule_display(),
        timezone: dag.timezone.name().to_string(),
        tags: dag.tags.clone(),
        params: Json::Array(
            dag.params
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name,
                        "type": p.kind.as_str(),
                        "default": p.default,
                        "description": p.description,
                    })
                })
                .collect(),
        ),
        paused: dag.paused,
        next_run_at: None,
        source: dag.source.to_string(),
        consumes: dag.datasets.as_ref().map(|d| d.uris()).unwrap_or_default(),
        produces: dag
            .tasks
            .iter()
            .flat_map(|t| {
                t.produces.iter().map(|uri| crate::store::ProducedBy {
                    task_id: t.id.clone(),
                    uri: uri.clone(),
                })
            })
            .collect(),
    }
}
