//! Planning one run: read its snapshot, let the pure planner decide, commit the decisions, and
//! post the run's webhook when a decision ends it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::{Engine, EngineError};
use crate::dag::{Dag, ForEach};
use crate::notify::{self, RunEnded};
use crate::plan::{Decision, plan};
use crate::state::{RunState, TaskState};
use crate::store::{PlanRows, RunRow, Wake};

/// What planning a run left: its state after the decisions (None when the run is gone), and
/// when it next needs a look by time alone (a retry delay, a sensor's poke).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Planned {
    pub state: Option<RunState>,
    pub wake_at: Option<DateTime<Utc>>,
}

impl Engine {
    /// Plans one run and applies the decisions.
    pub(super) async fn plan_run(
        &mut self,
        run_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Planned, EngineError> {
        let Some(run) = self.store.get_run(run_id).await? else {
            return Ok(Planned::default());
        };
        let unchanged = Planned {
            state: Some(run.state),
            wake_at: None,
        };
        if run.state != RunState::Running {
            return Ok(unchanged);
        }
        let Some(dag) = self.catalog.version(&run.dag_id, &run.dag_version).await? else {
            tracing::error!(
                "run {run_id}: its DAG version {} is not stored",
                run.dag_version
            );
            return Ok(unchanged);
        };
        let rows = self.store.plan_rows(run_id, &rendering(&dag)).await?;
        let failed = failed_tasks(&rows);
        let snap = crate::executor::plan_snapshot(&run, rows);
        let p = plan(&dag, &snap, &self.secrets, now);
        let applied = self.store.apply(run_id, &p.decisions, now).await?;
        let queued = p
            .decisions
            .iter()
            .any(|d| matches!(d, Decision::Queue { .. } | Decision::Expand { .. }));
        if queued && !self.duties.run_tasks {
            // Workers claim on this rather than on their next poll.
            self.store.wake(&Wake::Ready).await;
        }
        let finished = p.decisions.iter().find_map(|d| match d {
            Decision::FinishRun(s) => Some(*s),
            _ => None,
        });
        if let Some(state) = finished {
            if !applied.finished {
                // Another scheduler ended it a moment ago, and posts its webhook.
                return Ok(Planned {
                    state: self.store.get_run(run_id).await?.map(|r| r.state),
                    wake_at: None,
                });
            }
            tracing::info!("run {run_id} ended {state}");
            crate::telemetry::run_ended(&run, state, now);
            self.store.wake(&Wake::Ended(run_id.to_string())).await;
            self.notify(&dag, &run, state, failed);
            return Ok(Planned {
                state: Some(state),
                wake_at: None,
            });
        }
        Ok(Planned {
            state: Some(run.state),
            wake_at: p.wake_at,
        })
    }

    /// Posts the run's end to its webhook, off the loop; the post is awaited at shutdown.
    fn notify(&mut self, dag: &Dag, run: &RunRow, state: RunState, mut failed_tasks: Vec<String>) {
        let webhook = match state {
            RunState::Failed => dag
                .on_failure
                .as_ref()
                .map(|n| n.webhook.clone())
                .or_else(|| self.config.default_webhook.clone()),
            RunState::Success => dag.on_success.as_ref().map(|n| n.webhook.clone()),
            _ => None,
        };
        let Some(webhook) = webhook else { return };
        failed_tasks.dedup();
        let ev = RunEnded {
            dag_id: dag.id.clone(),
            run_id: run.run_id.clone(),
            state: state.as_str().to_string(),
            failed_tasks,
            url: format!(
                "{}/runs/{}",
                self.config.base_url.trim_end_matches('/'),
                run.run_id
            ),
        };
        let body = notify::message(&ev);
        self.post_in_background(webhook, &ev.dag_id, &ev.run_id, body);
    }

    /// Posts `body` to the webhook off the loop; the post is awaited at shutdown.
    pub(super) fn post_in_background(
        &mut self,
        webhook: String,
        dag_id: &str,
        run_id: &str,
        body: serde_json::Value,
    ) {
        let secrets = self.secrets.clone();
        let (dag_id, run_id) = (dag_id.to_string(), run_id.to_string());
        self.notifications.retain(|h| !h.is_finished());
        self.notifications
            .push(tokio::task::spawn_blocking(move || {
                notify::post_logged(&webhook, &dag_id, &run_id, &body, &secrets, "notification");
            }));
    }
}

/// The tasks whose outputs the planner reads: the ancestors of those that render `when` or a
/// templated `for_each`. Reading no other outputs keeps a wide run's snapshot small.
fn rendering(dag: &Dag) -> Vec<String> {
    dag.tasks
        .iter()
        .filter(|t| t.when.is_some() || matches!(t.for_each, Some(ForEach::Template(_))))
        .flat_map(|t| dag.ancestors(&t.id).into_iter().map(String::from))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The failed tasks a run-end notification names, in the snapshot's order.
fn failed_tasks(rows: &PlanRows) -> Vec<String> {
    rows.rows
        .iter()
        .filter(|t| t.state == TaskState::Failed)
        .map(|t| t.task_id.clone())
        .chain(
            rows.counts
                .iter()
                .filter(|c| c.state == TaskState::Failed)
                .map(|c| c.task_id.clone()),
        )
        .collect()
}
