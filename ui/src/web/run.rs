//! `/runs/{run_id}`: the Gantt chart of every try (retries and the waits between them), the task
//! list, the params, and the clear and mark actions.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Utc};
use flow_engine::plan::UNMAPPED;
use flow_engine::state::TaskState;
use flow_engine::store::{TiRow, TryRow};
use flow_engine::time::now;
use serde::Deserialize;

use super::svg::{self, Gantt, GanttInput, Span};
use super::{
    Base, PageError, PageForm, PagePath, PageResult, Who, dag_href, elapsed, fmt_time, html,
    run_href, seconds_between, task_href, urlenc,
};
use crate::ops;
use crate::state::AppState;

/// The instances drawn in the Gantt chart and listed (a map of thousands is cut here; its counts
/// are in the grid).
const MAX_ROWS: usize = 200;

pub struct TryLink {
    pub n: i64,
    pub href: String,
}

pub struct TaskLine {
    pub anchor: String,
    pub task_id: String,
    pub map_index: Option<i64>,
    pub href: String,
    pub state: String,
    pub class: String,
    pub tries: Vec<TryLink>,
    pub started: String,
    pub ended: String,
    pub duration: String,
    pub clear_href: String,
    pub mark_href: String,
    /// The first instance of its task: the row that carries the task's actions.
    pub first: bool,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    base: Base,
    can_operate: bool,
    run_id: String,
    dag_id: String,
    dag_href: String,
    state: String,
    class: String,
    run_type: String,
    /// The DAG version the run started on, and its page.
    version: String,
    version_href: String,
    logical_date: String,
    queued: String,
    started: String,
    ended: String,
    params: String,
    gantt: Gantt,
    tasks: Vec<TaskLine>,
    cut: usize,
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath(run_id): PagePath<String>,
) -> PageResult {
    let run = ops::get_run(state.store.as_ref(), &run_id).await?;
    let mut tis = state.store.task_instances(&run_id).await?;
    // In the DAG's order, which is topological: the chart reads top to bottom like the graph.
    if let Some(row) = state.store.get_dag(&run.dag_id).await?
        && let Ok(Some(dag)) = state.dag_of(&row).await
    {
        tis.sort_by_key(|t| {
            (
                dag.task_index(&t.task_id).unwrap_or(usize::MAX),
                t.map_index,
            )
        });
    }
    let cut = tis.len().saturating_sub(MAX_ROWS);
    tis.truncate(MAX_ROWS);
    let at = now();
    let origin = run.queued_at;
    let mut end = run.ended_at.unwrap_or(at);
    let mut rows = Vec::with_capacity(tis.len());
    let mut lines = Vec::with_capacity(tis.len());
    let mut prev_task: Option<&str> = None;
    for ti in &tis {
        let tries = state
            .store
            .tries(&ti.run_id, &ti.task_id, ti.map_index)
            .await?;
        if let Some(last) = tries.iter().map(|t| t.ended_at.unwrap_or(at)).max() {
            end = end.max(last);
        }
        rows.push(gantt_row(ti, &tries, origin, at));
        let first = prev_task != Some(ti.task_id.as_str());
        prev_task = Some(ti.task_id.as_str());
        lines.push(task_line(ti, first, at));
    }
    let gantt = svg::gantt(rows, seconds_between(origin, end));
    let mut params = run.params.clone();
    state.masker.mask_json(&mut params);
    let mut base = Base::new(format!("Run {run_id}"), &who);
    if !run.state.is_terminal() {
        base.refresh = Some(3);
    }
    Ok(html(&RunPage {
        base,
        can_operate: who.can_operate(),
        dag_href: dag_href(&run.dag_id),
        dag_id: run.dag_id.clone(),
        state: run.state.as_str().to_string(),
        class: format!("state s-{}", run.state.as_str()),
        run_type: run.run_type.as_str().to_string(),
        version_href: super::version::version_href(&run.dag_id, &run.dag_version),
        version: run.dag_version.chars().take(12).collect(),
        logical_date: fmt_time(Some(run.logical_date)),
        queued: fmt_time(Some(run.queued_at)),
        started: fmt_time(run.started_at),
        ended: fmt_time(run.ended_at),
        params: serde_json::to_string_pretty(&params).unwrap_or_default(),
        gantt,
        tasks: lines,
        cut,
        run_id: run.run_id,
    }))
}

