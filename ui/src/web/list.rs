//! `/`: the DAGs, with their schedules, pause toggles, last runs, and the files that failed to
//! load.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Redirect};
use chrono::{DateTime, Utc};
use flow_engine::store::{DagRow, RunFilter};
use flow_engine::time::now;
use serde::Deserialize;

use super::{
    Base, PageError, PageForm, PagePath, PageResult, Who, dag_href, fmt_time, html, run_href,
    urlenc,
};
use crate::ops;
use crate::state::AppState;

/// How many of a DAG's latest runs the list shows as marks.
const LAST_RUNS: i64 = 10;

pub struct Mark {
    pub href: String,
    pub class: String,
    pub title: String,
}

pub struct Tag {
    pub name: String,
    pub href: String,
}

pub struct DagItem {
    pub dag_id: String,
    pub href: String,
    pub pause_href: String,
    pub description: String,
    pub schedule: Option<String>,
    pub schedule_words: Option<String>,
    pub timezone: String,
    pub next_run: String,
    pub paused: bool,
    pub tags: Vec<Tag>,
    /// Oldest first, so the newest is at the right.
    pub marks: Vec<Mark>,
}

pub struct ImportError {
    pub file: String,
    pub messages: Vec<String>,
}

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage {
    base: Base,
    can_operate: bool,
    dags: Vec<DagItem>,
    errors: Vec<ImportError>,
    tag: String,
    q: String,
    all_tags: Vec<Tag>,
    total: usize,
}

#[derive(Deserialize)]
pub struct ListQuery {
    tag: Option<String>,
    q: Option<String>,
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: Who,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> PageResult {
    let Query(q) = query.map_err(|e| PageError::BadRequest(e.body_text()))?;
    let tag = q.tag.unwrap_or_default();
    let search = q.q.unwrap_or_default();
    let needle = search.trim().to_lowercase();
    let rows = state.store.list_dags().await?;
    let mut all_tags: Vec<String> = rows.iter().flat_map(|r| r.tags.clone()).collect();
    all_tags.sort();
    all_tags.dedup();
    let total = rows.len();
    let at = now();
    let mut dags = Vec::new();
    for row in rows {
        if shown(&row, &tag, &needle) {
            dags.push(item(&state, row, at).await?);
        }
    }
    let errors = import_errors(&state).await?;
    Ok(html(&ListPage {
        base: Base::new("DAGs", &who),
        can_operate: who.can_operate(),
        dags,
        errors,
        tag,
        q: search,
        all_tags: all_tags.iter().map(|t| tag_link(t)).collect(),
        total,
    }))
}

/// Whether a DAG passes the tag filter and the search (its id or description).
fn shown(row: &DagRow, tag: &str, needle: &str) -> bool {
    if !tag.is_empty() && !row.tags.iter().any(|t| t == tag) {
        return false;
    }
    needle.is_empty()
        || row.dag_id.to_lowercase().contains(needle)
        || row
            .description
            .as_deref()
            .unwrap_or("")
            .to_lowercase()
            .contains(needle)
}

fn tag_link(t: &str) -> Tag {
    Tag {
        name: t.to_string(),
        href: format!("/?tag={}", urlenc(t)),
    }
}

/// One DAG's line: schedule, next run and the marks of its last runs.
async fn item(state: &AppState, row: DagRow, at: DateTime<Utc>) -> PageResult<DagItem> {
    let dag = state.dag_of(&row).await?;
    let next = ops::next_run_at(state.store.as_ref(), &row, dag.as_deref(), at).await?;
    let runs = state
        .store
        .list_runs(&RunFilter {
            dag_id: Some(row.dag_id.clone()),
            limit: LAST_RUNS,
            ..RunFilter::default()
        })
        .await?;
    let marks = runs
        .iter()
        .rev()
        .map(|r| Mark {
            href: run_href(&r.run_id),
            class: format!("mark s-{}", r.state.as_str()),
            title: format!("{} — {}", r.run_id, r.state.as_str()),
        })
        .collect();
    Ok(DagItem {
        href: dag_href(&row.dag_id),
        pause_href: format!("{}/pause", dag_href(&row.dag_id)),
        description: row.description.clone().unwrap_or_default(),
        schedule_words: dag
            .as_ref()
            .and_then(|d| d.schedule.as_ref().map(|s| s.describe())),
        schedule: row.schedule.clone(),
        timezone: row.timezone.clone(),
        next_run: if row.paused && next.is_some() {
            format!("{} (paused)", fmt_time(next))
        } else {
            fmt_time(next)
        },
        paused: row.paused,
        tags: row.tags.iter().map(|t| tag_link(t)).collect(),
        marks,
        dag_id: row.dag_id,
    })
}

async fn import_errors(state: &AppState) -> PageResult<Vec<ImportError>> {
    Ok(state
        .store
        .import_errors()
        .await?
        .into_iter()
        .map(|(file, messages)| ImportError {
            // The loader's messages already start with `file:line:col`; others get the file.
            messages: messages
                .into_iter()
                .map(|m| {
                    if m.starts_with(&file) {
                        m
                    } else {
                        format!("{file}: {m}")
                    }
                })
                .collect(),
            file,
        })
        .collect())
}

#[derive(Deserialize)]
pub struct PauseForm {
    csrf: Option<String>,
    paused: String,
    /// `dag` to come back to the DAG's page; else the list.
    back: Option<String>,
}

pub async fn pause(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath(dag_id): PagePath<String>,
    PageForm(form): PageForm<PauseForm>,
) -> PageResult {
    who.check_csrf(form.csrf.as_deref())?;
    who.require_operator()?;
    let paused = match form.paused.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Err(PageError::BadRequest(format!(
                "paused must be true or false, not '{other}'"
            )));
        }
    };
    match state.store.get_dag(&dag_id).await? {
        Some(row) if row.active => {}
        _ => return Err(PageError::NotFound(format!("unknown DAG '{dag_id}'"))),
    }
    state.store.set_paused(&dag_id, paused).await?;
    tracing::info!(
        "DAG {dag_id} {} through the web pages by token '{}'",
        if paused { "paused" } else { "unpaused" },
        who.name
    );
    let to = if form.back.as_deref() == Some("dag") {
        dag_href(&dag_id)
    } else {
        "/".to_string()
    };
    Ok(Redirect::to(&to).into_response())
}
