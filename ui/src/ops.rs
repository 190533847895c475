//! What a command and an API endpoint both do: finding a try's log and reading it from an
//! offset, clearing and marking tasks. Each returns an [`OpError`] that says who must act, so the
//! command line maps it to exit code 2 and the API to 400 or 404, from one place each.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use flow_engine::dag::Dag;
use flow_engine::log::{self, LogArchive};
use flow_engine::plan::UNMAPPED;
use flow_engine::scheduler::{self, DagCatalog, EngineError};
use flow_engine::secrets::Masker;
use flow_engine::state::TaskState;
use flow_engine::store::{DagRow, Mark, RunRow, Store, StoreError, TiRow, TryRow};
use flow_engine::telemetry::RunTrace;
use flow_engine::time::now;

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The run, task, DAG or try named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong (a bad value, an offset past the end).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Not the caller's fault: a stored DAG version that no longer parses, an unreadable log.
    #[error("{0}")]
    Internal(String),
    /// A log that could not be read, here or from `[logs] remote`.
    #[error(transparent)]
    Log(log::ReadError),
    /// Too much is waiting already: a trigger past the DAG's cap on queued runs.
    #[error("{0}")]
    Busy(String),
    /// The engine failed for a reason that is not the caller's (the DAGs folder, a panic).
    #[error(transparent)]
    Engine(EngineError),
}

/// Refuses a trigger when `dag_id` has `cap` queued runs already (flow.toml's
/// `max_queued_runs_per_dag`): a client in a loop cannot pile up work without end. A cap, not an
/// exact count: triggers in flight at the same instant may pass it by their number.
pub async fn queue_room(store: &dyn Store, dag_id: &str, cap: u32) -> Result<(), OpError> {
    let queued = store.queued_runs(dag_id, i64::from(cap)).await?;
    if queued >= i64::from(cap) {
        return Err(OpError::Busy(format!(
            "DAG '{dag_id}' has {queued} queued runs, the most max_queued_runs_per_dag allows; \
             wait for them to start, or raise the limit in flow.toml"
        )));
    }
    Ok(())
}

impl From<EngineError> for OpError {
    fn from(e: EngineError) -> OpError {
        match e {
            e if e.is_input() => OpError::Invalid(e.to_string()),
            EngineError::Store(s) => OpError::Store(s),
            other => OpError::Engine(other),
        }
    }
}

/// When the DAG's next scheduled run is due: from its parsed schedule when there is one to ask,
/// else what the scheduler last recorded.
pub async fn next_run_at(
    store: &dyn Store,
    row: &DagRow,
    dag: Option<&Dag>,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, OpError> {
    Ok(match dag {
        Some(dag) => scheduler::next_run_at(store, dag, at).await?,
        None => row.next_run_at,
    })
}

/// The run a keyset page of `dag_id`'s runs starts after (`?before=RUN_ID`), checked to be one of
/// that DAG's runs.
pub async fn dag_cursor(
    store: &dyn Store,
    dag_id: &str,
    before: Option<&str>,
) -> Result<Option<RunRow>, OpError> {
    let Some(id) = before else { return Ok(None) };
    match store.get_run(id).await? {
        Some(r) if r.dag_id == dag_id => Ok(Some(r)),
        _ => Err(OpError::Invalid(format!(
            "before: '{id}' is not a run of DAG '{dag_id}' (give the run id the previous page \
             ends with)"
        ))),
    }
}

pub async fn get_run(store: &dyn Store, run_id: &str) -> Result<RunRow, OpError> {
    store
        .get_run(run_id)
        .await?
        .ok_or_else(|| OpError::NotFound(format!("unknown run '{run_id}'")))
}

/// The DAG version a run started on.
async fn run_dag(catalog: &DagCatalog, run: &RunRow) -> Result<std::sync::Arc<Dag>, OpError> {
    catalog
        .version(&run.dag_id, &run.dag_version)
        .await?
        .ok_or_else(|| {
            OpError::Internal(format!(
                "version {} of DAG {} (of run {}) is not stored or no longer parses",
                run.dag_version, run.dag_id, run.run_id
            ))
        })
}

/// One try's log file, and what is known of that try.
pub struct LogTarget {
    pub ti: TiRow,
    /// 0 when the task has not had a try yet (and none was asked for).
    pub try_number: i64,
    pub path: PathBuf,
    /// Its name under `[logs] remote`, read when this host has no file of it.
    pub key: String,
    pub remote: Option<Arc<dyn LogArchive>>,
    /// The run's trace id, which the log's header names.
    pub trace_id: String,
}

/// Where logs are read: this host's `$FLOW_HOME/logs`, then `[logs] remote` when set.
#[derive(Clone, Copy)]
pub struct LogRoots<'a> {
    pub home: &'a Path,
    pub remote: Option<&'a Arc<dyn LogArchive>>,
}

