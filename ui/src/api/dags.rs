//! `/api/v1/dags`: list, detail, pause, trigger.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use flow_engine::dag::Dag;
use flow_engine::schedule::parse_date;
use flow_engine::scheduler;
use flow_engine::store::{Created, DagRow, IdempotencyKey, RunCreate};
use flow_engine::time::now;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::auth::{Operator, Viewer};
use super::error::{ApiError, Body, ErrorBody, Path};
use crate::ops::{self, OpError};
use crate::render::{DagDetailView, DagView, dag_detail_json, dag_json};
use crate::state::AppState;

/// How long an `Idempotency-Key` is remembered for a DAG.
const IDEMPOTENCY_WINDOW: Duration = Duration::hours(24);
const MAX_KEY_LEN: usize = 255;

pub(super) async fn active_dag(state: &AppState, dag_id: &str) -> Result<DagRow, ApiError> {
    match state.store.get_dag(dag_id).await? {
        Some(row) if row.active => Ok(row),
        _ => Err(ApiError::not_found(format!(
            "unknown DAG '{dag_id}': GET /api/v1/dags lists them (a DAG whose file has problems \
             is not loaded; `flow dags validate` shows why)"
        ))),
    }
}

pub(super) async fn parsed(state: &AppState, row: &DagRow) -> Result<Arc<Dag>, ApiError> {
    state.dag_of(row).await?.ok_or_else(|| {
        ApiError::internal(format!(
            "version {} of DAG {} is recorded but its source is missing or no longer parses",
            row.version, row.dag_id
        ))
    })
}

async fn detail(state: &AppState, row: &DagRow) -> Result<Json, ApiError> {
    let dag = parsed(state, row).await?;
    let next = ops::next_run_at(state.store.as_ref(), row, Some(&dag), now()).await?;
    Ok(dag_detail_json(row, next, &dag, &state.masker))
}

#[utoipa::path(
    get,
    path = "/api/v1/dags",
    tag = "dags",
    security(("bearer" = [])),
    responses((status = 200, description = "the DAGs, by id", body = Vec<DagView>))
)]
pub async fn list_dags(
    State(state): State<Arc<AppState>>,
    _: Viewer,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let at = now();
    let mut items = Vec::new();
    for row in state.store.list_dags().await? {
        let dag = state.dag_of(&row).await?;
        let next = ops::next_run_at(state.store.as_ref(), &row, dag.as_deref(), at).await?;
        items.push(dag_json(&row, next));
    }
    Ok(axum::Json(items))
}

#[utoipa::path(
    get,
    path = "/api/v1/dags/{dag_id}",
    tag = "dags",
    security(("bearer" = [])),
    params(("dag_id" = String, Path, description = "the DAG id")),
    responses(
        (status = 200, description = "the DAG with its tasks and edges", body = DagDetailView),
        (status = 404, description = "unknown DAG", body = ErrorBody),
    )
)]
pub async fn get_dag(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path(dag_id): Path<String>,
) -> Result<axum::Json<Json>, ApiError> {
    let row = active_dag(&state, &dag_id).await?;
    Ok(axum::Json(detail(&state, &row).await?))
}

/// The fields of a DAG that may be changed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DagPatch {
    /// A paused DAG gets no new scheduled runs and its queued runs wait.
    pub paused: Option<bool>,
}

#[utoipa::path(
    patch,
    path = "/api/v1/dags/{dag_id}",
    tag = "dags",
    security(("bearer" = [])),
    params(("dag_id" = String, Path, description = "the DAG id")),
    request_body = DagPatch,
    responses(
        (status = 200, description = "the DAG as it is now", body = DagDetailView),
        (status = 400, description = "a body that is not a DAG patch", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "unknown DAG", body = ErrorBody),
    )
)]
pub async fn patch_dag(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path(dag_id): Path<String>,
    Body(patch): Body<DagPatch>,
) -> Result<axum::Json<Json>, ApiError> {
    active_dag(&state, &dag_id).await?;
    if let Some(paused) = patch.paused {
        if !state.store.set_paused(&dag_id, paused).await? {
            return Err(ApiError::not_found(format!("unknown DAG '{dag_id}'")));
        }
        tracing::info!(
            "DAG {dag_id} {} by token '{}'",
            if paused { "paused" } else { "unpaused" },
            caller.name
        );
    }
    // Read again, so the answer shows what the database now holds.
    let row = active_dag(&state, &dag_id).await?;
    Ok(axum::Json(detail(&state, &row).await?))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    /// Values for the DAG's declared params; the others take their defaults.
    #[schema(value_type = Option<Object>)]
    pub params: Option<serde_json::Map<String, Json>>,
    /// RFC 3339, or YYYY-MM-DD (midnight in the DAG's timezone); default: now.
    pub logical_date: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerAnswer {
    pub run_id: String,
    #[schema(example = "queued")]
    pub state: String,
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))
        })?;
    Ok(Some(key.to_string()))
}

