//! [`AlertStore`]'s SQL: one row per alert sent, its insert the claim to send it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Encode, Executor, Type};

use super::SqlStore;
use super::dialect::{Dialect, RowsAffected};
use crate::store::{AlertKey, AlertStore, Result};
use crate::time::to_micros;

#[async_trait]
impl<DB> AlertStore for SqlStore<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Type<DB>,
{
    async fn first_alert(&self, key: &AlertKey, now: DateTime<Utc>) -> Result<bool> {
        let (_writer, mut tx) = self.begin_write().await?;
        let done = sqlx::query(
            "INSERT INTO alerts_sent (run_id, kind, task_id, sent_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key.run_id.as_str())
        .bind(key.kind)
        .bind(key.task_id.as_deref().unwrap_or(""))
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }
}
