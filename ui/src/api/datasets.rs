//! `/api/v1/datasets`: datasets with their producers, consumers and last event, their events,
//! and recording an event from outside flow (issue 23; docs/guide.md "Data-aware scheduling").

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use utoipa::{IntoParams, ToSchema};

use super::auth::{Operator, Viewer};
use super::error::{ApiError, Body, ErrorBody, Query};
use crate::state::AppState;
use flow_engine::store::{DatasetEvent, DatasetSummary};
use flow_engine::time::now;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1000;

/// One update of a dataset.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetEventView {
    pub id: i64,
    pub uri: String,
    /// The producing try's output (masked), or the `extra` it was recorded with.
    #[schema(value_type = Object)]
    pub extra: Json,
    pub source_dag_id: Option<String>,
    pub source_run_id: Option<String>,
    pub source_task_id: Option<String>,
    pub source_map_index: Option<i64>,
    pub timestamp: String,
}

/// A dataset: who produces it, who is scheduled on it, and its last event.
#[derive(Debug, Serialize, ToSchema)]
pub struct DatasetView {
    pub uri: String,
    /// `dag_id.task_id` of each producing task.
    pub producers: Vec<String>,
    pub consumers: Vec<String>,
    pub last_event: Option<DatasetEventView>,
}

fn event_json(e: &DatasetEvent) -> Json {
    e.to_json()
}

fn dataset_json(d: &DatasetSummary) -> Json {
    serde_json::json!({
        "uri": d.uri,
        "producers": d.producers,
        "consumers": d.consumers,
        "last_event": d.last_event.as_ref().map(event_json),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/datasets",
    tag = "datasets",
    security(("bearer" = [])),
    responses((status = 200, description = "every dataset a DAG in use produces or consumes, or that has events, by URI", body = Vec<DatasetView>))
)]
pub async fn list_datasets(
    State(state): State<Arc<AppState>>,
    _: Viewer,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let datasets = state.store.datasets().await?;
    Ok(axum::Json(datasets.iter().map(dataset_json).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this dataset's events.
    pub uri: Option<String>,
    /// At most this many events (1 to 1000; default 100), newest first.
    pub limit: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/datasets/events",
    tag = "datasets",
    security(("bearer" = [])),
    params(EventsQuery),
    responses(
        (status = 200, description = "the newest events, newest first", body = Vec<DatasetEventView>),
        (status = 400, description = "a bad limit", body = ErrorBody),
    )
)]
pub async fn list_events(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Query(q): Query<EventsQuery>,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_LIMIT}"
        )));
    }
    let events = state.store.dataset_events(q.uri.as_deref(), limit).await?;
    Ok(axum::Json(events.iter().map(event_json).collect()))
}

/// An update of a dataset made outside flow.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEventBody {
    /// The dataset's URI, `scheme://path` as DAGs name it.
    pub uri: String,
    /// Any JSON object; consumers read it as `triggering_events[i].extra`.
    #[schema(value_type = Option<Object>)]
    pub extra: Option<serde_json::Map<String, Json>>,
}

#[utoipa::path(
    post,
    path = "/api/v1/datasets/events",
    tag = "datasets",
    security(("bearer" = [])),
    request_body = NewEventBody,
    responses(
        (status = 201, description = "the event, queued for every DAG scheduled on the dataset", body = DatasetEventView),
        (status = 400, description = "a bad URI or body", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
    )
)]
pub async fn record_event(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Body(body): Body<NewEventBody>,
) -> Result<Response, ApiError> {
    if let Some(why) = flow_engine::dag::uri_problem(&body.uri) {
        return Err(ApiError::bad_request(why));
    }
    let extra = Json::Object(body.extra.unwrap_or_default());
    let event = state
        .store
        .record_dataset_event(&body.uri, &extra, now())
        .await?;
    tracing::info!(
        "dataset event {} on {} recorded by token '{}'",
        event.id,
        event.uri,
        caller.name
    );
    Ok((StatusCode::CREATED, axum::Json(event_json(&event))).into_response())
}
