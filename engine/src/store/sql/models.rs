//! [`ModelRegistry`]'s SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, Tx, json_text, parse_json, parse_state};
use crate::store::{
    DataInterval, ModelRegistry, ModelSummary, ModelVersion, NewModelVersion, PredictionUse,
    Promotion, Result,
};
use crate::time::{from_micros, to_micros};

const VERSION_COLUMNS: &str = "model, version, stage, task, algorithm, metrics, artifact, training_set, \
     data_interval_start, data_interval_end, dag_id, dag_version, run_id, task_id, created_at, stage_changed_at, \
     dataset";

const USE_COLUMNS: &str =
    "model, version, dag_id, run_id, task_id, map_index, rows_scored, created_at";

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
                dataset: r.try_get("dataset")?,
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
            events: Vec::new(),
        })
    }

    /// Links a new version to its dataset's events: those that triggered the training run,
    /// else the latest one.
    async fn link_events(
        tx: &mut Tx<DB>,
        v: &NewModelVersion,
        version: i64,
        dataset: &str,
    ) -> Result<()> {
        let triggering = sqlx::query(
            "INSERT INTO model_version_events (model, version, event_id) \
             SELECT $1, $2, e.id FROM run_dataset_events r JOIN dataset_events e ON e.id = r.event_id \
             WHERE r.run_id = $3 AND e.uri = $4",
        )
        .bind(&v.model)
        .bind(version)
        .bind(&v.run_id)
        .bind(dataset)
        .execute(&mut **tx)
        .await?;
        if triggering.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO model_version_events (model, version, event_id) \
                 SELECT $1, $2, id FROM dataset_events WHERE uri = $3 ORDER BY id DESC LIMIT 1",
            )
            .bind(&v.model)
            .bind(version)
            .bind(dataset)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Fills each version's `events`, in one query.
    async fn with_events(&self, mut versions: Vec<ModelVersion>) -> Result<Vec<ModelVersion>> {
        let Some(first) = versions.first() else {
            return Ok(versions);
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT m.version, {} FROM model_version_events m \
             JOIN dataset_events e ON e.id = m.event_id WHERE m.model = $1 ORDER BY e.id",
            super::datasets::EVENT_COLUMNS
        )))
        .bind(first.new.model.clone())
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let version: i64 = r.try_get("version")?;
            if let Some(v) = versions.iter_mut().find(|v| v.version == version) {
                v.events.push(Self::event_row(r)?);
            }
        }
        Ok(versions)
    }

    fn use_row(r: &DB::Row) -> Result<PredictionUse> {
        Ok(PredictionUse {
            model: r.try_get("model")?,
            version: r.try_get("version")?,
            dag_id: r.try_get("dag_id")?,
            run_id: r.try_get("run_id")?,
            task_id: r.try_get("task_id")?,
            map_index: r.try_get("map_index")?,
            rows_scored: r.try_get("rows_scored")?,
            created_at: from_micros(r.try_get("created_at")?),
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
             ($1, $2, 'candidate', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, $15)"
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
        .bind(&v.dataset)
        .execute(&mut *tx)
        .await?;
        if let Some(dataset) = &v.dataset {
            Self::link_events(&mut tx, v, version, dataset).await?;
        }
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
        let versions = rows.iter().map(Self::version_row).collect::<Result<_>>()?;
        self.with_events(versions).await
    }

    async fn model_version(&self, model: &str, version: i64) -> Result<Option<ModelVersion>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM model_versions WHERE model = $1 AND version = $2"
        )))
        .bind(model)
        .bind(version)
        .fetch_optional(&self.pool)
        .await?;
        let Some(found) = row.as_ref().map(Self::version_row).transpose()? else {
            return Ok(None);
        };
        Ok(self.with_events(vec![found]).await?.pop())
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

    async fn record_prediction(&self, u: &PredictionUse) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO model_predictions ({USE_COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM dag_runs WHERE run_id = $4) \
             ON CONFLICT DO NOTHING"
        )))
        .bind(&u.model)
        .bind(u.version)
        .bind(&u.dag_id)
        .bind(&u.run_id)
        .bind(&u.task_id)
        .bind(u.map_index)
        .bind(u.rows_scored)
        .bind(to_micros(u.created_at))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn model_predictions(&self, model: &str, limit: i64) -> Result<Vec<PredictionUse>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USE_COLUMNS} FROM model_predictions WHERE model = $1 \
             ORDER BY created_at DESC, run_id DESC LIMIT $2"
        )))
        .bind(model)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::use_row).collect()
    }
}
