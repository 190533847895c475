//! Running one claimed try: render its keys, call its operator under a timeout, capture its
//! output, and record the end as a fenced write.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::dag::{Dag, Task};
use crate::operator::{LOG_SUCCEEDED, LogSink, OperatorError, Registry, TaskContext, log_header};
use crate::plan::{Failure, RunSnapshot, TiSnapshot, UNMAPPED, after_failure};
use crate::secrets::Secrets;
use crate::state::TaskState;
use crate::store::{
    Claim, ClaimBatch, ClaimRequest, PlanRows, RunRow, Store, TiRow, TryEnd, TryWrite,
};
use crate::template::{self, TaskPart};
use crate::time::{now, rfc3339};

/// Where the log of one try lives under `$FLOW_HOME`.
pub fn log_path(
    home: &Path,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
    try_number: i64,
) -> PathBuf {
    let folder = home
        .join("logs")
        .join(format!("dag_id={dag_id}"))
        .join(format!("run_id={run_id}"))
        .join(format!("task_id={task_id}"));
    // Mapped tries share their task's folder: a folder per map index made creating the logs of
    // a 10,000-item map cost more than running its tasks.
    if map_index == UNMAPPED {
        folder.join(format!("attempt={try_number}.log"))
    } else {
        folder.join(format!("map_index={map_index}.attempt={try_number}.log"))
    }
}

/// A run's snapshot for the planner.
pub fn plan_snapshot(run: &RunRow, rows: PlanRows) -> RunSnapshot {
    RunSnapshot {
        run_id: run.run_id.clone(),
        dag_id: run.dag_id.clone(),
        state: run.state,
        logical_date: run.logical_date,
        data_interval_start: run.data_interval_start,
        data_interval_end: run.data_interval_end,
        params: run.params.clone(),
        tis: rows.rows,
        counts: rows.counts,
    }
}

/// A run's snapshot holding only its upstream tasks' outputs: what rendering a task's
/// templates reads (the executor before a try, the task page for its rendered command).
pub fn outputs_snapshot(run: &RunRow, outputs: Vec<(String, i64, Option<Json>)>) -> RunSnapshot {
    let rows = outputs
        .into_iter()
        .map(|(task_id, map_index, output)| TiSnapshot {
            task_id,
            map_index,
            state: TaskState::Success,
            try_number: 0,
            try_base: 0,
            next_try_at: None,
            output,
        })
        .collect();
    plan_snapshot(
        run,
        PlanRows {
            rows,
            counts: Vec::new(),
        },
    )
}

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, String>>;

/// A claim's answer for the scheduler loop: what it asked (pools, sizes, the slots it held) and
/// the tries it got.
pub struct Claimed {
    pub asked: ClaimBatch,
    pub result: Result<Vec<Vec<Claim>>, String>,
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

impl Recorder {
    /// Starts the writer task; it ends when the last `Recorder` is dropped.
    pub fn start(store: Arc<dyn Store>) -> Recorder {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            // A second claim that arrives in one batch waits for the next: a batch claims once.
            let mut held: Option<Job> = None;
            loop {
                let first = match held.take() {
                    Some(j) => j,
                    None => match rx.recv().await {
                        Some(j) => j,
                        None => return,
                    },
                };
                let mut writes = Vec::new();
                let mut replies = Vec::new();
                let mut handovers: Vec<Handover> = Vec::new();
                let mut claim: Option<(ClaimBatch, Reply<Vec<Vec<Claim>>>)> = None;
                let mut next = Some(first);
                while let Some(job) = next.take() {
                    match job {
                        Job::Write(w, r, h) => {
                            writes.push(*w);
                            replies.push(r);
                            handovers.extend(h);
                        }
                        Job::Claim(c, r) if claim.is_none() => claim = Some((c, r)),
                        other => {
                            held = Some(other);
                            break;
                        }
                    }
                    if writes.len() < 512 {
                        next = rx.try_recv().ok();
                    }
                }
                // One claim batch for the transaction: the loop's requests first, then one per
                // pool for the handed-over slots; each side gets its own part of the answer.
                let own = claim.as_ref().map_or(0, |(c, _)| c.requests.len());
                let mut merged = claim
                    .as_ref()
                    .map(|(c, _)| c.clone())
                    .unwrap_or(ClaimBatch {
                        requests: Vec::new(),
                        limit: 0,
                    });
                let mut groups: Vec<(ClaimRequest, tokio::sync::mpsc::UnboundedSender<Claimed>)> =
                    Vec::new();
                // Every handover that reached here is claimed and answered, shutdown or not: its
                // try has already kept its slot for the answer, and the loop's drain requeues
                // what it can no longer start.
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
                let batch = (!merged.requests.is_empty()).then_some(&merged);
                tracing::trace!(
                    writes = writes.len(),
                    claim = claim.is_some(),
                    handovers = groups.len(),
                    "group commit"
                );
                // A deadlock or serialization failure (PostgreSQL aborts one of two transactions
                // that wait on each other) is worth another go: the batch is all-or-nothing.
                let attempt = || async { store.record_and_claim(&writes, batch).await };
                let result = attempt
                    .retry(
                        ExponentialBuilder::default()
                            .with_min_delay(Duration::from_millis(5))
                            .with_max_times(5),
                    )
                    .when(|e| e.is_transient())
                    .await;
                let (applied, mut claimed) = match result {
                    Ok((applied, claimed)) => (Ok(applied), Ok(claimed)),
                    Err(e) => (Err(e.to_string()), Err(e.to_string())),
                };
                // The handed-over claims reach the loop before the ends are answered, so a try
                // that has ended has its successor's answer in the loop's channel already.
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
        });
        Recorder { tx }
    }

