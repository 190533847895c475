//! `flow db clean` and the scheduler's `[retention]` policy (issue 23): both run
//! [`flow_engine::scheduler::retention::clean`].

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};
use flow_engine::schedule::{parse_date, parse_duration};
use flow_engine::scheduler::retention::{CleanPlan, CleanReport, clean as clean_history};
use flow_engine::time::{now, rfc3339};
use tokio_util::sync::CancellationToken;

use crate::cli::Global;
use crate::context::{Ctx, engine_err, open, usage};

/// `--before`: an age (`90d`) counted back from `now`, or a date (UTC).
pub(crate) fn cutoff(before: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Ok(age) = parse_duration(before) {
        let age = chrono::Duration::from_std(age).map_err(|e| e.to_string())?;
        return Ok(now - age);
    }
    parse_date(before, chrono_tz::UTC)
        .map_err(|e| format!("'{before}' is neither an age (90d) nor a date: {e}"))
}

fn describe(r: &CleanReport, before: DateTime<Utc>, dry_run: bool) -> String {
    format!(
        "{} {} run(s) ended and queued before {} (with their tries and {} local log folder(s)), \
         {} unused DAG version(s), {} dataset event(s)",
        if dry_run { "would delete" } else { "deleted" },
        r.runs,
        rfc3339(before),
        r.log_folders,
        r.versions,
        r.dataset_events
    )
}

pub(crate) async fn clean(
    g: &Global,
    before: &str,
    dag_id: Option<String>,
    dry_run: bool,
) -> Result<u8> {
    let cut = cutoff(before, now()).map_err(|e| usage(format!("--before: {e}")))?;
    let ctx = open(g).await?;
    let plan = CleanPlan {
        before: cut,
        dag_id,
        dry_run,
    };
    let report = clean_history(
        &ctx.store,
        &ctx.settings.home,
        ctx.settings.engine.remote_logs.as_ref(),
        &plan,
    )
    .await
    .map_err(engine_err)?;
    println!("{}", describe(&report, cut, dry_run));
    Ok(0)
}

/// With `[retention] max_age`, cleans at start and then every `every` (default 1h) until
/// `shutdown`, beside the scheduler and never inside its loop.
pub(crate) fn keep_clean(ctx: &Ctx, shutdown: CancellationToken) -> Result<()> {
    let Some(max_age) = &ctx.settings.retention.max_age else {
        return Ok(());
    };
    let age = parse_duration(max_age)
        .map_err(|e| anyhow::anyhow!("flow.toml: [retention] max_age: {e}"))?;
    let every = match &ctx.settings.retention.every {
        Some(s) => {
            parse_duration(s).map_err(|e| anyhow::anyhow!("flow.toml: [retention] every: {e}"))?
        }
        None => Duration::from_secs(3600),
    };
    let age = chrono::Duration::from_std(age)?;
    let (store, home) = (ctx.store.clone(), ctx.settings.home.clone());
    let remote = ctx.settings.engine.remote_logs.clone();
    tokio::spawn(async move {
        loop {
            let plan = CleanPlan {
                before: now() - age,
                dag_id: None,
                dry_run: false,
            };
            match clean_history(&store, &home, remote.as_ref(), &plan).await {
                Ok(r) if r != CleanReport::default() => {
                    tracing::info!("retention: {}", describe(&r, plan.before, false))
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("retention: {e}"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
    Ok(())
}
