//! The always-valid comparison behind `experiment`'s `method: sequential`: the mixture
//! sequential probability ratio test with a normal mixing distribution (mSPRT: Johari, Pekelis &
//! Walsh, "Always Valid Inference"; the statistic of Optimizely's Stats Engine), and the
//! confidence sequence it inverts to.
//!
//! Why: an hourly DAG looks at the same experiment again and again. A fixed-horizon test read at
//! every look declares a winner in an A/A test far more often than alpha (about one time in four
//! over 48 looks at alpha 0.05); the mSPRT's p-value is valid at every look at once, so stopping
//! at the first look where it falls below alpha keeps the false-positive rate at most alpha.
//!
//! From one look's per-arm sums (d = mean_t - mean_c):
//! - per-arm variance: p (1 - p) for conversion (n in the denominator, as Johari et al.), the
//!   sample variance (n - 1) for a mean;
//! - V = var_t / n_t + var_c / n_c, the variance of d (arm sizes may differ);
//! - log Λ = ½ ln(V / (V + τ²)) + τ² d² / (2 V (V + τ²)): the normal likelihood of d mixed over
//!   an effect ~ N(0, τ²), against no effect;
//! - the look's p-value is min(1, 1/Λ), and its (1 - alpha) interval d ± sqrt(V (V + τ²) / τ² ·
//!   (ln((V + τ²) / V) + 2 ln(1/alpha))), the effects whose Λ stays below 1/alpha.
//!
//! Over looks the p-value is the running minimum and the interval the running intersection
//! ([`Running`]). τ² is the mixing variance: given (`tau2`), or tuned (the default) so that the
//! test is most powerful when each arm has `planned_units_per_arm` units, as confseq's
//! `best_rho` does; a wrong plan costs power, never validity. A tuned τ² is fixed at the first
//! look and kept with the experiment's record, since a τ² that moved with the data would bend the
//! guarantee. Checked against confseq 0.0.11 and msprt 0.1.2
//! (`operators/tests/fixtures/sequential_reference.json`, made by `sequential_reference.py`).

use serde::{Deserialize, Serialize};

use super::stats::{Arm, Metric};

/// One look's always-valid comparison of a variant with the control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Look {
    pub lift: f64,
    pub lift_variance: f64,
    pub log_lambda: f64,
    pub p_value: f64,
    pub low: f64,
    pub high: f64,
}

/// The per-arm variance the statistic uses (see the module's note).
pub fn arm_variance(arm: &Arm, metric: Metric) -> f64 {
    match metric {
        Metric::Conversion => {
            let p = arm.mean();
            (p * (1.0 - p)).max(0.0)
        }
        Metric::Mean => arm.variance(),
    }
}

/// The divisor of confseq's tuned mixing precision: ρ = v_opt / c(alpha).
fn c_alpha(alpha: f64) -> f64 {
    let l = (1.0 / alpha).ln();
    2.0 * l + (1.0 + 2.0 * l).ln()
}

/// The mixing variance that makes the test most powerful when each arm has `planned` units, at
/// the variances seen now.
pub fn tuned_tau2(v: &Arm, c: &Arm, metric: Metric, alpha: f64, planned: u64) -> f64 {
    let planned = planned.max(1) as f64;
    c_alpha(alpha) * (arm_variance(v, metric) + arm_variance(c, metric)) / planned
}

/// The look's comparison of `v` against `c` with mixing variance `tau2` (> 0); None when an arm
/// is too small to have a variance (no unit, or one unit of a mean).
pub fn look(v: &Arm, c: &Arm, metric: Metric, alpha: f64, tau2: f64) -> Option<Look> {
    let least = match metric {
        Metric::Conversion => 1,
        Metric::Mean => 2,
    };
    if v.units < least || c.units < least {
        return None;
    }
    let lift = v.mean() - c.mean();
    let var = arm_variance(v, metric) / v.units as f64 + arm_variance(c, metric) / c.units as f64;
    if var <= 0.0 || tau2 <= 0.0 {
        // No spread at all (every unit the same in both arms): the difference is exact.
        let p_value = if lift == 0.0 { 1.0 } else { 0.0 };
        return Some(Look {
            lift,
            lift_variance: var.max(0.0),
            log_lambda: if lift == 0.0 { 0.0 } else { f64::INFINITY },
            p_value,
            low: lift,
            high: lift,
        });
    }
    let log_lambda =
        0.5 * (var / (var + tau2)).ln() + tau2 * lift * lift / (2.0 * var * (var + tau2));
    let radius =
        (var * (var + tau2) / tau2 * (((var + tau2) / var).ln() + 2.0 * (1.0 / alpha).ln())).sqrt();
    Some(Look {
        lift,
        lift_variance: var,
        log_lambda,
        p_value: (-log_lambda).exp().min(1.0),
        low: lift - radius,
        high: lift + radius,
    })
}

/// What a variant's comparison has seen over every look so far: the running minimum of the
/// p-value and the running intersection of the interval, with the τ² fixed at the first look.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Running {
    pub looks: u64,
    pub tau2: f64,
    pub p_value: f64,
    pub low: f64,
    pub high: f64,
}

