//! The metadata store: one trait, two databases.
//!
//! [`Store`] is everything the engine, the CLI and (later) the API need from the database. It is
//! implemented once in [`sql`] and instantiated for SQLite (the embedded default) and PostgreSQL;
//! the same contract test suite runs on both. Every write that acts on a claimed try is a
//! compare-and-set on (state, try number, lease owner): zero rows changed means the lease was lost
//! and the caller backs off.

mod cursor;
pub mod group_commit;
mod sql;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::plan::{Decision, TiSnapshot};
use crate::state::{RunState, RunType, TaskState};

pub use sql::{PgStore, SqliteStore, connect, drop_database};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL '{0}': use sqlite://PATH or postgres://USER@HOST:PORT/DB")]
    BadUrl(String),
    #[error("corrupt row in the database: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A failure that the same transaction may not meet again: a deadlock or serialization
    /// failure on PostgreSQL, a busy database on SQLite.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => matches!(
                e.code().as_deref(),
                Some("40P01" | "40001" | "5" | "517" | "261")
            ),
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_)) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A DAG as the scheduler last loaded it.
#[derive(Debug, Clone, PartialEq)]
pub struct DagRecord {
    pub dag_id: String,
    pub fileloc: String,
    pub version: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub tags: Vec<String>,
    /// The declared params, as JSON (for forms and the API).
    pub params: Json,
    /// The initial pause state; an existing DAG keeps the state a user gave it.
    pub paused: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DagRow {
    pub dag_id: String,
    pub fileloc: String,
    pub version: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub tags: Vec<String>,
    pub params: Json,
    pub paused: bool,
    pub active: bool,
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run: Option<(String, RunState)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskInstance {
    pub task_id: String,
    pub priority: i32,
    pub pool: String,
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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanRows {
    pub rows: Vec<TiSnapshot>,
    /// (task id, state, how many) of the instances not in `rows`.
    pub counts: Vec<(String, TaskState, usize)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TryRow {
    pub try_number: i64,
    pub state: TaskState,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

/// A finished run written whole into the history (`Store::import_history`): for importing runs
/// recorded elsewhere, and for seeding the UI benchmark's years of history.
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

/// What [`Store::create_run_keyed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyedRun {
    /// The key was new: the run was created.
    Created,
    /// The key was used for this DAG within the window: nothing was created; this is the run the
    /// first request created.
    Existing(String),
}

/// One run to create in a [`Store::create_runs`] batch.
#[derive(Debug, Clone)]
pub struct RunCreate {
    pub run: NewRun,
    /// An idempotency key and the start of its window, as [`Store::create_run_keyed`] takes.
    pub key: Option<(String, DateTime<Utc>)>,
}

/// What [`Store::create_runs`] did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    Created,
    /// The key was used within its window: this is the first request's run.
    Existing(String),
    /// A scheduled or backfill run exists for that logical date, or the run id is taken.
    Duplicate,
}

/// A person's verdict on a task: [`Store::mark_task`].
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

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub owner: String,
    pub hostname: String,
    pub pool: String,
    /// Tries this process may start now.
    pub limit: i64,
    /// The pool's size: the claim takes no more than its free slots, counted in the claim's own
    /// transaction. None: no size is known (the claim takes up to `limit`).
    pub pool_slots: Option<i64>,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    /// Claim only tries of this run (`flow run`).
    pub run_id: Option<String>,
}

/// Claims in several pools that share one limit (a scheduler's free slots): each request in
/// turn, its `limit` lowered to what the earlier ones left.
#[derive(Debug, Clone)]
pub struct ClaimBatch {
    pub requests: Vec<ClaimRequest>,
    pub limit: i64,
}

/// A try this process now owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub try_number: i64,
    pub try_base: i64,
    pub item: Option<Json>,
    pub owner: String,
    /// When the try was claimed: its `started_at` in the history. For a try a sensor
    /// rescheduled, when its first poke was claimed.
    pub started_at: DateTime<Utc>,
    /// What an earlier try of this instance started elsewhere and did not see end (it was
    /// requeued or orphaned), for the operator to re-attach to.
    pub external: Option<Json>,
}

/// A write about a claimed try.
#[derive(Debug, Clone)]
pub enum TryWrite {
    Pid(Claim, i64),
    /// What the try started outside this machine (an EMR step), so that the try after a crash or
    /// shutdown re-attaches to it. Kept by a requeue (and so by orphan recovery, which requeues
    /// such a try), emptied by any other end and by a clear.
    External(Claim, Json),
    End(Claim, TryEnd),
}

#[derive(Debug, Clone)]
pub struct TryEnd {
    pub state: TaskState,
    pub output: Option<Json>,
    pub error: Option<String>,
    pub next_try_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    /// The try was interrupted through no fault of its own (a clean shutdown): the instance goes
    /// back to `queued` and the try does not count against its retries.
    pub requeue: bool,
    /// A sensor gave its slot back until `next_try_at` (`up_for_retry` meanwhile): the next
    /// claim is the same try, with the same number and its first `started_at`.
    pub reschedule: bool,
}

impl TryEnd {
    /// A try interrupted through no fault of its own (a clean shutdown, or the loss of the
    /// scheduler watching work that goes on elsewhere): back to `queued`, no retry used.
    pub fn requeued(why: &str, now: DateTime<Utc>) -> TryEnd {
        TryEnd {
            state: TaskState::Queued,
            output: None,
            error: Some(why.to_string()),
            next_try_at: None,
            now,
            requeue: true,
            reschedule: false,
        }
    }
}

/// API token roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!(
                "unknown role '{s}' (expected viewer, operator or admin)"
            )),
        }
    }
}

