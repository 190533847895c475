//! `experiment`: the results of an A/B test from an assignments table (unit, variant, optionally
//! experiment) and an outcomes table (unit, value), per variant against the control.
//!
//! - A unit counts once per variant it was assigned to; a unit with no outcome counts 0. For
//!   `metric: conversion` a unit converted when any of its outcome rows is non-zero (its value is
//!   the largest of them); for `metric: mean` its value is the sum of its rows.
//! - `conversion`: the two-proportion z-test with the pooled proportion for the p-value, and the
//!   unpooled standard error for the interval of the difference (the usual Wald interval).
//! - `mean`: Welch's t-test (unequal variances, Welch-Satterthwaite degrees of freedom), and the
//!   t interval of the difference with those degrees of freedom.
//! - The sample-ratio-mismatch check is a chi-square goodness-of-fit test of the arm sizes against
//!   an equal split.
//!
//! The statistics are a pure function of per-arm sums ([`analyze`]), checked against values that
//! scipy and statsmodels computed (`operators/tests/fixtures/experiment_reference.json`, made by
//! `operators/tests/fixtures/experiment_reference.py`).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

use super::on_spark::{self, Engine};
use super::{Num, column_f64, column_text, ident, literal, num};
use crate::connections::Connections;
use crate::error::fatal;

pub struct Experiment {
    connections: Arc<Connections>,
}

impl Experiment {
    pub fn new(connections: Arc<Connections>) -> Experiment {
        Experiment { connections }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Conversion,
    Mean,
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

/// One arm's sums: units, the sum of their values and of their squares.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Arm {
    pub variant: String,
    pub units: u64,
    pub sum: f64,
    pub sum_sq: f64,
}

impl Arm {
    fn mean(&self) -> f64 {
        self.sum / self.units as f64
    }

    /// The sample variance (n - 1 in the denominator).
    fn variance(&self) -> f64 {
        let n = self.units as f64;
        ((self.sum_sq - self.sum * self.sum / n) / (n - 1.0)).max(0.0)
    }
}

/// A variant's comparison with the control: the difference of means, its interval, the p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    pub lift: f64,
    pub low: f64,
    pub high: f64,
    pub p_value: f64,
}

fn standard_normal() -> Normal {
    Normal::standard()
}

/// The two-proportion z-test of `v` against `c` (see the module's note).
pub fn two_proportions(v: &Arm, c: &Arm, alpha: f64) -> Option<Comparison> {
    if v.units == 0 || c.units == 0 {
        return None;
    }
    let (nv, nc) = (v.units as f64, c.units as f64);
    let (pv, pc) = (v.sum / nv, c.sum / nc);
    let pooled = (v.sum + c.sum) / (nv + nc);
    let se0 = (pooled * (1.0 - pooled) * (1.0 / nv + 1.0 / nc)).sqrt();
    let lift = pv - pc;
    // Both arms all 0 or all 1: no evidence of any difference.
    let p_value = if se0 > 0.0 {
        2.0 * standard_normal().sf((lift / se0).abs())
    } else {
        1.0
    };
    let se = (pv * (1.0 - pv) / nv + pc * (1.0 - pc) / nc).sqrt();
    let z = standard_normal().inverse_cdf(1.0 - alpha / 2.0);
    Some(Comparison {
        lift,
        low: lift - z * se,
        high: lift + z * se,
        p_value,
    })
}

/// Welch's t-test of `v` against `c` (see the module's note); None with fewer than two units in
/// an arm.
pub fn welch(v: &Arm, c: &Arm, alpha: f64) -> Option<Comparison> {
    if v.units < 2 || c.units < 2 {
        return None;
    }
    let (nv, nc) = (v.units as f64, c.units as f64);
    let (qv, qc) = (v.variance() / nv, c.variance() / nc);
    let lift = v.mean() - c.mean();
    let se = (qv + qc).sqrt();
    if se == 0.0 {
        return Some(Comparison {
            lift,
            low: lift,
            high: lift,
            p_value: if lift == 0.0 { 1.0 } else { 0.0 },
        });
    }
    let df = (qv + qc).powi(2) / (qv * qv / (nv - 1.0) + qc * qc / (nc - 1.0));
    let t = StudentsT::new(0.0, 1.0, df).ok()?;
    let p_value = 2.0 * t.sf((lift / se).abs());
    let q = t.inverse_cdf(1.0 - alpha / 2.0);
    Some(Comparison {
        lift,
        low: lift - q * se,
        high: lift + q * se,
        p_value,
    })
}

