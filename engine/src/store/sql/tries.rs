//! [`TryStore`]'s SQL: the writes about claimed tries, leases and heartbeats (the claims
//! themselves are in [`super::claims`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::datasets::NewEvent;
use super::dialect::{Dialect, RowsAffected};
use super::{SqlStore, TI_COLUMNS, Tx, json_text, opt_us, parse_state, same_instance, ts};
use crate::state::TaskState;
use crate::store::{
    Claim, ClaimBatch, ClaimRequest, Lane, Recorded, Result, TiRow, TryEnd, TryId, TryRow,
    TryStore, TryWrite,
};
use crate::time::{from_micros, to_micros};

/// Closes the history rows of ended tries, from `e (run_id, task_id, map_index, try_number,
/// state, ended_at, error)`.
const CLOSE_TRIES: &str = "UPDATE task_tries SET state = e.state, ended_at = e.ended_at, error = e.error FROM e \
     WHERE task_tries.run_id = e.run_id AND task_tries.task_id = e.task_id \
     AND task_tries.map_index = e.map_index AND task_tries.try_number = e.try_number";

/// Ends go in chunks of this many: 13 binds a row keeps a chunk far below either database's
/// limit on binds.
const ENDS_PER_STATEMENT: usize = 500;

/// Held tries whose leases one heartbeat statement extends: four binds a try.
const HELD_PER_STATEMENT: usize = 1000;