/// A new API token: the secret (shown once) and the hash the database keeps.
pub fn new_token() -> (String, String) {
    let bytes: [u8; 32] = rand::random();
    let token = format!(
        "flow_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let hash = token_hash(&token);
    (token, hash)
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A model version's stage in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelStage {
    Candidate,
    Production,
    Archived,
}

impl ModelStage {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelStage::Candidate => "candidate",
            ModelStage::Production => "production",
            ModelStage::Archived => "archived",
        }
    }
}

impl std::str::FromStr for ModelStage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "candidate" => Ok(ModelStage::Candidate),
            "production" => Ok(ModelStage::Production),
            "archived" => Ok(ModelStage::Archived),
            _ => Err(format!("unknown model stage '{s}'")),
        }
    }
}

/// A trained model to register: what it is, how good, and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModelVersion {
    pub model: String,
    /// `classification` or `regression`.
    pub task: String,
    pub algorithm: String,
    pub metrics: Json,
    /// Where the artifact is: a local path or an `s3://` URL.
    pub artifact: String,
    pub training_set: String,
    pub data_interval: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub dag_id: String,
    pub dag_version: String,
    pub run_id: String,
    pub task_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelVersion {
    pub version: i64,
    pub stage: ModelStage,
    pub stage_changed_at: DateTime<Utc>,
    pub new: NewModelVersion,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub versions: i64,
    pub latest_version: i64,
    pub production_version: Option<i64>,
}

/// What [`ModelRegistry::promote_model_version`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// `version` is production now; `previous` (if any) was archived.
    Promoted { previous: Option<i64> },
    /// The production version was not the one the caller expected; nothing changed.
    Stale { current: Option<i64> },
    /// No such model version.
    Unknown,
}

/// An API token as listed: never its secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// API tokens (migrations 0002 and 0011): only a SHA-256 hash of each is kept.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a token's hash under a unique name; false if the name is taken.
    async fn create_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool>;
    /// The name and role of the token with this hash, if it exists and has not expired at
    /// `now`.
    async fn token_role(
        &self,
        token_hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(String, Role)>>;
    /// Every token, by name.
    async fn list_tokens(&self) -> Result<Vec<TokenInfo>>;
    /// Deletes the token named `name`; false if there is none.
    async fn revoke_token(&self, name: &str) -> Result<bool>;
    /// Records when tokens were last used, a batch in one transaction; a time never moves back.
    async fn touch_tokens(&self, used: &[(String, DateTime<Utc>)]) -> Result<()>;
}

/// The model registry in the metadata database (migration 0009). Versions are 1, 2, ... per
/// model, given out in a transaction, so concurrent registrations never share one.
#[async_trait]
pub trait ModelRegistry: Send + Sync {
    /// Registers a new candidate version (creating the model on its first version); returns its
    /// number.
    async fn register_model_version(&self, v: &NewModelVersion) -> Result<i64>;
    async fn models(&self) -> Result<Vec<ModelSummary>>;
    /// Every version of `model`, newest first.
    async fn model_versions(&self, model: &str) -> Result<Vec<ModelVersion>>;
    async fn model_version(&self, model: &str, version: i64) -> Result<Option<ModelVersion>>;
    /// Makes `version` the production version and archives the previous one, in one transaction,
    /// if the production version is still `expected` (a compare-and-set: two promoters that
    /// compared against the same production version cannot both win).
    async fn promote_model_version(
        &self,
        model: &str,
        version: i64,
        expected: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Promotion>;
}

#[async_trait]
pub trait Store: ModelRegistry + TokenStore + Send + Sync {
    fn backend(&self) -> &'static str;

