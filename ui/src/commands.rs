//! What each command does. Errors a user must fix come back as
//! [`crate::context::Usage`] (exit code 2).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use flow_engine::dag::load::{dag_files, load_files};
use flow_engine::dag::parse::ParseOptions;
use flow_engine::plan::UNMAPPED;
use flow_engine::scheduler::{self, DagCatalog, Engine, Mode};
use flow_engine::state::RunState;
use flow_engine::store::RunFilter;
use flow_engine::time::{now, rfc3339};
use tokio_util::sync::CancellationToken;

use crate::cli::{
    Cli, Command, DagsCommand, DbCommand, Global, ModelsCommand, RunArgs, RunsCommand,
    TasksCommand, TokensCommand,
};
use crate::context::{
    Ctx, engine, engine_err, find_dag, op_err, open, parse_logical, settings, usage,
};
use crate::ops;
use crate::progress::follow;
use crate::render::{dag_json, model_json, run_json, run_json_seen, short_ts, table};

pub async fn dispatch(cli: Cli) -> Result<u8> {
    let g = &cli.global;
    match cli.command {
        Command::Dags { command } => match command {
            DagsCommand::Validate { paths, strict } => validate(g, paths, strict),
            DagsCommand::Schema => {
                let registry = flow_operators::registry(Default::default());
                let schema = flow_engine::dag::schema::dag_schema(&registry);
                println!("{}", serde_json::to_string_pretty(&schema)?);
                Ok(0)
            }
            DagsCommand::List { json } => dags_list(g, json).await,
            DagsCommand::Pause { dag } => set_paused(g, &dag, true).await,
            DagsCommand::Unpause { dag } => set_paused(g, &dag, false).await,
        },
        Command::Run(args) => run(g, args).await,
        Command::Trigger { run, wait } => trigger(g, run, wait).await,
        Command::Backfill(args) => crate::backfill::run(g, args).await,
        Command::Runs { command } => match command {
            RunsCommand::List {
                dag,
                state,
                limit,
                json,
            } => runs_list(g, dag, state, limit, json).await,
            RunsCommand::Show { run_id, json } => runs_show(g, &run_id, json).await,
        },
        Command::Tasks { command } => match command {
            TasksCommand::Logs {
                run_id,
                task,
                try_number,
                map_index,
            } => task_logs(g, &run_id, &task, try_number, map_index).await,
            TasksCommand::Test(args) => crate::task_test::run(g, args).await,
            TasksCommand::Clear {
                run_id,
                task,
                downstream,
            } => task_clear(g, &run_id, &task, downstream).await,
        },
        Command::Tokens { command } => match command {
            TokensCommand::Create {
                name,
                role,
                expires,
            } => crate::tokens::create(g, &name, &role, expires.as_deref()).await,
            TokensCommand::List { json } => crate::tokens::list(g, json).await,
            TokensCommand::Revoke { name } => crate::tokens::revoke(g, &name).await,
        },
        Command::Models { command } => models(g, command).await,
        Command::Experiments { command } => crate::experiments::command(g, command).await,
        Command::Db {
            command:
                DbCommand::Clean {
                    before,
                    dag,
                    dry_run,
                },
        } => crate::retention::clean(g, &before, dag, dry_run).await,
        Command::Scheduler { no_tasks, queues } => {
            crate::daemons::scheduler(g, no_tasks, &queues).await
        }
        Command::Worker { queues } => crate::daemons::worker(g, &queues).await,
        Command::Server => crate::daemons::server(g, false).await,
        Command::Standalone => crate::daemons::server(g, true).await,
    }
}

