//! `flow tasks test`: one task of a DAG run alone, as Airflow's `airflow tasks test`. Its
//! upstream outputs are given (or read from a past run), its upstreams and trigger rule are not
//! looked at, and no run, task instance or try is recorded. What the task itself does (files
//! it writes, tables it loads, models it registers) it does for real.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::EngineError;
use super::runs::manual_run;
use crate::dag::{Dag, ForEach, Task};
use crate::executor::{call, outputs_snapshot, read_output};
use crate::log::{LogSink, log_header, log_path};
use crate::operator::{OperatorError, Registry, TaskContext};
use crate::plan::{UNMAPPED, rendered_items};
use crate::secrets::Secrets;
use crate::state::TaskState;
use crate::store::{ModelRegistry, NewRun, RunRow, RunStore, TaskOutput, TestRecord};
use crate::template::{self, TaskPart};
use crate::time::{now, rfc3339};

/// What to test: the task, and what its run would have held.
pub struct TaskTest {
    pub task_id: String,
    /// Param values given; the others take their defaults.
    pub params: serde_json::Map<String, Json>,
    pub logical_date: Option<DateTime<Utc>>,
    /// Upstream outputs by task id, for the upstream outputs the task reads. Outputs of mapped
    /// upstreams come with their map index (from a past run); given ones are unmapped.
    pub outputs: Vec<TaskOutput>,
    /// Which item of a mapped task (`for_each`) to run.
    pub map_index: Option<i64>,
}

/// Where the test runs.
pub struct TestEnv {
    pub registry: Arc<Registry>,
    pub secrets: Secrets,
    pub home: PathBuf,
    /// The model registry ML operators write to (the database's).
    pub models: Option<Arc<dyn ModelRegistry>>,
    /// Where the task's log goes (`flow tasks test` streams it to stderr). A recorded test
    /// writes the try's own log under `home` instead.
    pub log_path: PathBuf,
    /// Record the run in this store (`--record`).
    pub record: Option<Arc<dyn RunStore>>,
    pub shutdown: CancellationToken,
}

/// What a test did.
#[derive(Debug)]
pub struct Tested {
    pub outcome: TestOutcome,
    /// The run it recorded, with `--record`.
    pub run_id: Option<String>,
    /// Where its log went.
    pub log_path: PathBuf,
}

#[derive(Debug)]
pub enum TestOutcome {
    Success {
        output: Option<Json>,
    },
    /// `when:` rendered false.
    Skipped,
    Failed {
        message: String,
    },
}

/// Runs the task once, and records it as a run when asked. `Err` is bad input (unknown task,
/// bad params, a missing `--map-index`) or a store failure; the task's own failure is
/// [`TestOutcome::Failed`].
pub async fn test_task(dag: &Dag, req: TaskTest, mut env: TestEnv) -> Result<Tested, EngineError> {
    let task = dag.task(&req.task_id).ok_or_else(|| {
        let ids: Vec<&str> = dag.tasks.iter().map(|t| t.id.as_str()).collect();
        EngineError::Input(format!(
            "DAG '{}' has no task '{}' (tasks: {})",
            dag.id,
            req.task_id,
            ids.join(", ")
        ))
    })?;
    let op = env
        .registry
        .get(&task.operator)
        .cloned()
        .ok_or_else(|| EngineError::Input(format!("unknown operator '{}'", task.operator)))?;
    if env.record.is_some() && task.for_each.is_some() {
        return Err(EngineError::Input(format!(
            "task '{}' is mapped: --record records unmapped tasks only (`flow run` records a \
             whole run)",
            task.id
        )));
    }
    let new = manual_run(dag, &req.params, req.logical_date)?;
    let run = test_run(dag, &new, env.record.is_some());
    if env.record.is_some() {
        env.log_path = log_path(&env.home, &dag.id, &run.run_id, &task.id, UNMAPPED, 1);
    }
    let started_at = now();
    let outcome = run_once(dag, task, &run, req, op, &env).await?;
    let run_id = match &env.record {
        Some(store) => {
            let rec = test_record(new, task, &outcome, started_at);
            if !store.record_task_test(&rec).await? {
                return Err(EngineError::Input(format!(
                    "run '{}' exists already",
                    rec.run.run_id
                )));
            }
            Some(rec.run.run_id)
        }
        None => None,
    };
    Ok(Tested {
        outcome,
        run_id,
        log_path: env.log_path,
    })
}

