//! Tries: claims, leases, heartbeats and ends, and their history: [`TryStore`].

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::{Result, TiRow};
use crate::state::TaskState;

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub owner: String,
    pub hostname: String,
    pub pool: String,
    /// Claim only tries of this queue.
    pub queue: String,
    /// Tries this process may start now.
    pub limit: i64,
    /// The pool's size: the claim takes no more than its free slots, counted in the claim's own
    /// transaction. None: no size is known (the claim takes up to `limit`).
    pub pool_slots: Option<i64>,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    /// Claim only tries of this run (`flow run`).
    pub run_id: Option<String>,
}

impl ClaimRequest {
    pub fn lane(&self) -> Lane {
        Lane {
            pool: self.pool.clone(),
            queue: self.queue.clone(),
        }
    }
}

/// Where a queued try waits: its pool (which bounds how many run at once) and its queue (which
/// says which processes may run it). A claim reads one lane.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    pub pool: String,
    pub queue: String,
}

/// Claims in several pools that share one limit (a scheduler's free slots): each request in
/// turn, its `limit` lowered to what the earlier ones left.
#[derive(Debug, Clone)]
pub struct ClaimBatch {
    pub requests: Vec<ClaimRequest>,
    pub limit: i64,
}

/// A try this process now owns.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub try_number: i64,
    pub try_base: i64,
    pub item: Option<Json>,
    pub owner: String,
    /// When the try was claimed: its `started_at` in the history. For a try a sensor
    /// rescheduled, when its first poke was claimed.
    pub started_at: DateTime<Utc>,
    /// What an earlier try of this instance started elsewhere and did not see end (it was
    /// requeued or orphaned), for the operator to re-attach to.
    pub external: Option<Json>,
}

/// A write about a claimed try.
#[derive(Debug, Clone)]
pub enum TryWrite {
    Pid(Claim, i64),
    /// What the try started outside this machine (an EMR step), so that the try after a crash or
    /// shutdown re-attaches to it. Kept by a requeue (and so by orphan recovery, which requeues
    /// such a try), emptied by any other end and by a clear.
    External(Claim, Json),
    End(Claim, TryEnd),
}

#[derive(Debug, Clone)]
pub struct TryEnd {
    pub state: TaskState,
    pub output: Option<Json>,
    pub error: Option<String>,
    pub next_try_at: Option<DateTime<Utc>>,
    pub now: DateTime<Utc>,
    /// The try was interrupted through no fault of its own (a clean shutdown): the instance goes
    /// back to `queued` and the try does not count against its retries.
    pub requeue: bool,
    /// A sensor gave its slot back until `next_try_at` (`up_for_retry` meanwhile): the next
    /// claim is the same try, with the same number and its first `started_at`.
    pub reschedule: bool,
    /// Dataset URIs the try updated (a success of a task that `produces:`): recorded as events
    /// with the end, in its transaction.
    pub produced: Vec<String>,
}

impl TryEnd {
    /// A try interrupted through no fault of its own (a clean shutdown, or the loss of the
    /// scheduler watching work that goes on elsewhere): back to `queued`, no retry used.
    pub fn requeued(why: &str, now: DateTime<Utc>) -> TryEnd {
        TryEnd {
            state: TaskState::Queued,
            output: None,
            error: Some(why.to_string()),
            next_try_at: None,
            now,
            requeue: true,
            reschedule: false,
            produced: Vec::new(),
        }
    }
}

/// What [`TryStore::record_and_claim`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Recorded {
    /// Per write, whether it applied.
    pub applied: Vec<bool>,
    /// Per claim request, the tries it got.
    pub claimed: Vec<Vec<Claim>>,
}

/// One try of one task instance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TryId {
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
    pub try_number: i64,
}

impl std::fmt::Display for TryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "try {} of {}/{}[{}]",
            self.try_number, self.run_id, self.task_id, self.map_index
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TryRow {
    pub try_number: i64,
    pub state: TaskState,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[async_trait]
pub trait TryStore: Send + Sync {
    /// Claims up to `limit` queued tries of one pool, highest priority and oldest first, and
    /// records each try's start. Two claimers never get the same try.
    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<Claim>>;
    async fn running_by_pool(&self) -> Result<BTreeMap<String, i64>>;
    /// The lanes that have queued tries.
    async fn queued_lanes(&self) -> Result<Vec<Lane>>;
    /// Records the process group of a running try, so a later scheduler can stop an orphan.
    async fn set_pid(&self, claim: &Claim, pid: i64) -> Result<()> {
        self.record_tries(&[TryWrite::Pid(claim.clone(), pid)])
            .await
            .map(|_| ())
    }
    /// Ends a claimed try; false if the lease was lost (someone else owns the try now).
    async fn finish_try(&self, claim: &Claim, end: &TryEnd) -> Result<bool> {
        let done = self
            .record_tries(&[TryWrite::End(claim.clone(), end.clone())])
            .await?;
        Ok(done.first().copied().unwrap_or(false))
    }
    /// Applies several writes about claimed tries in one transaction (group commit); each is
    /// fenced on its claim. Returns, per write, whether it applied.
    async fn record_tries(&self, writes: &[TryWrite]) -> Result<Vec<bool>>;
    /// `record_tries`, then the claims of `claims`, in one transaction: a scheduler's try ends,
    /// the pids of its new tries and its next claims share one commit.
    async fn record_and_claim(
        &self,
        writes: &[TryWrite],
        claims: Option<&ClaimBatch>,
    ) -> Result<Recorded>;
    /// Marks this scheduler alive and extends the leases of the running tries it `held`: those
    /// it has in hand. A try claimed under its name that it does not hold (its start failed after
    /// the claim committed) is not extended, so its lease lapses and recovery runs it again.
    async fn heartbeat(
        &self,
        owner: &str,
        hostname: &str,
        pid: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        held: &[TryId],
    ) -> Result<()>;
    async fn last_heartbeat(&self) -> Result<Option<DateTime<Utc>>>;
    /// The running tries `owner` still holds.
    async fn owned_tries(&self, owner: &str) -> Result<Vec<TryId>>;
    /// Running tries whose lease has expired.
    async fn expired_tries(&self, now: DateTime<Utc>) -> Result<Vec<TiRow>>;
    /// The history of one task instance's tries, oldest first.
    async fn tries(&self, run_id: &str, task_id: &str, map_index: i64) -> Result<Vec<TryRow>>;
}