/// A requeued try is closed as failed in the history; its instance goes back to `queued`.
fn try_state(end: &TryEnd) -> &'static str {
    if end.requeue {
        TaskState::Failed.as_str()
    } else {
        end.state.as_str()
    }
}

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
    /// Extends the leases of the `held` tries still running under `owner`. Rows another
    /// transaction holds (a try ending right now) are skipped rather than waited for: waiting on
    /// rows locked in another order deadlocks on PostgreSQL, and the next heartbeat extends
    /// whatever is still running.
    async fn extend_in(
        tx: &mut Tx<DB>,
        owner: &str,
        until: DateTime<Utc>,
        held: &[TryId],
    ) -> Result<()> {
        let mut qb: QueryBuilder<DB> =
            QueryBuilder::new("WITH h (run_id, task_id, map_index, try_number) AS (");
        qb.push_values(held, |mut b, t| {
            b.push_bind(t.run_id.clone())
                .push_bind(t.task_id.clone())
                .push_bind(t.map_index)
                .push_bind(t.try_number);
        });
        qb.push(") UPDATE task_instances SET lease_expires_at = ")
            .push_bind(to_micros(until))
            .push(
                " WHERE (run_id, task_id, map_index) IN (SELECT t.run_id, t.task_id, t.map_index \
                 FROM task_instances t WHERE t.state = 'running' AND t.lease_owner = ",
            )
            .push_bind(owner.to_string())
            .push(
                " AND (t.run_id, t.task_id, t.map_index, t.try_number) IN \
                 (SELECT run_id, task_id, map_index, try_number FROM h) ",
            )
            .push(DB::CLAIM_LOCK)
            .push(")");
        qb.build().execute(&mut **tx).await?;
        Ok(())
    }

    async fn record_in(tx: &mut Tx<DB>, writes: &[TryWrite]) -> Result<Vec<bool>> {
        let mut applied = Vec::with_capacity(writes.len());
        // Ends go in batches, one statement per table for all of them rather than two per try:
        // a group commit's round trips are the serial path every try waits on. A batch stops
        // before another write, and before a second end of a try already in it, so that each
        // write still sees the ones before it, as one at a time would.
        let mut ends: Vec<(&Claim, &TryEnd)> = Vec::new();
        for w in writes {
            let flush = match w {
                TryWrite::End(c, _) => ends.iter().any(|(e, _)| same_instance(e, c)),
                _ => true,
            };
            if flush {
                applied.extend(Self::end_in(tx, &ends).await?);
                ends.clear();
            }
            match w {
                TryWrite::Pid(c, pid) => {
                    let n = sqlx::query(
                        "UPDATE task_instances SET pid = $1 WHERE run_id = $2 AND task_id = $3 AND map_index = $4 \
                         AND state = 'running' AND try_number = $5 AND lease_owner = $6",
                    )
                    .bind(*pid)
                    .bind(&c.run_id)
                    .bind(&c.task_id)
                    .bind(c.map_index)
                    .bind(c.try_number)
                    .bind(&c.owner)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    applied.push(n == 1);
                }
                TryWrite::External(c, reference) => {
                    let n = sqlx::query(
                        "UPDATE task_instances SET external_ref = $1 WHERE run_id = $2 AND task_id = $3 AND map_index = $4 \
                         AND state = 'running' AND try_number = $5 AND lease_owner = $6",
                    )
                    .bind(json_text(reference))
                    .bind(&c.run_id)
                    .bind(&c.task_id)
                    .bind(c.map_index)
                    .bind(c.try_number)
                    .bind(&c.owner)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    applied.push(n == 1);
                }
                TryWrite::End(c, end) => ends.push((c, end)),
            }
        }
        applied.extend(Self::end_in(tx, &ends).await?);
        Ok(applied)
    }

    /// Records the ends of tries, each fenced on its lease; per end, whether it applied. The
    /// keys of `ends` are distinct.
    async fn end_in(tx: &mut Tx<DB>, ends: &[(&Claim, &TryEnd)]) -> Result<Vec<bool>> {
        let mut applied = vec![false; ends.len()];
        for (part, chunk) in ends.chunks(ENDS_PER_STATEMENT).enumerate() {
            let done = Self::end_chunk_in(tx, chunk).await?;
            for &i in &done {
                applied[part * ENDS_PER_STATEMENT + i] = true;
            }
            if !DB::WRITING_CTES && !done.is_empty() {
                let done: Vec<(&Claim, &TryEnd)> = done.iter().map(|&i| chunk[i]).collect();
                Self::close_tries_in(tx, &done).await?;
            }
        }
        let events: Vec<NewEvent<'_>> = ends
            .iter()
            .zip(&applied)
            .filter(|((_, end), ok)| **ok && end.state == TaskState::Success)
            .flat_map(|((c, end), _)| {
                end.produced.iter().map(|uri| NewEvent {
                    uri,
                    extra: end.output.as_ref().map_or_else(|| "{}".into(), json_text),
                    source: Some((&c.run_id, &c.task_id, c.map_index)),
                    created_at: to_micros(end.now),
                })
            })
            .collect();
        if !events.is_empty() {
            Self::insert_events_in(tx, &events).await?;
        }
        Ok(applied)
    }

    /// One statement of [`end_in`](Self::end_in): the indexes in `chunk` of the ends that
    /// applied. Where a statement may write in its WITH clause, it closes their history rows too.
    async fn end_chunk_in(tx: &mut Tx<DB>, chunk: &[(&Claim, &TryEnd)]) -> Result<Vec<usize>> {
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
            "WITH w (run_id, task_id, map_index, try_number, owner, state, output, error, ended_at, \
             next_try_at, requeue, reschedule, try_state) AS (",
        );
        qb.push_values(chunk, |mut b, (c, end)| {
            b.push_bind(c.run_id.clone())
                .push_bind(c.task_id.clone())
                .push_bind(c.map_index)
                .push_bind(c.try_number)
                .push_bind(c.owner.clone())
                .push_bind(end.state.as_str())
                .push_bind(end.output.as_ref().map(json_text))
                .push_bind(end.error.clone())
                .push_bind(to_micros(end.now))
                .push_bind(opt_us(end.next_try_at))
                .push_bind(if end.requeue { 1i64 } else { 0 })
                .push_bind(if end.reschedule { 1i64 } else { 0 })
                .push_bind(try_state(end));
        });
        let update = "UPDATE task_instances SET state = w.state, output = w.output, error = w.error, \
             ended_at = w.ended_at, next_try_at = w.next_try_at, lease_owner = NULL, lease_expires_at = NULL, \
             try_base = task_instances.try_base + w.requeue, \
             reschedules = CASE WHEN w.reschedule = 1 THEN task_instances.reschedules + 1 ELSE 0 END, \
             external_ref = CASE WHEN w.requeue = 1 THEN task_instances.external_ref ELSE NULL END \
             FROM w WHERE task_instances.run_id = w.run_id AND task_instances.task_id = w.task_id \
             AND task_instances.map_index = w.map_index AND task_instances.state = 'running' \
             AND task_instances.try_number = w.try_number AND task_instances.lease_owner = w.owner \
             RETURNING task_instances.run_id AS run_id, task_instances.task_id AS task_id, \
             task_instances.map_index AS map_index";
        if DB::WRITING_CTES {
            // The history rows of the ends that applied, in the same statement: `e` is what the
            // UPDATE returns, with the columns CLOSE_TRIES reads added.
            qb.push(format!(
                "), e AS ({update}, w.try_number AS try_number, w.try_state AS state, \
                 w.ended_at AS ended_at, w.error AS error), \
                 closed AS ({CLOSE_TRIES}) \
                 SELECT run_id, task_id, map_index FROM e"
            ));
        } else {
            qb.push(format!(") {update}"));
        }
        let rows = qb.build().fetch_all(&mut **tx).await?;
        let mut done = Vec::with_capacity(rows.len());
        for r in &rows {
            let (run_id, task_id, map_index): (String, String, i64) = (
                r.try_get("run_id")?,
                r.try_get("task_id")?,
                r.try_get("map_index")?,
            );
            if let Some(i) = chunk.iter().position(|(c, _)| {
                c.run_id == run_id && c.task_id == task_id && c.map_index == map_index
            }) {
                done.push(i);
            }
        }
        Ok(done)
    }

    /// Closes the history rows of ended tries, where the end's statement could not.
    async fn close_tries_in(tx: &mut Tx<DB>, done: &[(&Claim, &TryEnd)]) -> Result<()> {
        let mut qb: QueryBuilder<DB> = QueryBuilder::new(
            "WITH e (run_id, task_id, map_index, try_number, state, ended_at, error) AS (",
        );
        qb.push_values(done, |mut b, (c, end)| {
            b.push_bind(c.run_id.clone())
                .push_bind(c.task_id.clone())
                .push_bind(c.map_index)
                .push_bind(c.try_number)
                .push_bind(try_state(end))
                .push_bind(to_micros(end.now))
                .push_bind(end.error.clone());
        });
        qb.push(format!(") {CLOSE_TRIES}"));
        qb.build().execute(&mut **tx).await?;
        Ok(())
    }
}

