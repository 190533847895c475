//! Alerts besides a run's end (issue 22): a task's failure or retry (`on_failure` and `on_retry`
//! on a task or in `defaults:`), a missed SLA (`sla:` on a DAG or a task, counted from the end of
//! the run's data interval), and a run stuck queued (`[notifications] stuck_queued`).
//!
//! Which alerts are due is decided here without I/O; the scheduler posts them (once each across
//! schedulers, through [`crate::store::AlertStore`]) and the executor posts a try's own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use crate::dag::{Dag, Notification};
use crate::state::{RunState, TaskState};
use crate::store::{AlertKey, RunRow};

/// What an alert says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A try failed for good (no retry left).
    TaskFailed,
    /// A try failed and another will follow.
    TaskRetry,
    /// A run, or a task of it, had not succeeded by its SLA.
    SlaMissed,
    /// A run waited queued longer than `stuck_queued`.
    StuckQueued,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::TaskFailed => "task_failed",
            AlertKind::TaskRetry => "task_retry",
            AlertKind::SlaMissed => "sla_missed",
            AlertKind::StuckQueued => "stuck_queued",
        }
    }
}

/// One alert to post: the failure webhook's fields, and what it is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub kind: AlertKind,
    pub dag_id: String,
    pub run_id: String,
    /// None for an alert about the run itself.
    pub task_id: Option<String>,
    /// The run's state, or the task's for a task's alert.
    pub state: String,
    /// The sentence the message's `text` ends with.
    pub detail: String,
    pub url: String,
}

impl Alert {
    /// The body posted: the run-end message's fields (`text`, `dag_id`, `run_id`, `state`,
    /// `failed_tasks`, `url`), so a receiver of failures reads it unchanged, with `alert` and
    /// `task_id` added.
    pub fn message(&self) -> serde_json::Value {
        let about = match &self.task_id {
            Some(t) => format!("task {t} of run {} of DAG {}", self.run_id, self.dag_id),
            None => format!("run {} of DAG {}", self.run_id, self.dag_id),
        };
        let failed: Vec<&str> = match self.kind {
            AlertKind::TaskFailed => self.task_id.as_deref().into_iter().collect(),
            _ => Vec::new(),
        };
        json!({
            "text": format!("flow: {about}: {}. {}", self.detail, self.url),
            "alert": self.kind.as_str(),
            "dag_id": self.dag_id,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "state": self.state,
            "failed_tasks": failed,
            "url": self.url,
        })
    }

    /// The key that makes it once-only across schedulers.
    pub fn key(&self) -> AlertKey {
        AlertKey {
            run_id: self.run_id.clone(),
            kind: self.kind.as_str(),
            task_id: self.task_id.clone(),
        }
    }
}

/// When a deadline counted from the end of `run`'s data interval falls.
fn deadline(run: &RunRow, sla: Duration) -> DateTime<Utc> {
    run.data_interval_end + chrono::Duration::from_std(sla).unwrap_or(chrono::Duration::MAX)
}

/// The run-level alerts due for an active run: its SLA passed, or it waited queued too long.
pub fn run_alerts_due(
    dag: &Dag,
    run: &RunRow,
    now: DateTime<Utc>,
    stuck_after: Option<Duration>,
    base_url: &str,
) -> Vec<Alert> {
    let mut due = Vec::new();
    if run.state.is_terminal() {
        return due;
    }
    let alert = |kind, detail: String| Alert {
        kind,
        dag_id: dag.id.clone(),
        run_id: run.run_id.clone(),
        task_id: None,
        state: run.state.as_str().to_string(),
        detail,
        url: run_url(base_url, &run.run_id),
    };
    if let Some(sla) = dag.sla
        && now > deadline(run, sla)
    {
        due.push(alert(
            AlertKind::SlaMissed,
            format!(
                "missed its SLA of {} after its data interval ({} at {})",
                crate::time::as_written(sla),
                run.state.as_str(),
                crate::time::rfc3339(now)
            ),
        ));
    }
    if let Some(after) = stuck_after
        && run.state == RunState::Queued
        && (now - run.queued_at)
            .to_std()
            .is_ok_and(|waited| waited > after)
    {
        due.push(alert(
            AlertKind::StuckQueued,
            format!(
                "queued for more than {} (max_active_runs or a paused DAG may hold it)",
                crate::time::as_written(after)
            ),
        ));
    }
    due
}

/// The earliest task SLA of `dag` that has passed for `run`: when none has, the run's task
/// states need not be read.
pub fn task_sla_passed(dag: &Dag, run: &RunRow, now: DateTime<Utc>) -> bool {
    !run.state.is_terminal() && dag.tasks.iter().any(|t| task_sla_passed_for(t, run, now))
}

/// Whether `task`'s SLA, if it has one, has passed for `run`.
pub fn task_sla_passed_for(task: &crate::dag::Task, run: &RunRow, now: DateTime<Utc>) -> bool {
    task.sla.is_some_and(|sla| now > deadline(run, sla))
}

/// A task instance's state, as the SLA check reads it.
pub struct TaskStateAt<'a> {
    pub task_id: &'a str,
    pub state: TaskState,
}

/// The task SLAs `run` missed: a task with `sla:` whose deadline passed while some instance of
/// it (any map index) had not succeeded or been skipped.
pub fn task_alerts_due(
    dag: &Dag,
    run: &RunRow,
    states: &[TaskStateAt<'_>],
    now: DateTime<Utc>,
    base_url: &str,
) -> Vec<Alert> {
    let mut due = Vec::new();
    for task in &dag.tasks {
        let Some(sla) = task.sla.filter(|_| task_sla_passed_for(task, run, now)) else {
            continue;
        };
        let mut mine = states.iter().filter(|s| s.task_id == task.id).peekable();
        // No instance yet (its upstream has not finished) counts as not done.
        let pending = mine.peek().is_none()
            || mine.any(|s| !matches!(s.state, TaskState::Success | TaskState::Skipped));
        if pending {
            due.push(Alert {
                kind: AlertKind::SlaMissed,
                dag_id: dag.id.clone(),
                run_id: run.run_id.clone(),
                task_id: Some(task.id.clone()),
                state: run.state.as_str().to_string(),
                detail: format!(
                    "not done within its SLA of {} after the data interval",
                    crate::time::as_written(sla)
                ),
                url: run_url(base_url, &run.run_id),
            });
        }
    }
    due
}

/// The alert a try's end calls for, with the webhook to post it to: the task's `on_retry` when
/// another try follows, its `on_failure` when none does.
pub fn try_alert(
    dag: &Dag,
    run: &RunRow,
    task_id: &str,
    state: TaskState,
    detail: String,
    base_url: &str,
) -> Option<(Notification, Alert)> {
    let task = dag.task(task_id)?;
    let (kind, to) = match state {
        TaskState::Failed => (AlertKind::TaskFailed, task.on_failure.clone()?),
        TaskState::UpForRetry => (AlertKind::TaskRetry, task.on_retry.clone()?),
        _ => return None,
    };
    Some((
        to,
        Alert {
            kind,
            dag_id: dag.id.clone(),
            run_id: run.run_id.clone(),
            task_id: Some(task_id.to_string()),
            state: state.as_str().to_string(),
            detail,
            url: run_url(base_url, &run.run_id),
        },
    ))
}

fn run_url(base_url: &str, run_id: &str) -> String {
    format!("{}/runs/{run_id}", base_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests;
