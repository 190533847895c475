//! Run notifications: a JSON message that Slack's incoming webhooks accept, posted when a run
//! ends or an alert fires. A failing webhook is logged and never changes the run.

use std::time::Duration;

use serde_json::json;

use crate::secrets::{Masker, Secrets};
use crate::template;

#[derive(Debug, Clone)]
pub struct RunEnded {
    pub dag_id: String,
    pub run_id: String,
    pub state: String,
    pub failed_tasks: Vec<String>,
    pub url: String,
}

/// The message body: `text` for Slack, the same facts as fields for other receivers.
pub fn message(ev: &RunEnded) -> serde_json::Value {
    let text = if ev.failed_tasks.is_empty() {
        format!(
            "flow: run {} of DAG {} ended {}. {}",
            ev.run_id, ev.dag_id, ev.state, ev.url
        )
    } else {
        format!(
            "flow: run {} of DAG {} ended {}; failed tasks: {}. {}",
            ev.run_id,
            ev.dag_id,
            ev.state,
            ev.failed_tasks.join(", "),
            ev.url
        )
    };
    json!({
        "text": text,
        "dag_id": ev.dag_id,
        "run_id": ev.run_id,
        "state": ev.state,
        "failed_tasks": ev.failed_tasks,
        "url": ev.url,
    })
}

/// [`post_json`], a failure logged as `what` (`notification`, `task_retry alert`) for the run:
/// a webhook never changes what it reports on.
pub fn post_logged(
    webhook_template: &str,
    dag_id: &str,
    run_id: &str,
    body: &serde_json::Value,
    secrets: &Secrets,
    what: &str,
) {
    if let Err(e) = post_json(webhook_template, dag_id, run_id, body, secrets) {
        tracing::warn!("{what} for run {run_id}: {e}");
    }
}

/// Renders the webhook template (it may name secrets) and posts `body` (a run's end,
/// [`message`], or an alert's, [`crate::alerts::Alert::message`]). Blocking: call it from
/// `spawn_blocking`.
pub fn post_json(
    webhook_template: &str,
    dag_id: &str,
    run_id: &str,
    body: &serde_json::Value,
    secrets: &Secrets,
) -> Result<(), String> {
    let masker: Masker = secrets.masker();
    let ctx = template::context(json!({
        "secrets": secrets.to_json(),
        "dag_id": dag_id,
        "run_id": run_id,
    }));
    let url = template::render(webhook_template, &ctx)
        .map_err(|e| format!("webhook URL did not render: {}", masker.mask(&e)))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(true)
        .build()
        .into();
    agent
        .post(&url)
        .send_json(body)
        .map(|_| ())
        .map_err(|e| masker.mask(&format!("webhook {} failed: {e}", url)))
}
