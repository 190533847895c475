//! The API's one error shape, `{"error": {"code", "message"}}`, and extractors whose rejections
//! use it (axum's own answer in plain text).
//!
//! The HTTP status of every failure is chosen here and only here: 4xx for what the caller can
//! fix, 503 for a database that is busy or unreachable, 500 for what can only be our bug.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use flow_engine::store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::ops::OpError;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable reason: `bad_request`, `bad_json`, `unauthorized`, `forbidden`,
    /// `not_found`, `method_not_allowed`, `conflict`, `rate_limited`, `unavailable`, `internal`.
    #[schema(example = "not_found")]
    pub code: String,
    /// What went wrong, for a person.
    pub message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn rate_limited(wait: std::time::Duration) -> ApiError {
        crate::telemetry::metrics::rate_limited();
        // Whole seconds, rounded up: a client that waits that long is sure to get through.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        ApiError {
            retry_after: Some(secs.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "this token has made too many requests; retry after the number of seconds in Retry-After",
            )
        }
    }

    /// A failure that is not the caller's: logged in full, answered without internals.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error answering an API request: {detail}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if e.is_transient() {
            tracing::warn!("database unavailable for an API request: {e}");
            ApiError {
                // Long enough for a restart's reconnect, short enough not to idle a client.
                retry_after: Some(if e.is_unreachable() { 5 } else { 1 }),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is busy or unreachable; try again after the seconds in Retry-After",
                )
            }
        } else if e.is_bad_text() {
            ApiError::bad_request(
                "a value holds a character the database cannot store (a NUL character)",
            )
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> ApiError {
        match e {
            OpError::NotFound(m) => ApiError::not_found(m),
            OpError::Invalid(m) => ApiError::bad_request(m),
            OpError::Store(s) => s.into(),
            OpError::Internal(m) => ApiError::internal(m),
            OpError::Engine(e) => ApiError::internal(e.to_string()),
            OpError::Log(e) => ApiError::internal(format!("{:#}", anyhow::Error::from(e))),
            OpError::Busy(m) => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_queued_runs", m)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON request body. An empty body reads as `{}`, so that an endpoint whose fields are all
/// optional can be called without one; a body that is not JSON, or not of the expected shape,
/// is a 400 that says where and why.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let declared_json = req.headers().get(CONTENT_TYPE).map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.split(';').next())
                .map(|mime| {
                    let mime = mime.trim().to_ascii_lowercase();
                    mime == "application/json" || mime.ends_with("+json")
                })
                .unwrap_or(false)
        });
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e: BytesRejection| ApiError::new(e.status(), "bad_body", e.body_text()))?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else if declared_json == Some(false) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the request body must be JSON (Content-Type: application/json)",
            ));
        } else {
            &bytes
        };
        serde_json::from_slice(text).map(Body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                format!("bad request body: {e}"),
            )
        })
    }
}

/// Query parameters; a malformed one is a 400 in the API's shape.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text())
            })
    }
}

/// Path parameters; a malformed one is a 400 in the API's shape.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| {
                // A path that does not fit the route is the caller's; a route whose extractor
                // does not fit its own path is ours.
                if e.status().is_server_error() {
                    ApiError::internal(e.body_text())
                } else {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text())
                }
            })
    }
}