/// One instance's row of the Gantt chart: a bar per try, and the waits before and between them.
fn gantt_row(ti: &TiRow, tries: &[TryRow], origin: DateTime<Utc>, at: DateTime<Utc>) -> GanttInput {
    let mut spans = Vec::new();
    let mut waits = Vec::new();
    let mut last_end: Option<DateTime<Utc>> = None;
    for t in tries {
        let stop = t.ended_at.unwrap_or(at);
        if let Some(prev) = last_end {
            waits.push((
                seconds_between(origin, prev),
                seconds_between(origin, t.started_at),
                format!(
                    "waited {} before try {}",
                    elapsed(seconds_between(prev, t.started_at)),
                    t.try_number
                ),
            ));
        }
        last_end = Some(stop);
        spans.push(Span {
            start: seconds_between(origin, t.started_at),
            end: seconds_between(origin, stop),
            class: format!("bar s-{}", t.state.as_str()),
            title: format!(
                "{} try {}: {} — {}",
                label(ti),
                t.try_number,
                t.state.as_str(),
                elapsed(seconds_between(t.started_at, stop))
            ),
            href: Some(task_href(
                &ti.run_id,
                &ti.task_id,
                ti.map_index,
                Some(t.try_number),
            )),
        });
    }
    // The wait in the queue before the first try (or, while queued, until now).
    if let Some(q) = ti.queued_at {
        let first_start = tries.first().map(|t| t.started_at);
        let until = match (first_start, ti.state) {
            (Some(s), _) if s >= q => Some(s),
            (None, TaskState::Queued) => Some(at),
            _ => None,
        };
        if let Some(u) = until {
            waits.push((
                seconds_between(origin, q),
                seconds_between(origin, u),
                format!("queued for {}", elapsed(seconds_between(q, u))),
            ));
        }
    }
    GanttInput {
        label: label(ti),
        tries: spans,
        waits,
    }
}

/// One instance's line in the task list; `first` when it is its task's first instance.
fn task_line(ti: &TiRow, first: bool, at: DateTime<Utc>) -> TaskLine {
    TaskLine {
        anchor: format!("task-{}", urlenc(&ti.task_id)),
        task_id: ti.task_id.clone(),
        map_index: (ti.map_index != UNMAPPED).then_some(ti.map_index),
        href: task_href(&ti.run_id, &ti.task_id, ti.map_index, None),
        state: ti.state.as_str().to_string(),
        class: format!("state s-{}", ti.state.as_str()),
        tries: (1..=ti.try_number)
            .map(|n| TryLink {
                n,
                href: task_href(&ti.run_id, &ti.task_id, ti.map_index, Some(n)),
            })
            .collect(),
        started: fmt_time(ti.started_at),
        ended: fmt_time(ti.ended_at),
        duration: match ti.started_at {
            Some(s) => elapsed(seconds_between(s, ti.ended_at.unwrap_or(at))),
            None => "-".into(),
        },
        clear_href: format!(
            "{}/tasks/{}/clear",
            run_href(&ti.run_id),
            urlenc(&ti.task_id)
        ),
        mark_href: format!(
            "{}/tasks/{}/mark",
            run_href(&ti.run_id),
            urlenc(&ti.task_id)
        ),
        first,
    }
}

fn label(ti: &TiRow) -> String {
    if ti.map_index == UNMAPPED {
        ti.task_id.clone()
    } else {
        format!("{}[{}]", ti.task_id, ti.map_index)
    }
}

#[derive(Deserialize)]
pub struct ClearForm {
    csrf: Option<String>,
    /// A checkbox: present when ticked.
    downstream: Option<String>,
}

pub async fn clear(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath((run_id, task_id)): PagePath<(String, String)>,
    PageForm(form): PageForm<ClearForm>,
) -> PageResult {
    who.check_csrf(form.csrf.as_deref())?;
    who.require_operator()?;
    let cleared = { ops::clear(&state.dags, &run_id, &task_id, form.downstream.is_some()).await? };
    tracing::info!(
        "cleared {} in run {run_id} through the web pages by token '{}'",
        cleared.join(", "),
        who.name
    );
    Ok(Redirect::to(&run_href(&run_id)).into_response())
}

#[derive(Deserialize)]
pub struct MarkForm {
    csrf: Option<String>,
    state: String,
    map_index: Option<String>,
}

pub async fn mark(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath((run_id, task_id)): PagePath<(String, String)>,
    PageForm(form): PageForm<MarkForm>,
) -> PageResult {
    who.check_csrf(form.csrf.as_deref())?;
    who.require_operator()?;
    let task_state = match form.state.as_str() {
        "success" => TaskState::Success,
        "failed" => TaskState::Failed,
        other => {
            return Err(PageError::BadRequest(format!(
                "a task can be marked success or failed, not '{other}'"
            )));
        }
    };
    let map_index = match form.map_index.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            PageError::BadRequest(format!("map_index must be a whole number, not '{text}'"))
        })?),
    };
    let note = format!(
        "marked {task_state} through the web pages by token '{}'",
        who.name
    );
    let changed = { ops::mark(&state.dags, &run_id, &task_id, map_index, task_state, note).await? };
    tracing::info!(
        "{changed} instance(s) of {task_id} in run {run_id} marked {task_state} through the web \
         pages by token '{}'",
        who.name
    );
    Ok(Redirect::to(&run_href(&run_id)).into_response())
}
