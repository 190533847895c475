//! What is in flight right now, for the metrics a server exports: [`ActivityStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Result;
use crate::state::RunState;

/// Runs of one DAG in one active state (queued or running).
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveRuns {
    pub dag_id: String,
    pub state: RunState,
    pub count: i64,
}

/// A pool's queue and what it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolActivity {
    pub pool: String,
    /// Task instances queued for a slot.
    pub queued: i64,
    pub running: i64,
    /// When the instance queued longest ago was queued (None when nothing is queued).
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    pub runs: Vec<ActiveRuns>,
    /// Pools with something queued or running, by name.
    pub pools: Vec<PoolActivity>,
}

#[async_trait]
pub trait ActivityStore: Send + Sync {
    /// The active runs and the pools' queues, read from the partial indexes of active rows (the
    /// history is never counted), so a scrape every few seconds costs little.
    async fn activity(&self) -> Result<Activity>;
}