fn validate(g: &Global, paths: Vec<PathBuf>, strict: bool) -> Result<u8> {
    let settings = settings(g);
    let paths = if paths.is_empty() {
        vec![
            settings
                .as_ref()
                .map_err(|e| anyhow::anyhow!("{e:#}"))?
                .dags_folder
                .clone(),
        ]
    } else {
        paths
    };
    let mut files = Vec::new();
    for p in &paths {
        if !p.exists() {
            return Err(usage(format!("{}: no such file or folder", p.display())));
        }
        files.extend(dag_files(p).with_context(|| format!("cannot read {}", p.display()))?);
    }
    let registry = flow_operators::registry(Default::default());
    let opts = DagCatalog::parse_options();
    let loaded = load_files(&files, &registry, &opts);
    // The contract: validation never fails because a connection is not configured, since
    // flow.toml may differ between a laptop and production. A name flow.toml lacks is a
    // warning, and an error only with --strict.
    let connections = settings
        .ok()
        .map(|s| s.connections.names().map(str::to_string).collect());
    let unknown_connections: Vec<String> = match connections {
        Some(names) => {
            let with = ParseOptions {
                connections: Some(names),
                ..opts
            };
            let reported: HashSet<String> = loaded.problems().map(|p| p.to_string()).collect();
            load_files(&files, &registry, &with)
                .problems()
                .map(|p| p.to_string())
                .filter(|p| !reported.contains(p))
                .collect()
        }
        None => Vec::new(),
    };
    let mut problems = 0;
    for p in loaded.problems() {
        eprintln!("{p}");
        problems += 1;
    }
    // Among the files checked, as duplicate ids are.
    for p in flow_engine::dag::unproduced_datasets(&loaded.dags) {
        eprintln!("{p}");
        problems += 1;
    }
    for p in &unknown_connections {
        if strict {
            eprintln!("{p}");
            problems += 1;
        } else {
            eprintln!("warning: {p}");
        }
    }
    if problems > 0 {
        eprintln!("{problems} problem(s) in {} file(s)", files.len());
        Ok(1)
    } else {
        println!(
            "{} DAG(s) valid in {} file(s)",
            loaded.dags.len(),
            files.len()
        );
        Ok(0)
    }
}

async fn dags_list(g: &Global, json: bool) -> Result<u8> {
    let ctx = open(g).await?;
    let engine = engine(&ctx).await?;
    let now = now();
    let mut items = Vec::new();
    for row in ctx.store.list_dags().await? {
        let dag = engine.dags().find(|d| d.id == row.dag_id);
        let next = ops::next_run_at(ctx.store.as_ref(), &row, dag.map(|d| d.as_ref()), now)
            .await
            .map_err(op_err)?;
        items.push((row, next));
    }
    let broken = ctx.store.import_errors().await?;
    if !broken.is_empty() {
        eprintln!(
            "flow: {} DAG file(s) failed to load; `flow dags validate` shows why",
            broken.len()
        );
    }
    if json {
        let v: Vec<_> = items.iter().map(|(d, n)| dag_json(d, *n)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let rows = items
            .iter()
            .map(|(d, n)| {
                vec![
                    d.dag_id.clone(),
                    d.schedule.clone().unwrap_or_else(|| "-".into()),
                    if d.paused { "yes".into() } else { "no".into() },
                    d.last_run
                        .as_ref()
                        .map(|r| r.state.as_str().to_string())
                        .unwrap_or_else(|| "-".into()),
                    short_ts(*n),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["dag", "schedule", "paused", "last run", "next run"], rows)
        );
    }
    Ok(0)
}

async fn set_paused(g: &Global, dag: &str, paused: bool) -> Result<u8> {
    let ctx = open(g).await?;
    let engine = engine(&ctx).await?;
    let known_in_db = ctx.store.get_dag(dag).await?.is_some_and(|d| d.active);
    if !known_in_db {
        find_dag(&engine, dag)?;
    }
    if !ctx.store.set_paused(dag, paused).await? {
        find_dag(&engine, dag)?;
    }
    eprintln!("DAG {dag} {}", if paused { "paused" } else { "unpaused" });
    Ok(0)
}

async fn create_manual_run(
    ctx: &Ctx,
    args: &RunArgs,
) -> Result<(Engine, flow_engine::store::RunRow)> {
    let engine = engine(ctx).await?;
    let dag = find_dag(&engine, &args.dag)?;
    let given = dag.params_from_cli(&args.params).map_err(usage)?;
    let logical = parse_logical(&args.logical_date, &dag)?;
    let run = scheduler::trigger(ctx.store.as_ref(), &dag, &given, logical)
        .await
        .map_err(engine_err)?;
    Ok((engine, run))
}

async fn print_run(ctx: &Ctx, run_id: &str) -> Result<RunState> {
    let run = ctx
        .store
        .get_run(run_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("run {run_id} disappeared"))?;
    let tis = ctx.store.task_instances(run_id).await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&run_json_seen(
            &run,
            Some(&tis),
            &ctx.secrets.masker(),
            ctx.store
                .dag_source(&run.dag_id, &run.dag_version)
                .await?
                .map(|s| s.seen_at),
        ))?
    );
    Ok(run.state)
}

