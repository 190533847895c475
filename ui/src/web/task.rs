//! `/runs/{run_id}/tasks/{task_id}?try=N&map_index=M`: one try of a task instance, with its log
//! (already in the HTML, then tailed by `flow.js` while the try runs), the other tries, the
//! output and the rendered command.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use flow_engine::plan::UNMAPPED;
use flow_engine::secrets::Secrets;
use flow_engine::store::TryRow;
use flow_engine::template::{self, TaskPart};
use serde::Deserialize;
use serde_json::Value as Json;

use super::{
    Base, PageError, PagePath, PageResult, Who, dag_href, elapsed, fmt_time, html, run_href,
    seconds_between, task_href, urlenc,
};
use crate::ops::{self, LogTarget};
use crate::state::AppState;

/// The most log bytes put in the page; the tail script reads the rest.
const LOG_IN_PAGE: u64 = 1 << 20;
/// The most one tail request returns.
const LOG_CHUNK: u64 = 256 << 10;

#[derive(Deserialize)]
pub struct TryQuery {
    #[serde(rename = "try")]
    try_number: Option<i64>,
    map_index: Option<i64>,
}

pub struct TryItem {
    pub n: i64,
    pub href: String,
    pub current: bool,
    pub class: String,
    pub state: String,
    pub started: String,
    pub ended: String,
    pub duration: String,
    pub error: String,
}

#[derive(Template)]
#[template(path = "task.html")]
struct TaskPage {
    base: Base,
    run_id: String,
    run_href: String,
    dag_id: String,
    dag_href: String,
    task_id: String,
    map_index: Option<i64>,
    state: String,
    class: String,
    try_number: i64,
    tries: Vec<TryItem>,
    log: String,
    log_src: String,
    log_offset: u64,
    log_complete: bool,
    output: Option<String>,
    command: Option<String>,
    config: Option<String>,
    render_error: Option<String>,
}

fn bad_query(e: axum::extract::rejection::QueryRejection) -> PageError {
    PageError::BadRequest(e.body_text())
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath((run_id, task_id)): PagePath<(String, String)>,
    query: Result<Query<TryQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let Query(q) = query.map_err(bad_query)?;
    let target = ops::log_target(
        state.store.as_ref(),
        state.log_roots(),
        &run_id,
        &task_id,
        q.try_number,
        q.map_index,
    )
    .await?;
    let run = ops::get_run(state.store.as_ref(), &run_id).await?;
    let chunk = ops::read_log(state.store.as_ref(), &target, &state.masker, 0, LOG_IN_PAGE).await?;
    let ti = &target.ti;
    let tries = state.store.tries(&run_id, &task_id, ti.map_index).await?;
    let items = try_items(&state, &target, &tries);
    let output = ti.output.as_ref().map(|o| {
        let mut o = o.clone();
        state.masker.mask_json(&mut o);
        serde_json::to_string_pretty(&o).unwrap_or_default()
    });
    let shown = Rendered::of(&state, rendered(&state, &run, &target).await);
    let mut log_src = format!(
        "/runs/{}/tasks/{}/log?try={}",
        urlenc(&run_id),
        urlenc(&task_id),
        target.try_number
    );
    if ti.map_index != UNMAPPED {
        log_src.push_str(&format!("&map_index={}", ti.map_index));
    }
    let mut base = Base::new(format!("{task_id} — run {run_id}"), &who);
    // A try that runs is followed by the log tail (which reloads the page when the try ends);
    // the latest try of an instance that waits for its first or next try reloads instead.
    let tailing = target.try_number > 0 && !chunk.complete;
    let latest = q.try_number.is_none_or(|n| n == ti.try_number);
    if !tailing && latest && !ti.state.is_terminal() {
        base.refresh = Some(3);
    }
    Ok(html(&TaskPage {
        base,
        run_href: run_href(&run_id),
        dag_href: dag_href(&run.dag_id),
        dag_id: run.dag_id.clone(),
        map_index: (ti.map_index != UNMAPPED).then_some(ti.map_index),
        state: ti.state.as_str().to_string(),
        class: format!("state s-{}", ti.state.as_str()),
        try_number: target.try_number,
        tries: items,
        log: chunk.content,
        log_src,
        log_offset: chunk.next_offset,
        log_complete: !tailing,
        output,
        command: shown.command,
        config: shown.config,
        render_error: shown.error,
        run_id,
        task_id,
    }))
}

