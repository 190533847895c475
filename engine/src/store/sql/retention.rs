//! [`RetentionStore`]'s SQL. Every statement is short: the caller deletes in batches, so a
//! scheduler writing beside it waits at most one batch (SQLite has one writer).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::SqlStore;
use super::dialect::{Dialect, RowsAffected};
use crate::store::{OldRun, OldRuns, Result, RetentionStore};
use crate::time::to_micros;

/// Versions in use: a run's, or the DAG's current one.
const USED_VERSION: &str = "(EXISTS (SELECT 1 FROM dag_runs r WHERE r.dag_id = v.dag_id AND r.dag_version = v.version) \
     OR EXISTS (SELECT 1 FROM dags d WHERE d.dag_id = v.dag_id AND d.version = v.version))";

/// Events still needed: taken by a run that is kept, queued for a DAG, or a model version's
/// training data.
const USED_EVENT: &str = "(EXISTS (SELECT 1 FROM run_dataset_events r WHERE r.event_id = e.id) \
     OR EXISTS (SELECT 1 FROM dataset_queue q WHERE q.event_id = e.id) \
     OR EXISTS (SELECT 1 FROM model_version_events m WHERE m.event_id = e.id))";

#[async_trait]
impl<DB> RetentionStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn old_runs(&self, q: &OldRuns) -> Result<Vec<OldRun>> {
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
            "SELECT run_id, dag_id FROM dag_runs r WHERE r.state IN ('success', 'failed') \
             AND NOT EXISTS (SELECT 1 FROM model_versions m WHERE m.run_id = r.run_id) \
             AND r.queued_at < ",
        );
        qb.push_bind(to_micros(q.before));
        if let Some(dag) = &q.dag_id {
            qb.push(" AND r.dag_id = ").push_bind(dag.clone());
        }
        if let Some(after) = &q.after {
            qb.push(" AND r.run_id > ").push_bind(after.clone());
        }
        qb.push(" ORDER BY r.run_id LIMIT ").push_bind(q.limit);
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(OldRun {
                    run_id: r.try_get("run_id")?,
                    dag_id: r.try_get("dag_id")?,
                })
            })
            .collect()
    }

    async fn delete_runs(&self, run_ids: &[String]) -> Result<u64> {
        if run_ids.is_empty() {
            return Ok(0);
        }
        let (_writer, mut tx) = self.begin_write().await?;
        let mut deleted = 0;
        // The keys have no foreign key (an API key may outlive its window); a child run's key
        // naming a deleted run must go with it.
        for table in ["idempotency_keys", "dag_runs"] {
            let mut qb: QueryBuilder<DB> =
                QueryBuilder::new(format!("DELETE FROM {table} WHERE run_id IN ("));
            let mut sep = qb.separated(", ");
            for id in run_ids {
                sep.push_bind(id.clone());
            }
            qb.push(")");
            deleted = qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }

    async fn unused_versions(&self, dag_id: Option<&str>, dry_run: bool) -> Result<u64> {
        let verb = if dry_run {
            "SELECT COUNT(*) AS n FROM"
        } else {
            "DELETE FROM"
        };
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new(format!("{verb} dag_versions AS v WHERE NOT {USED_VERSION}"));
        if let Some(dag) = dag_id {
            qb.push(" AND v.dag_id = ").push_bind(dag.to_string());
        }
        self.count_or_delete(qb, dry_run).await
    }

    async fn old_dataset_events(&self, before: DateTime<Utc>, dry_run: bool) -> Result<u64> {
        let verb = if dry_run {
            "SELECT COUNT(*) AS n FROM"
        } else {
            "DELETE FROM"
        };
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(format!(
            "{verb} dataset_events AS e WHERE NOT {USED_EVENT} AND e.created_at < "
        ));
        qb.push_bind(to_micros(before));
        self.count_or_delete(qb, dry_run).await
    }
}

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
{
    async fn count_or_delete(&self, mut qb: QueryBuilder<DB>, dry_run: bool) -> Result<u64> {
        if dry_run {
            let row = qb.build().fetch_one(&self.pool).await?;
            let n: i64 = row.try_get("n")?;
            return Ok(n as u64);
        }
        let (_writer, mut tx) = self.begin_write().await?;
        let n = qb.build().execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(n)
    }
}
