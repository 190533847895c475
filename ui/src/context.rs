//! What every command starts from: the settings, the opened database, the secrets, and how a
//! command's errors become exit codes ([`Usage`]: the caller's mistake, exit code 2).

use std::sync::Arc;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use flow_engine::dag::Dag;
use flow_engine::schedule::parse_date;
use flow_engine::scheduler::{Engine, EngineError};
use flow_engine::secrets::Secrets;
use flow_engine::store::Store;

use crate::cli::Global;
use crate::config::{Given, Settings, resolve};
use crate::ops;
use crate::telemetry::{Reporting, Telemetry};

/// An input or usage error: exit code 2, one line.
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(msg.into()))
}

/// An operation's error: the caller's (exit code 2) or ours.
pub(crate) fn op_err(e: ops::OpError) -> anyhow::Error {
    match e {
        ops::OpError::NotFound(m) | ops::OpError::Invalid(m) => usage(m),
        other => anyhow::Error::new(other),
    }
}

pub(crate) fn engine_err(e: EngineError) -> anyhow::Error {
    if e.is_input() {
        usage(e.to_string())
    } else {
        anyhow::Error::new(e)
    }
}

pub(crate) struct Ctx {
    pub(crate) settings: Settings,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) secrets: Secrets,
}

pub(crate) fn settings(g: &Global) -> Result<Settings> {
    resolve(&Given {
        home: g.home.clone(),
        dags: g.dags.clone(),
        database_url: g.database_url.clone(),
        bind: g.bind.clone(),
    })
    .map_err(|e| usage(format!("{e:#}")))
}

pub(crate) async fn open(g: &Global) -> Result<Ctx> {
    let mut settings = settings(g)?;
    ensure_home(&settings.home)?;
    let store = flow_engine::store::connect(&settings.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                redact_url(&settings.database_url)
            )
        })?;
    let from_env = Secrets::from_env();
    let hidden = settings.hidden_values(&from_env);
    let secrets = from_env.hiding(hidden);
    settings.engine.remote_logs = settings
        .remote_logs(&secrets)
        .map_err(|e| usage(format!("{e:#}")))?;
    Ok(Ctx {
        settings,
        store,
        secrets,
    })
}

/// Creates the home folder, readable by its owner alone (0700): it holds the admin token, the
/// SQLite database and every try's log. An existing folder keeps the mode its owner gave it.
fn ensure_home(home: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if home.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(home)
        .with_context(|| format!("cannot create {}", home.display()))
}

/// A database URL without its password, for messages.
pub(crate) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// An engine with the DAGs folder loaded and recorded.
pub(crate) async fn engine(ctx: &Ctx) -> Result<Engine> {
    let mut engine = Engine::new(
        ctx.store.clone(),
        Arc::new(flow_operators::registry(ctx.settings.connections.clone())),
        ctx.settings.engine.clone(),
        ctx.secrets.clone(),
    );
    engine.reload_dags().await.map_err(engine_err)?;
    Ok(engine)
}

/// A binary's process around its command: logs on stderr (filtered by `FLOW_LOG`, shaped by
/// `reporting`), traces when an OTLP endpoint is set, a tokio runtime, and the command's error as
/// an exit code (2 for a [`Usage`] error, 1 for any other), each message prefixed with the
/// binary's `name`.
pub fn run_process(
    name: &str,
    reporting: &Reporting,
    command: impl std::future::Future<Output = Result<u8>>,
) -> std::process::ExitCode {
    let telemetry = Telemetry::install(reporting);
    let code = run_command(name, command);
    telemetry.shutdown();
    code
}

fn run_command(
    name: &str,
    command: impl std::future::Future<Output = Result<u8>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => match e.downcast_ref::<Usage>() {
            Some(u) => {
                eprintln!("{name}: {}", u.0);
                ExitCode::from(2)
            }
            None => {
                eprintln!("{name}: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// The loaded DAG named `id`, or a usage error with a "did you mean".
pub(crate) fn find_dag(engine: &Engine, id: &str) -> Result<Arc<Dag>> {
    engine
        .dags()
        .find(|d| d.id == id)
        .cloned()
        .ok_or_else(|| {
            let known: Vec<&str> = engine.dags().map(|d| d.id.as_str()).collect();
            let hint = flow_engine::dag::parse::did_you_mean(id, known.iter().copied());
            usage(format!(
                "unknown DAG '{id}'{hint}: see `flow dags list`, or `flow dags validate` if its file has problems"
            ))
        })
}

/// A `--logical-date` (or `--date`), read in the DAG's timezone.
pub(crate) fn parse_logical(text: &Option<String>, dag: &Dag) -> Result<Option<DateTime<Utc>>> {
    text.as_deref()
        .map(|s| parse_date(s, dag.timezone).map_err(|e| usage(format!("--logical-date: {e}"))))
        .transpose()
}
