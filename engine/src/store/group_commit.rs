//! Group commit for the writes tries make (their pid, their end) and the scheduler's claims:
//! what arrives while one transaction commits goes together into the next.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use super::{Claim, ClaimBatch, ClaimRequest, Recorded, Store, StoreError, TryWrite};

/// Why a group-committed write or claim did not happen: the batch's error, shared by every job
/// in it, or the recorder gone (its process is shutting down).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the try recorder has stopped")]
    Stopped,
}

impl CommitError {
    pub fn is_transient(&self) -> bool {
        matches!(self, CommitError::Store(e) if e.is_transient())
    }
}

/// How a batch that failed for a transient reason (a deadlock, a serialization failure: the
/// database aborted the whole transaction) is tried again: five more times, from 5 ms.
pub fn transient_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(5))
        .with_max_times(5)
}

/// How a batch is tried again while the database is unreachable (a restart, a failover): from
/// 100 ms up to every 5 s, for up to about ten minutes. The tries whose ends it holds keep their
/// results meanwhile; their leases are extended by the heartbeat once the database is back, so a
/// try that finished during an outage is recorded, not run again.
pub fn outage_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(130)
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, CommitError>>;

/// A claim's answer for the scheduler loop: what it asked (pools, sizes, the slots it held) and
/// the tries it got.
pub struct Claimed {
    pub asked: ClaimBatch,
    pub result: Result<Vec<Vec<Claim>>, CommitError>,
    /// The slots were a finished try's, handed over in the transaction that recorded its end
    /// (see [`Handover`]), not reserved by the loop.
    pub handover: bool,
}

impl Claimed {
    pub fn reserved(&self) -> usize {
        self.asked.limit as usize
    }
}

/// A finished try's slot, given to the next queued try of its pool in the same transaction
/// that records the end, so that a short try's successor waits for one commit instead of two
/// (the end's, then the loop's claim). The answer goes to the scheduler loop like its own
/// claims'.
pub struct Handover {
    /// Limit 1; its times are set when the end is written.
    pub request: ClaimRequest,
    pub lease: Duration,
    pub answer: tokio::sync::mpsc::UnboundedSender<Claimed>,
    /// Once cancelled (shutdown), the ending try does not hand its slot on.
    pub stop: CancellationToken,
}

enum Job {
    Write(Box<TryWrite>, Reply<bool>, Option<Handover>),
    Claim(ClaimBatch, Reply<Vec<Vec<Claim>>>),
}

/// Group commit for the writes tries make (their pid, their end) and the scheduler's claims:
/// what arrives while one transaction commits goes together into the next, so many tasks ending
/// at once, and the claims of the tries that replace them, cost one commit.
#[derive(Clone)]
pub struct Recorder {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
}

/// The jobs one group commit takes.
struct Batch {
    writes: Vec<TryWrite>,
    replies: Vec<Reply<bool>>,
    handovers: Vec<Handover>,
    claim: Option<(ClaimBatch, Reply<Vec<Vec<Claim>>>)>,
}

/// Takes `first` and what else is waiting, up to a second claim (kept in `held` for the next
/// batch: a batch claims once) or 512 writes.
fn gather(
    first: Job,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Job>,
    held: &mut Option<Job>,
) -> Batch {
    let mut batch = Batch {
        writes: Vec::new(),
        replies: Vec::new(),
        handovers: Vec::new(),
        claim: None,
    };
    let mut next = Some(first);
    while let Some(job) = next.take() {
        match job {
            Job::Write(w, r, h) => {
                batch.writes.push(*w);
                batch.replies.push(r);
                batch.handovers.extend(h);
            }
            Job::Claim(c, r) if batch.claim.is_none() => batch.claim = Some((c, r)),
            other => {
                *held = Some(other);
                break;
            }
        }
        if batch.writes.len() < 512 {
            next = rx.try_recv().ok();
        }
    }
    batch
}

type Group = (ClaimRequest, tokio::sync::mpsc::UnboundedSender<Claimed>);

/// One claim batch for the transaction: the loop's requests first, then one per pool for the
/// handed-over slots (returned with where their answers go).
fn merge_claims(claim: Option<&ClaimBatch>, handovers: Vec<Handover>) -> (ClaimBatch, Vec<Group>) {
    let mut merged = claim.cloned().unwrap_or(ClaimBatch {
        requests: Vec::new(),
        limit: 0,
    });
    let mut groups: Vec<Group> = Vec::new();
    // Every handover that reached here is claimed and answered, shutdown or not: its try has
    // already kept its slot for the answer, and the loop's drain requeues what it can no longer
    // start.
    for h in handovers {
        merged.limit += 1;
        match groups
            .iter_mut()
            .find(|(r, _)| r.pool == h.request.pool && r.run_id == h.request.run_id)
        {
            Some((r, _)) => r.limit += 1,
            None => groups.push((h.request, h.answer)),
        }
    }
    merged
        .requests
        .extend(groups.iter().map(|(r, _)| r.clone()));
    (merged, groups)
}