/// The try list: every try of the instance, the one shown marked.
fn try_items(state: &AppState, target: &LogTarget, tries: &[TryRow]) -> Vec<TryItem> {
    let at = flow_engine::time::now();
    let ti = &target.ti;
    tries
        .iter()
        .map(|t| TryItem {
            n: t.try_number,
            href: task_href(&ti.run_id, &ti.task_id, ti.map_index, Some(t.try_number)),
            current: t.try_number == target.try_number,
            class: format!("state s-{}", t.state.as_str()),
            state: t.state.as_str().to_string(),
            started: fmt_time(Some(t.started_at)),
            ended: fmt_time(t.ended_at),
            duration: elapsed(seconds_between(t.started_at, t.ended_at.unwrap_or(at))),
            error: t
                .error
                .as_deref()
                .map(|e| state.masker.mask(e))
                .unwrap_or_default(),
        })
        .collect()
}

/// What the page shows of the rendered keys: the command alone, all keys, or why they did not
/// render.
struct Rendered {
    command: Option<String>,
    config: Option<String>,
    error: Option<String>,
}

impl Rendered {
    fn of(state: &AppState, rendered: Result<Option<Json>, String>) -> Rendered {
        match rendered {
            Ok(Some(cfg)) => Rendered {
                command: cfg
                    .get("command")
                    .and_then(Json::as_str)
                    .map(str::to_string),
                config: Some(serde_json::to_string_pretty(&cfg).unwrap_or_default()),
                error: None,
            },
            Ok(None) => Rendered {
                command: None,
                config: None,
                error: None,
            },
            Err(e) => Rendered {
                command: None,
                config: None,
                error: Some(state.masker.mask(&e)),
            },
        }
    }
}

/// The task's keys rendered for this try as the executor renders them, except that every secret
/// is `***`: the page shows where secrets go without ever holding one.
async fn rendered(
    state: &AppState,
    run: &flow_engine::store::RunRow,
    target: &LogTarget,
) -> Result<Option<Json>, String> {
    let dag = state
        .dags
        .version(&run.dag_id, &run.dag_version)
        .await
        .map_err(|e| e.to_string())?;
    let Some(dag) = dag else {
        return Ok(None);
    };
    let Some(task) = dag.task(&target.ti.task_id) else {
        return Ok(None);
    };
    let ancestors = dag.ancestors(&task.id);
    let reads: Vec<String> = task
        .output_reads
        .among(&ancestors)
        .into_iter()
        .map(String::from)
        .collect();
    let outputs = if reads.is_empty() {
        Vec::new()
    } else {
        state
            .store
            .outputs(&run.run_id, &reads)
            .await
            .map_err(|e| e.to_string())?
    };
    let snap = flow_engine::executor::outputs_snapshot(run, outputs);
    let secrets = Secrets::from_pairs(
        state
            .secret_names
            .iter()
            .map(|n| (n.clone(), "***".to_string())),
    );
    let ti = &target.ti;
    let ctx = snap.context(reads.iter().map(String::as_str)).to_value(
        &TaskPart {
            task_id: &task.id,
            try_number: target.try_number.max(1),
            item: ti.item.as_ref(),
            map_index: (ti.map_index != UNMAPPED).then_some(ti.map_index),
        },
        &secrets,
    );
    let mut cfg = template::render_json(&Json::Object(task.config.clone()), &ctx)
        .map_err(|e| format!("the task's templates do not render: {e}"))?;
    state.masker.mask_json(&mut cfg);
    Ok(Some(cfg))
}

/// The log from `offset`, as the API's logs endpoint answers it, for the tail script: a page-side
/// route, so the session cookie authenticates it.
pub async fn log_chunk(
    State(state): State<Arc<AppState>>,
    _: Who,
    PagePath((run_id, task_id)): PagePath<(String, String)>,
    query: Result<Query<ops::LogAt>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let Query(at) = query.map_err(bad_query)?;
    let chunk = state
        .log_chunk(&at.of(&run_id, &task_id), LOG_CHUNK)
        .await?;
    let mut res = axum::Json(chunk).into_response();
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}