/// The chi-square test of the arm sizes against an equal split.
pub fn sample_ratio_p(units: &[u64]) -> f64 {
    let k = units.len();
    let total: u64 = units.iter().sum();
    if k < 2 || total == 0 {
        return 1.0;
    }
    let expected = total as f64 / k as f64;
    let chi2: f64 = units
        .iter()
        .map(|n| (*n as f64 - expected).powi(2) / expected)
        .sum();
    match ChiSquared::new((k - 1) as f64) {
        Ok(d) => d.sf(chi2),
        Err(_) => 1.0,
    }
}

/// The task's output from the arms' sums (the contract's shape).
pub fn analyze(
    arms: &[Arm],
    metric: Metric,
    control: &str,
    alpha: f64,
    min_units_per_arm: u64,
) -> Result<Json, OperatorError> {
    let c = arms.iter().find(|a| a.variant == control).ok_or_else(|| {
        let seen: Vec<&str> = arms.iter().map(|a| a.variant.as_str()).collect();
        fatal(format!(
            "experiment: the control variant `{control}` has no units (variants: {})",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ))
    })?;
    let mut variants = Vec::new();
    let mut significant = false;
    for a in arms {
        let cmp = if a.variant == control {
            None
        } else {
            match metric {
                Metric::Conversion => two_proportions(a, c, alpha),
                Metric::Mean => welch(a, c, alpha),
            }
        };
        if let Some(cmp) = &cmp {
            significant |= cmp.p_value < alpha;
        }
        variants.push(json!({
            "variant": a.variant,
            "units": a.units,
            "mean": num(a.mean()),
            "lift": cmp.map_or(Json::Null, |c| num(c.lift)),
            "lift_ci": cmp.map_or(Json::Null, |c| json!([num(c.low), num(c.high)])),
            "p_value": cmp.map_or(Json::Null, |c| num(c.p_value)),
        }));
    }
    let enough = arms.iter().all(|a| a.units >= min_units_per_arm);
    let concluded = enough && significant;
    let winner = if concluded {
        arms.iter()
            .max_by(|x, y| x.mean().total_cmp(&y.mean()))
            .map(|a| Json::String(a.variant.clone()))
            .unwrap_or(Json::Null)
    } else {
        Json::Null
    };
    let units: Vec<u64> = arms.iter().map(|a| a.units).collect();
    Ok(json!({
        "concluded": concluded,
        "winner": winner,
        "srm_p_value": num(sample_ratio_p(&units)),
        "variants": variants,
    }))
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
        "metric": match cfg.metric {
            Metric::Conversion => "conversion",
            Metric::Mean => "mean",
        },
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
            "experiment {}: {} (sample ratio p = {})",
            experiment,
            if result["concluded"] == true {
                format!("concluded, winner {}", result["winner"])
            } else {
                "not yet significant".to_string()
            },
            result["srm_p_value"]
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
        if !(cfg.alpha.0 > 0.0 && cfg.alpha.0 < 1.0) {
            return Err(fatal(format!(
                "experiment: alpha must be between 0 and 1, not {}",
                cfg.alpha.0
            )));
        }
        let arms = match Engine::parse(cfg.engine.as_ref(), "experiment")? {
            Engine::Local => arms(&cfg, ctx, &self.connections).await?,
            Engine::Spark => arms_on_spark(&cfg, ctx, &self.connections).await?,
        };
        let mut result = analyze(
            &arms,
            cfg.metric,
            &cfg.control,
            cfg.alpha.0,
            cfg.min_units_per_arm.0,
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(variant: &str, units: u64, sum: f64, sum_sq: f64) -> Arm {
        Arm {
            variant: variant.into(),
            units,
            sum,
            sum_sq,
        }
    }

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what}: {a} != {b}"
        );
    }

    /// Every case of the fixture that scipy and statsmodels computed.
    #[test]
    fn matches_the_scipy_reference() {
        let text = include_str!("../../tests/fixtures/experiment_reference.json");
        let cases: Json = serde_json::from_str(text).unwrap();
        for case in cases.as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let arms: Vec<Arm> = case["arms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    arm(
                        a["variant"].as_str().unwrap(),
                        a["units"].as_u64().unwrap(),
                        a["sum"].as_f64().unwrap(),
                        a["sum_sq"].as_f64().unwrap(),
                    )
                })
                .collect();
            let metric = match case["metric"].as_str().unwrap() {
                "conversion" => Metric::Conversion,
                _ => Metric::Mean,
            };
            let alpha = case["alpha"].as_f64().unwrap();
            let out = analyze(&arms, metric, "control", alpha, 0).unwrap();
            close(
                out["srm_p_value"].as_f64().unwrap(),
                case["srm_p_value"].as_f64().unwrap(),
                &format!("{name} srm"),
            );
            let expected = &case["treatment"];
            let got = out["variants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["variant"] == "treatment")
                .unwrap();
            for (key, i) in [
                ("p_value", None),
                ("lift", None),
                ("lift_ci", Some(0)),
                ("lift_ci", Some(1)),
            ] {
                let (g, e) = match i {
                    None => (got[key].as_f64().unwrap(), expected[key].as_f64().unwrap()),
                    Some(i) => (
                        got[key][i].as_f64().unwrap(),
                        expected[key][i].as_f64().unwrap(),
                    ),
                };
                close(g, e, &format!("{name} {key}"));
            }
        }
    }

    #[test]
    fn concludes_only_with_enough_units_and_a_significant_arm() {
        let arms = [
            arm("control", 10_000, 1_000.0, 1_000.0),
            arm("treatment", 10_000, 1_200.0, 1_200.0),
        ];
        let out = analyze(&arms, Metric::Conversion, "control", 0.05, 1_000).unwrap();
        assert_eq!(
            (out["concluded"].clone(), out["winner"].clone()),
            (json!(true), json!("treatment"))
        );
        let control = &out["variants"][0];
        assert_eq!(
            (
                control["lift"].clone(),
                control["lift_ci"].clone(),
                control["p_value"].clone()
            ),
            (Json::Null, Json::Null, Json::Null)
        );
        let out = analyze(&arms, Metric::Conversion, "control", 0.05, 20_000).unwrap();
        assert_eq!(
            (out["concluded"].clone(), out["winner"].clone()),
            (json!(false), Json::Null)
        );
        let same = [
            arm("control", 10_000, 1_000.0, 1_000.0),
            arm("treatment", 10_000, 1_010.0, 1_010.0),
        ];
        let out = analyze(&same, Metric::Conversion, "control", 0.05, 0).unwrap();
        assert_eq!(out["concluded"], false);
        let err = analyze(&same, Metric::Conversion, "baseline", 0.05, 0).unwrap_err();
        assert!(
            err.to_string()
                .contains("`baseline` has no units (variants: control, treatment)"),
            "{err}"
        );
    }

    #[test]
    fn degenerate_arms_give_numbers_not_nan() {
        let none = [
            arm("control", 100, 0.0, 0.0),
            arm("treatment", 100, 0.0, 0.0),
        ];
        let out = analyze(&none, Metric::Conversion, "control", 0.05, 0).unwrap();
        assert_eq!(out["variants"][1]["p_value"], 1.0);
        let out = analyze(&none, Metric::Mean, "control", 0.05, 0).unwrap();
        assert_eq!(out["variants"][1]["p_value"], 1.0);
        assert_eq!(sample_ratio_p(&[5]), 1.0);
    }
}
