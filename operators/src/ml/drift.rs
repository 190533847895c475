//! `drift`: the population stability index of each feature between a reference set (the
//! training set) and a current one (recent data), so that `when:` can start a retraining.
//!
//! For each feature, `bins - 1` cut points are the reference's quantiles at 1/bins, 2/bins, ...
//! (linear interpolation between order statistics, numpy's default); the outer bins are open
//! (below the first cut, at or above the last). A value equal to a cut point falls in the bin
//! above it. Each bin's share of the reference and of the current set is floored at 1e-4, and
//! PSI = sum over bins of (current - reference) * ln(current / reference). Missing values (null,
//! NaN) are left out of both sets. A feature with a repeated value (a count that is mostly 0)
//! has repeated cut points, and the bins between them are empty in both sets: they add nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use super::on_spark::{self, Engine};
use super::{Num, column_f64, ident, num, schema};
use crate::connections::Connections;
use crate::error::fatal;

pub struct Drift {
    connections: Arc<Connections>,
}

impl Drift {
    pub fn new(connections: Arc<Connections>) -> Drift {
        Drift { connections }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    reference: Json,
    current: Json,
    features: Option<Vec<String>>,
    #[serde(default = "default_bins")]
    bins: Num<usize>,
    engine: Option<Json>,
    spark: Option<Json>,
}

fn default_bins() -> Num<usize> {
    Num(10)
}

const FLOOR: f64 = 1e-4;

/// The reference's cut points for `bins` bins (see the module's note). `sorted` has no NaN.
pub fn cut_points(sorted: &[f64], bins: usize) -> Vec<f64> {
    let n = sorted.len();
    if n == 0 {
        return Vec::new();
    }
    (1..bins)
        .map(|k| {
            let pos = (n - 1) as f64 * k as f64 / bins as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
        })
        .collect()
}

/// How many of `values` (NaN left out) fall in each bin.
fn counts(values: &[f64], cuts: &[f64]) -> Vec<u64> {
    let mut counts = vec![0u64; cuts.len() + 1];
    for v in values.iter().filter(|v| !v.is_nan()) {
        counts[cuts.partition_point(|c| c <= v)] += 1;
    }
    counts
}

/// Each bin's share, floored.
fn shares(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|c| {
            if n == 0 {
                FLOOR
            } else {
                (*c as f64 / n as f64).max(FLOOR)
            }
        })
        .collect()
}

/// PSI from each bin's count in the reference and in the current set.
pub fn psi_of_counts(reference: &[u64], current: &[u64]) -> f64 {
    let r = shares(reference);
    let c = shares(current);
    r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum()
}

