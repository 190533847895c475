//! What differs between SQLite and PostgreSQL, side by side.
//!
//! Both databases accept the same text for every query of the store (`$N` parameters,
//! `RETURNING`, `ON CONFLICT`, partial indexes, ADR 2). What they do not share is below: a few
//! fragments and statements, and a few flags that choose between two ways of doing one thing.
//! Apart from opening a database ([`super::connect`]), nothing else in [`super`] knows which
//! database it talks to.

use sqlx::postgres::PgQueryResult;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{Database, IntoArguments, Postgres, Sqlite};

/// A database the store runs on.
pub(crate) trait Dialect:
    Database<Arguments: IntoArguments<Self>, QueryResult: RowsAffected>
{
    /// What [`Store::backend`](crate::store::Store::backend) answers.
    const BACKEND: &'static str;
    /// How a write transaction begins, when not with the driver's plain `BEGIN`.
    const BEGIN_WRITE: Option<&'static str>;
    /// Whether this process's write transactions queue on a mutex before they begin.
    const QUEUE_WRITERS: bool;
    /// The row locks a claim takes on the tries it picks, and a heartbeat on the leases it
    /// extends.
    const CLAIM_LOCK: &'static str;
    /// Whether a claim may start reading the queue after the last try this process claimed
    /// (ADR 8), instead of at its head.
    const CLAIM_CURSOR: bool;
    /// Whether a statement may write in its WITH clause.
    const WRITING_CTES: bool;
    /// The statement (bound to the pool's name) that makes claims of one sized pool wait for
    /// each other until commit.
    const POOL_LOCK: Option<&'static str>;
    /// The statement (bound to a run's id) that makes the starts of one DAG's runs wait for
    /// each other until commit, so that each counts the others' (`max_active_runs`).
    const DAG_RUNS_LOCK: Option<&'static str>;
    /// The lock a model registration or promotion takes on the model's row.
    const MODEL_LOCK: &'static str;
    /// The larger of two values (a scalar function of two arguments).
    const GREATEST: &'static str;
    /// What refreshes the planner's statistics after a bulk import.
    const ANALYZE: Option<&'static str>;
}

impl Dialect for Sqlite {
    const BACKEND: &'static str = "sqlite";
    // IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades can
    // fail with SQLITE_BUSY at once instead of waiting out the busy timeout.
    const BEGIN_WRITE: Option<&'static str> = Some("BEGIN IMMEDIATE");
    // SQLite has one writer at a time. Queueing this process's writers in order beats letting
    // them collide in SQLite, whose busy handler sleeps in growing steps (1, 2, 5, 10 ms ...)
    // before trying again. Other processes still wait through the busy timeout.
    const QUEUE_WRITERS: bool = true;
    // The write transaction holds the whole database already.
    const CLAIM_LOCK: &'static str = "";
    // SQLite's index drops a claimed try's entry at once: the head of the queue is cheap.
    const CLAIM_CURSOR: bool = false;
    // No writes in a WITH clause: a claim's history rows, and an end's, take a statement more.
    const WRITING_CTES: bool = false;
    // One writer at a time: claims are ordered already.
    const POOL_LOCK: Option<&'static str> = None;
    const DAG_RUNS_LOCK: Option<&'static str> = None;
    const MODEL_LOCK: &'static str = "";
    const GREATEST: &'static str = "MAX";
    // SQLite plans the store's queries from the indexes alone.
    const ANALYZE: Option<&'static str> = None;
}

impl Dialect for Postgres {
    const BACKEND: &'static str = "postgres";
    const BEGIN_WRITE: Option<&'static str> = None;
    // Writers run side by side; row locks order the ones that meet.
    const QUEUE_WRITERS: bool = false;
    // A try another claim holds is passed over, not waited for.
    const CLAIM_LOCK: &'static str = "FOR UPDATE SKIP LOCKED";
    // A claimed try's index entry stays until a vacuum: the head of the queue is slow to reach.
    const CLAIM_CURSOR: bool = true;
    const WRITING_CTES: bool = true;
    const POOL_LOCK: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(hashtextextended('flow pool ' || $1, 0))");
    const DAG_RUNS_LOCK: Option<&'static str> = Some(
        "SELECT pg_advisory_xact_lock(hashtextextended('flow dag runs ' || dag_id, 0)) \
         FROM dag_runs WHERE run_id = $1",
    );
    const MODEL_LOCK: &'static str = "FOR UPDATE";
    const GREATEST: &'static str = "GREATEST";
    // Until autovacuum's next pass a freshly loaded history reads as a few hundred runs.
    const ANALYZE: Option<&'static str> = Some("ANALYZE dag_runs, task_instances, task_tries");
}

/// How many rows a statement changed: each driver answers it, but not through a common trait.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

impl RowsAffected for SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        SqliteQueryResult::rows_affected(self)
    }
}

impl RowsAffected for PgQueryResult {
    fn rows_affected(&self) -> u64 {
        PgQueryResult::rows_affected(self)
    }
}
