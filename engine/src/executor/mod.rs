//! Running one claimed try: render its keys, call its operator under a timeout, capture its
//! output, and record the end as a fenced write.
//!
//! One concern a file: [`running`] (the tries this process runs and their stop tokens),
//! [`pids`] (the journal of process groups, for orphan recovery), [`snapshot`] (the run views
//! the planner and templates read). The group commit the ends go through is the store's
//! ([`crate::store::group_commit`]); the log a try writes is [`crate::log`].

mod pids;
mod running;
mod snapshot;

pub(crate) use pids::PidJournal;
pub(crate) use running::{RunningTries, TryKey, try_key};
pub use snapshot::outputs_snapshot;
pub(crate) use snapshot::plan_snapshot;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dag::{Dag, Task};
use crate::log::{LOG_SUCCEEDED, LogSink, RemoteLogs, Shipping, log_header, log_key};
use crate::metrics::{TryEnded, metrics};
use crate::operator::{OperatorError, Registry, TaskContext};
use crate::plan::{Failure, UNMAPPED, after_failure};
use crate::secrets::Secrets;
use crate::state::TaskState;
use crate::store::group_commit::{Handover, Recorder};
use crate::store::{Claim, RunRow, Store, TiRow, TryEnd, TryWrite};
use crate::telemetry::{self, RunTrace, TrySpan};
use crate::template::{self, TaskPart};
use crate::time::{now, rfc3339};

pub(crate) struct TryEnv {
    /// Fires when the scheduler shuts down cleanly: its tries are requeued, not cancelled.
    pub shutdown: CancellationToken,
    pub recorder: Recorder,
    pub pids: Arc<PidJournal>,
    pub running: Arc<RunningTries>,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub secrets: Secrets,
    pub home: PathBuf,
    /// `[logs] remote`: where logs are copied as tries run.
    pub remote_logs: Option<RemoteLogs>,
    /// The web UI's address, for the links in a task's alerts.
    pub base_url: String,
    /// The loop's tries: a task's alert is posted in it, so a shutdown (the end of `flow run`)
    /// waits for the post as for the try.
    pub tracker: tokio_util::task::TaskTracker,
    /// What `trigger_dag` starts other DAGs' runs with.
    pub runs: Arc<dyn crate::operator::RunLauncher>,
}

enum Outcome {
    Success(Option<Json>),
    Failed { message: String, retryable: bool },
    Rescheduled(chrono::DateTime<chrono::Utc>),
}

