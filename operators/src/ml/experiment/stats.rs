//! The statistics of `experiment`, a pure function of per-arm sums ([`analyze`]).
//!
//! - `conversion`, `method: fixed`: the two-proportion z-test with the pooled proportion for the
//!   p-value, and the unpooled standard error for the interval of the difference (the usual Wald
//!   interval).
//! - `mean`, `method: fixed`: Welch's t-test (unequal variances, Welch-Satterthwaite degrees of
//!   freedom), and the t interval of the difference with those degrees of freedom.
//! - `method: sequential`: the always-valid mSPRT of [`super::sequential`], its p-value and
//!   interval accumulated over the experiment's looks.
//! - The sample-ratio-mismatch check is a chi-square goodness-of-fit test of the arm sizes against
//!   an equal split.
//!
//! The fixed tests are checked against values that scipy and statsmodels computed
//! (`operators/tests/fixtures/experiment_reference.json`, made by
//! `operators/tests/fixtures/experiment_reference.py`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value as Json, json};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

use flow_engine::operator::OperatorError;

use super::super::num;
use super::sequential::{Running, look, tuned_tau2};
use crate::error::fatal;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Conversion,
    Mean,
}

impl Metric {
    /// The key's spelling, as the experiment's record and the Spark job take it.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Conversion => "conversion",
            Metric::Mean => "mean",
        }
    }
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
    pub(super) fn mean(&self) -> f64 {
        self.sum / self.units as f64
    }

    /// The sample variance (n - 1 in the denominator).
    pub(super) fn variance(&self) -> f64 {
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

/// Which test a look runs (see the module's note).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Fixed,
    Sequential,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Fixed => "fixed",
            Method::Sequential => "sequential",
        }
    }

    /// The method [`Method::as_str`] spelled (as a record keeps it).
    pub fn parse(s: &str) -> Option<Method> {
        [Method::Fixed, Method::Sequential]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// The sequential test's mixing variance τ²: given, or tuned for a planned number of units per
/// arm (see [`super::sequential`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mixing {
    Tau2(f64),
    PlannedUnitsPerArm(u64),
}

/// How to read one look at an experiment.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub metric: Metric,
    pub control: &'a str,
    pub alpha: f64,
    pub min_units_per_arm: u64,
    pub method: Method,
    pub mixing: Mixing,
}

/// The sequential test's state per variant over the looks so far (empty before the first, and
/// always empty for the fixed test).
pub type History = BTreeMap<String, Running>;

/// One look's result: the task's output and the state to keep for the next look.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub result: Json,
    pub history: History,
}

/// A variant's sequential comparison at this look, accumulated with the looks before it; the
/// history gains the look unless the arms have no spread yet (a τ² or an interval of zero width
/// kept from such a look would hold every later look to it).
fn sequential(v: &Arm, c: &Arm, s: &Settings, history: &mut History) -> Option<Comparison> {
    let before = history.get(&v.variant).copied();
    let tau2 = match (before, s.mixing) {
        (Some(b), _) => b.tau2,
        (None, Mixing::Tau2(t)) => t,
        (None, Mixing::PlannedUnitsPerArm(n)) => tuned_tau2(v, c, s.metric, s.alpha, n),
    };
    let look = look(v, c, s.metric, s.alpha, tau2)?;
    let measured = look.lift_variance > 0.0 && tau2 > 0.0;
    let running = match (measured, before) {
        (true, _) => Running::after(before.as_ref(), tau2, &look),
        (false, Some(b)) => b,
        (false, None) => {
            return Some(Comparison {
                lift: look.lift,
                low: look.low,
                high: look.high,
                p_value: look.p_value,
            });
        }
    };
    history.insert(v.variant.clone(), running);
    Some(Comparison {
        lift: look.lift,
        low: running.low,
        high: running.high,
        p_value: running.p_value,
    })
}

