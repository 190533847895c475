//! Token management for admins: create, list and revoke (`flow tokens` does the same).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flow_engine::store::{Role, new_token};
use flow_engine::time::{now, rfc3339};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Admin;
use super::error::{ApiError, Body, ErrorBody};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A unique name, for logs and `Retry-After` budgets.
    pub name: String,
    /// `viewer` (default), `operator` or `admin`.
    pub role: Option<String>,
    /// How long the token works (`30d`, `12h`); without it, until it is revoked.
    pub expires: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    pub name: String,
    pub role: String,
    /// The token itself, shown this once: only its hash is stored.
    pub token: String,
    /// When it stops working (RFC 3339), or null.
    pub expires_at: Option<String>,
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
        (status = 400, description = "a bad name, role or expiry", body = ErrorBody),
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
    let created = now();
    let expires_at =
        crate::tokens::expiry(body.expires.as_deref(), created).map_err(ApiError::bad_request)?;
    let (token, hash) = new_token();
    if !state
        .store
        .create_token(name, role, &hash, created, expires_at)
        .await?
    {
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
            expires_at: expires_at.map(rfc3339),
        }),
    )
        .into_response())
}

/// A token as listed: never the token itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub name: String,
    pub role: String,
    pub created_at: String,
    /// Written in batches every few seconds, so it may trail the last request a little.
    pub last_used_at: Option<String>,
    pub expires_at: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "every token, by name", body = [TokenView]),
        (status = 403, description = "the token is not an admin's", body = ErrorBody),
    )
)]
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    Admin(_): Admin,
) -> Result<Response, ApiError> {
    let tokens: Vec<TokenView> = state
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| TokenView {
            name: t.name,
            role: t.role.as_str().to_string(),
            created_at: rfc3339(t.created_at),
            last_used_at: t.last_used_at.map(rfc3339),
            expires_at: t.expires_at.map(rfc3339),
        })
        .collect();
    Ok(axum::Json(tokens).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{name}",
    tag = "tokens",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "the token's name")),
    responses(
        (status = 204, description = "revoked: the API and the pages refuse it from now on"),
        (status = 403, description = "the token is not an admin's", body = ErrorBody),
        (status = 404, description = "no token has that name", body = ErrorBody),
        (status = 409, description = "a token cannot revoke itself (use another admin token or the CLI)", body = ErrorBody),
    )
)]
pub async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Admin(caller): Admin,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    // Revoking the caller's own token would lock out the last admin by mistake; the CLI, run on
    // the host, can still do it.
    if name == caller.name {
        return Err(ApiError::conflict(
            "a token cannot revoke itself; use another admin token or `flow tokens revoke`",
        ));
    }
    if !state.store.revoke_token(&name).await? {
        return Err(ApiError::not_found(format!("no token is named '{name}'")));
    }
    tracing::info!("token '{name}' revoked by token '{}'", caller.name);
    Ok(StatusCode::NO_CONTENT.into_response())
}