async fn run(g: &Global, args: RunArgs) -> Result<u8> {
    let ctx = open(g).await?;
    let (engine, run) = create_manual_run(&ctx, &args).await?;
    eprintln!("flow: run {}", run.run_id);
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    let run_id = run.run_id.clone();
    let store = ctx.store.clone();
    let poll = ctx.settings.engine.poll_interval;
    let follower =
        tokio::spawn(async move { follow(store.as_ref(), &[run_id], "run", poll).await });
    let result = engine
        .run(Mode::Single(run.run_id.clone()), shutdown)
        .await
        .map_err(engine_err)?;
    // The follower sees the same end state within its polling interval.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), follower).await;
    let state = if args.json {
        print_run(&ctx, &run.run_id).await?
    } else {
        let state = result.unwrap_or(RunState::Failed);
        println!("{}", run.run_id);
        state
    };
    Ok(if state == RunState::Success { 0 } else { 1 })
}

async fn trigger(g: &Global, args: RunArgs, wait: bool) -> Result<u8> {
    let ctx = open(g).await?;
    ops::queue_room(ctx.store.as_ref(), &args.dag, ctx.settings.max_queued_runs)
        .await
        .map_err(anyhow::Error::new)?;
    let (_engine, run) = create_manual_run(&ctx, &args).await?;
    if !wait {
        if args.json {
            print_run(&ctx, &run.run_id).await?;
        } else {
            println!("{}", run.run_id);
        }
        return Ok(0);
    }
    let poll = ctx.settings.engine.poll_interval;
    let ok = follow(
        ctx.store.as_ref(),
        std::slice::from_ref(&run.run_id),
        "run",
        poll,
    )
    .await?;
    if args.json {
        print_run(&ctx, &run.run_id).await?;
    } else {
        println!("{}", run.run_id);
    }
    Ok(if ok { 0 } else { 1 })
}

