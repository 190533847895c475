//! `/dags/{dag_id}`: the grid of recent runs x tasks (keyset-paginated into the past), the graph
//! coloured by one run, the durations chart, and the trigger form built from the DAG's params.

use std::collections::BTreeMap;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use flow_engine::dag::{Dag, ParamType};
use flow_engine::plan::UNMAPPED;
use flow_engine::schedule::parse_date;
use flow_engine::scheduler;
use flow_engine::state::TaskState;
use flow_engine::store::{DagRow, RunFilter, RunRow, TiCount};
use flow_engine::time::now;
use serde::Deserialize;
use serde_json::Value as Json;

use super::svg::{self, Durations, Graph, GraphTask};
use super::{
    Base, PageError, PageForm, PagePath, PageResult, Who, dag_href, dominant, elapsed, fmt_time,
    html, run_href, seconds_between, task_href, urlenc,
};
use crate::ops::{self, OpError};
use crate::state::AppState;

/// Runs per grid page: each costs one bounded query of its task instances.
const PAGE: i64 = 25;

pub struct Cell {
    pub href: String,
    pub class: String,
    pub title: String,
    /// For a mapped task: how many instances; empty for a single instance.
    pub text: String,
}

pub struct GridRow {
    pub task_id: String,
    pub cells: Vec<Cell>,
}

pub struct RunHead {
    pub href: String,
    pub select_href: String,
    pub class: String,
    pub title: String,
    pub selected: bool,
}

pub struct Field {
    pub name: String,
    pub input_name: String,
    pub kind: &'static str,
    /// `text`, `number`, `boolean` or `json`.
    pub input: &'static str,
    pub step: &'static str,
    /// The param's `enum`, as the texts the form posts: the field is then a list to pick from.
    pub options: Vec<String>,
    /// `min`, `max` and `pattern` attributes, so the browser refuses what the engine would.
    pub min: String,
    pub max: String,
    pub pattern: String,
    pub value: String,
    pub description: String,
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "dag.html")]
struct DagPage {
    base: Base,
    can_operate: bool,
    dag_id: String,
    pause_href: String,
    trigger_href: String,
    backfill_href: String,
    backfills: Vec<super::backfill::BackfillLine>,
    scheduled: bool,
    description: String,
    schedule: Option<String>,
    schedule_words: Option<String>,
    timezone: String,
    next_run: String,
    paused: bool,
    tags: Vec<String>,
    fileloc: String,
    heads: Vec<RunHead>,
    grid: Vec<GridRow>,
    older_href: Option<String>,
    newest_href: Option<String>,
    graph: Graph,
    selected: Option<String>,
    selected_href: Option<String>,
    durations: Durations,
    fields: Vec<Field>,
    logical_date: String,
    trigger_error: Option<String>,
    /// The trigger form is shown open (after a failed submission).
    trigger_open: bool,
}

#[derive(Deserialize)]
pub struct DagQuery {
    before: Option<String>,
    run: Option<String>,
}

/// What a failed trigger gave, to show again with its errors.
#[derive(Default)]
struct Submitted {
    values: BTreeMap<String, String>,
    errors: BTreeMap<String, String>,
    logical_date: String,
    error: Option<String>,
}

pub(super) async fn active(state: &AppState, dag_id: &str) -> PageResult<(DagRow, Arc<Dag>)> {
    let row = match state.store.get_dag(dag_id).await? {
        Some(row) if row.active => row,
        _ => {
            return Err(PageError::NotFound(format!(
                "unknown DAG '{dag_id}' (a DAG whose file has problems is not loaded; the list \
                 shows why)"
            )));
        }
    };
    let dag = state.dag_of(&row).await?.ok_or_else(|| {
        PageError::Internal(format!(
            "version {} of DAG {dag_id} is recorded but its source is missing or no longer parses",
            row.version
        ))
    })?;
    Ok((row, dag))
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath(dag_id): PagePath<String>,
    query: Result<Query<DagQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let Query(q) = query.map_err(|e| PageError::BadRequest(e.body_text()))?;
    render(&state, &who, &dag_id, &q, None).await
}