    pub async fn write(&self, w: TryWrite) -> Result<bool, String> {
        self.send_write(w, None).await
    }

    /// Writes a try's end and, in the same transaction, claims a successor for its slot.
    pub async fn end_and_hand_over(&self, w: TryWrite, handover: Handover) -> Result<bool, String> {
        self.send_write(w, Some(handover)).await
    }

    async fn send_write(&self, w: TryWrite, handover: Option<Handover>) -> Result<bool, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Write(Box::new(w), reply, handover))
            .map_err(|_| "the try recorder has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the try recorder has stopped".to_string())?
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
    pub async fn claim(&self, batch: ClaimBatch) -> Result<Vec<Vec<Claim>>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Claim(batch, reply))
            .map_err(|_| "the try recorder has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the try recorder has stopped".to_string())?
    }
}

/// (run, task, map index, try number) of a try.
pub type TryKey = (String, String, i64, i64);

pub fn try_key(claim: &Claim) -> TryKey {
    (
        claim.run_id.clone(),
        claim.task_id.clone(),
        claim.map_index,
        claim.try_number,
    )
}

/// The tries this process runs, each with the token that stops it.
#[derive(Default)]
pub struct RunningTries {
    tries: std::sync::Mutex<HashMap<TryKey, Running>>,
}

struct Running {
    stop: CancellationToken,
    /// Its end is being written: that write releases the lease, so a heartbeat that finds the
    /// lease gone must not take the try for one that was cleared or taken over.
    ending: bool,
}

impl RunningTries {
    pub fn insert(&self, key: TryKey, stop: CancellationToken) {
        if let Ok(mut m) = self.tries.lock() {
            m.insert(
                key,
                Running {
                    stop,
                    ending: false,
                },
            );
        }
    }

    pub fn remove(&self, key: &TryKey) {
        if let Ok(mut m) = self.tries.lock() {
            m.remove(key);
        }
    }

    pub fn keys(&self) -> Vec<TryKey> {
        self.tries
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.tries.lock().map(|m| m.is_empty()).unwrap_or(false)
    }

    fn ending(&self, key: &TryKey) {
        if let Ok(mut m) = self.tries.lock()
            && let Some(r) = m.get_mut(key)
        {
            r.ending = true;
        }
    }

    /// Stops a try whose lease this process no longer holds, unless it is writing its own end.
    /// Returns whether it was stopped.
    pub fn stop_lost(&self, key: &TryKey) -> bool {
        let Ok(m) = self.tries.lock() else {
            return false;
        };
        match m.get(key) {
            Some(r) if !r.ending => {
                r.stop.cancel();
                true
            }
            _ => false,
        }
    }
}

/// Where a scheduler notes each process group it starts, before the command may do any work:
/// one line `PID RUN TASK MAP_INDEX TRY` per spawn, appended to `$FLOW_HOME/run/pids-OWNER.log`.
///
/// The note has to outlive the scheduler's process, not the machine: if the machine goes down,
/// the task's processes go with it. An append that `write` returned from is in the kernel's
/// page cache and survives a `kill -9` of the scheduler, so it needs no fsync, and the command
/// starts without waiting for a database commit (that wait was a third of a short try's time
/// in a group commit). The pid is also written to the database, without waiting, for
/// the pages and for schedulers that recover tries from another home.
pub struct PidJournal {
    path: PathBuf,
    file: std::sync::Mutex<Option<std::fs::File>>,
}

