//! Alerts sent once across schedulers: [`AlertStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::Result;

/// What an alert is about: a run (`task_id` None) or one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub run_id: String,
    /// `sla_missed` or `stuck_queued`.
    pub kind: &'static str,
    pub task_id: Option<String>,
}

#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Records that `key`'s alert is being sent; false when it was already (by this scheduler
    /// or another), so that each alert is posted at most once.
    async fn first_alert(&self, key: &AlertKey, now: DateTime<Utc>) -> Result<bool>;
}
