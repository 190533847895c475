//! Run creation: manual runs (`flow trigger`, `flow run`, the API), backfills, and the
//! scheduled runs the loop creates when an interval ends; then queued runs are started within
//! each DAG's `max_active_runs`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::{Engine, EngineError, Mode};
use crate::dag::Dag;
use crate::schedule::{DataInterval, NextRun};
use crate::state::{RunState, RunType};
use crate::store::{NewRun, NewTaskInstance, RunRow, Store};
use crate::time::now;

/// Builds a run id: `DAG__LOGICALDATE__TYPE[_suffix]`, URL-safe as the contract requires.
pub fn run_id(dag_id: &str, logical: DateTime<Utc>, run_type: RunType) -> String {
    let ts = logical.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    match run_type {
        RunType::Manual => format!("{dag_id}__{ts}__manual_{:08x}", rand::random::<u32>()),
        other => format!("{dag_id}__{ts}__{}", other.as_str()),
    }
}

/// The run a trigger creates: params resolved against the DAG's declarations, logical date
/// the trigger time unless given, data interval from the schedule when the date is a fire time.
pub(crate) fn new_run(
    dag: &Dag,
    run_type: RunType,
    logical_date: DateTime<Utc>,
    interval: Option<DataInterval>,
    params: serde_json::Map<String, Json>,
    queued_at: DateTime<Utc>,
) -> NewRun {
    let interval = interval.unwrap_or(DataInterval {
        start: logical_date,
        end: logical_date,
    });
    NewRun {
        run_id: run_id(&dag.id, logical_date, run_type),
        dag_id: dag.id.clone(),
        dag_version: dag.version.clone(),
        run_type,
        logical_date,
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        params: Json::Object(params),
        tasks: dag
            .tasks
            .iter()
            .map(|t| NewTaskInstance {
                task_id: t.id.clone(),
                priority: t.priority,
                pool: t.pool.clone(),
                queue: t.queue.clone(),
            })
            .collect(),
        queued_at,
    }
}

/// The manual run a trigger asks for, not yet stored: params checked against the declarations.
pub fn manual_run(
    dag: &Dag,
    given: &serde_json::Map<String, Json>,
    logical_date: Option<DateTime<Utc>>,
) -> Result<NewRun, EngineError> {
    let params = dag.resolve_params(given).map_err(EngineError::Input)?;
    let queued_at = now();
    let logical = logical_date.unwrap_or(queued_at);
    // A manual run whose logical date falls on the schedule covers that interval; any other
    // covers the instant itself, as Airflow does.
    let interval = dag.timetable().and_then(|tt| tt.interval_for(logical));
    Ok(new_run(
        dag,
        RunType::Manual,
        logical,
        interval,
        params,
        queued_at,
    ))
}

/// Creates a manual run (`flow trigger`, `flow run`, the API).
pub async fn trigger(
    store: &dyn Store,
    dag: &Dag,
    given: &serde_json::Map<String, Json>,
    logical_date: Option<DateTime<Utc>>,
) -> Result<RunRow, EngineError> {
    let run = manual_run(dag, given, logical_date)?;
    store.create_run(&run).await?;
    store
        .get_run(&run.run_id)
        .await?
        .ok_or(EngineError::RunVanished(run.run_id))
}

