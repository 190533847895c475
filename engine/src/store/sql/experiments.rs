//! [`ExperimentStore`]'s SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, json_text, parse_json, parse_state, ts};
use crate::store::{
    ExperimentLook, ExperimentRecord, ExperimentState, ExperimentStore, Leader, LookRecorded,
    Result,
};
use crate::time::{from_micros, to_micros};

const COLUMNS: &str = "name, metric, method, alpha, dag_id, task_id, state, looks, history, result, \
     winner, variant, lift, lift_low, lift_high, p_value, last_run_id, concluded_run_id, created_at, \
     updated_at, ended_at";

impl<DB> SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> f64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> Option<f64>: Encode<'a, DB>,
    for<'a> Option<String>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn experiment_row(r: &DB::Row) -> Result<ExperimentRecord> {
        let variant: Option<String> = r.try_get("variant")?;
        let numbers: [Option<f64>; 4] = [
            r.try_get("lift")?,
            r.try_get("lift_low")?,
            r.try_get("lift_high")?,
            r.try_get("p_value")?,
        ];
        let leader = match (variant, numbers) {
            (Some(variant), [Some(lift), Some(lift_low), Some(lift_high), Some(p_value)]) => {
                Some(Leader {
                    variant,
                    lift,
                    lift_low,
                    lift_high,
                    p_value,
                })
            }
            _ => None,
        };
        Ok(ExperimentRecord {
            name: r.try_get("name")?,
            metric: r.try_get("metric")?,
            method: r.try_get("method")?,
            alpha: r.try_get("alpha")?,
            dag_id: r.try_get("dag_id")?,
            task_id: r.try_get("task_id")?,
            state: parse_state(&r.try_get::<String, _>("state")?)?,
            looks: r.try_get("looks")?,
            history: parse_json(Some(r.try_get("history")?), "experiment history")?
                .unwrap_or(Json::Null),
            result: parse_json(Some(r.try_get("result")?), "experiment result")?
                .unwrap_or(Json::Null),
            winner: r.try_get("winner")?,
            leader,
            last_run_id: r.try_get("last_run_id")?,
            concluded_run_id: r.try_get("concluded_run_id")?,
            created_at: from_micros(r.try_get("created_at")?),
            updated_at: from_micros(r.try_get("updated_at")?),
            ended_at: ts(r.try_get("ended_at")?),
        })
    }
}

/// One experiment's record by name and metric.
fn select_one() -> String {
    format!("SELECT {COLUMNS} FROM experiments WHERE name = $1 AND metric = $2")
}

fn state_after(look: &ExperimentLook) -> ExperimentState {
    if look.concluded {
        ExperimentState::Concluded
    } else {
        ExperimentState::Running
    }
}

#[async_trait]
impl<DB> ExperimentStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Decode<'a, DB> + Type<DB> + ColumnIndex<DB::Row>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> f64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB>,
    for<'a> Option<f64>: Encode<'a, DB>,
    for<'a> Option<String>: Encode<'a, DB>,
    usize: ColumnIndex<DB::Row>,
{
    async fn experiment(&self, name: &str, metric: &str) -> Result<Option<ExperimentRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(select_one()))
            .bind(name)
            .bind(metric)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::experiment_row).transpose()
    }

    async fn experiments(&self) -> Result<Vec<ExperimentRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM experiments ORDER BY updated_at DESC, name, metric"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::experiment_row).collect()
    }

    async fn record_experiment_look(
        &self,
        look: &ExperimentLook,
        looks_before: i64,
    ) -> Result<LookRecorded> {
        let (_writer, mut tx) = self.begin_write().await?;
        let at = to_micros(look.at);
        let state = state_after(look);
        let leader = look.leader.as_ref();
        let concluded_run = look.concluded.then(|| look.run_id.clone());
        let ended = look.concluded.then_some(at);
        // One statement for both: a first look creates the record (a conflict means another
        // look created it first); a later one updates it only if nothing moved it meanwhile.
        let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO experiments ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $20 + 1, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18, $18, $19) \
             ON CONFLICT (name, metric) DO UPDATE SET looks = experiments.looks + 1, \
             state = excluded.state, history = excluded.history, result = excluded.result, \
             winner = excluded.winner, variant = excluded.variant, lift = excluded.lift, \
             lift_low = excluded.lift_low, lift_high = excluded.lift_high, \
             p_value = excluded.p_value, last_run_id = excluded.last_run_id, \
             concluded_run_id = excluded.concluded_run_id, updated_at = excluded.updated_at, \
             ended_at = excluded.ended_at \
             WHERE experiments.state = 'running' AND experiments.looks = $20"
        )))
        .bind(&look.name)
        .bind(&look.metric)
        .bind(&look.method)
        .bind(look.alpha)
        .bind(&look.dag_id)
        .bind(&look.task_id)
        .bind(state.as_str())
        .bind(json_text(&look.history))
        .bind(json_text(&look.result))
        .bind(look.winner.clone())
        .bind(leader.map(|l| l.variant.clone()))
        .bind(leader.map(|l| l.lift))
        .bind(leader.map(|l| l.lift_low))
        .bind(leader.map(|l| l.lift_high))
        .bind(leader.map(|l| l.p_value))
        .bind(&look.run_id)
        .bind(concluded_run)
        .bind(at)
        .bind(ended)
        .bind(looks_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(LookRecorded::Stale);
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(select_one()))
            .bind(&look.name)
            .bind(&look.metric)
            .fetch_one(&mut *tx)
            .await?;
        let record = Self::experiment_row(&row)?;
        tx.commit().await?;
        Ok(LookRecorded::Recorded(Box::new(record)))
    }

    async fn stop_experiment(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ExperimentRecord>> {
        let (_writer, mut tx) = self.begin_write().await?;
        let at = to_micros(now);
        sqlx::query(
            "UPDATE experiments SET state = 'stopped', updated_at = $2, ended_at = $2 \
             WHERE name = $1 AND state = 'running'",
        )
        .bind(name)
        .bind(at)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM experiments WHERE name = $1 ORDER BY metric"
        )))
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(Self::experiment_row).collect()
    }
}
