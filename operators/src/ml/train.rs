//! `train`: fits a model on a training set, measures it on a held-out split, writes the model
//! (see [`super::model`]) to the artifact store and registers it as a new candidate version.
//!
//! - The rows are shuffled with `seed` (ChaCha8, the same order on every machine) and the first
//!   `validation_split` of them held out; with a split of 0 the metrics are on the training rows.
//!   Rows whose label is missing are left out.
//! - `gradient_boosting` is perpetual's booster (log loss or squared error, its `budget` 0.5 by
//!   default, the seed given); `logistic_regression` is linfa's (L-BFGS, L2 penalty `alpha`,
//!   default 1.0, on standardized features), for classification only.
//! - Classification labels are 0/1 (or booleans); metrics: `auc`, `accuracy` (at 0.5) and
//!   `log_loss`. Regression metrics: `rmse`, `mae`.
//! - The artifact is `ARTIFACTS/MODEL/HASH/model.json`, HASH from its content: a retry that trains
//!   the same model writes the same file, and no two models share a path.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Schema};
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use flow_engine::store::{DataInterval, ModelRegistry, NewModelVersion};
use object_store::ObjectStoreExt;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tracing::Instrument;

use super::model::{
    Algorithm, Column, Encoding, FORMAT, Feature, Model, TaskKind, auc, categorical_columns,
    encode, learn_features,
};
use super::on_spark::{self, Engine};
use super::{Num, column_f64, column_text, ident, num};
use crate::connections::Connections;
use crate::error::fatal;
use crate::storage::Location;

pub struct Train {
    connections: Arc<Connections>,
}

