//! [`HistoryStore`]'s SQL: finished runs written in bulk, and the grid's counts.

use std::collections::HashSet;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::dialect::Dialect;
use super::{SqlStore, Tx, json_text, opt_us, parse_state};
use crate::state::TaskState;
use crate::store::{HistoryRun, HistoryStore, HistoryTask, Result, TiCount, TryRow};
use crate::time::to_micros;

/// Runs per chunk: bound parameters stay far below both databases' limits (SQLite 32,766).
const RUNS_PER_CHUNK: usize = 500;
/// Task instances, and tries, per statement.
const ROWS_PER_STATEMENT: usize = 2000;

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
    /// Inserts the runs of a chunk whose ids are new; returns those ids.
    async fn insert_history_runs_in(
        tx: &mut Tx<DB>,
        chunk: &[HistoryRun],
    ) -> Result<HashSet<String>> {
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
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
        let new = qb
            .build()
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.try_get("run_id"))
            .collect::<std::result::Result<_, _>>()?;
        Ok(new)
    }

    /// Inserts task instances of new runs, each as its last try left it.
    async fn insert_history_tasks_in(tx: &mut Tx<DB>, tis: &[(&str, &HistoryTask)]) -> Result<()> {
        for part in tis.chunks(ROWS_PER_STATEMENT) {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new(
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
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Inserts the tries of new runs' task instances: (run, task, map index, try).
    async fn insert_history_tries_in(
        tx: &mut Tx<DB>,
        tries: &[(&str, &str, i64, &TryRow)],
    ) -> Result<()> {
        for part in tries.chunks(ROWS_PER_STATEMENT) {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new(
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
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<DB> HistoryStore for SqlStore<DB>
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
    async fn import_history(&self, runs: &[HistoryRun]) -> Result<u64> {
        let (_writer, mut tx) = self.begin_write().await?;
        let mut written = 0;
        for chunk in runs.chunks(RUNS_PER_CHUNK) {
            let new = Self::insert_history_runs_in(&mut tx, chunk).await?;
            written += new.len() as u64;
            let fresh: Vec<&HistoryRun> = chunk
                .iter()
                .filter(|h| new.contains(&h.run.run_id))
                .collect();
            let tis: Vec<(&str, &HistoryTask)> = fresh
                .iter()
                .flat_map(|h| h.tasks.iter().map(move |t| (h.run.run_id.as_str(), t)))
                .collect();
            Self::insert_history_tasks_in(&mut tx, &tis).await?;
            let tries: Vec<(&str, &str, i64, &TryRow)> = tis
                .iter()
                .flat_map(|(run_id, t)| {
                    t.tries
                        .iter()
                        .map(move |x| (*run_id, t.task_id.as_str(), t.map_index, x))
                })
                .collect();
            Self::insert_history_tries_in(&mut tx, &tries).await?;
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn analyze(&self) -> Result<()> {
        if let Some(analyze) = DB::ANALYZE {
            sqlx::query(analyze).execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn grid_counts(&self, run_ids: &[String]) -> Result<Vec<TiCount>> {
        if run_ids.is_empty() {
            return Ok(Vec::new());
        }
        // The primary key (run_id, task_id, map_index) serves the IN list: no scan of the
        // history, however long.
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
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
