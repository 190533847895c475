//! The simulation the sequential test exists for: experiments looked at 48 times (two days of an
//! hourly DAG), each stopped at the first look that concludes, as the operator's record stops
//! them. With no true difference (A/A), the fixed test read at every look concludes far more
//! often than alpha; the sequential one at most alpha. With a true lift, the sequential test
//! still concludes, for the treatment.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, Normal};

use super::stats::{Arm, History, Method, Metric, Mixing, Settings, analyze};

const LOOKS: u64 = 48;
const ALPHA: f64 = 0.05;
/// Room above alpha for the simulation's own noise: 1,000 experiments estimate a rate near 0.05
/// within about ±0.007 (one standard error).
const TOLERANCE: f64 = 0.01;

/// What one arm's units look like.
#[derive(Clone, Copy)]
enum Units {
    Converts(f64),
    Normal { mean: f64, sd: f64 },
}

/// A simulated experiment: a control and a treatment arm, `per_look` new units in each per look.
#[derive(Clone, Copy)]
struct Design {
    metric: Metric,
    control: Units,
    treatment: Units,
    per_look: u64,
}

/// How many of `experiments` experiments concluded at some look, and how many of those named
/// the treatment the winner, under one method.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    concluded: u64,
    treatment_won: u64,
}

fn add_units(arm: &mut Arm, units: Units, n: u64, rng: &mut ChaCha8Rng) {
    arm.units += n;
    match units {
        Units::Converts(p) => {
            let k = Binomial::new(n, p).unwrap().sample(rng) as f64;
            arm.sum += k;
            arm.sum_sq += k;
        }
        Units::Normal { mean, sd } => {
            let d = Normal::new(mean, sd).unwrap();
            for _ in 0..n {
                let x: f64 = d.sample(rng);
                arm.sum += x;
                arm.sum_sq += x * x;
            }
        }
    }
}

fn settings(design: &Design, method: Method) -> Settings<'static> {
    Settings {
        metric: design.metric,
        control: "control",
        alpha: ALPHA,
        min_units_per_arm: 0,
        method,
        mixing: Mixing::PlannedUnitsPerArm(LOOKS * design.per_look),
    }
}

/// One method's looks at one experiment: whether it concluded, and for which variant.
struct Watch {
    settings: Settings<'static>,
    history: History,
    verdict: Option<bool>,
}

impl Watch {
    fn look(&mut self, arms: &[Arm]) {
        if self.verdict.is_some() {
            return;
        }
        let analysis = analyze(arms, &self.settings, &self.history).unwrap();
        if analysis.result["concluded"] == true {
            self.verdict = Some(analysis.result["winner"] == "treatment");
        }
        self.history = analysis.history;
    }
}

/// Runs `experiments` experiments of `design`, each watched by both methods on the same data.
fn simulate(design: Design, experiments: u64, seed: u64) -> (Tally, Tally) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut fixed, mut sequential) = (Tally::default(), Tally::default());
    for _ in 0..experiments {
        let mut arms = ["control", "treatment"].map(|variant| Arm {
            variant: variant.into(),
            units: 0,
            sum: 0.0,
            sum_sq: 0.0,
        });
        let mut watches = [Method::Fixed, Method::Sequential].map(|m| Watch {
            settings: settings(&design, m),
            history: History::new(),
            verdict: None,
        });
        for _ in 0..LOOKS {
            add_units(&mut arms[0], design.control, design.per_look, &mut rng);
            add_units(&mut arms[1], design.treatment, design.per_look, &mut rng);
            for w in &mut watches {
                w.look(&arms);
            }
        }
        for (tally, w) in [&mut fixed, &mut sequential].into_iter().zip(&watches) {
            if let Some(treatment_won) = w.verdict {
                tally.concluded += 1;
                tally.treatment_won += u64::from(treatment_won);
            }
        }
    }
    (fixed, sequential)
}

fn rate(t: Tally, experiments: u64) -> f64 {
    t.concluded as f64 / experiments as f64
}

/// Runs 1,000 A/A experiments of `design` and checks the two methods' false-positive rates.
fn peeking_is_controlled(design: Design, seed: u64) {
    let (fixed, sequential) = simulate(design, 1_000, seed);
    let (f, s) = (rate(fixed, 1_000), rate(sequential, 1_000));
    eprintln!("A/A, 1,000 experiments of {LOOKS} looks: fixed {f}, sequential {s}");
    assert!(s <= ALPHA + TOLERANCE, "sequential false positives {s}");
    assert!(
        f > 2.0 * ALPHA,
        "fixed false positives {f}: peeking should inflate them"
    );
}

#[test]
fn a_a_conversion_keeps_false_positives_at_alpha_where_fixed_does_not() {
    let units = Units::Converts(0.10);
    peeking_is_controlled(
        Design {
            metric: Metric::Conversion,
            control: units,
            treatment: units,
            per_look: 200,
        },
        20_261_206,
    );
}

#[test]
fn a_a_mean_keeps_false_positives_at_alpha_where_fixed_does_not() {
    let units = Units::Normal {
        mean: 20.0,
        sd: 6.0,
    };
    peeking_is_controlled(
        Design {
            metric: Metric::Mean,
            control: units,
            treatment: units,
            per_look: 50,
        },
        7,
    );
}

#[test]
fn a_true_lift_concludes_for_the_treatment() {
    let design = Design {
        metric: Metric::Conversion,
        control: Units::Converts(0.10),
        treatment: Units::Converts(0.12),
        per_look: 200,
    };
    let (_, sequential) = simulate(design, 200, 11);
    eprintln!("10% vs 12%: {} of 200 concluded", sequential.concluded);
    assert!(
        rate(sequential, 200) >= 0.9,
        "only {} of 200 concluded",
        sequential.concluded
    );
    assert_eq!(sequential.treatment_won, sequential.concluded);
}
