//! Claims: the SQL that picks queued tries and opens them, for [`TryStore`](crate::store::TryStore).

use sqlx::{ColumnIndex, Decode, Encode, Executor, QueryBuilder, Row, Type};

use super::dialect::Dialect;
use super::{SqlStore, Tx, parse_json};
use crate::state::TaskState;
use crate::store::cursor::QueueKey;
use crate::store::{Claim, ClaimBatch, ClaimRequest, Lane, Result, TryWrite};
use crate::time::{from_micros, to_micros};

/// Opens the history rows of claimed tries (`INSERT ... ` + their rows).
const OPEN_TRIES: &str = "INSERT INTO task_tries (run_id, task_id, map_index, try_number, state, started_at, lease_owner, hostname) ";

/// A rescheduled try's row is already there: it runs again, from its first poke.
const REOPEN_TRY: &str = " ON CONFLICT (run_id, task_id, map_index, try_number) DO UPDATE SET state = excluded.state, \
     ended_at = NULL, error = NULL, lease_owner = excluded.lease_owner, hostname = excluded.hostname";

/// The claimed tries of one request, each with its place in claim order.
struct Picked {
    claims: Vec<Claim>,
    keys: Vec<QueueKey>,
    /// Some claimed try is a rescheduled one, whose history row exists already.
    rescheduled: bool,
}

/// What one request of a committed claim read of its pool's queue, for its cursor.
pub(super) struct QueueRead {
    lane: Lane,
    run_id: Option<String>,
    /// The tries claimed after the cursor.
    from_cursor: Vec<QueueKey>,
    /// The tries claimed from the head of the queue, if it was read.
    from_head: Option<Vec<QueueKey>>,
}

