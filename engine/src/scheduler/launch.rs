//! Claiming queued tries and starting them: the claim goes through the group commit, its
//! answer comes back to the loop, and each claimed try runs as a task of its own that reports
//! its end on the `done` channel.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Engine, EngineError, Mode, Queues};
use crate::dag::{DEFAULT_POOL, DEFAULT_QUEUE, Dag, TriggerRule};
use crate::executor::{TryEnv, run_try, try_key};
use crate::state::TaskState;
use crate::store::group_commit::{Claimed, Handover};
use crate::store::{Claim, ClaimBatch, ClaimRequest, Lane, RunRow, TryEnd};
use crate::time::now;

/// A try ended. `can_wait`: its end cannot by itself make another task runnable (a mapped
/// instance succeeded, or a task succeeded whose downstream tasks all wait for other upstreams
/// too), so planning its run may be put off for a few milliseconds and shared with its siblings.
#[derive(Debug)]
pub(super) struct TryDone {
    pub run_id: String,
    pub can_wait: bool,
}

/// See [`TryDone::can_wait`].
fn can_wait(dag: &Dag, task_id: &str, mapped: bool, state: Option<TaskState>) -> bool {
    if state != Some(TaskState::Success) {
        return false;
    }
    if mapped {
        return true;
    }
    let downstream: Vec<&crate::dag::Task> = dag.downstream(task_id).collect();
    !downstream.is_empty()
        && downstream
            .iter()
            .all(|d| d.depends_on.len() > 1 && d.trigger_rule != TriggerRule::OneSuccess)
}

/// Where tries run and how they report back: shared by every try the loop starts.
#[derive(Clone)]
pub(super) struct Slots {
    pub env: Arc<TryEnv>,
    /// Every try's task, so shutdown can wait for them all.
    pub tries: TaskTracker,
    /// Cancelled at shutdown: running tries are stopped and requeued.
    pub cancel: CancellationToken,
    pub done_tx: mpsc::UnboundedSender<TryDone>,
    pub claimed_tx: mpsc::UnboundedSender<Claimed>,
}

impl Engine {
    /// Claims what fits in the free slots. The claim commits with the next group commit and comes
    /// back through `claimed_tx` (see [`Engine::start_claimed`]); until then its slots are
    /// reserved, so the loop goes on planning, and a slot freed meanwhile is claimed with the
    /// commit after. Returns false when no slot is free, so nothing was claimed.
    pub(super) async fn launch(
        &mut self,
        full_pass: bool,
        mode: &Mode,
        slots: &Slots,
    ) -> Result<bool, EngineError> {
        let free = self
            .config
            .parallelism
            .saturating_sub(self.running.load(Ordering::SeqCst) + self.reserved);
        if free == 0 {
            return Ok(false);
        }
        let batch = self.claim_batch(full_pass, mode, free).await?;
        // Through the group commit: the claims share a transaction with the ends (and pids)
        // that other tries are writing at the same moment.
        self.reserved += free;
        let recorder = slots.env.recorder.clone();
        let claimed = slots.claimed_tx.clone();
        tokio::spawn(async move {
            let result = recorder.claim(batch.clone()).await;
            let _ = claimed.send(Claimed {
                asked: batch,
                result,
                handover: false,
            });
        });
        Ok(true)
    }

    /// One request per lane (pool and queue) this process serves, each for up to `free` tries.
    async fn claim_batch(
        &mut self,
        full_pass: bool,
        mode: &Mode,
        free: usize,
    ) -> Result<ClaimBatch, EngineError> {
        let mut lanes = self.known_lanes();
        // Finding queued tries in pools nobody configured, or in queues this process has not
        // seen yet, costs a scan of the queue, so that is done on full passes only.
        if full_pass {
            for lane in self.store.queued_lanes().await? {
                if !self.queues.serves(&lane.queue) {
                    continue;
                }
                if self.queues == Queues::All && lane.queue != DEFAULT_QUEUE {
                    self.seen_queues.insert(lane.queue.clone());
                }
                if !lanes.contains(&lane) {
                    lanes.push(lane);
                }
            }
        }
        let run_filter = match mode {
            Mode::Single(id) => Some(id.clone()),
            Mode::Daemon => None,
        };
        let now = now();
        // An unknown pool has no size: its tries are claimed only to fail with a clear message
        // instead of waiting forever.
        Ok(ClaimBatch {
            requests: lanes
                .into_iter()
                .map(|lane| ClaimRequest {
                    owner: self.owner.clone(),
                    hostname: self.hostname.clone(),
                    pool_slots: self.config.counted_slots(&lane.pool),
                    pool: lane.pool,
                    queue: lane.queue,
                    limit: free as i64,
                    now,
                    lease_until: self.lease_until(now),
                    run_id: run_filter.clone(),
                })
                .collect(),
            limit: free as i64,
        })
    }

