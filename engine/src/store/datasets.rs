//! Dataset events and the runs they start (issue 23): [`DatasetStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};

use super::{NewRun, Result};
use crate::time::rfc3339;

/// One update of a dataset: by a task's successful try, or recorded through the API.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetEvent {
    pub id: i64,
    pub uri: String,
    /// The producing try's output (masked), or the API caller's `extra`.
    pub extra: Json,
    pub source: Option<EventSource>,
    pub created_at: DateTime<Utc>,
}

/// The try that produced an event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventSource {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
}

impl DatasetEvent {
    /// How templates (`{{ triggering_events }}`) and the API show an event.
    pub fn to_json(&self) -> Json {
        let s = self.source.as_ref();
        json!({
            "id": self.id,
            "uri": self.uri,
            "extra": self.extra,
            "source_dag_id": s.map(|s| &s.dag_id),
            "source_run_id": s.map(|s| &s.run_id),
            "source_task_id": s.map(|s| &s.task_id),
            "source_map_index": s.map(|s| s.map_index).filter(|i| *i >= 0),
            "timestamp": rfc3339(self.created_at),
        })
    }
}

/// A DAG scheduled on datasets, asking for its run.
#[derive(Debug, Clone)]
pub struct DatasetTrigger {
    pub dag_id: String,
    pub uris: Vec<String>,
    /// Every URI needs a queued event (`mode: all`), or one is enough (`any`).
    pub all: bool,
    /// The run to create; the store sets its data interval to the taken events' times.
    pub run: NewRun,
}

/// A dataset as the datasets page and the API show it.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSummary {
    pub uri: String,
    /// `dag_id.task_id` of each producing task.
    pub producers: Vec<String>,
    pub consumers: Vec<String>,
    pub last_event: Option<DatasetEvent>,
}

#[async_trait]
pub trait DatasetStore: Send + Sync {
    /// The DAGs with queued events: the ones worth a [`trigger_on_datasets`](Self::trigger_on_datasets).
    async fn dags_with_queued_events(&self) -> Result<Vec<String>>;
    /// Takes the DAG's queued events when they meet its condition, creates its run with them
    /// and records them as its triggering events, in one transaction. None when the condition
    /// does not hold yet, or another scheduler took the events first.
    async fn trigger_on_datasets(&self, t: &DatasetTrigger) -> Result<Option<String>>;
    /// Records an event from outside flow and queues it for its consumers.
    async fn record_dataset_event(
        &self,
        uri: &str,
        extra: &Json,
        now: DateTime<Utc>,
    ) -> Result<DatasetEvent>;
    /// The newest events, newest first; of one URI when given.
    async fn dataset_events(&self, uri: Option<&str>, limit: i64) -> Result<Vec<DatasetEvent>>;
    /// The events that started a run (none for other runs), oldest first.
    async fn triggering_events(&self, run_id: &str) -> Result<Vec<DatasetEvent>>;
    /// Every dataset a DAG in use produces or consumes, or that has events.
    async fn datasets(&self) -> Result<Vec<DatasetSummary>>;
}
