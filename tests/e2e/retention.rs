//! `flow db clean` and `[retention]` (issue 23): old runs go with their tries, logs and the
//! versions only they used; a model version's training run stays; on both databases.

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::api_server::{Server, token};
use crate::harness::*;

fn runs(env: &Env, dag: &str) -> Vec<Json> {
    let v = env.flow_json(&["runs", "list", "--dag", dag, "--json"], 0);
    v.as_array().cloned().unwrap_or_default()
}

const MODEL_DAG: &str = "id: model\ntasks:\n  fit:\n    operator: train\n    training_set: { path: rows.csv }\n    label: y\n    model: m\n    artifacts: models/\n";

#[test]
fn db_clean_deletes_old_runs_logs_and_unused_versions_but_keeps_model_runs() {
    each_db(|env, db| {
        let mut rows = String::from("x,y\n");
        for i in 0..200 {
            rows.push_str(&format!("{i},{}\n", i32::from(i % 7 < 3)));
        }
        std::fs::write(env.dags().join("rows.csv"), rows).unwrap();
        env.dag("model.yaml", MODEL_DAG);
        env.dag(
            "old.yaml",
            "id: old\ntasks:\n  t: { operator: shell, command: echo one }\n",
        );
        let first = env.flow_json(&["run", "old", "--json"], 0);
        env.flow_ok(&["run", "old"], 0);
        env.flow_ok(&["run", "model"], 0);
        let v1 = first["dag_version"].as_str().unwrap().to_string();
        // A new version: v1 is then used by the old runs alone.
        env.dag(
            "old.yaml",
            "id: old\ntasks:\n  t: { operator: shell, command: echo two }\n",
        );
        env.dag(
            "keep.yaml",
            "id: keep\ntasks:\n  t: { operator: shell, command: echo keep }\n",
        );
        env.flow_ok(&["run", "keep"], 0);
        let logs = env.home().join("logs").join("dag_id=old");
        assert!(logs.exists(), "{db:?}: the runs wrote logs");

        let bad = env.flow(&["db", "clean", "--before", "soon"]);
        assert_eq!(bad.status.code(), Some(2), "{db:?}");
        let dry = env.flow_ok(&["db", "clean", "--before", "0s", "--dry-run"], 0);
        assert!(dry.starts_with("would delete 3 run(s)"), "{db:?}: {dry}");
        assert_eq!(
            runs(&env, "old").len(),
            2,
            "{db:?}: a dry run deletes nothing"
        );

        let out = env.flow_ok(&["db", "clean", "--before", "0s", "--dag", "old"], 0);
        assert!(out.starts_with("deleted 2 run(s)"), "{db:?}: {out}");
        assert!(out.contains("1 unused DAG version(s)"), "{db:?}: {out}");
        assert!(runs(&env, "old").is_empty(), "{db:?}");
        assert_eq!(
            runs(&env, "keep").len(),
            1,
            "{db:?}: --dag keeps the others"
        );
        assert!(
            !logs
                .join(format!("run_id={}", first["run_id"].as_str().unwrap()))
                .exists()
        );
        let viewer = token(&env, "looker", "viewer");
        let server = Server::start(&env, "server");
        server
            .get(&format!("/api/v1/dags/old/versions/{v1}"), &viewer)
            .error(404, "not_found");
        drop(server);

        let out = env.flow_ok(&["db", "clean", "--before", "0s"], 0);
        assert!(out.starts_with("deleted 1 run(s)"), "{db:?}: {out}");
        assert!(runs(&env, "keep").is_empty(), "{db:?}");
        assert_eq!(
            runs(&env, "model").len(),
            1,
            "{db:?}: the model's run stays"
        );
        let models = env.flow_ok(&["models", "show", "m"], 0);
        assert!(models.contains("model__"), "{db:?}: {models}");
    });
}

#[test]
fn the_retention_policy_cleans_beside_the_scheduler() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.config("[retention]\nmax_age = \"0s\"\nevery = \"1s\"\n");
    env.dag(
        "short.yaml",
        "id: short\ntasks:\n  t: { operator: shell, command: echo hi }\n",
    );
    env.flow_ok(&["run", "short"], 0);
    assert_eq!(runs(&env, "short").len(), 1);
    let scheduler = env.spawn(&["scheduler"]);
    let begin = Instant::now();
    while !runs(&env, "short").is_empty() {
        assert!(
            begin.elapsed() < Duration::from_secs(30),
            "the ended run was never cleaned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_gracefully(scheduler, "scheduler");
}