fn compare(v: &Arm, c: &Arm, s: &Settings, history: &mut History) -> Option<Comparison> {
    match (s.method, s.metric) {
        (Method::Fixed, Metric::Conversion) => two_proportions(v, c, s.alpha),
        (Method::Fixed, Metric::Mean) => welch(v, c, s.alpha),
        (Method::Sequential, _) => sequential(v, c, s, history),
    }
}

/// The task's output from the arms' sums (the contract's shape), with the sequential state after
/// this look; `before` is the state after the experiment's earlier looks.
pub fn analyze(arms: &[Arm], s: &Settings, before: &History) -> Result<Analysis, OperatorError> {
    let control = s.control;
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
    let mut history = before.clone();
    let mut variants = Vec::new();
    let mut significant = false;
    for a in arms {
        let cmp = if a.variant == control {
            None
        } else {
            compare(a, c, s, &mut history)
        };
        if let Some(cmp) = &cmp {
            significant |= cmp.p_value < s.alpha;
        }
        let mut row = json!({
            "variant": a.variant,
            "units": a.units,
            "mean": num(a.mean()),
            "lift": cmp.map_or(Json::Null, |c| num(c.lift)),
            "lift_ci": cmp.map_or(Json::Null, |c| json!([num(c.low), num(c.high)])),
            "p_value": cmp.map_or(Json::Null, |c| num(c.p_value)),
        });
        if let Some(r) = history.get(&a.variant).filter(|_| a.variant != control) {
            row["looks"] = json!(r.looks);
            row["tau2"] = num(r.tau2);
        }
        variants.push(row);
    }
    let enough = arms.iter().all(|a| a.units >= s.min_units_per_arm);
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
    Ok(Analysis {
        result: json!({
            "concluded": concluded,
            "winner": winner,
            "method": s.method.as_str(),
            "srm_p_value": num(sample_ratio_p(&units)),
            "variants": variants,
        }),
        history,
    })
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

    fn fixed(metric: Metric, control: &str, alpha: f64, min_units_per_arm: u64) -> Settings<'_> {
        Settings {
            metric,
            control,
            alpha,
            min_units_per_arm,
            method: Method::Fixed,
            mixing: Mixing::PlannedUnitsPerArm(10_000),
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
        let text = include_str!("../../../tests/fixtures/experiment_reference.json");
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
            let out = analyze(&arms, &fixed(metric, "control", alpha, 0), &History::new())
                .map(|a| a.result)
                .unwrap();
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
        let out = analyze(
            &arms,
            &fixed(Metric::Conversion, "control", 0.05, 1_000),
            &History::new(),
        )
        .map(|a| a.result)
        .unwrap();
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
        let out = analyze(
            &arms,
            &fixed(Metric::Conversion, "control", 0.05, 20_000),
            &History::new(),
        )
        .map(|a| a.result)
        .unwrap();
        assert_eq!(
            (out["concluded"].clone(), out["winner"].clone()),
            (json!(false), Json::Null)
        );
        let same = [
            arm("control", 10_000, 1_000.0, 1_000.0),
            arm("treatment", 10_000, 1_010.0, 1_010.0),
        ];
        let out = analyze(
            &same,
            &fixed(Metric::Conversion, "control", 0.05, 0),
            &History::new(),
        )
        .map(|a| a.result)
        .unwrap();
        assert_eq!(out["concluded"], false);
        let err = analyze(
            &same,
            &fixed(Metric::Conversion, "baseline", 0.05, 0),
            &History::new(),
        )
        .map(|a| a.result)
        .unwrap_err();
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
        let out = analyze(
            &none,
            &fixed(Metric::Conversion, "control", 0.05, 0),
            &History::new(),
        )
        .map(|a| a.result)
        .unwrap();
        assert_eq!(out["variants"][1]["p_value"], 1.0);
        let out = analyze(
            &none,
            &fixed(Metric::Mean, "control", 0.05, 0),
            &History::new(),
        )
        .map(|a| a.result)
        .unwrap();
        assert_eq!(out["variants"][1]["p_value"], 1.0);
        assert_eq!(sample_ratio_p(&[5]), 1.0);
    }
}