impl PidJournal {
    pub fn path(home: &Path, owner: &str) -> PathBuf {
        let name: String = owner
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        home.join("run").join(format!("pids-{name}.log"))
    }

    pub fn new(home: &Path, owner: &str) -> PidJournal {
        PidJournal {
            path: Self::path(home, owner),
            file: std::sync::Mutex::new(None),
        }
    }

    /// Notes `pid` as the process group of `claim`'s try.
    pub fn note(&self, pid: u32, claim: &Claim) -> std::io::Result<()> {
        use std::io::Write;
        let line = format!(
            "{pid}\t{}\t{}\t{}\t{}\n",
            claim.run_id, claim.task_id, claim.map_index, claim.try_number
        );
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("pid journal lock poisoned"))?;
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        // One write per line: O_APPEND keeps each whole, even if two were in flight.
        match file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => Ok(()),
        }
    }

    /// The process group `owner` noted for a try, from its journal in `home`.
    pub fn find(home: &Path, owner: &str, key: &TryKey) -> Option<i64> {
        let text = std::fs::read_to_string(Self::path(home, owner)).ok()?;
        let wanted = format!("{}\t{}\t{}\t{}", key.0, key.1, key.2, key.3);
        text.lines()
            .rev()
            .find_map(|l| l.split_once('\t').filter(|(_, rest)| *rest == wanted))
            .and_then(|(pid, _)| pid.parse().ok())
    }

    /// Empties the journal while no try of this scheduler runs, so that a long-lived scheduler's
    /// journal stays as short as its busiest moment. A try is registered in `running` before it
    /// notes its pid, and the check and the truncation hold the journal's lock, so a note is
    /// never cut away.
    pub fn truncate_when_idle(&self, running: &RunningTries) {
        if let Ok(mut file) = self.file.lock()
            && let Some(f) = file.as_mut()
            && running.is_empty()
            && let Err(e) = f.set_len(0)
        {
            tracing::warn!("cannot empty {}: {e}", self.path.display());
        }
    }

    /// Removes the journal: on a clean shutdown, when none of its tries can still be running.
    pub fn remove(&self) {
        if let Ok(mut f) = self.file.lock() {
            *f = None;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct TryEnv {
    /// Fires when the scheduler shuts down cleanly: its tries are requeued, not cancelled.
    pub shutdown: CancellationToken,
    pub recorder: Recorder,
    pub pids: Arc<PidJournal>,
    pub running: Arc<RunningTries>,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub secrets: Secrets,
    pub home: PathBuf,
}

enum Outcome {
    Success(Option<Json>),
    Failed { message: String, retryable: bool },
    Rescheduled(chrono::DateTime<chrono::Utc>),
}

/// Runs one claimed try to its end and records it. Returns the state recorded (None when the
/// lease was lost), and whether its slot was handed over (`handover`): then the slot is the
/// successor's, and the caller must not free it.
pub async fn run_try(
    env: &TryEnv,
    claim: &Claim,
    dag: &Dag,
    run: &RunRow,
    handover: Option<Handover>,
) -> (Option<TaskState>, bool) {
    let masker = env.secrets.masker();
    let Some(task) = dag.task(&claim.task_id) else {
        // The run's DAG version always has its tasks; reaching this is a bug.
        return finish(
            env,
            claim,
            None,
            handover,
            Outcome::Failed {
                message: format!(
                    "internal error: task '{}' is not in DAG version {}",
                    claim.task_id, dag.version
                ),
                retryable: false,
            },
        )
        .await;
    };
    let path = log_path(
        &env.home,
        &dag.id,
        &run.run_id,
        &task.id,
        claim.map_index,
        claim.try_number,
    );
    let header = log_header(&task.id, claim.try_number, &run.run_id, claim.started_at);
    let log = match LogSink::create(&path, &header, masker.clone()).await {
        Ok(l) => l,
        Err(e) => {
            return finish(
                env,
                claim,
                Some(task),
                handover,
                Outcome::Failed {
                    message: format!("cannot create the log folder of {}: {e}", path.display()),
                    retryable: true,
                },
            )
            .await;
        }
    };
    let outcome = execute(env, claim, dag, task, run, &log).await;
    match &outcome {
        // A quiet success leaves no file; its readers tell the same two lines from the record.
        Outcome::Success(_) if log.written() => log.line(LOG_SUCCEEDED).await,
        Outcome::Success(_) => {}
        Outcome::Failed { message, .. } => log.line(&format!("flow: try failed: {message}")).await,
        Outcome::Rescheduled(at) => {
            log.line(&format!(
                "flow: rescheduled: the slot is free until {}",
                crate::time::rfc3339(*at)
            ))
            .await
        }
    }
    finish(env, claim, Some(task), handover, outcome).await
}

async fn execute(
    env: &TryEnv,
    claim: &Claim,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    log: &LogSink,
) -> Outcome {
    let Some(op) = env.registry.get(&task.operator).cloned() else {
        return Outcome::Failed {
            message: format!("unknown operator '{}'", task.operator),
            retryable: false,
        };
    };
    if let Some(message) = dag.params_misfit(&run.params) {
        return Outcome::Failed {
            message,
            retryable: false,
        };
    }
    let reads = task.output_reads.among(&dag.ancestors(&task.id));
    let read_ids: Vec<String> = reads.iter().map(|s| s.to_string()).collect();
    let outputs = if read_ids.is_empty() {
        Vec::new()
    } else {
        match env.store.outputs(&run.run_id, &read_ids).await {
            Ok(o) => o,
            Err(e) => {
                return Outcome::Failed {
                    message: format!("cannot read the run's upstream outputs: {e}"),
                    retryable: true,
                };
            }
        }
    };
    let snap = outputs_snapshot(run, outputs);
    let ctx_value = snap.context(reads.iter().copied()).to_value(
        &TaskPart {
            task_id: &task.id,
            try_number: claim.try_number,
            item: claim.item.as_ref(),
            map_index: (claim.map_index != UNMAPPED).then_some(claim.map_index),
        },
        &env.secrets,
    );
    let config = match template::render_task_config(&task.config, &ctx_value, op.keys().shell) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed {
                message: format!("template error: {e}"),
                retryable: false,
            };
        }
    };
    let output_path = env.home.join("tmp").join(format!(
        "output-{}-{}.json",
        std::process::id(),
        rand::random::<u64>()
    ));
    if let Err(e) = std::fs::create_dir_all(env.home.join("tmp")) {
        return Outcome::Failed {
            message: format!("cannot create {}: {e}", env.home.join("tmp").display()),
            retryable: true,
        };
    }
    let (pid_tx, mut pid_rx) =
        tokio::sync::mpsc::unbounded_channel::<(u32, tokio::sync::oneshot::Sender<bool>)>();
    let ctx = TaskContext {
        dag_id: dag.id.clone(),
        run_id: run.run_id.clone(),
        task_id: task.id.clone(),
        map_index: (claim.map_index != UNMAPPED).then_some(claim.map_index),
        try_number: claim.try_number,
        first_started_at: claim.started_at,
        timeout: task.timeout,
        logical_date: rfc3339(run.logical_date),
        data_interval_start: run.data_interval_start,
        data_interval_end: run.data_interval_end,
        dag_version: run.dag_version.clone(),
        models: Some(env.store.clone() as Arc<dyn crate::store::ModelRegistry>),
        dag_folder: dag.folder(),
        output_path: output_path.clone(),
        log: log.clone(),
        secrets: env.secrets.clone(),
        named_secrets: task.secret_reads.iter().cloned().collect(),
        masker: env.secrets.masker(),
        on_spawn: Some(pid_tx),
        external: claim.external.clone(),
        on_external: Some(external_recorder(env.recorder.clone(), claim.clone())),
        shutdown: env.shutdown.clone(),
    };
    // The process group is noted before the task's command may start its work, so that a
    // scheduler that finds this try orphaned can always stop it (see `PidJournal`).
    let recorder = env.recorder.clone();
    let pids = env.pids.clone();
    let pid_claim = claim.clone();
    let pid_writer = tokio::spawn(async move {
        // The database gets the pid only once the try has run for a second: a short try ends
        // before anyone could look, and its write would only compete with the ends for
        // commits. The journal has it from the start.
        let mut pending: Option<u32> = None;
        loop {
            tokio::select! {
                msg = pid_rx.recv() => {
                    let Some((pid, reply)) = msg else { break };
                    let ok = match pids.note(pid, &pid_claim) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!("cannot note pid {pid} in {}: {e}", pids.path.display());
                            false
                        }
                    };
                    let _ = reply.send(ok);
                    if ok && let Some(earlier) = pending.replace(pid) {
                        recorder.write_detached(TryWrite::Pid(pid_claim.clone(), earlier as i64));
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)), if pending.is_some() => {
                    if let Some(pid) = pending.take() {
                        recorder.write_detached(TryWrite::Pid(pid_claim.clone(), pid as i64));
                    }
                }
            }
        }
    });
    let fut = op.execute(&config, &ctx);
    let result = match task.timeout.filter(|_| !op.own_timeout()) {
        Some(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(OperatorError::Retryable(format!(
                "timed out after {}",
                human(limit)
            ))),
        },
        None => fut.await,
    };
    // Closing the channel ends the writer; aborting it mid-write could cut a statement in half.
    drop(ctx);
    let _ = pid_writer.await;
    let file_output = read_output(&output_path).await;
    match (result, file_output) {
        (Err(OperatorError::Retryable(m)), _) => Outcome::Failed {
            message: m,
            retryable: true,
        },
        (Err(OperatorError::Fatal(m)), _) => Outcome::Failed {
            message: m,
            retryable: false,
        },
        (Err(OperatorError::Reschedule(at)), _) => Outcome::Rescheduled(at),
        (Ok(_), Err(m)) => Outcome::Failed {
            message: m,
            retryable: false,
        },
        (Ok(out), Ok(file)) => Outcome::Success(out.or(file)),
    }
}