async fn runs_list(
    g: &Global,
    dag: Option<String>,
    state: Option<String>,
    limit: i64,
    json: bool,
) -> Result<u8> {
    let state = state
        .map(|s| s.parse::<RunState>().map_err(usage))
        .transpose()?;
    if limit < 0 {
        return Err(usage("--limit must be 0 or more"));
    }
    let ctx = open(g).await?;
    let runs = ctx
        .store
        .list_runs(&RunFilter {
            dag_id: dag,
            state,
            limit,
            before: None,
            before_run_id: None,
        })
        .await?;
    let masker = ctx.secrets.masker();
    if json {
        let v: Vec<_> = runs.iter().map(|r| run_json(r, None, &masker)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let rows = runs
            .iter()
            .map(|r| {
                vec![
                    r.run_id.clone(),
                    r.state.as_str().to_string(),
                    rfc3339(r.logical_date),
                    short_ts(r.started_at),
                    short_ts(r.ended_at),
                ]
            })
            .collect();
        println!(
            "{}",
            table(&["run", "state", "logical date", "started", "ended"], rows)
        );
    }
    Ok(0)
}

async fn runs_show(g: &Global, run_id: &str, json: bool) -> Result<u8> {
    let ctx = open(g).await?;
    let Some(run) = ctx.store.get_run(run_id).await? else {
        return Err(usage(format!(
            "unknown run '{run_id}': see `flow runs list`"
        )));
    };
    if json {
        print_run(&ctx, run_id).await?;
        return Ok(0);
    }
    let tis = ctx.store.task_instances(run_id).await?;
    println!(
        "run {}\n  dag: {}\n  state: {}\n  logical date: {}\n  started: {}\n  ended: {}",
        run.run_id,
        run.dag_id,
        run.state,
        rfc3339(run.logical_date),
        short_ts(run.started_at),
        short_ts(run.ended_at)
    );
    let rows = tis
        .iter()
        .map(|t| {
            vec![
                t.task_id.clone(),
                if t.map_index == UNMAPPED {
                    "-".into()
                } else {
                    t.map_index.to_string()
                },
                t.state.as_str().to_string(),
                t.try_number.to_string(),
                short_ts(t.started_at),
                short_ts(t.ended_at),
                t.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(
            &["task", "map", "state", "tries", "started", "ended", "error"],
            rows
        )
    );
    Ok(0)
}

async fn task_logs(
    g: &Global,
    run_id: &str,
    task: &str,
    try_number: Option<i64>,
    map_index: Option<i64>,
) -> Result<u8> {
    let ctx = open(g).await?;
    let roots = ops::LogRoots {
        home: &ctx.settings.home,
        remote: ctx.settings.engine.remote_logs.as_ref().map(|r| &r.archive),
    };
    let target = ops::log_target(
        ctx.store.as_ref(),
        roots,
        run_id,
        task,
        try_number,
        map_index,
    )
    .await
    .map_err(op_err)?;
    if target.try_number == 0 {
        return Err(usage(format!(
            "task '{task}' of run {run_id} has not had a try yet"
        )));
    }
    let chunk = ops::read_log(
        ctx.store.as_ref(),
        &target,
        &ctx.secrets.masker(),
        0,
        u64::MAX,
    )
    .await
    .map_err(op_err)?;
    print!("{}", chunk.content);
    if !chunk.content.is_empty() && !chunk.content.ends_with('\n') {
        println!();
    }
    Ok(0)
}

async fn task_clear(g: &Global, run_id: &str, task: &str, downstream: bool) -> Result<u8> {
    let ctx = open(g).await?;
    let catalog = DagCatalog::new(
        ctx.store.clone(),
        Arc::new(flow_operators::registry(ctx.settings.connections.clone())),
    );
    let ids = ops::clear(&catalog, run_id, task, downstream)
        .await
        .map_err(op_err)?;
    eprintln!(
        "cleared {} in run {run_id}; the run is queued again",
        ids.join(", ")
    );
    Ok(0)
}

async fn models(g: &Global, command: ModelsCommand) -> Result<u8> {
    let ctx = open(g).await?;
    match command {
        ModelsCommand::List { json } => {
            let models = ctx.store.models().await?;
            if json {
                let list: Vec<serde_json::Value> = models.iter().map(model_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                let rows = models
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            m.versions.to_string(),
                            m.latest_version.to_string(),
                            m.production_version
                                .map_or("-".to_string(), |v| v.to_string()),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    table(&["model", "versions", "latest", "production"], rows)
                );
            }
            Ok(0)
        }
        ModelsCommand::Show { model, json } => {
            let versions = ctx.store.model_versions(&model).await?;
            if versions.is_empty() {
                return Err(usage(format!(
                    "unknown model '{model}': see `flow models list`"
                )));
            }
            let uses = ctx
                .store
                .model_predictions(&model, crate::render::LINEAGE_USES)
                .await?;
            if json {
                let list = crate::render::model_versions_json(&versions, &uses);
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{}", versions_table(&versions, &uses));
            }
            Ok(0)
        }
        ModelsCommand::Promote {
            model,
            number: version,
        } => promote(&ctx, &model, version).await,
        ModelsCommand::Rollback { model } => rollback(&ctx, &model).await,
    }
}

/// `flow models show`: a version per line with its lineage: the run that trained it, the dataset
/// events it was trained on, and the runs that scored with it.
fn versions_table(
    versions: &[flow_engine::store::ModelVersion],
    uses: &[flow_engine::store::PredictionUse],
) -> String {
    let rows = versions
        .iter()
        .map(|v| {
            let trained_on = match (&v.new.dataset, v.events.as_slice()) {
                (None, _) => v.new.training_set.clone(),
                (Some(uri), []) => format!("{uri} (no event)"),
                (Some(uri), events) => {
                    let ids: Vec<String> = events.iter().map(|e| format!("#{}", e.id)).collect();
                    format!("{uri} event {}", ids.join(", "))
                }
            };
            let used: Vec<&str> = uses
                .iter()
                .filter(|u| u.version == v.version)
                .map(|u| u.run_id.as_str())
                .collect();
            let predictions = match used.as_slice() {
                [] => "-".to_string(),
                [one] => one.to_string(),
                [latest, rest @ ..] => format!("{latest} (+{} more)", rest.len()),
            };
            vec![
                v.version.to_string(),
                v.stage.as_str().to_string(),
                v.new.algorithm.clone(),
                v.new.metrics.to_string(),
                short_ts(Some(v.new.created_at)),
                format!("{} ({} {})", v.new.run_id, v.new.dag_id, v.new.dag_version),
                trained_on,
                predictions,
            ]
        })
        .collect();
    table(
        &[
            "version",
            "stage",
            "algorithm",
            "metrics",
            "created",
            "trained by",
            "trained on",
            "predictions",
        ],
        rows,
    )
}

async fn promote(ctx: &Ctx, model: &str, version: i64) -> Result<u8> {
    let previous = ops::promote_by_hand(ctx.store.as_ref(), model, version)
        .await
        .map_err(op_err)?;
    eprintln!(
        "{model} version {version} is production{}",
        previous
            .filter(|p| *p != version)
            .map_or(String::new(), |p| format!(" (version {p} archived)"))
    );
    Ok(0)
}

async fn rollback(ctx: &Ctx, model: &str) -> Result<u8> {
    let done = ops::rollback(ctx.store.as_ref(), model)
        .await
        .map_err(op_err)?;
    eprintln!(
        "{model}: version {} is production again (version {} archived)",
        done.to, done.from
    );
    Ok(0)
}