/// Finds the log of a try: the latest unless `try_number` is given, of the unmapped instance
/// unless `map_index` is given.
pub async fn log_target(
    store: &dyn Store,
    roots: LogRoots<'_>,
    run_id: &str,
    task: &str,
    try_number: Option<i64>,
    map_index: Option<i64>,
) -> Result<LogTarget, OpError> {
    let run = get_run(store, run_id).await?;
    let map_index = map_index.unwrap_or(UNMAPPED);
    let tis = store.task_instances(run_id).await?;
    let Some(ti) = tis
        .iter()
        .find(|t| t.task_id == task && t.map_index == map_index)
    else {
        let mapped = tis.iter().any(|t| t.task_id == task);
        return Err(OpError::NotFound(if mapped {
            format!(
                "task '{task}' of run {run_id} has no map index {map_index}; give its map index"
            )
        } else {
            format!("run {run_id} has no task '{task}'")
        }));
    };
    let n = try_number.unwrap_or(ti.try_number);
    if try_number.is_some() && (n < 1 || n > ti.try_number) {
        return Err(OpError::NotFound(format!(
            "task '{task}' has {} tr{} so far; the try must be between 1 and that",
            ti.try_number,
            if ti.try_number == 1 { "y" } else { "ies" }
        )));
    }
    let key = log::log_key(&run.dag_id, run_id, task, map_index, n);
    Ok(LogTarget {
        path: roots.home.join("logs").join(&key),
        key,
        remote: roots.remote.cloned(),
        ti: ti.clone(),
        try_number: n,
        trace_id: RunTrace::of_run(&run).trace_id.to_string(),
    })
}

/// A piece of a log: `content` (masked) from the asked offset to `next_offset` (bytes of the raw
/// file); `complete` once the try has ended and nothing is left to read.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LogChunk {
    pub content: String,
    pub next_offset: u64,
    pub complete: bool,
}

/// The log of (run, task) at (try, map index, offset), as the API's logs endpoint and the task
/// page's tail answer it: up to `limit` bytes.
pub async fn log_chunk(
    store: &dyn Store,
    roots: LogRoots<'_>,
    masker: &Masker,
    q: &LogQuery<'_>,
    limit: u64,
) -> Result<LogChunk, OpError> {
    let target = log_target(store, roots, q.run_id, q.task_id, q.try_number, q.map_index).await?;
    read_log(store, &target, masker, q.offset, limit).await
}

/// Which try's log, and from where: the query of the API's logs endpoint and of the task
/// page's tail alike.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogAt {
    /// The try (1-based); default: the latest.
    #[serde(rename = "try")]
    #[param(rename = "try")]
    pub try_number: Option<i64>,
    /// The map index of a mapped task's instance; default: the unmapped instance.
    pub map_index: Option<i64>,
    /// Where to start, in bytes of the log (the `next_offset` of the previous read); default 0.
    pub offset: Option<u64>,
}

impl LogAt {
    /// This query for the task `task_id` of run `run_id` (the path's ids).
    pub fn of<'a>(&self, run_id: &'a str, task_id: &'a str) -> LogQuery<'a> {
        LogQuery {
            run_id,
            task_id,
            try_number: self.try_number,
            map_index: self.map_index,
            offset: self.offset.unwrap_or(0),
        }
    }
}

/// Which log, and from where: [`LogAt`] with the path's ids.
pub struct LogQuery<'a> {
    pub run_id: &'a str,
    pub task_id: &'a str,
    /// The latest try when None.
    pub try_number: Option<i64>,
    pub map_index: Option<i64>,
    pub offset: u64,
}