/// Commits what a try started elsewhere through the group commit, fenced on the try's lease.
fn external_recorder(recorder: Recorder, claim: Claim) -> crate::operator::ExternalRecorder {
    Arc::new(move |reference| {
        let recorder = recorder.clone();
        let claim = claim.clone();
        Box::pin(async move {
            matches!(
                recorder.write(TryWrite::External(claim, reference)).await,
                Ok(true)
            )
        })
    })
}

/// The largest `FLOW_OUTPUT` a try may publish: outputs live in the metadata database and are
/// read by every downstream template, so a large result belongs in a file whose path is the
/// output.
pub const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// Reads and deletes the `FLOW_OUTPUT` file: it may hold a secret, and nothing unmasked stays
/// under `$FLOW_HOME`.
async fn read_output(path: &Path) -> Result<Option<Json>, String> {
    use std::io::Read;
    // Blocking calls on purpose: a missing file (most tasks) is one failed open, cheaper than a
    // trip to the blocking pool.
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read FLOW_OUTPUT: {e}")),
    };
    // Read one byte past the limit rather than trusting the size: the file may still grow.
    let mut bytes = Vec::new();
    let read = file.take(MAX_OUTPUT_BYTES + 1).read_to_end(&mut bytes);
    let _ = std::fs::remove_file(path);
    read.map_err(|e| format!("cannot read FLOW_OUTPUT: {e}"))?;
    if bytes.len() as u64 > MAX_OUTPUT_BYTES {
        return Err(format!(
            "FLOW_OUTPUT holds more than {} KiB, the limit of a task's output; write a large \
             result to a file and publish its path",
            MAX_OUTPUT_BYTES / 1024
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| format!("FLOW_OUTPUT is not UTF-8: {e}"))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("FLOW_OUTPUT does not hold JSON: {e}"))
}

