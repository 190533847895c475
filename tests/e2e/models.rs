//! The model registry by hand and `predict` on small inputs: `flow models` (list, show,
//! promote, rollback) and streaming scores.

use serde_json::json;

use crate::harness::*;
use crate::ml::query_one;

#[test]
fn models_cli_lists_shows_and_promotes_by_hand() {
    let env = Env::new(Db::Sqlite).unwrap();
    assert_eq!(env.flow_json(&["models", "list", "--json"], 0), json!([]));
    let out = env.flow(&["models", "show", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model 'nope'"));
    let out = env.flow(&["models", "promote", "nope", "1"]);
    assert_eq!(out.status.code(), Some(2));
}

/// `predict` streams: an input of several DataFusion batches is read, scored and written batch
/// by batch, every row once; an input without a feature fails when the query is planned, naming
/// the column, and writes nothing.
#[test]
fn predict_streams_every_row_and_names_a_missing_feature() {
    let env = Env::new(Db::Sqlite).unwrap();
    let mut train = String::from("id,x,y\n");
    for i in 0..400 {
        train.push_str(&format!("{i},{},{}\n", i % 13, i32::from(i % 13 < 6)));
    }
    std::fs::write(env.dags().join("train.csv"), train).unwrap();
    // 50,000 rows: seven batches of 8,192 rows and a short one.
    let mut score = String::from("id,x\n");
    for i in 0..50_000 {
        score.push_str(&format!("{i},{}\n", i % 13));
    }
    std::fs::write(env.dags().join("score.csv"), score).unwrap();
    std::fs::write(env.dags().join("no_x.csv"), "id,z\n1,2\n").unwrap();
    let out = env.path("scored");
    env.dag(
        "scoring.yaml",
        &format!(
            "id: scoring\ntasks:\n  fit:\n    operator: train\n    training_set: {{ path: train.csv }}\n    label: y\n    id_column: id\n    model: m\n    algorithm: logistic_regression\n    artifacts: models/\n  score:\n    operator: predict\n    depends_on: [fit]\n    model: m\n    version: \"{{{{ tasks.fit.output.version }}}}\"\n    input: {{ path: score.csv }}\n    id_column: id\n    output: {{ path: \"{}/\", format: parquet }}\n",
            out.display()
        ),
    );
    let run = env.flow_json(&["run", "scoring", "--json"], 0);
    let scored = &task(&run, "score", None)["output"];
    assert_eq!(scored["rows"], 50_000, "{scored:#}");
    let counted = query_one(
        &format!("{}/", out.display()),
        "SELECT COUNT(*) AS n, COUNT(DISTINCT id) AS ids, MIN(prediction) >= 0 AS low, \
         MAX(prediction) <= 1 AS high FROM t",
    );
    assert_eq!(
        counted,
        json!({"n": 50_000, "ids": 50_000, "low": true, "high": true})
    );
    env.dag(
        "bad_input.yaml",
        "id: bad_input\ntasks:\n  score:\n    operator: predict\n    model: m\n    version: 1\n    input: { path: no_x.csv }\n    id_column: id\n    output: { path: never/, format: parquet }\n",
    );
    let failed = env.flow_json(&["run", "bad_input", "--json"], 1);
    let error = task(&failed, "score", None)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("No field named x"), "{error}");
    assert!(
        !env.dags().join("never").exists(),
        "a failed read wrote output"
    );
}

/// `flow models rollback`: back to the version that was production before the current one, as
/// a compare-and-set; a second rollback undoes the first.
#[test]
fn models_roll_back_to_the_production_version_before() {
    let env = Env::new(Db::Sqlite).unwrap();
    let out = env.flow(&["models", "rollback", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model 'nope'"));
    let mut rows = String::from("x,y\n");
    for i in 0..200 {
        rows.push_str(&format!("{i},{}\n", i32::from(i % 7 < 3)));
    }
    std::fs::write(env.dags().join("rows.csv"), rows).unwrap();
    let fit = "    operator: train\n    training_set: { path: rows.csv }\n    label: y\n    model: m\n    algorithm: logistic_regression\n    artifacts: models/\n";
    env.dag(
        "two.yaml",
        &format!("id: two\ntasks:\n  a:\n{fit}  b:\n    depends_on: [a]\n{fit}"),
    );
    env.flow_ok(&["run", "two"], 0);
    let refused = |want: &str| {
        let out = env.flow(&["models", "rollback", "m"]);
        let said = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains(want), "{said}");
    };
    refused("no production version to roll back from");
    env.flow_ok(&["models", "promote", "m", "1"], 0);
    refused("has had no production version before version 1");
    env.flow_ok(&["models", "promote", "m", "2"], 0);
    let stages = || -> Vec<(i64, String)> {
        env.flow_json(&["models", "show", "m", "--json"], 0)
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["version"].as_i64().unwrap(),
                    v["stage"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    env.flow_ok(&["models", "rollback", "m"], 0);
    assert_eq!(
        stages(),
        [(2, "archived".to_string()), (1, "production".to_string())]
    );
    env.flow_ok(&["models", "rollback", "m"], 0);
    assert_eq!(
        stages(),
        [(2, "production".to_string()), (1, "archived".to_string())]
    );
}

/// Lineage: a version names the dataset event it was trained on and the run, DAG version and
/// task that trained it; `flow models show` lists the runs that scored with it.
#[test]
fn a_model_version_shows_what_it_was_trained_on_and_what_used_it() {
    each_db(|env, db| {
        let mut rows = String::from("id,x,y\n");
        for i in 0..200 {
            rows.push_str(&format!("{i},{},{}\n", i % 11, i32::from(i % 11 < 4)));
        }
        std::fs::write(env.dags().join("rows.csv"), rows).unwrap();
        env.dag(
            "lineage.yaml",
            "id: lineage\ntasks:\n  build:\n    operator: shell\n    command: \"true\"\n    produces: [lake://ml/training_set]\n  fit:\n    operator: train\n    depends_on: [build]\n    training_set: { path: rows.csv }\n    dataset: lake://ml/training_set\n    label: y\n    id_column: id\n    model: m\n    algorithm: logistic_regression\n    artifacts: models/\n  score:\n    operator: predict\n    depends_on: [fit]\n    model: m\n    version: \"{{ tasks.fit.output.version }}\"\n    input: { path: rows.csv }\n    id_column: id\n    output: { path: scored/, format: parquet }\n",
        );
        let run = env.flow_json(&["run", "lineage", "--json"], 0);
        let run_id = run["run_id"].as_str().unwrap().to_string();
        // A second run trains version 2 and scores with it; version 1 keeps its own use.
        let again = env.flow_json(&["run", "lineage", "--json"], 0);
        let again_id = again["run_id"].as_str().unwrap().to_string();
        let shown = env.flow_json(&["models", "show", "m", "--json"], 0);
        let v1 = &shown[1];
        assert_eq!(v1["version"], 1, "{db:?}: {shown:#}");
        assert_eq!(v1["dataset"], "lake://ml/training_set");
        assert_eq!(v1["run_id"], run_id.as_str());
        assert_eq!(v1["task_id"], "fit");
        assert!(v1["dag_version"].as_str().is_some_and(|v| !v.is_empty()));
        let events = v1["trained_on"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{v1:#}");
        assert_eq!(events[0]["source_run_id"], run_id.as_str());
        assert_eq!(events[0]["source_dag_id"], "lineage");
        assert_eq!(
            v1["predictions"],
            json!([{"dag_id": "lineage", "run_id": run_id, "task_id": "score",
                    "map_index": null, "rows": 200, "at": v1["predictions"][0]["at"]}])
        );
        assert_eq!(shown[0]["predictions"][0]["run_id"], again_id.as_str());
        assert_ne!(shown[0]["trained_on"][0]["id"], events[0]["id"]);

        let table = env.flow_ok(&["models", "show", "m"], 0);
        assert!(
            table.contains("TRAINED ON") && table.contains("PREDICTIONS"),
            "{table}"
        );
        let line = table
            .lines()
            .find(|l| l.trim_start().starts_with("1 "))
            .unwrap_or_default();
        assert!(
            line.contains(&format!(
                "lake://ml/training_set event #{}",
                events[0]["id"]
            )) && line.contains(&run_id),
            "{table}"
        );

        // A task tested alone is no run: it leaves no use.
        env.flow_ok(
            &[
                "tasks",
                "test",
                "lineage",
                "score",
                "--output",
                "fit={\"version\": 1}",
            ],
            0,
        );
        let shown = env.flow_json(&["models", "show", "m", "--json"], 0);
        assert_eq!(shown[1]["predictions"].as_array().unwrap().len(), 1);
    });
}
