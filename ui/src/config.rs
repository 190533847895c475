//! Settings: a flag, else an environment variable, else `$FLOW_HOME/flow.toml`, else the default.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use flow_engine::scheduler::{EngineConfig, default_parallelism};
use serde::Deserialize;

/// `flow.toml`. Unknown keys are errors, so that a misspelt setting is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub dags_folder: Option<PathBuf>,
    pub database_url: Option<String>,
    pub bind: Option<String>,
    pub parallelism: Option<usize>,
    #[serde(default)]
    pub pools: BTreeMap<String, usize>,
    /// Named connections; rendered (secrets filled in) by the operator that uses one, per try.
    #[serde(default)]
    pub connections: BTreeMap<String, toml::Table>,
    #[serde(default)]
    pub notifications: Notifications,
    /// How long a running try's lease lasts without a heartbeat (default 30s).
    pub lease_timeout: Option<String>,
    /// How often a daemon, and `flow trigger --wait`, read the database for what no wake-up
    /// brought (default 250ms): news from other processes arrives as wake-ups; this poll only
    /// covers a lost one and due times.
    pub poll_interval: Option<String>,
    /// The web UI's public address, for links in notifications (default http://BIND).
    pub base_url: Option<String>,
    #[serde(default)]
    pub api: ApiFile,
    /// Queued runs a DAG may have before a trigger is refused (default 1,000).
    pub max_queued_runs_per_dag: Option<u32>,
    #[serde(default)]
    pub logs: LogsFile,
    #[serde(default)]
    pub retention: RetentionFile,
}

/// `[retention]` in flow.toml: what the scheduler deletes by itself, as `flow db clean` does.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Ended runs queued longer ago than this go, with their tries and logs (default: none;
    /// nothing is deleted).
    pub max_age: Option<String>,
    /// How often the scheduler cleans (default 1h).
    pub every: Option<String>,
}

/// `[logs]` in flow.toml.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsFile {
    /// `s3://BUCKET/PREFIX`: every try's log is copied there as it is written, so that a server
    /// on another host shows it (default: none; logs stay on the disk of the host that ran them).
    pub remote: Option<String>,
    /// The `aws` connection of `[connections]` that reaches it (default: the standard AWS
    /// environment: variables, profile, task role).
    pub connection: Option<String>,
    /// How often a running try's new lines are copied (default 5s).
    pub ship_every: Option<String>,
}

/// `[api]` in flow.toml.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFile {
    /// Requests a minute each token may make, on average (default 1,200).
    pub rate_limit_per_minute: Option<u32>,
    /// Requests a token may make at once before the average applies (default 100).
    pub rate_limit_burst: Option<u32>,
    /// Load balancers whose `X-Forwarded-For` names the client (addresses or networks).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// The API's per-token request budget.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifications {
    pub webhook: Option<String>,
    /// A run queued longer than this (held by max_active_runs, a paused DAG, a busy cluster) is
    /// alerted once, to its DAG's `on_failure` webhook or this `webhook` (default: never).
    pub stuck_queued: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub home: PathBuf,
    /// `[connections]`, for the operators that name one.
    pub connections: flow_operators::Connections,
    pub dags_folder: PathBuf,
    pub database_url: String,
    pub bind: String,
    pub engine: EngineConfig,
    pub rate_limit: RateLimit,
    /// flow.toml's `max_queued_runs_per_dag`.
    pub max_queued_runs: u32,
    /// `[api] trusted_proxies`.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[logs]`, made into `engine.remote_logs` once secrets are read ([`Settings::remote_logs`]).
    pub logs: LogsFile,
    pub retention: RetentionFile,
}

/// What the command line and environment gave (clap reads both).
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub home: Option<PathBuf>,
    pub dags: Option<PathBuf>,
    pub database_url: Option<String>,
    pub bind: Option<String>,
}

fn lease_timeout(file: &FileConfig) -> Result<Duration> {
    let lease_timeout = match &file.lease_timeout {
        Some(s) => flow_engine::schedule::parse_duration(s)
            .map_err(|e| anyhow::anyhow!("flow.toml: lease_timeout: {e}"))?,
        None => Duration::from_secs(30),
    };
    if lease_timeout < Duration::from_millis(500) {
        bail!("flow.toml: lease_timeout must be at least 500ms");
    }
    Ok(lease_timeout)
}

fn poll_interval(file: &FileConfig) -> Result<Duration> {
    let poll = match &file.poll_interval {
        Some(s) => flow_engine::schedule::parse_duration(s)
            .map_err(|e| anyhow::anyhow!("flow.toml: poll_interval: {e}"))?,
        None => flow_engine::scheduler::DEFAULT_POLL,
    };
    if poll < Duration::from_millis(10) {
        bail!("flow.toml: poll_interval must be at least 10ms");
    }
    Ok(poll)
}

