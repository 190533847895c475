//! Runs started by dataset events (issue 23): a DAG scheduled on datasets gets a run once its
//! queued events meet its condition (`mode: any|all`). The store takes the events and creates
//! the run in one transaction, so two schedulers never both start a run for the same events.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::runs::new_run;
use super::{Engine, EngineError};
use crate::dag::{Dag, DatasetMode};
use crate::state::RunType;
use crate::store::{DatasetTrigger, RunRow};

impl Engine {
    /// Creates the dataset-triggered runs that are due; returns how many. A paused DAG, or one
    /// at `max_active_runs`, keeps its events queued for later, as Airflow does.
    pub(super) async fn create_dataset_runs(
        &mut self,
        now: DateTime<Utc>,
        active: &[RunRow],
        paused: &BTreeMap<String, bool>,
    ) -> Result<usize, EngineError> {
        let consumers: Vec<Arc<Dag>> = self
            .catalog
            .current()
            .filter(|d| d.datasets.is_some())
            .cloned()
            .collect();
        if consumers.is_empty() {
            return Ok(0);
        }
        let waiting = self.store.dags_with_queued_events().await?;
        let mut created = 0;
        for dag in consumers.iter().filter(|d| waiting.contains(&d.id)) {
            let running = active.iter().filter(|r| r.dag_id == dag.id).count();
            if paused.get(&dag.id).copied().unwrap_or(dag.paused)
                || running >= dag.max_active_runs as usize
            {
                continue;
            }
            let Some(schedule) = &dag.datasets else {
                continue;
            };
            let params = match dag.resolve_params(&Default::default()) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("DAG {}: cannot start a dataset-triggered run: {e}", dag.id);
                    continue;
                }
            };
            let trigger = DatasetTrigger {
                dag_id: dag.id.clone(),
                uris: schedule.uris(),
                all: schedule.mode == DatasetMode::All,
                run: new_run(dag, RunType::DatasetTriggered, now, None, params, now),
            };
            if let Some(run_id) = self.store.trigger_on_datasets(&trigger).await? {
                tracing::info!("created run {run_id} on dataset events");
                created += 1;
            }
        }
        Ok(created)
    }
}
