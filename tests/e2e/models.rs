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