async fn finish(
    env: &TryEnv,
    claim: &Claim,
    task: Option<&Task>,
    handover: Option<Handover>,
    outcome: Outcome,
) -> (Option<TaskState>, bool) {
    let masker = env.secrets.masker();
    let now = now();
    let end = match outcome {
        Outcome::Success(mut output) => {
            if let Some(o) = output.as_mut() {
                masker.mask_json(o);
            }
            TryEnd {
                state: TaskState::Success,
                output,
                error: None,
                next_try_at: None,
                now,
                requeue: false,
                reschedule: false,
            }
        }
        Outcome::Rescheduled(at) => TryEnd {
            state: TaskState::UpForRetry,
            output: None,
            error: None,
            next_try_at: Some(at),
            now,
            requeue: false,
            reschedule: true,
        },
        Outcome::Failed { message, retryable } => {
            let policy = task.map(|t| t.retry.clone()).unwrap_or_default();
            let f = after_failure(&policy, claim.try_number - claim.try_base, retryable, now);
            TryEnd {
                state: f.state(),
                output: None,
                error: Some(masker.mask(&message)),
                next_try_at: f.retry_at(),
                now,
                requeue: false,
                reschedule: false,
            }
        }
    };
    let state = end.state;
    env.running.ending(&try_key(claim));
    let handover = handover.filter(|h| !h.stop.is_cancelled()).map(|mut h| {
        h.request.now = now;
        h.request.lease_until = now + chrono::Duration::from_std(h.lease).unwrap_or_default();
        h
    });
    let handed_over = handover.is_some();
    let write = TryWrite::End(claim.clone(), end);
    let written = match handover {
        Some(h) => env.recorder.end_and_hand_over(write, h).await,
        None => env.recorder.write(write).await,
    };
    let state = match written {
        Ok(true) => Some(state),
        Ok(false) => {
            tracing::warn!(
                "try {} of {}/{}[{}] lost its lease; its result is dropped",
                claim.try_number,
                claim.run_id,
                claim.task_id,
                claim.map_index
            );
            None
        }
        Err(e) => {
            // The lease will expire and another pass retries the try per its policy.
            tracing::error!("cannot record the end of a try: {e}");
            None
        }
    };
    // A failed transaction still answers the handover (with the error), which frees the slot.
    (state, handed_over)
}