/// Runs one claimed try to its end and records it. Returns the state recorded (None when the
/// lease was lost), and whether its slot was handed over (`handover`): then the slot is the
/// successor's, and the caller must not free it.
pub(crate) async fn run_try(
    env: &TryEnv,
    claim: &Claim,
    dag: &Dag,
    run: &RunRow,
    handover: Option<Handover>,
) -> (Option<TaskState>, bool) {
    let Some(task) = dag.task(&claim.task_id) else {
        // The run's DAG version always has its tasks; reaching this is a bug.
        return finish(
            env,
            claim,
            TryOf { dag, run },
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
    let trace = RunTrace::of_run(run);
    let span = TrySpan {
        run,
        trace,
        task_id: &task.id,
        map_index: claim.map_index,
        try_number: claim.try_number,
        operator: &task.operator,
        queue: &task.queue,
        pool: &task.pool,
    }
    .start();
    let started = std::time::Instant::now();
    let trace_id = trace.trace_id.to_string();
    let (state, handed_over) = run_task(env, claim, dag, task, run, &trace_id, handover)
        .instrument(span.clone())
        .await;
    let name = state.map_or("lost", TaskState::as_str);
    let failed = !matches!(
        state,
        Some(TaskState::Success | TaskState::Skipped | TaskState::Queued)
    );
    telemetry::try_ended(&span, name, failed);
    metrics().try_ended(&TryEnded {
        dag_id: &dag.id,
        task_id: &task.id,
        operator: &task.operator,
        state: name,
        took: started.elapsed(),
    });
    (state, handed_over)
}

/// [`run_try`] once its task is known, inside the try's span.
async fn run_task(
    env: &TryEnv,
    claim: &Claim,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    trace_id: &str,
    handover: Option<Handover>,
) -> (Option<TaskState>, bool) {
    let masker = env.secrets.masker();
    let key = log_key(
        &dag.id,
        &run.run_id,
        &task.id,
        claim.map_index,
        claim.try_number,
    );
    let path = env.home.join("logs").join(&key);
    let header = log_header(
        &task.id,
        claim.try_number,
        &run.run_id,
        claim.started_at,
        trace_id,
    );
    let log = match LogSink::create(&path, &header, masker.clone()).await {
        Ok(l) => l,
        Err(e) => {
            return finish(
                env,
                claim,
                TryOf { dag, run },
                handover,
                Outcome::Failed {
                    message: format!("cannot create the log folder of {}: {e}", path.display()),
                    retryable: true,
                },
            )
            .await;
        }
    };
    let shipping = env
        .remote_logs
        .as_ref()
        .map(|remote| Shipping::start(remote, key, path.clone()));
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
    // Before the end is recorded: a reader that sees the try ended finds its whole log.
    if let Some(shipping) = shipping {
        shipping.finish(log.written()).await;
    }
    finish(env, claim, TryOf { dag, run }, handover, outcome).await
}

/// An operator ready to run: its keys rendered for this try.
struct Prepared {
    op: Arc<dyn crate::operator::Operator>,
    config: Json,
}

/// A fresh file name under `FLOW_HOME/tmp` for the try's `FLOW_OUTPUT`.
fn output_file(env: &TryEnv) -> Result<std::path::PathBuf, Outcome> {
    let tmp = env.home.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| Outcome::Failed {
        message: format!("cannot create {}: {e}", tmp.display()),
        retryable: true,
    })?;
    Ok(tmp.join(format!(
        "output-{}-{}.json",
        std::process::id(),
        rand::random::<u64>()
    )))
}

async fn execute(
    env: &TryEnv,
    claim: &Claim,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    log: &LogSink,
) -> Outcome {
    let Prepared { op, config } = match prepare(env, claim, dag, task, run).await {
        Ok(p) => p,
        Err(failed) => return failed,
    };
    let output_path = match output_file(env) {
        Ok(p) => p,
        Err(failed) => return failed,
    };
    let (pid_tx, pid_rx) = tokio::sync::mpsc::unbounded_channel();
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
        scheduled: dag.scheduled(),
        models: Some(env.store.clone() as Arc<dyn crate::store::ModelRegistry>),
        experiments: Some(env.store.clone() as Arc<dyn crate::store::ExperimentStore>),
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
        traceparent: telemetry::traceparent(),
        runs: Some(env.runs.clone()),
    };
    // The process group is noted before the task's command may start its work, so that a
    // scheduler that finds this try orphaned can always stop it (see `PidJournal`).
    let pid_writer = pids::spawn_writer(
        env.pids.clone(),
        env.recorder.clone(),
        claim.clone(),
        pid_rx,
    );
    let result = call(op.as_ref(), &config, &ctx, task.timeout).await;
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

/// Finds the operator and renders the task's keys against the run, its params and the
/// upstream outputs the task reads. A failure here is the try's end.
async fn prepare(
    env: &TryEnv,
    claim: &Claim,
    dag: &Dag,
    task: &Task,
    run: &RunRow,
) -> Result<Prepared, Outcome> {
    let fatal = |message: String| Outcome::Failed {
        message,
        retryable: false,
    };
    let Some(op) = env.registry.get(&task.operator).cloned() else {
        return Err(fatal(format!("unknown operator '{}'", task.operator)));
    };
    if let Some(message) = dag.params_misfit(&run.params) {
        return Err(fatal(message));
    }
    let reads = task.output_reads.among(&dag.ancestors(&task.id));
    let read_ids: Vec<String> = reads.iter().map(|s| s.to_string()).collect();
    let outputs = if read_ids.is_empty() {
        Vec::new()
    } else {
        env.store
            .outputs(&run.run_id, &read_ids)
            .await
            .map_err(|e| Outcome::Failed {
                message: format!("cannot read the run's upstream outputs: {e}"),
                retryable: true,
            })?
    };
    let snap = outputs_snapshot(run, outputs);
    let mut context = snap.context(reads.iter().copied());
    if task.reads_triggering_events {
        let events = env
            .store
            .triggering_events(&run.run_id)
            .await
            .map_err(|e| Outcome::Failed {
                message: format!("cannot read the run's dataset events: {e}"),
                retryable: true,
            })?;
        context.triggering_events = events.iter().map(|e| e.to_json()).collect();
    }
    let ctx_value = context.to_value(
        &TaskPart {
            task_id: &task.id,
            try_number: claim.try_number,
            item: claim.item.as_ref(),
            map_index: (claim.map_index != UNMAPPED).then_some(claim.map_index),
        },
        &env.secrets,
    );
    let config = template::render_task_config(&task.config, &ctx_value, op.keys().shell)
        .map_err(|e| fatal(format!("template error: {e}")))?;
    Ok(Prepared { op, config })
}

/// Calls the operator, under the task's timeout unless the operator keeps its own.
pub(crate) async fn call(
    op: &dyn crate::operator::Operator,
    config: &Json,
    ctx: &TaskContext,
    timeout: Option<Duration>,
) -> Result<Option<Json>, OperatorError> {
    let fut = op.execute(config, ctx);
    match timeout.filter(|_| !op.own_timeout()) {
        Some(limit) => match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(OperatorError::Retryable(format!(
                "timed out after {}",
                crate::time::as_written(limit)
            ))),
        },
        None => fut.await,
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
pub(crate) const MAX_OUTPUT_BYTES: u64 = 1 << 20;

/// Reads and deletes the `FLOW_OUTPUT` file: it may hold a secret, and nothing unmasked stays
/// under `$FLOW_HOME`.
pub(crate) async fn read_output(path: &Path) -> Result<Option<Json>, String> {
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

/// The end a try's outcome records: outputs and errors masked, a failure retried or not per
/// the task's policy.
fn try_end(env: &TryEnv, claim: &Claim, task: Option<&Task>, outcome: Outcome) -> TryEnd {
    let masker = env.secrets.masker();
    let now = now();
    match outcome {
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
                produced: task.map(|t| t.produces.clone()).unwrap_or_default(),
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
            produced: Vec::new(),
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
                produced: Vec::new(),
            }
        }
    }
}

/// What a try belongs to: its DAG (version) and run.
struct TryOf<'a> {
    dag: &'a Dag,
    run: &'a RunRow,
}