fn json_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn fields(dag: &Dag, submitted: Option<&Submitted>) -> Vec<Field> {
    dag.params
        .iter()
        .map(|p| {
            let (input, step) = match p.kind {
                ParamType::Integer => ("number", "1"),
                ParamType::Number => ("number", "any"),
                ParamType::Boolean => ("boolean", ""),
                ParamType::String => ("text", ""),
                ParamType::Array | ParamType::Object => ("json", ""),
            };
            let value = submitted
                .and_then(|s| s.values.get(&p.name).cloned())
                .unwrap_or_else(|| p.default.as_ref().map(json_text).unwrap_or_default());
            Field {
                input_name: format!("p_{}", p.name),
                name: p.name.clone(),
                kind: p.kind.as_str(),
                input,
                step,
                options: p.rules.one_of.iter().flatten().map(json_text).collect(),
                min: p.rules.minimum.map(|m| m.to_string()).unwrap_or_default(),
                max: p.rules.maximum.map(|m| m.to_string()).unwrap_or_default(),
                // HTML anchors a pattern to the whole value; JSON Schema (and the engine) does not.
                pattern: p
                    .rules
                    .pattern
                    .as_ref()
                    .map(|r| format!(".*(?:{r}).*"))
                    .unwrap_or_default(),
                value,
                description: p.description.clone().unwrap_or_default(),
                error: submitted.and_then(|s| s.errors.get(&p.name).cloned()),
            }
        })
        .collect()
}

/// One grid cell: a single instance links to its task page; a mapped task's instances are one
/// cell, coloured by the state that needs attention first, with their count.
fn cell(run: &RunRow, task_id: &str, groups: &[&TiCount]) -> Cell {
    match groups {
        [] => Cell {
            href: run_href(&run.run_id),
            class: "cell s-none".into(),
            title: format!("{task_id}: not in this run"),
            text: String::new(),
        },
        [g] if g.count == 1 && g.max_map_index == UNMAPPED => Cell {
            href: task_href(&run.run_id, task_id, UNMAPPED, None),
            class: format!("cell s-{}", g.state.as_str()),
            title: format!(
                "{task_id}: {} (try {}) — {}",
                g.state.as_str(),
                g.max_try_number,
                run.run_id
            ),
            text: String::new(),
        },
        many => {
            let total: i64 = many.iter().map(|g| g.count).sum();
            let shown = dominant(many.iter().map(|g| g.state)).unwrap_or(TaskState::Scheduled);
            Cell {
                href: format!("{}#task-{}", run_href(&run.run_id), urlenc(task_id)),
                class: format!("cell mapped s-{}", shown.as_str()),
                title: format!(
                    "{task_id}: {total} instances ({}) — {}",
                    many.iter()
                        .map(|g| format!("{} {}", g.count, g.state.as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                    run.run_id
                ),
                text: total.to_string(),
            }
        }
    }
}

async fn render(
    state: &AppState,
    who: &Who,
    dag_id: &str,
    q: &DagQuery,
    submitted: Option<Submitted>,
) -> PageResult {
    let (row, dag) = active(state, dag_id).await?;
    let page = runs_page(state, &row, q).await?;
    let runs = &page.runs;
    let selected = selected_run(state, &row, q, runs).await?;
    // The whole grid in one grouped query, however many mapped instances the runs have.
    let mut ids: Vec<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    if let Some(s) = &selected
        && !ids.contains(&s.run_id)
    {
        ids.push(s.run_id.clone());
    }
    let counts = state.store.grid_counts(&ids).await?;
    let at = now();
    let next = ops::next_run_at(state.store.as_ref(), &row, Some(&dag), at).await?;
    let failed = submitted.is_some();
    let live = runs.iter().any(|r| !r.state.is_terminal());
    let mut base = Base::new(format!("DAG {dag_id}"), who);
    if live && !failed {
        base.refresh = Some(3);
    }
    let page = DagPage {
        base,
        can_operate: who.can_operate(),
        pause_href: format!("{}/pause", dag_href(dag_id)),
        trigger_href: format!("{}/trigger", dag_href(dag_id)),
        backfill_href: format!("{}/backfills", dag_href(dag_id)),
        backfills: super::backfill::lines(state, dag_id).await?,
        scheduled: dag.schedule.is_some(),
        description: row.description.clone().unwrap_or_default(),
        schedule: row.schedule.clone(),
        schedule_words: dag.schedule.as_ref().map(|s| s.describe()),
        timezone: row.timezone.clone(),
        next_run: fmt_time(next),
        paused: row.paused,
        tags: row.tags.clone(),
        fileloc: row.fileloc.clone(),
        heads: heads(dag_id, q, runs, selected.as_ref()),
        grid: grid(&dag, runs, &counts),
        older_href: page.older_href,
        newest_href: page.newest_href,
        graph: graph(&dag, selected.as_ref(), &counts),
        selected_href: selected.as_ref().map(|r| run_href(&r.run_id)),
        selected: selected.map(|r| r.run_id),
        durations: durations(runs, at),
        fields: fields(&dag, submitted.as_ref()),
        logical_date: submitted
            .as_ref()
            .map(|s| s.logical_date.clone())
            .unwrap_or_default(),
        trigger_error: submitted.as_ref().and_then(|s| s.error.clone()),
        trigger_open: failed,
        dag_id: row.dag_id,
    };
    let mut res = html(&page);
    if failed {
        *res.status_mut() = StatusCode::BAD_REQUEST;
    }
    Ok(res)
}

/// One page of the grid's runs, oldest at the left as time reads, with the links to the older
/// page and back to the newest.
struct RunsPage {
    runs: Vec<RunRow>,
    older_href: Option<String>,
    newest_href: Option<String>,
}

async fn runs_page(state: &AppState, row: &DagRow, q: &DagQuery) -> PageResult<RunsPage> {
    let dag_id = row.dag_id.as_str();
    let cursor = ops::dag_cursor(state.store.as_ref(), dag_id, q.before.as_deref()).await?;
    // One more than a page, to know whether there is an older page.
    let mut runs = state
        .store
        .list_runs(&RunFilter {
            dag_id: Some(dag_id.to_string()),
            state: None,
            limit: PAGE + 1,
            before: cursor.as_ref().map(|r| r.queued_at),
            before_run_id: cursor.as_ref().map(|r| r.run_id.clone()),
        })
        .await?;
    let more = runs.len() as i64 > PAGE;
    runs.truncate(PAGE as usize);
    let older_href = more.then(|| {
        runs.last()
            .map(|r| format!("{}?before={}", dag_href(dag_id), urlenc(&r.run_id)))
            .unwrap_or_default()
    });
    runs.reverse();
    Ok(RunsPage {
        runs,
        older_href,
        newest_href: cursor.is_some().then(|| dag_href(dag_id)),
    })
}

/// The run the graph shows: the one asked for (which must be this DAG's), else the newest.
async fn selected_run(
    state: &AppState,
    row: &DagRow,
    q: &DagQuery,
    runs: &[RunRow],
) -> PageResult<Option<RunRow>> {
    let Some(id) = &q.run else {
        return Ok(runs.last().cloned());
    };
    let run = ops::get_run(state.store.as_ref(), id).await?;
    if run.dag_id != row.dag_id {
        return Err(PageError::BadRequest(format!(
            "run: '{id}' is not a run of DAG '{}'",
            row.dag_id
        )));
    }
    Ok(Some(run))
}

/// The grid's counts of one task in one run.
fn groups<'c>(counts: &'c [TiCount], run_id: &str, task_id: &str) -> Vec<&'c TiCount> {
    counts
        .iter()
        .filter(|c| c.run_id == run_id && c.task_id == task_id)
        .collect()
}

