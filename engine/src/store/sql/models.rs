//! [`ModelRegistry`]'s SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, Row, Type};

use super::dialect::Dialect;
use super::{SqlStore, json_text, parse_json, parse_state};
use crate::store::{
    DataInterval, ModelRegistry, ModelSummary, ModelVersion, NewModelVersion, Promotion, Result,
};
use crate::time::{from_micros, to_micros};

const VERSION_COLUMNS: &str = "model, version, stage, task, algorithm, metrics, artifact, training_set, \
     data_interval_start, data_interval_end, dag_id, dag_version, run_id, task_id, created_at, stage_changed_at";

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
    fn version_row(r: &DB::Row) -> Result<ModelVersion> {
        let start: Option<i64> = r.try_get("data_interval_start")?;
        let end: Option<i64> = r.try_get("data_interval_end")?;
        Ok(ModelVersion {
            version: r.try_get("version")?,
            stage: parse_state(&r.try_get::<String, _>("stage")?)?,
            stage_changed_at: from_micros(r.try_get("stage_changed_at")?),
            new: NewModelVersion {
                model: r.try_get("model")?,
                task: r.try_get("task")?,
                algorithm: r.try_get("algorithm")?,
                metrics: parse_json(Some(r.try_get("metrics")?), "metrics")?.unwrap_or(Json::Null),
                artifact: r.try_get("artifact")?,
                training_set: r.try_get("training_set")?,
                data_interval: start.zip(end).map(|(s, e)| DataInterval {
                    start: from_micros(s),
                    end: from_micros(e),
                }),
                dag_id: r.try_get("dag_id")?,
                dag_version: r.try_get("dag_version")?,
                run_id: r.try_get("run_id")?,
                task_id: r.try_get("task_id")?,
                created_at: from_micros(r.try_get("created_at")?),
            },
        })
    }
}

#[async_trait]
impl<DB> ModelRegistry for SqlStore<DB>
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
    async fn register_model_version(&self, v: &NewModelVersion) -> Result<i64> {
        let (_writer, mut tx) = self.begin_write().await?;
        let now = to_micros(v.created_at);
        sqlx::query("INSERT INTO models (name, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(&v.model)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Serializes registrations of one model (SQLite's write transaction already does).
        let lock = format!("SELECT name FROM models WHERE name = $1 {}", DB::MODEL_LOCK);
        sqlx::query(sqlx::AssertSqlSafe(lock))
            .bind(&v.model)
            .fetch_one(&mut *tx)
            .await?;
        let version: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE model = $1",
        )
        .bind(&v.model)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO model_versions ({VERSION_COLUMNS}) VALUES \
             ($1, $2, 'candidate', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)"
        )))
        .bind(&v.model)
        .bind(version)
        .bind(&v.task)
        .bind(&v.algorithm)
        .bind(json_text(&v.metrics))
        .bind(&v.artifact)
        .bind(&v.training_set)
        .bind(v.data_interval.map(|i| to_micros(i.start)))
        .bind(v.data_interval.map(|i| to_micros(i.end)))
        .bind(&v.dag_id)
        .bind(&v.dag_version)
        .bind(&v.run_id)
        .bind(&v.task_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    async fn models(&self) -> Result<Vec<ModelSummary>> {
        let rows = sqlx::query(
            "SELECT m.name, m.created_at, COUNT(v.version) AS versions, COALESCE(MAX(v.version), 0) AS latest, \
             MAX(CASE WHEN v.stage = 'production' THEN v.version END) AS production \
             FROM models m LEFT JOIN model_versions v ON v.model = m.name \
             GROUP BY m.name, m.created_at ORDER BY m.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ModelSummary {
                    name: r.try_get("name")?,
                    created_at: from_micros(r.try_get("created_at")?),
                    versions: r.try_get("versions")?,
                    latest_version: r.try_get("latest")?,
                    production_version: r.try_get("production")?,
                })
            })
            .collect()
    }

    async fn model_versions(&self, model: &str) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = $1 ORDER BY version DESC"
        )))
        .bind(model)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::version_row).collect()
    }

    async fn model_version(&self, model: &str, version: i64) -> Result<Option<ModelVersion>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = $1 AND version = $2"
        )))
        .bind(model)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::version_row).transpose()
    }

    async fn promote_model_version(
        &self,
        model: &str,
        version: i64,
        expected: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Promotion> {
        let (_writer, mut tx) = self.begin_write().await?;
        let lock = format!("SELECT name FROM models WHERE name = $1 {}", DB::MODEL_LOCK);
        let exists = sqlx::query(sqlx::AssertSqlSafe(lock))
            .bind(model)
            .fetch_optional(&mut *tx)
            .await?;
        let known: Option<String> = if exists.is_some() {
            sqlx::query_scalar("SELECT stage FROM model_versions WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
        } else {
            None
        };
        if known.is_none() {
            return Ok(Promotion::Unknown);
        }
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM model_versions WHERE model = $1 AND stage = 'production'",
        )
        .bind(model)
        .fetch_optional(&mut *tx)
        .await?;
        if current != expected {
            return Ok(Promotion::Stale { current });
        }
        let at = to_micros(now);
        if current != Some(version) {
            sqlx::query(
                "UPDATE model_versions SET stage = 'archived', stage_changed_at = $2 \
                 WHERE model = $1 AND stage = 'production'",
            )
            .bind(model)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE model_versions SET stage = 'production', stage_changed_at = $3 \
                 WHERE model = $1 AND version = $2",
            )
            .bind(model)
            .bind(version)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Promotion::Promoted { previous: current })
    }
}
