//! `/api/v1/experiments`: the records the `experiment` operator keeps (docs/ml.md), and stopping
//! one by hand.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

use super::auth::{Operator, Viewer};
use super::error::{ApiError, Body, ErrorBody, Path};
use crate::experiments::{ExperimentView, experiment_json};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/api/v1/experiments",
    tag = "experiments",
    security(("bearer" = [])),
    responses((status = 200, description = "every experiment and metric, the most recently looked at first", body = Vec<ExperimentView>))
)]
pub async fn list_experiments(
    State(state): State<Arc<AppState>>,
    _: Viewer,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let list = state.store.experiments().await?;
    Ok(axum::Json(list.iter().map(experiment_json).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/experiments/{name}",
    tag = "experiments",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "the experiment's name (its `experiment` key)")),
    responses(
        (status = 200, description = "the experiment's records, one per metric", body = Vec<ExperimentView>),
        (status = 404, description = "unknown experiment", body = ErrorBody),
    )
)]
pub async fn get_experiment(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path(name): Path<String>,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let list: Vec<Json> = state
        .store
        .experiments()
        .await?
        .iter()
        .filter(|e| e.name == name)
        .map(experiment_json)
        .collect();
    if list.is_empty() {
        return Err(unknown(&name));
    }
    Ok(axum::Json(list))
}

fn unknown(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "unknown experiment '{name}': GET /api/v1/experiments lists them"
    ))
}

/// Stopping needs no body; `{}` is accepted.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopBody {}

#[utoipa::path(
    post,
    path = "/api/v1/experiments/{name}/stop",
    tag = "experiments",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "the experiment's name")),
    request_body = StopBody,
    responses(
        (status = 200, description = "the records after: every running metric is stopped, a concluded one stays concluded", body = Vec<ExperimentView>),
        (status = 400, description = "a body that is not `{}`", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "unknown experiment", body = ErrorBody),
    )
)]
pub async fn stop(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path(name): Path<String>,
    Body(_): Body<StopBody>,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let list = state
        .store
        .stop_experiment(&name, chrono::Utc::now())
        .await?;
    if list.is_empty() {
        return Err(unknown(&name));
    }
    tracing::info!("experiment {name} stopped by token '{}'", caller.name);
    Ok(axum::Json(list.iter().map(experiment_json).collect()))
}
