//! Bearer tokens, roles and the per-token rate limit.
//!
//! The middleware runs on every route but health and openapi.json: it finds the token's role
//! (401 when the header is missing or the token unknown), then charges the token one request
//! against its budget (429 with Retry-After when it is spent), and hands the caller to the
//! handler. Roles are checked by extractors that run before the body is read, so that a viewer
//! learns it may not trigger before it learns its JSON was wrong.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use flow_engine::store::{RateAnswer, RateAsk, Role, TokenGrant, token_hash};
use governor::clock::Clock;

use super::error::ApiError;
use crate::state::AppState;

/// Who is calling: the token's name and role.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// The token's hash: what its idempotency keys are scoped by, so that a new token given a
    /// revoked one's name does not share its keys.
    pub hash: String,
}

pub async fn authenticate(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer(&req)?;
    let now = flow_engine::time::now();
    let hash = token_hash(token);
    let Some(TokenGrant { name, role }) = state.store.token_role(&hash, now).await? else {
        return Err(ApiError::unauthorized(
            "unknown token (or one that expired or was revoked); create one with `flow tokens create \
             NAME --role ROLE`",
        ));
    };
    // Keyed by the token's name, which is unique: each token has a budget of its own, so one
    // busy client cannot starve the others.
    if let Some(limit) = state.shared_rate {
        let ask = RateAsk {
            key: name.clone(),
            now,
            emission: Duration::from_secs(60) / limit.per_minute.get(),
            burst: limit.burst.get(),
        };
        if let RateAnswer::Wait(wait) = state.store.spend_rate(&ask).await? {
            return Err(ApiError::rate_limited(wait));
        }
    } else if let Err(not_until) = state.limiter.check_key(&name) {
        let wait = not_until.wait_time_from(state.limiter.clock().now());
        return Err(ApiError::rate_limited(wait));
    }
    state.token_use.note(&name, now);
    req.extensions_mut().insert(Caller { name, role, hash });
    Ok(next.run(req).await)
}

fn bearer(req: &Request) -> Result<&str, ApiError> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this endpoint needs an `Authorization: Bearer TOKEN` header",
        ));
    };
    let text = value.to_str().unwrap_or("");
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer TOKEN`",
        )),
    }
}

fn caller_with(parts: &Parts, needed: Role) -> Result<Caller, ApiError> {
    let caller = parts
        .extensions
        .get::<Caller>()
        .cloned()
        // Only a route registered outside the authenticated router gets here.
        .ok_or_else(|| ApiError::internal("a protected handler ran without authentication"))?;
    if caller.role < needed {
        return Err(ApiError::forbidden(format!(
            "token '{}' has the role {}; this needs {} or above",
            caller.name,
            caller.role.as_str(),
            needed.as_str()
        )));
    }
    Ok(caller)
}

/// Any valid token (viewers read).
pub struct Viewer;

/// A token that may also trigger, clear, pause and mark.
pub struct Operator(pub Caller);

/// A token that may also manage tokens.
pub struct Admin(pub Caller);

macro_rules! role_extractor {
    ($name:ident, $role:expr, $wrap:expr) => {
        impl<S: Send + Sync> FromRequestParts<S> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
                caller_with(parts, $role).map($wrap)
            }
        }
    };
}

role_extractor!(Viewer, Role::Viewer, |_| Viewer);
role_extractor!(Operator, Role::Operator, Operator);
role_extractor!(Admin, Role::Admin, Admin);
