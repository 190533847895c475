//! `experiment`: the results of an A/B test from an assignments table (unit, variant, optionally
//! experiment) and an outcomes table (unit, value), per variant against the control.
//!
//! A unit counts once per variant it was assigned to; a unit with no outcome counts 0. For
//! `metric: conversion` a unit converted when any of its outcome rows is non-zero (its value is
//! the largest of them); for `metric: mean` its value is the sum of its rows. The statistics
//! ([`stats`], [`sequential`]) are a pure function of the per-arm sums.
//!
//! `method` chooses the test: `fixed` reads each run alone at alpha (right for one look at a
//! planned sample), `sequential` is valid however often the DAG looks (the default for a DAG on
//! a schedule, which looks again every interval; a DAG with no schedule defaults to `fixed`).

mod record;
pub mod sequential;
#[cfg(test)]
mod simulation;
pub mod stats;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use flow_engine::store::ExperimentState;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::on_spark::{self, Engine};
use super::{Num, column_f64, column_text, ident, literal};
use crate::connections::Connections;
use crate::error::fatal;
pub use stats::{Analysis, Arm, History, Method, Metric, Mixing, Settings, analyze};

pub struct Experiment {
    connections: Arc<Connections>,
}

impl Experiment {
    pub fn new(connections: Arc<Connections>) -> Experiment {
        Experiment { connections }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    experiment: String,
    assignments: Json,
    outcomes: Json,
    #[serde(default = "default_metric")]
    metric: Metric,
    #[serde(default = "default_control")]
    control: String,
    #[serde(default = "default_alpha")]
    alpha: Num<f64>,
    #[serde(default = "default_min_units")]
    min_units_per_arm: Num<u64>,
    method: Option<Method>,
    tau2: Option<Num<f64>>,
    #[serde(default = "default_planned_units")]
    planned_units_per_arm: Num<u64>,
    output: Option<Json>,
    engine: Option<Json>,
    spark: Option<Json>,
}

fn default_metric() -> Metric {
    Metric::Conversion
}
fn default_control() -> String {
    "control".to_string()
}
fn default_alpha() -> Num<f64> {
    Num(0.05)
}
fn default_min_units() -> Num<u64> {
    Num(0)
}
fn default_planned_units() -> Num<u64> {
    Num(10_000)
}

impl Config {
    /// The look's settings; a DAG on a schedule defaults to the sequential test.
    fn settings(
        &self,
        first: Option<Method>,
        scheduled: bool,
    ) -> Result<Settings<'_>, OperatorError> {
        let alpha = self.alpha.0;
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(fatal(format!(
                "experiment: alpha must be between 0 and 1, not {alpha}"
            )));
        }
        let mixing = match &self.tau2 {
            Some(Num(t)) if *t > 0.0 && t.is_finite() => Mixing::Tau2(*t),
            Some(Num(t)) => {
                return Err(fatal(format!(
                    "experiment: tau2 must be a positive number, not {t}"
                )));
            }
            None if self.planned_units_per_arm.0 == 0 => {
                return Err(fatal(
                    "experiment: planned_units_per_arm must be at least 1".to_string(),
                ));
            }
            None => Mixing::PlannedUnitsPerArm(self.planned_units_per_arm.0),
        };
        Ok(Settings {
            metric: self.metric,
            control: &self.control,
            alpha,
            min_units_per_arm: self.min_units_per_arm.0,
            method: self.method.or(first).unwrap_or(if scheduled {
                Method::Sequential
            } else {
                Method::Fixed
            }),
            mixing,
        })
    }
}
/// The arms' sums, by variant name, through DataFusion.
async fn arms(
    cfg: &Config,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Vec<Arm>, OperatorError> {
    let schema = super::schema("assignments", &cfg.assignments, ctx, conns).await?;
    for col in ["unit", "variant"] {
        if schema.field_with_name(col).is_err() {
            return Err(fatal(format!(
                "experiment: assignments have no column `{col}` (they need unit and variant)"
            )));
        }
    }
    let filter = if schema.field_with_name("experiment").is_ok() {
        format!(
            "WHERE {} = {}",
            ident("experiment"),
            literal(&cfg.experiment)
        )
    } else {
        String::new()
    };
    let per_unit = match cfg.metric {
        Metric::Conversion => "MAX",
        Metric::Mean => "SUM",
    };
    let query = format!(
        "WITH a AS (SELECT DISTINCT CAST(unit AS VARCHAR) AS unit, CAST(variant AS VARCHAR) AS variant \
           FROM assignments {filter}), \
         o AS (SELECT CAST(unit AS VARCHAR) AS unit, {per_unit}(CAST(value AS DOUBLE)) AS value \
           FROM outcomes GROUP BY CAST(unit AS VARCHAR)) \
         SELECT a.variant AS variant, COUNT(*) AS units, SUM(COALESCE(o.value, 0)) AS total, \
           SUM(COALESCE(o.value, 0) * COALESCE(o.value, 0)) AS total_sq \
         FROM a LEFT JOIN o ON a.unit = o.unit GROUP BY a.variant ORDER BY a.variant"
    );
    let (_, batches) = crate::sql::read(
        &[
            ("assignments", &cfg.assignments),
            ("outcomes", &cfg.outcomes),
        ],
        &query,
        ctx,
        conns,
    )
    .await?;
    let names = column_text(&batches, "variant", "experiment")?;
    let units = column_f64(&batches, "units", "experiment")?;
    let totals = column_f64(&batches, "total", "experiment")?;
    let squares = column_f64(&batches, "total_sq", "experiment")?;
    Ok(names
        .into_iter()
        .zip(units)
        .zip(totals.into_iter().zip(squares))
        .filter_map(|((name, n), (sum, sum_sq))| {
            Some(Arm {
                variant: name?,
                units: n as u64,
                sum,
                sum_sq,
            })
        })
        .collect())
}

/// The arms' sums, computed by a Spark job from the same tables.
async fn arms_on_spark(
    cfg: &Config,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Vec<Arm>, OperatorError> {
    let dags = &ctx.dag_folder;
    let job = json!({
        "experiment": cfg.experiment,
        "metric": cfg.metric.as_str(),
        "assignments": on_spark::data(&cfg.assignments, "assignments", dags)?,
        "outcomes": on_spark::data(&cfg.outcomes, "outcomes", dags)?,
    });
    let result = on_spark::run("experiment", cfg.spark.as_ref(), job, ctx, conns).await?;
    serde_json::from_value(result["arms"].clone()).map_err(|e| {
        fatal(format!(
            "experiment: the Spark job's arms are unreadable: {e}"
        ))
    })
}

/// Logs each variant's numbers, then the verdict.
async fn log_result(result: &Json, experiment: &str, ctx: &TaskContext) {
    for v in result["variants"].as_array().into_iter().flatten() {
        ctx.log
            .line(&format!(
                "experiment {}: {} units={} mean={} lift={} ci={} p={}",
                experiment,
                v["variant"].as_str().unwrap_or_default(),
                v["units"],
                v["mean"],
                v["lift"],
                v["lift_ci"],
                v["p_value"]
            ))
            .await;
    }
    ctx.log
        .line(&format!(
            "experiment {}: {} test, look {}: {} (sample ratio p = {})",
            experiment,
            result["method"].as_str().unwrap_or_default(),
            result["looks"],
            if result["concluded"] == true {
                format!("concluded, winner {}", result["winner"])
            } else {
                "not yet significant".to_string()
            },
            result["srm_p_value"]
        ))
        .await;
}

/// Says why an ended experiment was not computed again.
async fn log_ended(result: &Json, experiment: &str, ctx: &TaskContext) {
    let how = match result["state"].as_str() {
        Some("concluded") => format!("concluded (winner {})", result["winner"]),
        _ => "stopped".to_string(),
    };
    ctx.log
        .line(&format!(
            "experiment {experiment}: {how} after {} looks; its recorded result stands and the \
             data is not read again (`flow experiments show {experiment}`)",
            result["looks"]
        ))
        .await;
}

/// The results as a table, one row per variant.
fn table(result: &Json, experiment: &str) -> Result<(Arc<Schema>, RecordBatch), OperatorError> {
    let rows = result["variants"].as_array().cloned().unwrap_or_default();
    let f = |key: &str, i: Option<usize>| -> Vec<Option<f64>> {
        rows.iter()
            .map(|r| match i {
                None => r[key].as_f64(),
                Some(i) => r[key][i].as_f64(),
            })
            .collect()
    };
    let schema = Arc::new(Schema::new(vec![
        Field::new("experiment", DataType::Utf8, false),
        Field::new("variant", DataType::Utf8, false),
        Field::new("units", DataType::Int64, false),
        Field::new("mean", DataType::Float64, true),
        Field::new("lift", DataType::Float64, true),
        Field::new("lift_ci_low", DataType::Float64, true),
        Field::new("lift_ci_high", DataType::Float64, true),
        Field::new("p_value", DataType::Float64, true),
        Field::new("concluded", DataType::Boolean, false),
        Field::new("winner", DataType::Boolean, false),
    ]));
    let winner = result["winner"].as_str();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![experiment; rows.len()])),
        Arc::new(StringArray::from(
            rows.iter()
                .map(|r| r["variant"].as_str().unwrap_or_default().to_string())
                .collect::<Vec<_>>(),
        )),
        Arc::new(Int64Array::from(
            rows.iter()
                .map(|r| r["units"].as_i64().unwrap_or(0))
                .collect::<Vec<_>>(),
        )),
        Arc::new(Float64Array::from(f("mean", None))),
        Arc::new(Float64Array::from(f("lift", None))),
        Arc::new(Float64Array::from(f("lift_ci", Some(0)))),
        Arc::new(Float64Array::from(f("lift_ci", Some(1)))),
        Arc::new(Float64Array::from(f("p_value", None))),
        Arc::new(BooleanArray::from(vec![
            result["concluded"]
                .as_bool()
                .unwrap_or(false);
            rows.len()
        ])),
        Arc::new(BooleanArray::from(
            rows.iter()
                .map(|r| winner.is_some() && r["variant"].as_str() == winner)
                .collect::<Vec<_>>(),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| fatal(format!("experiment: {e}")))?;
    Ok((schema, batch))
}

#[async_trait]
impl Operator for Experiment {
    fn name(&self) -> &'static str {
        "experiment"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["experiment", "assignments", "outcomes"],
            optional: &[
                "metric",
                "control",
                "alpha",
                "min_units_per_arm",
                "method",
                "tau2",
                "planned_units_per_arm",
                "output",
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
        let cfg: Config = super::config(config, "experiment")?;
        let who = record::Looker {
            name: &cfg.experiment,
            dag_id: &ctx.dag_id,
            task_id: &ctx.task_id,
            run_id: &ctx.run_id,
        };
        let store = ctx.experiments.as_deref();
        let rec = match store {
            Some(store) => record::read(store, &who, cfg.metric).await?,
            None => None,
        };
        // An experiment keeps the method of its first look unless the key says otherwise.
        let first = rec.as_ref().and_then(|r| Method::parse(&r.method));
        let settings = cfg.settings(first, ctx.scheduled)?;
        if let Some(ended) = rec.as_ref().filter(|r| r.state != ExperimentState::Running) {
            let result = record::ended(ended, &ctx.run_id);
            log_ended(&result, &cfg.experiment, ctx).await;
            return Ok(Some(result));
        }
        let arms = match Engine::parse(cfg.engine.as_ref(), "experiment")? {
            Engine::Local => arms(&cfg, ctx, &self.connections).await?,
            Engine::Spark => arms_on_spark(&cfg, ctx, &self.connections).await?,
        };
        let mut result = record::look(store, &who, &arms, &settings, rec).await?;
        log_result(&result, &cfg.experiment, ctx).await;
        record_metrics(&result, &cfg.experiment);
        if let Some(output) = &cfg.output {
            let (schema, batch) = table(&result, &cfg.experiment)?;
            let written =
                crate::sql::write(schema, vec![batch], output, ctx, &self.connections).await?;
            result["table"] = written["path"].clone();
        }
        Ok(Some(result))
    }
}

/// Each compared variant's lift and p-value, as gauges.
fn record_metrics(result: &Json, experiment: &str) {
    for v in result["variants"].as_array().into_iter().flatten() {
        if let (Some(variant), Some(lift), Some(p_value)) = (
            v["variant"].as_str(),
            v["lift"].as_f64(),
            v["p_value"].as_f64(),
        ) {
            flow_engine::metrics::metrics().experiment_measured(
                &flow_engine::metrics::VariantMeasured {
                    experiment,
                    variant,
                    lift,
                    p_value,
                },
            );
        }
    }
}