/// When the next scheduled run of `dag` will be created (its interval's end), if ever.
pub async fn next_run_at(
    store: &dyn Store,
    dag: &Dag,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, EngineError> {
    let Some(tt) = dag.timetable() else {
        return Ok(None);
    };
    let last = store.latest_logical_date(&dag.id).await?;
    Ok(match tt.next_run(last, now) {
        NextRun::Due(iv) => Some(iv.end),
        NextRun::NotBefore(t) => Some(t),
        NextRun::Never => None,
    })
}

impl Engine {
    /// Creates the scheduled runs that are due; returns how many.
    pub(super) async fn create_due_runs(
        &mut self,
        now: DateTime<Utc>,
        active: &[RunRow],
        paused: &BTreeMap<String, bool>,
    ) -> Result<usize, EngineError> {
        let mut created = 0;
        let mut active_per_dag: HashMap<&str, u32> = HashMap::new();
        for r in active {
            *active_per_dag.entry(r.dag_id.as_str()).or_default() += 1;
        }
        let dags: Vec<Arc<Dag>> = self.catalog.current().cloned().collect();
        for dag in dags {
            if paused.get(&dag.id).copied().unwrap_or(dag.paused)
                || self.next_due.get(&dag.id).is_some_and(|t| *t > now)
            {
                continue;
            }
            let active = active_per_dag.get(dag.id.as_str()).copied().unwrap_or(0);
            created += self.create_due_runs_of(&dag, now, active).await?;
        }
        created += self.create_dataset_runs(now, active, paused).await?;
        created += self.advance_backfills().await?;
        Ok(created)
    }

    /// Creates `dag`'s due runs: with catchup every interval that ended, else the latest, as
    /// long as `max_active_runs` leaves room; notes when the DAG next needs a look.
    async fn create_due_runs_of(
        &mut self,
        dag: &Dag,
        now: DateTime<Utc>,
        mut active: u32,
    ) -> Result<usize, EngineError> {
        let Some(tt) = dag.timetable() else {
            return Ok(0);
        };
        let mut created = 0;
        loop {
            let last = self.store.latest_logical_date(&dag.id).await?;
            match tt.next_run(last, now) {
                NextRun::Due(iv) => {
                    if active >= dag.max_active_runs {
                        // Look again on the next pass; a run ending frees a slot.
                        self.next_due.remove(&dag.id);
                        return Ok(created);
                    }
                    let params = match dag.resolve_params(&Default::default()) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!("DAG {}: cannot schedule: {e}", dag.id);
                            return Ok(created);
                        }
                    };
                    let run = new_run(dag, RunType::Scheduled, iv.start, Some(iv), params, now);
                    if self.store.create_run(&run).await? {
                        tracing::info!("created run {}", run.run_id);
                        active += 1;
                        created += 1;
                    }
                    // The timetable computes the next interval from the one just created
                    // (without catchup, only the latest ever comes back as due).
                }
                NextRun::NotBefore(t) => {
                    self.next_due.insert(dag.id.clone(), t);
                    self.store.set_next_run_at(&dag.id, Some(t)).await?;
                    return Ok(created);
                }
                NextRun::Never => {
                    self.next_due
                        .insert(dag.id.clone(), DateTime::<Utc>::MAX_UTC);
                    self.store.set_next_run_at(&dag.id, None).await?;
                    return Ok(created);
                }
            }
        }
    }

    /// Moves queued runs to running, oldest logical date first, within each DAG's max_active_runs.
    pub(super) async fn start_runs(
        &mut self,
        mode: &Mode,
        now: DateTime<Utc>,
        active: &[RunRow],
        paused: &BTreeMap<String, bool>,
    ) -> Result<Vec<String>, EngineError> {
        let mut running: HashMap<String, u32> = HashMap::new();
        for r in active {
            if r.state == RunState::Running {
                *running.entry(r.dag_id.clone()).or_default() += 1;
            }
        }
        let mut started = Vec::new();
        for r in active.iter().filter(|r| r.state == RunState::Queued) {
            let single = matches!(mode, Mode::Single(id) if *id == r.run_id);
            if !single && (*mode != Mode::Daemon || paused.get(&r.dag_id).copied().unwrap_or(false))
            {
                continue;
            }
            let Some(dag) = self.catalog.version(&r.dag_id, &r.dag_version).await? else {
                continue;
            };
            let max = self
                .catalog
                .get(&r.dag_id)
                .map(|d| d.max_active_runs)
                .unwrap_or(dag.max_active_runs);
            let count = running.entry(r.dag_id.clone()).or_default();
            if !single && *count >= max {
                continue;
            }
            // The count above is this pass's view; the store counts again under a lock, for
            // the schedulers starting runs of this DAG at the same moment.
            let started_now = if single {
                self.store.start_run(&r.run_id, now).await?
            } else {
                self.store.start_run_within(&r.run_id, max, now).await?
            };
            if started_now {
                *count += 1;
                started.push(r.run_id.clone());
            }
        }
        Ok(started)
    }
}
