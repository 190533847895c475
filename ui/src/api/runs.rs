//! `/api/v1/runs`: list, detail, task logs, clear, mark.

use std::sync::Arc;

use axum::extract::State;
use flow_engine::state::{RunState, TaskState};
use flow_engine::store::RunFilter;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Operator, Viewer};
use super::error::{ApiError, Body, ErrorBody, Path, Query};
use crate::ops::{self, LogChunk};
use crate::render::{RunView, run_json, run_json_seen};
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;
/// The most log bytes one answer carries; a longer log is read in several calls.
const LOG_CHUNK: u64 = 1 << 20;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only this DAG's runs.
    pub dag_id: Option<String>,
    /// Only runs in this state (`queued`, `running`, `success`, `failed`).
    pub state: Option<String>,
    /// At most this many runs (1 to 1000; default 100).
    pub limit: Option<i64>,
    /// The next page: the `run_id` of the last run of the previous page. Keyset pagination, so
    /// runs created meanwhile neither repeat nor hide runs.
    pub before: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/runs",
    tag = "runs",
    security(("bearer" = [])),
    params(RunsQuery),
    responses(
        (status = 200, description = "runs, newest first (queued time, then run id), without their tasks", body = Vec<RunView>),
        (status = 400, description = "a bad state, limit or cursor", body = ErrorBody),
    )
)]
pub async fn list_runs(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Query(q): Query<RunsQuery>,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let run_state = q
        .state
        .as_deref()
        .map(|s| s.parse::<RunState>().map_err(ApiError::bad_request))
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {limit}"
        )));
    }
    let cursor = match &q.before {
        Some(id) => Some(state.store.get_run(id).await?.ok_or_else(|| {
            ApiError::bad_request(format!(
                "before: unknown run '{id}' (give the run_id of the last run of the previous page)"
            ))
        })?),
        None => None,
    };
    let runs = state
        .store
        .list_runs(&RunFilter {
            dag_id: q.dag_id,
            state: run_state,
            limit,
            before: cursor.as_ref().map(|r| r.queued_at),
            before_run_id: cursor.map(|r| r.run_id),
        })
        .await?;
    Ok(axum::Json(
        runs.iter()
            .map(|r| run_json(r, None, &state.masker))
            .collect(),
    ))
}

/// The longest `?wait=` of a run's detail: under the 60 s idle timeout of common balancers.
const MAX_WAIT_SECS: u64 = 55;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunQuery {
    /// Hold the answer until the run has ended or this many seconds have passed (0 to 55;
    /// default 0), then answer the run as it is: a client waits for a run's end without
    /// polling. The end reaches the server as a wake-up from the scheduler that ended it.
    pub wait: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/runs/{run_id}",
    tag = "runs",
    security(("bearer" = [])),
    params(("run_id" = String, Path, description = "the run id"), RunQuery),
    responses(
        (status = 200, description = "the run and each task instance, as `flow runs show --json`", body = RunView),
        (status = 400, description = "a wait past 55 seconds", body = ErrorBody),
        (status = 404, description = "unknown run", body = ErrorBody),
    )
)]
pub async fn get_run(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path(run_id): Path<String>,
    Query(q): Query<RunQuery>,
) -> Result<axum::Json<Json>, ApiError> {
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(ApiError::bad_request(format!(
            "wait must be at most {MAX_WAIT_SECS} seconds, not {wait}"
        )));
    }
    let mut run = ops::get_run(state.store.as_ref(), &run_id).await?;
    if wait > 0 && !run.state.is_terminal() {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait);
        // Listening before reading again: an end between the read and the wait is heard.
        let mut wakeups = state.store.wakeups().await;
        let ids = [run_id.clone()];
        loop {
            run = ops::get_run(state.store.as_ref(), &run_id).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if run.state.is_terminal() || left.is_zero() {
                break;
            }
            wakeups
                .run_ended(&ids, left.min(std::time::Duration::from_secs(1)))
                .await;
        }
    }
    let tis = state.store.task_instances(&run_id).await?;
    let seen = state
        .store
        .dag_source(&run.dag_id, &run.dag_version)
        .await?;
    Ok(axum::Json(run_json_seen(
        &run,
        Some(&tis),
        &state.masker,
        seen.map(|s| s.seen_at),
    )))
}

