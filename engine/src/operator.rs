//! The `Operator` trait: what a task does when it runs, and the registry that names them.
//!
//! The engine knows operators only through this trait: it renders a task's keys, hands them to
//! the operator with a [`TaskContext`], and records what comes back. Validation asks the
//! [`Catalog`] which keys each operator takes, so a misspelt key is reported with its position
//! before anything runs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value as Json;

pub use crate::keys::{Catalog, OperatorKeys};
use crate::log::LogSink;
use crate::secrets::{Masker, Secrets};

/// Why a try failed. `Retryable` failures follow the task's retry policy; `Fatal` ones (bad
/// configuration that no retry can fix) fail the task at once.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Fatal(String),
    /// Not a failure: a sensor found nothing yet and gives its slot back until this time. The
    /// next claim is the same try (see `TryEnd::reschedule`).
    #[error("rescheduled until {0}")]
    Reschedule(chrono::DateTime<chrono::Utc>),
}

#[async_trait]
pub trait Operator: Send + Sync {
    fn name(&self) -> &'static str;
    fn keys(&self) -> OperatorKeys;
    /// Runs one try. `config` holds the operator's keys, already rendered. Returns the task's
    /// output, if it publishes one. Dropping the future must stop the work (the executor drops it
    /// on timeout and on shutdown).
    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError>;

    /// True when the operator applies the task's `timeout` itself (from
    /// [`TaskContext::first_started_at`], with its own meaning: a sensor's timeout spans its
    /// reschedules and fails the task without retries). The executor then does not cut the try.
    fn own_timeout(&self) -> bool {
        false
    }
}

/// Starts runs of other DAGs and reads their state, for `trigger_dag`. The executor hands one to
/// every try; `flow tasks test` hands none, since it records no run.
#[async_trait]
pub trait RunLauncher: Send + Sync {
    /// A manual run of `dag_id`'s current version with `params`, created once per `key`: a
    /// repeat of the key answers the run it first made. Fatal for an unknown DAG or refused
    /// params; retryable when the database cannot be reached.
    async fn trigger(
        &self,
        dag_id: &str,
        params: &serde_json::Map<String, Json>,
        key: &str,
    ) -> Result<String, OperatorError>;
    /// The run's state; None when there is no such run.
    async fn run_state(
        &self,
        run_id: &str,
    ) -> Result<Option<crate::state::RunState>, OperatorError>;
}

#[derive(Default, Clone)]
pub struct Registry {
    ops: BTreeMap<&'static str, Arc<dyn Operator>>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    pub fn register(&mut self, op: Arc<dyn Operator>) {
        self.ops.insert(op.name(), op);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Operator>> {
        self.ops.get(name)
    }
}

impl Catalog for Registry {
    fn keys(&self, operator: &str) -> Option<OperatorKeys> {
        self.ops.get(operator).map(|o| o.keys())
    }
    fn names(&self) -> Vec<&str> {
        self.ops.keys().copied().collect()
    }
}