#[utoipa::path(
    post,
    path = "/api/v1/dags/{dag_id}/runs",
    tag = "runs",
    security(("bearer" = [])),
    params(
        ("dag_id" = String, Path, description = "the DAG id"),
        ("Idempotency-Key" = Option<String>, Header,
         description = "a repeat with the same key, by the same token, for the same DAG within 24 h creates nothing and answers 200 with the first run; with other params or another logical date it answers 422"),
    ),
    request_body = TriggerBody,
    responses(
        (status = 201, description = "the run was created, queued", body = TriggerAnswer),
        (status = 200, description = "a repeat of an Idempotency-Key: the first run, as it is now", body = TriggerAnswer),
        (status = 400, description = "a bad or undeclared param, a bad logical date or key, a bad body", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "unknown DAG", body = ErrorBody),
        (status = 422, description = "an Idempotency-Key this token used for another request", body = ErrorBody),
        (status = 429, description = "the token's rate limit, or the DAG's cap on queued runs (max_queued_runs_per_dag)", body = ErrorBody),
    )
)]
pub async fn trigger(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path(dag_id): Path<String>,
    headers: HeaderMap,
    Body(body): Body<TriggerBody>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let row = active_dag(&state, &dag_id).await?;
    let dag = parsed(&state, &row).await?;
    let logical = body
        .logical_date
        .as_deref()
        .map(|s| {
            parse_date(s, dag.timezone)
                .map_err(|e| ApiError::bad_request(format!("logical_date: {e}")))
        })
        .transpose()?;
    let run = scheduler::manual_run(&dag, &body.params.unwrap_or_default(), logical)
        .map_err(OpError::from)?;
    let not_before = run.queued_at - IDEMPOTENCY_WINDOW;
    // Keys are the caller's own: another token's key of the same text is another key. Keys are
    // visible ASCII and hashes hex, so a newline cannot make two pairs alike.
    let scoped = key.as_ref().map(|k| IdempotencyKey {
        key: format!("{}\n{k}", caller.hash),
        not_before,
    });
    let repeat = Repeat {
        run: &run,
        logical,
        key: key.as_deref().unwrap_or_default(),
    };
    if let Err(full) = ops::queue_room(state.store.as_ref(), &dag_id, state.max_queued_runs).await {
        // A retry of a request that went through is answered as one, full queue or not.
        let first = match &scoped {
            Some(k) => state.store.keyed_run(&dag_id, &k.key, k.not_before).await?,
            None => None,
        };
        return match first {
            Some(first) => repeat.answer(&state, &first).await,
            None => Err(full.into()),
        };
    }
    let created = state
        .creator
        .create(RunCreate {
            run: run.clone(),
            key: scoped,
        })
        .await
        .map_err(ApiError::internal)?;
    match created {
        Created::Created => {}
        Created::Existing(first) => return repeat.answer(&state, &first).await,
        Created::Duplicate => {
            return Err(ApiError::internal(format!(
                "run {} exists already",
                run.run_id
            )));
        }
    }
    tracing::info!("run {} triggered by token '{}'", run.run_id, caller.name);
    Ok(trigger_answer(StatusCode::CREATED, run.run_id, "queued"))
}

fn trigger_answer(status: StatusCode, run_id: String, run_state: &str) -> Response {
    (
        status,
        axum::Json(TriggerAnswer {
            run_id,
            state: run_state.to_string(),
        }),
    )
        .into_response()
}

/// A trigger whose Idempotency-Key made a run before.
struct Repeat<'a> {
    run: &'a flow_engine::store::NewRun,
    logical: Option<chrono::DateTime<chrono::Utc>>,
    key: &'a str,
}

impl Repeat<'_> {
    /// The first run as it is now; or 422 when the request is not the same one.
    async fn answer(&self, state: &AppState, first: &str) -> Result<Response, ApiError> {
        let first = ops::get_run(state.store.as_ref(), first).await?;
        // The Stripe rule: a key names one request. The same key with other params (or another
        // logical date) is a mistake, not a retry, and must not answer as if it had run.
        let same_date = self.logical.is_none_or(|l| l == first.logical_date);
        if first.params != self.run.params || !same_date {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                format!(
                    "Idempotency-Key {} was used by this token for run {} with other params or \
                     another logical date; use a new key for a new request",
                    self.key, first.run_id
                ),
            ));
        }
        Ok(trigger_answer(
            StatusCode::OK,
            first.run_id,
            first.state.as_str(),
        ))
    }
}