/// Reads up to `limit` bytes of a try's log from `offset`.
///
/// While the try runs, only whole lines are returned, so that a secret is never split across two
/// chunks (each chunk is masked on its own) and a line is never cut in the middle; the rest comes
/// with the next read.
pub async fn read_log(
    store: &dyn Store,
    target: &LogTarget,
    masker: &Masker,
    offset: u64,
    limit: u64,
) -> Result<LogChunk, OpError> {
    let ti = &target.ti;
    // Whether the try has ended is read before the file: a try that ends after this point may
    // still add lines, so `complete` is never claimed for content that could still grow.
    let tries = if target.try_number > 0 {
        store
            .tries(&ti.run_id, &ti.task_id, ti.map_index)
            .await?
            .into_iter()
            .find(|t| t.try_number == target.try_number)
    } else {
        None
    };
    let ended = match &tries {
        Some(t) => t.ended_at.is_some(),
        None => target.try_number == 0 && ti.state.is_terminal(),
    };
    let mut read = log::read_chunk(&target.path, offset, limit, ended).await;
    if let (Ok(None), Some(remote)) = (&read, &target.remote) {
        read = log::read_remote(remote.as_ref(), &target.key, offset, limit, ended).await;
    }
    let read = read.map_err(|e| match e {
        log::ReadError::PastEnd { .. } => OpError::Invalid(e.to_string()),
        e => OpError::Log(e),
    })?;
    let Some(chunk) = read else {
        return Ok(told_from_record(
            tries.as_ref(),
            target,
            masker,
            offset,
            ended,
        ));
    };
    Ok(LogChunk {
        content: masker.mask(&String::from_utf8_lossy(&chunk.bytes)),
        next_offset: chunk.next_offset,
        complete: ended && chunk.next_offset >= chunk.len,
    })
}

/// The executor makes the file with the task's first line, headed by the same header as
/// `flow_engine::log::from_record`: until then (and for good, when the try prints nothing and
/// succeeds) the log is told from the try's record, at the same offsets the file will have. A
/// try that failed before its command started (a template error, say) has no file either; its
/// error is its log, as `flow tasks logs` prints it.
fn told_from_record(
    tried: Option<&TryRow>,
    target: &LogTarget,
    masker: &Masker,
    offset: u64,
    ended: bool,
) -> LogChunk {
    let ti = &target.ti;
    let content = match tried {
        Some(t) if t.state == TaskState::Failed && ended => {
            if offset == 0 {
                t.error.clone().unwrap_or_default()
            } else {
                String::new()
            }
        }
        Some(t) => {
            let succeeded = ended && t.state == TaskState::Success;
            let text = log::from_record(
                &ti.task_id,
                t.try_number,
                &ti.run_id,
                t.started_at,
                &target.trace_id,
                succeeded,
            );
            text.get(offset as usize..).unwrap_or_default().to_string()
        }
        None => String::new(),
    };
    LogChunk {
        next_offset: offset + content.len() as u64,
        content: masker.mask(&content),
        complete: ended,
    }
}

/// Resets `task` (and with `downstream` every task after it) and sets the run back to `queued`,
/// in one transaction. Returns the task ids cleared.
pub async fn clear(
    catalog: &DagCatalog,
    run_id: &str,
    task: &str,
    downstream: bool,
) -> Result<Vec<String>, OpError> {
    let run = get_run(catalog.store().as_ref(), run_id).await?;
    let dag = run_dag(catalog, &run).await?;
    if dag.task(task).is_none() {
        return Err(OpError::NotFound(format!(
            "run {run_id} has no task '{task}'"
        )));
    }
    let mut ids: BTreeSet<String> = BTreeSet::from([task.to_string()]);
    if downstream {
        ids.extend(dag.all_downstream(task).into_iter().map(String::from));
    }
    let ids: Vec<String> = ids.into_iter().collect();
    if !catalog.store().clear_tasks(run_id, &ids, now()).await? {
        return Err(OpError::NotFound(format!("unknown run '{run_id}'")));
    }
    Ok(ids)
}

