//! What every handler shares, the API's and the pages' alike: the store, the DAG catalog, rate
//! limits, login sessions and the background writers (triggers' group commit, token use).
//! Neither `crate::api` nor `crate::web` owns it, so neither imports the other.

pub(crate) mod creator;
pub(crate) mod sessions;
pub(crate) mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flow_engine::dag::Dag;
use flow_engine::scheduler::DagCatalog;
use flow_engine::secrets::Masker;
use flow_engine::store::{DagRow, Store};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RateLimit;
use crate::ops::OpError;

/// Login attempts a client address may make in a minute (at once, then one every six seconds):
/// enough for a person, far too few to guess a token, which has 256 random bits anyway.
pub const LOGIN_ATTEMPTS_PER_MINUTE: std::num::NonZeroU32 = std::num::NonZeroU32::new(10).unwrap();

/// What every handler shares.
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// `$FLOW_HOME`, where the tries' logs are.
    pub home: PathBuf,
    /// `[logs] remote`, where logs of tries run on other hosts are.
    pub remote_logs: Option<Arc<dyn flow_engine::log::LogArchive>>,
    pub masker: Masker,
    /// Parses and caches the DAG versions the database names (details, clears, marks); the
    /// scheduler of `flow standalone` has its own.
    pub dags: DagCatalog,
    pub limiter: Arc<DefaultKeyedRateLimiter<String>>,
    /// On PostgreSQL, where several servers may share one database, each token's budget is
    /// kept there instead of in `limiter`, so that N servers give a token one budget.
    pub shared_rate: Option<RateLimit>,
    /// Login attempts per client address (see [`LOGIN_ATTEMPTS_PER_MINUTE`] and
    /// [`crate::client::client_addr`]).
    pub login_limiter: Arc<DefaultKeyedRateLimiter<std::net::IpAddr>>,
    /// flow.toml's `[api] trusted_proxies`: the balancers whose `X-Forwarded-For` names the
    /// client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A scheduler whose last heartbeat is older than this is reported dead by health.
    pub lease_timeout: Duration,
    /// Triggers' group commit.
    pub creator: creator::RunCreator,
    /// The web pages' login sessions.
    pub sessions: sessions::Sessions,
    /// When each token was last used, written in batches.
    pub token_use: Arc<usage::TokenUse>,
    /// flow.toml's `max_queued_runs_per_dag`: a trigger past it answers 429.
    pub max_queued_runs: u32,
    /// The names of the secrets tasks see, so that the pages render commands with `***` in
    /// their place (the values themselves stay with the scheduler).
    pub secret_names: Vec<String>,
    /// The gauges of what is in flight, which `GET /metrics` refreshes.
    pub activity: Arc<crate::telemetry::metrics::ActivityGauges>,
}

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        home: PathBuf,
        masker: Masker,
        dags: DagCatalog,
        rate_limit: RateLimit,
        lease_timeout: Duration,
    ) -> AppState {
        let shared_rate = (store.backend() == "postgres").then_some(rate_limit);
        let quota = Quota::per_minute(rate_limit.per_minute).allow_burst(rate_limit.burst);
        let limiter = Arc::new(RateLimiter::keyed(quota));
        let login_limiter = Arc::new(RateLimiter::keyed(Quota::per_minute(
            LOGIN_ATTEMPTS_PER_MINUTE,
        )));
        prune_limiters(Arc::downgrade(&limiter), Arc::downgrade(&login_limiter));
        AppState {
            home,
            remote_logs: None,
            masker,
            dags,
            limiter,
            shared_rate,
            login_limiter,
            trusted_proxies: Vec::new(),
            lease_timeout,
            creator: creator::RunCreator::start(store.clone()),
            token_use: usage::TokenUse::start(store.clone()),
            max_queued_runs: 1000,
            store,
            sessions: sessions::Sessions::default(),
            secret_names: Vec::new(),
            activity: Default::default(),
        }
    }

    /// Up to `limit` bytes of a try's log, masked (see [`crate::ops::log_chunk`]).
    pub(crate) async fn log_chunk(
        &self,
        q: &crate::ops::LogQuery<'_>,
        limit: u64,
    ) -> Result<crate::ops::LogChunk, OpError> {
        crate::ops::log_chunk(
            self.store.as_ref(),
            self.log_roots(),
            &self.masker,
            q,
            limit,
        )
        .await
    }

    /// Where this server reads logs.
    pub(crate) fn log_roots(&self) -> crate::ops::LogRoots<'_> {
        crate::ops::LogRoots {
            home: &self.home,
            remote: self.remote_logs.as_ref(),
        }
    }

    /// The parsed DAG of a database row, at the version the row names.
    pub(crate) async fn dag_of(&self, row: &DagRow) -> Result<Option<Arc<Dag>>, OpError> {
        Ok(self.dags.version(&row.dag_id, &row.version).await?)
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
