//! `/experiments` and `/experiments/{name}`: the records the `experiment` operator keeps
//! (docs/ml.md), read-only; `flow experiments stop` and the API stop one.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use flow_engine::store::ExperimentRecord;
use serde_json::Value as Json;

use super::{
    Base, PageError, PagePath, PageResult, Who, dag_href, fmt_time, html, run_href, urlenc,
};
use crate::state::AppState;

/// One experiment and metric, as a row and a section.
pub struct ExperimentItem {
    pub name: String,
    pub href: String,
    pub metric: String,
    pub method: String,
    pub state: String,
    pub looks: i64,
    pub winner: String,
    pub leader: String,
    pub p_value: String,
    pub dag_id: String,
    pub dag_href: String,
    pub last_run: (String, String),
    pub concluded_run: Option<(String, String)>,
    pub updated: String,
    pub variants: Vec<VariantItem>,
}

/// A variant's numbers at the last look.
pub struct VariantItem {
    pub variant: String,
    pub units: String,
    pub mean: String,
    pub lift: String,
    pub interval: String,
    pub p_value: String,
}

fn number(v: &Json) -> String {
    v.as_f64().map_or("-".to_string(), |f| format!("{f:.4}"))
}

fn item(e: ExperimentRecord) -> ExperimentItem {
    let variants = e.result["variants"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| VariantItem {
                    variant: v["variant"].as_str().unwrap_or_default().to_string(),
                    units: v["units"].to_string(),
                    mean: number(&v["mean"]),
                    lift: number(&v["lift"]),
                    interval: if v["lift_ci"].is_array() {
                        format!(
                            "[{}, {}]",
                            number(&v["lift_ci"][0]),
                            number(&v["lift_ci"][1])
                        )
                    } else {
                        "-".to_string()
                    },
                    p_value: number(&v["p_value"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let lead = e.leader.as_ref();
    ExperimentItem {
        href: format!("/experiments/{}", urlenc(&e.name)),
        metric: e.metric.clone(),
        method: e.method.clone(),
        state: e.state.as_str().to_string(),
        looks: e.looks,
        winner: e.winner.clone().unwrap_or_else(|| "-".to_string()),
        leader: lead.map_or("-".to_string(), |l| {
            format!(
                "{} {:+.4} [{:.4}, {:.4}]",
                l.variant, l.lift, l.lift_low, l.lift_high
            )
        }),
        p_value: lead.map_or("-".to_string(), |l| format!("{:.4}", l.p_value)),
        dag_href: dag_href(&e.dag_id),
        dag_id: e.dag_id.clone(),
        last_run: (e.last_run_id.clone(), run_href(&e.last_run_id)),
        concluded_run: e
            .concluded_run_id
            .as_ref()
            .map(|r| (r.clone(), run_href(r))),
        updated: fmt_time(Some(e.updated_at)),
        name: e.name,
        variants,
    }
}

#[derive(Template)]
#[template(path = "experiments.html")]
struct ExperimentsPage {
    base: Base,
    experiments: Vec<ExperimentItem>,
}

pub async fn list(State(state): State<Arc<AppState>>, who: Who) -> PageResult {
    let experiments = state
        .store
        .experiments()
        .await?
        .into_iter()
        .map(item)
        .collect();
    Ok(html(&ExperimentsPage {
        base: Base::new("Experiments", &who),
        experiments,
    }))
}

#[derive(Template)]
#[template(path = "experiment.html")]
struct ExperimentPage {
    base: Base,
    name: String,
    metrics: Vec<ExperimentItem>,
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath(name): PagePath<String>,
) -> PageResult {
    let metrics: Vec<ExperimentItem> = state
        .store
        .experiments()
        .await?
        .into_iter()
        .filter(|e| e.name == name)
        .map(item)
        .collect();
    if metrics.is_empty() {
        return Err(PageError::NotFound(format!("unknown experiment '{name}'")));
    }
    Ok(html(&ExperimentPage {
        base: Base::new(format!("Experiment {name}"), &who),
        name,
        metrics,
    }))
}