impl Train {
    pub fn new(connections: Arc<Connections>) -> Train {
        Train { connections }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    training_set: Json,
    label: String,
    features: Option<Vec<String>>,
    id_column: Option<String>,
    #[serde(default = "default_task")]
    task: TaskKind,
    #[serde(default = "default_algorithm")]
    algorithm: Algorithm,
    #[serde(default = "default_split")]
    validation_split: Num<f64>,
    #[serde(default = "default_seed")]
    seed: Num<u64>,
    model: String,
    artifacts: String,
    /// The training set's dataset URI, for lineage: the version is linked to its events.
    dataset: Option<String>,
    /// For an `s3://` artifact store.
    connection: Option<String>,
    /// perpetual's budget (gradient_boosting).
    budget: Option<Num<f32>>,
    /// The L2 penalty (logistic_regression).
    alpha: Option<Num<f64>>,
    max_iterations: Option<Num<u64>>,
    /// The trees' depth (gradient_boosting on Spark: MLlib grows trees to a fixed depth).
    max_depth: Option<Num<u64>>,
    engine: Option<Json>,
    spark: Option<Json>,
}

fn default_task() -> TaskKind {
    TaskKind::Classification
}
fn default_algorithm() -> Algorithm {
    Algorithm::GradientBoosting
}
fn default_split() -> Num<f64> {
    Num(0.2)
}
fn default_seed() -> Num<u64> {
    Num(42)
}

/// The selected rows of each column.
fn pick(columns: &[Column], rows: &[usize]) -> Vec<Column> {
    columns
        .iter()
        .map(|c| match c {
            Column::Numbers(v) => Column::Numbers(rows.iter().map(|r| v[*r]).collect()),
            Column::Text(v) => Column::Text(rows.iter().map(|r| v[*r].clone()).collect()),
        })
        .collect()
}

/// Validation metrics of `predicted` against `actual`.
pub fn metrics(task: TaskKind, predicted: &[f64], actual: &[f64]) -> Json {
    let n = actual.len().max(1) as f64;
    match task {
        TaskKind::Classification => {
            let correct = predicted
                .iter()
                .zip(actual)
                .filter(|(p, y)| (**p >= 0.5) == (**y > 0.5))
                .count();
            let log_loss = predicted
                .iter()
                .zip(actual)
                .map(|(p, y)| {
                    let p = p.clamp(1e-15, 1.0 - 1e-15);
                    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
                })
                .sum::<f64>()
                / n;
            json!({
                "auc": auc(predicted, actual).map_or(Json::Null, num),
                "accuracy": num(correct as f64 / n),
                "log_loss": num(log_loss),
            })
        }
        TaskKind::Regression => {
            let (mut se, mut ae) = (0.0, 0.0);
            for (p, y) in predicted.iter().zip(actual) {
                se += (p - y).powi(2);
                ae += (p - y).abs();
            }
            json!({ "rmse": num((se / n).sqrt()), "mae": num(ae / n) })
        }
    }
}

struct Fitting {
    algorithm: Algorithm,
    task: TaskKind,
    label: String,
    names: Vec<String>,
    columns: Vec<Column>,
    labels: Vec<f64>,
    split: f64,
    seed: u64,
    budget: f32,
    alpha: f64,
    max_iterations: u64,
}

/// Splits, fits and measures; CPU-bound, so it runs on a blocking thread.
fn fit(f: Fitting) -> Result<(Model, Json, usize, usize), String> {
    let n = f.labels.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(f.seed));
    let held = ((n as f64) * f.split).round() as usize;
    let held = held.min(n.saturating_sub(1));
    let (val_rows, train_rows) = order.split_at(held);
    let (mut train_rows, mut val_rows) = (train_rows.to_vec(), val_rows.to_vec());
    // Rows in their original order within each part, so the fit does not depend on the shuffle
    // beyond the split.
    train_rows.sort_unstable();
    val_rows.sort_unstable();
    let train_cols = pick(&f.columns, &train_rows);
    let train_y: Vec<f64> = train_rows.iter().map(|r| f.labels[*r]).collect();
    let features = learn_features(&f.names, &train_cols);
    let (buf, width) = encode(&features, &train_cols, Encoding::of(f.algorithm))?;
    let rows = train_rows.len();
    let mut model = Model {
        format: FORMAT.to_string(),
        task: f.task,
        algorithm: f.algorithm,
        label: f.label.clone(),
        features: features.clone(),
        weights: None,
        intercept: None,
        booster: None,
        ensemble: None,
    };
    match f.algorithm {
        Algorithm::GradientBoosting => {
            model.booster = Some(boost(&f, &features, &buf, rows, width, &train_y)?);
        }
        Algorithm::LogisticRegression => {
            let linear = logistic(&f, buf, rows, width, &train_y)?;
            model.weights = Some(linear.weights);
            model.intercept = Some(linear.intercept);
        }
    }
    let (eval_rows, eval_y) = if val_rows.is_empty() {
        (train_rows, train_y)
    } else {
        let y = val_rows.iter().map(|r| f.labels[*r]).collect();
        (val_rows, y)
    };
    let eval_cols = pick(&f.columns, &eval_rows);
    let (buf, width) = encode(&features, &eval_cols, Encoding::of(f.algorithm))?;
    let predicted = model.scorer()?.predict(&buf, eval_rows.len(), width)?;
    let m = metrics(f.task, &predicted, &eval_y);
    Ok((model, m, rows, held))
}

/// perpetual's booster fitted on the encoded rows (`rows` by `width`, column-major), as the
/// JSON the model keeps.
fn boost(
    f: &Fitting,
    features: &[Feature],
    buf: &[f64],
    rows: usize,
    width: usize,
    train_y: &[f64],
) -> Result<Box<serde_json::value::RawValue>, String> {
    use perpetual::booster::config::BoosterIO;
    let objective = match f.task {
        TaskKind::Classification => perpetual::objective::Objective::LogLoss,
        TaskKind::Regression => perpetual::objective::Objective::SquaredLoss,
    };
    let cats = categorical_columns(features);
    let mut booster = perpetual::PerpetualBooster::default()
        .set_objective(objective)
        .set_budget(f.budget)
        .set_seed(f.seed)
        .set_categorical_features((!cats.is_empty()).then_some(cats));
    booster
        .fit(
            &perpetual::Matrix::new(buf, rows, width),
            train_y,
            None,
            None,
        )
        .map_err(|e| format!("gradient boosting: {e}"))?;
    let dumped = booster.json_dump().map_err(|e| e.to_string())?;
    serde_json::value::RawValue::from_string(dumped).map_err(|e| e.to_string())
}