fn heads(dag_id: &str, q: &DagQuery, runs: &[RunRow], selected: Option<&RunRow>) -> Vec<RunHead> {
    runs.iter()
        .map(|r| {
            let mut select = format!("{}?run={}", dag_href(dag_id), urlenc(&r.run_id));
            if let Some(b) = &q.before {
                select.push_str(&format!("&before={}", urlenc(b)));
            }
            RunHead {
                href: run_href(&r.run_id),
                select_href: select,
                class: format!("head s-{}", r.state.as_str()),
                title: format!(
                    "{} — {} ({})",
                    r.run_id,
                    r.state.as_str(),
                    fmt_time(Some(r.logical_date))
                ),
                selected: selected.is_some_and(|s| s.run_id == r.run_id),
            }
        })
        .collect()
}

fn grid(dag: &Dag, runs: &[RunRow], counts: &[TiCount]) -> Vec<GridRow> {
    dag.tasks
        .iter()
        .map(|t| GridRow {
            task_id: t.id.clone(),
            cells: runs
                .iter()
                .map(|r| cell(r, &t.id, &groups(counts, &r.run_id, &t.id)))
                .collect(),
        })
        .collect()
}

/// The DAG's graph, each task coloured by its state in the selected run and linked to it.
fn graph(dag: &Dag, selected: Option<&RunRow>, counts: &[TiCount]) -> Graph {
    let state_of = |task: &str| -> (Option<String>, Option<String>) {
        let Some(run) = selected else {
            return (None, None);
        };
        let mine = groups(counts, &run.run_id, task);
        let st = dominant(mine.iter().map(|g| g.state)).map(|s| s.as_str().to_string());
        let href = match mine.as_slice() {
            [g] if g.count == 1 && g.max_map_index == UNMAPPED => {
                task_href(&run.run_id, task, UNMAPPED, None)
            }
            _ => format!("{}#task-{}", run_href(&run.run_id), urlenc(task)),
        };
        (st, Some(href))
    };
    let tasks: Vec<GraphTask> = dag
        .tasks
        .iter()
        .map(|t| {
            let (st, href) = state_of(&t.id);
            GraphTask {
                id: &t.id,
                depends_on: &t.depends_on,
                state: st,
                href,
            }
        })
        .collect();
    svg::graph(&tasks)
}