/// Outcome of a try whose scheduler died: another try if the policy allows.
pub fn orphan_end(task: Option<&Task>, ti: &TiRow) -> TryEnd {
    let now = now();
    if ti.external_ref.is_some() {
        // Its work goes on elsewhere (an EMR step): the next try re-attaches to it, so losing
        // the scheduler that watched it costs no try.
        return TryEnd::requeued(
            "the scheduler watching this try stopped; the next try re-attaches to its external work",
            now,
        );
    }
    let policy = task.map(|t| t.retry.clone()).unwrap_or_default();
    let f: Failure = after_failure(&policy, ti.try_number - ti.try_base, true, now);
    TryEnd {
        state: f.state(),
        output: None,
        error: Some("the scheduler running this try stopped (its lease expired)".to_string()),
        next_try_at: f.retry_at(),
        now,
        requeue: false,
        reschedule: false,
    }
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 && s < 60 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3600) && s >= 3600 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod pid_journal_tests {
    use super::*;

    fn claim(task: &str, try_number: i64) -> Claim {
        Claim {
            run_id: "r__2026-01-01T00:00:00+00:00".into(),
            task_id: task.into(),
            map_index: UNMAPPED,
            try_number,
            try_base: 0,
            item: None,
            owner: "host:1:ab".into(),
            external: None,
            started_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn notes_are_found_by_try_and_emptied_only_when_no_try_runs() {
        let home = tempfile::tempdir().unwrap();
        let owner = "host:1:ab";
        let journal = PidJournal::new(home.path(), owner);
        journal.note(101, &claim("a", 1)).unwrap();
        journal.note(102, &claim("b", 1)).unwrap();
        journal.note(103, &claim("a", 2)).unwrap();
        let find = |task: &str, n: i64| {
            let c = claim(task, n);
            PidJournal::find(home.path(), owner, &try_key(&c))
        };
        assert_eq!(find("a", 1), Some(101));
        assert_eq!(find("a", 2), Some(103));
        assert_eq!(find("b", 1), Some(102));
        assert_eq!(find("b", 2), None);
        // "a" must not match a task whose id only starts with it.
        journal.note(104, &claim("ab", 1)).unwrap();
        assert_eq!(find("a", 1), Some(101));
        assert_eq!(
            PidJournal::find(home.path(), "someone-else", &try_key(&claim("a", 1))),
            None
        );

        let running = RunningTries::default();
        running.insert(try_key(&claim("a", 2)), CancellationToken::new());
        journal.truncate_when_idle(&running);
        assert_eq!(find("a", 2), Some(103), "emptied while a try ran");
        running.remove(&try_key(&claim("a", 2)));
        journal.truncate_when_idle(&running);
        assert_eq!(find("a", 2), None);
        // Notes after the truncation land at the start of the emptied file.
        journal.note(105, &claim("c", 1)).unwrap();
        assert_eq!(find("c", 1), Some(105));
        assert_eq!(
            std::fs::read_to_string(PidJournal::path(home.path(), owner))
                .unwrap()
                .lines()
                .count(),
            1
        );
        journal.remove();
        assert!(!PidJournal::path(home.path(), owner).exists());
    }
}
