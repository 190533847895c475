//! `/api/v1/dags/{dag_id}/backfills` and `/api/v1/backfills`: backfills as objects (issue 23),
//! the same as `flow backfill` (see [`flow_engine::scheduler::backfills`]).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flow_engine::scheduler::backfills::{BackfillRequest, create_backfill};
use flow_engine::store::Rerun;
use flow_engine::time::{now, rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Operator, Viewer};
use super::dags::{active_dag, parsed};
use super::error::{ApiError, Body, ErrorBody, Path, Query};
use crate::backfill::{backfill_json, day_bound};
use crate::ops::OpError;
use crate::state::AppState;

/// A new backfill.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackfillBody {
    /// First day (YYYY-MM-DD in the DAG's timezone) or an RFC 3339 time.
    pub from: String,
    /// Last day, inclusive, or an RFC 3339 time.
    pub to: String,
    /// Every run's params; the others take their defaults.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Map<String, Json>>,
    /// `none` (default), `failed` or `all`: what to do with an interval that has a run.
    pub rerun: Option<String>,
    /// Newest interval first.
    pub reverse: Option<bool>,
    /// Most of its runs queued or running at once (default 100, or the DAG's when larger).
    pub max_active_runs: Option<u32>,
    /// Answer the intervals; create nothing.
    pub dry_run: Option<bool>,
}

/// How a backfill's runs stand.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillRunsView {
    pub queued: i64,
    pub running: i64,
    pub success: i64,
    pub failed: i64,
}

/// A backfill and its progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillView {
    pub id: String,
    pub dag_id: String,
    pub from: String,
    pub to: String,
    #[schema(value_type = Object)]
    pub params: Json,
    pub rerun: String,
    pub reverse: bool,
    pub max_active_runs: u32,
    /// `running`, `done` or `cancelled`.
    pub state: String,
    /// Runs it created, and intervals that had a run already.
    pub created: i64,
    pub existing: i64,
    pub runs: BackfillRunsView,
    pub created_at: String,
    pub ended_at: Option<String>,
}

/// A dry run's answer: the intervals a backfill would cover.
#[derive(Debug, Serialize, ToSchema)]
pub struct BackfillIntervalsView {
    pub dag_id: String,
    /// `[start, end]` of each interval, oldest first.
    pub intervals: Vec<[String; 2]>,
}

#[utoipa::path(
    post,
    path = "/api/v1/dags/{dag_id}/backfills",
    tag = "backfills",
    security(("bearer" = [])),
    params(("dag_id" = String, Path, description = "the DAG id")),
    request_body = NewBackfillBody,
    responses(
        (status = 201, description = "the backfill, with its first window of runs created", body = BackfillView),
        (status = 200, description = "a dry run: the intervals it would cover", body = BackfillIntervalsView),
        (status = 400, description = "bad dates, params or rerun, or a DAG without a schedule", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "unknown DAG", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path(dag_id): Path<String>,
    Body(body): Body<NewBackfillBody>,
) -> Result<Response, ApiError> {
    let row = active_dag(&state, &dag_id).await?;
    let dag = parsed(&state, &row).await?;
    let bad = |e: anyhow::Error| ApiError::bad_request(format!("{e:#}"));
    let rerun = body.rerun.as_deref().unwrap_or("none");
    let req = BackfillRequest {
        from: day_bound(&body.from, &dag, false, "from").map_err(bad)?,
        to: day_bound(&body.to, &dag, true, "to").map_err(bad)?,
        params: body.params.unwrap_or_default(),
        rerun: Rerun::parse(rerun).ok_or_else(|| {
            ApiError::bad_request(format!("rerun '{rerun}': expected none, failed or all"))
        })?,
        reverse: body.reverse.unwrap_or(false),
        max_active_runs: body.max_active_runs,
        dry_run: body.dry_run.unwrap_or(false),
    };
    if req.to < req.from {
        return Err(ApiError::bad_request("to is before from"));
    }
    let made = create_backfill(state.store.as_ref(), &dag, &req)
        .await
        .map_err(OpError::from)?;
    let Some(b) = made.backfill.filter(|_| !req.dry_run) else {
        let intervals: Vec<[String; 2]> = made
            .intervals
            .iter()
            .map(|iv| [rfc3339(iv.start), rfc3339(iv.end)])
            .collect();
        let answer = serde_json::json!({"dag_id": dag_id, "intervals": intervals});
        return Ok((StatusCode::OK, axum::Json(answer)).into_response());
    };
    tracing::info!(
        "backfill {} of {dag_id} made by token '{}'",
        b.id,
        caller.name
    );
    let progress = state.store.backfill_progress(&b.id).await?;
    let b = state.store.get_backfill(&b.id).await?.unwrap_or(b);
    Ok((
        StatusCode::CREATED,
        axum::Json(backfill_json(&b, &progress)),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BackfillsQuery {
    /// Only this DAG's backfills.
    pub dag_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/backfills",
    tag = "backfills",
    security(("bearer" = [])),
    params(BackfillsQuery),
    responses((status = 200, description = "the backfills, newest first", body = Vec<BackfillView>))
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Query(q): Query<BackfillsQuery>,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let mut out = Vec::new();
    for b in state.store.list_backfills(q.dag_id.as_deref()).await? {
        let p = state.store.backfill_progress(&b.id).await?;
        out.push(backfill_json(&b, &p));
    }
    Ok(axum::Json(out))
}

async fn one(state: &AppState, id: &str) -> Result<Json, ApiError> {
    let b = state.store.get_backfill(id).await?.ok_or_else(|| {
        ApiError::not_found(format!(
            "no backfill '{id}': GET /api/v1/backfills lists them"
        ))
    })?;
    let p = state.store.backfill_progress(id).await?;
    Ok(backfill_json(&b, &p))
}

#[utoipa::path(
    get,
    path = "/api/v1/backfills/{backfill_id}",
    tag = "backfills",
    security(("bearer" = [])),
    params(("backfill_id" = String, Path, description = "the backfill's id")),
    responses(
        (status = 200, description = "the backfill and its progress", body = BackfillView),
        (status = 404, description = "no such backfill", body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path(id): Path<String>,
) -> Result<axum::Json<Json>, ApiError> {
    Ok(axum::Json(one(&state, &id).await?))
}

#[utoipa::path(
    delete,
    path = "/api/v1/backfills/{backfill_id}",
    tag = "backfills",
    security(("bearer" = [])),
    params(("backfill_id" = String, Path, description = "the backfill's id")),
    responses(
        (status = 200, description = "cancelled: no more runs; its runs that never started failed", body = BackfillView),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "no such backfill", body = ErrorBody),
    )
)]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<axum::Json<Json>, ApiError> {
    if state.store.cancel_backfill(&id, now()).await?.is_none() {
        return Err(ApiError::not_found(format!("no backfill '{id}'")));
    }
    tracing::info!("backfill {id} cancelled by token '{}'", caller.name);
    Ok(axum::Json(one(&state, &id).await?))
}
