//! Deleting old history (issue 23, `flow db clean` and `[retention]`): [`RetentionStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Result;

/// Which runs are old enough to go: ended (success or failed) and queued before `before`, of
/// one DAG when given, and not the training run of a model version (the registry keeps its
/// lineage). Ordered by run id; `after` pages through them.
#[derive(Debug, Clone)]
pub struct OldRuns {
    pub before: DateTime<Utc>,
    pub dag_id: Option<String>,
    pub after: Option<String>,
    pub limit: i64,
}

/// A run to delete, with what names its log folder.
#[derive(Debug, Clone, PartialEq)]
pub struct OldRun {
    pub run_id: String,
    pub dag_id: String,
}

#[async_trait]
pub trait RetentionStore: Send + Sync {
    async fn old_runs(&self, q: &OldRuns) -> Result<Vec<OldRun>>;
    /// Deletes the runs with their task instances, tries, alerts, triggering events and
    /// idempotency keys, in one short transaction; how many runs went.
    async fn delete_runs(&self, run_ids: &[String]) -> Result<u64>;
    /// The DAG versions no run uses that are not their DAG's current one (of one DAG when
    /// given); deleted unless `dry_run`. How many.
    async fn unused_versions(&self, dag_id: Option<&str>, dry_run: bool) -> Result<u64>;
    /// Dataset events recorded before `before` that no kept run took and no DAG has queued;
    /// deleted unless `dry_run`. How many.
    async fn old_dataset_events(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64>;
}
