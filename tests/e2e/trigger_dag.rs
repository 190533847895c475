//! `trigger_dag` (issue 23): a task starts another DAG's run with templated params, waits for
//! it and fails with it; a parent try orphaned by `kill -9` re-attaches to its child instead of
//! starting a second one.

use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::harness::*;

const CHILD: &str = r#"id: child
params:
  n: { type: integer, default: 1 }
tasks:
  t:
    operator: shell
    retries: 2
    retry_delay: 100ms
    command: 'if [ {{ params.n }} -ge 50 ]; then exit 1; fi; sleep {{ params.n }}; echo "child n={{ params.n }}"'
"#;

const PARENT: &str = r#"id: parent
params:
  n: { type: integer, default: 1 }
tasks:
  start:
    operator: trigger_dag
    dag: child
    params: { n: "{{ params.n }}" }
    wait: true
    poke_interval: 200ms
  fire_and_forget:
    operator: trigger_dag
    dag: child
    params: { n: 0 }
"#;

/// Only the waiting task: a `kill -9` must not also catch another task mid-try (which, with no
/// external work recorded yet, fails as any orphaned try does).
const WAITING_PARENT: &str = r#"id: parent
params:
  n: { type: integer, default: 1 }
tasks:
  start:
    operator: trigger_dag
    dag: child
    params: { n: "{{ params.n }}" }
    wait: true
    poke_interval: 200ms
"#;

fn child_runs(env: &Env) -> Vec<Json> {
    let runs = env.flow_json(&["runs", "list", "--dag", "child", "--json"], 0);
    runs.as_array().cloned().unwrap_or_default()
}

/// Triggers `parent` with `n` through the daemon and waits for its end.
fn run_parent(env: &Env, n: u32) -> Json {
    let run_id = env
        .flow_ok(&["trigger", "parent", "--param", &format!("n={n}")], 0)
        .trim()
        .to_string();
    env.wait_run(&run_id, Duration::from_secs(120))
}

#[test]
fn a_task_starts_another_dag_waits_for_it_and_fails_with_it() {
    each_db(|env, db| {
        env.dag("child.yaml", CHILD);
        env.dag("parent.yaml", PARENT);
        env.flow_ok(&["dags", "validate"], 0);
        // The child runs on the daemon: `flow run` runs its own run only (docs/operators.md).
        let scheduler = env.spawn(&["scheduler"]);
        let run = run_parent(&env, 2);
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        let start = task(&run, "start", None);
        let child_id = start["output"]["run_id"]
            .as_str()
            .expect("a run id")
            .to_string();
        assert_eq!(start["output"]["state"], "success", "{db:?}: {run:#}");
        let child = env.flow_json(&["runs", "show", &child_id, "--json"], 0);
        assert_eq!(child["state"], "success", "{db:?}: {child:#}");
        assert_eq!(child["run_type"], "manual");
        assert_eq!(
            child["params"]["n"], 2,
            "the templated text is the child's integer"
        );
        let forgotten = task(&run, "fire_and_forget", None);
        assert!(forgotten["output"]["run_id"].is_string(), "{db:?}: {run:#}");

        // A child that fails fails its waiting parent.
        let run = run_parent(&env, 60);
        stop_gracefully(scheduler, "scheduler");
        assert_eq!(run["state"], "failed", "{db:?}: {run:#}");
        assert_eq!(
            task(&run, "start", None)["state"],
            "failed",
            "{db:?}: {run:#}"
        );
    });
}

#[test]
fn an_orphaned_parent_reattaches_to_its_child() {
    each_db(|env, db| {
        env.config("lease_timeout = \"2s\"\n");
        env.dag("child.yaml", CHILD);
        env.dag("parent.yaml", WAITING_PARENT);
        let mut scheduler = env.spawn(&["scheduler"]);
        let run_id = env
            .flow_ok(&["trigger", "parent", "--param", "n=3"], 0)
            .trim()
            .to_string();
        // The child's id is recorded once the log says so; kill the scheduler after that.
        let begin = Instant::now();
        loop {
            let out = env.flow(&["tasks", "logs", &run_id, "start"]);
            if String::from_utf8_lossy(&out.stdout).contains("flow: triggered run") {
                break;
            }
            assert!(
                begin.elapsed() < Duration::from_secs(60),
                "{db:?}: never triggered"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        kill_9(&mut scheduler);
        let scheduler = env.spawn(&["scheduler"]);
        let run = env.wait_run(&run_id, Duration::from_secs(120));
        stop_gracefully(scheduler, "scheduler");
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        let waited: Vec<Json> = child_runs(&env)
            .into_iter()
            .filter(|r| r["params"] == json!({"n": 3}))
            .collect();
        assert_eq!(
            waited.len(),
            1,
            "{db:?}: a second child was started: {waited:#?}"
        );
        let log = env.flow_ok(&["tasks", "logs", &run_id, "start"], 0);
        assert!(log.contains("flow: re-attached to run"), "{db:?}: {log}");
    });
}
