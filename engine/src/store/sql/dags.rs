//! [`DagStore`]'s SQL.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, Tx, json_text, opt_us, parse_json, parse_state, ts};
use crate::state::RunState;
use crate::store::{DagRecord, DagRow, DagSource, DagStore, LastRun, Result, StoreError, Wake};
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
    fn dag_row(r: &DB::Row) -> Result<DagRow> {
        let last_id: Option<String> = r.try_get("last_run_id")?;
        let last_state: Option<String> = r.try_get("last_run_state")?;
        let last_run = match (last_id, last_state) {
            (Some(run_id), Some(s)) => Some(LastRun {
                run_id,
                state: parse_state::<RunState>(&s)?,
            }),
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

    /// Inserts or updates a loaded DAG, keeping its pause state, and keeps its version.
    async fn upsert_dag_in(tx: &mut Tx<DB>, d: &DagRecord, now: i64) -> Result<()> {
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
        .execute(&mut **tx)
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
        .execute(&mut **tx)
        .await?;
        Self::dataset_refs_in(tx, d).await
    }

    /// What the DAG produces and consumes, replacing what its earlier version did.
    async fn dataset_refs_in(tx: &mut Tx<DB>, d: &DagRecord) -> Result<()> {
        sqlx::query("DELETE FROM dataset_refs WHERE dag_id = $1")
            .bind(&d.dag_id)
            .execute(&mut **tx)
            .await?;
        let consumers = d.consumes.iter().map(|uri| ("consumer", "", uri.as_str()));
        let producers = d
            .produces
            .iter()
            .map(|p| ("producer", p.task_id.as_str(), p.uri.as_str()));
        for (role, task_id, uri) in consumers.chain(producers) {
            sqlx::query(
                "INSERT INTO dataset_refs (dag_id, uri, role, task_id) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&d.dag_id)
            .bind(uri)
            .bind(role)
            .bind(task_id)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<DB> DagStore for SqlStore<DB>
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
            Self::upsert_dag_in(&mut tx, d, now).await?;
        }
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new("UPDATE dags SET active = FALSE WHERE active");
        if !present.is_empty() {
            qb.push(" AND dag_id NOT IN (");
            let mut sep = qb.separated(", ");
            for id in present {
                sep.push_bind(id.clone());
            }
            qb.push(")");
        }
        qb.build().execute(&mut *tx).await?;
        sqlx::query("DELETE FROM import_errors")
            .execute(&mut *tx)
            .await?;
        for (file, errors) in import_errors {
            sqlx::query(
                "INSERT INTO import_errors (fileloc, errors, updated_at) VALUES ($1, $2, $3)",
            )
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
                    .map_err(|source| StoreError::CorruptJson {
                        what: "import_errors",
                        source,
                    })?;
                Ok((r.try_get("fileloc")?, errors))
            })
            .collect()
    }

    async fn dag_source(&self, dag_id: &str, version: &str) -> Result<Option<DagSource>> {
        let row = sqlx::query(
            "SELECT fileloc, source, created_at FROM dag_versions WHERE dag_id = $1 AND version = $2",
        )
        .bind(dag_id)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(DagSource {
                fileloc: r.try_get("fileloc")?,
                source: r.try_get("source")?,
                seen_at: crate::time::from_micros(r.try_get("created_at")?),
            })
        })
        .transpose()
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
        let (writer, mut tx) = self.begin_write().await?;
        let n = sqlx::query("UPDATE dags SET paused = $1 WHERE dag_id = $2")
            .bind(paused)
            .bind(dag_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        self.commit_and_ring(writer, tx, Wake::Runs).await?;
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

    async fn paused_flags(&self) -> Result<BTreeMap<String, bool>> {
        let rows = sqlx::query("SELECT dag_id, paused FROM dags WHERE active")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("dag_id")?, r.try_get("paused")?)))
            .collect()
    }
}
