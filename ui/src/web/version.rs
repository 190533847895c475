//! `/dags/{dag_id}/versions/{version}`: the YAML a run ran (issue 23), linked from the run page.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;

use super::{Base, PageError, PagePath, PageResult, Who, dag_href, fmt_time, html};
use crate::state::AppState;

#[derive(Template)]
#[template(path = "version.html")]
struct VersionPage {
    base: Base,
    dag_id: String,
    dag_href: String,
    version: String,
    fileloc: String,
    seen: String,
    source: String,
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath((dag_id, version)): PagePath<(String, String)>,
) -> PageResult {
    let stored = state
        .store
        .dag_source(&dag_id, &version)
        .await?
        .ok_or_else(|| {
            PageError::NotFound(format!("DAG '{dag_id}' has no stored version '{version}'"))
        })?;
    Ok(html(&VersionPage {
        base: Base::new(format!("{dag_id} version {version}"), &who),
        dag_href: dag_href(&dag_id),
        dag_id,
        version,
        fileloc: stored.fileloc,
        seen: fmt_time(Some(stored.seen_at)),
        source: stored.source,
    }))
}

/// Where a version's page is.
pub fn version_href(dag_id: &str, version: &str) -> String {
    format!("{}/versions/{}", dag_href(dag_id), super::urlenc(version))
}
