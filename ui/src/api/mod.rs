//! The REST API of `../shared/spec/api.md`, served by `flow server` and `flow standalone`.
//!
//! Every route is registered through utoipa-axum's `routes!`, which takes the path and method
//! from each handler's `#[utoipa::path]`: the router and the OpenAPI document are built from the
//! same declarations, so a route cannot be served without being documented (the end-to-end test
//! calls every documented operation and checks the answer is one it declares).

mod auth;
pub(crate) mod client;
mod creator;
mod dags;
mod error;
pub use error::ApiError;
mod grid;
mod meta;
mod models;
mod runs;
mod tokens;
mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, Uri};
use flow_engine::dag::Dag;
use flow_engine::scheduler::Engine;
use flow_engine::secrets::Masker;
use flow_engine::store::{DagRow, Store};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::RateLimit;
use error::ErrorBody;

/// Login attempts a client address may make in a minute (at once, then one every six seconds):
/// enough for a person, far too few to guess a token, which has 256 random bits anyway.
pub const LOGIN_ATTEMPTS_PER_MINUTE: std::num::NonZeroU32 = std::num::NonZeroU32::new(10).unwrap();

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// `$FLOW_HOME`, where the tries' logs are.
    pub home: PathBuf,
    pub masker: Masker,
    /// Parses and caches the DAG versions the database names (details, clears, marks). Locked
    /// only around those lookups; the scheduler of `flow standalone` has its own engine.
    pub dags: tokio::sync::Mutex<Engine>,
    pub limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// Login attempts per client address (see [`LOGIN_ATTEMPTS_PER_MINUTE`] and
    /// [`client::client_addr`]).
    pub login_limiter: Arc<DefaultKeyedRateLimiter<std::net::IpAddr>>,
    /// flow.toml's `[api] trusted_proxies`: the balancers whose `X-Forwarded-For` names the
    /// client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A scheduler whose last heartbeat is older than this is reported dead by health.
    pub lease_timeout: Duration,
    /// The OpenAPI document, serialized once.
    pub openapi: String,
    /// Triggers' group commit.
    pub creator: creator::RunCreator,
    /// The web pages' login sessions.
    pub sessions: crate::web::Sessions,
    /// When each token was last used, written in batches.
    pub token_use: Arc<usage::TokenUse>,
    /// flow.toml's `max_queued_runs_per_dag`: a trigger past it answers 429.
    pub max_queued_runs: u32,
    /// The names of the secrets tasks see, so that the pages render commands with `***` in
    /// their place (the values themselves stay with the scheduler).
    pub secret_names: Vec<String>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        home: PathBuf,
        masker: Masker,
        dags: Engine,
        rate_limit: RateLimit,
        lease_timeout: Duration,
    ) -> AppState {
        let quota = Quota::per_minute(rate_limit.per_minute).allow_burst(rate_limit.burst);
        let limiter = Arc::new(RateLimiter::keyed(quota));
        let login_limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(
            LOGIN_ATTEMPTS_PER_MINUTE,
        )));
        prune_limiters(Arc::downgrade(&limiter), Arc::downgrade(&login_limiter));
        AppState {
            home,
            masker,
            dags: tokio::sync::Mutex::new(dags),
            limiter,
            login_limiter,
            trusted_proxies: Vec::new(),
            lease_timeout,
            openapi: openapi_json(),
            creator: creator::RunCreator::start(store.clone()),
            token_use: usage::TokenUse::start(store.clone()),
            max_queued_runs: 1000,
            store,
            sessions: crate::web::Sessions::default(),
            secret_names: Vec::new(),
        }
    }

    /// The parsed DAG of a database row, at the version the row names.
    pub(crate) async fn dag_of(&self, row: &DagRow) -> Result<Option<Arc<Dag>>, ApiError> {
        let mut engine = self.dags.lock().await;
        Ok(engine
            .dag_version(&row.dag_id, &row.version)
            .await
            .map_err(crate::ops::OpError::from)?)
    }
}

/// Every minute, forgets the keys whose budget is full again: a limiter keyed by client address
/// would otherwise keep one entry for every address that ever called. Stops with the state.
fn prune_limiters(
    tokens: std::sync::Weak<DefaultKeyedRateLimiter<String>>,
    logins: std::sync::Weak<DefaultKeyedRateLimiter<std::net::IpAddr>>,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        every.tick().await;
        loop {
            every.tick().await;
            let (Some(tokens), Some(logins)) = (tokens.upgrade(), logins.upgrade()) else {
                return;
            };
            tokens.retain_recent();
            logins.retain_recent();
            tokens.shrink_to_fit();
            logins.shrink_to_fit();
        }
    });
}

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
        .routes(routes!(meta::openapi));
    let protected = OpenApiRouter::new()
        .routes(routes!(dags::list_dags))
        .routes(routes!(dags::get_dag, dags::patch_dag))
        .routes(routes!(dags::trigger))
        .routes(routes!(grid::grid))
        .routes(routes!(runs::list_runs))
        .routes(routes!(runs::get_run))
        .routes(routes!(runs::task_logs))
        .routes(routes!(runs::clear))
        .routes(routes!(runs::mark))
        .routes(routes!(tokens::create_token, tokens::list_tokens))
        .routes(routes!(tokens::revoke_token))
        .routes(routes!(models::list_models))
        .routes(routes!(models::get_model))
        .routes(routes!(models::promote));
    (public, protected)
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

fn openapi_json() -> String {
    // A document built from our own types always serializes.
    serde_json::to_string(&openapi_doc()).unwrap_or_else(|_| "{}".to_string())
}

/// The whole application: the API, JSON 404 and 405 answers, and the state.
pub fn router(state: Arc<AppState>) -> Router {
    let (public, protected) = routes();
    let protected = protected.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::authenticate,
    ));
    let (router, _) = public.merge(protected).split_for_parts();
    router
        .merge(crate::web::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(crate::web::security_headers))
        .with_state(state)
}

/// The API's JSON 404 under `/api`, the pages' HTML 404 elsewhere.
async fn not_found(method: Method, uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !crate::web::is_api(&uri) {
        return crate::web::not_found(uri).await.into_response();
    }
    ApiError::not_found(format!(
        "no endpoint {method} {}; /api/v1/openapi.json lists them",
        uri.path()
    ))
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    if !crate::web::is_api(&uri) {
        return crate::web::method_not_allowed(uri).await.into_response();
    }
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not answer {method}; /api/v1/openapi.json lists its methods",
            uri.path()
        ),
    )
    .into_response()
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
