//! What the planner reads of a run and the decisions it writes back: [`PlanStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::Result;
use crate::plan::{Decision, TiSnapshot};
use crate::state::TaskState;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanRows {
    pub rows: Vec<TiSnapshot>,
    /// (task id, state, how many) of the instances not in `rows`.
    pub counts: Vec<(String, TaskState, usize)>,
}

#[async_trait]
pub trait PlanStore: Send + Sync {
    /// What the planner needs of a run, cheap enough to read after every state change of a run
    /// with thousands of mapped instances: a row for every unmapped instance, every instance the
    /// planner may act on (`scheduled`, `up_for_retry`) and every instance of `full_tasks` (with
    /// its output); the other mapped instances only counted per task and state.
    async fn plan_rows(&self, run_id: &str, full_tasks: &[String]) -> Result<PlanRows>;
    /// (task id, map index, output) of every instance of the given tasks.
    async fn outputs(
        &self,
        run_id: &str,
        task_ids: &[String],
    ) -> Result<Vec<(String, i64, Option<Json>)>>;
    /// Applies a plan's decisions in one transaction, each guarded by the state it expects.
    async fn apply(&self, run_id: &str, decisions: &[Decision], now: DateTime<Utc>) -> Result<()>;
}
