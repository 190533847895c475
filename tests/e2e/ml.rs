//! The ML pipelines of `dags/`, as shipped, end to end on the generated data: training set,
//! training and the registry's promotion rule, batch prediction, drift, and the A/B results.

use serde_json::{Value as Json, json};

use crate::harness::*;

const PIPELINES: &[&str] = &[
    "build_training_set.yaml",
    "train_model.yaml",
    "retrain_model.yaml",
    "batch_predict.yaml",
    "experiment_results.yaml",
];

/// The bound on the held-out AUC that the generator's known signal guarantees with room to
/// spare: its label depends on engagement (seen through the event counts), age and plan, all
/// features of the training set.
const MIN_AUC: f64 = 0.70;

pub(crate) fn ml_env() -> (Env, String) {
    let env = Env::new(Db::Sqlite).unwrap();
    copy_pipelines(&env, PIPELINES, None);
    let workdir = env.dir.path().join("ml").display().to_string();
    (env, workdir)
}

/// Copies shipped pipelines and their Spark job into `env`'s DAGs folder; with `workdir`, their
/// `workdir` param defaults to it (runs started by events or schedules take the defaults).
pub(crate) fn copy_pipelines(env: &Env, files: &[&str], workdir: Option<&str>) {
    for p in files {
        let shipped = format!("{}/../dags/{p}", env!("CARGO_MANIFEST_DIR"));
        let mut text = std::fs::read_to_string(&shipped).unwrap();
        if let Some(w) = workdir {
            text = text.replace("default: /tmp/flow-examples/ml", &format!("default: {w}"));
        }
        std::fs::write(env.dags().join(p), text).unwrap();
    }
    std::fs::create_dir_all(env.dags().join("jobs")).unwrap();
    std::fs::copy(
        format!(
            "{}/../dags/jobs/build_training_set.py",
            env!("CARGO_MANIFEST_DIR")
        ),
        env.dags().join("jobs/build_training_set.py"),
    )
    .unwrap();
}

pub(crate) fn run(env: &Env, dag: &str, workdir: &str, more: &[&str]) -> Json {
    run_env(env, dag, workdir, more, &[])
}

