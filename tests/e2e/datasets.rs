//! Data-aware scheduling (issue 23) through the daemon and the API, on both databases: a
//! producer's success starts its consumer once, with the event in `{{ triggering_events }}`; a
//! `mode: all` DAG waits for every dataset, one of them recorded through the API.

use std::time::Duration;

use serde_json::{Value as Json, json};

use crate::api_server::{Server, state_is, token, trigger_id};
use crate::harness::*;

const PRODUCER: &str = r#"id: producer
tasks:
  build:
    operator: shell
    command: 'echo "{\"rows\": 42}" > "$FLOW_OUTPUT"'
    produces: [s3://lake/training_set/]
"#;

const CONSUMER: &str = r#"id: consumer
schedule:
  datasets: [s3://lake/training_set/]
tasks:
  train:
    operator: shell
    env: { EVENTS: "{{ triggering_events | tojson }}" }
    command: 'echo "events=$EVENTS"'
"#;

const BOTH: &str = r#"id: both
schedule:
  datasets: [s3://lake/training_set/, { uri: "partner://feed", external: true }]
  mode: all
tasks:
  t:
    operator: shell
    env: { N: "{{ triggering_events | length }}" }
    command: 'echo "events: $N"'
"#;

fn runs_of(server: &Server, token: &str, dag: &str) -> Vec<Json> {
    let body = server
        .get(&format!("/api/v1/runs?dag_id={dag}"), token)
        .ok();
    body.as_array().cloned().unwrap_or_default()
}

fn wait_runs(server: &Server, token: &str, dag: &str, n: usize) -> Vec<Json> {
    let path = format!("/api/v1/runs?dag_id={dag}");
    let done = |b: &Json| {
        b.as_array().is_some_and(|runs| {
            runs.len() >= n
                && runs
                    .iter()
                    .all(|r| r["state"] == "success" || r["state"] == "failed")
        })
    };
    let body = server.get_until(&path, token, Duration::from_secs(90), done);
    body.as_array().cloned().unwrap_or_default()
}

#[test]
fn a_producer_starts_its_consumers_once_with_the_events() {
    each_db(|env, db| {
        env.dag("producer.yaml", PRODUCER);
        env.dag("consumer.yaml", CONSUMER);
        env.dag("both.yaml", BOTH);
        env.flow_ok(&["dags", "validate"], 0);
        let operator = token(&env, "ops", "operator");
        let viewer = token(&env, "looker", "viewer");
        let server = Server::start(&env, "standalone");
        let producer_run = trigger_id(&server, &operator, "producer");
        server.wait_run(
            &operator,
            &producer_run,
            Duration::from_secs(60),
            state_is(&["success"]),
        );

        let runs = wait_runs(&server, &operator, "consumer", 1);
        assert_eq!(runs.len(), 1, "{db:?}: {runs:#?}");
        let run = &runs[0];
        assert_eq!(run["run_type"], "dataset_triggered", "{db:?}: {run:#}");
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        let run_id = run["run_id"].as_str().unwrap();
        let log = env.flow_ok(&["tasks", "logs", run_id, "train"], 0);
        let events: Json = log
            .lines()
            .find_map(|l| l.strip_prefix("events="))
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_else(|| panic!("{db:?}: no events line in {log}"));
        let event = &events[0];
        assert_eq!(
            events.as_array().map(Vec::len),
            Some(1),
            "{db:?}: {events:#}"
        );
        assert_eq!(event["uri"], "s3://lake/training_set/", "{db:?}");
        assert_eq!(event["extra"], json!({"rows": 42}), "{db:?}");
        assert_eq!(event["source_run_id"], producer_run.as_str(), "{db:?}");
        assert_eq!(event["source_task_id"], "build", "{db:?}");

        // `both` waits for its second dataset, which comes from outside flow.
        assert!(runs_of(&server, &operator, "both").is_empty(), "{db:?}");
        let body = json!({"uri": "partner://feed", "extra": {"batch": 7}});
        let refused = server.call(
            "POST",
            "/api/v1/datasets/events",
            Some(&viewer),
            Some(&body),
        );
        assert_eq!(refused.status, 403, "{db:?}: {:#}", refused.body);
        let bad = json!({"uri": "not a uri"});
        let bad = server.call(
            "POST",
            "/api/v1/datasets/events",
            Some(&operator),
            Some(&bad),
        );
        bad.error(400, "bad_request");
        let recorded = server.call(
            "POST",
            "/api/v1/datasets/events",
            Some(&operator),
            Some(&body),
        );
        assert_eq!(recorded.status, 201, "{db:?}: {:#}", recorded.body);
        assert_eq!(recorded.body["extra"], json!({"batch": 7}));
        let both = wait_runs(&server, &operator, "both", 1);
        assert_eq!(both.len(), 1, "{db:?}: {both:#?}");
        assert_eq!(both[0]["state"], "success", "{db:?}");
        let log = env.flow_ok(
            &["tasks", "logs", both[0]["run_id"].as_str().unwrap(), "t"],
            0,
        );
        assert!(log.contains("events: 2"), "{db:?}: {log}");

        let datasets = server.get("/api/v1/datasets", &viewer).ok();
        let lake = datasets
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["uri"] == "s3://lake/training_set/")
            .unwrap_or_else(|| panic!("{datasets:#}"))
            .clone();
        assert_eq!(lake["producers"], json!(["producer.build"]), "{db:?}");
        assert_eq!(lake["consumers"], json!(["both", "consumer"]), "{db:?}");
        assert_eq!(lake["last_event"]["source_dag_id"], "producer", "{db:?}");
        let events = server
            .get("/api/v1/datasets/events?uri=partner%3A%2F%2Ffeed", &viewer)
            .ok();
        assert_eq!(
            events.as_array().map(Vec::len),
            Some(1),
            "{db:?}: {events:#}"
        );

        // No event starts a second run: each was taken once.
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(runs_of(&server, &operator, "consumer").len(), 1, "{db:?}");
        assert_eq!(runs_of(&server, &operator, "both").len(), 1, "{db:?}");
    });
}

#[test]
fn validate_reports_a_consumed_dataset_nobody_produces() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag("consumer.yaml", CONSUMER);
    let out = env.flow(&["dags", "validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("consumer.yaml:3:14: DAG 'consumer' is scheduled on dataset 's3://lake/training_set/', which no task produces"),
        "{err}"
    );
    env.dag("producer.yaml", PRODUCER);
    env.flow_ok(&["dags", "validate"], 0);
}

/// The shipped ML pipelines chain through datasets on the daemon: build_training_set's scheduled
/// run writes the training set, which starts train_model, whose promote starts batch_predict.
#[test]
fn the_shipped_ml_pipelines_chain_through_datasets() {
    let env = Env::new(Db::Sqlite).unwrap();
    let workdir = env.dir.path().join("ml").display().to_string();
    // Runs started by events take their params' defaults: point them at this test's folder.
    crate::ml::copy_pipelines(
        &env,
        &[
            "build_training_set.yaml",
            "train_model.yaml",
            "batch_predict.yaml",
        ],
        Some(&workdir),
    );
    env.flow_ok(&["dags", "validate"], 0);
    let scheduler = env.spawn(&["scheduler"]);
    let begin = std::time::Instant::now();
    let triggered = |dag: &str| -> Option<Json> {
        let runs = env.flow_json(&["runs", "list", "--dag", dag, "--json"], 0);
        runs.as_array()?
            .iter()
            .find(|r| r["run_type"] == "dataset_triggered" && r["state"] == "success")
            .cloned()
    };
    let predicted = loop {
        if let Some(run) = triggered("batch_predict") {
            break run;
        }
        assert!(
            begin.elapsed() < Duration::from_secs(300),
            "the chain never reached batch_predict: {}",
            std::fs::read_to_string(env.path("spawned.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    stop_gracefully(scheduler, "scheduler");
    let trained = triggered("train_model").expect("train_model ran on the training set");
    let shown = env.flow_json(
        &[
            "runs",
            "show",
            trained["run_id"].as_str().unwrap(),
            "--json",
        ],
        0,
    );
    assert_eq!(
        task(&shown, "promote", None)["state"],
        "success",
        "{shown:#}"
    );
    let shown = env.flow_json(
        &[
            "runs",
            "show",
            predicted["run_id"].as_str().unwrap(),
            "--json",
        ],
        0,
    );
    assert_eq!(task(&shown, "score", None)["state"], "success", "{shown:#}");
}
