//! [`ActivityStore`]'s SQL: counts over the active rows only.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::{ColumnIndex, Decode, Encode, Executor, Row, Type};

use super::dialect::Dialect;
use super::{SqlStore, parse_state, ts};
use crate::store::{ActiveRuns, Activity, ActivityStore, PoolActivity, Result};

#[async_trait]
impl<DB> ActivityStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn activity(&self) -> Result<Activity> {
        let mut runs = Vec::new();
        // The predicate matches the partial index dag_runs_active_by_dag.
        for r in sqlx::query(
            "SELECT dag_id, state, COUNT(*) FROM dag_runs \
             WHERE state IN ('queued', 'running') GROUP BY dag_id, state ORDER BY dag_id, state",
        )
        .fetch_all(&self.pool)
        .await?
        {
            runs.push(ActiveRuns {
                dag_id: r.try_get(0)?,
                state: parse_state(r.try_get::<&str, _>(1)?)?,
                count: r.try_get(2)?,
            });
        }
        let mut pools: BTreeMap<String, PoolActivity> = BTreeMap::new();
        let blank = |pool: &str| PoolActivity {
            pool: pool.to_string(),
            queued: 0,
            running: 0,
            oldest_queued_at: None,
        };
        // Each predicate matches a partial index (task_instances_ready, task_instances_leases).
        for r in sqlx::query(
            "SELECT pool, COUNT(*), MIN(queued_at) FROM task_instances \
             WHERE state = 'queued' GROUP BY pool",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let pool: String = r.try_get(0)?;
            let entry = pools.entry(pool.clone()).or_insert_with(|| blank(&pool));
            entry.queued = r.try_get(1)?;
            entry.oldest_queued_at = ts(r.try_get(2)?);
        }
        for r in sqlx::query(
            "SELECT pool, COUNT(*) FROM task_instances WHERE state = 'running' GROUP BY pool",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let pool: String = r.try_get(0)?;
            pools
                .entry(pool.clone())
                .or_insert_with(|| blank(&pool))
                .running = r.try_get(1)?;
        }
        Ok(Activity {
            runs,
            pools: pools.into_values().collect(),
        })
    }
}
