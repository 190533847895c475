//! The scheduler's alerts: missed SLAs and runs stuck queued, found on full passes among the
//! active runs, each posted once across schedulers (the first to record it in the database
//! posts it).

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Engine, EngineError};
use crate::alerts::{self, Alert, TaskStateAt};
use crate::store::{AlertKey, RunRow};

/// What this scheduler has already settled, so that a full pass reads the database only for
/// alerts it has not: alerts sent (by it or another scheduler) and task SLAs met.
#[derive(Default)]
pub(super) struct Alerted {
    settled: HashSet<AlertKey>,
}

impl Alerted {
    fn forget_ended(&mut self, active: &[RunRow]) {
        if self.settled.is_empty() {
            return;
        }
        let live: HashSet<&str> = active.iter().map(|r| r.run_id.as_str()).collect();
        self.settled.retain(|k| live.contains(k.run_id.as_str()));
    }
}

impl Engine {
    /// Posts the alerts due for the active runs.
    pub(super) async fn post_due_alerts(
        &mut self,
        now: DateTime<Utc>,
        active: &[RunRow],
    ) -> Result<(), EngineError> {
        self.alerted.forget_ended(active);
        for run in active {
            let Some(dag) = self.catalog.version(&run.dag_id, &run.dag_version).await? else {
                continue;
            };
            let mut due = alerts::run_alerts_due(
                &dag,
                run,
                now,
                self.config.stuck_queued,
                &self.config.base_url,
            );
            if alerts::task_sla_passed(&dag, run, now) && self.task_slas_open(&dag, run) {
                let instances = self.store.task_instances(&run.run_id).await?;
                let states: Vec<TaskStateAt<'_>> = instances
                    .iter()
                    .map(|t| TaskStateAt {
                        task_id: &t.task_id,
                        state: t.state,
                    })
                    .collect();
                let late = alerts::task_alerts_due(&dag, run, &states, now, &self.config.base_url);
                self.settle_met_slas(&dag, run, now, &late);
                due.extend(late);
            }
            if due.is_empty() {
                continue;
            }
            // A missed SLA or a stuck run goes where the run's failure would.
            let webhook = dag
                .on_failure
                .as_ref()
                .map(|n| n.webhook.clone())
                .or_else(|| self.config.default_webhook.clone());
            for alert in due {
                self.post_once(alert, webhook.as_deref(), now).await?;
            }
        }
        Ok(())
    }

    /// Some task SLA of the run is neither alerted nor met yet.
    fn task_slas_open(&self, dag: &crate::dag::Dag, run: &RunRow) -> bool {
        dag.tasks
            .iter()
            .filter(|t| t.sla.is_some())
            .any(|t| !self.alerted.settled.contains(&sla_key(run, Some(&t.id))))
    }

    /// Task SLAs whose deadline passed with the task done are settled for good.
    fn settle_met_slas(
        &mut self,
        dag: &crate::dag::Dag,
        run: &RunRow,
        now: DateTime<Utc>,
        late: &[Alert],
    ) {
        for t in dag.tasks.iter().filter(|t| t.sla.is_some()) {
            let passed = alerts::task_sla_passed_for(t, run, now);
            let alerted = late.iter().any(|a| a.task_id.as_deref() == Some(&t.id));
            if passed && !alerted {
                self.alerted.settled.insert(sla_key(run, Some(&t.id)));
            }
        }
    }

    /// Records the alert, and posts it when this scheduler recorded it first.
    async fn post_once(
        &mut self,
        alert: Alert,
        webhook: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), EngineError> {
        let key = alert.key();
        if self.alerted.settled.contains(&key) {
            return Ok(());
        }
        let first = self.store.first_alert(&key, now).await?;
        self.alerted.settled.insert(key);
        if !first {
            return Ok(());
        }
        let message = alert.message();
        tracing::warn!("{}", message["text"].as_str().unwrap_or_default());
        if let Some(webhook) = webhook {
            self.post_in_background(webhook.to_string(), &alert.dag_id, &alert.run_id, message);
        }
        Ok(())
    }
}

fn sla_key(run: &RunRow, task_id: Option<&str>) -> AlertKey {
    AlertKey {
        run_id: run.run_id.clone(),
        kind: alerts::AlertKind::SlaMissed.as_str(),
        task_id: task_id.map(str::to_string),
    }
}