/// Records the end, fenced on the lease, handing the slot to the next queued try in the same
/// transaction when the loop offered it. Returns the state recorded (None when the lease was
/// lost or the write failed) and whether the slot was handed over.
async fn finish(
    env: &TryEnv,
    claim: &Claim,
    of: TryOf<'_>,
    handover: Option<Handover>,
    outcome: Outcome,
) -> (Option<TaskState>, bool) {
    // None only when the run's DAG version lacks the task (a bug, reported as the failure).
    let task = of.dag.task(&claim.task_id);
    let end = try_end(env, claim, task, outcome);
    let (state, now) = (end.state, end.now);
    // A sensor giving its slot back is no failure to tell anyone of.
    let alert = (!end.reschedule).then(|| end.error.clone()).flatten();
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
        Ok(true) => {
            if let Some(error) = alert {
                post_try_alert(env, claim, &of, state, &error);
            }
            Some(state)
        }
        Ok(false) => {
            tracing::warn!("{} lost its lease; its result is dropped", try_key(claim));
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

/// Posts the task's `on_retry` or `on_failure` alert for a try that failed, off the loop. Only
/// the process whose end of the try was recorded posts, so a try is alerted once.
fn post_try_alert(env: &TryEnv, claim: &Claim, of: &TryOf<'_>, state: TaskState, error: &str) {
    let mapped = if claim.map_index == UNMAPPED {
        String::new()
    } else {
        format!(" (map index {})", claim.map_index)
    };
    let what = if state == TaskState::Failed {
        "failed with no retry left"
    } else {
        "failed; another try follows"
    };
    let error: String = error.chars().take(500).collect();
    let detail = format!("try {}{mapped} {what}: {error}", claim.try_number);
    let Some((to, alert)) =
        crate::alerts::try_alert(of.dag, of.run, &claim.task_id, state, detail, &env.base_url)
    else {
        return;
    };
    let secrets = env.secrets.clone();
    env.tracker.spawn_blocking(move || {
        let what = format!("{} alert", alert.kind.as_str());
        let body = alert.message();
        crate::notify::post_logged(
            &to.webhook,
            &alert.dag_id,
            &alert.run_id,
            &body,
            &secrets,
            &what,
        );
    });
}

/// Outcome of a try whose scheduler died: another try if the policy allows.
pub(crate) fn orphan_end(task: Option<&Task>, ti: &TiRow) -> TryEnd {
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
        produced: Vec::new(),
    }
}
