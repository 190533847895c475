//! The SQL behind the store's traits, written once for SQLite and PostgreSQL.
//!
//! [`SqlStore`] is generic over the database; what differs between the two is in [`dialect`],
//! side by side. One file per trait: [`dags`], [`runs`], [`plan`], [`tries`] (with the claims
//! in [`claims`]), [`history`], [`tokens`], [`models`].
//!
//! Every impl block over `SqlStore<DB>` states the same where-clause: the types the store binds
//! and reads, which sqlx declares per database. Rust carries a trait's bounds on other types
//! (`i64: Encode<'_, DB>`) to no user of the trait, so they cannot be said once in [`Dialect`].

mod activity;
mod alerts;
mod backfills;
mod claims;
mod connect;
mod dags;
mod datasets;
mod dialect;
mod experiments;
mod history;
mod migrations;
mod models;
mod plan;
mod retention;
mod runs;
mod tokens;
mod tries;
mod wake;

use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, Postgres, Row, Sqlite, Type};

use super::cursor::ClaimCursors;
use super::{Claim, Result, Store, StoreError, Wake, Wakeups};
use crate::time::{from_micros, to_micros};

pub use connect::{connect, drop_database};
use dialect::Dialect;
use wake::Bell;

/// The store on one database.
pub(crate) struct SqlStore<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    /// Where the next claim of each pool starts (ADR 8); unused where `DB::CLAIM_CURSOR` is
    /// false.
    cursors: std::sync::Mutex<ClaimCursors>,
    /// The queue of this process's writers; unused where `DB::QUEUE_WRITERS` is false.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Wake-ups to and from the other processes on this database.
    bell: Bell,
}

pub(crate) type SqliteStore = SqlStore<Sqlite>;
pub(crate) type PgStore = SqlStore<Postgres>;

/// Held until a write transaction ends, where writers queue (`Dialect::QUEUE_WRITERS`).
type WriteGuard = Option<tokio::sync::OwnedMutexGuard<()>>;

type Tx<DB> = sqlx::Transaction<'static, DB>;

impl<DB: Dialect> SqlStore<DB> {
    fn new(pool: sqlx::Pool<DB>, bell: Bell) -> SqlStore<DB> {
        SqlStore {
            pool,
            bell,
            cursors: Default::default(),
            writer: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    async fn begin_write(&self) -> Result<(WriteGuard, Tx<DB>)> {
        let waited = std::time::Instant::now();
        let guard = if DB::QUEUE_WRITERS {
            Some(self.writer.clone().lock_owned().await)
        } else {
            None
        };
        let tx = match DB::BEGIN_WRITE {
            Some(begin) => self.pool.begin_with(begin).await?,
            None => self.pool.begin().await?,
        };
        crate::metrics::metrics().write_began(waited.elapsed());
        Ok((guard, tx))
    }

    /// Commits a write that other processes must act on, then tells them.
    async fn commit_and_ring(&self, writer: WriteGuard, tx: Tx<DB>, wake: Wake) -> Result<()> {
        tx.commit().await?;
        drop(writer);
        self.bell.ring(&wake).await;
        Ok(())
    }
}

/// The newest migration this build carries.
pub(crate) fn expected_schema_version() -> i64 {
    migrations::SQLITE_MIGRATIONS
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl<DB> Store for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> bool: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> f64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> Option<f64>: Encode<'a, DB>,
    for<'a> Option<String>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn backend(&self) -> &'static str {
        DB::BACKEND
    }

    async fn schema_version(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    async fn wake(&self, wake: &Wake) {
        self.bell.ring(wake).await;
    }

    async fn wakeups(&self) -> Wakeups {
        self.bell.listen().await
    }
}

fn ts(us: Option<i64>) -> Option<DateTime<Utc>> {
    us.map(from_micros)
}

fn opt_us(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(to_micros)
}

fn json_text(v: &Json) -> String {
    v.to_string()
}

fn parse_json(text: Option<String>, what: &'static str) -> Result<Option<Json>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|source| StoreError::CorruptJson { what, source })
    })
    .transpose()
}

fn same_instance(a: &Claim, b: &Claim) -> bool {
    a.run_id == b.run_id && a.task_id == b.task_id && a.map_index == b.map_index
}

fn parse_state<T: FromStr<Err = String>>(s: &str) -> Result<T> {
    s.parse().map_err(StoreError::Corrupt)
}

const RUN_COLUMNS: &str = "run_id, dag_id, dag_version, run_type, state, logical_date, data_interval_start, \
     data_interval_end, params, queued_at, started_at, ended_at";

const TI_COLUMNS: &str = "run_id, task_id, map_index, state, try_number, try_base, priority, pool, queue, item, \
     output, error, queued_at, started_at, ended_at, next_try_at, lease_owner, lease_expires_at, hostname, pid, external_ref";
