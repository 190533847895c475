//! The web pages of `../shared/spec/api.md` ("Pages"): server-rendered HTML with askama, which
//! escapes every value it prints, so text that users or DAG authors wrote can never become
//! markup. The pages share the API's state and store; the logic of clears, marks and logs is
//! `crate::ops`, the same the API and the command line use.
//!
//! Every answer of the server (API included) carries the security headers of [`security_headers`];
//! the pages' own JavaScript is one static file, so the Content-Security-Policy can forbid inline
//! script and inline style outright.

mod assets;
mod backfill;
mod dag;
mod datasets;
mod experiments;
mod list;
mod models;
mod run;
mod session;
mod svg;
mod task;
mod version;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::Request;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use flow_engine::store::StoreError;

use crate::ops::OpError;
use crate::state::AppState;

pub use crate::render::dominant;
pub use session::Who;

/// No inline script or style, no plugins, no framing, forms only to this server.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The page routes; merged with the API's by `crate::server::router`.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(list::page))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/dags/{dag_id}", get(dag::page))
        .route("/dags/{dag_id}/pause", post(list::pause))
        .route("/dags/{dag_id}/trigger", post(dag::trigger))
        .route("/dags/{dag_id}/backfills", post(backfill::create))
        .route(
            "/dags/{dag_id}/backfills/{backfill_id}/cancel",
            post(backfill::cancel),
        )
        .route("/datasets", get(datasets::list))
        .route("/dags/{dag_id}/versions/{version}", get(version::page))
        .route("/models", get(models::list))
        .route("/models/{model}", get(models::page))
        .route("/experiments", get(experiments::list))
        .route("/experiments/{name}", get(experiments::page))
        .route("/runs/{run_id}", get(run::page))
        .route("/runs/{run_id}/tasks/{task_id}", get(task::page))
        .route("/runs/{run_id}/tasks/{task_id}/log", get(task::log_chunk))
        .route("/runs/{run_id}/tasks/{task_id}/clear", post(run::clear))
        .route("/runs/{run_id}/tasks/{task_id}/mark", post(run::mark))
        .route("/static/{file}", get(assets::serve))
}

/// Adds the security headers to every answer; the CSP only where the answer has none of its own.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.entry(CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    // For browsers older than frame-ancestors.
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

/// Whether a path belongs to the API, whose unknown routes answer in JSON.
pub fn is_api(uri: &Uri) -> bool {
    // `/metrics` is the API's too, at the path Prometheus looks by default.
    uri.path() == "/api" || uri.path().starts_with("/api/") || uri.path() == "/metrics"
}

/// A page that could not be shown, as an HTML answer with the right status.
#[derive(Debug)]
pub enum PageError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed(String),
    TooManyRequests,
    Unavailable,
    /// Logged in full; the page says only that it happened.
    Internal(String),
    /// Not logged in: to the login form, then back to `next`.
    Login {
        next: String,
    },
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    base: Base,
    status: u16,
    title: &'a str,
    message: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            PageError::Login { next } => {
                return Redirect::to(&format!("/login?next={}", urlenc(&next))).into_response();
            }
            PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            PageError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m),
            PageError::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            PageError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            PageError::MethodNotAllowed(m) => (StatusCode::METHOD_NOT_ALLOWED, m),
            PageError::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests for this token; wait a moment and reload".to_string(),
            ),
            PageError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is busy or unreachable; reload shortly".to_string(),
            ),
            PageError::Internal(detail) => {
                tracing::error!("internal error showing a page: {detail}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; the server log has the details".to_string(),
                )
            }
        };
        let page = ErrorPage {
            base: Base::anonymous(status.canonical_reason().unwrap_or("Error")),
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message: &message,
        };
        let mut res = html(&page);
        *res.status_mut() = status;
        res
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> PageError {
        if e.is_transient() {
            tracing::warn!("database unavailable for a page: {e}");
            PageError::Unavailable
        } else {
            PageError::Internal(e.to_string())
        }
    }
}