    /// The lanes claimed from on every pass: the configured pools (the default one first), each
    /// with every queue this process serves and knows of.
    fn known_lanes(&self) -> Vec<Lane> {
        let mut pools: Vec<&str> = self.config.pools.keys().map(String::as_str).collect();
        if !pools.contains(&DEFAULT_POOL) {
            pools.insert(0, DEFAULT_POOL);
        }
        let queues: Vec<&str> = match &self.queues {
            Queues::Only(names) => names.iter().map(String::as_str).collect(),
            Queues::All => std::iter::once(DEFAULT_QUEUE)
                .chain(self.seen_queues.iter().map(String::as_str))
                .collect(),
        };
        pools
            .iter()
            .flat_map(|pool| {
                queues.iter().map(|queue| Lane {
                    pool: pool.to_string(),
                    queue: queue.to_string(),
                })
            })
            .collect()
    }

    /// Starts the tries a claim returned, and frees the slots it reserved but did not fill.
    /// Returns whether the claim filled every slot it reserved.
    pub(super) async fn start_claimed(
        &mut self,
        c: Claimed,
        slots: &Slots,
    ) -> Result<bool, EngineError> {
        let reserved = c.reserved();
        if c.handover {
            // The finished tries kept their slots counted as running until now.
            self.running.fetch_sub(reserved, Ordering::SeqCst);
        } else {
            self.reserved -= reserved;
        }
        let claimed = c.result?;
        // A handover that came back short freed slots another pool may use.
        let filled = c.handover || claimed.iter().map(Vec::len).sum::<usize>() >= reserved;
        // Every claimed try is held from here, before anything is awaited: the heartbeat extends
        // only the tries held, and a start that fails lets go of the ones it did not start, so
        // that their leases lapse and recovery runs them again rather than their runs never
        // ending.
        let mut pending = Vec::new();
        for (asked, claims) in c.asked.requests.into_iter().zip(claimed) {
            for claim in claims {
                let lost = CancellationToken::new();
                slots.env.running.insert(try_key(&claim), lost.clone());
                pending.push((asked.clone(), claim, lost));
            }
        }
        let mut pending = pending.into_iter();
        while let Some((asked, claim, lost)) = pending.next() {
            if let Err(e) = self.start_one(claim, &asked, lost, slots).await {
                for (_, unstarted, _) in pending {
                    slots.env.running.remove(&try_key(&unstarted));
                }
                return Err(e);
            }
        }
        Ok(filled)
    }

    /// A claim's run and the DAG version it runs; None when the run is gone.
    async fn run_and_dag(
        &mut self,
        run_id: &str,
    ) -> Result<Option<(Arc<RunRow>, Option<Arc<Dag>>)>, EngineError> {
        let Some(run) = self.run_row(run_id).await? else {
            return Ok(None);
        };
        let dag = self.catalog.version(&run.dag_id, &run.dag_version).await?;
        Ok(Some((run, dag)))
    }