/// The run the task sees: the manual run a trigger would make, under its own id when it is
/// recorded, else under one that says it is a test.
fn test_run(dag: &Dag, new: &NewRun, recorded: bool) -> RunRow {
    RunRow {
        run_id: if recorded {
            new.run_id.clone()
        } else {
            format!("tasks_test__{}", rfc3339(now()))
        },
        dag_id: dag.id.clone(),
        dag_version: dag.version.clone(),
        run_type: new.run_type,
        state: crate::state::RunState::Running,
        logical_date: new.logical_date,
        data_interval_start: new.data_interval_start,
        data_interval_end: new.data_interval_end,
        params: new.params.clone(),
        queued_at: new.queued_at,
        started_at: Some(new.queued_at),
        ended_at: None,
    }
}

fn test_record(
    run: NewRun,
    task: &Task,
    outcome: &TestOutcome,
    started_at: DateTime<Utc>,
) -> TestRecord {
    let (state, output, error) = match outcome {
        TestOutcome::Success { output } => (TaskState::Success, output.clone(), None),
        TestOutcome::Skipped => (TaskState::Skipped, None, None),
        TestOutcome::Failed { message } => (TaskState::Failed, None, Some(message.clone())),
    };
    TestRecord {
        run,
        task_id: task.id.clone(),
        state,
        output,
        error,
        started_at,
        ended_at: now(),
        hostname: crate::telemetry::host().to_string(),
    }
}

/// Renders the task's `when`, item and keys, and runs it.
async fn run_once(
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    req: TaskTest,
    op: Arc<dyn crate::operator::Operator>,
    env: &TestEnv,
) -> Result<TestOutcome, EngineError> {
    let reads = task.output_reads.among(&dag.ancestors(&task.id));
    let snap = outputs_snapshot(run, req.outputs);
    let context = snap.context(reads.iter().copied());
    let part = |item: Option<&Json>, map_index: Option<i64>| {
        context.to_value(
            &TaskPart {
                task_id: &task.id,
                try_number: 1,
                item,
                map_index,
            },
            &env.secrets,
        )
    };
    if let Some(when) = &task.when {
        let rendered = template::render(when, &part(None, None)).map_err(|e| {
            EngineError::Input(format!("'when' of task '{}' did not render: {e}", task.id))
        })?;
        if rendered.trim().eq_ignore_ascii_case("false") {
            return Ok(TestOutcome::Skipped);
        }
    }
    let item = mapped_item(task, req.map_index, &part(None, None))?;
    let ctx = part(item.as_ref(), req.map_index.filter(|_| item.is_some()));
    let config = match template::render_task_config(&task.config, &ctx, op.keys().shell) {
        Ok(c) => c,
        Err(e) => {
            return Ok(TestOutcome::Failed {
                message: format!("template error: {e}"),
            });
        }
    };
    let map_index = item.is_some().then_some(req.map_index).flatten();
    Ok(execute(dag, task, run, config, op, map_index, env).await)
}

/// The item a mapped task runs for: `--map-index` must pick one.
fn mapped_item(
    task: &Task,
    map_index: Option<i64>,
    ctx: &minijinja::Value,
) -> Result<Option<Json>, EngineError> {
    let Some(for_each) = &task.for_each else {
        return match map_index {
            Some(_) => Err(EngineError::Input(format!(
                "task '{}' has no for_each: it takes no --map-index",
                task.id
            ))),
            None => Ok(None),
        };
    };
    let items = match for_each {
        ForEach::Items(items) => items.clone(),
        ForEach::Template(src) => rendered_items(src, ctx).map_err(EngineError::Input)?,
    };
    let Some(index) = map_index else {
        return Err(EngineError::Input(format!(
            "task '{}' is mapped over {} item(s): pick one with --map-index 0..{}",
            task.id,
            items.len(),
            items.len().saturating_sub(1)
        )));
    };
    usize::try_from(index)
        .ok()
        .and_then(|i| items.get(i).cloned())
        .map(Some)
        .ok_or_else(|| {
            EngineError::Input(format!(
                "--map-index {index} is out of range: task '{}' has {} item(s)",
                task.id,
                items.len()
            ))
        })
}

