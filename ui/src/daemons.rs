//! The long-running commands: `flow scheduler`, `flow worker`, `flow server` and `flow
//! standalone`, and what
//! they need around them (signals, the first admin token).

use std::sync::Arc;

use anyhow::{Context, Result};
use flow_engine::dag::{DEFAULT_QUEUE, valid_queue_name};
use flow_engine::scheduler::{DagCatalog, Duties, Engine, Mode, Queues};
use flow_engine::time::now;
use tokio_util::sync::CancellationToken;

use crate::cli::Global;
use crate::context::{Ctx, engine, engine_err, open, redact_url, usage};

/// A token cancelled on SIGINT or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        stop.cancel();
    });
    shutdown
}

/// The first line a long-running command prints: what it loaded and where its database is.
fn announce(what: &str, ctx: &Ctx, engine: &Engine) {
    eprintln!(
        "flow {what}: {} DAG(s) from {}, database {} ({})",
        engine.dags().count(),
        ctx.settings.dags_folder.display(),
        redact_url(&ctx.settings.database_url),
        ctx.store.backend()
    );
}

/// The queues named by `--queue`, checked; `unnamed` when it names none.
fn served_queues(names: &[String], unnamed: Queues) -> Result<Queues> {
    if let Some(bad) = names.iter().find(|n| !valid_queue_name(n)) {
        return Err(usage(format!(
            "--queue '{bad}' is not a valid queue name (1 to 64 letters, digits, '_', '-' or '.')"
        )));
    }
    Ok(if names.is_empty() {
        unnamed
    } else {
        Queues::Only(names.to_vec())
    })
}

pub(crate) async fn scheduler(g: &Global, no_tasks: bool, queues: &[String]) -> Result<u8> {
    if no_tasks && !queues.is_empty() {
        return Err(usage(
            "--queue says which tasks to run, and --no-tasks runs none: give one or the other",
        ));
    }
    let queues = served_queues(queues, Queues::All)?;
    let ctx = open(g).await?;
    let duties = if no_tasks {
        Duties::PLAN_ONLY
    } else {
        Duties::ALL
    };
    let engine = engine(&ctx).await?.with_duties(duties).with_queues(queues);
    announce("scheduler", &ctx, &engine);
    let shutdown = shutdown_on_signals();
    crate::retention::keep_clean(&ctx, shutdown.clone())?;
    engine
        .run(Mode::Daemon, shutdown)
        .await
        .map_err(engine_err)?;
    eprintln!("flow scheduler: stopped");
    Ok(0)
}

/// `flow worker`: runs the tries it claims. It reads no DAGs folder: a try runs the DAG version
/// its run started on, which the database holds (and a worker's folder, on another host, may
/// be missing or older; loading it would record it as the DAGs that exist).
pub(crate) async fn worker(g: &Global, queues: &[String]) -> Result<u8> {
    let served = served_queues(queues, Queues::Only(vec![DEFAULT_QUEUE.to_string()]))?;
    let ctx = open(g).await?;
    let engine = Engine::new(
        ctx.store.clone(),
        Arc::new(flow_operators::registry(ctx.settings.connections.clone())),
        ctx.settings.engine.clone(),
        ctx.secrets.clone(),
    )
    .with_duties(Duties::TASKS_ONLY)
    .with_queues(served.clone());
    eprintln!(
        "flow worker: queue(s) {served}, parallelism {}, database {} ({})",
        ctx.settings.engine.parallelism,
        redact_url(&ctx.settings.database_url),
        ctx.store.backend()
    );
    let shutdown = shutdown_on_signals();
    engine
        .run(Mode::Daemon, shutdown)
        .await
        .map_err(engine_err)?;
    eprintln!("flow worker: stopped");
    Ok(0)
}

