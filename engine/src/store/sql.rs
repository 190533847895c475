//! The SQL behind [`Store`], written once for SQLite and PostgreSQL.
//!
//! Both databases accept the same text for every query here (`$N` parameters, `RETURNING`,
//! `ON CONFLICT`, partial indexes); the one real difference, how a claim locks rows, is passed
//! in as a fragment. A macro stamps the implementation out for each backend because sqlx's
//! generic bounds over `Database` are heavier to read than the queries themselves.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};

use super::cursor::{ClaimCursors, QueueKey};
use super::*;
use crate::plan::{Decision, TiSnapshot, UNMAPPED};
use crate::state::{RunState, RunType, TaskState};
use crate::time::{from_micros, to_micros};

mod models;
mod tokens;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    /// Never used (`$claim_cursor` is false): SQLite's index drops a claimed try's entry at once
    /// (ADR 8). The field lets both stores share the claim code.
    cursors: std::sync::Mutex<ClaimCursors>,
    /// SQLite has one writer at a time. Queueing this process's writers here, in order, beats
    /// letting them collide in SQLite, whose busy handler sleeps in growing steps (1, 2, 5, 10 ms
    /// ...) before trying again. Other processes still wait through the busy timeout.
    writer: Arc<tokio::sync::Mutex<()>>,
}

type WriteGuard = Option<tokio::sync::OwnedMutexGuard<()>>;

pub struct PgStore {
    pool: sqlx::PgPool,
    cursors: std::sync::Mutex<ClaimCursors>,
}

/// Opens (creating if needed) the database named by `url` and applies pending migrations.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        Err(StoreError::BadUrl(url.to_string()))
    }
}

/// Drops the PostgreSQL database a URL names (for scratch databases such as the UI
/// benchmark's); SQLite URLs are left to the caller, whose file it is.
pub async fn drop_database(url: &str) -> Result<()> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::BadUrl(url.to_string()));
    }
    let opts = PgConnectOptions::from_str(url)?;
    let name = opts.get_database().unwrap_or("flow").to_string();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.database("postgres"))
        .await?;
    let drop = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&admin)
        .await?;
    Ok(())
}

/// Makes the database and its WAL files readable by their owner alone (0600): they hold every
/// run's params and outputs. SQLite gives files it creates later the database's own mode.
fn owner_only(db: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        // Best effort: a database flow does not own (a shared file) keeps its mode.
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<SqliteStore> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // FULL: a commit is on disk before we act on it (WAL + NORMAL could lose the last
            // commits on power loss).
            .synchronous(SqliteSynchronous::Full)
            // Concurrent CLI calls and the scheduler wait for each other instead of failing with
            // "database is locked".
            .busy_timeout(Duration::from_secs(60))
            // Reads through a memory map instead of a read() and a copy per page: the planner
            // and the claims reread the same pages after every commit of another connection.
            .pragma("mmap_size", "268435456")
            .foreign_keys(true);
        if let Some(dir) = opts.get_filename().parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| config_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        // Switching a new database to WAL and migrating it are done by one process at a time,
        // under a lock file beside the database: sqlx takes no lock around SQLite migrations, and
        // a journal-mode change races with other connections ("database is locked"). WAL mode is
        // a property of the file, so the everyday pool below never needs to set it again.
        let lock_path = {
            let mut p = opts.get_filename().as_os_str().to_owned();
            p.push(".migrate.lock");
            std::path::PathBuf::from(p)
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| config_error(format!("cannot open {}: {e}", lock_path.display())))?;
        let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock))
            .await
            .map_err(|e| StoreError::Corrupt(format!("lock task failed: {e}")))?
            .map_err(|e| config_error(format!("cannot lock {}: {e}", lock_path.display())))?;
        let setup = async {
            let setup_pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone().journal_mode(SqliteJournalMode::Wal))
                .await?;
            let migrated = SQLITE_MIGRATIONS.run(&setup_pool).await;
            setup_pool.close().await;
            migrated.map_err(StoreError::from)
        }
        .await;
        drop(lock);
        setup?;
        owner_only(opts.get_filename());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            pool,
            cursors: Default::default(),
            writer: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    async fn begin_write(&self) -> Result<(WriteGuard, sqlx::Transaction<'static, Sqlite>)> {
        let guard = self.writer.clone().lock_owned().await;
        // IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades can
        // fail with SQLITE_BUSY at once instead of waiting out the busy timeout.
        Ok((Some(guard), self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }
}

impl PgStore {
    pub async fn connect(url: &str) -> Result<PgStore> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = match PgPoolOptions::new()
            .max_connections(8)
            .connect_with(opts.clone())
            .await
        {
            Ok(pool) => pool,
            // A missing database is created, so that one URL is all a user has to give.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
                let name = opts.get_database().unwrap_or("flow").to_string();
                let admin = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone().database("postgres"))
                    .await?;
                let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
                if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(create))
                    .execute(&admin)
                    .await
                {
                    // Another process may have created it meanwhile: 42P04 (duplicate_database), or
                    // 23505 when both inserted into pg_database at the same moment.
                    let dup = matches!(&err, sqlx::Error::Database(d)
                        if matches!(d.code().as_deref(), Some("42P04" | "23505")));
                    if !dup {
                        return Err(err.into());
                    }
                }
                admin.close().await;
                PgPoolOptions::new()
                    .max_connections(8)
                    .connect_with(opts)
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        PG_MIGRATIONS.run(&pool).await?;
        Ok(PgStore {
            pool,
            cursors: Default::default(),
        })
    }

    async fn begin_write(&self) -> Result<(WriteGuard, sqlx::Transaction<'static, Postgres>)> {
        Ok((None, self.pool.begin().await?))
    }
}

fn config_error(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Configuration(message.into()))
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

fn parse_json(text: Option<String>, what: &str) -> Result<Option<Json>> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("{what}: {e}"))))
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

const TI_COLUMNS: &str = "run_id, task_id, map_index, state, try_number, try_base, priority, pool, item, \
     output, error, queued_at, started_at, ended_at, next_try_at, lease_owner, lease_expires_at, hostname, pid, external_ref";

/// Opens the history rows of claimed tries (`INSERT ... ` + their rows).
const OPEN_TRIES: &str = "INSERT INTO task_tries (run_id, task_id, map_index, try_number, state, started_at, lease_owner, hostname) ";

/// A rescheduled try's row is already there: it runs again, from its first poke.
const REOPEN_TRY: &str = " ON CONFLICT (run_id, task_id, map_index, try_number) DO UPDATE SET state = excluded.state, \
     ended_at = NULL, error = NULL, lease_owner = excluded.lease_owner, hostname = excluded.hostname";

/// Closes the history rows of ended tries, from `e (run_id, task_id, map_index, try_number,
/// state, ended_at, error)`.
const CLOSE_TRIES: &str = "UPDATE task_tries SET state = e.state, ended_at = e.ended_at, error = e.error FROM e \
     WHERE task_tries.run_id = e.run_id AND task_tries.task_id = e.task_id \
     AND task_tries.map_index = e.map_index AND task_tries.try_number = e.try_number";

