//! `GET /api/v1/dags/{dag_id}/grid`: what the DAG page's grid shows, for scripts and other UIs.
//! A page of runs (keyset pagination, as `/api/v1/runs`) with every task's instances counted per
//! state, in two queries whatever the length of the history or the size of the maps.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use flow_engine::store::{RunFilter, TiCount};
use flow_engine::time::rfc3339;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Viewer;
use super::error::{ApiError, ErrorBody, Path, Query};
use crate::state::AppState;

const DEFAULT_LIMIT: i64 = 25;
const MAX_LIMIT: i64 = 100;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GridQuery {
    /// Runs per page (1 to 100; default 25).
    pub limit: Option<i64>,
    /// The next page: the `run_id` of the last run of the previous page (`next_before`).
    pub before: Option<String>,
}

/// One task's instances in one run.
#[derive(Debug, Serialize, ToSchema)]
pub struct GridCell {
    /// The state that needs attention first among the instances (failed before running before
    /// success, as the page colours the cell).
    pub state: String,
    /// How many instances (1 unless the task is mapped).
    pub count: i64,
    /// Instances per state.
    pub states: BTreeMap<String, i64>,
    /// The highest try number among the instances.
    pub try_number: i64,
    pub mapped: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GridRun {
    pub run_id: String,
    pub state: String,
    pub run_type: String,
    pub logical_date: String,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// By task id; a task with no instance in the run (added to the DAG later) is absent.
    pub tasks: BTreeMap<String, GridCell>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Grid {
    pub dag_id: String,
    /// The task ids of the DAG's current version, in its order.
    pub tasks: Vec<String>,
    /// Newest first.
    pub runs: Vec<GridRun>,
    /// Give this as `before` for the next page; null on the last page.
    pub next_before: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/dags/{dag_id}/grid",
    tag = "dags",
    security(("bearer" = [])),
    params(("dag_id" = String, Path, description = "the DAG id"), GridQuery),
    responses(
        (status = 200, description = "a page of runs, newest first, with their task instances counted per state", body = Grid),
        (status = 400, description = "a bad limit, or a cursor that is not a run of this DAG", body = ErrorBody),
        (status = 404, description = "unknown DAG", body = ErrorBody),
    )
)]
pub async fn grid(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path(dag_id): Path<String>,
    Query(q): Query<GridQuery>,
) -> Result<axum::Json<Grid>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {limit}"
        )));
    }
    let row = super::dags::active_dag(&state, &dag_id).await?;
    let cursor = crate::ops::dag_cursor(state.store.as_ref(), &dag_id, q.before.as_deref()).await?;
    let mut runs = state
        .store
        .list_runs(&RunFilter {
            dag_id: Some(dag_id.clone()),
            state: None,
            limit: limit + 1,
            before: cursor.as_ref().map(|r| r.queued_at),
            before_run_id: cursor.map(|r| r.run_id),
        })
        .await?;
    let more = runs.len() as i64 > limit;
    runs.truncate(limit as usize);
    let ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let mut by_run: BTreeMap<String, BTreeMap<String, Vec<TiCount>>> = BTreeMap::new();
    for c in state.store.grid_counts(&ids).await? {
        by_run
            .entry(c.run_id.clone())
            .or_default()
            .entry(c.task_id.clone())
            .or_default()
            .push(c);
    }
    let tasks = match state.dag_of(&row).await? {
        Some(dag) => dag.tasks.iter().map(|t| t.id.clone()).collect(),
        None => Vec::new(),
    };
    let next_before = more
        .then(|| runs.last().map(|r| r.run_id.clone()))
        .flatten();
    let runs = runs
        .into_iter()
        .map(|r| {
            let cells = by_run.remove(&r.run_id).unwrap_or_default();
            GridRun {
                tasks: cells
                    .into_iter()
                    .map(|(task_id, groups)| (task_id, cell(&groups)))
                    .collect(),
                run_id: r.run_id,
                state: r.state.as_str().to_string(),
                run_type: r.run_type.as_str().to_string(),
                logical_date: rfc3339(r.logical_date),
                queued_at: rfc3339(r.queued_at),
                started_at: r.started_at.map(rfc3339),
                ended_at: r.ended_at.map(rfc3339),
            }
        })
        .collect();
    Ok(axum::Json(Grid {
        dag_id,
        tasks,
        runs,
        next_before,
    }))
}

fn cell(groups: &[TiCount]) -> GridCell {
    let state = crate::render::dominant(groups.iter().map(|g| g.state))
        .map(|s| s.as_str().to_string())
        .unwrap_or_default();
    GridCell {
        state,
        count: groups.iter().map(|g| g.count).sum(),
        states: groups
            .iter()
            .map(|g| (g.state.as_str().to_string(), g.count))
            .collect(),
        try_number: groups.iter().map(|g| g.max_try_number).max().unwrap_or(0),
        mapped: groups
            .iter()
            .any(|g| g.max_map_index != flow_engine::plan::UNMAPPED),
    }
}
