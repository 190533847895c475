//! Health, the OpenAPI document, and token management.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flow_engine::store::{Role, new_token};
use flow_engine::time::{now, rfc3339};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::Admin;
use super::error::{ApiError, Body, ErrorBody};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `error` when the database does not answer.
    pub status: String,
    /// `ok` or `unavailable`.
    pub database: String,
    pub scheduler: SchedulerHealth,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SchedulerHealth {
    /// A scheduler has sent a heartbeat within the lease timeout, so its running tries are held.
    pub alive: bool,
    /// The latest heartbeat of any scheduler on this database.
    pub last_heartbeat: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "meta",
    responses(
        (status = 200, description = "the server and its database answer", body = Health),
        (status = 503, description = "the database does not answer (for load balancers and monitors)", body = Health),
    )
)]
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.store.last_heartbeat().await {
        Ok(last) => {
            let lease = chrono::Duration::from_std(state.lease_timeout).unwrap_or_default();
            let alive = last.is_some_and(|t| now() - t <= lease);
            axum::Json(Health {
                status: "ok".into(),
                database: "ok".into(),
                scheduler: SchedulerHealth {
                    alive,
                    last_heartbeat: last.map(rfc3339),
                },
            })
            .into_response()
        }
        Err(e) => {
            tracing::warn!("health: the database does not answer: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(Health {
                    status: "error".into(),
                    database: "unavailable".into(),
                    scheduler: SchedulerHealth {
                        alive: false,
                        last_heartbeat: None,
                    },
                }),
            )
                .into_response()
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "this document (OpenAPI 3)", content_type = "application/json"))
)]
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.clone(),
    )
        .into_response()
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A unique name, for logs and `Retry-After` budgets.
    pub name: String,
    /// `viewer` (default), `operator` or `admin`.
    pub role: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub role: String,
    /// The token itself, shown this once: only its hash is stored.
    pub token: String,
}

const MAX_NAME_LEN: usize = 100;

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    request_body = NewToken,
    responses(
        (status = 201, description = "the token, shown once", body = CreatedToken),
        (status = 400, description = "a bad name or role", body = ErrorBody),
        (status = 403, description = "the token is not an admin's", body = ErrorBody),
        (status = 409, description = "a token of that name exists", body = ErrorBody),
    )
)]
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    Admin(caller): Admin,
    Body(body): Body<NewToken>,
) -> Result<Response, ApiError> {
    let role: Role = body
        .role
        .as_deref()
        .unwrap_or("viewer")
        .parse()
        .map_err(ApiError::bad_request)?;
    let name = body.name.trim();
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "the token name must be 1 to {MAX_NAME_LEN} printable characters"
        )));
    }
    let (token, hash) = new_token();
    if !state.store.create_token(name, role, &hash, now()).await? {
        return Err(ApiError::conflict(format!(
            "a token named '{name}' exists already; choose another name"
        )));
    }
    tracing::info!(
        "token '{name}' ({}) created by token '{}'",
        role.as_str(),
        caller.name
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            name: name.to_string(),
            role: role.as_str().to_string(),
            token,
        }),
    )
        .into_response())
}
