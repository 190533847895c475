//! Backfills as objects (issue 23): [`BackfillStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::{NewRun, Result};

/// What a backfill does with a run that exists for one of its intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rerun {
    /// Leave it as it is (the default).
    None,
    /// Run it again when it failed.
    Failed,
    /// Run it again when it ended, whatever its state.
    All,
}

impl Rerun {
    pub fn as_str(self) -> &'static str {
        match self {
            Rerun::None => "none",
            Rerun::Failed => "failed",
            Rerun::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Rerun> {
        Some(match s {
            "none" => Rerun::None,
            "failed" => Rerun::Failed,
            "all" => Rerun::All,
            _ => return None,
        })
    }
}

/// A backfill as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfill {
    pub id: String,
    pub dag_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub params: Json,
    pub rerun: Rerun,
    pub reverse: bool,
    pub max_active_runs: u32,
    /// `running`, `done` or `cancelled`.
    pub state: String,
    /// The logical date of the next interval to consider; None once every one was.
    pub cursor: Option<DateTime<Utc>>,
    /// Runs it created, and intervals it found a run for.
    pub created: i64,
    pub existing: i64,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// How its runs stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackfillProgress {
    pub queued: i64,
    pub running: i64,
    pub success: i64,
    pub failed: i64,
}

impl BackfillProgress {
    pub fn active(&self) -> i64 {
        self.queued + self.running
    }
}

/// One window of a backfill: the runs to create for its next intervals, and where it then
/// stands.
#[derive(Debug, Clone)]
pub struct BackfillStep {
    pub id: String,
    pub runs: Vec<NewRun>,
    pub rerun: Rerun,
    /// The cursor the window was computed from: the step applies only if it is still there.
    pub from_cursor: DateTime<Utc>,
    pub cursor: Option<DateTime<Utc>>,
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepDone {
    pub created: Vec<String>,
    /// Runs that existed for an interval (run again when the rerun rule said so).
    pub existing: Vec<String>,
    pub rerun: Vec<String>,
}

#[async_trait]
pub trait BackfillStore: Send + Sync {
    async fn insert_backfill(&self, b: &Backfill) -> Result<()>;
    async fn get_backfill(&self, id: &str) -> Result<Option<Backfill>>;
    /// Newest first; of one DAG when given.
    async fn list_backfills(&self, dag_id: Option<&str>) -> Result<Vec<Backfill>>;
    async fn running_backfills(&self) -> Result<Vec<Backfill>>;
    async fn backfill_progress(&self, id: &str) -> Result<BackfillProgress>;
    async fn backfill_run_ids(&self, id: &str) -> Result<Vec<String>>;
    /// Creates a window's runs (an existing run is tagged with the backfill and, as `rerun`
    /// says, cleared) and moves the cursor, in one transaction; nothing when the backfill is
    /// no longer running or another scheduler moved its cursor first.
    async fn backfill_step(&self, step: &BackfillStep, now: DateTime<Utc>) -> Result<StepDone>;
    /// `running` -> `done`.
    async fn finish_backfill(&self, id: &str, now: DateTime<Utc>) -> Result<()>;
    /// `running` -> `cancelled`, failing its queued runs that never started; None when there
    /// is no such backfill, else how many runs it failed.
    async fn cancel_backfill(&self, id: &str, now: DateTime<Utc>) -> Result<Option<u64>>;
}