/// One SQL text for both databases (ADR 2), with what differs given per database: the claim's row
/// locks, whether claims read on from a cursor (ADR 8), whether a statement may write in its
/// WITH clause (PostgreSQL may; SQLite runs such a second write as a statement of its own), and
/// the statement that makes claims of one sized pool wait for each other (SQLite has one writer).
macro_rules! impl_store {
    ($store:ty, $db:ty, $row:ty, $backend:literal, $claim_lock:literal, $claim_cursor:literal, $writing_ctes:literal, $pool_lock:expr) => {
        impl $store {
            /// Claims up to `req.limit` queued tries in claim order, from the head of the queue or
            /// from after `after` (ADR 8); also returns each claimed try's place in that order.
            async fn claim_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                req: &ClaimRequest,
                after: Option<&QueueKey>,
            ) -> Result<(Vec<Claim>, Vec<QueueKey>)> {
                if req.limit <= 0 {
                    return Ok((Vec::new(), Vec::new()));
                }
                // A sized pool counts its running tries in the same statement. An unsized one
                // must not: on PostgreSQL that count reads every dead entry the partial index of
                // running tries has gathered since the last vacuum (a bitmap scan marks none of
                // them dead), which made each claim of a 10,000-item map cost ~10 ms.
                let limit = if req.pool_slots.is_some() {
                    "(SELECT CASE WHEN $8 - COUNT(*) >= $7 THEN $7 WHEN $8 - COUNT(*) < 0 THEN 0 \
                      ELSE $8 - COUNT(*) END FROM task_instances WHERE state = 'running' AND pool = $5)"
                } else {
                    "(CASE WHEN CAST($8 AS BIGINT) IS NULL THEN $7 ELSE $7 END)"
                };
                // The picked tries are a materialized CTE, read once: as `IN (subquery)` next to
                // another condition, PostgreSQL may plan the subquery as the inner side of a
                // nested loop and run it again per row, each time skipping the rows this
                // statement already locked, and so claim past the limit. The outer
                // `state = 'queued'` lets the row lookup seek on every column of whichever index
                // it picks: PostgreSQL without statistics (autovacuum off) took
                // `task_instances_plan` for (run_id, task_id, map_index) and read every instance
                // of the task, ~1 ms a claim in a 10,000-item map.
                let pick = format!(
                    "picked AS MATERIALIZED (\
                       SELECT run_id, task_id, map_index FROM task_instances \
                       WHERE state = 'queued' AND pool = $5 AND (CAST($6 AS TEXT) IS NULL OR run_id = $6) {} \
                       ORDER BY -priority, queued_at, run_id, task_id, map_index \
                       LIMIT {limit} {})",
                    // A row comparison the index `task_instances_ready` seeks to (migration 0010).
                    if after.is_some() {
                        "AND (-priority, queued_at, run_id, task_id, map_index) > ($9, $10, $11, $12, $13)"
                    } else {
                        ""
                    },
                    $claim_lock
                );
                let update = "UPDATE task_instances SET state = 'running', \
                     try_number = try_number + CASE WHEN reschedules > 0 THEN 0 ELSE 1 END, \
                     started_at = CASE WHEN reschedules > 0 THEN started_at ELSE $1 END, \
                     ended_at = NULL, lease_owner = $2, lease_expires_at = $3, hostname = $4, pid = NULL, \
                     next_try_at = NULL, error = NULL \
                     FROM picked WHERE task_instances.state = 'queued' AND task_instances.run_id = picked.run_id \
                     AND task_instances.task_id = picked.task_id AND task_instances.map_index = picked.map_index \
                     RETURNING task_instances.run_id AS run_id, task_instances.task_id AS task_id, \
                     task_instances.map_index AS map_index, try_number, \
                     try_base, item, started_at, reschedules, external_ref, priority, queued_at";
                // PostgreSQL opens the claimed tries' rows in the same statement, one round trip
                // fewer in every group commit; SQLite has no writes in a WITH, so it runs
                // the INSERT below.
                let sql = if $writing_ctes {
                    let row = "SELECT run_id, task_id, map_index, try_number, 'running', $1, $2, $4 FROM claimed";
                    format!(
                        "WITH {pick}, claimed AS ({update}), \
                         fresh AS ({OPEN_TRIES}{row} WHERE reschedules = 0 ON CONFLICT DO NOTHING), \
                         again AS ({OPEN_TRIES}{row} WHERE reschedules > 0{REOPEN_TRY}) \
                         SELECT * FROM claimed"
                    )
                } else {
                    format!("WITH {pick} {update}")
                };
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(to_micros(req.now))
                .bind(&req.owner)
                .bind(to_micros(req.lease_until))
                .bind(&req.hostname)
                .bind(&req.pool)
                .bind(&req.run_id)
                .bind(req.limit)
                .bind(req.pool_slots);
                if let Some(k) = after {
                    query = query
                        .bind(k.neg_priority)
                        .bind(k.queued_at)
                        .bind(&k.run_id)
                        .bind(&k.task_id)
                        .bind(k.map_index);
                }
                let rows = query.fetch_all(&mut **tx).await?;
                let mut claims = Vec::with_capacity(rows.len());
                let mut keys = Vec::with_capacity(rows.len());
                let mut rescheduled = false;
                for r in &rows {
                    keys.push(QueueKey {
                        neg_priority: -r.try_get::<i64, _>("priority")?,
                        // NULL sorts last in the index, as no time can.
                        queued_at: r.try_get::<Option<i64>, _>("queued_at")?.unwrap_or(i64::MAX),
                        run_id: r.try_get("run_id")?,
                        task_id: r.try_get("task_id")?,
                        map_index: r.try_get("map_index")?,
                    });
                    claims.push(Claim {
                        run_id: r.try_get("run_id")?,
                        task_id: r.try_get("task_id")?,
                        map_index: r.try_get("map_index")?,
                        try_number: r.try_get("try_number")?,
                        try_base: r.try_get("try_base")?,
                        item: parse_json(r.try_get("item")?, "item")?,
                        owner: req.owner.clone(),
                        started_at: from_micros(r.try_get("started_at")?),
                        external: parse_json(r.try_get("external_ref")?, "external_ref")?,
                    });
                    rescheduled |= r.try_get::<i64, _>("reschedules")? > 0;
                }
                if $writing_ctes {
                    return Ok((claims, keys));
                }
                for chunk in claims.chunks(1000) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(OPEN_TRIES);
                    qb.push_values(chunk, |mut b, c| {
                        b.push_bind(c.run_id.clone())
                            .push_bind(c.task_id.clone())
                            .push_bind(c.map_index)
                            .push_bind(c.try_number)
                            .push_bind(TaskState::Running.as_str())
                            .push_bind(to_micros(req.now))
                            .push_bind(req.owner.clone())
                            .push_bind(req.hostname.clone());
                    });
                    qb.push(if rescheduled {
                        REOPEN_TRY
                    } else {
                        " ON CONFLICT DO NOTHING"
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                Ok((claims, keys))
            }

            async fn record_in(tx: &mut sqlx::Transaction<'static, $db>, writes: &[TryWrite]) -> Result<Vec<bool>> {
                let mut applied = Vec::with_capacity(writes.len());
                // Ends go in batches, one statement per table for all of them rather than two per
                // try: a group commit's round trips are the serial path every try waits on. A
                // batch stops before another write, and before a second end of a try already in
                // it, so that each write still sees the ones before it, as one at a time would.
                let mut ends: Vec<(&Claim, &TryEnd)> = Vec::new();
                for w in writes {
                    let flush = match w {
                        TryWrite::End(c, _) => ends.iter().any(|(e, _)| same_instance(e, c)),
                        _ => true,
                    };
                    if flush {
                        applied.extend(Self::end_in(tx, &ends).await?);
                        ends.clear();
                    }
                    match w {
                        TryWrite::Pid(c, pid) => {
                            let n = sqlx::query(
                                "UPDATE task_instances SET pid = $1 WHERE run_id = $2 AND task_id = $3 AND map_index = $4 \
                                 AND state = 'running' AND try_number = $5 AND lease_owner = $6",
                            )
                            .bind(*pid)
                            .bind(&c.run_id)
                            .bind(&c.task_id)
                            .bind(c.map_index)
                            .bind(c.try_number)
                            .bind(&c.owner)
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                            applied.push(n == 1);
                        }
                        TryWrite::External(c, reference) => {
                            let n = sqlx::query(
                                "UPDATE task_instances SET external_ref = $1 WHERE run_id = $2 AND task_id = $3 AND map_index = $4 \
                                 AND state = 'running' AND try_number = $5 AND lease_owner = $6",
                            )
                            .bind(json_text(reference))
                            .bind(&c.run_id)
                            .bind(&c.task_id)
                            .bind(c.map_index)
                            .bind(c.try_number)
                            .bind(&c.owner)
                            .execute(&mut **tx)
                            .await?
                            .rows_affected();
                            applied.push(n == 1);
                        }
                        TryWrite::End(c, end) => ends.push((c, end)),
                    }
                }
                applied.extend(Self::end_in(tx, &ends).await?);
                Ok(applied)
            }

            /// Records the ends of tries, each fenced on its lease; per end, whether it applied.
            /// The keys of `ends` are distinct.
            async fn end_in(tx: &mut sqlx::Transaction<'static, $db>, ends: &[(&Claim, &TryEnd)]) -> Result<Vec<bool>> {
                // A requeued try is closed as failed in the history; its instance goes back to
                // `queued`.
                let try_state =
                    |end: &TryEnd| if end.requeue { TaskState::Failed.as_str() } else { end.state.as_str() };
                let mut applied = vec![false; ends.len()];
                // 13 binds a row keeps a chunk far below either database's limit on binds.
                for (part, chunk) in ends.chunks(500).enumerate() {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "WITH w (run_id, task_id, map_index, try_number, owner, state, output, error, ended_at, \
                         next_try_at, requeue, reschedule, try_state) AS (",
                    );
                    qb.push_values(chunk, |mut b, (c, end)| {
                        b.push_bind(c.run_id.clone())
                            .push_bind(c.task_id.clone())
                            .push_bind(c.map_index)
                            .push_bind(c.try_number)
                            .push_bind(c.owner.clone())
                            .push_bind(end.state.as_str())
                            .push_bind(end.output.as_ref().map(json_text))
                            .push_bind(end.error.clone())
                            .push_bind(to_micros(end.now))
                            .push_bind(opt_us(end.next_try_at))
                            .push_bind(if end.requeue { 1i64 } else { 0 })
                            .push_bind(if end.reschedule { 1i64 } else { 0 })
                            .push_bind(try_state(end));
                    });
                    let update = "UPDATE task_instances SET state = w.state, output = w.output, error = w.error, \
                         ended_at = w.ended_at, next_try_at = w.next_try_at, lease_owner = NULL, lease_expires_at = NULL, \
                         try_base = task_instances.try_base + w.requeue, \
                         reschedules = CASE WHEN w.reschedule = 1 THEN task_instances.reschedules + 1 ELSE 0 END, \
                         external_ref = CASE WHEN w.requeue = 1 THEN task_instances.external_ref ELSE NULL END \
                         FROM w WHERE task_instances.run_id = w.run_id AND task_instances.task_id = w.task_id \
                         AND task_instances.map_index = w.map_index AND task_instances.state = 'running' \
                         AND task_instances.try_number = w.try_number AND task_instances.lease_owner = w.owner \
                         RETURNING task_instances.run_id AS run_id, task_instances.task_id AS task_id, \
                         task_instances.map_index AS map_index";
                    if $writing_ctes {
                        // The history rows of the ends that applied, in the same statement: `e`
                        // is what the UPDATE returns, with the columns CLOSE_TRIES reads added.
                        qb.push(format!(
                            "), e AS ({update}, w.try_number AS try_number, w.try_state AS state, \
                             w.ended_at AS ended_at, w.error AS error), \
                             closed AS ({CLOSE_TRIES}) \
                             SELECT run_id, task_id, map_index FROM e"
                        ));
                    } else {
                        qb.push(format!(") {update}"));
                    }
                    let rows = qb.build().fetch_all(&mut **tx).await?;
                    let mut done = Vec::with_capacity(rows.len());
                    for r in &rows {
                        let (run_id, task_id, map_index): (String, String, i64) =
                            (r.try_get("run_id")?, r.try_get("task_id")?, r.try_get("map_index")?);
                        if let Some(i) = chunk.iter().position(|(c, _)| {
                            c.run_id == run_id && c.task_id == task_id && c.map_index == map_index
                        }) {
                            applied[part * 500 + i] = true;
                            done.push(chunk[i]);
                        }
                    }
                    if $writing_ctes || done.is_empty() {
                        continue;
                    }
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "WITH e (run_id, task_id, map_index, try_number, state, ended_at, error) AS (",
                    );
                    qb.push_values(&done, |mut b, (c, end)| {
                        b.push_bind(c.run_id.clone())
                            .push_bind(c.task_id.clone())
                            .push_bind(c.map_index)
                            .push_bind(c.try_number)
                            .push_bind(try_state(end))
                            .push_bind(to_micros(end.now))
                            .push_bind(end.error.clone());
                    });
                    qb.push(format!(") {CLOSE_TRIES}"));
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(applied)
            }

            /// Queues `tries` of `run_id` (task, map index) that are `scheduled` or `up_for_retry`.
            async fn queue_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                run_id: &str,
                tries: &[(&str, i64)],
                now: i64,
            ) -> Result<()> {
                for chunk in tries.chunks(1000) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new("WITH q (task_id, map_index) AS (");
                    qb.push_values(chunk, |mut b, (task_id, map_index)| {
                        b.push_bind(task_id.to_string()).push_bind(*map_index);
                    });
                    qb.push(") UPDATE task_instances SET state = 'queued', next_try_at = NULL, queued_at = ");
                    qb.push_bind(now);
                    qb.push(" FROM q WHERE task_instances.run_id = ");
                    qb.push_bind(run_id.to_string());
                    qb.push(
                        " AND task_instances.task_id = q.task_id AND task_instances.map_index = q.map_index \
                         AND task_instances.state IN ('scheduled', 'up_for_retry')",
                    );
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            fn run_row(r: &$row) -> Result<RunRow> {
                Ok(RunRow {
                    run_id: r.try_get("run_id")?,
                    dag_id: r.try_get("dag_id")?,
                    dag_version: r.try_get("dag_version")?,
                    run_type: parse_state::<RunType>(&r.try_get::<String, _>("run_type")?)?,
                    state: parse_state::<RunState>(&r.try_get::<String, _>("state")?)?,
                    logical_date: from_micros(r.try_get("logical_date")?),
                    data_interval_start: from_micros(r.try_get("data_interval_start")?),
                    data_interval_end: from_micros(r.try_get("data_interval_end")?),
                    params: parse_json(Some(r.try_get("params")?), "params")?.unwrap_or(Json::Null),
                    queued_at: from_micros(r.try_get("queued_at")?),
                    started_at: ts(r.try_get("started_at")?),
                    ended_at: ts(r.try_get("ended_at")?),
                })
            }

            fn ti_row(r: &$row) -> Result<TiRow> {
                Ok(TiRow {
                    run_id: r.try_get("run_id")?,
                    task_id: r.try_get("task_id")?,
                    map_index: r.try_get("map_index")?,
                    state: parse_state::<TaskState>(&r.try_get::<String, _>("state")?)?,
                    try_number: r.try_get("try_number")?,
                    try_base: r.try_get("try_base")?,
                    priority: r.try_get("priority")?,
                    pool: r.try_get("pool")?,
                    item: parse_json(r.try_get("item")?, "item")?,
                    output: parse_json(r.try_get("output")?, "output")?,
                    error: r.try_get("error")?,
                    queued_at: ts(r.try_get("queued_at")?),
                    started_at: ts(r.try_get("started_at")?),
                    ended_at: ts(r.try_get("ended_at")?),
                    next_try_at: ts(r.try_get("next_try_at")?),
                    lease_owner: r.try_get("lease_owner")?,
                    lease_expires_at: ts(r.try_get("lease_expires_at")?),
                    hostname: r.try_get("hostname")?,
                    pid: r.try_get("pid")?,
                    external_ref: parse_json(r.try_get("external_ref")?, "external_ref")?,
                })
            }

            fn dag_row(r: &$row) -> Result<DagRow> {
                let last_id: Option<String> = r.try_get("last_run_id")?;
                let last_state: Option<String> = r.try_get("last_run_state")?;
                let last_run = match (last_id, last_state) {
                    (Some(id), Some(s)) => Some((id, parse_state::<RunState>(&s)?)),
                    _ => None,
                };
                let tags = parse_json(Some(r.try_get("tags")?), "tags")?
                    .and_then(|v| serde_json::from_value::<Vec<String>>(v).ok())
                    .unwrap_or_default();
                Ok(DagRow {
                    dag_id: r.try_get("dag_id")?,
                    fileloc: r.try_get("fileloc")?,
                    version: r.try_get("version")?,
                    description: r.try_get("description")?,
                    schedule: r.try_get("schedule")?,
                    timezone: r.try_get("timezone")?,
                    tags,
                    params: parse_json(Some(r.try_get("params")?), "params")?.unwrap_or(Json::Null),
                    paused: r.try_get("paused")?,
                    active: r.try_get("active")?,
                    next_run_at: ts(r.try_get("next_run_at")?),
                    last_run,
                })
            }

            /// The keyed create inside a transaction: `Existing` when the key is taken within
            /// its window, `Duplicate` when the key was new but the run could not be inserted
            /// (the key row is then the caller's to roll back).
            async fn create_keyed_in(
                tx: &mut sqlx::Transaction<'static, $db>,
                run: &NewRun,
                key: &str,
                not_before: DateTime<Utc>,
            ) -> Result<Created> {
                // Expired keys of every DAG go here too, which keeps the table to one window.
                sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(to_micros(not_before))
                    .execute(&mut **tx)
                    .await?;
                // On PostgreSQL a concurrent insert of the same key waits here for the first
                // transaction and then does nothing; the SELECT below (a new statement, so a new
                // snapshot under READ COMMITTED) sees the committed row. SQLite serializes writers.
                let inserted = sqlx::query(
                    "INSERT INTO idempotency_keys (dag_id, idem_key, run_id, created_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&run.dag_id)
                .bind(key)
                .bind(&run.run_id)
                .bind(to_micros(run.queued_at))
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    let row = sqlx::query("SELECT run_id FROM idempotency_keys WHERE dag_id = $1 AND idem_key = $2")
                        .bind(&run.dag_id)
                        .bind(key)
                        .fetch_one(&mut **tx)
                        .await?;
                    return Ok(Created::Existing(row.try_get("run_id")?));
                }
                if Self::insert_run(tx, run).await? {
                    Ok(Created::Created)
                } else {
                    Ok(Created::Duplicate)
                }
            }

            /// Inserts a queued run and its task instances; false (nothing inserted) when a
            /// scheduled or backfill run exists already for its DAG and logical date.
            async fn insert_run(tx: &mut sqlx::Transaction<'static, $db>, run: &NewRun) -> Result<bool> {
                let inserted = sqlx::query(
                    "INSERT INTO dag_runs (run_id, dag_id, dag_version, run_type, state, logical_date, \
                     data_interval_start, data_interval_end, params, queued_at) \
                     VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                )
                .bind(&run.run_id)
                .bind(&run.dag_id)
                .bind(&run.dag_version)
                .bind(run.run_type.as_str())
                .bind(to_micros(run.logical_date))
                .bind(to_micros(run.data_interval_start))
                .bind(to_micros(run.data_interval_end))
                .bind(json_text(&run.params))
                .bind(to_micros(run.queued_at))
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    return Ok(false);
                }
                for chunk in run.tasks.chunks(1000) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO task_instances (run_id, task_id, map_index, state, priority, pool) ",
                    );
                    qb.push_values(chunk, |mut b, t| {
                        b.push_bind(run.run_id.clone())
                            .push_bind(t.task_id.clone())
                            .push_bind(UNMAPPED)
                            .push_bind(TaskState::Scheduled.as_str())
                            .push_bind(t.priority as i64)
                            .push_bind(t.pool.clone());
                    });
                    qb.build().execute(&mut **tx).await?;
                }
                Ok(true)
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn sync_dags(
                &self,
                changed: &[DagRecord],
                present: &[String],
                import_errors: &BTreeMap<String, Vec<String>>,
                now: DateTime<Utc>,
            ) -> Result<()> {
                let now = to_micros(now);
                let (_writer, mut tx) = self.begin_write().await?;
                for d in changed {
                    sqlx::query(
                        "INSERT INTO dags (dag_id, fileloc, version, description, schedule, timezone, tags, params, \
                         paused, active, next_run_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, TRUE, $10, $11) \
                         ON CONFLICT (dag_id) DO UPDATE SET fileloc = excluded.fileloc, version = excluded.version, \
                         description = excluded.description, schedule = excluded.schedule, timezone = excluded.timezone, \
                         tags = excluded.tags, params = excluded.params, active = TRUE, next_run_at = excluded.next_run_at, \
                         updated_at = excluded.updated_at",
                    )
                    .bind(&d.dag_id)
                    .bind(&d.fileloc)
                    .bind(&d.version)
                    .bind(&d.description)
                    .bind(&d.schedule)
                    .bind(&d.timezone)
                    .bind(json_text(&serde_json::json!(d.tags)))
                    .bind(json_text(&d.params))
                    .bind(d.paused)
                    .bind(opt_us(d.next_run_at))
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO dag_versions (dag_id, version, fileloc, source, created_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (dag_id, version) DO NOTHING",
                    )
                    .bind(&d.dag_id)
                    .bind(&d.version)
                    .bind(&d.fileloc)
                    .bind(&d.source)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("UPDATE dags SET active = FALSE WHERE active");
                if !present.is_empty() {
                    qb.push(" AND dag_id NOT IN (");
                    let mut sep = qb.separated(", ");
                    for id in present {
                        sep.push_bind(id.clone());
                    }
                    qb.push(")");
                }
                qb.build().execute(&mut *tx).await?;
                sqlx::query("DELETE FROM import_errors").execute(&mut *tx).await?;
                for (file, errors) in import_errors {
                    sqlx::query("INSERT INTO import_errors (fileloc, errors, updated_at) VALUES ($1, $2, $3)")
                        .bind(file)
                        .bind(json_text(&serde_json::json!(errors)))
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn import_errors(&self) -> Result<BTreeMap<String, Vec<String>>> {
                let rows = sqlx::query("SELECT fileloc, errors FROM import_errors ORDER BY fileloc")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        let errors: Vec<String> = serde_json::from_str(&r.try_get::<String, _>("errors")?)
                            .map_err(|e| StoreError::Corrupt(format!("import_errors: {e}")))?;
                        Ok((r.try_get("fileloc")?, errors))
                    })
                    .collect()
            }

            async fn dag_source(&self, dag_id: &str, version: &str) -> Result<Option<(String, String)>> {
                let row = sqlx::query("SELECT fileloc, source FROM dag_versions WHERE dag_id = $1 AND version = $2")
                    .bind(dag_id)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| Ok((r.try_get("fileloc")?, r.try_get("source")?))).transpose()
            }

            async fn list_dags(&self) -> Result<Vec<DagRow>> {
                let rows = sqlx::query(
                    "SELECT d.*, \
                     (SELECT r.run_id FROM dag_runs r WHERE r.dag_id = d.dag_id ORDER BY r.queued_at DESC LIMIT 1) AS last_run_id, \
                     (SELECT r.state FROM dag_runs r WHERE r.dag_id = d.dag_id ORDER BY r.queued_at DESC LIMIT 1) AS last_run_state \
                     FROM dags d WHERE d.active ORDER BY d.dag_id",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(Self::dag_row).collect()
            }

            async fn get_dag(&self, dag_id: &str) -> Result<Option<DagRow>> {
                let row = sqlx::query(
                    "SELECT d.*, \
                     (SELECT r.run_id FROM dag_runs r WHERE r.dag_id = d.dag_id ORDER BY r.queued_at DESC LIMIT 1) AS last_run_id, \
                     (SELECT r.state FROM dag_runs r WHERE r.dag_id = d.dag_id ORDER BY r.queued_at DESC LIMIT 1) AS last_run_state \
                     FROM dags d WHERE d.dag_id = $1",
                )
                .bind(dag_id)
                .fetch_optional(&self.pool)
                .await?;
                row.as_ref().map(Self::dag_row).transpose()
            }

            async fn set_paused(&self, dag_id: &str, paused: bool) -> Result<bool> {
                let (_writer, mut tx) = self.begin_write().await?;
                let n = sqlx::query("UPDATE dags SET paused = $1 WHERE dag_id = $2")
                    .bind(paused)
                    .bind(dag_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn set_next_run_at(&self, dag_id: &str, at: Option<DateTime<Utc>>) -> Result<()> {
                let (_writer, mut tx) = self.begin_write().await?;
                sqlx::query("UPDATE dags SET next_run_at = $1 WHERE dag_id = $2")
                    .bind(opt_us(at))
                    .bind(dag_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_run(&self, run: &NewRun) -> Result<bool> {
                let (_writer, mut tx) = self.begin_write().await?;
                if !Self::insert_run(&mut tx, run).await? {
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn create_run_keyed(&self, run: &NewRun, key: &str, not_before: DateTime<Utc>) -> Result<KeyedRun> {
                let (_writer, mut tx) = self.begin_write().await?;
                let created = Self::create_keyed_in(&mut tx, run, key, not_before).await?;
                match created {
                    Created::Created => {
                        tx.commit().await?;
                        Ok(KeyedRun::Created)
                    }
                    Created::Existing(first) => {
                        tx.commit().await?;
                        Ok(KeyedRun::Existing(first))
                    }
                    // Dropping the transaction rolls the key back with it.
                    Created::Duplicate => Err(StoreError::Corrupt(format!("run {} exists already", run.run_id))),
                }
            }

            async fn create_runs(&self, batch: &[RunCreate]) -> Result<Vec<Created>> {
                let (_writer, mut tx) = self.begin_write().await?;
                let mut out = Vec::with_capacity(batch.len());
                for c in batch {
                    out.push(match &c.key {
                        None => {
                            if Self::insert_run(&mut tx, &c.run).await? {
                                Created::Created
                            } else {
                                Created::Duplicate
                            }
                        }
                        Some((key, not_before)) => {
                            let created = Self::create_keyed_in(&mut tx, &c.run, key, *not_before).await?;
                            if created == Created::Duplicate {
                                // The others in the batch still commit; this key must not
                                // point at a run that was not created.
                                sqlx::query("DELETE FROM idempotency_keys WHERE dag_id = $1 AND idem_key = $2 AND run_id = $3")
                                    .bind(&c.run.dag_id)
                                    .bind(key)
                                    .bind(&c.run.run_id)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            created
                        }
                    });
                }
                tx.commit().await?;
                Ok(out)
            }

            async fn get_run(&self, run_id: &str) -> Result<Option<RunRow>> {
                let sql = format!("SELECT {RUN_COLUMNS} FROM dag_runs WHERE run_id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(run_id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(Self::run_row).transpose()
            }

            async fn list_runs(&self, f: &RunFilter) -> Result<Vec<RunRow>> {
                let mut qb: QueryBuilder<$db> =
                    QueryBuilder::new(format!("SELECT {RUN_COLUMNS} FROM dag_runs WHERE TRUE"));
                if let Some(d) = &f.dag_id {
                    qb.push(" AND dag_id = ").push_bind(d.clone());
                }
                if let Some(s) = f.state {
                    qb.push(" AND state = ").push_bind(s.as_str());
                }
                match (f.before, &f.before_run_id) {
                    (Some(b), Some(id)) => {
                        // The first bound gives both databases a range on the index; the OR
                        // alone made SQLite read from the newest run down.
                        qb.push(" AND queued_at <= ")
                            .push_bind(to_micros(b))
                            .push(" AND (queued_at < ")
                            .push_bind(to_micros(b))
                            .push(" OR run_id < ")
                            .push_bind(id.clone())
                            .push(")");
                    }
                    (Some(b), None) => {
                        qb.push(" AND queued_at < ").push_bind(to_micros(b));
                    }
                    (None, _) => {}
                }
                qb.push(" ORDER BY queued_at DESC, run_id DESC LIMIT ")
                    .push_bind(f.limit.max(0));
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter().map(Self::run_row).collect()
            }

            async fn active_runs(&self) -> Result<Vec<RunRow>> {
                let sql = format!(
                    "SELECT {RUN_COLUMNS} FROM dag_runs WHERE state IN ('queued', 'running') \
                     ORDER BY logical_date, queued_at"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
                rows.iter().map(Self::run_row).collect()
            }

            async fn latest_logical_date(&self, dag_id: &str) -> Result<Option<DateTime<Utc>>> {
                let row = sqlx::query(
                    "SELECT MAX(logical_date) AS m FROM dag_runs WHERE dag_id = $1 AND run_type <> 'manual'",
                )
                .bind(dag_id)
                .fetch_one(&self.pool)
                .await?;
                Ok(ts(row.try_get("m")?))
            }

            async fn queued_runs(&self, dag_id: &str, up_to: i64) -> Result<i64> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM dag_runs WHERE dag_id = $1 AND state = 'queued' LIMIT $2) q",
                )
                .bind(dag_id)
                .bind(up_to)
                .fetch_one(&self.pool)
                .await?;
                Ok(n)
            }

            async fn keyed_run(&self, dag_id: &str, key: &str, not_before: DateTime<Utc>) -> Result<Option<String>> {
                let row = sqlx::query(
                    "SELECT run_id FROM idempotency_keys WHERE dag_id = $1 AND idem_key = $2 AND created_at >= $3",
                )
                .bind(dag_id)
                .bind(key)
                .bind(to_micros(not_before))
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| r.try_get("run_id")).transpose().map_err(Into::into)
            }

            async fn start_run(&self, run_id: &str, now: DateTime<Utc>) -> Result<bool> {
                let (_writer, mut tx) = self.begin_write().await?;
                let n = sqlx::query(
                    "UPDATE dag_runs SET state = 'running', started_at = COALESCE(started_at, $1), ended_at = NULL \
                     WHERE run_id = $2 AND state = 'queued'",
                )
                .bind(to_micros(now))
                .bind(run_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }

            async fn task_instances(&self, run_id: &str) -> Result<Vec<TiRow>> {
                let sql = format!(
                    "SELECT {TI_COLUMNS} FROM task_instances WHERE run_id = $1 ORDER BY task_id, map_index"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(run_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::ti_row).collect()
            }

            async fn plan_rows(&self, run_id: &str, full_tasks: &[String]) -> Result<PlanRows> {
                // One predicate picks the listed rows; its negation, the counted ones.
                let listed = |qb: &mut QueryBuilder<$db>| {
                    qb.push("(map_index = ")
                        .push_bind(UNMAPPED)
                        .push(" OR state IN ('scheduled', 'up_for_retry')");
                    if !full_tasks.is_empty() {
                        qb.push(" OR task_id IN (");
                        let mut sep = qb.separated(", ");
                        for t in full_tasks {
                            sep.push_bind(t.clone());
                        }
                        qb.push(")");
                    }
                    qb.push(")");
                };
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT task_id, map_index, state, try_number, try_base, next_try_at, output \
                     FROM task_instances WHERE run_id = ",
                );
                qb.push_bind(run_id.to_string()).push(" AND ");
                listed(&mut qb);
                let rows = qb.build().fetch_all(&self.pool).await?;
                let mut out = PlanRows::default();
                for r in &rows {
                    let task_id: String = r.try_get(0)?;
                    let output = if full_tasks.contains(&task_id) {
                        parse_json(r.try_get(6)?, "output")?
                    } else {
                        None
                    };
                    out.rows.push(TiSnapshot {
                        task_id,
                        map_index: r.try_get(1)?,
                        state: parse_state::<TaskState>(r.try_get::<&str, _>(2)?)?,
                        try_number: r.try_get(3)?,
                        try_base: r.try_get(4)?,
                        next_try_at: ts(r.try_get(5)?),
                        output,
                    });
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT task_id, state, COUNT(*) FROM task_instances WHERE run_id = ",
                );
                qb.push_bind(run_id.to_string()).push(" AND NOT ");
                listed(&mut qb);
                qb.push(" GROUP BY task_id, state");
                for r in qb.build().fetch_all(&self.pool).await? {
                    let n: i64 = r.try_get(2)?;
                    out.counts.push((
                        r.try_get(0)?,
                        parse_state::<TaskState>(r.try_get::<&str, _>(1)?)?,
                        n as usize,
                    ));
                }
                Ok(out)
            }

            async fn outputs(&self, run_id: &str, task_ids: &[String]) -> Result<Vec<(String, i64, Option<Json>)>> {
                if task_ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT task_id, map_index, output FROM task_instances WHERE run_id = ",
                );
                qb.push_bind(run_id.to_string()).push(" AND task_id IN (");
                let mut sep = qb.separated(", ");
                for id in task_ids {
                    sep.push_bind(id.clone());
                }
                qb.push(")");
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        let output = parse_json(r.try_get("output")?, "output")?;
                        Ok((r.try_get("task_id")?, r.try_get("map_index")?, output))
                    })
                    .collect()
            }

            async fn apply(&self, run_id: &str, decisions: &[Decision], now: DateTime<Utc>) -> Result<()> {
                if decisions.is_empty() {
                    return Ok(());
                }
                let now = to_micros(now);
                let (_writer, mut tx) = self.begin_write().await?;
                // Tries queued side by side (a fan-out's 500) go in one statement: on a server,
                // one round trip each held the whole fan-out back for ~100 ms.
                let mut queue: Vec<(&str, i64)> = Vec::new();
                for d in decisions {
                    if !matches!(d, Decision::Queue { .. }) {
                        Self::queue_in(&mut tx, run_id, &queue, now).await?;
                        queue.clear();
                    }
                    match d {
                        Decision::Queue { task_id, map_index } => queue.push((task_id, *map_index)),
                        Decision::Skip { task_id, map_index } | Decision::UpstreamFailed { task_id, map_index } => {
                            let state = if matches!(d, Decision::Skip { .. }) {
                                TaskState::Skipped
                            } else {
                                TaskState::UpstreamFailed
                            };
                            sqlx::query(
                                "UPDATE task_instances SET state = $1, ended_at = $2 \
                                 WHERE run_id = $3 AND task_id = $4 AND map_index = $5 AND state = 'scheduled'",
                            )
                            .bind(state.as_str())
                            .bind(now)
                            .bind(run_id)
                            .bind(task_id)
                            .bind(*map_index)
                            .execute(&mut *tx)
                            .await?;
                        }
                        Decision::FailTry { task_id, map_index, message, outcome } => {
                            let row = sqlx::query(
                                "UPDATE task_instances SET state = $1, try_number = try_number + 1, error = $2, \
                                 started_at = $3, ended_at = $3, next_try_at = $4 \
                                 WHERE run_id = $5 AND task_id = $6 AND map_index = $7 AND state = 'scheduled' \
                                 RETURNING try_number",
                            )
                            .bind(outcome.state().as_str())
                            .bind(message)
                            .bind(now)
                            .bind(opt_us(outcome.retry_at()))
                            .bind(run_id)
                            .bind(task_id)
                            .bind(*map_index)
                            .fetch_optional(&mut *tx)
                            .await?;
                            if let Some(row) = row {
                                let try_number: i64 = row.try_get("try_number")?;
                                sqlx::query(
                                    "INSERT INTO task_tries (run_id, task_id, map_index, try_number, state, started_at, ended_at, error) \
                                     VALUES ($1, $2, $3, $4, 'failed', $5, $5, $6) ON CONFLICT DO NOTHING",
                                )
                                .bind(run_id)
                                .bind(task_id)
                                .bind(*map_index)
                                .bind(try_number)
                                .bind(now)
                                .bind(message)
                                .execute(&mut *tx)
                                .await?;
                            }
                        }
                        Decision::Expand { task_id, items } => {
                            if items.is_empty() {
                                sqlx::query(
                                    "UPDATE task_instances SET state = 'skipped', ended_at = $1 \
                                     WHERE run_id = $2 AND task_id = $3 AND map_index = $4 AND state = 'scheduled'",
                                )
                                .bind(now)
                                .bind(run_id)
                                .bind(task_id)
                                .bind(UNMAPPED)
                                .execute(&mut *tx)
                                .await?;
                                continue;
                            }
                            let placeholder = sqlx::query(
                                "DELETE FROM task_instances WHERE run_id = $1 AND task_id = $2 AND map_index = $3 \
                                 AND state = 'scheduled' RETURNING priority, pool, try_number",
                            )
                            .bind(run_id)
                            .bind(task_id)
                            .bind(UNMAPPED)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let Some(placeholder) = placeholder else { continue };
                            let priority: i64 = placeholder.try_get("priority")?;
                            let pool: String = placeholder.try_get("pool")?;
                            let indexed: Vec<(i64, String)> = items
                                .iter()
                                .enumerate()
                                .map(|(i, v)| (i as i64, json_text(v)))
                                .collect();
                            for chunk in indexed.chunks(1000) {
                                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                                    "INSERT INTO task_instances (run_id, task_id, map_index, state, priority, pool, item, queued_at) ",
                                );
                                qb.push_values(chunk, |mut b, (i, item)| {
                                    b.push_bind(run_id.to_string())
                                        .push_bind(task_id.clone())
                                        .push_bind(*i)
                                        .push_bind(TaskState::Queued.as_str())
                                        .push_bind(priority)
                                        .push_bind(pool.clone())
                                        .push_bind(item.clone())
                                        .push_bind(now);
                                });
                                qb.build().execute(&mut *tx).await?;
                            }
                        }
                        Decision::FinishRun(state) => {
                            sqlx::query(
                                "UPDATE dag_runs SET state = $1, ended_at = $2 WHERE run_id = $3 AND state = 'running'",
                            )
                            .bind(state.as_str())
                            .bind(now)
                            .bind(run_id)
                            .execute(&mut *tx)
                            .await?;
                        }
                    }
                }
                Self::queue_in(&mut tx, run_id, &queue, now).await?;
                tx.commit().await?;
                // What was queued may sort before a claim cursor (a higher priority); after the commit,
                // so that the head read it causes sees it.
                if $claim_cursor
                    && decisions.iter().any(|d| matches!(d, Decision::Queue { .. } | Decision::Expand { .. }))
                    && let Ok(mut cursors) = self.cursors.lock()
                {
                    cursors.clear();
                }
                Ok(())
            }

            async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>> {
                let batch = ClaimBatch {
                    requests: vec![req.clone()],
                    limit: req.limit,
                };
                let (_, mut claimed) = self.record_and_claim(&[], Some(&batch)).await?;
                Ok(claimed.pop().unwrap_or_default())
            }

            async fn running_by_pool(&self) -> Result<BTreeMap<String, i64>> {
                let rows = sqlx::query(
                    "SELECT pool, COUNT(*) AS n FROM task_instances WHERE state = 'running' GROUP BY pool",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("pool")?, r.try_get("n")?)))
                    .collect()
            }

            async fn queued_pools(&self) -> Result<Vec<String>> {
                let rows = sqlx::query("SELECT DISTINCT pool FROM task_instances WHERE state = 'queued'")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok(r.try_get("pool")?)).collect()
            }

            async fn paused_flags(&self) -> Result<BTreeMap<String, bool>> {
                let rows = sqlx::query("SELECT dag_id, paused FROM dags WHERE active")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get("dag_id")?, r.try_get("paused")?)))
                    .collect()
            }

            async fn record_tries(&self, writes: &[TryWrite]) -> Result<Vec<bool>> {
                Ok(self.record_and_claim(writes, None).await?.0)
            }

            async fn record_and_claim(
                &self,
                writes: &[TryWrite],
                claims: Option<&ClaimBatch>,
            ) -> Result<(Vec<bool>, Vec<Vec<Claim>>)> {
                let wanted = claims.is_some_and(|c| c.limit > 0 && !c.requests.is_empty());
                if writes.is_empty() && !wanted {
                    return Ok((Vec::new(), claims.map(|c| vec![Vec::new(); c.requests.len()]).unwrap_or_default()));
                }
                // Read before the claims: a clear() meanwhile (something was queued) voids what
                // they found.
                let epoch = self.cursors.lock().map_or(0, |c| c.epoch());
                let (_writer, mut tx) = self.begin_write().await?;
                // The ends first: the slots they free are counted by the claims below.
                let applied = Self::record_in(&mut tx, writes).await?;
                let mut claimed = Vec::new();
                let mut read = Vec::new();
                if let Some(batch) = claims {
                    // A sized pool's claim counts the running tries its statement's snapshot
                    // sees, which leaves out what a concurrent transaction claimed and has not
                    // yet committed (another scheduler's), so two claims could each take the last
                    // slot. The pool's lock, held to commit, orders them: the claim statements
                    // come after it, with a snapshot that has the earlier claim. Every pool of
                    // the batch is locked here, in name order, so that two batches asking for
                    // the same pools in other orders never hold one each and wait for the other.
                    let pool_lock: Option<&'static str> = $pool_lock;
                    // A batch with no room claims nothing, and must not wait for the locks.
                    if let Some(lock) = pool_lock
                        && batch.limit > 0
                    {
                        let mut sized: Vec<&str> = batch
                            .requests
                            .iter()
                            .filter(|r| r.pool_slots.is_some() && r.limit > 0)
                            .map(|r| r.pool.as_str())
                            .collect();
                        sized.sort_unstable();
                        sized.dedup();
                        for pool in sized {
                            sqlx::query(lock).bind(pool).execute(&mut *tx).await?;
                        }
                    }
                    let mut left = batch.limit;
                    for req in &batch.requests {
                        if left <= 0 {
                            claimed.push(Vec::new());
                            continue;
                        }
                        let req = ClaimRequest { limit: req.limit.min(left), ..req.clone() };
                        let after = if $claim_cursor {
                            self.cursors.lock().ok().and_then(|c| {
                                c.start(&req.pool, req.run_id.as_deref(), std::time::Instant::now())
                            })
                        } else {
                            None
                        };
                        let (mut got, keys) = Self::claim_in(&mut tx, &req, after.as_ref()).await?;
                        let (from_cursor, from_head) = match after {
                            None => (Vec::new(), Some(keys)),
                            Some(_) if (got.len() as i64) < req.limit => {
                                // Short: the rest may be queued before the cursor.
                                let rest = ClaimRequest { limit: req.limit - got.len() as i64, ..req.clone() };
                                let (more, head) = Self::claim_in(&mut tx, &rest, None).await?;
                                got.extend(more);
                                (keys, Some(head))
                            }
                            Some(_) => (keys, None),
                        };
                        read.push((req.pool, req.run_id, from_cursor, from_head));
                        left -= got.len() as i64;
                        claimed.push(got);
                    }
                }
                tx.commit().await?;
                if $claim_cursor && let Ok(mut cursors) = self.cursors.lock() {
                    // A requeued try goes back to its old place in the queue.
                    if writes.iter().any(|w| matches!(w, TryWrite::End(_, end) if end.requeue)) {
                        cursors.clear();
                    } else {
                        let now = std::time::Instant::now();
                        for (pool, run, from_cursor, from_head) in &read {
                            cursors.settle(pool, run.as_deref(), from_cursor, from_head.as_deref(), epoch, now);
                        }
                    }
                }
                Ok((applied, claimed))
            }

            async fn heartbeat(
                &self,
                owner: &str,
                hostname: &str,
                pid: i64,
                now: DateTime<Utc>,
                lease_until: DateTime<Utc>,
            ) -> Result<()> {
                let (_writer, mut tx) = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO schedulers (id, hostname, pid, started_at, last_heartbeat) VALUES ($1, $2, $3, $4, $4) \
                     ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat",
                )
                .bind(owner)
                .bind(hostname)
                .bind(pid)
                .bind(to_micros(now))
                .execute(&mut *tx)
                .await?;
                // Rows another transaction holds (a try ending right now) are skipped rather than
                // waited for: waiting on rows locked in another order deadlocks on PostgreSQL, and
                // the next heartbeat extends whatever is still running.
                sqlx::query(concat!(
                    "UPDATE task_instances SET lease_expires_at = $1 WHERE state = 'running' AND (run_id, task_id, map_index) IN (\
                       SELECT run_id, task_id, map_index FROM task_instances \
                       WHERE lease_owner = $2 AND state = 'running' ",
                    $claim_lock,
                    ")"
                ))
                .bind(to_micros(lease_until))
                .bind(owner)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn owned_tries(&self, owner: &str) -> Result<Vec<(String, String, i64, i64)>> {
                let rows = sqlx::query(
                    "SELECT run_id, task_id, map_index, try_number FROM task_instances \
                     WHERE state = 'running' AND lease_owner = $1",
                )
                .bind(owner)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
                    .collect()
            }

            async fn last_heartbeat(&self) -> Result<Option<DateTime<Utc>>> {
                let row = sqlx::query("SELECT MAX(last_heartbeat) AS m FROM schedulers")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(ts(row.try_get("m")?))
            }

            async fn expired_tries(&self, now: DateTime<Utc>) -> Result<Vec<TiRow>> {
                let sql = format!(
                    "SELECT {TI_COLUMNS} FROM task_instances WHERE state = 'running' AND lease_expires_at < $1"
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(to_micros(now))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(Self::ti_row).collect()
            }

            async fn tries(&self, run_id: &str, task_id: &str, map_index: i64) -> Result<Vec<TryRow>> {
                let rows = sqlx::query(
                    "SELECT try_number, state, started_at, ended_at, error FROM task_tries \
                     WHERE run_id = $1 AND task_id = $2 AND map_index = $3 ORDER BY try_number",
                )
                .bind(run_id)
                .bind(task_id)
                .bind(map_index)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        Ok(TryRow {
                            try_number: r.try_get("try_number")?,
                            state: parse_state::<TaskState>(&r.try_get::<String, _>("state")?)?,
                            started_at: from_micros(r.try_get("started_at")?),
                            ended_at: ts(r.try_get("ended_at")?),
                            error: r.try_get("error")?,
                        })
                    })
                    .collect()
            }

            async fn mark_task(&self, m: &Mark) -> Result<Option<u64>> {
                let now = to_micros(m.now);
                let error = (m.state == TaskState::Failed).then(|| m.note.clone());
                let (_writer, mut tx) = self.begin_write().await?;
                let run = sqlx::query("SELECT state FROM dag_runs WHERE run_id = $1")
                    .bind(&m.run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if run.is_none() {
                    return Ok(None);
                }
                // Close the running try (if any) first, while the instance still says which it is.
                sqlx::query(
                    "UPDATE task_tries SET state = $1, ended_at = $2, error = $3 \
                     WHERE ended_at IS NULL AND (run_id, task_id, map_index, try_number) IN (\
                       SELECT run_id, task_id, map_index, try_number FROM task_instances \
                       WHERE run_id = $4 AND task_id = $5 AND (CAST($6 AS BIGINT) IS NULL OR map_index = $6) \
                       AND state = 'running')",
                )
                .bind(m.state.as_str())
                .bind(now)
                .bind(&m.note)
                .bind(&m.run_id)
                .bind(&m.task_id)
                .bind(m.map_index)
                .execute(&mut *tx)
                .await?;
                let changed = sqlx::query(
                    "UPDATE task_instances SET state = $1, ended_at = $2, error = $3, next_try_at = NULL, \
                     lease_owner = NULL, lease_expires_at = NULL, pid = NULL, external_ref = NULL \
                     WHERE run_id = $4 AND task_id = $5 AND (CAST($6 AS BIGINT) IS NULL OR map_index = $6) \
                     AND state <> $1",
                )
                .bind(m.state.as_str())
                .bind(now)
                .bind(&error)
                .bind(&m.run_id)
                .bind(&m.task_id)
                .bind(m.map_index)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if m.state == TaskState::Success {
                    for task_id in &m.downstream {
                        sqlx::query(
                            "UPDATE task_instances SET state = 'scheduled', try_base = try_number, reschedules = 0, error = NULL, \
                             ended_at = NULL WHERE run_id = $1 AND task_id = $2 AND state = 'upstream_failed'",
                        )
                        .bind(&m.run_id)
                        .bind(task_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                if changed > 0 {
                    sqlx::query(
                        "UPDATE dag_runs SET state = 'queued', ended_at = NULL \
                         WHERE run_id = $1 AND state IN ('success', 'failed')",
                    )
                    .bind(&m.run_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Some(changed))
            }

            async fn clear_tasks(&self, run_id: &str, task_ids: &[String], now: DateTime<Utc>) -> Result<bool> {
                let _ = now;
                let (_writer, mut tx) = self.begin_write().await?;
                let n = sqlx::query("UPDATE dag_runs SET state = 'queued', ended_at = NULL WHERE run_id = $1")
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Ok(false);
                }
                for task_id in task_ids {
                    sqlx::query(
                        "UPDATE task_instances SET state = 'scheduled', try_base = try_number, reschedules = 0, output = NULL, error = NULL, \
                         queued_at = NULL, started_at = NULL, ended_at = NULL, next_try_at = NULL, lease_owner = NULL, \
                         lease_expires_at = NULL, pid = NULL, external_ref = NULL WHERE run_id = $1 AND task_id = $2",
                    )
                    .bind(run_id)
                    .bind(task_id)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }

            async fn import_history(&self, runs: &[HistoryRun]) -> Result<u64> {
                let (_writer, mut tx) = self.begin_write().await?;
                let mut written = 0;
                // Bound parameters stay far below both databases' limits (SQLite 32,766).
                for chunk in runs.chunks(500) {
                    let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                        "INSERT INTO dag_runs (run_id, dag_id, dag_version, run_type, state, logical_date, \
                         data_interval_start, data_interval_end, params, queued_at, started_at, ended_at) ",
                    );
                    qb.push_values(chunk, |mut b, h| {
                        let r = &h.run;
                        b.push_bind(r.run_id.clone())
                            .push_bind(r.dag_id.clone())
                            .push_bind(r.dag_version.clone())
                            .push_bind(r.run_type.as_str())
                            .push_bind(r.state.as_str())
                            .push_bind(to_micros(r.logical_date))
                            .push_bind(to_micros(r.data_interval_start))
                            .push_bind(to_micros(r.data_interval_end))
                            .push_bind(json_text(&r.params))
                            .push_bind(to_micros(r.queued_at))
                            .push_bind(opt_us(r.started_at))
                            .push_bind(opt_us(r.ended_at));
                    });
                    qb.push(" ON CONFLICT DO NOTHING RETURNING run_id");
                    let new: std::collections::HashSet<String> = qb
                        .build()
                        .fetch_all(&mut *tx)
                        .await?
                        .iter()
                        .map(|r| r.try_get("run_id"))
                        .collect::<std::result::Result<_, _>>()?;
                    written += new.len() as u64;
                    let fresh: Vec<&HistoryRun> = chunk.iter().filter(|h| new.contains(&h.run.run_id)).collect();
                    let tis: Vec<(&str, &HistoryTask)> = fresh
                        .iter()
                        .flat_map(|h| h.tasks.iter().map(move |t| (h.run.run_id.as_str(), t)))
                        .collect();
                    for part in tis.chunks(2000) {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                            "INSERT INTO task_instances (run_id, task_id, map_index, state, try_number, pool, output, \
                             queued_at, started_at, ended_at) ",
                        );
                        qb.push_values(part, |mut b, (run_id, t)| {
                            let last = t.tries.last();
                            b.push_bind(run_id.to_string())
                                .push_bind(t.task_id.clone())
                                .push_bind(t.map_index)
                                .push_bind(t.state.as_str())
                                .push_bind(last.map_or(0, |x| x.try_number))
                                .push_bind("default")
                                .push_bind(t.output.as_ref().map(json_text))
                                .push_bind(t.tries.first().map(|x| to_micros(x.started_at)))
                                .push_bind(last.map(|x| to_micros(x.started_at)))
                                .push_bind(last.and_then(|x| opt_us(x.ended_at)));
                        });
                        qb.build().execute(&mut *tx).await?;
                    }
                    let tries: Vec<(&str, &str, i64, &TryRow)> = tis
                        .iter()
                        .flat_map(|(run_id, t)| t.tries.iter().map(move |x| (*run_id, t.task_id.as_str(), t.map_index, x)))
                        .collect();
                    for part in tries.chunks(2000) {
                        let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                            "INSERT INTO task_tries (run_id, task_id, map_index, try_number, state, started_at, ended_at, error) ",
                        );
                        qb.push_values(part, |mut b, (run_id, task_id, map_index, x)| {
                            b.push_bind(run_id.to_string())
                                .push_bind(task_id.to_string())
                                .push_bind(*map_index)
                                .push_bind(x.try_number)
                                .push_bind(x.state.as_str())
                                .push_bind(to_micros(x.started_at))
                                .push_bind(opt_us(x.ended_at))
                                .push_bind(x.error.clone());
                        });
                        qb.build().execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
                Ok(written)
            }

            async fn analyze(&self) -> Result<()> {
                if $backend == "postgres" {
                    sqlx::query("ANALYZE dag_runs, task_instances, task_tries")
                        .execute(&self.pool)
                        .await?;
                }
                Ok(())
            }

            async fn grid_counts(&self, run_ids: &[String]) -> Result<Vec<TiCount>> {
                if run_ids.is_empty() {
                    return Ok(Vec::new());
                }
                // The primary key (run_id, task_id, map_index) serves the IN list: no scan of the
                // history, however long.
                let mut qb: QueryBuilder<$db> = QueryBuilder::new(
                    "SELECT run_id, task_id, state, COUNT(*), MAX(map_index), MAX(try_number) \
                     FROM task_instances WHERE run_id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in run_ids {
                    sep.push_bind(id.clone());
                }
                qb.push(") GROUP BY run_id, task_id, state ORDER BY run_id, task_id, state");
                let rows = qb.build().fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|r| {
                        Ok(TiCount {
                            run_id: r.try_get(0)?,
                            task_id: r.try_get(1)?,
                            state: parse_state::<TaskState>(r.try_get::<&str, _>(2)?)?,
                            count: r.try_get(3)?,
                            max_map_index: r.try_get(4)?,
                            max_try_number: r.try_get(5)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

#[cfg(test)]
mod migration_files {
    #[test]
    fn both_databases_have_the_same_migration_files() {
        let names = |db: &str| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/").to_string() + db;
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let sqlite = names("sqlite");
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, names("postgres"));
    }
}

impl_store!(
    SqliteStore,
    Sqlite,
    sqlx::sqlite::SqliteRow,
    "sqlite",
    "",
    false,
    false,
    None
);
impl_store!(
    PgStore,
    Postgres,
    sqlx::postgres::PgRow,
    "postgres",
    "FOR UPDATE SKIP LOCKED",
    true,
    true,
    Some("SELECT pg_advisory_xact_lock(hashtextextended('flow pool ' || $1, 0))")
);