async fn execute(
    dag: &Dag,
    task: &Task,
    run: &RunRow,
    config: Json,
    op: Arc<dyn crate::operator::Operator>,
    map_index: Option<i64>,
    env: &TestEnv,
) -> TestOutcome {
    let failed = |message: String| TestOutcome::Failed { message };
    let masker = env.secrets.masker();
    let header = log_header(&task.id, 1, &run.run_id, now(), "-");
    let log = match LogSink::create(&env.log_path, &header, masker.clone()).await {
        Ok(log) => log,
        Err(e) => {
            return failed(format!(
                "cannot write the log to {}: {e}",
                env.log_path.display()
            ));
        }
    };
    let tmp = env.home.join("tmp");
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        return failed(format!("cannot create {}: {e}", tmp.display()));
    }
    let output_path = tmp.join(format!(
        "output-test-{}-{}.json",
        std::process::id(),
        rand::random::<u64>()
    ));
    let ctx = TaskContext {
        dag_id: dag.id.clone(),
        run_id: run.run_id.clone(),
        task_id: task.id.clone(),
        map_index: map_index.filter(|i| *i != UNMAPPED),
        try_number: 1,
        first_started_at: now(),
        timeout: task.timeout,
        logical_date: rfc3339(run.logical_date),
        data_interval_start: run.data_interval_start,
        data_interval_end: run.data_interval_end,
        dag_version: run.dag_version.clone(),
        scheduled: dag.scheduled(),
        models: env.models.clone(),
        // A test is not a look: it neither reads nor extends the experiment's record.
        experiments: None,
        dag_folder: dag.folder(),
        output_path: output_path.clone(),
        log: log.clone(),
        secrets: env.secrets.clone(),
        named_secrets: task.secret_reads.iter().cloned().collect(),
        masker: masker.clone(),
        on_spawn: None,
        external: None,
        on_external: None,
        shutdown: env.shutdown.clone(),
        traceparent: None,
        // A test records no run, so it starts none either.
        runs: None,
    };
    let result = call(op.as_ref(), &config, &ctx, task.timeout).await;
    drop(ctx);
    let file_output = read_output(&output_path).await;
    let outcome = match (result, file_output) {
        (Err(OperatorError::Retryable(m) | OperatorError::Fatal(m)), _) => failed(m),
        (Err(OperatorError::Reschedule(at)), _) => failed(format!(
            "the operator asked to be rescheduled at {}; a test runs once",
            rfc3339(at)
        )),
        (Ok(_), Err(m)) => failed(m),
        (Ok(out), Ok(file)) => TestOutcome::Success {
            output: out.or(file).map(|o| mask_json(&masker, o)),
        },
    };
    match &outcome {
        TestOutcome::Failed { message } => log.line(&format!("flow: test failed: {message}")).await,
        _ => log.line("flow: test succeeded").await,
    }
    outcome
}

/// Outputs are printed: a secret in one is masked as in the database.
fn mask_json(masker: &crate::secrets::Masker, v: Json) -> Json {
    let text = masker.mask(&v.to_string());
    serde_json::from_str(&text).unwrap_or(Json::String(text))
}

/// Upstream outputs given as `TASK=JSON` (a value that is not JSON is taken as a string).
pub fn given_outputs(pairs: &[String]) -> Result<Vec<TaskOutput>, EngineError> {
    let mut by_task = BTreeMap::new();
    for pair in pairs {
        let Some((task, value)) = pair.split_once('=') else {
            return Err(EngineError::Input(format!(
                "--output '{pair}' is not TASK=JSON"
            )));
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Json::String(value.to_string()));
        by_task.insert(task.to_string(), value);
    }
    Ok(by_task
        .into_iter()
        .map(|(task_id, output)| TaskOutput {
            task_id,
            map_index: UNMAPPED,
            output: Some(output),
        })
        .collect())
}
