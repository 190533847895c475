//! `/api/v1/models`: the model registry (docs/ml.md): models, their versions, and promotion by
//! hand.

use std::sync::Arc;

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use utoipa::ToSchema;

use super::auth::{Operator, Viewer};
use super::error::{ApiError, Body, ErrorBody, Path};
use crate::render::{
    LINEAGE_USES, ModelVersionView, ModelView, model_json, model_version_json, model_versions_json,
};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/api/v1/models",
    tag = "models",
    security(("bearer" = [])),
    responses((status = 200, description = "every model of the registry, by name", body = Vec<ModelView>))
)]
pub async fn list_models(
    State(state): State<Arc<AppState>>,
    _: Viewer,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let models = state.store.models().await?;
    Ok(axum::Json(models.iter().map(model_json).collect()))
}

#[utoipa::path(
    get,
    path = "/api/v1/models/{model}",
    tag = "models",
    security(("bearer" = [])),
    params(("model" = String, Path, description = "the model's name")),
    responses(
        (status = 200, description = "the model's versions, newest first", body = Vec<ModelVersionView>),
        (status = 404, description = "unknown model", body = ErrorBody),
    )
)]
pub async fn get_model(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path(model): Path<String>,
) -> Result<axum::Json<Vec<Json>>, ApiError> {
    let versions = state.store.model_versions(&model).await?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!(
            "unknown model '{model}': GET /api/v1/models lists them"
        )));
    }
    let uses = state.store.model_predictions(&model, LINEAGE_USES).await?;
    Ok(axum::Json(model_versions_json(&versions, &uses)))
}

/// A promotion by hand needs no body; `{}` is accepted.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {}

#[utoipa::path(
    post,
    path = "/api/v1/models/{model}/versions/{version}/promote",
    tag = "models",
    security(("bearer" = [])),
    params(
        ("model" = String, Path, description = "the model's name"),
        ("version" = i64, Path, description = "the version to make the production one"),
    ),
    request_body = PromoteBody,
    responses(
        (status = 200, description = "the version, now production; the previous one is archived", body = ModelVersionView),
        (status = 400, description = "a version that is not a number", body = ErrorBody),
        (status = 403, description = "the token is a viewer's", body = ErrorBody),
        (status = 404, description = "unknown model or version", body = ErrorBody),
    )
)]
pub async fn promote(
    State(state): State<Arc<AppState>>,
    Operator(caller): Operator,
    Path((model, version)): Path<(String, i64)>,
    Body(_): Body<PromoteBody>,
) -> Result<axum::Json<Json>, ApiError> {
    let previous = crate::ops::promote_by_hand(state.store.as_ref(), &model, version).await?;
    tracing::info!(
        "{model} version {version} promoted by token '{}' (was {previous:?})",
        caller.name
    );
    let v = state
        .store
        .model_version(&model, version)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{model} version {version} vanished")))?;
    let mut body = model_version_json(&v);
    body["previous_version"] = json!(previous);
    Ok(axum::Json(body))
}
