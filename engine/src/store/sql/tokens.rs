//! [`TokenStore`]'s SQL.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Encode, Executor, Row, Type};

use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, parse_state, ts};
use crate::store::{
    RateAnswer, RateAsk, Result, Role, TokenGrant, TokenInfo, TokenStore, TokenUsed,
};
use crate::time::{from_micros, to_micros};

#[async_trait]
impl<DB> TokenStore for SqlStore<DB>
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
    async fn create_token(
        &self,
        name: &str,
        role: Role,
        token_hash: &str,
        now: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<bool> {
        let (_writer, mut tx) = self.begin_write().await?;
        let n = sqlx::query(
            "INSERT INTO api_tokens (name, role, token_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(token_hash)
        .bind(to_micros(now))
        .bind(expires_at.map(to_micros))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn token_role(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<TokenGrant>> {
        let row = sqlx::query(
            "SELECT name, role FROM api_tokens WHERE token_hash = $1 \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(token_hash)
        .bind(to_micros(now))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(TokenGrant {
                name: r.try_get("name")?,
                role: parse_state::<Role>(&r.try_get::<String, _>("role")?)?,
            })
        })
        .transpose()
    }

    async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(
            "SELECT name, role, created_at, last_used_at, expires_at FROM api_tokens \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    name: r.try_get("name")?,
                    role: parse_state::<Role>(&r.try_get::<String, _>("role")?)?,
                    created_at: from_micros(r.try_get("created_at")?),
                    last_used_at: ts(r.try_get("last_used_at")?),
                    expires_at: ts(r.try_get("expires_at")?),
                })
            })
            .collect()
    }

    async fn revoke_token(&self, name: &str) -> Result<bool> {
        let (_writer, mut tx) = self.begin_write().await?;
        let n = sqlx::query("DELETE FROM api_tokens WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn touch_tokens(&self, used: &[TokenUsed]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let (_writer, mut tx) = self.begin_write().await?;
        for TokenUsed { name, at } in used {
            sqlx::query(
                "UPDATE api_tokens SET last_used_at = $2 WHERE name = $1 \
                 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(name)
            .bind(to_micros(*at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn spend_rate(&self, ask: &RateAsk) -> Result<RateAnswer> {
        let now = to_micros(ask.now);
        let emission = i64::try_from(ask.emission.as_micros()).unwrap_or(i64::MAX / 4);
        // GCRA: `tat` is when the budget is full again. A request at `now` fits when `tat` is
        // no later than `now` plus the burst's tolerance, and moves `tat` on by one emission.
        let tolerance = emission.saturating_mul(i64::from(ask.burst.max(1)) - 1);
        let greatest = DB::GREATEST;
        let sql = format!(
            "INSERT INTO api_rate_limits (key, tat) VALUES ($1, $2 + $3) \
             ON CONFLICT (key) DO UPDATE SET tat = {greatest}(api_rate_limits.tat, $2) + $3 \
             WHERE api_rate_limits.tat <= $2 + $4 RETURNING tat"
        );
        let (_writer, mut tx) = self.begin_write().await?;
        let spent = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&ask.key)
            .bind(now)
            .bind(emission)
            .bind(tolerance)
            .fetch_optional(&mut *tx)
            .await?;
        let answer = match spent {
            Some(_) => RateAnswer::Allowed,
            None => {
                let tat: i64 = sqlx::query("SELECT tat FROM api_rate_limits WHERE key = $1")
                    .bind(&ask.key)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("tat")?;
                let wait = tat.saturating_sub(now.saturating_add(tolerance)).max(0);
                RateAnswer::Wait(std::time::Duration::from_micros(wait as u64))
            }
        };
        tx.commit().await?;
        Ok(answer)
    }
}
