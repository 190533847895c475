//! The DAGs as the scheduler last loaded them: [`DagStore`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::Result;
use crate::state::RunState;

/// A DAG as the scheduler last loaded it.
#[derive(Debug, Clone, PartialEq)]
pub struct DagRecord {
    pub dag_id: String,
    pub fileloc: String,
    pub version: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub tags: Vec<String>,
    /// The declared params, as JSON (for forms and the API).
    pub params: Json,
    /// The initial pause state; an existing DAG keeps the state a user gave it.
    pub paused: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub source: String,
    /// The dataset URIs the DAG is scheduled on.
    pub consumes: Vec<String>,
    pub produces: Vec<ProducedBy>,
}

/// A task that produces a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct ProducedBy {
    pub task_id: String,
    pub uri: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DagRow {
    pub dag_id: String,
    pub fileloc: String,
    pub version: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub tags: Vec<String>,
    pub params: Json,
    pub paused: bool,
    pub active: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run: Option<LastRun>,
}

/// A DAG's most recently queued run.
#[derive(Debug, Clone, PartialEq)]
pub struct LastRun {
    pub run_id: String,
    pub state: RunState,
}

/// The file a DAG version was loaded from, and its text then.
#[derive(Debug, Clone, PartialEq)]
pub struct DagSource {
    pub fileloc: String,
    pub source: String,
    /// When flow first recorded this version.
    pub seen_at: DateTime<Utc>,
}

#[async_trait]
pub trait DagStore: Send + Sync {
    /// Records what loading the DAGs folder found: `changed` DAGs are inserted with their initial
    /// pause state or updated (keeping the pause state a user gave them), their versions kept for
    /// the runs that start on them; DAGs not in `present` are marked inactive; the import errors
    /// are replaced.
    async fn sync_dags(
        &self,
        changed: &[DagRecord],
        present: &[String],
        import_errors: &BTreeMap<String, Vec<String>>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn import_errors(&self) -> Result<BTreeMap<String, Vec<String>>>;
    async fn dag_source(&self, dag_id: &str, version: &str) -> Result<Option<DagSource>>;
    async fn list_dags(&self) -> Result<Vec<DagRow>>;
    async fn get_dag(&self, dag_id: &str) -> Result<Option<DagRow>>;
    /// Returns false when the DAG is unknown.
    async fn set_paused(&self, dag_id: &str, paused: bool) -> Result<bool>;
    async fn set_next_run_at(&self, dag_id: &str, at: Option<DateTime<Utc>>) -> Result<()>;
    /// Each active DAG's pause flag.
    async fn paused_flags(&self) -> Result<BTreeMap<String, bool>>;
}
