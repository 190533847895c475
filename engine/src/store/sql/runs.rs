//! [`RunStore`]'s SQL: creating runs, reading them, and what people do to them (marks, clears).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{RUN_COLUMNS, SqlStore, TI_COLUMNS, Tx, json_text, parse_json, parse_state, ts};
use crate::plan::UNMAPPED;
use crate::state::{RunState, RunType, TaskState};
use crate::store::{
    Created, IdempotencyKey, KeyedRun, Mark, NewRun, Result, RunCreate, RunFilter, RunRow,
    RunStore, StoreError, TestRecord, TiRow, Wake,
};
use crate::time::{from_micros, to_micros};

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> bool: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> Option<String>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    /// queued -> running, if the run's DAG has fewer than `cap` running runs when one is given.
    async fn start_in(&self, run_id: &str, cap: Option<u32>, now: DateTime<Utc>) -> Result<bool> {
        let (_writer, mut tx) = self.begin_write().await?;
        if let (Some(_), Some(lock)) = (cap, DB::DAG_RUNS_LOCK) {
            sqlx::query(lock).bind(run_id).execute(&mut *tx).await?;
        }
        // After the lock: on PostgreSQL this statement's snapshot has every start committed
        // before it, another scheduler's included.
        let n = sqlx::query(
            "UPDATE dag_runs SET state = 'running', started_at = COALESCE(started_at, $1), ended_at = NULL \
             WHERE run_id = $2 AND state = 'queued' AND (CAST($3 AS BIGINT) IS NULL \
               OR (SELECT COUNT(*) FROM dag_runs AS active \
                   WHERE active.dag_id = dag_runs.dag_id AND active.state = 'running') < $3)",
        )
        .bind(to_micros(now))
        .bind(run_id)
        .bind(cap.map(i64::from))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    pub(super) fn run_row(r: &DB::Row) -> Result<RunRow> {
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

    pub(super) fn ti_row(r: &DB::Row) -> Result<TiRow> {
        Ok(TiRow {
            run_id: r.try_get("run_id")?,
            task_id: r.try_get("task_id")?,
            map_index: r.try_get("map_index")?,
            state: parse_state::<TaskState>(&r.try_get::<String, _>("state")?)?,
            try_number: r.try_get("try_number")?,
            try_base: r.try_get("try_base")?,
            priority: r.try_get("priority")?,
            pool: r.try_get("pool")?,
            queue: r.try_get("queue")?,
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

    /// The keyed create inside a transaction: `Existing` when the key is taken within its
    /// window, `Duplicate` when the key was new but the run could not be inserted (the key row
    /// is then the caller's to roll back).
    async fn create_keyed_in(
        tx: &mut Tx<DB>,
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
            let row = sqlx::query(
                "SELECT run_id FROM idempotency_keys WHERE dag_id = $1 AND idem_key = $2",
            )
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

    /// Inserts a queued run and its task instances; false (nothing inserted) when a scheduled
    /// or backfill run exists already for its DAG and logical date.
    /// Resets the given task instances (every one when `task_ids` is None) to `scheduled` and
    /// the run to `queued`; false when the run is unknown.
    pub(super) async fn clear_in(
        tx: &mut Tx<DB>,
        run_id: &str,
        task_ids: Option<&[String]>,
    ) -> Result<bool> {
        let n =
            sqlx::query("UPDATE dag_runs SET state = 'queued', ended_at = NULL WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        macro_rules! reset {
            () => {
                "UPDATE task_instances SET state = 'scheduled', try_base = try_number, \
                 reschedules = 0, output = NULL, error = NULL, queued_at = NULL, started_at = NULL, \
                 ended_at = NULL, next_try_at = NULL, lease_owner = NULL, lease_expires_at = NULL, \
                 pid = NULL, external_ref = NULL WHERE run_id = $1"
            };
        }
        match task_ids {
            None => {
                sqlx::query(reset!())
                    .bind(run_id)
                    .execute(&mut **tx)
                    .await?;
            }
            Some(ids) => {
                for task_id in ids {
                    sqlx::query(concat!(reset!(), " AND task_id = $2"))
                        .bind(run_id)
                        .bind(task_id)
                        .execute(&mut **tx)
                        .await?;
                }
            }
        }
        Ok(true)
    }

    pub(super) async fn insert_run(tx: &mut Tx<DB>, run: &NewRun) -> Result<bool> {
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
            let mut qb: QueryBuilder<DB> = QueryBuilder::new(
                "INSERT INTO task_instances (run_id, task_id, map_index, state, priority, pool, queue) ",
            );
            qb.push_values(chunk, |mut b, t| {
                b.push_bind(run.run_id.clone())
                    .push_bind(t.task_id.clone())
                    .push_bind(UNMAPPED)
                    .push_bind(TaskState::Scheduled.as_str())
                    .push_bind(t.priority as i64)
                    .push_bind(t.pool.clone())
                    .push_bind(t.queue.clone());
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(true)
    }

    /// One entry of a [`RunStore::create_runs`] batch.
    async fn create_one_in(tx: &mut Tx<DB>, c: &RunCreate) -> Result<Created> {
        let Some(IdempotencyKey { key, not_before }) = &c.key else {
            return Ok(if Self::insert_run(tx, &c.run).await? {
                Created::Created
            } else {
                Created::Duplicate
            });
        };
        let created = Self::create_keyed_in(tx, &c.run, key, *not_before).await?;
        if created == Created::Duplicate {
            // The others in the batch still commit; this key must not point at a run that was
            // not created.
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE dag_id = $1 AND idem_key = $2 AND run_id = $3",
            )
            .bind(&c.run.dag_id)
            .bind(key)
            .bind(&c.run.run_id)
            .execute(&mut **tx)
            .await?;
        }
        Ok(created)
    }

    /// Closes the running tries a mark ends, while their instances still say which they are.
    async fn close_marked_tries_in(tx: &mut Tx<DB>, m: &Mark, now: i64) -> Result<()> {
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
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl<DB> RunStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> bool: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> Option<String>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn create_run(&self, run: &NewRun) -> Result<bool> {
        let (writer, mut tx) = self.begin_write().await?;
        if !Self::insert_run(&mut tx, run).await? {
            return Ok(false);
        }
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
        Ok(true)
    }

    async fn create_run_keyed(
        &self,
        run: &NewRun,
        key: &str,
        not_before: DateTime<Utc>,
    ) -> Result<KeyedRun> {
        let (writer, mut tx) = self.begin_write().await?;
        let created = Self::create_keyed_in(&mut tx, run, key, not_before).await?;
        match created {
            Created::Created => {
                self.commit_and_ring(writer, tx, Wake::Runs).await?;
                Ok(KeyedRun::Created)
            }
            Created::Existing(first) => {
                tx.commit().await?;
                Ok(KeyedRun::Existing(first))
            }
            // Dropping the transaction rolls the key back with it.
            Created::Duplicate => Err(StoreError::Corrupt(format!(
                "run {} exists already",
                run.run_id
            ))),
        }
    }

    async fn create_runs(&self, batch: &[RunCreate]) -> Result<Vec<Created>> {
        let (writer, mut tx) = self.begin_write().await?;
        let mut out = Vec::with_capacity(batch.len());
        for c in batch {
            out.push(Self::create_one_in(&mut tx, c).await?);
        }
        if out.iter().any(|c| matches!(c, Created::Created)) {
            self.commit_and_ring(writer, tx, Wake::Runs).await?;
        } else {
            tx.commit().await?;
        }
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
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new(format!("SELECT {RUN_COLUMNS} FROM dag_runs WHERE TRUE"));
        if let Some(d) = &f.dag_id {
            qb.push(" AND dag_id = ").push_bind(d.clone());
        }
        if let Some(s) = f.state {
            qb.push(" AND state = ").push_bind(s.as_str());
        }
        match (f.before, &f.before_run_id) {
            (Some(b), Some(id)) => {
                // The first bound gives both databases a range on the index; the OR alone made
                // SQLite read from the newest run down.
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::run_row).collect()
    }

    async fn latest_logical_date(&self, dag_id: &str) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT MAX(logical_date) AS m FROM dag_runs WHERE dag_id = $1 \
             AND run_type IN ('scheduled', 'backfill')",
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

    async fn keyed_run(
        &self,
        dag_id: &str,
        key: &str,
        not_before: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT run_id FROM idempotency_keys WHERE dag_id = $1 AND idem_key = $2 AND created_at >= $3",
        )
        .bind(dag_id)
        .bind(key)
        .bind(to_micros(not_before))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("run_id"))
            .transpose()
            .map_err(Into::into)
    }

    async fn start_run(&self, run_id: &str, now: DateTime<Utc>) -> Result<bool> {
        self.start_in(run_id, None, now).await
    }

    async fn start_run_within(
        &self,
        run_id: &str,
        max_active: u32,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.start_in(run_id, Some(max_active), now).await
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

    async fn clear_tasks(
        &self,
        run_id: &str,
        task_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let _ = now;
        let (writer, mut tx) = self.begin_write().await?;
        if !Self::clear_in(&mut tx, run_id, Some(task_ids)).await? {
            return Ok(false);
        }
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
        Ok(true)
    }

    async fn mark_task(&self, m: &Mark) -> Result<Option<u64>> {
        let now = to_micros(m.now);
        let error = (m.state == TaskState::Failed).then(|| m.note.clone());
        let (writer, mut tx) = self.begin_write().await?;
        let run = sqlx::query("SELECT state FROM dag_runs WHERE run_id = $1")
            .bind(&m.run_id)
            .fetch_optional(&mut *tx)
            .await?;
        if run.is_none() {
            return Ok(None);
        }
        Self::close_marked_tries_in(&mut tx, m, now).await?;
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
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
        Ok(Some(changed))
    }

    async fn record_task_test(&self, rec: &TestRecord) -> Result<bool> {
        let (started, ended) = (to_micros(rec.started_at), to_micros(rec.ended_at));
        let run_state = match rec.state {
            TaskState::Failed => RunState::Failed,
            _ => RunState::Success,
        };
        let (writer, mut tx) = self.begin_write().await?;
        if !Self::insert_run(&mut tx, &rec.run).await? {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE dag_runs SET state = $1, started_at = $2, ended_at = $3 WHERE run_id = $4",
        )
        .bind(run_state.as_str())
        .bind(started)
        .bind(ended)
        .bind(&rec.run.run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE task_instances SET state = 'skipped', ended_at = $1, error = $2 \
             WHERE run_id = $3 AND task_id <> $4",
        )
        .bind(ended)
        .bind(format!(
            "not run: `flow tasks test` ran task '{}' alone",
            rec.task_id
        ))
        .bind(&rec.run.run_id)
        .bind(&rec.task_id)
        .execute(&mut *tx)
        .await?;
        let tried = rec.state != TaskState::Skipped;
        sqlx::query(
            "UPDATE task_instances SET state = $1, try_number = $2, output = $3, error = $4, \
             queued_at = $5, started_at = $5, ended_at = $6, hostname = $7 \
             WHERE run_id = $8 AND task_id = $9",
        )
        .bind(rec.state.as_str())
        .bind(i64::from(tried))
        .bind(rec.output.as_ref().map(json_text))
        .bind(&rec.error)
        .bind(started)
        .bind(ended)
        .bind(&rec.hostname)
        .bind(&rec.run.run_id)
        .bind(&rec.task_id)
        .execute(&mut *tx)
        .await?;
        if tried {
            sqlx::query(
                "INSERT INTO task_tries (run_id, task_id, map_index, try_number, state, started_at, \
                 ended_at, hostname, error) VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8)",
            )
            .bind(&rec.run.run_id)
            .bind(&rec.task_id)
            .bind(UNMAPPED)
            .bind(rec.state.as_str())
            .bind(started)
            .bind(ended)
            .bind(&rec.hostname)
            .bind(&rec.error)
            .execute(&mut *tx)
            .await?;
        }
        // An ended run: no scheduler has anything to do with it.
        tx.commit().await?;
        drop(writer);
        Ok(true)
    }
}