/// A linear model's weights and intercept.
struct Linear {
    weights: Vec<f64>,
    intercept: f64,
}

/// linfa's logistic regression fitted on the encoded rows (`rows` by `width`, column-major),
/// scoring P(label = 1).
fn logistic(
    f: &Fitting,
    buf: Vec<f64>,
    rows: usize,
    width: usize,
    train_y: &[f64],
) -> Result<Linear, String> {
    use linfa::traits::Fit;
    let x = ndarray::Array2::from_shape_vec((width, rows), buf)
        .map_err(|e| e.to_string())?
        .reversed_axes();
    let y = ndarray::Array1::from_iter(train_y.iter().map(|v| *v > 0.5));
    let ds = linfa::DatasetBase::new(x, y);
    let fitted = linfa_logistic::LogisticRegression::<f64>::default()
        .alpha(f.alpha)
        .max_iterations(f.max_iterations)
        .fit(&ds)
        .map_err(|e| format!("logistic regression: {e}"))?;
    // linfa's positive class is the more frequent label; the model scores P(label = 1).
    let sign = if fitted.labels().pos.class { 1.0 } else { -1.0 };
    Ok(Linear {
        weights: fitted.params().iter().map(|w| sign * w).collect(),
        intercept: sign * fitted.intercept(),
    })
}

/// Reads the training set with DataFusion and fits in this process.
async fn in_process(
    cfg: &Config,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<(Model, Json, usize, usize), OperatorError> {
    let schema = super::schema("training_set", &cfg.training_set, ctx, conns).await?;
    let names = feature_names(cfg, &schema)?;
    let query = TrainingQuery::new(cfg, &schema, &names)?;
    let (_, batches) = crate::sql::read(
        &[("training_set", &cfg.training_set)],
        &query.sql,
        ctx,
        conns,
    )
    .await?;
    let labels = column_f64(&batches, &cfg.label, "train")?;
    check_labels(cfg, &labels)?;
    let mut columns = Vec::new();
    for (n, is_text) in names.iter().zip(&query.text) {
        columns.push(if *is_text {
            Column::Text(column_text(&batches, n, "train")?)
        } else {
            Column::Numbers(column_f64(&batches, n, "train")?)
        });
    }
    ctx.log
        .line(&format!(
            "train: {} rows, {} features ({}), {} {}",
            labels.len(),
            names.len(),
            names.join(", "),
            cfg.task.as_str(),
            cfg.algorithm.as_str()
        ))
        .await;
    let fitting = Fitting {
        algorithm: cfg.algorithm,
        task: cfg.task,
        label: cfg.label.clone(),
        names: names.clone(),
        columns,
        labels,
        split: cfg.validation_split.0,
        seed: cfg.seed.0,
        budget: cfg.budget.map_or(0.5, |b| b.0),
        alpha: cfg.alpha.map_or(1.0, |a| a.0),
        max_iterations: cfg.max_iterations.map_or(200, |m| m.0),
    };
    let span = tracing::info_span!(
        "model.train",
        rows = fitting.labels.len() as i64,
        algorithm = cfg.algorithm.as_str()
    );
    tokio::task::spawn_blocking(move || fit(fitting))
        .instrument(span)
        .await
        .map_err(|e| OperatorError::Retryable(format!("train: the fit stopped: {e}")))?
        .map_err(|e| fatal(format!("train: {e}")))
}

/// The feature columns: `features:`, or else every column but the label and the id column;
/// the label column must be there.
fn feature_names(cfg: &Config, schema: &Schema) -> Result<Vec<String>, OperatorError> {
    if schema.field_with_name(&cfg.label).is_err() {
        return Err(fatal(format!(
            "train: the training set has no label column `{}`",
            cfg.label
        )));
    }
    let names: Vec<String> = match &cfg.features {
        Some(f) if !f.is_empty() => f.clone(),
        _ => schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| *n != cfg.label && Some(n) != cfg.id_column.as_ref())
            .collect(),
    };
    if names.is_empty() {
        return Err(fatal("train: no feature columns"));
    }
    Ok(names)
}

