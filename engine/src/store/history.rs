//! Finished history in bulk: importing it, and the grid's counts over it: [`HistoryStore`].

use async_trait::async_trait;
use serde_json::Value as Json;

use super::{Result, RunRow, TryRow};
use crate::state::TaskState;

/// A finished run written whole into the history ([`HistoryStore::import_history`]): for
/// importing runs recorded elsewhere, and for seeding the UI benchmark's years of history.
#[derive(Debug, Clone)]
pub struct HistoryRun {
    pub run: RunRow,
    pub tasks: Vec<HistoryTask>,
}

#[derive(Debug, Clone)]
pub struct HistoryTask {
    pub task_id: String,
    pub map_index: i64,
    pub state: TaskState,
    pub output: Option<Json>,
    /// Oldest first; the instance's try number, start and end are the last try's.
    pub tries: Vec<TryRow>,
}

/// The instances of one task in one run that are in one state: [`HistoryStore::grid_counts`].
#[derive(Debug, Clone, PartialEq)]
pub struct TiCount {
    pub run_id: String,
    pub task_id: String,
    pub state: TaskState,
    pub count: i64,
    /// `UNMAPPED` for the one instance of an unmapped task (or a map not yet expanded).
    pub max_map_index: i64,
    pub max_try_number: i64,
}

#[async_trait]
pub trait HistoryStore: Send + Sync {
    /// Writes finished runs with their task instances and tries, in one transaction per call;
    /// a run whose id exists already is skipped. Returns how many runs were written.
    async fn import_history(&self, runs: &[HistoryRun]) -> Result<u64>;
    /// Refreshes the planner's statistics after a bulk import. PostgreSQL estimates from them
    /// (until autovacuum's next pass a freshly loaded history reads as a few hundred distinct
    /// runs, and the grid's `run_id IN (...)` turns into a scan); SQLite plans these queries from
    /// the indexes alone, so there it does nothing.
    async fn analyze(&self) -> Result<()>;
    /// What the grid of the DAG page shows of a page of runs, in one query whatever the number of
    /// mapped instances: per run, task and state, how many instances and their highest map index
    /// and try number. Ordered by run id, task id, state.
    async fn grid_counts(&self, run_ids: &[String]) -> Result<Vec<TiCount>>;
}