/// Marks a task's instances (one map index, or all) `success` or `failed`; see
/// [`Store::mark_task`] for how a running try is fenced off. Returns how many instances changed.
pub async fn mark(
    catalog: &DagCatalog,
    run_id: &str,
    task: &str,
    map_index: Option<i64>,
    state: TaskState,
    note: String,
) -> Result<u64, OpError> {
    if !matches!(state, TaskState::Success | TaskState::Failed) {
        return Err(OpError::Invalid(format!(
            "a task can be marked success or failed, not {state}"
        )));
    }
    let run = get_run(catalog.store().as_ref(), run_id).await?;
    let dag = run_dag(catalog, &run).await?;
    if dag.task(task).is_none() {
        return Err(OpError::NotFound(format!(
            "run {run_id} has no task '{task}'"
        )));
    }
    if let Some(i) = map_index {
        let exists = catalog
            .store()
            .task_instances(run_id)
            .await?
            .iter()
            .any(|t| t.task_id == task && t.map_index == i);
        if !exists {
            return Err(OpError::NotFound(format!(
                "task '{task}' of run {run_id} has no map index {i}"
            )));
        }
    }
    let changed = catalog
        .store()
        .mark_task(&Mark {
            run_id: run_id.to_string(),
            task_id: task.to_string(),
            map_index,
            state,
            note,
            downstream: dag
                .all_downstream(task)
                .into_iter()
                .map(String::from)
                .collect(),
            now: now(),
        })
        .await?;
    changed.ok_or_else(|| OpError::NotFound(format!("unknown run '{run_id}'")))
}

/// Makes `version` of `model` the production version by hand (a rollback, say), whatever the
/// production version is now; returns the one it replaced. A promotion that races another is
/// tried again against the new production version.
pub async fn promote_by_hand(
    store: &dyn Store,
    model: &str,
    version: i64,
) -> Result<Option<i64>, OpError> {
    use flow_engine::store::{ModelStage, Promotion};
    for _ in 0..5 {
        let current = store
            .model_versions(model)
            .await?
            .into_iter()
            .find(|v| v.stage == ModelStage::Production)
            .map(|v| v.version);
        match store
            .promote_model_version(model, version, current, now())
            .await?
        {
            Promotion::Promoted { previous } => return Ok(previous),
            Promotion::Stale { .. } => continue,
            Promotion::Unknown => {
                return Err(OpError::NotFound(format!(
                    "model '{model}' has no version {version}"
                )));
            }
        }
    }
    Err(OpError::Internal(format!(
        "the production version of {model} kept changing; try again"
    )))
}

/// What [`rollback`] did: production went from one version back to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    pub from: i64,
    pub to: i64,
}

/// Makes the version that was production before the current one production again, as a
/// compare-and-set against the current one: if another promotion changed production meanwhile,
/// nothing changes and the caller looks again (a rollback computed against one production
/// version must not undo another). The version before is the most recently archived one, since
/// only a promotion archives; so a second rollback undoes the first.
pub async fn rollback(store: &dyn Store, model: &str) -> Result<RolledBack, OpError> {
    use flow_engine::store::{ModelStage, Promotion};
    let versions = store.model_versions(model).await?;
    if versions.is_empty() {
        return Err(OpError::NotFound(format!(
            "unknown model '{model}': see `flow models list`"
        )));
    }
    let Some(from) = versions.iter().find(|v| v.stage == ModelStage::Production) else {
        return Err(OpError::Invalid(format!(
            "model '{model}' has no production version to roll back from"
        )));
    };
    let Some(to) = versions
        .iter()
        .filter(|v| v.stage == ModelStage::Archived)
        .max_by_key(|v| (v.stage_changed_at, v.version))
    else {
        return Err(OpError::Invalid(format!(
            "model '{model}' has had no production version before version {}",
            from.version
        )));
    };
    match store
        .promote_model_version(model, to.version, Some(from.version), now())
        .await?
    {
        Promotion::Promoted { .. } => Ok(RolledBack {
            from: from.version,
            to: to.version,
        }),
        Promotion::Stale { current } => Err(OpError::Invalid(format!(
            "the production version of '{model}' changed from {} to {} while rolling back; \
             nothing was changed: look again (`flow models show {model}`)",
            from.version,
            current.map_or("none".to_string(), |v| v.to_string())
        ))),
        Promotion::Unknown => Err(OpError::NotFound(format!(
            "model '{model}' has no version {}",
            to.version
        ))),
    }
}