/// `flow server` (the API alone) and `flow standalone` (the scheduler beside it). Either answers
/// HTTP only once the DAGs folder has been loaded and, for standalone, `admin.token` written:
/// the listener is bound after both.
pub(crate) async fn server(g: &Global, standalone: bool) -> Result<u8> {
    let what = if standalone { "standalone" } else { "server" };
    let ctx = open(g).await?;
    let shutdown = shutdown_on_signals();
    let loaded = engine(&ctx).await?;
    announce(what, &ctx, &loaded);
    // The API looks DAGs up by the version the database names, which the scheduler keeps current
    // as files change; `flow server` alone serves the folder as it was loaded at start.
    let (scheduler, catalog) = if standalone {
        ensure_admin_token(&ctx).await?;
        let catalog = DagCatalog::new(
            ctx.store.clone(),
            Arc::new(flow_operators::registry(ctx.settings.connections.clone())),
        );
        (Some(loaded), catalog)
    } else {
        (None, loaded.into_catalog())
    };
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(&ctx.settings.bind)
        .await
        .map_err(|e| {
            usage(format!(
                "--bind {}: {e}; give HOST:PORT, such as 127.0.0.1:8080",
                ctx.settings.bind
            ))
        })?
        .collect();
    let listener = tokio::net::TcpListener::bind(addrs.as_slice())
        .await
        .with_context(|| format!("cannot listen on {}", ctx.settings.bind))?;
    let mut state = crate::state::AppState::new(
        ctx.store.clone(),
        ctx.settings.home.clone(),
        ctx.secrets.masker(),
        catalog,
        ctx.settings.rate_limit,
        ctx.settings.engine.lease_timeout,
    );
    state.secret_names = ctx.secrets.names().map(String::from).collect();
    state.max_queued_runs = ctx.settings.max_queued_runs;
    state.trusted_proxies = ctx.settings.trusted_proxies.clone();
    state.remote_logs = ctx
        .settings
        .engine
        .remote_logs
        .as_ref()
        .map(|r| r.archive.clone());
    let state = Arc::new(state);
    if crate::telemetry::exports_metrics() {
        crate::telemetry::metrics::ActivityGauges::keep_fresh(
            Arc::downgrade(&state.activity),
            state.store.clone(),
        );
    }
    eprintln!(
        "flow {what}: listening on http://{}",
        listener.local_addr()?
    );
    let api = tokio::spawn(crate::server::serve(listener, state, shutdown.clone()));
    let scheduled = match scheduler {
        Some(engine) => {
            crate::retention::keep_clean(&ctx, shutdown.clone())?;
            let result = engine.run(Mode::Daemon, shutdown.clone()).await;
            // The scheduler stopped, by a signal or an error: the server stops with it.
            shutdown.cancel();
            result.map(|_| ()).map_err(engine_err)
        }
        None => Ok(()),
    };
    let served = api.await.context("the web server task failed")?;
    scheduled?;
    served.context("the web server failed")?;
    eprintln!("flow {what}: stopped");
    Ok(0)
}

/// On a fresh home (no `admin.token`), creates an admin token, writes it to `admin.token` (mode
/// 0600) and prints it once on stdout.
async fn ensure_admin_token(ctx: &Ctx) -> Result<()> {
    let path = ctx.settings.home.join("admin.token");
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&ctx.settings.home)
        .with_context(|| format!("cannot create {}", ctx.settings.home.display()))?;
    let role = flow_engine::store::Role::Admin;
    let (token, hash) = flow_engine::store::new_token();
    // "admin" is taken when this database already served another home, or admin.token was
    // deleted: a timestamped name keeps the earlier token valid and this one distinct.
    let mut name = "admin".to_string();
    if !ctx
        .store
        .create_token(&name, role, &hash, now(), None)
        .await?
    {
        name = format!("admin-{}", now().format("%Y%m%dT%H%M%S%.6fZ"));
        if !ctx
            .store
            .create_token(&name, role, &hash, now(), None)
            .await?
        {
            anyhow::bail!("cannot create an admin token: the name {name} is taken");
        }
    }
    write_private(&path, &format!("{token}\n"))?;
    println!("{token}");
    eprintln!(
        "flow standalone: created the admin token '{name}' (printed once above, kept in {}, mode 0600)",
        path.display()
    );
    Ok(())
}

/// Writes a file only its owner can read, whole or not at all: a temporary file, created 0600,
/// synced, then renamed into place.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