/// Everything an operator may use while it runs one try.
pub struct TaskContext {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: Option<i64>,
    pub try_number: i64,
    /// When this try was first claimed (before any reschedule of a sensor).
    pub first_started_at: chrono::DateTime<chrono::Utc>,
    /// The task's `timeout`, for an operator with [`Operator::own_timeout`].
    pub timeout: Option<std::time::Duration>,
    pub logical_date: String,
    pub data_interval_start: chrono::DateTime<chrono::Utc>,
    pub data_interval_end: chrono::DateTime<chrono::Utc>,
    /// The version of the DAG the run started on.
    pub dag_version: String,
    /// The DAG runs on a schedule (a cron or datasets), so it runs again and again: an
    /// operator whose defaults depend on being looked at repeatedly (`experiment`) reads it.
    pub scheduled: bool,
    /// The model registry in the metadata database, for the ML operators.
    pub models: Option<Arc<dyn crate::store::ModelRegistry>>,
    /// The experiments' records, for `experiment`: None where looks must not be recorded
    /// (`flow tasks test`), and the operator then reads each look alone.
    pub experiments: Option<Arc<dyn crate::store::ExperimentStore>>,
    /// The DAG file's folder: relative paths in task keys are taken from here.
    pub dag_folder: PathBuf,
    /// Where a task may write its JSON output (`FLOW_OUTPUT`).
    pub output_path: PathBuf,
    pub log: LogSink,
    pub secrets: Secrets,
    /// The secrets the task's keys name: its processes get `FLOW_SECRET_NAME` for these only.
    pub named_secrets: Vec<String>,
    pub masker: Masker,
    /// Records a started process group, so that a scheduler that finds this try orphaned can
    /// stop it. An operator that starts processes calls it before letting them do any work.
    pub on_spawn: Option<PidRecorder>,
    /// What an earlier try of this task started outside this machine and did not see end (it
    /// was requeued by a shutdown or orphaned by a crash): the operator re-attaches to it.
    pub external: Option<Json>,
    /// Commits what this try starts outside this machine (see [`TaskContext::record_external`]).
    pub on_external: Option<ExternalRecorder>,
    /// Fires when the scheduler shuts down cleanly. The try's future is then dropped and the try
    /// requeued; an operator whose work runs elsewhere leaves it running for the next try.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The W3C trace context of the try's span when traces are exported: processes the
    /// operator starts get it as `TRACEPARENT`, a Spark step as a conf.
    pub traceparent: Option<String>,
    /// Starts and follows runs of other DAGs (`trigger_dag`).
    pub runs: Option<Arc<dyn RunLauncher>>,
}

/// Commits a reference to external work; answers whether it was recorded under the try's lease.
pub(crate) type ExternalRecorder = Arc<
    dyn Fn(Json) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>> + Send + Sync,
>;

impl TaskContext {
    /// The `FLOW_*` variables every child process of a task sees, and `FLOW_SECRET_NAME` for
    /// each secret the task names.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("FLOW_DAG_ID".to_string(), self.dag_id.clone()),
            ("FLOW_RUN_ID".to_string(), self.run_id.clone()),
            ("FLOW_TASK_ID".to_string(), self.task_id.clone()),
            ("FLOW_TRY_NUMBER".to_string(), self.try_number.to_string()),
            ("FLOW_LOGICAL_DATE".to_string(), self.logical_date.clone()),
            (
                "FLOW_OUTPUT".to_string(),
                self.output_path.display().to_string(),
            ),
        ];
        if let Some(i) = self.map_index {
            env.push(("FLOW_MAP_INDEX".to_string(), i.to_string()));
        }
        if let Some(tp) = &self.traceparent {
            // The OpenTelemetry convention for trace context in a child's environment.
            env.push(("TRACEPARENT".to_string(), tp.clone()));
        }
        for name in &self.named_secrets {
            if let Some(value) = self.secrets.get(name) {
                env.push((
                    format!("{}{name}", crate::secrets::ENV_PREFIX),
                    value.to_string(),
                ));
            }
        }
        env
    }
}

/// Sends a process group id to the executor and answers once it is committed.
pub(crate) type PidRecorder =
    tokio::sync::mpsc::UnboundedSender<(u32, tokio::sync::oneshot::Sender<bool>)>;

impl TaskContext {
    /// Records `pid` durably; false if it could not be recorded (the caller must not let the
    /// process run, since nobody could stop it after a crash).
    pub async fn record_pid(&self, pid: u32) -> bool {
        let Some(tx) = &self.on_spawn else {
            return true;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if tx.send((pid, reply)).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Records `reference` (what this try started elsewhere, such as an EMR step) durably before
    /// the operator waits on it; false if it could not be recorded. A try after a crash or a
    /// shutdown finds it in [`TaskContext::external`].
    pub async fn record_external(&self, reference: Json) -> bool {
        match &self.on_external {
            Some(record) => record(reference).await,
            None => true,
        }
    }
}
