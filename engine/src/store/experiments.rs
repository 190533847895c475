//! Experiments as records (migration 0016): [`ExperimentStore`].
//!
//! The `experiment` operator reads its experiment's record before a look and records the look
//! with a compare-and-set on the number of looks, so two runs that look at once cannot both
//! extend the same history; a concluded or stopped experiment is never looked at again.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentState {
    Running,
    Concluded,
    Stopped,
}

impl ExperimentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentState::Running => "running",
            ExperimentState::Concluded => "concluded",
            ExperimentState::Stopped => "stopped",
        }
    }
}

impl std::str::FromStr for ExperimentState {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "running" => Ok(ExperimentState::Running),
            "concluded" => Ok(ExperimentState::Concluded),
            "stopped" => Ok(ExperimentState::Stopped),
            _ => Err(format!("unknown experiment state '{s}'")),
        }
    }
}

/// The compared variant that leads (the smallest p-value), with its lift and interval; once the
/// experiment concludes, the one that concluded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Leader {
    pub variant: String,
    pub lift: f64,
    pub lift_low: f64,
    pub lift_high: f64,
    pub p_value: f64,
}

/// One look to record: what the operator computed at it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentLook {
    pub name: String,
    pub metric: String,
    pub method: String,
    pub alpha: f64,
    pub dag_id: String,
    pub task_id: String,
    pub run_id: String,
    /// The sequential test's state per variant after this look.
    pub history: Json,
    /// The operator's output at this look.
    pub result: Json,
    pub leader: Option<Leader>,
    /// The winning variant when this look concluded the experiment.
    pub winner: Option<String>,
    pub concluded: bool,
    pub at: DateTime<Utc>,
}

/// An experiment's record.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentRecord {
    pub name: String,
    pub metric: String,
    pub method: String,
    pub alpha: f64,
    pub dag_id: String,
    pub task_id: String,
    pub state: ExperimentState,
    pub looks: i64,
    pub history: Json,
    pub result: Json,
    pub winner: Option<String>,
    pub leader: Option<Leader>,
    pub last_run_id: String,
    pub concluded_run_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When it concluded or was stopped.
    pub ended_at: Option<DateTime<Utc>>,
}

/// What [`ExperimentStore::record_experiment_look`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum LookRecorded {
    /// The look is the experiment's latest; its record after it.
    Recorded(Box<ExperimentRecord>),
    /// Another look was recorded first, or the experiment ended; nothing changed. Read the record
    /// again and decide from it.
    Stale,
}

#[async_trait]
pub trait ExperimentStore: Send + Sync {
    async fn experiment(&self, name: &str, metric: &str) -> Result<Option<ExperimentRecord>>;
    /// Every experiment, the most recently looked at first.
    async fn experiments(&self) -> Result<Vec<ExperimentRecord>>;
    /// Records `look` if the experiment is running with `looks_before` looks (0: it has no record
    /// yet, and this look creates it); a concluding look ends it.
    async fn record_experiment_look(
        &self,
        look: &ExperimentLook,
        looks_before: i64,
    ) -> Result<LookRecorded>;
    /// Stops every running metric of experiment `name`; answers the records of the name after
    /// (empty: no such experiment). A concluded metric stays concluded.
    async fn stop_experiment(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ExperimentRecord>>;
}
