//! Runs and their task instances, as triggers create them and people act on them:
//! [`RunStore`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::Result;
use crate::state::{RunState, RunType, TaskState};

#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskInstance {
    pub task_id: String,
    pub priority: i32,
    pub pool: String,
    pub queue: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub run_id: String,
    pub dag_id: String,
    pub dag_version: String,
    pub run_type: RunType,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub params: Json,
    pub tasks: Vec<NewTaskInstance>,
    pub queued_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub run_id: String,
    pub dag_id: String,
    pub dag_version: String,
    pub run_type: RunType,
    pub state: RunState,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub params: Json,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TiRow {
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub state: TaskState,
    pub try_number: i64,
    pub try_base: i64,
    pub priority: i64,
    pub pool: String,
    pub queue: String,
    pub item: Option<Json>,
    pub output: Option<Json>,
    pub error: Option<String>,
    pub queued_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub next_try_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub hostname: Option<String>,
    pub pid: Option<i64>,
    /// What the try's operator started outside this machine (see `TryWrite::External`).
    pub external_ref: Option<Json>,
}

#[derive(Debug, Default, Clone)]
pub struct RunFilter {
    pub dag_id: Option<String>,
    pub state: Option<RunState>,
    pub limit: i64,
    /// Only runs queued strictly before this (keyset pagination).
    pub before: Option<DateTime<Utc>>,
    /// With `before`: also the runs queued at exactly that instant whose id sorts before this
    /// one, so that a page boundary between two runs queued in the same microsecond loses
    /// neither (the list is ordered by queued time, then run id, both descending).
    pub before_run_id: Option<String>,
}

/// What [`RunStore::create_run_keyed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedRun {
    /// The key was new: the run was created.
    Created,
    /// The key was used for this DAG within the window: nothing was created; this is the run the
    /// first request created.
    Existing(String),
}

/// An idempotency key and the start of its window, as [`RunStore::create_run_keyed`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    /// Uses of the key before this are forgotten.
    pub not_before: DateTime<Utc>,
}

/// One run to create in a [`RunStore::create_runs`] batch.
#[derive(Debug, Clone)]
pub struct RunCreate {
    pub run: NewRun,
    pub key: Option<IdempotencyKey>,
}

/// What [`RunStore::create_runs`] did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    /// The key was used within its window: this is the first request's run.
    Existing(String),
    /// A scheduled or backfill run exists for that logical date, or the run id is taken.
    Duplicate,
}

/// A person's verdict on a task: [`RunStore::mark_task`].
#[derive(Debug, Clone)]
pub struct Mark {
    pub run_id: String,
    pub task_id: String,
    /// One map index, or every instance of the task.
    pub map_index: Option<i64>,
    /// `success` or `failed`.
    pub state: TaskState,
    /// Recorded as the instance's error when marking failed, and as the end of a running try.
    pub note: String,
    /// With `success`: tasks downstream of this one whose `upstream_failed` instances go back to
    /// `scheduled`, since the failure they were waiting on is now a success.
    pub downstream: Vec<String>,
    pub now: DateTime<Utc>,
}

/// A run `flow tasks test --record` ran one task of: [`RunStore::record_task_test`].
#[derive(Debug, Clone)]
pub struct TestRecord {
    /// The manual run, with its task instances.
    pub run: NewRun,
    pub task_id: String,
    /// `success`, `failed` or `skipped` (its `when` rendered false).
    pub state: TaskState,
    pub output: Option<Json>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub hostname: String,
}

#[async_trait]
pub trait RunStore: Send + Sync {
    /// Creates a queued run with its task instances. Returns false (and creates nothing) when a
    /// scheduled or backfill run already exists for that DAG and logical date.
    async fn create_run(&self, run: &NewRun) -> Result<bool>;
    /// Creates a manual run unless `key` was used for the same DAG at or after `not_before`, in
    /// one transaction: of concurrent requests with one key exactly one creates a run. Keys
    /// older than `not_before` are forgotten.
    async fn create_run_keyed(
        &self,
        run: &NewRun,
        key: &str,
        not_before: DateTime<Utc>,
    ) -> Result<KeyedRun>;
    /// Creates many runs in one transaction (one commit for a burst of triggers), each as
    /// `create_run` or, with a key, `create_run_keyed` would; entries are applied in order, so
    /// a key repeated within the batch answers `Existing` with the first entry's run.
    async fn create_runs(&self, batch: &[RunCreate]) -> Result<Vec<Created>>;
    async fn get_run(&self, run_id: &str) -> Result<Option<RunRow>>;
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRow>>;
    /// Queued and running runs, oldest logical date first.
    async fn active_runs(&self) -> Result<Vec<RunRow>>;
    async fn latest_logical_date(&self, dag_id: &str) -> Result<Option<DateTime<Utc>>>;
    /// How many of `dag_id`'s runs are queued, counting no further than `up_to`.
    async fn queued_runs(&self, dag_id: &str, up_to: i64) -> Result<i64>;
    /// The run an idempotency key of `dag_id` made since `not_before`, if any: a retry of a
    /// trigger that went through is answered with it even when the DAG's queue is full.
    async fn keyed_run(
        &self,
        dag_id: &str,
        key: &str,
        not_before: DateTime<Utc>,
    ) -> Result<Option<String>>;
    /// queued -> running; false if the run was not queued.
    async fn start_run(&self, run_id: &str, now: DateTime<Utc>) -> Result<bool>;
    /// queued -> running if fewer than `max_active` runs of its DAG are running, counted in the
    /// same transaction, so that schedulers starting runs of one DAG at once never pass the cap
    /// together; false if the run was not queued or the DAG had no room.
    async fn start_run_within(
        &self,
        run_id: &str,
        max_active: u32,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    async fn task_instances(&self, run_id: &str) -> Result<Vec<TiRow>>;
    /// Resets the given task instances to `scheduled` and the run to `queued`, in one
    /// transaction. Returns false when the run is unknown.
    async fn clear_tasks(
        &self,
        run_id: &str,
        task_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Sets a task's instances (not already in that state) to `success` or `failed`, in one
    /// transaction, and sets a finished run back to `queued` so that the scheduler evaluates it
    /// again. The mark wins over a running try: the instance leaves `running` and its lease is
    /// dropped, so the try's own end (fenced on state, try number and owner) no longer applies,
    /// and its scheduler stops it at the next heartbeat; the try is closed in the history with the
    /// marked state. Returns None when the run is unknown, else how many instances changed.
    async fn mark_task(&self, mark: &Mark) -> Result<Option<u64>>;
    /// Records an ended manual run in which one task ran alone, in one transaction: the task's
    /// instance with its one try, every other instance `skipped` (it did not run), and the run
    /// `failed` when the task failed, else `success`. Returns false (nothing recorded) when the
    /// run id is taken.
    async fn record_task_test(&self, rec: &TestRecord) -> Result<bool>;
}
