//! Experiments as records (docs/ml.md): `flow experiments list|show|stop`, and the JSON the
//! CLI and the API share.

use anyhow::Result;
use flow_engine::store::{ExperimentRecord, ExperimentState};
use serde::Serialize;
use serde_json::{Value as Json, json};
use utoipa::ToSchema;

use crate::cli::{ExperimentsCommand, Global};
use crate::context::{open, usage};
use crate::render::{short_ts, table};
use flow_engine::time::rfc3339;

/// The leading compared variant (the smallest p-value); once concluded, the deciding one.
#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderView {
    pub variant: String,
    /// The variant's mean minus the control's.
    pub lift: f64,
    /// The (1 - alpha) interval of the lift: for `sequential`, the confidence sequence
    /// intersected over every look.
    pub lift_ci: [f64; 2],
    pub p_value: f64,
}

/// An experiment's record for one metric (`GET /api/v1/experiments`,
/// `flow experiments list --json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExperimentView {
    pub name: String,
    /// conversion or mean
    pub metric: String,
    /// fixed or sequential, kept from the first look
    pub method: String,
    pub alpha: f64,
    /// running, concluded or stopped
    pub state: String,
    pub looks: i64,
    pub winner: Option<String>,
    pub leader: Option<LeaderView>,
    pub dag_id: String,
    pub task_id: String,
    pub last_run_id: String,
    /// The run whose look concluded the experiment.
    pub concluded_run_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// When it concluded or was stopped.
    pub ended_at: Option<String>,
    /// The `experiment` task's output at the last look.
    #[schema(value_type = Object)]
    pub result: Json,
}

pub fn experiment_json(e: &ExperimentRecord) -> Json {
    json!({
        "name": e.name,
        "metric": e.metric,
        "method": e.method,
        "alpha": e.alpha,
        "state": e.state.as_str(),
        "looks": e.looks,
        "winner": e.winner,
        "leader": e.leader.as_ref().map(|l| json!({
            "variant": l.variant,
            "lift": l.lift,
            "lift_ci": [l.lift_low, l.lift_high],
            "p_value": l.p_value,
        })),
        "dag_id": e.dag_id,
        "task_id": e.task_id,
        "last_run_id": e.last_run_id,
        "concluded_run_id": e.concluded_run_id,
        "created_at": rfc3339(e.created_at),
        "updated_at": rfc3339(e.updated_at),
        "ended_at": e.ended_at.map(rfc3339),
        "result": e.result,
    })
}

fn row(e: &ExperimentRecord) -> Vec<String> {
    let lead = e.leader.as_ref();
    vec![
        e.name.clone(),
        e.metric.clone(),
        e.method.clone(),
        e.state.as_str().to_string(),
        e.looks.to_string(),
        e.winner.clone().unwrap_or_else(|| "-".to_string()),
        lead.map_or("-".to_string(), |l| {
            format!(
                "{} {:+.4} [{:.4}, {:.4}]",
                l.variant, l.lift, l.lift_low, l.lift_high
            )
        }),
        lead.map_or("-".to_string(), |l| format!("{:.4}", l.p_value)),
        short_ts(Some(e.updated_at)),
    ]
}

const HEADER: [&str; 9] = [
    "experiment",
    "metric",
    "method",
    "state",
    "looks",
    "winner",
    "lift [interval]",
    "p",
    "updated",
];

fn print(list: &[ExperimentRecord], as_json: bool) -> Result<()> {
    if as_json {
        let list: Vec<Json> = list.iter().map(experiment_json).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!("{}", table(&HEADER, list.iter().map(row).collect()));
    }
    Ok(())
}

pub(crate) async fn command(g: &Global, command: ExperimentsCommand) -> Result<u8> {
    let ctx = open(g).await?;
    match command {
        ExperimentsCommand::List { json } => {
            print(&ctx.store.experiments().await?, json)?;
        }
        ExperimentsCommand::Show { name, json } => {
            let list: Vec<ExperimentRecord> = ctx
                .store
                .experiments()
                .await?
                .into_iter()
                .filter(|e| e.name == name)
                .collect();
            if list.is_empty() {
                return Err(usage(format!(
                    "unknown experiment '{name}': see `flow experiments list`"
                )));
            }
            print(&list, json)?;
            if !json {
                for e in &list {
                    println!("\n{} ({}), last look:", e.name, e.metric);
                    println!("{}", serde_json::to_string_pretty(&e.result)?);
                }
            }
        }
        ExperimentsCommand::Stop { name } => {
            let list = ctx.store.stop_experiment(&name, chrono::Utc::now()).await?;
            if list.is_empty() {
                return Err(usage(format!(
                    "unknown experiment '{name}': see `flow experiments list`"
                )));
            }
            for e in &list {
                eprintln!(
                    "{} ({}): {}",
                    e.name,
                    e.metric,
                    match e.state {
                        ExperimentState::Stopped => "stopped: its task reads no more data",
                        ExperimentState::Concluded => "concluded before; it stays concluded",
                        ExperimentState::Running => "still running",
                    }
                );
            }
        }
    }
    Ok(0)
}
