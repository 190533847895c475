//! `/datasets`: every dataset with its producers, consumers and last event (issue 23).

use std::sync::Arc;

use askama::Template;
use axum::extract::State;

use super::{Base, PageResult, Who, dag_href, fmt_time, html, run_href};
use crate::state::AppState;

/// A link's text and target.
type Link = (String, String);

pub struct LastEvent {
    pub when: String,
    /// The producing run, when a task recorded it.
    pub source: Option<Link>,
}

pub struct DatasetItem {
    pub uri: String,
    pub producers: Vec<Link>,
    pub consumers: Vec<Link>,
    pub last_event: Option<LastEvent>,
}

#[derive(Template)]
#[template(path = "datasets.html")]
struct DatasetsPage {
    base: Base,
    datasets: Vec<DatasetItem>,
}

pub async fn list(State(state): State<Arc<AppState>>, who: Who) -> PageResult {
    let datasets = state
        .store
        .datasets()
        .await?
        .into_iter()
        .map(|d| DatasetItem {
            producers: d
                .producers
                .iter()
                .map(|p| {
                    let dag = p.split('.').next().unwrap_or_default();
                    (p.clone(), dag_href(dag))
                })
                .collect(),
            consumers: d
                .consumers
                .iter()
                .map(|c| (c.clone(), dag_href(c)))
                .collect(),
            last_event: d.last_event.map(|e| LastEvent {
                when: fmt_time(Some(e.created_at)),
                source: e
                    .source
                    .map(|s| (format!("{}.{}", s.dag_id, s.task_id), run_href(&s.run_id))),
            }),
            uri: d.uri,
        })
        .collect();
    Ok(html(&DatasetsPage {
        base: Base::new("Datasets", &who),
        datasets,
    }))
}