/// [`run`] with more environment variables (an OTLP receiver's).
pub(crate) fn run_env(
    env: &Env,
    dag: &str,
    workdir: &str,
    more: &[&str],
    vars: &[(&'static str, String)],
) -> Json {
    let wd = format!("workdir={workdir}");
    let mut args = vec!["run", dag, "--logical-date", "2026-03-04", "--param", &wd];
    args.extend_from_slice(more);
    args.push("--json");
    let out = env
        .command(&args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let run: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{dag}: no run JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(run["state"], "success", "{dag}: {run:#}");
    run
}

/// One row of a query over a parquet folder, through DataFusion.
pub(crate) fn query_one(folder: &str, sql: &str) -> Json {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_parquet("t", folder, Default::default())
            .await
            .unwrap();
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut buf = Vec::new();
        let mut w = arrow_json::ArrayWriter::new(&mut buf);
        for b in &batches {
            w.write(b).unwrap();
        }
        w.finish().unwrap();
        let rows: Json = serde_json::from_slice(&buf).unwrap();
        rows[0].clone()
    })
}

fn models_show(env: &Env, model: &str) -> Vec<Json> {
    env.flow_json(&["models", "show", model, "--json"], 0)
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn the_ml_pipelines_train_promote_predict_and_watch_drift() {
    let (env, workdir) = ml_env();
    let built = run(&env, "build_training_set", &workdir, &[]);
    let summary = task(&built, "summary", None)["output"][0].clone();
    assert_eq!(summary["users"], 20_000, "{summary}");
    let scoring_rows = task(&built, "scoring_set", None)["output"]["rows"].clone();
    assert_eq!(scoring_rows, 20_000);
    // Point in time: the features count exactly the events of the 30 days before the label
    // date (2026-02-16), none from the label's own window.
    let features = query_one(
        &format!("{workdir}/training_set/"),
        "SELECT COUNT(*) AS n, SUM(events_30d) AS events FROM t",
    );
    let window = query_one(
        &format!("{workdir}/data/events/"),
        "SELECT COUNT(*) AS all_events, SUM(CASE WHEN ts >= TIMESTAMP '2026-01-17T00:00:00Z' \
         AND ts < TIMESTAMP '2026-02-16T00:00:00Z' THEN 1 ELSE 0 END) AS before_label FROM t",
    );
    assert_eq!(features["n"], 20_000);
    assert_eq!(
        features["events"], window["before_label"],
        "{features} {window}"
    );
    let before = window["before_label"].as_i64().unwrap();
    assert!(
        before > 0 && before < window["all_events"].as_i64().unwrap(),
        "{window}"
    );

    // First training: gradient boosting, promoted at once (no production version yet).
    let first = run(&env, "train_model", &workdir, &[]);
    let train = &task(&first, "train", None)["output"];
    assert_eq!(train["model"], "email_unsubscribe");
    assert_eq!(train["version"], 1);
    let auc1 = train["metrics"]["auc"].as_f64().unwrap();
    assert!(
        auc1 > MIN_AUC,
        "held-out AUC {auc1} <= {MIN_AUC}: {train:#}"
    );
    for m in ["accuracy", "log_loss"] {
        assert!(train["metrics"][m].is_number(), "{train:#}");
    }
    assert!(
        std::path::Path::new(train["artifact"].as_str().unwrap()).is_file(),
        "{train:#}"
    );
    assert_eq!(
        task(&first, "promote", None)["output"]
            .as_object()
            .unwrap()
            .iter()
            .filter(
                |(k, _)| ["promoted", "production_version", "previous_version"]
                    .contains(&k.as_str())
            )
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<serde_json::Map<_, _>>(),
        json!({"promoted": true, "production_version": 1, "previous_version": null})
            .as_object()
            .unwrap()
            .clone()
    );

    // Second training: logistic regression; promoted only if it beats version 1 by 0.005.
    let second = run(
        &env,
        "train_model",
        &workdir,
        &["--param", "algorithm=logistic_regression"],
    );
    let train2 = &task(&second, "train", None)["output"];
    assert_eq!(train2["version"], 2, "versions increment");
    let auc2 = train2["metrics"]["auc"].as_f64().unwrap();
    assert!(auc2 > MIN_AUC, "logistic regression AUC {auc2}");
    let promote2 = &task(&second, "promote", None)["output"];
    let should = auc2 - auc1 >= 0.005;
    assert_eq!(
        promote2["promoted"], should,
        "auc {auc2} vs {auc1}: {promote2:#}"
    );
    let production = if should { 2 } else { 1 };
    assert_eq!(promote2["production_version"], production);
    assert_eq!(promote2["previous_version"], 1);
    let versions = models_show(&env, "email_unsubscribe");
    let stages: Vec<(i64, String)> = versions
        .iter()
        .map(|v| {
            (
                v["version"].as_i64().unwrap(),
                v["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = if should {
        vec![(2, "production".to_string()), (1, "archived".to_string())]
    } else {
        vec![(2, "candidate".to_string()), (1, "production".to_string())]
    };
    assert_eq!(stages, expected);
    assert_eq!(versions[0]["run_id"], second["run_id"]);
    assert_eq!(versions[0]["dag_id"], "train_model");
    assert!(versions[0]["data_interval_end"].is_string());

    // Batch prediction with the production version: one row per input row.
    let scored = run(&env, "batch_predict", &workdir, &[]);
    let score = &task(&scored, "score", None)["output"];
    assert_eq!(score["rows"], 20_000);
    assert_eq!(score["model_version"], production);
    let written = query_one(
        score["path"].as_str().unwrap(),
        "SELECT COUNT(*) AS n, COUNT(DISTINCT user_id) AS ids, MIN(prediction) AS lo, \
         MAX(prediction) AS hi, MIN(model_version) AS v FROM t",
    );
    assert_eq!(written["n"], 20_000, "{written}");
    assert_eq!(written["ids"], 20_000, "{written}");
    assert_eq!(written["v"], production, "{written}");
    let (lo, hi) = (
        written["lo"].as_f64().unwrap(),
        written["hi"].as_f64().unwrap(),
    );
    assert!(
        (0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi) && lo < hi,
        "{written}"
    );
    assert_eq!(task(&scored, "export", None)["state"], "skipped");
    // A pinned version.
    let pinned = run(&env, "batch_predict", &workdir, &["--param", "version=1"]);
    assert_eq!(task(&pinned, "score", None)["output"]["model_version"], 1);

    // Drift: the scoring set is drawn like the training set, so PSI stays small, and on a
    // Wednesday nothing is retrained.
    let calm = run(&env, "retrain_model", &workdir, &[]);
    let drift = &task(&calm, "drift", None)["output"];
    let psi = drift["max_psi"].as_f64().unwrap();
    assert!(psi < 0.05, "same-distribution PSI {psi}: {drift:#}");
    assert_eq!(task(&calm, "retrain", None)["state"], "skipped");
    assert_eq!(task(&calm, "report", None)["state"], "success");

    // A shifted current set (three times the events) drifts, and retraining follows.
    let shifted = format!("{workdir}/shifted/");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.register_parquet("s", &format!("{workdir}/scoring_set/"), Default::default())
            .await
            .unwrap();
        ctx.sql(&format!(
            "COPY (SELECT user_id, age, country, plan, events_30d * 3 AS events_30d, purchases_30d, \
             opens_30d * 3 AS opens_30d, clicks_30d, revenue_30d FROM s) TO '{shifted}part.parquet'"
        ))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    });
    // Sent as metrics too, when a collector is there.
    let receiver = crate::telemetry::Receiver::start(&env);
    let vars = receiver
        .as_ref()
        .map(|r| r.vars().to_vec())
        .unwrap_or_default();
    let drifted = run_env(
        &env,
        "retrain_model",
        &workdir,
        &["--param", &format!("current={shifted}")],
        &vars,
    );
    let drift = &task(&drifted, "drift", None)["output"];
    let psi = drift["max_psi"].as_f64().unwrap();
    assert!(psi > 0.2, "shifted PSI {psi}: {drift:#}");
    // The two tripled counts drift; a column left as it was does not.
    for f in ["events_30d", "opens_30d"] {
        assert!(drift["psi"][f].as_f64().unwrap() > 0.2, "{f}: {drift:#}");
    }
    assert!(
        drift["psi"]["purchases_30d"].as_f64().unwrap() < 0.05,
        "{drift:#}"
    );
    assert!(["events_30d", "opens_30d"].contains(&drift["feature"].as_str().unwrap()));
    assert_eq!(task(&drifted, "retrain", None)["output"]["version"], 3);
    assert_eq!(task(&drifted, "promote", None)["state"], "success");
    assert_eq!(models_show(&env, "email_unsubscribe").len(), 3);
    if let Some(receiver) = receiver {
        let events = receiver.wait_point(
            "flow.drift.psi",
            &[("dag_id", "retrain_model"), ("feature", "events_30d")],
        );
        assert_eq!(events["type"], "gauge");
        assert_close(&events["value"], &drift["psi"]["events_30d"]);
        let auc = receiver.wait_point(
            "flow.model.metric",
            &[
                ("model", "email_unsubscribe"),
                ("stage", "candidate"),
                ("metric", "auc"),
            ],
        );
        let retrained = &task(&drifted, "retrain", None)["output"]["metrics"]["auc"];
        assert_close(&auc["value"], retrained);
    }
}

#[test]
fn the_training_set_on_spark_is_the_one_on_datafusion() {
    if !spark_available() {
        return;
    }
    let (env, workdir) = ml_env();
    let digest = || {
        query_one(
            &format!("{workdir}/training_set/"),
            "SELECT COUNT(*) AS users, SUM(events_30d) AS events, SUM(purchases_30d) AS purchases, \
             SUM(opens_30d) AS opens, SUM(clicks_30d) AS clicks, ROUND(SUM(revenue_30d), 2) AS revenue, \
             SUM(unsubscribed) AS positives, SUM(age) AS ages FROM t",
        )
    };
    let on_sql = run(&env, "build_training_set", &workdir, &[]);
    assert_eq!(
        task(&on_sql, "training_set_spark", None)["state"],
        "skipped"
    );
    let sql = digest();
    let on_spark = run(
        &env,
        "build_training_set",
        &workdir,
        &["--param", "engine=spark"],
    );
    assert_eq!(task(&on_spark, "training_set", None)["state"], "skipped");
    assert_eq!(
        task(&on_spark, "training_set_spark", None)["output"],
        json!({"exit_code": 0})
    );
    assert_eq!(task(&on_spark, "summary", None)["state"], "success");
    assert_eq!(digest(), sql, "the two engines' training sets differ");
}

#[test]
fn on_postgres_batch_predict_exports_to_the_warehouse() {
    // PostgreSQL is both the metadata database (the registry) and the warehouse.
    let Some(env) = Env::new(Db::Postgres) else {
        return;
    };
    env.config(&format!(
        "[connections.warehouse]\ntype = \"postgres\"\nurl = \"{}\"\n",
        env.db_url
    ));
    for p in PIPELINES {
        let shipped = format!("{}/../dags/{p}", env!("CARGO_MANIFEST_DIR"));
        std::fs::copy(&shipped, env.dags().join(p)).unwrap();
    }
    let workdir = env.dir.path().join("ml").display().to_string();
    run(&env, "build_training_set", &workdir, &[]);
    let trained = run(&env, "train_model", &workdir, &[]);
    assert_eq!(task(&trained, "promote", None)["output"]["promoted"], true);
    let scored = run(
        &env,
        "batch_predict",
        &workdir,
        &["--param", "warehouse_connection=warehouse"],
    );
    assert_eq!(
        task(&scored, "export", None)["output"],
        json!({"rows_loaded": 20_000})
    );
    let table = env
        .psql(
            "SELECT count(*), count(DISTINCT user_id), min(model_version), max(model_version), \
               bool_and(prediction BETWEEN 0 AND 1) FROM predictions",
        )
        .unwrap();
    assert_eq!(table.trim(), "20000|20000|1|1|t");
    // A second day replaces the table: still one row per user.
    run(
        &env,
        "batch_predict",
        &workdir,
        &["--param", "warehouse_connection=warehouse"],
    );
    assert_eq!(
        env.psql("SELECT count(*) FROM predictions").unwrap().trim(),
        "20000"
    );
}

#[test]
fn models_live_in_s3_and_predict_reads_them_back() {
    let Some((endpoint, bucket)) = s3_bucket("models") else {
        return;
    };
    let mut env = Env::new(Db::Sqlite).unwrap();
    env.secrets
        .push(("LAKE_KEY".into(), "lake-secret-9f2c".into()));
    env.config(&s3_connection("lake", &endpoint));
    let mut rows = String::from("id,x,size,y\n");
    for i in 0..400 {
        let x = (i * 37 % 101) as f64 / 10.0;
        let size = ["s", "m", "l"][i % 3];
        let y = if x + if size == "l" { 3.0 } else { 0.0 } > 6.0 {
            1
        } else {
            0
        };
        rows.push_str(&format!("{i},{x},{size},{y}\n"));
    }
    std::fs::write(env.dags().join("rows.csv"), rows).unwrap();
    env.dag(
        "s3model.yaml",
        &format!(
            r#"id: s3model
tasks:
  fit:
    operator: train
    training_set: {{ path: rows.csv }}
    label: y
    id_column: id
    algorithm: logistic_regression
    model: sizes
    artifacts: "s3://{bucket}/models/"
    connection: lake
  score:
    operator: predict
    depends_on: [fit]
    model: sizes
    version: "{{{{ tasks.fit.output.version }}}}"
    input: {{ path: rows.csv }}
    id_column: id
    connection: lake
    output: {{ path: "s3://{bucket}/predictions/", format: csv, connection: lake }}
"#
        ),
    );
    let run = env.flow_json(&["run", "s3model", "--json"], 0);
    let fit = &task(&run, "fit", None)["output"];
    let artifact = fit["artifact"].as_str().unwrap();
    assert!(
        artifact.starts_with(&format!("s3://{bucket}/models/sizes/"))
            && artifact.ends_with("/model.json"),
        "{fit:#}"
    );
    assert!(fit["metrics"]["auc"].as_f64().unwrap() > 0.9, "{fit:#}");
    let keys = s3_keys(&endpoint, &bucket, "models/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let score = &task(&run, "score", None)["output"];
    assert_eq!(score["rows"], 400);
    assert_eq!(score["model_version"], 1);
    assert!(!s3_keys(&endpoint, &bucket, "predictions/").is_empty());
    // No secret reached the home folder.
    for (path, bytes) in env.home_files() {
        assert!(!contains(&bytes, "lake-secret-9f2c"), "{}", path.display());
    }
}

/// The largest difference of `prediction` between two prediction folders, joined on user_id,
/// and the two row counts.
fn prediction_gap(a: &str, b: &str) -> (f64, i64, i64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ctx = datafusion::prelude::SessionContext::new();
        for (name, folder) in [("a", a), ("b", b)] {
            ctx.register_parquet(name, folder, Default::default())
                .await
                .unwrap();
        }
        let sql = "SELECT MAX(ABS(a.prediction - b.prediction)) AS gap, \
                   (SELECT COUNT(*) FROM a) AS rows_a, (SELECT COUNT(*) FROM b) AS rows_b \
                   FROM a JOIN b ON a.user_id = b.user_id";
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let b = &batches[0];
        let f = |i: usize| {
            datafusion::arrow::compute::cast(
                b.column(i),
                &datafusion::arrow::datatypes::DataType::Float64,
            )
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Float64Array>()
            .unwrap()
            .value(0)
        };
        (f(0), f(1) as i64, f(2) as i64)
    })
}

#[test]
fn the_ml_operators_on_spark_give_the_in_process_answers() {
    if !spark_available() {
        return;
    }
    let (env, workdir) = ml_env();
    // At most two Spark jobs at once on the test machine.
    env.config("[pools]\nspark = 2\n");
    run(&env, "build_training_set", &workdir, &[]);
    // One task on one engine; the Spark ones share a pool of two.
    let on = |engine: &str, name: &str, body: &str| {
        let pool = if engine == "spark" {
            "spark"
        } else {
            "default"
        };
        format!("  {name}:\n    engine: {engine}\n    pool: {pool}\n{body}")
    };
    let experiment = format!(
        r#"    operator: experiment
    experiment: subject_line_test
    assignments: {{ path: "{workdir}/data/assignments.parquet" }}
    outcomes: {{ path: "{workdir}/data/revenue.parquet" }}
    metric: mean
    min_units_per_arm: 1000000
"#
    );
    let drift = format!(
        r#"    operator: drift
    reference: {{ path: "{workdir}/training_set/" }}
    current: {{ path: "{workdir}/scoring_set/" }}
    features: [age, events_30d, purchases_30d, opens_30d, clicks_30d, revenue_30d]
"#
    );
    // Four versions of model m, one after another so that they are numbered 1 to 4.
    let train = |after: &str, more: &str| {
        let after = if after.is_empty() {
            String::new()
        } else {
            format!("    depends_on: [{after}]\n")
        };
        format!(
            r#"    operator: train
{after}    training_set: {{ path: "{workdir}/training_set/" }}
    label: unsubscribed
    id_column: user_id
    model: m
    artifacts: "{workdir}/models/"
{more}"#
        )
    };
    let lr = "    algorithm: logistic_regression\n";
    let mut yaml = String::from("id: ml_engines\ntasks:\n");
    for engine in ["local", "spark"] {
        yaml += &on(engine, &format!("exp_{engine}"), &experiment);
        yaml += &on(engine, &format!("drift_{engine}"), &drift);
    }
    yaml += &on("local", "gb", &train("", ""));
    yaml += &on("local", "lr", &train("gb", lr));
    yaml += &on(
        "spark",
        "spark_gb",
        &train("lr", "    max_iterations: 20\n"),
    );
    yaml += &on("spark", "spark_lr", &train("spark_gb", lr));
    for (trained, engines) in [
        ("gb", &["local", "spark"][..]),
        ("lr", &["local", "spark"][..]),
        ("spark_gb", &["local", "spark"][..]),
        ("spark_lr", &["local"][..]),
    ] {
        for engine in engines {
            let name = format!("p_{trained}_{engine}");
            let body = format!(
                r#"    operator: predict
    depends_on: [{trained}]
    model: m
    version: "{{{{ tasks.{trained}.output.version }}}}"
    input: {{ path: "{workdir}/scoring_set/" }}
    id_column: user_id
    output: {{ path: "{workdir}/out/{name}/", format: parquet }}
"#
            );
            yaml += &on(engine, &name, &body);
        }
    }
    env.dag("ml_engines.yaml", &yaml);
    let out = env.flow(&["run", "ml_engines", "--json"]);
    let engines: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no run JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(engines["state"], "success", "{engines:#}");
    let output = |t: &str| task(&engines, t, None)["output"].clone();

    // The experiment: the same arms, so the same statistics (sums of floats may differ in the
    // last bits between the engines' summation orders).
    let (local, spark) = (output("exp_local"), output("exp_spark"));
    // Both looks read the data: the two tasks share the experiment's record, and too few units
    // per arm keeps it running, so neither look returns the other's conclusion.
    assert_eq!(
        (local["recomputed"].clone(), spark["recomputed"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(local["concluded"], spark["concluded"]);
    assert_eq!(local["winner"], spark["winner"]);
    let variants = local["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2, "{local:#}");
    for (l, s) in variants.iter().zip(spark["variants"].as_array().unwrap()) {
        assert_eq!(l["variant"], s["variant"]);
        assert_eq!(l["units"], s["units"]);
        for key in ["mean", "lift", "p_value"] {
            if l[key].is_null() {
                assert!(s[key].is_null(), "{key}: {l} {s}");
                continue;
            }
            let (a, b) = (l[key].as_f64().unwrap(), s[key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                "{key}: {a} vs {b}"
            );
        }
    }

    // Drift: the same cut points and counts, so exactly the same PSI.
    let (local, spark) = (output("drift_local"), output("drift_spark"));
    assert_eq!(local["psi"], spark["psi"], "{local:#} {spark:#}");
    assert_eq!(local["psi"].as_object().unwrap().len(), 6);

    // Spark-trained models: registered like the others, with the known signal's AUC.
    for t in ["spark_gb", "spark_lr"] {
        let o = output(t);
        let auc = o["metrics"]["auc"].as_f64().unwrap();
        assert!(auc > MIN_AUC, "{t}: {o:#}");
        assert!(o["rows"]["validation"].as_u64().unwrap() > 0, "{t}: {o:#}");
    }
    let versions: Vec<i64> = ["gb", "lr", "spark_gb", "spark_lr"]
        .iter()
        .map(|t| output(t)["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);

    // Scoring on Spark equals scoring in flow, for each kind of model; one row per input row.
    let rows = query_one(
        &format!("{workdir}/scoring_set/"),
        "SELECT COUNT(*) AS n FROM t",
    )["n"]
        .as_i64()
        .unwrap();
    for trained in ["gb", "lr", "spark_gb"] {
        let (a, b) = (
            format!("{workdir}/out/p_{trained}_local/"),
            format!("{workdir}/out/p_{trained}_spark/"),
        );
        let (gap, rows_a, rows_b) = prediction_gap(&a, &b);
        assert_eq!((rows_a, rows_b), (rows, rows), "{trained}");
        assert!(gap < 1e-12, "{trained}: predictions differ by {gap}");
        assert_eq!(output(&format!("p_{trained}_spark"))["rows"], rows);
    }
    let spread = query_one(
        &format!("{workdir}/out/p_spark_lr_local/"),
        "SELECT MIN(prediction) AS lo, MAX(prediction) AS hi, COUNT(*) AS n FROM t",
    );
    assert_eq!(spread["n"], rows);
    assert!(spread["hi"].as_f64().unwrap() - spread["lo"].as_f64().unwrap() > 0.3);

    // A shipped pipeline moves its heavy step by one key: batch_predict scores on Spark and
    // writes what it writes in flow.
    run(&env, "train_model", &workdir, &[]);
    run(&env, "batch_predict", &workdir, &[]);
    let shipped = format!("{workdir}/predictions/ds=2026-03-04/");
    let here = format!("{workdir}/out/batch_predict_local/");
    std::fs::rename(&shipped, &here).unwrap();
    let on_spark = run(
        &env,
        "batch_predict",
        &workdir,
        &["--param", "engine=spark"],
    );
    assert_eq!(task(&on_spark, "score", None)["output"]["rows"], rows);
    let (gap, a, b) = prediction_gap(&here, &shipped);
    assert_eq!((a, b), (rows, rows));
    assert!(gap < 1e-12, "batch_predict: predictions differ by {gap}");
}

/// Two JSON numbers that agree to rounding.
pub(crate) fn assert_close(a: &Json, b: &Json) {
    let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
    assert!((x - y).abs() < 1e-9, "{a} != {b}");
}
