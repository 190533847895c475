//! `flow backfill DAG --from --to [...]`, `flow backfill cancel ID` and `flow backfill list`
//! (issue 23: backfills as objects; see [`flow_engine::scheduler::backfills`]).

use anyhow::Result;
use chrono::{DateTime, Utc};
use flow_engine::dag::Dag;
use flow_engine::schedule::parse_date;
use flow_engine::scheduler::backfills::{BackfillRequest, create_backfill};
use flow_engine::state::RunState;
use flow_engine::store::{Backfill, BackfillProgress, Rerun};
use flow_engine::time::{now, rfc3339};

use crate::cli::{BackfillArgs, BackfillCommand, Global};
use crate::context::{Ctx, engine, engine_err, find_dag, open, usage};
use crate::progress::follow;

pub(crate) async fn run(g: &Global, args: BackfillArgs) -> Result<u8> {
    match args.command {
        Some(BackfillCommand::Cancel { id }) => cancel(g, &id).await,
        Some(BackfillCommand::List { dag, json }) => list(g, dag.as_deref(), json).await,
        None => create(g, args).await,
    }
}

/// A day or timestamp for --from/--to: a date means that whole day in the DAG's timezone.
pub(crate) fn day_bound(text: &str, dag: &Dag, end: bool, flag: &str) -> Result<DateTime<Utc>> {
    let t = parse_date(text, dag.timezone).map_err(|e| usage(format!("{flag}: {e}")))?;
    let is_date = text.len() == 10;
    Ok(if end && is_date {
        // The whole last day: up to just before the next local midnight.
        let next = text
            .parse::<chrono::NaiveDate>()
            .ok()
            .and_then(|d| d.succ_opt())
            .map(|d| d.format("%Y-%m-%d").to_string())
            .and_then(|s| parse_date(&s, dag.timezone).ok())
            .unwrap_or(t);
        next - chrono::Duration::microseconds(1)
    } else {
        t
    })
}

async fn create(g: &Global, args: BackfillArgs) -> Result<u8> {
    let (Some(dag_id), Some(from), Some(to)) = (&args.dag, &args.from, &args.to) else {
        return Err(usage("give DAG, --from and --to"));
    };
    let ctx = open(g).await?;
    let engine = engine(&ctx).await?;
    let dag = find_dag(&engine, dag_id)?;
    let req = BackfillRequest {
        from: day_bound(from, &dag, false, "--from")?,
        to: day_bound(to, &dag, true, "--to")?,
        params: dag.params_from_cli(&args.params).map_err(usage)?,
        rerun: Rerun::parse(&args.rerun).unwrap_or(Rerun::None),
        reverse: args.reverse,
        max_active_runs: args.max_active_runs,
        dry_run: args.dry_run,
    };
    if req.to < req.from {
        return Err(usage("--to is before --from"));
    }
    let made = create_backfill(ctx.store.as_ref(), &dag, &req)
        .await
        .map_err(engine_err)?;
    if args.dry_run {
        for iv in &made.intervals {
            println!("{} {}", rfc3339(iv.start), rfc3339(iv.end));
        }
        eprintln!(
            "backfill of {dag_id}: {} interval(s); nothing created (--dry-run)",
            made.intervals.len()
        );
        return Ok(0);
    }
    let Some(backfill) = made.backfill else {
        eprintln!(
            "backfill of {dag_id}: no interval of its schedule falls in the range: 0 run(s) created"
        );
        return Ok(0);
    };
    eprintln!(
        "backfill {} of {dag_id}: {} interval(s); {} run(s) created, {} already existed{}; \
         the schedulers create the rest as runs end (at most {} at once)",
        backfill.id,
        made.intervals.len(),
        made.first.created.len(),
        made.first.existing.len(),
        if made.first.rerun.is_empty() {
            String::new()
        } else {
            format!(" ({} run again)", made.first.rerun.len())
        },
        backfill.max_active_runs,
    );
    for id in &made.first.created {
        println!("{id}");
    }
    if !args.wait {
        return Ok(0);
    }
    Ok(if wait_for(&ctx, &backfill.id).await? {
        0
    } else {
        1
    })
}

/// Follows the backfill's runs, the existing ones it covers included, until it is over and they
/// have ended; whether every one succeeded.
async fn wait_for(ctx: &Ctx, id: &str) -> Result<bool> {
    let poll = ctx.settings.engine.poll_interval;
    loop {
        let ids = ctx.store.backfill_run_ids(id).await?;
        let ok = follow(ctx.store.as_ref(), &ids, "backfill", poll).await?;
        let b = ctx.store.get_backfill(id).await?;
        let over = b.as_ref().is_none_or(|b| b.state != "running");
        if over && ctx.store.backfill_run_ids(id).await? == ids {
            let mut all = ok;
            for run_id in &ids {
                let state = ctx.store.get_run(run_id).await?.map(|r| r.state);
                all &= state == Some(RunState::Success);
            }
            return Ok(all);
        }
        tokio::time::sleep(poll).await;
    }
}

async fn cancel(g: &Global, id: &str) -> Result<u8> {
    let ctx = open(g).await?;
    match ctx.store.cancel_backfill(id, now()).await? {
        None => Err(usage(format!(
            "no backfill '{id}': `flow backfill list` lists them"
        ))),
        Some(failed) => {
            eprintln!("backfill {id} cancelled; {failed} run(s) that never started failed");
            Ok(0)
        }
    }
}

/// A backfill as `flow backfill list --json` and the API show it.
pub fn backfill_json(b: &Backfill, p: &BackfillProgress) -> serde_json::Value {
    serde_json::json!({
        "id": b.id,
        "dag_id": b.dag_id,
        "from": rfc3339(b.from),
        "to": rfc3339(b.to),
        "params": b.params,
        "rerun": b.rerun.as_str(),
        "reverse": b.reverse,
        "max_active_runs": b.max_active_runs,
        "state": b.state,
        "created": b.created,
        "existing": b.existing,
        "runs": {"queued": p.queued, "running": p.running, "success": p.success, "failed": p.failed},
        "created_at": rfc3339(b.created_at),
        "ended_at": b.ended_at.map(rfc3339),
    })
}

async fn list(g: &Global, dag: Option<&str>, json: bool) -> Result<u8> {
    let ctx = open(g).await?;
    let mut items = Vec::new();
    for b in ctx.store.list_backfills(dag).await? {
        let p = ctx.store.backfill_progress(&b.id).await?;
        items.push(backfill_json(&b, &p));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        for b in &items {
            println!(
                "{} {} {} {}..{} runs: {}",
                b["id"].as_str().unwrap_or_default(),
                b["dag_id"].as_str().unwrap_or_default(),
                b["state"].as_str().unwrap_or_default(),
                b["from"].as_str().unwrap_or_default(),
                b["to"].as_str().unwrap_or_default(),
                b["runs"]
            );
        }
    }
    Ok(0)
}