    /// Records what loading the DAGs folder found: `changed` DAGs are inserted with their initial
    /// pause state or updated (keeping the pause state a user gave them), their versions kept for
    /// the runs that start on them; DAGs not in `present` are marked inactive; the import errors
    /// are replaced.
    async fn sync_dags(
        &self,
        changed: &[DagRecord],
        present: &[String],
        import_errors: &BTreeMap<String, Vec<String>>,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn import_errors(&self) -> Result<BTreeMap<String, Vec<String>>>;
    async fn dag_source(&self, dag_id: &str, version: &str) -> Result<Option<(String, String)>>;
    async fn list_dags(&self) -> Result<Vec<DagRow>>;
    async fn get_dag(&self, dag_id: &str) -> Result<Option<DagRow>>;
    /// Returns false when the DAG is unknown.
    async fn set_paused(&self, dag_id: &str, paused: bool) -> Result<bool>;
    async fn set_next_run_at(&self, dag_id: &str, at: Option<DateTime<Utc>>) -> Result<()>;

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
    async fn task_instances(&self, run_id: &str) -> Result<Vec<TiRow>>;
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

    /// Claims up to `limit` queued tries of one pool, highest priority and oldest first, and
    /// records each try's start. Two claimers never get the same try.
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>>;
    async fn running_by_pool(&self) -> Result<BTreeMap<String, i64>>;
    /// Pools that have queued tries.
    async fn queued_pools(&self) -> Result<Vec<String>>;
    /// Each active DAG's pause flag.
    async fn paused_flags(&self) -> Result<BTreeMap<String, bool>>;
    /// Records the process group of a running try, so a later scheduler can stop an orphan.
    async fn set_pid(&self, claim: &Claim, pid: i64) -> Result<()> {
        self.record_tries(&[TryWrite::Pid(claim.clone(), pid)])
            .await
            .map(|_| ())
    }
    /// Ends a claimed try; false if the lease was lost (someone else owns the try now).
    async fn finish_try(&self, claim: &Claim, end: &TryEnd) -> Result<bool> {
        let done = self
            .record_tries(&[TryWrite::End(claim.clone(), end.clone())])
            .await?;
        Ok(done.first().copied().unwrap_or(false))
    }
    /// Applies several writes about claimed tries in one transaction (group commit); each is
    /// fenced on its claim. Returns, per write, whether it applied.
    async fn record_tries(&self, writes: &[TryWrite]) -> Result<Vec<bool>>;
    /// `record_tries`, then the claims of `claims`, in one transaction: a scheduler's try ends,
    /// the pids of its new tries and its next claims share one commit. Returns what
    /// `record_tries` returns and the claims of each request.
    async fn record_and_claim(
        &self,
        writes: &[TryWrite],
        claims: Option<&ClaimBatch>,
    ) -> Result<(Vec<bool>, Vec<Vec<Claim>>)>;
    /// Marks this scheduler alive and extends the leases of its running tries.
    async fn heartbeat(
        &self,
        owner: &str,
        hostname: &str,
        pid: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<()>;
    async fn last_heartbeat(&self) -> Result<Option<DateTime<Utc>>>;
    /// (run, task, map index, try number) of the running tries `owner` still holds.
    async fn owned_tries(&self, owner: &str) -> Result<Vec<(String, String, i64, i64)>>;
    /// Running tries whose lease has expired.
    async fn expired_tries(&self, now: DateTime<Utc>) -> Result<Vec<TiRow>>;
    async fn tries(&self, run_id: &str, task_id: &str, map_index: i64) -> Result<Vec<TryRow>>;
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

    /// Writes finished runs with their task instances and tries, in one transaction per call;
    /// a run whose id exists already is skipped. Returns how many runs were written.
    async fn import_history(&self, runs: &[HistoryRun]) -> Result<u64>;
    /// Creates many runs in one transaction (one commit for a burst of triggers), each as
    /// `create_run` or, with a key, `create_run_keyed` would; entries are applied in order, so
    /// a key repeated within the batch answers `Existing` with the first entry's run.
    async fn create_runs(&self, batch: &[RunCreate]) -> Result<Vec<Created>>;
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

/// The instances of one task in one run that are in one state: [`Store::grid_counts`].
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