/// The query that reads the labelled rows: text features as text, the rest and the label as
/// numbers.
struct TrainingQuery {
    sql: String,
    /// Whether each feature (in the order of the names) is text.
    text: Vec<bool>,
}

impl TrainingQuery {
    /// The query over `names`, each checked against the training set's schema.
    fn new(
        cfg: &Config,
        schema: &Schema,
        names: &[String],
    ) -> Result<TrainingQuery, OperatorError> {
        let mut select = Vec::new();
        let mut text = Vec::new();
        for n in names {
            let field = schema
                .field_with_name(n)
                .map_err(|_| fatal(format!("train: the training set has no column `{n}`")))?;
            let is_text = matches!(
                field.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Dictionary(..)
            );
            text.push(is_text);
            select.push(if is_text {
                format!("CAST({} AS VARCHAR) AS {}", ident(n), ident(n))
            } else {
                format!("CAST({} AS DOUBLE) AS {}", ident(n), ident(n))
            });
        }
        let label = ident(&cfg.label);
        let sql = format!(
            "SELECT {}, CAST({label} AS DOUBLE) AS {label} FROM training_set WHERE {label} IS NOT NULL",
            select.join(", ")
        );
        Ok(TrainingQuery { sql, text })
    }
}

/// Enough labelled rows, and for classification labels of 0 and 1 with both present.
fn check_labels(cfg: &Config, labels: &[f64]) -> Result<(), OperatorError> {
    if labels.len() < 2 {
        return Err(fatal(format!(
            "train: the training set has {} labelled rows; at least 2 are needed",
            labels.len()
        )));
    }
    if cfg.task == TaskKind::Classification {
        if let Some(bad) = labels.iter().find(|y| **y != 0.0 && **y != 1.0) {
            return Err(fatal(format!(
                "train: a classification label must be 0 or 1 (or a boolean); `{}` has {bad}",
                cfg.label
            )));
        }
        let positives = labels.iter().filter(|y| **y == 1.0).count();
        if positives == 0 || positives == labels.len() {
            return Err(fatal(format!(
                "train: every label is {}; a classifier needs both classes",
                if positives == 0 { 0 } else { 1 }
            )));
        }
    }
    Ok(())
}

