//! What the planner reads of a run and the decisions it writes back: [`PlanStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::Result;
use crate::plan::{Decision, InstanceCount, TiSnapshot};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanRows {
    pub rows: Vec<TiSnapshot>,
    /// The instances not in `rows`, counted per task and state.
    pub counts: Vec<InstanceCount>,
}

/// One instance's output.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskOutput {
    pub task_id: String,
    pub map_index: i64,
    pub output: Option<Json>,
}

/// What [`PlanStore::apply`] changed that its caller acts on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// A `FinishRun` ended the run. False when another scheduler, planning the same run at the
    /// same moment, ended it first: only one of them posts the run's webhook.
    pub finished: bool,
}

#[async_trait]
pub trait PlanStore: Send + Sync {
    /// What the planner needs of a run, cheap enough to read after every state change of a run
    /// with thousands of mapped instances: a row for every unmapped instance, every instance the
    /// planner may act on (`scheduled`, `up_for_retry`) and every instance of `full_tasks` (with
    /// its output); the other mapped instances only counted per task and state.
    async fn plan_rows(&self, run_id: &str, full_tasks: &[String]) -> Result<PlanRows>;
    /// The output of every instance of the given tasks.
    async fn outputs(&self, run_id: &str, task_ids: &[String]) -> Result<Vec<TaskOutput>>;
    /// Applies a plan's decisions in one transaction, each guarded by the state it expects.
    async fn apply(
        &self,
        run_id: &str,
        decisions: &[Decision],
        now: DateTime<Utc>,
    ) -> Result<Applied>;
}
