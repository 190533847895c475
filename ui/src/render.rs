//! The JSON shapes of `cli.md` and the tables people read.

use flow_engine::plan::UNMAPPED;
use flow_engine::secrets::Masker;
use flow_engine::store::{DagRow, RunRow, TiRow};
use flow_engine::time::rfc3339;
use serde_json::{Value as Json, json};

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> Json {
    t.map(|t| Json::String(rfc3339(t))).unwrap_or(Json::Null)
}

pub fn task_json(t: &TiRow) -> Json {
    json!({
        "task_id": t.task_id,
        "map_index": if t.map_index == UNMAPPED { Json::Null } else { json!(t.map_index) },
        "state": t.state.as_str(),
        "tries": t.try_number,
        "started_at": ts(t.started_at),
        "ended_at": ts(t.ended_at),
        "output": t.output.clone().unwrap_or(Json::Null),
        "error": t.error,
    })
}

/// The run object of `flow runs show --json` (and `flow run --json`, the API).
pub fn run_json(r: &RunRow, tasks: Option<&[TiRow]>, masker: &Masker) -> Json {
    let mut v = json!({
        "run_id": r.run_id,
        "dag_id": r.dag_id,
        "run_type": r.run_type.as_str(),
        "state": r.state.as_str(),
        "logical_date": rfc3339(r.logical_date),
        "data_interval_start": rfc3339(r.data_interval_start),
        "data_interval_end": rfc3339(r.data_interval_end),
        "params": r.params,
        "queued_at": rfc3339(r.queued_at),
        "started_at": ts(r.started_at),
        "ended_at": ts(r.ended_at),
    });
    if let Some(tasks) = tasks {
        v["tasks"] = Json::Array(tasks.iter().map(task_json).collect());
    }
    masker.mask_json(&mut v);
    v
}

pub fn dag_json(d: &DagRow, next_run_at: Option<chrono::DateTime<chrono::Utc>>) -> Json {
    json!({
        "dag_id": d.dag_id,
        "description": d.description,
        "schedule": d.schedule,
        "timezone": d.timezone,
        "paused": d.paused,
        "tags": d.tags,
        "next_run_at": ts(next_run_at),
        "last_run": d.last_run.as_ref().map(|(id, s)| json!({"run_id": id, "state": s.as_str()})),
        "fileloc": d.fileloc,
    })
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

pub fn short_ts(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".to_string())
}