/// PSI of `current` against `reference` (see the module's note); None when either has no
/// values.
pub fn psi(reference: &[f64], current: &[f64], bins: usize) -> Option<f64> {
    let mut sorted: Vec<f64> = reference.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() || current.iter().all(|v| v.is_nan()) {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let cuts = cut_points(&sorted, bins);
    Some(psi_of_counts(
        &counts(&sorted, &cuts),
        &counts(current, &cuts),
    ))
}

/// What the Spark job counted for one feature (None: no values in one of the sets).
#[derive(Deserialize)]
struct Counted {
    reference: Vec<u64>,
    current: Vec<u64>,
}

fn numeric(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

/// Each feature's PSI, computed in the flow process (DataFusion reads the sets).
async fn in_process(
    cfg: &Config,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Vec<(String, Option<f64>)>, OperatorError> {
    let bins = cfg.bins.0;
    let reference = schema("reference", &cfg.reference, ctx, conns).await?;
    let current = schema("current", &cfg.current, ctx, conns).await?;
    let features: Vec<String> = match cfg.features.clone() {
        Some(f) if !f.is_empty() => f,
        _ => reference
            .fields()
            .iter()
            .filter(|f| numeric(f.data_type()))
            .filter(|f| {
                current
                    .field_with_name(f.name())
                    .is_ok_and(|c| numeric(c.data_type()))
            })
            .map(|f| f.name().clone())
            .collect(),
    };
    if features.is_empty() {
        return Err(fatal(
            "drift: the reference and current sets share no numeric column",
        ));
    }
    for f in &features {
        for (what, s) in [("reference", &reference), ("current", &current)] {
            if s.field_with_name(f).is_err() {
                return Err(fatal(format!("drift: the {what} set has no column `{f}`")));
            }
        }
    }
    let select = features
        .iter()
        .map(|f| format!("CAST({} AS DOUBLE) AS {}", ident(f), ident(f)))
        .collect::<Vec<_>>()
        .join(", ");
    let (_, ref_batches) = crate::sql::read(
        &[("reference", &cfg.reference)],
        &format!("SELECT {select} FROM reference"),
        ctx,
        conns,
    )
    .await?;
    let (_, cur_batches) = crate::sql::read(
        &[("current", &cfg.current)],
        &format!("SELECT {select} FROM current"),
        ctx,
        conns,
    )
    .await?;
    let mut measured = Vec::new();
    for f in &features {
        let r = column_f64(&ref_batches, f, "drift")?;
        let c = column_f64(&cur_batches, f, "drift")?;
        measured.push((f.clone(), psi(&r, &c, bins)));
    }
    Ok(measured)
}

#[async_trait]
impl Operator for Drift {
    fn name(&self) -> &'static str {
        "drift"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["reference", "current"],
            optional: &["features", "bins", "engine", "spark"],
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
        let cfg: Config = super::config(config, "drift")?;
        let bins = cfg.bins.0;
        if bins < 2 {
            return Err(fatal("drift: bins must be at least 2"));
        }
        let conns = &self.connections;
        let measured = match Engine::parse(cfg.engine.as_ref(), "drift")? {
            Engine::Local => in_process(&cfg, ctx, conns).await?,
            Engine::Spark => {
                let dags = &ctx.dag_folder;
                let job = json!({
                    "reference": on_spark::data(&cfg.reference, "reference", dags)?,
                    "current": on_spark::data(&cfg.current, "current", dags)?,
                    "features": cfg.features.clone().unwrap_or_default(),
                    "bins": bins,
                });
                let result = on_spark::run("drift", cfg.spark.as_ref(), job, ctx, conns).await?;
                let unreadable =
                    |e: serde_json::Error| fatal(format!("drift: the Spark job's result: {e}"));
                let features: Vec<String> =
                    serde_json::from_value(result["features"].clone()).map_err(unreadable)?;
                let mut measured = Vec::new();
                for f in features {
                    let counted: Option<Counted> =
                        serde_json::from_value(result["counts"][&f].clone()).map_err(unreadable)?;
                    let p = counted.map(|c| psi_of_counts(&c.reference, &c.current));
                    measured.push((f, p));
                }
                measured
            }
        };
        let mut values = BTreeMap::new();
        let mut worst: Option<(String, f64)> = None;
        for (f, p) in measured {
            let Some(p) = p else {
                ctx.log
                    .line(&format!(
                        "drift: `{f}` has no values in one of the sets; left out"
                    ))
                    .await;
                continue;
            };
            ctx.log.line(&format!("drift: psi({f}) = {p:.6}")).await;
            flow_engine::metrics::metrics().drift_measured(&ctx.dag_id, &ctx.task_id, &f, p);
            if worst.as_ref().is_none_or(|(_, w)| p > *w) {
                worst = Some((f.clone(), p));
            }
            values.insert(f, num(p));
        }
        let Some((feature, max)) = worst else {
            return Err(fatal("drift: no feature has values in both sets"));
        };
        Ok(Some(json!({
            "max_psi": num(max),
            "feature": feature,
            "psi": values,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};

    fn sample(mean: f64, n: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = Normal::new(mean, 1.0).unwrap();
        (0..n).map(|_| d.sample(&mut rng)).collect()
    }

    #[test]
    fn cut_points_are_numpys_linear_quantiles() {
        // numpy.quantile([1, 2, 3, 4, 5], [0.25, 0.5, 0.75]) = [2, 3, 4]
        assert_eq!(
            cut_points(&[1.0, 2.0, 3.0, 4.0, 5.0], 4),
            vec![2.0, 3.0, 4.0]
        );
        // numpy.quantile([0, 10], [0.5]) = [5]
        assert_eq!(cut_points(&[0.0, 10.0], 2), vec![5.0]);
    }

    #[test]
    fn psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() {
        let reference = sample(0.0, 20_000, 1);
        let same = sample(0.0, 20_000, 2);
        let shifted = sample(1.0, 20_000, 3);
        let p_same = psi(&reference, &same, 10).unwrap();
        let p_shift = psi(&reference, &shifted, 10).unwrap();
        assert!(p_same < 0.01, "{p_same}");
        assert!(p_shift > 0.5, "{p_shift}");
        assert_eq!(psi(&reference, &reference, 10), Some(0.0));
    }

    #[test]
    fn shares_are_floored_and_ties_go_up() {
        // Cut at 1: 0 -> bin 0, 1 and 2 -> bin 1; no value in bin 0 of `current` (floored).
        assert_eq!(counts(&[0.0, 1.0, 2.0, 1.0], &[1.0]), vec![1, 3]);
        assert_eq!(shares(&[1, 3]), vec![0.25, 0.75]);
        assert_eq!(counts(&[1.0, f64::NAN], &[1.0]), vec![0, 1]);
        assert_eq!(shares(&[0, 1]), vec![FLOOR, 1.0]);
        assert_eq!(psi(&[f64::NAN], &[1.0], 10), None);
    }
}
