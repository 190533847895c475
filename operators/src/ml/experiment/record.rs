//! An experiment across runs: its record in the metadata database (one per experiment and
//! metric) carries the sequential test's state from look to look, and ends the experiment at the
//! look that concludes it. Later looks return that conclusion without reading the data again, so
//! a DAG that posts on `newly_concluded` posts once; a stopped experiment is not looked at.

use flow_engine::operator::OperatorError;
use flow_engine::store::{
    ExperimentLook, ExperimentRecord, ExperimentState, ExperimentStore, Leader, LookRecorded,
};
use serde_json::{Value as Json, json};

use super::stats::{Analysis, Arm, History, Metric, Settings, analyze};
use crate::error::fatal;

/// Looks that lost the compare-and-set to another run's look before this one gives up (for a
/// retry of the task).
const ATTEMPTS: usize = 5;

/// Which experiment, and who looks at it.
pub(super) struct Looker<'a> {
    pub name: &'a str,
    pub dag_id: &'a str,
    pub task_id: &'a str,
    pub run_id: &'a str,
}

fn store_error(e: flow_engine::store::StoreError) -> OperatorError {
    OperatorError::Retryable(format!("experiment: the experiments' records: {e}"))
}

/// The record of the experiment under `who` for `metric`, if any.
pub(super) async fn read(
    store: &dyn ExperimentStore,
    who: &Looker<'_>,
    metric: Metric,
) -> Result<Option<ExperimentRecord>, OperatorError> {
    store
        .experiment(who.name, metric.as_str())
        .await
        .map_err(store_error)
}

/// Where a look leaves the experiment, as its output's extensions say it.
struct Standing {
    /// None without a record (`flow tasks test`).
    state: Option<ExperimentState>,
    looks: i64,
    newly_concluded: bool,
    recomputed: bool,
}

fn stamp(mut out: Json, at: Standing) -> Json {
    out["state"] = at.state.map_or(Json::Null, |s| json!(s.as_str()));
    out["looks"] = json!(at.looks);
    out["newly_concluded"] = json!(at.newly_concluded);
    out["recomputed"] = json!(at.recomputed);
    out
}

/// The output of a look at an experiment that has ended: its recorded result, not recomputed.
pub(super) fn ended(rec: &ExperimentRecord, run_id: &str) -> Json {
    let mut out = rec.result.clone();
    let concluded = rec.state == ExperimentState::Concluded;
    out["concluded"] = json!(concluded);
    if !concluded {
        out["winner"] = Json::Null;
    }
    let standing = Standing {
        state: Some(rec.state),
        looks: rec.looks,
        newly_concluded: concluded && rec.concluded_run_id.as_deref() == Some(run_id),
        recomputed: false,
    };
    stamp(out, standing)
}

/// The method and alpha are the experiment's from its first look: a history read by another test
/// (or accumulated at another alpha) means nothing, and switching between looks is the peeking
/// the sequential test prevents.
fn check_fixed(rec: &ExperimentRecord, s: &Settings) -> Result<(), OperatorError> {
    if rec.alpha != s.alpha {
        return Err(fatal(format!(
            "experiment: `{}` ({}) was started with alpha {} and cannot go on with {}: keep its \
             alpha, or start a new experiment under another name",
            rec.name, rec.metric, rec.alpha, s.alpha
        )));
    }
    if rec.method != s.method.as_str() {
        return Err(fatal(format!(
            "experiment: `{}` ({}) was started with method {} and cannot go on with {}: keep \
             its method, or start a new experiment under another name",
            rec.name,
            rec.metric,
            rec.method,
            s.method.as_str()
        )));
    }
    Ok(())
}

fn history_of(rec: Option<&ExperimentRecord>) -> Result<History, OperatorError> {
    match rec {
        None => Ok(History::new()),
        Some(r) => serde_json::from_value(r.history.clone()).map_err(|e| {
            fatal(format!(
                "experiment: the record of `{}` has an unreadable history: {e}",
                r.name
            ))
        }),
    }
}

/// The compared variant with the smallest p-value.
fn leader(result: &Json) -> Option<Leader> {
    result["variants"]
        .as_array()?
        .iter()
        .filter_map(|v| {
            Some(Leader {
                variant: v["variant"].as_str()?.to_string(),
                lift: v["lift"].as_f64()?,
                lift_low: v["lift_ci"][0].as_f64()?,
                lift_high: v["lift_ci"][1].as_f64()?,
                p_value: v["p_value"].as_f64()?,
            })
        })
        .min_by(|a, b| a.p_value.total_cmp(&b.p_value))
}