/// The SQL of a claim from the head of the queue, or from after a cursor (`$10`..`$14`).
fn claim_sql<DB: Dialect>(req: &ClaimRequest, after: Option<&QueueKey>) -> String {
    // A sized pool counts its running tries in the same statement. An unsized one must not: on
    // PostgreSQL that count reads every dead entry the partial index of running tries has
    // gathered since the last vacuum (a bitmap scan marks none of them dead), which made each
    // claim of a 10,000-item map cost ~10 ms.
    let limit = if req.pool_slots.is_some() {
        "(SELECT CASE WHEN $8 - COUNT(*) >= $7 THEN $7 WHEN $8 - COUNT(*) < 0 THEN 0 \
          ELSE $8 - COUNT(*) END FROM task_instances WHERE state = 'running' AND pool = $5)"
    } else {
        "(CASE WHEN CAST($8 AS BIGINT) IS NULL THEN $7 ELSE $7 END)"
    };
    // The picked tries are a materialized CTE, read once: as `IN (subquery)` next to another
    // condition, PostgreSQL may plan the subquery as the inner side of a nested loop and run it
    // again per row, each time skipping the rows this statement already locked, and so claim
    // past the limit. The outer `state = 'queued'` lets the row lookup seek on every column of
    // whichever index it picks: PostgreSQL without statistics (autovacuum off) took
    // `task_instances_plan` for (run_id, task_id, map_index) and read every instance of the
    // task, ~1 ms a claim in a 10,000-item map.
    let pick = format!(
        "picked AS MATERIALIZED (\
           SELECT run_id, task_id, map_index FROM task_instances \
           WHERE state = 'queued' AND pool = $5 AND queue = $9 \
           AND (CAST($6 AS TEXT) IS NULL OR run_id = $6) {} \
           ORDER BY -priority, queued_at, run_id, task_id, map_index \
           LIMIT {limit} {})",
        // A row comparison the index `task_instances_ready` seeks to (migration 0010).
        if after.is_some() {
            "AND (-priority, queued_at, run_id, task_id, map_index) > ($10, $11, $12, $13, $14)"
        } else {
            ""
        },
        DB::CLAIM_LOCK
    );
    let update = "UPDATE task_instances SET state = 'running', \
         try_number = try_number + CASE WHEN reschedules > 0 THEN 0 ELSE 1 END, \
         started_at = CASE WHEN reschedules > 0 THEN started_at ELSE $1 END, \
         ended_at = NULL, lease_owner = $2, lease_expires_at = $3, hostname = $4, pid = NULL, \
         next_try_at = NULL, error = NULL \
         FROM picked WHERE task_instances.state = 'queued' AND task_instances.run_id = picked.run_id \
         AND task_instances.task_id = picked.task_id AND task_instances.map_index = picked.map_index \
         RETURNING task_instances.run_id AS run_id, task_instances.task_id AS task_id, \
         task_instances.map_index AS map_index, try_number, \
         try_base, item, started_at, reschedules, external_ref, priority, queued_at";
    // Where a statement may write in its WITH clause, the claimed tries' history rows are opened
    // in the same statement, one round trip fewer in every group commit; elsewhere
    // `open_tries_in` does it.
    if DB::WRITING_CTES {
        let row =
            "SELECT run_id, task_id, map_index, try_number, 'running', $1, $2, $4 FROM claimed";
        format!(
            "WITH {pick}, claimed AS ({update}), \
             fresh AS ({OPEN_TRIES}{row} WHERE reschedules = 0 ON CONFLICT DO NOTHING), \
             again AS ({OPEN_TRIES}{row} WHERE reschedules > 0{REOPEN_TRY}) \
             SELECT * FROM claimed"
        )
    } else {
        format!("WITH {pick} {update}")
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
    /// Claims up to `req.limit` queued tries in claim order, from the head of the queue or from
    /// after `after` (ADR 8); also returns each claimed try's place in that order.
    async fn claim_in(
        tx: &mut Tx<DB>,
        req: &ClaimRequest,
        after: Option<&QueueKey>,
    ) -> Result<(Vec<Claim>, Vec<QueueKey>)> {
        if req.limit <= 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(claim_sql::<DB>(req, after)))
            .bind(to_micros(req.now))
            .bind(&req.owner)
            .bind(to_micros(req.lease_until))
            .bind(&req.hostname)
            .bind(&req.pool)
            .bind(&req.run_id)
            .bind(req.limit)
            .bind(req.pool_slots)
            .bind(&req.queue);
        if let Some(k) = after {
            query = query
                .bind(k.neg_priority)
                .bind(k.queued_at)
                .bind(&k.run_id)
                .bind(&k.task_id)
                .bind(k.map_index);
        }
        let rows = query.fetch_all(&mut **tx).await?;
        let picked = Self::picked(&rows, req)?;
        if !DB::WRITING_CTES {
            Self::open_tries_in(tx, req, &picked.claims, picked.rescheduled).await?;
        }
        Ok((picked.claims, picked.keys))
    }

    fn picked(rows: &[DB::Row], req: &ClaimRequest) -> Result<Picked> {
        let mut picked = Picked {
            claims: Vec::with_capacity(rows.len()),
            keys: Vec::with_capacity(rows.len()),
            rescheduled: false,
        };
        for r in rows {
            let queued_at = r.try_get::<Option<i64>, _>("queued_at")?;
            picked.keys.push(QueueKey {
                neg_priority: -r.try_get::<i64, _>("priority")?,
                // NULL sorts last in the index, as no time can.
                queued_at: queued_at.unwrap_or(i64::MAX),
                run_id: r.try_get("run_id")?,
                task_id: r.try_get("task_id")?,
                map_index: r.try_get("map_index")?,
            });
            picked.claims.push(Claim {
                run_id: r.try_get("run_id")?,
                task_id: r.try_get("task_id")?,
                map_index: r.try_get("map_index")?,
                try_number: r.try_get("try_number")?,
                try_base: r.try_get("try_base")?,
                item: parse_json(r.try_get("item")?, "item")?,
                owner: req.owner.clone(),
                started_at: from_micros(r.try_get("started_at")?),
                external: parse_json(r.try_get("external_ref")?, "external_ref")?,
            });
            picked.rescheduled |= r.try_get::<i64, _>("reschedules")? > 0;
        }
        Ok(picked)
    }

    /// Opens the history rows of claimed tries, where the claim could not in its WITH clause.
    async fn open_tries_in(
        tx: &mut Tx<DB>,
        req: &ClaimRequest,
        claims: &[Claim],
        rescheduled: bool,
    ) -> Result<()> {
        for chunk in claims.chunks(1000) {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new(OPEN_TRIES);
            qb.push_values(chunk, |mut b, c| {
                b.push_bind(c.run_id.clone())
                    .push_bind(c.task_id.clone())
                    .push_bind(c.map_index)
                    .push_bind(c.try_number)
                    .push_bind(TaskState::Running.as_str())
                    .push_bind(to_micros(req.now))
                    .push_bind(req.owner.clone())
                    .push_bind(req.hostname.clone());
            });
            qb.push(if rescheduled {
                REOPEN_TRY
            } else {
                " ON CONFLICT DO NOTHING"
            });
            qb.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Takes the locks of the sized pools a batch claims from, where the database needs them.
    ///
    /// A sized pool's claim counts the running tries its statement's snapshot sees, which leaves
    /// out what a concurrent transaction claimed and has not yet committed (another
    /// scheduler's), so two claims could each take the last slot. The pool's lock, held to
    /// commit, orders them: the claim statements come after it, with a snapshot that has the
    /// earlier claim. Every pool of the batch is locked here, in name order, so that two batches
    /// asking for the same pools in other orders never hold one each and wait for the other.
    async fn lock_pools_in(tx: &mut Tx<DB>, batch: &ClaimBatch) -> Result<()> {
        // A batch with no room claims nothing, and must not wait for the locks.
        let Some(lock) = DB::POOL_LOCK.filter(|_| batch.limit > 0) else {
            return Ok(());
        };
        let mut sized: Vec<&str> = batch
            .requests
            .iter()
            .filter(|r| r.pool_slots.is_some() && r.limit > 0)
            .map(|r| r.pool.as_str())
            .collect();
        sized.sort_unstable();
        sized.dedup();
        for pool in sized {
            sqlx::query(lock).bind(pool).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The claims of a batch, in its transaction: per request, the tries it got, and what it
    /// read of the queue.
    pub(super) async fn claim_batch_in(
        &self,
        tx: &mut Tx<DB>,
        batch: &ClaimBatch,
    ) -> Result<(Vec<Vec<Claim>>, Vec<QueueRead>)> {
        Self::lock_pools_in(tx, batch).await?;
        let mut claimed = Vec::new();
        let mut read = Vec::new();
        let mut left = batch.limit;
        for req in &batch.requests {
            if left <= 0 {
                claimed.push(Vec::new());
                continue;
            }
            let req = ClaimRequest {
                limit: req.limit.min(left),
                ..req.clone()
            };
            let after = if DB::CLAIM_CURSOR {
                self.cursors.lock().ok().and_then(|c| {
                    c.start(
                        &req.lane(),
                        req.run_id.as_deref(),
                        std::time::Instant::now(),
                    )
                })
            } else {
                None
            };
            let (mut got, keys) = Self::claim_in(tx, &req, after.as_ref()).await?;
            let (from_cursor, from_head) = match after {
                None => (Vec::new(), Some(keys)),
                Some(_) if (got.len() as i64) < req.limit => {
                    // Short: the rest may be queued before the cursor.
                    let rest = ClaimRequest {
                        limit: req.limit - got.len() as i64,
                        ..req.clone()
                    };
                    let (more, head) = Self::claim_in(tx, &rest, None).await?;
                    got.extend(more);
                    (keys, Some(head))
                }
                Some(_) => (keys, None),
            };
            read.push(QueueRead {
                lane: req.lane(),
                run_id: req.run_id,
                from_cursor,
                from_head,
            });
            left -= got.len() as i64;
            claimed.push(got);
        }
        Ok((claimed, read))
    }

    /// Records how long each try of a committed claim waited in its queue. After the commit, so
    /// that a claim a group commit retried counts once; from the clock then, since a planner on
    /// another thread may have queued a try after the claim request took its `now`.
    pub(super) fn record_delays(read: &[QueueRead]) {
        let now = to_micros(chrono::Utc::now());
        let metrics = crate::metrics::metrics();
        for r in read {
            let keys = r.from_cursor.iter().chain(r.from_head.iter().flatten());
            // A NULL queued_at reads as i64::MAX: no wait to report.
            for k in keys.filter(|k| k.queued_at != i64::MAX) {
                let waited =
                    std::time::Duration::from_micros(now.saturating_sub(k.queued_at).max(0) as u64);
                metrics.try_started(&r.lane.pool, waited);
            }
        }
    }

    /// Moves the claim cursors on after a commit: `epoch` is the cursors' before the claims.
    pub(super) fn settle_cursors(&self, writes: &[TryWrite], read: &[QueueRead], epoch: u64) {
        if !DB::CLAIM_CURSOR {
            return;
        }
        let Ok(mut cursors) = self.cursors.lock() else {
            return;
        };
        // A requeued try goes back to its old place in the queue.
        if writes
            .iter()
            .any(|w| matches!(w, TryWrite::End(_, end) if end.requeue))
        {
            cursors.clear();
            return;
        }
        let now = std::time::Instant::now();
        for r in read {
            cursors.settle(
                &r.lane,
                r.run_id.as_deref(),
                &r.from_cursor,
                r.from_head.as_deref(),
                epoch,
                now,
            );
        }
    }
}