#[async_trait]
impl<DB> TryStore for SqlStore<DB>
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
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>> {
        let batch = ClaimBatch {
            requests: vec![req.clone()],
            limit: req.limit,
        };
        let mut recorded = self.record_and_claim(&[], Some(&batch)).await?;
        Ok(recorded.claimed.pop().unwrap_or_default())
    }

    async fn running_by_pool(&self) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT pool, COUNT(*) AS n FROM task_instances WHERE state = 'running' GROUP BY pool",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("pool")?, r.try_get("n")?)))
            .collect()
    }

    async fn queued_lanes(&self) -> Result<Vec<Lane>> {
        let rows = sqlx::query(
            "SELECT DISTINCT pool, queue FROM task_instances WHERE state = 'queued' ORDER BY pool, queue",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Lane {
                    pool: r.try_get("pool")?,
                    queue: r.try_get("queue")?,
                })
            })
            .collect()
    }

    async fn record_tries(&self, writes: &[TryWrite]) -> Result<Vec<bool>> {
        Ok(self.record_and_claim(writes, None).await?.applied)
    }

    async fn record_and_claim(
        &self,
        writes: &[TryWrite],
        claims: Option<&ClaimBatch>,
    ) -> Result<Recorded> {
        let wanted = claims.is_some_and(|c| c.limit > 0 && !c.requests.is_empty());
        if writes.is_empty() && !wanted {
            return Ok(Recorded {
                applied: Vec::new(),
                claimed: claims
                    .map(|c| vec![Vec::new(); c.requests.len()])
                    .unwrap_or_default(),
            });
        }
        // Read before the claims: a clear() meanwhile (something was queued) voids what they
        // found.
        let epoch = self.cursors.lock().map_or(0, |c| c.epoch());
        let (_writer, mut tx) = self.begin_write().await?;
        // The ends first: the slots they free are counted by the claims below.
        let applied = Self::record_in(&mut tx, writes).await?;
        let (claimed, read) = match claims {
            Some(batch) => self.claim_batch_in(&mut tx, batch).await?,
            None => (Vec::new(), Vec::new()),
        };
        tx.commit().await?;
        Self::record_delays(&read);
        self.settle_cursors(writes, &read, epoch);
        Ok(Recorded { applied, claimed })
    }

    async fn heartbeat(
        &self,
        owner: &str,
        hostname: &str,
        pid: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        held: &[TryId],
    ) -> Result<()> {
        let (_writer, mut tx) = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO schedulers (id, hostname, pid, started_at, last_heartbeat) VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat",
        )
        .bind(owner)
        .bind(hostname)
        .bind(pid)
        .bind(to_micros(now))
        .execute(&mut *tx)
        .await?;
        for chunk in held.chunks(HELD_PER_STATEMENT) {
            Self::extend_in(&mut tx, owner, lease_until, chunk).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn last_heartbeat(&self) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query("SELECT MAX(last_heartbeat) AS m FROM schedulers")
            .fetch_one(&self.pool)
            .await?;
        Ok(ts(row.try_get("m")?))
    }

    async fn owned_tries(&self, owner: &str) -> Result<Vec<TryId>> {
        let rows = sqlx::query(
            "SELECT run_id, task_id, map_index, try_number FROM task_instances \
             WHERE state = 'running' AND lease_owner = $1",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TryId {
                    run_id: r.try_get(0)?,
                    task_id: r.try_get(1)?,
                    map_index: r.try_get(2)?,
                    try_number: r.try_get(3)?,
                })
            })
            .collect()
    }

    async fn expired_tries(&self, now: DateTime<Utc>) -> Result<Vec<TiRow>> {
        let sql = format!(
            "SELECT {TI_COLUMNS} FROM task_instances WHERE state = 'running' AND lease_expires_at < $1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(to_micros(now))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::ti_row).collect()
    }

    async fn tries(&self, run_id: &str, task_id: &str, map_index: i64) -> Result<Vec<TryRow>> {
        let rows = sqlx::query(
            "SELECT try_number, state, started_at, ended_at, error FROM task_tries \
             WHERE run_id = $1 AND task_id = $2 AND map_index = $3 ORDER BY try_number",
        )
        .bind(run_id)
        .bind(task_id)
        .bind(map_index)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TryRow {
                    try_number: r.try_get("try_number")?,
                    state: parse_state::<TaskState>(&r.try_get::<String, _>("state")?)?,
                    started_at: from_micros(r.try_get("started_at")?),
                    ended_at: ts(r.try_get("ended_at")?),
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }
}