/// Fits with Spark MLlib (see `ml::on_spark`): the job learns the same feature encodings,
/// splits with `seed`, fits, measures on the held-out rows with the scorer `predict` uses on
/// Spark, and hands back the `flow-model/1` document.
async fn on_spark(
    cfg: &Config,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<(Model, Json, usize, usize), OperatorError> {
    let gradient = cfg.algorithm == Algorithm::GradientBoosting;
    let dags = &ctx.dag_folder;
    let job = json!({
        "training_set": on_spark::data(&cfg.training_set, "training_set", dags)?,
        "label": cfg.label,
        "features": cfg.features.clone().unwrap_or_default(),
        "id_column": cfg.id_column,
        "task": cfg.task.as_str(),
        "algorithm": cfg.algorithm.as_str(),
        "validation_split": cfg.validation_split.0,
        "seed": cfg.seed.0,
        "alpha": cfg.alpha.map_or(1.0, |a| a.0),
        "max_iterations": cfg.max_iterations.map_or(if gradient { 50 } else { 200 }, |m| m.0),
        "max_depth": cfg.max_depth.map_or(5, |d| d.0),
    });
    if cfg.budget.is_some() {
        ctx.log
            .line("train: `budget` is perpetual's; Spark's trees take max_iterations and max_depth")
            .await;
    }
    let result = on_spark::run("train", cfg.spark.as_ref(), job, ctx, conns).await?;
    let unreadable = |e: serde_json::Error| fatal(format!("train: the Spark job's result: {e}"));
    let model: Model = serde_json::from_value(result["model"].clone()).map_err(unreadable)?;
    let count = |k: &str| result["rows"][k].as_u64().unwrap_or(0) as usize;
    let (train_rows, held) = (count("train"), count("validation"));
    Ok((model, result["metrics"].clone(), train_rows, held))
}

/// Writes the model to `ARTIFACTS/MODEL/HASH/model.json` (see the module's note); returns where.
async fn store_artifact(
    cfg: &Config,
    model: &Model,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Location, OperatorError> {
    let bytes = serde_json::to_vec(model).map_err(|e| fatal(e.to_string()))?;
    let hash = crate::storage::content_hash(&bytes);
    let artifact = format!(
        "{}/{}/{hash}/model.json",
        cfg.artifacts.trim_end_matches('/'),
        cfg.model
    );
    let location = Location::parse(&artifact, &ctx.dag_folder)?;
    let aws = conns.aws(cfg.connection.as_deref(), &ctx.secrets)?;
    let (store, path) = location.store(&aws)?;
    if let Location::Local(p) = &location
        && let Some(dir) = p.parent()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| fatal(format!("train: cannot create {}: {e}", dir.display())))?;
    }
    store
        .put(&path, bytes.into())
        .await
        .map_err(|e| OperatorError::Retryable(format!("train: writing {artifact}: {e}")))?;
    Ok(location)
}

