//! The DAG page's backfills (issue 23): the form that makes one, each one's progress, and its
//! cancel button; the same as `flow backfill` and the API.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use flow_engine::scheduler::backfills::{BackfillRequest, create_backfill};
use flow_engine::store::Rerun;
use flow_engine::time::{now, rfc3339};

use super::{PageError, PageForm, PagePath, PageResult, Who, dag_href, urlenc};
use crate::ops::OpError;
use crate::state::AppState;

/// One backfill in the DAG page's list.
pub struct BackfillLine {
    pub id: String,
    pub range: String,
    pub state: String,
    /// `success / failed / unfinished of covered`.
    pub progress: String,
    /// Where its cancel button posts, while it runs.
    pub cancel_href: Option<String>,
}

/// The DAG's backfills, newest first, for its page.
pub async fn lines(state: &AppState, dag_id: &str) -> PageResult<Vec<BackfillLine>> {
    let mut out = Vec::new();
    for b in state
        .store
        .list_backfills(Some(dag_id))
        .await?
        .into_iter()
        .take(20)
    {
        let p = state.store.backfill_progress(&b.id).await?;
        out.push(BackfillLine {
            range: format!("{} .. {}", rfc3339(b.from), rfc3339(b.to)),
            progress: format!(
                "{} succeeded, {} failed, {} unfinished; {} created, {} existed",
                p.success,
                p.failed,
                p.active(),
                b.created,
                b.existing
            ),
            cancel_href: (b.state == "running")
                .then(|| format!("{}/backfills/{}/cancel", dag_href(dag_id), urlenc(&b.id))),
            state: b.state,
            id: b.id,
        });
    }
    Ok(out)
}

fn field<'f>(form: &'f [(String, String)], name: &str) -> Option<&'f str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn checked(who: &Who, form: &[(String, String)]) -> Result<(), PageError> {
    who.check_csrf(field(form, "csrf"))?;
    who.require_operator()
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath(dag_id): PagePath<String>,
    PageForm(form): PageForm<Vec<(String, String)>>,
) -> PageResult<Response> {
    checked(&who, &form)?;
    let (_, dag) = super::dag::active(&state, &dag_id).await?;
    let bad = |e: anyhow::Error| PageError::BadRequest(format!("{e:#}"));
    let (Some(from), Some(to)) = (field(&form, "from"), field(&form, "to")) else {
        return Err(PageError::BadRequest("a backfill needs from and to".into()));
    };
    let rerun = field(&form, "rerun").unwrap_or("none");
    let req = BackfillRequest {
        from: crate::backfill::day_bound(from, &dag, false, "from").map_err(bad)?,
        to: crate::backfill::day_bound(to, &dag, true, "to").map_err(bad)?,
        params: super::dag::form_params(&dag, &form).map_err(PageError::BadRequest)?,
        rerun: Rerun::parse(rerun)
            .ok_or_else(|| PageError::BadRequest(format!("rerun '{rerun}'")))?,
        reverse: field(&form, "reverse").is_some(),
        max_active_runs: match field(&form, "max_active_runs") {
            Some(n) => Some(n.parse().map_err(|_| {
                PageError::BadRequest(format!("max active runs '{n}' is not a count"))
            })?),
            None => None,
        },
        dry_run: false,
    };
    let made = create_backfill(state.store.as_ref(), &dag, &req)
        .await
        .map_err(OpError::from)?;
    if let Some(b) = made.backfill {
        tracing::info!(
            "backfill {} of {dag_id} made through the web pages by token '{}'",
            b.id,
            who.name
        );
    }
    Ok(Redirect::to(&format!("{}#backfills", dag_href(&dag_id))).into_response())
}

pub async fn cancel(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath((dag_id, id)): PagePath<(String, String)>,
    PageForm(form): PageForm<Vec<(String, String)>>,
) -> PageResult<Response> {
    checked(&who, &form)?;
    if state.store.cancel_backfill(&id, now()).await?.is_none() {
        return Err(PageError::NotFound(format!("no backfill '{id}'")));
    }
    tracing::info!(
        "backfill {id} cancelled through the web pages by token '{}'",
        who.name
    );
    Ok(Redirect::to(&format!("{}#backfills", dag_href(&dag_id))).into_response())
}
