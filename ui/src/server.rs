//! The HTTP server: the API and the pages on one router, with the fallbacks that answer each in
//! its own format (JSON under `/api`, HTML elsewhere).

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;
use crate::{api, web};

/// The whole application: the API, the pages, 404 and 405 answers, and the state.
pub fn router(state: Arc<AppState>) -> Router {
    api::router(state.clone())
        .merge(web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(web::security_headers))
        .with_state(state)
}

/// The API's JSON 404 under `/api`, the pages' HTML 404 elsewhere.
async fn not_found(method: Method, uri: Uri) -> Response {
    if web::is_api(&uri) {
        api::not_found(&method, &uri).into_response()
    } else {
        web::not_found(uri).await.into_response()
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    if web::is_api(&uri) {
        api::method_not_allowed(&method, &uri).into_response()
    } else {
        web::method_not_allowed(uri).await.into_response()
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled, then lets the requests in flight
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The peer's address reaches the login form's rate limit.
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