    /// Spawns one claimed try, held already under `lost`; a claim whose run is gone, or whose
    /// run cannot be read, is let go.
    async fn start_one(
        &mut self,
        claim: Claim,
        asked: &ClaimRequest,
        lost: CancellationToken,
        slots: &Slots,
    ) -> Result<(), EngineError> {
        let found = self.run_and_dag(&claim.run_id).await;
        let Ok(Some((run, dag))) = found else {
            slots.env.running.remove(&try_key(&claim));
            return found.map(drop);
        };
        self.running.fetch_add(1, Ordering::SeqCst);
        let unknown_pool = self
            .config
            .pool_size(&asked.pool)
            .is_none()
            .then(|| asked.pool.clone());
        let handover = Handover {
            request: ClaimRequest {
                limit: 1,
                ..asked.clone()
            },
            lease: self.config.lease_timeout,
            answer: slots.claimed_tx.clone(),
            stop: slots.cancel.clone(),
        };
        let start = Start {
            claim,
            run,
            dag,
            unknown_pool,
            handover,
            lost,
            slots: slots.clone(),
            running: self.running.clone(),
        };
        slots.tries.spawn(start.run());
        Ok(())
    }

    /// The row of a run this process starts tries of: read once, since what a try reads of its
    /// run (ids, dates, params, DAG version) never changes.
    async fn run_row(&mut self, run_id: &str) -> Result<Option<Arc<RunRow>>, EngineError> {
        if let Some(r) = self.run_rows.get(run_id) {
            return Ok(Some(r.clone()));
        }
        let Some(r) = self.store.get_run(run_id).await? else {
            return Ok(None);
        };
        let r = Arc::new(r);
        self.run_rows.insert(run_id.to_string(), r.clone());
        Ok(Some(r))
    }
}

/// One claimed try, ready to run in its own task.
struct Start {
    claim: Claim,
    run: Arc<RunRow>,
    /// None when the run's DAG version is not stored: the try fails at once.
    dag: Option<Arc<Dag>>,
    /// The pool the try was claimed from when flow.toml does not configure it.
    unknown_pool: Option<String>,
    handover: Handover,
    /// Cancelled by the heartbeat when the try is no longer this scheduler's.
    lost: CancellationToken,
    slots: Slots,
    /// The loop's count of running tries.
    running: Arc<AtomicUsize>,
}

impl Start {
    async fn run(self) {
        let Start {
            claim,
            run,
            dag,
            unknown_pool,
            handover,
            lost,
            slots,
            running,
        } = self;
        let env = &slots.env;
        let mut wait = false;
        let mut handed_over = false;
        match (dag, unknown_pool) {
            (Some(dag), None) => {
                tokio::select! {
                    (state, handed) = run_try(env, &claim, &dag, &run, Some(handover)) => {
                        let mapped = claim.map_index != crate::state::UNMAPPED;
                        wait = can_wait(&dag, &claim.task_id, mapped, state);
                        handed_over = handed;
                    }
                    _ = slots.cancel.cancelled() => {
                        // Dropping the try's future kills its process group.
                        requeue(env, &claim).await;
                    }
                    _ = lost.cancelled() => {
                        // Not ours any more: dropping the future kills the process group;
                        // there is nothing to record.
                    }
                }
            }
            (_, unknown_pool) => {
                let msg = match unknown_pool {
                    Some(p) => {
                        format!("pool '{p}' is not configured: add it under [pools] in flow.toml")
                    }
                    None => format!("the DAG version of run {} is not stored", claim.run_id),
                };
                fail_now(env, &claim, msg).await;
            }
        }
        env.running.remove(&try_key(&claim));
        if !handed_over {
            running.fetch_sub(1, Ordering::SeqCst);
        }
        let _ = slots.done_tx.send(TryDone {
            run_id: claim.run_id,
            can_wait: wait,
        });
    }
}

/// Puts an interrupted try back in the queue without using up a retry.
pub(super) async fn requeue(env: &TryEnv, claim: &Claim) {
    let end = TryEnd::requeued(
        "interrupted: the scheduler shut down; the try will run again",
        now(),
    );
    if let Err(e) = env.store.finish_try(claim, &end).await {
        tracing::error!("cannot requeue an interrupted try: {e}");
    }
}

async fn fail_now(env: &TryEnv, claim: &Claim, message: String) {
    let end = TryEnd {
        state: TaskState::Failed,
        output: None,
        error: Some(message),
        next_try_at: None,
        now: now(),
        requeue: false,
        reschedule: false,
        produced: Vec::new(),
    };
    if let Err(e) = env.store.finish_try(claim, &end).await {
        tracing::error!("cannot record a failed try: {e}");
    }
}