impl From<OpError> for PageError {
    fn from(e: OpError) -> PageError {
        match e {
            OpError::NotFound(m) => PageError::NotFound(m),
            OpError::Invalid(m) => PageError::BadRequest(m),
            OpError::Store(s) => s.into(),
            OpError::Internal(m) => PageError::Internal(m),
            OpError::Engine(e) => PageError::Internal(e.to_string()),
            OpError::Log(e) => PageError::Internal(format!("{:#}", anyhow::Error::from(e))),
            // Shown to the person with its reason; a page has no Retry-After to honour.
            OpError::Busy(m) => PageError::BadRequest(m),
        }
    }
}

pub type PageResult<T = Response> = Result<T, PageError>;

/// A form body; one that does not fit answers the HTML 400 page, not axum's plain text.
pub struct PageForm<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for PageForm<T> {
    type Rejection = PageError;

    async fn from_request(req: Request, state: &S) -> Result<Self, PageError> {
        axum::extract::Form::<T>::from_request(req, state)
            .await
            .map(|f| PageForm(f.0))
            .map_err(|e| PageError::BadRequest(e.body_text()))
    }
}

/// Path parameters; ones that do not decode answer the HTML 400 page.
pub struct PagePath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for PagePath<T>
{
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PagePath(p.0))
            .map_err(|e| PageError::BadRequest(e.body_text()))
    }
}

/// Renders a template as a 200 HTML answer.
fn html(t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => {
            let mut res = Html(body).into_response();
            // Pages show live state and may hold a CSRF token: never from a cache.
            res.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => {
            tracing::error!("cannot render a page: {e}");
            let mut res = (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; the server log has the details",
            )
                .into_response();
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            res
        }
    }
}

/// What the layout needs on every page.
pub struct Base {
    pub title: String,
    /// The logged-in token's name and role; None on the login and error pages.
    pub who: Option<(String, String)>,
    /// The session's CSRF token, for the logout form; None for bearer callers.
    pub csrf: Option<String>,
    /// Seconds after which the page reloads itself (a run in progress); None: it does not.
    pub refresh: Option<u32>,
    pub css: String,
    pub js: String,
}

impl Base {
    fn new(title: impl Into<String>, who: &Who) -> Base {
        Base {
            title: title.into(),
            who: Some((who.name.clone(), who.role.as_str().to_string())),
            csrf: who.csrf.clone(),
            refresh: None,
            css: assets::url("flow.css"),
            js: assets::url("flow.js"),
        }
    }

    fn anonymous(title: impl Into<String>) -> Base {
        Base {
            title: title.into(),
            who: None,
            csrf: None,
            refresh: None,
            css: assets::url("flow.css"),
            js: assets::url("flow.js"),
        }
    }
}

/// Percent-encodes everything but the unreserved characters: for a value in a path segment or a
/// query string (run ids hold `+` and `:`).
pub fn urlenc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn run_href(run_id: &str) -> String {
    format!("/runs/{}", urlenc(run_id))
}

pub fn dag_href(dag_id: &str) -> String {
    format!("/dags/{}", urlenc(dag_id))
}

pub fn task_href(run_id: &str, task_id: &str, map_index: i64, try_number: Option<i64>) -> String {
    let mut href = format!("/runs/{}/tasks/{}", urlenc(run_id), urlenc(task_id));
    let mut sep = '?';
    if let Some(n) = try_number {
        href.push_str(&format!("{sep}try={n}"));
        sep = '&';
    }
    if map_index != flow_engine::plan::UNMAPPED {
        href.push_str(&format!("{sep}map_index={map_index}"));
    }
    href
}

pub fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".to_string())
}

pub use flow_engine::time::elapsed;

pub fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

/// An HTML 404 for a path no page answers (the API's own paths get the API's JSON 404).
pub async fn not_found(uri: Uri) -> PageError {
    PageError::NotFound(format!("there is no page at {}", uri.path()))
}

pub async fn method_not_allowed(uri: Uri) -> PageError {
    PageError::MethodNotAllowed(format!(
        "{} does not answer this method (forms POST, pages GET)",
        uri.path()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlenc_keeps_unreserved_and_encodes_the_rest() {
        assert_eq!(
            urlenc("manual__2026-01-01T00:00:00+00:00"),
            "manual__2026-01-01T00%3A00%3A00%2B00%3A00"
        );
        assert_eq!(urlenc("a b/<c>"), "a%20b%2F%3Cc%3E");
    }
}