fn durations(runs: &[RunRow], at: chrono::DateTime<chrono::Utc>) -> Durations {
    svg::durations(
        runs.iter()
            .map(|r| {
                let secs = match r.started_at {
                    Some(s) => seconds_between(s, r.ended_at.unwrap_or(at)),
                    None => 0.0,
                };
                (
                    secs,
                    format!("bar s-{}", r.state.as_str()),
                    format!("{} — {} — {}", r.run_id, r.state.as_str(), elapsed(secs)),
                    run_href(&r.run_id),
                )
            })
            .collect(),
    )
}

/// The form's values: what was submitted (to show again) and the params read with their
/// types. Each `p_NAME` is read as `--param` reads it; an emptied field means the default.
fn read_form(dag: &Dag, form: &[(String, String)]) -> (Submitted, serde_json::Map<String, Json>) {
    let mut sub = Submitted::default();
    let mut given = serde_json::Map::new();
    for (k, v) in form {
        if k == "logical_date" {
            sub.logical_date = v.clone();
            continue;
        }
        let Some(name) = k.strip_prefix("p_") else {
            continue;
        };
        sub.values.insert(name.to_string(), v.clone());
        let Some(p) = dag.params.iter().find(|p| p.name == name) else {
            sub.error = Some(format!("DAG '{}' declares no param '{name}'", dag.id));
            continue;
        };
        // Only a string can be meant empty.
        if v.trim().is_empty() && p.kind != ParamType::String {
            continue;
        }
        match p.kind.parse_cli(v) {
            Ok(value) => {
                given.insert(name.to_string(), value);
            }
            Err(e) => {
                sub.errors.insert(name.to_string(), e);
            }
        }
    }
    (sub, given)
}

/// The params a form other than the trigger's posts (`p_NAME`, read as the trigger form reads
/// them), or what is wrong with them, field by field.
pub(super) fn form_params(
    dag: &Dag,
    form: &[(String, String)],
) -> Result<serde_json::Map<String, Json>, String> {
    let (sub, given) = read_form(dag, form);
    let mut wrong: Vec<String> = sub.error.into_iter().collect();
    wrong.extend(
        sub.errors
            .into_iter()
            .map(|(k, e)| format!("param '{k}': {e}")),
    );
    if wrong.is_empty() {
        Ok(given)
    } else {
        Err(wrong.join("; "))
    }
}

impl Submitted {
    /// The engine refused the run: its message goes by the field of the param it names, else
    /// above the form.
    fn refused(&mut self, dag: &Dag, message: String) {
        match dag
            .params
            .iter()
            .find(|p| message.contains(&format!("param '{}'", p.name)))
        {
            Some(p) => {
                self.errors.insert(p.name.clone(), message);
            }
            None => self.error = Some(message),
        }
    }
}

/// The trigger form: `p_NAME` per param (read with the param's type, as `--param` is), an
/// optional `logical_date`, and the CSRF token. Validated by the same `manual_run` as the API.
pub async fn trigger(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath(dag_id): PagePath<String>,
    PageForm(form): PageForm<Vec<(String, String)>>,
) -> PageResult<Response> {
    let csrf = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    who.check_csrf(csrf)?;
    who.require_operator()?;
    let (_, dag) = active(&state, &dag_id).await?;
    let (mut sub, given) = read_form(&dag, &form);
    let logical = match sub.logical_date.trim() {
        "" => None,
        text => match parse_date(text, dag.timezone) {
            Ok(t) => Some(t),
            Err(e) => {
                sub.error = Some(format!("logical date: {e}"));
                None
            }
        },
    };
    let no_query = DagQuery {
        before: None,
        run: None,
    };
    if sub.error.is_none()
        && let Err(e) =
            crate::ops::queue_room(state.store.as_ref(), &dag_id, state.max_queued_runs).await
    {
        match e {
            OpError::Busy(message) => sub.error = Some(message),
            other => return Err(other.into()),
        }
    }
    if sub.error.is_some() || !sub.errors.is_empty() {
        return render(&state, &who, &dag_id, &no_query, Some(sub)).await;
    }
    let run = match scheduler::manual_run(&dag, &given, logical).map_err(OpError::from) {
        Ok(run) => run,
        Err(OpError::Invalid(message)) => {
            sub.refused(&dag, message);
            return render(&state, &who, &dag_id, &no_query, Some(sub)).await;
        }
        Err(e) => return Err(e.into()),
    };
    state.store.create_run(&run).await?;
    tracing::info!(
        "run {} triggered through the web pages by token '{}'",
        run.run_id,
        who.name
    );
    Ok(Redirect::to(&format!(
        "{}?run={}",
        dag_href(&dag_id),
        urlenc(&run.run_id)
    ))
    .into_response())
}