fn look_of(who: &Looker<'_>, s: &Settings, analysis: &Analysis) -> ExperimentLook {
    let concluded = analysis.result["concluded"] == true;
    ExperimentLook {
        name: who.name.to_string(),
        metric: s.metric.as_str().to_string(),
        method: s.method.as_str().to_string(),
        alpha: s.alpha,
        dag_id: who.dag_id.to_string(),
        task_id: who.task_id.to_string(),
        run_id: who.run_id.to_string(),
        history: serde_json::to_value(&analysis.history).unwrap_or(Json::Null),
        result: analysis.result.clone(),
        leader: leader(&analysis.result),
        winner: analysis.result["winner"].as_str().map(str::to_string),
        concluded,
        at: chrono::Utc::now(),
    }
}

/// One look at the arms: accumulated with the record's earlier looks and recorded, unless the
/// experiment ended meanwhile (then its recorded result). Without a store, the look alone.
pub(super) async fn look(
    store: Option<&dyn ExperimentStore>,
    who: &Looker<'_>,
    arms: &[Arm],
    s: &Settings<'_>,
    mut record: Option<ExperimentRecord>,
) -> Result<Json, OperatorError> {
    let Some(store) = store else {
        let out = analyze(arms, s, &History::new())?.result;
        let standing = Standing {
            state: None,
            looks: 1,
            newly_concluded: out["concluded"] == true,
            recomputed: true,
        };
        return Ok(stamp(out, standing));
    };
    for _ in 0..ATTEMPTS {
        if let Some(rec) = record.as_ref() {
            if rec.state != ExperimentState::Running {
                return Ok(ended(rec, who.run_id));
            }
            check_fixed(rec, s)?;
        }
        let analysis = analyze(arms, s, &history_of(record.as_ref())?)?;
        let looks_before = record.as_ref().map_or(0, |r| r.looks);
        let recorded = store
            .record_experiment_look(&look_of(who, s, &analysis), looks_before)
            .await
            .map_err(store_error)?;
        match recorded {
            LookRecorded::Recorded(rec) => {
                let standing = Standing {
                    state: Some(rec.state),
                    looks: rec.looks,
                    newly_concluded: rec.state == ExperimentState::Concluded,
                    recomputed: true,
                };
                return Ok(stamp(analysis.result, standing));
            }
            LookRecorded::Stale => record = read(store, who, s.metric).await?,
        }
    }
    Err(OperatorError::Retryable(format!(
        "experiment: other runs kept recording looks at `{}` first; this look is retried",
        who.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ml::experiment::stats::{Method, Mixing};

    fn record(method: &str, alpha: f64) -> ExperimentRecord {
        ExperimentRecord {
            name: "e".into(),
            metric: "conversion".into(),
            method: method.into(),
            alpha,
            dag_id: "d".into(),
            task_id: "t".into(),
            state: ExperimentState::Running,
            looks: 3,
            history: json!({}),
            result: json!({"concluded": false, "winner": null}),
            winner: None,
            leader: None,
            last_run_id: "r3".into(),
            concluded_run_id: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            ended_at: None,
        }
    }

    fn settings(method: Method, alpha: f64) -> Settings<'static> {
        Settings {
            metric: Metric::Conversion,
            control: "control",
            alpha,
            min_units_per_arm: 0,
            method,
            mixing: Mixing::PlannedUnitsPerArm(100),
        }
    }

    #[test]
    fn a_look_keeps_the_first_looks_method_and_alpha() {
        assert!(
            check_fixed(
                &record("sequential", 0.05),
                &settings(Method::Sequential, 0.05)
            )
            .is_ok()
        );
        let err = check_fixed(&record("sequential", 0.05), &settings(Method::Fixed, 0.05))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("started with method sequential and cannot go on with fixed"),
            "{err}"
        );
        let err = check_fixed(
            &record("sequential", 0.05),
            &settings(Method::Sequential, 0.1),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("started with alpha 0.05 and cannot go on with 0.1"),
            "{err}"
        );
        assert_eq!(
            Method::parse(&record("fixed", 0.05).method),
            Some(Method::Fixed)
        );
        assert_eq!(Method::parse("peeking"), None);
    }

    #[test]
    fn an_ended_experiment_answers_its_record() {
        let mut rec = record("sequential", 0.05);
        rec.state = ExperimentState::Concluded;
        rec.concluded_run_id = Some("r3".into());
        rec.result = json!({"concluded": true, "winner": "treatment"});
        let out = ended(&rec, "r3");
        assert_eq!(
            (
                out["newly_concluded"].clone(),
                out["recomputed"].clone(),
                out["looks"].clone()
            ),
            (json!(true), json!(false), json!(3))
        );
        assert_eq!(ended(&rec, "r4")["newly_concluded"], false);
        rec.state = ExperimentState::Stopped;
        let out = ended(&rec, "r4");
        assert_eq!(
            (
                out["concluded"].clone(),
                out["winner"].clone(),
                out["state"].clone()
            ),
            (json!(false), Json::Null, json!("stopped"))
        );
    }
}