fn stuck_queued(file: &FileConfig) -> Result<Option<Duration>> {
    let Some(s) = &file.notifications.stuck_queued else {
        return Ok(None);
    };
    let d = flow_engine::schedule::parse_duration(s)
        .map_err(|e| anyhow::anyhow!("flow.toml: [notifications] stuck_queued: {e}"))?;
    if d.is_zero() {
        bail!("flow.toml: [notifications] stuck_queued must be positive");
    }
    Ok(Some(d))
}

fn rate_limit(file: &FileConfig) -> Result<RateLimit> {
    let nonzero = |v: Option<u32>, default: u32, key: &str| {
        NonZeroU32::new(v.unwrap_or(default))
            .ok_or_else(|| anyhow::anyhow!("flow.toml: [api] {key} must be at least 1"))
    };
    Ok(RateLimit {
        per_minute: nonzero(
            file.api.rate_limit_per_minute,
            1200,
            "rate_limit_per_minute",
        )?,
        burst: nonzero(file.api.rate_limit_burst, 100, "rate_limit_burst")?,
    })
}

fn connections(file: &FileConfig) -> Result<flow_operators::Connections> {
    let mut connections = std::collections::BTreeMap::new();
    for (name, table) in &file.connections {
        let value = serde_json::to_value(table)
            .with_context(|| format!("flow.toml: [connections.{name}]"))?;
        if let serde_json::Value::Object(map) = value {
            connections.insert(name.clone(), map);
        }
    }
    Ok(flow_operators::Connections::new(connections))
}

pub fn resolve(given: &Given) -> Result<Settings> {
    let home = absolute(
        given
            .home
            .clone()
            .unwrap_or_else(|| PathBuf::from("./.flow")),
    );
    let file = read_file_config(&home.join("flow.toml"))?;
    let dags_folder = absolute(
        given
            .dags
            .clone()
            .or(file.dags_folder.clone())
            .unwrap_or_else(|| PathBuf::from("./dags")),
    );
    let database_url = given
        .database_url
        .clone()
        .or(file.database_url.clone())
        .unwrap_or_else(|| format!("sqlite://{}", home.join("flow.db").display()));
    let bind = given
        .bind
        .clone()
        .or(file.bind.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_string());
    let parallelism = file.parallelism.unwrap_or_else(default_parallelism);
    if parallelism == 0 {
        bail!("flow.toml: parallelism must be at least 1");
    }
    let lease_timeout = lease_timeout(&file)?;
    let poll_interval = poll_interval(&file)?;
    let base_url = file
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{bind}"));
    let rate_limit = rate_limit(&file)?;
    let connections = connections(&file)?;
    let max_queued_runs = file.max_queued_runs_per_dag.unwrap_or(1000);
    if max_queued_runs == 0 {
        bail!("flow.toml: max_queued_runs_per_dag must be at least 1");
    }
    let trusted_proxies = crate::client::parse_proxies(&file.api.trusted_proxies)
        .map_err(|e| anyhow::anyhow!("flow.toml: [api] trusted_proxies: {e}"))?;
    Ok(Settings {
        logs: file.logs.clone(),
        retention: file.retention.clone(),
        trusted_proxies,
        max_queued_runs,
        connections,
        rate_limit,
        engine: EngineConfig {
            home: home.clone(),
            dags_folder: dags_folder.clone(),
            parallelism,
            pools: file.pools.clone(),
            lease_timeout,
            poll_interval,
            base_url,
            default_webhook: file.notifications.webhook.clone(),
            stuck_queued: stuck_queued(&file)?,
            remote_logs: None,
        },
        home,
        dags_folder,
        database_url,
        bind,
    })
}

impl Settings {
    /// `[logs] remote` as the engine and the readers use it; None when not set.
    pub fn remote_logs(
        &self,
        secrets: &flow_engine::secrets::Secrets,
    ) -> Result<Option<flow_engine::log::RemoteLogs>> {
        let Some(url) = &self.logs.remote else {
            return Ok(None);
        };
        let aws = self
            .connections
            .aws(self.logs.connection.as_deref(), secrets)
            .map_err(|e| anyhow::anyhow!("flow.toml: [logs] connection: {e}"))?;
        let archive = flow_operators::remote_logs::S3Logs::new(url, &aws)
            .context("flow.toml: [logs] remote")?;
        let every = match &self.logs.ship_every {
            Some(s) => flow_engine::schedule::parse_duration(s)
                .map_err(|e| anyhow::anyhow!("flow.toml: [logs] ship_every: {e}"))?,
            None => Duration::from_secs(5),
        };
        if every < Duration::from_millis(100) {
            bail!("flow.toml: [logs] ship_every must be at least 100ms");
        }
        Ok(Some(flow_engine::log::RemoteLogs {
            archive: std::sync::Arc::new(archive),
            every,
        }))
    }

    /// What is masked like a secret without being one: the database URL's password and the
    /// secrets written plainly in `[connections]`.
    pub fn hidden_values(&self, secrets: &flow_engine::secrets::Secrets) -> Vec<String> {
        let mut out = flow_operators::connections::url_password(&self.database_url);
        out.extend(self.connections.plain_secrets(secrets));
        out
    }
}

fn read_file_config(path: &Path) -> Result<FileConfig> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("{}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}
