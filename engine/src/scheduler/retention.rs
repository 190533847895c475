//! Deleting old history (issue 23): `flow db clean` and the `[retention]` policy. Runs go in
//! batches, each its logs first (local and remote) and then its rows in one short transaction,
//! so a scheduler writing meanwhile waits at most one batch, and a clean cut short by a crash
//! leaves only rows the next clean deletes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::EngineError;
use crate::log::RemoteLogs;
use crate::store::{OldRun, OldRuns, Store};

/// Runs deleted per transaction.
const BATCH: i64 = 500;

/// What to clean.
#[derive(Debug, Clone)]
pub struct CleanPlan {
    /// Runs queued before this (and ended) go, with the versions and events only they used.
    pub before: DateTime<Utc>,
    pub dag_id: Option<String>,
    /// Count, delete nothing.
    pub dry_run: bool,
}

/// What a clean deleted, or would delete.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CleanReport {
    pub runs: u64,
    pub log_folders: u64,
    pub versions: u64,
    pub dataset_events: u64,
}

/// Deletes (or counts) what `plan` names. `home` holds the local logs; `remote`, when set, the
/// archived copies.
pub async fn clean(
    store: &Arc<dyn Store>,
    home: &Path,
    remote: Option<&RemoteLogs>,
    plan: &CleanPlan,
) -> Result<CleanReport, EngineError> {
    let mut report = CleanReport::default();
    let mut after = None;
    loop {
        let q = OldRuns {
            before: plan.before,
            dag_id: plan.dag_id.clone(),
            // A dry run pages on; a real one finds the next batch where the last one was.
            after: if plan.dry_run { after.clone() } else { None },
            limit: BATCH,
        };
        let batch = store.old_runs(&q).await?;
        let Some(last) = batch.last() else { break };
        after = Some(last.run_id.clone());
        if plan.dry_run {
            report.runs += batch.len() as u64;
            continue;
        }
        for run in &batch {
            report.log_folders += delete_logs(home, remote, run).await;
        }
        let ids: Vec<String> = batch.into_iter().map(|r| r.run_id).collect();
        report.runs += store.delete_runs(&ids).await?;
        // Let the scheduler's writes in between batches.
        tokio::task::yield_now().await;
    }
    report.versions = store
        .unused_versions(plan.dag_id.as_deref(), plan.dry_run)
        .await?;
    if plan.dag_id.is_none() {
        report.dataset_events = store.old_dataset_events(plan.before, plan.dry_run).await?;
    }
    Ok(report)
}

/// A run's log folder (`logs/dag_id=D/run_id=R`), as [`crate::log::log_key`] names its files.
fn log_folder(run: &OldRun) -> String {
    format!("dag_id={}/run_id={}", run.dag_id, run.run_id)
}

/// Deletes a run's local and remote logs; 1 when the local folder existed. A log that cannot be
/// deleted is logged, not fatal: the run's rows still go, and the files are only disk.
async fn delete_logs(home: &Path, remote: Option<&RemoteLogs>, run: &OldRun) -> u64 {
    let folder = log_folder(run);
    let local: PathBuf = home.join("logs").join(&folder);
    let existed = match tokio::fs::remove_dir_all(&local).await {
        Ok(()) => 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => {
            tracing::warn!("cannot delete {}: {e}", local.display());
            0
        }
    };
    if let Some(remote) = remote {
        match remote.archive.list(&folder).await {
            Ok(objects) => {
                for o in objects {
                    if let Err(e) = remote.archive.delete(&o.key).await {
                        tracing::warn!("{e}");
                    }
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    existed
}
