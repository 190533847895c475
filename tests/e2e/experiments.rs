//! A/B experiments through the shipped `experiment_results` DAG: the sequential test's
//! conclusion, recorded once and posted once, and a stopped experiment (docs/ml.md, "Experiments
//! as records").

use serde_json::{Value as Json, json};

use crate::harness::*;
use crate::ml::{assert_close, copy_pipelines, ml_env, query_one, run, run_env};

/// The shipped `experiment_results` DAG looks at the experiment run after run: a look without
/// enough units records the look and posts nothing; the look that concludes posts once; later
/// looks return the recorded conclusion without reading the data and post nothing.
#[test]
fn the_experiment_concludes_with_the_true_lift_inside_its_interval_and_notifies() {
    let (mut env, workdir) = ml_env();
    let (port, received) = one_post_receiver();
    env.secrets.push((
        "EXPERIMENT_WEBHOOK".into(),
        format!("http://127.0.0.1:{port}/hook"),
    ));
    let receiver = crate::telemetry::Receiver::start(&env);
    let vars = receiver
        .as_ref()
        .map(|r| r.vars().to_vec())
        .unwrap_or_default();

    // Not enough units per arm: not concluded, a successful task all the same, no message.
    let early = run(
        &env,
        "experiment_results",
        &workdir,
        &[
            "--param",
            "min_units_per_arm=50000",
            "--param",
            "notify=true",
        ],
    );
    let out = &task(&early, "compute", None)["output"];
    assert_eq!(
        (
            out["concluded"].clone(),
            out["winner"].clone(),
            out["state"].clone()
        ),
        (json!(false), Json::Null, json!("running")),
        "{out:#}"
    );
    assert_eq!(
        (out["method"].clone(), out["looks"].clone()),
        (json!("sequential"), json!(1))
    );
    assert_eq!(task(&early, "notify", None)["state"], "skipped");

    let done = run_env(
        &env,
        "experiment_results",
        &workdir,
        &["--param", "notify=true"],
        &vars,
    );
    let out = &task(&done, "compute", None)["output"];
    assert_eq!(out["concluded"], true, "{out:#}");
    assert_eq!(out["winner"], "treatment", "{out:#}");
    assert_eq!(
        (
            out["state"].clone(),
            out["looks"].clone(),
            out["newly_concluded"].clone()
        ),
        (json!("concluded"), json!(2), json!(true)),
        "{out:#}"
    );
    assert!(out["srm_p_value"].as_f64().unwrap() > 0.001, "{out:#}");
    let variants = out["variants"].as_array().unwrap();
    let control = variants.iter().find(|v| v["variant"] == "control").unwrap();
    assert_eq!(
        (
            control["lift"].clone(),
            control["lift_ci"].clone(),
            control["p_value"].clone()
        ),
        (Json::Null, Json::Null, Json::Null)
    );
    let treatment = variants
        .iter()
        .find(|v| v["variant"] == "treatment")
        .unwrap();
    let (lo, hi) = (
        treatment["lift_ci"][0].as_f64().unwrap(),
        treatment["lift_ci"][1].as_f64().unwrap(),
    );
    // The generator's true absolute lift is 0.13 - 0.10.
    assert!(lo < 0.03 && 0.03 < hi, "{treatment:#}");
    assert!(treatment["p_value"].as_f64().unwrap() < 0.05);
    assert_eq!(treatment["looks"], 2, "{treatment:#}");
    if let Some(receiver) = &receiver {
        for (name, key) in [
            ("flow.experiment.lift", "lift"),
            ("flow.experiment.p_value", "p_value"),
        ] {
            let point = receiver.wait_point(name, &[("variant", "treatment")]);
            assert_close(&point["value"], &treatment[key]);
        }
    }
    assert_eq!(
        control["units"].as_i64().unwrap() + treatment["units"].as_i64().unwrap(),
        20_000
    );
    // The results table, and the message that it concluded.
    let table = query_one(
        out["table"].as_str().unwrap(),
        "SELECT COUNT(*) AS n, SUM(CASE WHEN winner THEN 1 ELSE 0 END) AS winners FROM t",
    );
    assert_eq!(table, json!({"n": 2, "winners": 1}));
    let (_, body) = received.join().unwrap();
    let body: Json = serde_json::from_str(&body).unwrap();
    assert_eq!(body["winner"], "treatment", "{body}");
    assert!(
        body["text"].as_str().unwrap().contains("concluded"),
        "{body}"
    );

    // The conclusion sticks: the next look is the record's, not a new computation, and the
    // message does not go again.
    let again = run(
        &env,
        "experiment_results",
        &workdir,
        &[
            "--param",
            "notify=true",
            "--param",
            "min_units_per_arm=50000",
        ],
    );
    let out = &task(&again, "compute", None)["output"];
    assert_eq!(
        (
            out["concluded"].clone(),
            out["winner"].clone(),
            out["newly_concluded"].clone(),
            out["recomputed"].clone(),
        ),
        (json!(true), json!("treatment"), json!(false), json!(false)),
        "{out:#}"
    );
    assert_eq!(task(&again, "notify", None)["state"], "skipped");
    let shown = env.flow_json(&["experiments", "show", "subject_line_test", "--json"], 0);
    assert_eq!(shown.as_array().unwrap().len(), 1, "{shown:#}");
    let rec = &shown[0];
    assert_eq!(
        (
            rec["state"].clone(),
            rec["looks"].clone(),
            rec["winner"].clone(),
            rec["method"].clone(),
            rec["concluded_run_id"].clone(),
        ),
        (
            json!("concluded"),
            json!(2),
            json!("treatment"),
            json!("sequential"),
            done["run_id"].clone(),
        ),
        "{rec:#}"
    );
    assert_eq!(rec["leader"]["variant"], "treatment", "{rec:#}");
    // Stopping a concluded experiment leaves it concluded.
    env.flow_ok(&["experiments", "stop", "subject_line_test"], 0);
    let listed = env.flow_json(&["experiments", "list", "--json"], 0);
    assert_eq!(listed[0]["state"], "concluded", "{listed:#}");
}