#[utoipa::path(
    get,
    path = "/api/v1/runs/{run_id}/tasks/{task_id}/logs",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("run_id" = String, Path, description = "the run id"),
        ("task_id" = String, Path, description = "the task id"),
        ops::LogAt,
    ),
    responses(
        (status = 200, description = "the log from `offset` (secrets masked); while the try runs, whole lines only", body = LogChunk),
        (status = 400, description = "a bad query, or an offset past the end", body = ErrorBody),
        (status = 404, description = "unknown run, task, map index or try", body = ErrorBody),
    )
)]
pub async fn task_logs(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path((run_id, task_id)): Path<(String, String)>,
    Query(at): Query<ops::LogAt>,
) -> Result<axum::Json<LogChunk>, ApiError> {
    let chunk = state
        .log_chunk(&at.of(&run_id, &task_id), LOG_CHUNK)
        .await?;
    Ok(axum::Json(chunk))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearBody {
    /// Also every task downstream of this one.
    #[serde(default)]
    pub downstream: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClearAnswer {
    pub run_id: String,
    /// Always `queued`: the scheduler runs the cleared tasks again.
    pub state: String,
    /// The task ids reset.
    pub cleared: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/runs/{run_id}/tasks/{task_id}/clear",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("run_id" = String, Path, description = "the run id"),
        ("task_id" = String, Path, description = "the task id"),
    ),
    request_body = ClearBody,
    responses(
        (status = 200, description = "the task instances are reset and the run is queued again, in one transaction", body = ClearAnswer),
        (status = 400, description = "a bad body", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "unknown run or task", body = ErrorBody),
    )
)]
pub async fn clear(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path((run_id, task_id)): Path<(String, String)>,
    Body(body): Body<ClearBody>,
) -> Result<axum::Json<ClearAnswer>, ApiError> {
    let cleared = { ops::clear(&state.dags, &run_id, &task_id, body.downstream).await? };
    tracing::info!(
        "cleared {} in run {run_id} by token '{}'",
        cleared.join(", "),
        caller.name
    );
    Ok(axum::Json(ClearAnswer {
        run_id,
        state: RunState::Queued.as_str().to_string(),
        cleared,
    }))
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MarkState {
    Success,
    Failed,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MarkBody {
    pub state: MarkState,
    /// One instance of a mapped task; default: every instance of the task.
    pub map_index: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MarkAnswer {
    pub run_id: String,
    pub task_id: String,
    pub state: String,
    /// How many instances changed state (0 when they were already in it).
    pub changed: u64,
}

#[utoipa::path(
    post,
    path = "/api/v1/runs/{run_id}/tasks/{task_id}/mark",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("run_id" = String, Path, description = "the run id"),
        ("task_id" = String, Path, description = "the task id"),
    ),
    request_body = MarkBody,
    responses(
        (status = 200, description = "the instances are marked; a finished run is queued again so the scheduler evaluates it", body = MarkAnswer),
        (status = 400, description = "a bad body (state must be success or failed)", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "unknown run, task or map index", body = ErrorBody),
    )
)]
pub async fn mark(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path((run_id, task_id)): Path<(String, String)>,
    Body(body): Body<MarkBody>,
) -> Result<axum::Json<MarkAnswer>, ApiError> {
    let task_state = match body.state {
        MarkState::Success => TaskState::Success,
        MarkState::Failed => TaskState::Failed,
    };
    let note = format!(
        "marked {task_state} through the API by token '{}'",
        caller.name
    );
    let changed = {
        ops::mark(
            &state.dags,
            &run_id,
            &task_id,
            body.map_index,
            task_state,
            note,
        )
        .await?
    };
    tracing::info!(
        "{changed} instance(s) of {task_id} in run {run_id} marked {task_state} by token '{}'",
        caller.name
    );
    Ok(axum::Json(MarkAnswer {
        run_id,
        task_id,
        state: task_state.as_str().to_string(),
        changed,
    }))
}