/// Registers the stored model as a new candidate version of `model:`; returns its number.
async fn register_version(
    registry: &dyn ModelRegistry,
    cfg: &Config,
    metrics: &Json,
    location: &Location,
    ctx: &TaskContext,
) -> Result<i64, OperatorError> {
    registry
        .register_model_version(&NewModelVersion {
            model: cfg.model.clone(),
            task: cfg.task.as_str().to_string(),
            algorithm: cfg.algorithm.as_str().to_string(),
            metrics: metrics.clone(),
            artifact: location.url(),
            training_set: cfg.training_set["path"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            dataset: cfg.dataset.clone(),
            data_interval: Some(DataInterval {
                start: ctx.data_interval_start,
                end: ctx.data_interval_end,
            }),
            dag_id: ctx.dag_id.clone(),
            dag_version: ctx.dag_version.clone(),
            run_id: ctx.run_id.clone(),
            task_id: ctx.task_id.clone(),
            created_at: flow_engine::time::now(),
        })
        .await
        .map_err(|e| OperatorError::Retryable(format!("train: registering the model: {e}")))
}

#[async_trait]
impl Operator for Train {
    fn name(&self) -> &'static str {
        "train"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["training_set", "label", "model", "artifacts"],
            optional: &[
                "features",
                "id_column",
                "task",
                "algorithm",
                "validation_split",
                "seed",
                "dataset",
                "connection",
                "budget",
                "alpha",
                "max_iterations",
                "max_depth",
                "engine",
                "spark",
            ],
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: Config = super::config(config, "train")?;
        if !(0.0..1.0).contains(&cfg.validation_split.0) {
            return Err(fatal(
                "train: validation_split must be at least 0 and below 1",
            ));
        }
        if cfg.algorithm == Algorithm::LogisticRegression && cfg.task == TaskKind::Regression {
            return Err(fatal(
                "train: logistic_regression is for classification; use gradient_boosting for regression",
            ));
        }
        let registry = super::registry(ctx, "train")?;
        let conns = &self.connections;
        let engine = Engine::parse(cfg.engine.as_ref(), "train")?;
        let started = std::time::Instant::now();
        let (model, metrics, train_rows, held) = match engine {
            Engine::Local => in_process(&cfg, ctx, conns).await?,
            Engine::Spark => on_spark(&cfg, ctx, conns).await?,
        };
        ctx.log
            .line(&format!(
                "train: fitted on {train_rows} rows in {:.2?} ({}); on {} held-out rows: {metrics}",
                started.elapsed(),
                match engine {
                    Engine::Local => "in flow",
                    Engine::Spark => "on Spark",
                },
                if held == 0 { train_rows } else { held }
            ))
            .await;

        let location = store_artifact(&cfg, &model, ctx, conns).await?;
        let version = register_version(registry.as_ref(), &cfg, &metrics, &location, ctx).await?;
        flow_engine::metrics::metrics().model_measured(&cfg.model, "candidate", &metrics);
        ctx.log
            .line(&format!(
                "train: registered {} version {version} (candidate), artifact {}",
                cfg.model,
                location.url()
            ))
            .await;
        Ok(Some(json!({
            "model": cfg.model,
            "version": version,
            "metrics": metrics,
            "artifact": location.url(),
            "rows": {"train": train_rows, "validation": held},
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fitting(algorithm: Algorithm, task: TaskKind, labels: Vec<f64>, x: Vec<f64>) -> Fitting {
        Fitting {
            algorithm,
            task,
            label: "y".into(),
            names: vec!["x".into()],
            columns: vec![Column::Numbers(x)],
            labels,
            split: 0.25,
            seed: 3,
            budget: 0.5,
            alpha: 1.0,
            max_iterations: 200,
        }
    }

    #[test]
    fn regression_learns_a_line_and_reports_rmse_and_mae() {
        let x: Vec<f64> = (0..400).map(|i| (i % 100) as f64 / 10.0).collect();
        let y: Vec<f64> = x.iter().map(|x| 3.0 * x + 1.0).collect();
        let (model, metrics, train_rows, held) = fit(fitting(
            Algorithm::GradientBoosting,
            TaskKind::Regression,
            y,
            x,
        ))
        .unwrap();
        assert_eq!((train_rows, held), (300, 100));
        assert_eq!(model.task, TaskKind::Regression);
        // y spans 1..31; a fit that learnt the line is off by well under one unit.
        let rmse = metrics["rmse"].as_f64().unwrap();
        assert!(rmse < 1.0, "{metrics}");
        assert!(metrics["mae"].as_f64().unwrap() <= rmse, "{metrics}");
    }

    #[test]
    fn the_same_seed_trains_the_same_model() {
        let x: Vec<f64> = (0..300).map(|i| ((i * 37) % 101) as f64).collect();
        let y: Vec<f64> = x.iter().map(|x| f64::from(*x > 50.0)).collect();
        let a = fit(fitting(
            Algorithm::LogisticRegression,
            TaskKind::Classification,
            y.clone(),
            x.clone(),
        ))
        .unwrap();
        let b = fit(fitting(
            Algorithm::LogisticRegression,
            TaskKind::Classification,
            y,
            x,
        ))
        .unwrap();
        assert_eq!(a.1, b.1);
        assert_eq!(a.0.weights, b.0.weights);
        assert!(a.1["accuracy"].as_f64().unwrap() > 0.9, "{}", a.1);
    }

    #[test]
    fn classification_metrics_are_the_usual_ones() {
        let m = metrics(
            TaskKind::Classification,
            &[0.9, 0.2, 0.6, 0.4],
            &[1.0, 0.0, 0.0, 1.0],
        );
        assert_eq!(m["accuracy"], 0.5);
        assert_eq!(m["auc"], 0.75);
        let expected = -((0.9f64).ln() + (0.8f64).ln() + (0.4f64).ln() + (0.4f64).ln()) / 4.0;
        assert!(
            (m["log_loss"].as_f64().unwrap() - expected).abs() < 1e-12,
            "{m}"
        );
    }
}
