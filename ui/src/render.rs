//! The JSON shapes of `cli.md` and `api.md`, and the tables people read.
//!
//! Each shape is a struct, so that one definition serves the command line (`--json`), the REST
//! API and its OpenAPI document: the schema cannot drift from what is printed. Values are
//! serialized, then masked, so that no secret leaves through any of them.

use chrono::{DateTime, Utc};
use flow_engine::dag::Dag;
use flow_engine::plan::UNMAPPED;
use flow_engine::secrets::Masker;
use flow_engine::state::TaskState;
use flow_engine::store::{DagRow, RunRow, TiRow};
use flow_engine::time::rfc3339;
use serde::Serialize;
use serde_json::Value as Json;
use utoipa::ToSchema;

fn ts(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(rfc3339)
}

/// One task instance of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub task_id: String,
    /// The map index of a mapped (`for_each`) task's instance, 0-based; null when unmapped.
    pub map_index: Option<i64>,
    #[schema(example = "success")]
    pub state: String,
    /// How many tries it has had.
    pub tries: i64,
    #[schema(example = "2026-03-02T00:00:01.102Z")]
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// What the task published (its `FLOW_OUTPUT`): any JSON, or null for nothing.
    #[schema(value_type = Option<serde_json::Value>)]
    pub output: Json,
    pub error: Option<String>,
}

/// A run, in the shape of `flow runs show --json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub dag_id: String,
    /// `manual`, `scheduled` or `backfill`.
    pub run_type: String,
    #[schema(example = "queued")]
    pub state: String,
    pub logical_date: String,
    pub data_interval_start: String,
    pub data_interval_end: String,
    #[schema(value_type = Object)]
    pub params: Json,
    pub queued_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// The OpenTelemetry trace id of the run's trace (32 hex digits), the same in every try's
    /// log header; the trace exists where an OTLP endpoint was set.
    pub trace_id: String,
    /// The content hash of the DAG version the run started on (its YAML:
    /// `GET /api/v1/dags/{dag_id}/versions/{version}`).
    pub dag_version: String,
    /// When flow first saw that version; in a single run's answer, left out of lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dag_version_seen_at: Option<String>,
    /// Left out of lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<TaskView>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LastRun {
    pub run_id: String,
    pub state: String,
}

/// An item of `GET /api/v1/dags` and `flow dags list --json`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagView {
    pub dag_id: String,
    pub description: Option<String>,
    pub schedule: Option<String>,
    pub timezone: String,
    pub paused: bool,
    pub tags: Vec<String>,
    /// When the next scheduled run will be created; null without a schedule.
    pub next_run_at: Option<String>,
    pub last_run: Option<LastRun>,
    /// The DAG file.
    pub fileloc: String,
}

/// A task of a DAG, as its file declares it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskSpecView {
    pub task_id: String,
    pub operator: String,
    pub depends_on: Vec<String>,
    pub trigger_rule: String,
    pub pool: String,
    /// Which workers may run it (`flow worker --queue`); `default` unless the file names one.
    pub queue: String,
    pub priority: i32,
    pub retries: u32,
    /// True for a `for_each` task, which runs once per item.
    pub mapped: bool,
}

/// A param as a DAG file declares it (for the schema of [`DagDetailView::params`]).
#[derive(Debug, Serialize, ToSchema)]
pub struct ParamSpecView {
    pub name: String,
    /// string, number, integer, boolean, array or object
    #[serde(rename = "type")]
    pub kind: String,
    /// Any JSON of the declared type; null when the param has no default.
    #[schema(value_type = Option<serde_json::Value>)]
    pub default: Json,
    pub description: Option<String>,
}

/// An edge of the DAG: `downstream` depends on `upstream`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EdgeView {
    pub upstream: String,
    pub downstream: String,
}

/// One DAG with its declared params, tasks (in topological order) and edges.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagDetailView {
    #[serde(flatten)]
    pub dag: DagView,
    /// The declared params, in the file's order.
    #[schema(value_type = Vec<ParamSpecView>)]
    pub params: Json,
    pub tasks: Vec<TaskSpecView>,
    pub edges: Vec<EdgeView>,
}

pub fn task_view(t: &TiRow) -> TaskView {
    TaskView {
        task_id: t.task_id.clone(),
        map_index: (t.map_index != UNMAPPED).then_some(t.map_index),
        state: t.state.as_str().to_string(),
        tries: t.try_number,
        started_at: ts(t.started_at),
        ended_at: ts(t.ended_at),
        output: t.output.clone().unwrap_or(Json::Null),
        error: t.error.clone(),
    }
}

