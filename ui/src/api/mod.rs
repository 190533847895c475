//! The REST API of `../shared/spec/api.md`, served by `flow server` and `flow standalone`.
//!
//! Every route is registered through utoipa-axum's `routes!`, which takes the path and method
//! from each handler's `#[utoipa::path]`: the router and the OpenAPI document are built from the
//! same declarations, so a route cannot be served without being documented (the end-to-end test
//! calls every documented operation and checks the answer is one it declares).

mod auth;
mod backfills;
mod dags;
mod datasets;
mod error;
pub use error::ApiError;
mod experiments;
mod grid;
mod meta;
mod models;
mod runs;
mod tokens;
mod versions;

use std::sync::Arc;

use axum::Router;
use axum::http::{Method, Uri};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;
use error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "flow",
        description = "The REST API of the flow workflow orchestrator (see docs/api.md).",
        version = "1"
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = doc.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// The routes anyone may call, and the ones that need a token.
fn routes() -> (OpenApiRouter<Arc<AppState>>, OpenApiRouter<Arc<AppState>>) {
    let public = OpenApiRouter::new()
        .routes(routes!(meta::health))
        .routes(routes!(meta::ready))
        .routes(routes!(meta::openapi));
    let protected = OpenApiRouter::new()
        .routes(routes!(dags::list_dags))
        .routes(routes!(dags::get_dag, dags::patch_dag))
        .routes(routes!(dags::trigger))
        .routes(routes!(grid::grid))
        .routes(routes!(backfills::create))
        .routes(routes!(backfills::list))
        .routes(routes!(backfills::get, backfills::cancel))
        .routes(routes!(versions::get_version))
        .routes(routes!(runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::task_logs))
        .routes(routes!(runs::clear))
        .routes(routes!(runs::mark))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(datasets::list_datasets))
        .routes(routes!(datasets::list_events, datasets::record_event))
        .routes(routes!(models::list_models))
        .routes(routes!(models::get_model))
        .routes(routes!(models::promote))
        .routes(routes!(experiments::list_experiments))
        .routes(routes!(experiments::get_experiment))
        .routes(routes!(experiments::stop))
        .routes(routes!(meta::metrics));
    (public, protected)
}

/// The OpenAPI document as served, serialized once.
pub(crate) fn openapi_json() -> &'static str {
    static JSON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    // A document built from our own types always serializes.
    JSON.get_or_init(|| serde_json::to_string(&openapi_doc()).unwrap_or_else(|_| "{}".to_string()))
}

/// The OpenAPI document. Every operation that needs a token also answers 401 and 429; they are
/// added here rather than repeated on each handler.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    let (public, protected) = routes();
    let mut doc = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(public)
        .merge(protected)
        .into_openapi();
    let error = |description: &str| {
        utoipa::openapi::ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                utoipa::openapi::ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if op.security.is_some() {
                op.responses.responses.insert(
                    "401".into(),
                    error("missing or unknown bearer token").into(),
                );
                op.responses.responses.insert(
                    "429".into(),
                    error("this token's rate limit is spent; see Retry-After").into(),
                );
            }
        }
    }
    doc
}

/// The API's routes, with authentication on the protected ones; `crate::server` adds the pages
/// and the fallbacks.
pub fn router(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let (public, protected) = routes();
    let protected = protected.route_layer(axum::middleware::from_fn_with_state(
        state,
        auth::authenticate,
    ));
    let (router, _) = public.merge(protected).split_for_parts();
    router.route_layer(axum::middleware::from_fn(
        crate::telemetry::metrics::observe_request,
    ))
}

/// The API's JSON 404, for a path under `/api` no route answers.
pub fn not_found(method: &Method, uri: &Uri) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {method} {}; /api/v1/openapi.json lists them",
        uri.path()
    ))
}

/// The API's JSON 405.
pub fn method_not_allowed(method: &Method, uri: &Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not answer {method}; /api/v1/openapi.json lists its methods",
            uri.path()
        ),
    )
}
