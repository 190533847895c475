//! `/api/v1/dags/{dag_id}/versions/{version}`: the YAML of a DAG version a run started on
//! (issue 23): runs keep their version, so what a run ran is readable after its file changed.

use std::sync::Arc;

use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::Viewer;
use super::error::{ApiError, ErrorBody, Path};
use crate::state::AppState;
use flow_engine::time::rfc3339;

/// A DAG version as flow recorded it.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagVersionView {
    pub dag_id: String,
    /// The content hash (a run's `dag_version`).
    pub version: String,
    /// The file it was read from.
    pub fileloc: String,
    /// When flow first recorded it.
    pub seen_at: String,
    /// The file's text.
    pub source: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/dags/{dag_id}/versions/{version}",
    tag = "dags",
    security(("bearer" = [])),
    params(
        ("dag_id" = String, Path, description = "the DAG id"),
        ("version" = String, Path, description = "the version's content hash, as a run's dag_version"),
    ),
    responses(
        (status = 200, description = "the version and its YAML", body = DagVersionView),
        (status = 404, description = "no such DAG version", body = ErrorBody),
    )
)]
pub async fn get_version(
    State(state): State<Arc<AppState>>,
    _: Viewer,
    Path((dag_id, version)): Path<(String, String)>,
) -> Result<axum::Json<DagVersionView>, ApiError> {
    let stored = state
        .store
        .dag_source(&dag_id, &version)
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!("DAG '{dag_id}' has no stored version '{version}'"))
        })?;
    Ok(axum::Json(DagVersionView {
        dag_id,
        version,
        fileloc: stored.fileloc,
        seen_at: rfc3339(stored.seen_at),
        source: stored.source,
    }))
}
