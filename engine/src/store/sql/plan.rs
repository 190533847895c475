//! [`PlanStore`]'s SQL: what the planner reads of a run, and its decisions written back.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, Tx, json_text, opt_us, parse_json, parse_state, ts};
use crate::plan::{Decision, Failure, InstanceCount, TiSnapshot, UNMAPPED};
use crate::state::{RunState, TaskState};
use crate::store::{Applied, PlanRows, PlanStore, Result, TaskOutput};
use crate::time::to_micros;

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
    /// Queues `tries` of `run_id` (task, map index) that are `scheduled` or `up_for_retry`.
    async fn queue_in(
        tx: &mut Tx<DB>,
        run_id: &str,
        tries: &[(&str, i64)],
        now: i64,
    ) -> Result<()> {
        for chunk in tries.chunks(1000) {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new("WITH q (task_id, map_index) AS (");
            qb.push_values(chunk, |mut b, (task_id, map_index)| {
                b.push_bind(task_id.to_string()).push_bind(*map_index);
            });
            qb.push(
                ") UPDATE task_instances SET state = 'queued', next_try_at = NULL, queued_at = ",
            );
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

    /// A scheduled instance the plan ends without a try: `skipped` or `upstream_failed`.
    async fn settle_in(
        tx: &mut Tx<DB>,
        run_id: &str,
        task_id: &str,
        map_index: i64,
        state: TaskState,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE task_instances SET state = $1, ended_at = $2 \
             WHERE run_id = $3 AND task_id = $4 AND map_index = $5 AND state = 'scheduled'",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(run_id)
        .bind(task_id)
        .bind(map_index)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A try that failed before reaching the executor (`when` or `for_each` did not render):
    /// counted, and recorded in the history.
    async fn fail_try_in(
        tx: &mut Tx<DB>,
        run_id: &str,
        (task_id, map_index): (&str, i64),
        message: &str,
        outcome: Failure,
        now: i64,
    ) -> Result<()> {
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
        .bind(map_index)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(()) };
        let try_number: i64 = row.try_get("try_number")?;
        sqlx::query(
            "INSERT INTO task_tries (run_id, task_id, map_index, try_number, state, started_at, ended_at, error) \
             VALUES ($1, $2, $3, $4, 'failed', $5, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(map_index)
        .bind(try_number)
        .bind(now)
        .bind(message)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Replaces a mapped task's placeholder by one queued instance per item (none: skipped).
    async fn expand_in(
        tx: &mut Tx<DB>,
        run_id: &str,
        task_id: &str,
        items: &[Json],
        now: i64,
    ) -> Result<()> {
        if items.is_empty() {
            sqlx::query(
                "UPDATE task_instances SET state = 'skipped', ended_at = $1 \
                 WHERE run_id = $2 AND task_id = $3 AND map_index = $4 AND state = 'scheduled'",
            )
            .bind(now)
            .bind(run_id)
            .bind(task_id)
            .bind(UNMAPPED)
            .execute(&mut **tx)
            .await?;
            return Ok(());
        }
        let placeholder = sqlx::query(
            "DELETE FROM task_instances WHERE run_id = $1 AND task_id = $2 AND map_index = $3 \
             AND state = 'scheduled' RETURNING priority, pool, queue, try_number",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(UNMAPPED)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(placeholder) = placeholder else {
            return Ok(());
        };
        let priority: i64 = placeholder.try_get("priority")?;
        let pool: String = placeholder.try_get("pool")?;
        let queue: String = placeholder.try_get("queue")?;
        let indexed: Vec<(i64, String)> = items
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64, json_text(v)))
            .collect();
        for chunk in indexed.chunks(1000) {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new(
                "INSERT INTO task_instances (run_id, task_id, map_index, state, priority, pool, queue, item, queued_at) ",
            );
            qb.push_values(chunk, |mut b, (i, item)| {
                b.push_bind(run_id.to_string())
                    .push_bind(task_id.to_string())
                    .push_bind(*i)
                    .push_bind(TaskState::Queued.as_str())
                    .push_bind(priority)
                    .push_bind(pool.clone())
                    .push_bind(queue.clone())
                    .push_bind(item.clone())
                    .push_bind(now);
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    async fn finish_run_in(
        tx: &mut Tx<DB>,
        run_id: &str,
        state: RunState,
        now: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE dag_runs SET state = $1, ended_at = $2 WHERE run_id = $3 AND state = 'running'",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(run_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// The instances `plan_rows` lists one by one; its negation picks the counted ones.
    fn push_listed(qb: &mut QueryBuilder<DB>, full_tasks: &[String]) {
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
    }
}

#[async_trait]
impl<DB> PlanStore for SqlStore<DB>
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
    async fn plan_rows(&self, run_id: &str, full_tasks: &[String]) -> Result<PlanRows> {
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
            "SELECT task_id, map_index, state, try_number, try_base, next_try_at, output \
             FROM task_instances WHERE run_id = ",
        );
        qb.push_bind(run_id.to_string()).push(" AND ");
        Self::push_listed(&mut qb, full_tasks);
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
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
            "SELECT task_id, state, COUNT(*) FROM task_instances WHERE run_id = ",
        );
        qb.push_bind(run_id.to_string()).push(" AND NOT ");
        Self::push_listed(&mut qb, full_tasks);
        qb.push(" GROUP BY task_id, state");
        for r in qb.build().fetch_all(&self.pool).await? {
            let n: i64 = r.try_get(2)?;
            out.counts.push(InstanceCount {
                task_id: r.try_get(0)?,
                state: parse_state::<TaskState>(r.try_get::<&str, _>(1)?)?,
                count: n as usize,
            });
        }
        Ok(out)
    }

    async fn outputs(&self, run_id: &str, task_ids: &[String]) -> Result<Vec<TaskOutput>> {
        if task_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
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
                Ok(TaskOutput {
                    task_id: r.try_get("task_id")?,
                    map_index: r.try_get("map_index")?,
                    output,
                })
            })
            .collect()
    }

    async fn apply(
        &self,
        run_id: &str,
        decisions: &[Decision],
        now: DateTime<Utc>,
    ) -> Result<Applied> {
        let mut applied = Applied::default();
        if decisions.is_empty() {
            return Ok(applied);
        }
        let now = to_micros(now);
        let (_writer, mut tx) = self.begin_write().await?;
        // Tries queued side by side (a fan-out's 500) go in one statement: on a server, one
        // round trip each held the whole fan-out back for ~100 ms.
        let mut queue: Vec<(&str, i64)> = Vec::new();
        for d in decisions {
            if !matches!(d, Decision::Queue { .. }) {
                Self::queue_in(&mut tx, run_id, &queue, now).await?;
                queue.clear();
            }
            match d {
                Decision::Queue { task_id, map_index } => queue.push((task_id, *map_index)),
                Decision::Skip { task_id, map_index } => {
                    let state = TaskState::Skipped;
                    Self::settle_in(&mut tx, run_id, task_id, *map_index, state, now).await?;
                }
                Decision::UpstreamFailed { task_id, map_index } => {
                    let state = TaskState::UpstreamFailed;
                    Self::settle_in(&mut tx, run_id, task_id, *map_index, state, now).await?;
                }
                Decision::FailTry {
                    task_id,
                    map_index,
                    message,
                    outcome,
                } => {
                    let instance = (task_id.as_str(), *map_index);
                    Self::fail_try_in(&mut tx, run_id, instance, message, *outcome, now).await?;
                }
                Decision::Expand { task_id, items } => {
                    Self::expand_in(&mut tx, run_id, task_id, items, now).await?;
                }
                Decision::FinishRun(state) => {
                    applied.finished = Self::finish_run_in(&mut tx, run_id, *state, now).await?;
                }
            }
        }
        Self::queue_in(&mut tx, run_id, &queue, now).await?;
        tx.commit().await?;
        // What was queued may sort before a claim cursor (a higher priority); after the commit,
        // so that the head read it causes sees it.
        if DB::CLAIM_CURSOR
            && decisions
                .iter()
                .any(|d| matches!(d, Decision::Queue { .. } | Decision::Expand { .. }))
            && let Ok(mut cursors) = self.cursors.lock()
        {
            cursors.clear();
        }
        Ok(applied)
    }
}