/// A stopped experiment is not looked at again: its task reads no data and concludes nothing.
#[test]
fn a_stopped_experiment_is_not_looked_at_again() {
    each_db(|env, db| {
        copy_pipelines(&env, &["experiment_results.yaml"], None);
        let workdir = env.dir.path().join("ml").display().to_string();
        let look = |more: &[&str]| {
            let mut args = vec![
                "--param",
                "metric=mean",
                "--param",
                "outcomes=revenue.parquet",
            ];
            args.extend_from_slice(more);
            run(&env, "experiment_results", &workdir, &args)
        };
        let first = look(&["--param", "min_units_per_arm=50000"]);
        let out = &task(&first, "compute", None)["output"];
        assert_eq!(
            (out["state"].clone(), out["looks"].clone()),
            (json!("running"), json!(1)),
            "{db:?}: {out:#}"
        );
        let bad = env.flow(&["experiments", "stop", "no_such_experiment"]);
        assert_eq!(bad.status.code(), Some(2), "{db:?}");
        let said = String::from_utf8_lossy(&bad.stderr);
        assert!(
            said.contains("unknown experiment 'no_such_experiment'"),
            "{said}"
        );
        env.flow_ok(&["experiments", "stop", "subject_line_test"], 0);
        let after = look(&[]);
        let out = &task(&after, "compute", None)["output"];
        assert_eq!(
            (
                out["state"].clone(),
                out["concluded"].clone(),
                out["winner"].clone(),
                out["recomputed"].clone(),
                out["looks"].clone(),
            ),
            (
                json!("stopped"),
                json!(false),
                Json::Null,
                json!(false),
                json!(1)
            ),
            "{db:?}: {out:#}"
        );
    });
}