impl Running {
    /// The state after `look`, from the state before it (None at the first look).
    pub fn after(before: Option<&Running>, tau2: f64, look: &Look) -> Running {
        match before {
            None => Running {
                looks: 1,
                tau2,
                p_value: look.p_value,
                low: look.low,
                high: look.high,
            },
            Some(b) => Running {
                looks: b.looks + 1,
                tau2: b.tau2,
                p_value: b.p_value.min(look.p_value),
                low: b.low.max(look.low),
                high: b.high.min(look.high),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1e-3),
            "{what}: {a} != {b}"
        );
    }

    fn arms(case: &Json) -> (Arm, Arm) {
        let arm = |a: &Json| Arm {
            variant: a["variant"].as_str().unwrap().into(),
            units: a["units"].as_u64().unwrap(),
            sum: a["sum"].as_f64().unwrap(),
            sum_sq: a["sum_sq"].as_f64().unwrap(),
        };
        let list = case["arms"].as_array().unwrap();
        let c = list.iter().find(|a| a["variant"] == "control").unwrap();
        let t = list.iter().find(|a| a["variant"] == "treatment").unwrap();
        (arm(t), arm(c))
    }

    fn metric(case: &Json) -> Metric {
        match case["metric"].as_str().unwrap() {
            "conversion" => Metric::Conversion,
            _ => Metric::Mean,
        }
    }

    fn fixture() -> Json {
        serde_json::from_str(include_str!(
            "../../../tests/fixtures/sequential_reference.json"
        ))
        .unwrap()
    }

    fn check_look(got: &Look, want: &Json, name: &str) {
        close(
            got.lift,
            want["lift"].as_f64().unwrap(),
            &format!("{name} lift"),
        );
        close(
            got.lift_variance,
            want["lift_variance"].as_f64().unwrap(),
            &format!("{name} variance"),
        );
        close(
            got.log_lambda,
            want["log_lambda"].as_f64().unwrap(),
            &format!("{name} log lambda"),
        );
    }

    /// Every single look of the fixture that confseq and msprt computed.
    #[test]
    fn one_look_matches_confseq() {
        let fixture = fixture();
        for case in fixture["single_look"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let (t, c) = arms(case);
            let (alpha, tau2) = (
                case["alpha"].as_f64().unwrap(),
                case["tau2"].as_f64().unwrap(),
            );
            if let Some(planned) = case["tau2_planned_units_per_arm"].as_u64() {
                close(
                    tuned_tau2(&t, &c, metric(case), alpha, planned),
                    tau2,
                    &format!("{name} tuned tau2"),
                );
            }
            let got = look(&t, &c, metric(case), alpha, tau2).unwrap();
            let want = &case["treatment"];
            check_look(&got, want, name);
            close(got.p_value, want["p_value"].as_f64().unwrap(), name);
            close(got.low, want["lift_cs"][0].as_f64().unwrap(), name);
            close(got.high, want["lift_cs"][1].as_f64().unwrap(), name);
        }
    }

    /// The running minimum and intersection over the fixture's looks.
    #[test]
    fn looks_accumulate_as_confseq_intersects_them() {
        let fixture = fixture();
        for case in fixture["multi_look"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let (alpha, tau2) = (
                case["alpha"].as_f64().unwrap(),
                case["tau2"].as_f64().unwrap(),
            );
            let mut running: Option<Running> = None;
            for (k, step) in case["looks"].as_array().unwrap().iter().enumerate() {
                let name = format!("{name} look {}", k + 1);
                let (t, c) = arms(step);
                let got = look(&t, &c, metric(case), alpha, tau2).unwrap();
                let want = &step["treatment"];
                check_look(&got, want, &name);
                close(got.p_value, want["p_value_look"].as_f64().unwrap(), &name);
                let now = Running::after(running.as_ref(), tau2, &got);
                assert_eq!(now.looks, k as u64 + 1);
                close(now.p_value, want["p_value"].as_f64().unwrap(), &name);
                close(now.low, want["lift_cs"][0].as_f64().unwrap(), &name);
                close(now.high, want["lift_cs"][1].as_f64().unwrap(), &name);
                running = Some(now);
            }
        }
    }

    #[test]
    fn arms_without_spread_give_numbers() {
        let arm = |variant: &str, units, sum: f64| Arm {
            variant: variant.into(),
            units,
            sum,
            sum_sq: sum,
        };
        let none = look(
            &arm("t", 100, 0.0),
            &arm("c", 100, 0.0),
            Metric::Conversion,
            0.05,
            1e-4,
        )
        .unwrap();
        assert_eq!((none.p_value, none.low, none.high), (1.0, 0.0, 0.0));
        let all = look(
            &arm("t", 100, 100.0),
            &arm("c", 100, 0.0),
            Metric::Conversion,
            0.05,
            1e-4,
        )
        .unwrap();
        assert_eq!((all.p_value, all.low, all.high), (0.0, 1.0, 1.0));
        assert!(
            look(
                &arm("t", 1, 1.0),
                &arm("c", 5, 1.0),
                Metric::Mean,
                0.05,
                1.0
            )
            .is_none()
        );
    }
}
