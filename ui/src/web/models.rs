//! `/models` and `/models/{model}`: the model registry (docs/ml.md), read-only.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;

use super::{
    Base, PageError, PagePath, PageResult, Who, dag_href, fmt_time, html, run_href, urlenc,
};
use crate::state::AppState;

pub struct ModelItem {
    pub name: String,
    pub href: String,
    pub versions: i64,
    pub latest: i64,
    pub production: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "models.html")]
struct ModelsPage {
    base: Base,
    models: Vec<ModelItem>,
}

pub async fn list(State(state): State<Arc<AppState>>, who: Who) -> PageResult {
    let models = state
        .store
        .models()
        .await?
        .into_iter()
        .map(|m| ModelItem {
            href: format!("/models/{}", urlenc(&m.name)),
            versions: m.versions,
            latest: m.latest_version,
            production: m
                .production_version
                .map_or("-".to_string(), |v| format!("version {v}")),
            created: fmt_time(Some(m.created_at)),
            name: m.name,
        })
        .collect();
    Ok(html(&ModelsPage {
        base: Base::new("Models", &who),
        models,
    }))
}

pub struct VersionItem {
    pub version: i64,
    pub stage: String,
    pub algorithm: String,
    pub metrics: Vec<(String, String)>,
    pub artifact: String,
    pub training_set: String,
    pub interval: String,
    pub dag_id: String,
    pub dag_href: String,
    pub run_id: String,
    pub run_href: String,
    pub created: String,
    pub dag_version: String,
    pub dataset: Option<String>,
    /// The ids of the dataset events it was trained on.
    pub events: Vec<i64>,
    pub used_by: Vec<UseItem>,
}

/// A run that scored with a version.
pub struct UseItem {
    pub run_id: String,
    pub href: String,
    pub dag_id: String,
    pub task_id: String,
    pub at: String,
}

#[derive(Template)]
#[template(path = "model.html")]
struct ModelPage {
    base: Base,
    name: String,
    versions: Vec<VersionItem>,
}

pub async fn page(
    State(state): State<Arc<AppState>>,
    who: Who,
    PagePath(name): PagePath<String>,
) -> PageResult {
    let versions = state.store.model_versions(&name).await?;
    if versions.is_empty() {
        return Err(PageError::NotFound(format!("unknown model '{name}'")));
    }
    let uses = state
        .store
        .model_predictions(&name, crate::render::LINEAGE_USES)
        .await?;
    let versions = versions
        .into_iter()
        .map(|v| VersionItem {
            used_by: uses
                .iter()
                .filter(|u| u.version == v.version)
                .map(|u| UseItem {
                    href: run_href(&u.run_id),
                    run_id: u.run_id.clone(),
                    dag_id: u.dag_id.clone(),
                    task_id: u.task_id.clone(),
                    at: fmt_time(Some(u.created_at)),
                })
                .collect(),
            dag_version: v.new.dag_version.clone(),
            dataset: v.new.dataset.clone(),
            events: v.events.iter().map(|e| e.id).collect(),
            version: v.version,
            stage: v.stage.as_str().to_string(),
            algorithm: v.new.algorithm.clone(),
            metrics: v
                .new
                .metrics
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, x)| {
                            let shown = x.as_f64().map_or(x.to_string(), |f| format!("{f:.4}"));
                            (k.clone(), shown)
                        })
                        .collect()
                })
                .unwrap_or_default(),
            artifact: v.new.artifact.clone(),
            training_set: v.new.training_set.clone(),
            interval: v.new.data_interval.map_or("-".to_string(), |i| {
                format!("{} to {}", fmt_time(Some(i.start)), fmt_time(Some(i.end)))
            }),
            dag_href: dag_href(&v.new.dag_id),
            dag_id: v.new.dag_id.clone(),
            run_href: run_href(&v.new.run_id),
            run_id: v.new.run_id.clone(),
            created: fmt_time(Some(v.new.created_at)),
        })
        .collect();
    Ok(html(&ModelPage {
        base: Base::new(format!("Model {name}"), &who),
        name,
        versions,
    }))
}
