//! Data-aware scheduling (issue 23): a task `produces:` dataset URIs, and a DAG may be scheduled
//! on datasets (`schedule: { datasets: [...], mode: any|all }`, with or without a `cron`).

use std::collections::BTreeSet;

use super::{Dag, Problem};
use crate::template;
use crate::yaml::Pos;

/// When a DAG runs on datasets.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSchedule {
    pub datasets: Vec<DatasetRef>,
    pub mode: DatasetMode,
}

impl DatasetSchedule {
    pub fn uris(&self) -> Vec<String> {
        self.datasets.iter().map(|d| d.uri.clone()).collect()
    }
}

/// A dataset a DAG is scheduled on.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRef {
    pub uri: String,
    /// Updated from outside flow (`POST /api/v1/datasets/events`), so no task need produce it.
    pub external: bool,
    pub pos: Pos,
}

/// Whether one updated dataset starts a run, or every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum DatasetMode {
    /// A run as soon as any of the datasets has a new event (Airflow's `|`).
    Any,
    /// A run once every dataset has a new event since the last such run (Airflow's `&`).
    All,
}

impl DatasetMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetMode::Any => "any",
            DatasetMode::All => "all",
        }
    }
}

impl Dag {
    /// The schedule as the DAG list shows it: the cron text, the datasets, or both.
    pub fn schedule_display(&self) -> Option<String> {
        let datasets = self.datasets.as_ref().map(|d| {
            let uris: Vec<&str> = d.datasets.iter().map(|r| r.uri.as_str()).collect();
            format!("datasets ({}): {}", d.mode.as_str(), uris.join(", "))
        });
        match (&self.schedule_text, datasets) {
            (Some(cron), Some(d)) => Some(format!("{cron} or {d}")),
            (cron, d) => d.or_else(|| cron.clone()),
        }
    }
}

/// Why `uri` cannot name a dataset, if it cannot. Any scheme will do (`s3://`, `warehouse://`,
/// `model://`): flow compares URIs as text and never opens one.
pub fn uri_problem(uri: &str) -> Option<String> {
    if template::is_template(uri) {
        return Some(format!(
            "dataset URI '{uri}' is a template; a dataset is named by fixed text, so that \
             consumers can be matched to it when the DAGs load"
        ));
    }
    let scheme_ok = uri.split_once("://").is_some_and(|(scheme, rest)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
            && !rest.is_empty()
    });
    let clean = !uri.chars().any(|c| c.is_whitespace() || c.is_control());
    (!scheme_ok || !clean).then(|| {
        format!(
            "dataset URI '{uri}' must be scheme://path without spaces \
             (s3://lake/training_set/, warehouse://analytics.predictions)"
        )
    })
}

/// The consumed datasets that no task of `dags` produces and that are not marked `external`:
/// each a problem at the consumer's line, as `flow dags validate` reports them.
pub fn unproduced_datasets(dags: &[Dag]) -> Vec<Problem> {
    let produced: BTreeSet<&str> = dags
        .iter()
        .flat_map(|d| d.tasks.iter())
        .flat_map(|t| t.produces.iter().map(String::as_str))
        .collect();
    let mut out = Vec::new();
    for dag in dags {
        let Some(schedule) = &dag.datasets else {
            continue;
        };
        for d in schedule.datasets.iter().filter(|d| !d.external) {
            if !produced.contains(d.uri.as_str()) {
                out.push(Problem {
                    path: dag.path.display().to_string(),
                    pos: d.pos,
                    message: format!(
                        "DAG '{}' is scheduled on dataset '{}', which no task produces; \
                         add it to a task's 'produces', or write {{ uri: ..., external: true }} \
                         if it is updated from outside flow",
                        dag.id, d.uri
                    ),
                });
            }
        }
    }
    out
}
