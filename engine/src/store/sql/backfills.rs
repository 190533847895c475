//! [`BackfillStore`]'s SQL (migration 0015).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, Tx, json_text, parse_json, ts};
use crate::store::{
    Backfill, BackfillProgress, BackfillStep, BackfillStore, NewRun, Rerun, Result, StepDone,
    StoreError, Wake,
};
use crate::time::{from_micros, to_micros};

const COLUMNS: &str = "id, dag_id, from_date, to_date, params, rerun, reverse, max_active_runs, \
     state, cursor_date, created, existing, created_at, ended_at";

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
    fn backfill_row(r: &DB::Row) -> Result<Backfill> {
        let rerun: String = r.try_get("rerun")?;
        Ok(Backfill {
            id: r.try_get("id")?,
            dag_id: r.try_get("dag_id")?,
            from: from_micros(r.try_get("from_date")?),
            to: from_micros(r.try_get("to_date")?),
            params: parse_json(Some(r.try_get("params")?), "backfill params")?.unwrap_or_default(),
            rerun: Rerun::parse(&rerun)
                .ok_or_else(|| StoreError::Corrupt(format!("backfill rerun '{rerun}'")))?,
            reverse: r.try_get("reverse")?,
            max_active_runs: r.try_get::<i64, _>("max_active_runs")?.max(1) as u32,
            state: r.try_get("state")?,
            cursor: ts(r.try_get("cursor_date")?),
            created: r.try_get("created")?,
            existing: r.try_get("existing")?,
            created_at: from_micros(r.try_get("created_at")?),
            ended_at: ts(r.try_get("ended_at")?),
        })
    }

    async fn query_backfills(&self, filter: &str, arg: Option<&str>) -> Result<Vec<Backfill>> {
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new(format!("SELECT {COLUMNS} FROM backfills WHERE {filter}"));
        if let Some(arg) = arg {
            qb.push_bind(arg.to_string());
        }
        qb.push(" ORDER BY created_at DESC, id");
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(Self::backfill_row).collect()
    }

    /// The run that exists for `run`'s DAG and logical date (a scheduled or backfill one).
    async fn existing_in(tx: &mut Tx<DB>, run: &NewRun) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT run_id, state FROM dag_runs WHERE dag_id = $1 AND logical_date = $2 \
             AND run_type <> 'manual'",
        )
        .bind(&run.dag_id)
        .bind(to_micros(run.logical_date))
        .fetch_optional(&mut **tx)
        .await?;
        row.map(|r| Ok((r.try_get("run_id")?, r.try_get("state")?)))
            .transpose()
    }

    async fn tag_in(tx: &mut Tx<DB>, run_id: &str, id: &str) -> Result<()> {
        sqlx::query("UPDATE dag_runs SET backfill_id = $1 WHERE run_id = $2")
            .bind(id)
            .bind(run_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

fn rerun_applies(rerun: Rerun, state: &str) -> bool {
    match rerun {
        Rerun::None => false,
        Rerun::Failed => state == "failed",
        Rerun::All => state == "failed" || state == "success",
    }
}

#[async_trait]
impl<DB> BackfillStore for SqlStore<DB>
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
    async fn insert_backfill(&self, b: &Backfill) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO backfills (id, dag_id, from_date, to_date, params, rerun, reverse, \
             max_active_runs, state, cursor_date, created, existing, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 0, $11)",
        )
        .bind(&b.id)
        .bind(&b.dag_id)
        .bind(to_micros(b.from))
        .bind(to_micros(b.to))
        .bind(json_text(&b.params))
        .bind(b.rerun.as_str())
        .bind(b.reverse)
        .bind(i64::from(b.max_active_runs))
        .bind(&b.state)
        .bind(b.cursor.map(to_micros))
        .bind(to_micros(b.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_backfill(&self, id: &str) -> Result<Option<Backfill>> {
        Ok(self.query_backfills("id = ", Some(id)).await?.pop())
    }

    async fn list_backfills(&self, dag_id: Option<&str>) -> Result<Vec<Backfill>> {
        match dag_id {
            Some(d) => self.query_backfills("dag_id = ", Some(d)).await,
            None => self.query_backfills("TRUE", None).await,
        }
    }

    async fn running_backfills(&self) -> Result<Vec<Backfill>> {
        self.query_backfills("state = 'running'", None).await
    }

    async fn backfill_progress(&self, id: &str) -> Result<BackfillProgress> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) AS n FROM dag_runs WHERE backfill_id = $1 GROUP BY state",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut p = BackfillProgress::default();
        for r in &rows {
            let (state, n): (String, i64) = (r.try_get("state")?, r.try_get("n")?);
            match state.as_str() {
                "queued" => p.queued = n,
                "running" => p.running = n,
                "success" => p.success = n,
                _ => p.failed += n,
            }
        }
        Ok(p)
    }

    async fn backfill_run_ids(&self, id: &str) -> Result<Vec<String>> {
        let rows =
            sqlx::query("SELECT run_id FROM dag_runs WHERE backfill_id = $1 ORDER BY logical_date")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| r.try_get("run_id").map_err(Into::into))
            .collect()
    }

    async fn backfill_step(&self, step: &BackfillStep, now: DateTime<Utc>) -> Result<StepDone> {
        let _ = now;
        let (writer, mut tx) = self.begin_write().await?;
        let mut done = StepDone::default();
        for run in &step.runs {
            if Self::insert_run(&mut tx, run).await? {
                Self::tag_in(&mut tx, &run.run_id, &step.id).await?;
                done.created.push(run.run_id.clone());
                continue;
            }
            let Some((run_id, state)) = Self::existing_in(&mut tx, run).await? else {
                continue;
            };
            Self::tag_in(&mut tx, &run_id, &step.id).await?;
            if rerun_applies(step.rerun, &state) {
                Self::clear_in(&mut tx, &run_id, None).await?;
                done.rerun.push(run_id.clone());
            }
            done.existing.push(run_id);
        }
        // The claim: a scheduler that moved the cursor first leaves this one nothing to do.
        let moved = sqlx::query(
            "UPDATE backfills SET cursor_date = $1, created = created + $2, \
             existing = existing + $3 WHERE id = $4 AND state = 'running' AND cursor_date = $5",
        )
        .bind(step.cursor.map(to_micros))
        .bind(done.created.len() as i64)
        .bind(done.existing.len() as i64)
        .bind(&step.id)
        .bind(to_micros(step.from_cursor))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            return Ok(StepDone::default());
        }
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
        Ok(done)
    }

    async fn finish_backfill(&self, id: &str, now: DateTime<Utc>) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query(
            "UPDATE backfills SET state = 'done', ended_at = $1 WHERE id = $2 AND state = 'running'",
        )
        .bind(to_micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cancel_backfill(&self, id: &str, now: DateTime<Utc>) -> Result<Option<u64>> {
        let (writer, mut tx) = self.begin_write().await?;
        let found = sqlx::query("SELECT state FROM backfills WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if found.is_none() {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE backfills SET state = 'cancelled', ended_at = $1 WHERE id = $2 AND state = 'running'",
        )
        .bind(to_micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        // Runs it created that never started go with it, as failed; started ones finish.
        let failed = sqlx::query(
            "UPDATE dag_runs SET state = 'failed', ended_at = $1 WHERE backfill_id = $2 \
             AND state = 'queued' AND started_at IS NULL AND run_type = 'backfill'",
        )
        .bind(to_micros(now))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
        Ok(Some(failed))
    }
}