/// Serializes a view and masks every secret in it.
fn masked(view: &impl Serialize, masker: &Masker) -> Json {
    // These views hold only strings, numbers and JSON values: serializing them cannot fail.
    let mut v = serde_json::to_value(view).unwrap_or(Json::Null);
    masker.mask_json(&mut v);
    v
}

/// The run object of `flow runs show --json` (and `flow run --json`, the API).
pub fn run_json(r: &RunRow, tasks: Option<&[TiRow]>, masker: &Masker) -> Json {
    run_json_seen(r, tasks, masker, None)
}

/// [`run_json`] with when the run's DAG version was first seen, for a single run's answer.
pub fn run_json_seen(
    r: &RunRow,
    tasks: Option<&[TiRow]>,
    masker: &Masker,
    version_seen_at: Option<DateTime<Utc>>,
) -> Json {
    let view = RunView {
        run_id: r.run_id.clone(),
        dag_id: r.dag_id.clone(),
        run_type: r.run_type.as_str().to_string(),
        state: r.state.as_str().to_string(),
        logical_date: rfc3339(r.logical_date),
        data_interval_start: rfc3339(r.data_interval_start),
        data_interval_end: rfc3339(r.data_interval_end),
        params: r.params.clone(),
        queued_at: rfc3339(r.queued_at),
        started_at: ts(r.started_at),
        ended_at: ts(r.ended_at),
        trace_id: flow_engine::telemetry::RunTrace::of_run(r)
            .trace_id
            .to_string(),
        dag_version: r.dag_version.clone(),
        dag_version_seen_at: ts(version_seen_at),
        tasks: tasks.map(|tasks| tasks.iter().map(task_view).collect()),
    };
    masked(&view, masker)
}

pub fn dag_view(d: &DagRow, next_run_at: Option<DateTime<Utc>>) -> DagView {
    DagView {
        dag_id: d.dag_id.clone(),
        description: d.description.clone(),
        schedule: d.schedule.clone(),
        timezone: d.timezone.clone(),
        paused: d.paused,
        tags: d.tags.clone(),
        next_run_at: ts(next_run_at),
        last_run: d.last_run.as_ref().map(|r| LastRun {
            run_id: r.run_id.clone(),
            state: r.state.as_str().to_string(),
        }),
        fileloc: d.fileloc.clone(),
    }
}

pub fn dag_json(d: &DagRow, next_run_at: Option<DateTime<Utc>>) -> Json {
    masked(&dag_view(d, next_run_at), &Masker::default())
}

pub fn dag_detail_json(
    d: &DagRow,
    next_run_at: Option<DateTime<Utc>>,
    dag: &Dag,
    masker: &Masker,
) -> Json {
    let view = DagDetailView {
        dag: dag_view(d, next_run_at),
        params: d.params.clone(),
        tasks: dag
            .tasks
            .iter()
            .map(|t| TaskSpecView {
                task_id: t.id.clone(),
                operator: t.operator.clone(),
                depends_on: t.depends_on.clone(),
                trigger_rule: t.trigger_rule.as_str().to_string(),
                pool: t.pool.clone(),
                queue: t.queue.clone(),
                priority: t.priority,
                retries: t.retry.retries,
                mapped: t.for_each.is_some(),
            })
            .collect(),
        edges: dag
            .tasks
            .iter()
            .flat_map(|t| {
                t.depends_on.iter().map(|up| EdgeView {
                    upstream: up.clone(),
                    downstream: t.id.clone(),
                })
            })
            .collect(),
    };
    masked(&view, masker)
}

/// A model of the registry (`GET /api/v1/models`, `flow models list --json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelView {
    pub name: String,
    pub versions: i64,
    pub latest_version: i64,
    pub production_version: Option<i64>,
    pub created_at: String,
}

/// A version of a model (`GET /api/v1/models/{model}`, `flow models show --json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelVersionView {
    pub model: String,
    pub version: i64,
    /// candidate, production or archived
    pub stage: String,
    pub stage_changed_at: String,
    /// classification or regression
    pub task: String,
    pub algorithm: String,
    /// auc, accuracy and log_loss; or rmse and mae
    #[schema(value_type = Object)]
    pub metrics: Json,
    pub artifact: String,
    pub training_set: String,
    pub data_interval_start: Option<String>,
    pub data_interval_end: Option<String>,
    pub dag_id: String,
    pub dag_version: String,
    pub run_id: String,
    pub task_id: String,
    pub created_at: String,
    /// The training set's dataset URI (train's `dataset:`), if given
    pub dataset: Option<String>,
    /// The dataset events the version was trained on
    pub trained_on: Vec<LineageEventView>,
    /// The latest runs that scored with this version, newest first (in `GET
    /// /api/v1/models/{model}` and `flow models show`; not in a promotion's answer)
    pub predictions: Option<Vec<PredictionView>>,
}