/// Records a batch, trying again while the failure is worth it: a deadlock or serialization
/// failure (PostgreSQL aborts one of two transactions that wait on each other) at once, a
/// database that cannot be reached for as long as [`outage_backoff`] lasts. The batch is
/// all-or-nothing, so a retry never applies half of it twice.
async fn record_with_retries(
    store: &dyn Store,
    writes: &[TryWrite],
    batch: Option<&ClaimBatch>,
) -> super::Result<Recorded> {
    let attempt = || async { store.record_and_claim(writes, batch).await };
    match attempt
        .retry(transient_backoff())
        .when(|e| e.is_transient())
        .await
    {
        Err(e) if e.is_unreachable() => {
            tracing::warn!(
                "database unreachable ({e}); {} write(s) wait for it, retrying with backoff",
                writes.len()
            );
            let r = attempt
                .retry(outage_backoff())
                .when(|e| e.is_transient())
                .await;
            if r.is_ok() {
                tracing::info!("database reachable again; the waiting writes are recorded");
            }
            r
        }
        r => r,
    }
}

/// Commits a batch and answers each of its jobs.
async fn commit(store: &dyn Store, batch: Batch) {
    let Batch {
        writes,
        replies,
        handovers,
        claim,
    } = batch;
    let own = claim.as_ref().map_or(0, |(c, _)| c.requests.len());
    let (merged, groups) = merge_claims(claim.as_ref().map(|(c, _)| c), handovers);
    let batch = (!merged.requests.is_empty()).then_some(&merged);
    tracing::trace!(
        writes = writes.len(),
        claim = claim.is_some(),
        handovers = groups.len(),
        "group commit"
    );
    crate::metrics::metrics().group_commit(writes.len());
    let result = record_with_retries(store, &writes, batch).await;
    let (applied, mut claimed) = match result {
        Ok(Recorded { applied, claimed }) => (Ok(applied), Ok(claimed)),
        Err(e) => {
            let e = CommitError::Store(Arc::new(e));
            (Err(e.clone()), Err(e))
        }
    };
    // The handed-over claims reach the loop before the ends are answered, so a try that has
    // ended has its successor's answer in the loop's channel already.
    for (i, (req, answer)) in groups.into_iter().enumerate() {
        let result = match &mut claimed {
            Ok(c) => Ok(vec![std::mem::take(&mut c[own + i])]),
            Err(e) => Err(e.clone()),
        };
        let _ = answer.send(Claimed {
            asked: ClaimBatch {
                limit: req.limit,
                requests: vec![req],
            },
            result,
            handover: true,
        });
    }
    match applied {
        Ok(applied) => {
            for (reply, ok) in replies.into_iter().zip(applied) {
                let _ = reply.send(Ok(ok));
            }
        }
        Err(msg) => {
            for reply in replies {
                let _ = reply.send(Err(msg.clone()));
            }
        }
    }
    if let Some((_, reply)) = claim {
        let _ = reply.send(claimed.map(|mut c| {
            c.truncate(own);
            c
        }));
    }
}

impl Recorder {
    /// Starts the writer task; it ends when the last `Recorder` is dropped.
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            let mut held: Option<Job> = None;
            loop {
                let first = match held.take() {
                    Some(j) => j,
                    None => match rx.recv().await {
                        Some(j) => j,
                        None => return,
                    },
                };
                let batch = gather(first, &mut rx, &mut held);
                commit(store.as_ref(), batch).await;
            }
        });
        Recorder { tx }
    }

    pub async fn write(&self, w: TryWrite) -> Result<bool, CommitError> {
        self.send_write(w, None).await
    }

    /// Writes a try's end and, in the same transaction, claims a successor for its slot.
    pub async fn end_and_hand_over(
        &self,
        w: TryWrite,
        handover: Handover,
    ) -> Result<bool, CommitError> {
        self.send_write(w, Some(handover)).await
    }

    async fn send_write(
        &self,
        w: TryWrite,
        handover: Option<Handover>,
    ) -> Result<bool, CommitError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Write(Box::new(w), reply, handover))
            .map_err(|_| CommitError::Stopped)?;
        answer.await.map_err(|_| CommitError::Stopped)?
    }

    /// Queues a write for the next group commit without waiting for it. Its writes are fenced
    /// like the others, so one that arrives after the try's end changes nothing.
    pub fn write_detached(&self, w: TryWrite) {
        let (reply, _) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Write(Box::new(w), reply, None)).is_err() {
            tracing::warn!("the try recorder has stopped");
        }
    }

    /// Claims with the next group commit; per request, the tries it claimed.
    pub async fn claim(&self, batch: ClaimBatch) -> Result<Vec<Vec<Claim>>, CommitError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Claim(batch, reply))
            .map_err(|_| CommitError::Stopped)?;
        answer.await.map_err(|_| CommitError::Stopped)?
    }
}
