//! The metadata store: a few narrow traits, two databases.
//!
//! Each concern has its trait: [`DagStore`] (the DAGs loaded), [`RunStore`] (runs and their task
//! instances), [`PlanStore`] (what the planner reads and decides), [`TryStore`] (claims, leases
//! and the ends of tries), [`HistoryStore`] (bulk history and the grid), [`TokenStore`],
//! [`ModelRegistry`] and [`ExperimentStore`]. [`Store`] is all of them, for the engine, the CLI
//! and the API, which hold an `Arc<dyn Store>`. They are implemented once in [`sql`] and
//! instantiated for SQLite (the embedded default) and PostgreSQL; the same contract test suite
//! runs on both. Every write that acts on a claimed try is a compare-and-set on (state, try
//! number, lease owner): zero rows changed means the lease was lost and the caller backs off.

mod activity;
mod alerts;
mod backfills;
mod cursor;
mod dags;
mod datasets;
mod experiments;
pub mod group_commit;
mod history;
mod models;
mod plan;
mod retention;
mod runs;
mod sql;
#[cfg(test)]
mod tests;
mod tokens;
mod tries;
mod wake;

pub use activity::{ActiveRuns, Activity, ActivityStore, PoolActivity};
pub use alerts::{AlertKey, AlertStore};
pub use backfills::{Backfill, BackfillProgress, BackfillStep, BackfillStore, Rerun, StepDone};
pub use dags::{DagRecord, DagRow, DagSource, DagStore, LastRun, ProducedBy};
pub use datasets::{DatasetEvent, DatasetStore, DatasetSummary, DatasetTrigger, EventSource};
pub use experiments::{
    ExperimentLook, ExperimentRecord, ExperimentState, ExperimentStore, Leader, LookRecorded,
};
pub use history::{HistoryRun, HistoryStore, HistoryTask, TiCount};
pub use models::{
    DataInterval, ModelRegistry, ModelStage, ModelSummary, ModelVersion, NewModelVersion,
    PredictionUse, Promotion,
};
pub use plan::{Applied, PlanRows, PlanStore, TaskOutput};
pub use retention::{OldRun, OldRuns, RetentionStore};
pub use runs::{
    Created, IdempotencyKey, KeyedRun, Mark, NewRun, NewTaskInstance, RunCreate, RunFilter, RunRow,
    RunStore, TestRecord, TiRow,
};
pub use sql::{connect, drop_database};
pub use tokens::{
    RateAnswer, RateAsk, Role, TokenGrant, TokenInfo, TokenStore, TokenUsed, new_token, token_hash,
};
pub use tries::{
    Claim, ClaimBatch, ClaimRequest, Lane, Recorded, TryEnd, TryId, TryRow, TryStore, TryWrite,
};
pub use wake::{Wake, Wakeups};

/// The store's traits, for code that calls them on something other than a `dyn Store` (a
/// `dyn Store` answers every method of its supertraits without them in scope).
pub mod prelude {
    pub use super::{
        ActivityStore, AlertStore, DagStore, DatasetStore, ExperimentStore, HistoryStore,
        ModelRegistry, PlanStore, RunStore, Store, TokenStore, TryStore,
    };
}

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
    #[error("corrupt row in the database: {what}: {source}")]
    CorruptJson {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot take the migration lock of the database: {0}")]
    LockTask(#[from] tokio::task::JoinError),
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
            _ => self.is_unreachable(),
        }
    }

    /// A value the caller gave that the database cannot hold, such as a NUL character
    /// (PostgreSQL refuses it in text and JSON; SQLite keeps it): the caller's mistake, not
    /// the database's.
    pub fn is_bad_text(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("22021" | "22P05"))
            }
            _ => false,
        }
    }

    /// The database cannot be reached, or is going down or coming up (a restart, a failover, a
    /// network cut): worth waiting for, unlike a conflict, which is worth one more go at once.
    pub fn is_unreachable(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => e.code().is_some_and(|c| {
                // 57P01-03: shutting down or starting up; class 08: connection exceptions.
                matches!(c.as_ref(), "57P01" | "57P02" | "57P03") || c.starts_with("08")
            }),
            StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_),
            ) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the engine, the CLI and the API need from the database.
#[async_trait::async_trait]
pub trait Store:
    DagStore
    + RunStore
    + PlanStore
    + TryStore
    + HistoryStore
    + TokenStore
    + ModelRegistry
    + ActivityStore
    + AlertStore
    + DatasetStore
    + RetentionStore
    + BackfillStore
    + ExperimentStore
{
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// The newest migration applied to the database (None before any), for readiness: a
    /// process of an older build than the schema, or a schema behind its build, is not ready.
    async fn schema_version(&self) -> Result<Option<i64>>;
    /// Tells every process on this database, this one included, that something happened (see
    /// [`Wake`]). Best effort: a wake-up that cannot be sent is logged, never returned, and its
    /// receivers find the news on their next poll. The writes other processes must act on
    /// (creating, clearing and marking runs and tasks, pausing) ring by themselves.
    async fn wake(&self, wake: &Wake);
    /// Every wake-up from now on; the first call starts this process's listener and waits a
    /// few seconds at most for it.
    async fn wakeups(&self) -> Wakeups;
}

/// The newest migration this build carries (the two folders hold the same versions).
pub fn expected_schema_version() -> i64 {
    sql::expected_schema_version()
}