/// A dataset event a model version was trained on.
#[derive(Debug, Serialize, ToSchema)]
pub struct LineageEventView {
    pub id: i64,
    pub uri: String,
    pub source_dag_id: Option<String>,
    pub source_run_id: Option<String>,
    pub timestamp: String,
}

/// A `predict` task that scored with a model version.
#[derive(Debug, Serialize, ToSchema)]
pub struct PredictionView {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    pub map_index: Option<i64>,
    pub rows: Option<i64>,
    pub at: String,
}

/// How many of a model's latest prediction runs its versions list.
pub const LINEAGE_USES: i64 = 100;

/// A model of the registry, as `flow models list --json` and the API show it.
pub fn model_json(m: &flow_engine::store::ModelSummary) -> Json {
    serde_json::json!({
        "name": m.name,
        "versions": m.versions,
        "latest_version": m.latest_version,
        "production_version": m.production_version,
        "created_at": rfc3339(m.created_at),
    })
}

/// A model version, as `flow models show --json` and the API show it.
pub fn model_version_json(v: &flow_engine::store::ModelVersion) -> Json {
    serde_json::json!({
        "model": v.new.model,
        "version": v.version,
        "stage": v.stage.as_str(),
        "stage_changed_at": rfc3339(v.stage_changed_at),
        "task": v.new.task,
        "algorithm": v.new.algorithm,
        "metrics": v.new.metrics,
        "artifact": v.new.artifact,
        "training_set": v.new.training_set,
        "data_interval_start": v.new.data_interval.map(|i| rfc3339(i.start)),
        "data_interval_end": v.new.data_interval.map(|i| rfc3339(i.end)),
        "dag_id": v.new.dag_id,
        "dag_version": v.new.dag_version,
        "run_id": v.new.run_id,
        "task_id": v.new.task_id,
        "created_at": rfc3339(v.new.created_at),
        "dataset": v.new.dataset,
        "trained_on": v.events.iter().map(|e| {
            let source = e.source.as_ref();
            serde_json::json!({
                "id": e.id,
                "uri": e.uri,
                "source_dag_id": source.map(|s| &s.dag_id),
                "source_run_id": source.map(|s| &s.run_id),
                "timestamp": rfc3339(e.created_at),
            })
        }).collect::<Vec<_>>(),
    })
}

/// A model's versions with the runs that used each (`GET /api/v1/models/{model}`, `flow
/// models show --json`).
pub fn model_versions_json(
    versions: &[flow_engine::store::ModelVersion],
    uses: &[flow_engine::store::PredictionUse],
) -> Vec<Json> {
    versions
        .iter()
        .map(|v| {
            let mut j = model_version_json(v);
            j["predictions"] = uses
                .iter()
                .filter(|u| u.version == v.version)
                .map(|u| {
                    serde_json::json!({
                        "dag_id": u.dag_id,
                        "run_id": u.run_id,
                        "task_id": u.task_id,
                        "map_index": (u.map_index >= 0).then_some(u.map_index),
                        "rows": u.rows_scored,
                        "at": rfc3339(u.created_at),
                    })
                })
                .collect();
            j
        })
        .collect()
}

pub fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::NOTHING);
    t.set_header(header.iter().map(|h| h.to_uppercase()));
    for r in rows {
        t.add_row(r);
    }
    t.to_string()
}

pub fn short_ts(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}

/// Of several instances' states, the one a summary cell shows: what needs attention first.
pub fn dominant(states: impl IntoIterator<Item = TaskState>) -> Option<TaskState> {
    let rank = |s: TaskState| match s {
        TaskState::Failed => 0,
        TaskState::Running => 1,
        TaskState::UpForRetry => 2,
        TaskState::UpstreamFailed => 3,
        TaskState::Queued => 4,
        TaskState::Scheduled => 5,
        TaskState::Skipped => 6,
        TaskState::Success => 7,
    };
    states.into_iter().min_by_key(|s| rank(*s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_dominates_a_summary() {
        assert_eq!(
            dominant([TaskState::Success, TaskState::Failed, TaskState::Running]),
            Some(TaskState::Failed)
        );
        assert_eq!(dominant([]), None);
    }
}
