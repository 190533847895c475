//! Alerts (issue 22, point 4) posted to real webhooks: a task's `on_retry` and `on_failure`
//! once per try, and a missed SLA and a run stuck queued once per run, with two schedulers on
//! the database.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::*;
use crate::schedulers::{counting_receiver, spawn_scheduler};

/// The posted bodies, once at least `n` have arrived, and a moment more for any extra ones.
fn posted(posts: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<Json> {
    let start = Instant::now();
    while posts.lock().unwrap().len() < n && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    posts
        .lock()
        .unwrap()
        .iter()
        .map(|b| serde_json::from_str(b).unwrap_or_else(|e| panic!("{e}: {b}")))
        .collect()
}

#[test]
fn a_tasks_retry_and_its_failure_post_its_own_webhooks() {
    each_db(|env, db| {
        let (port, posts) = counting_receiver();
        env.config("base_url = \"https://flow.example\"\n");
        env.dag(
            "flaky.yaml",
            &format!(
                "id: flaky\ndefaults:\n  on_retry: {{ webhook: 'http://127.0.0.1:{port}/retry' }}\n\
                 tasks:\n  wobbly:\n    operator: shell\n    command: 'echo no disk >&2; exit 3'\n    \
                 retries: 1\n    retry_delay: 0\n    \
                 on_failure: {{ webhook: 'http://127.0.0.1:{port}/fail' }}\n  \
                 fine: {{ operator: shell, command: 'true' }}\n"
            ),
        );
        let run = env.flow_json(&["run", "flaky", "--json"], 1);
        let bodies = posted(&posts, 2);
        assert_eq!(
            bodies.len(),
            2,
            "{db:?}: one post per failed try: {bodies:#?}"
        );
        let retry = bodies.iter().find(|b| b["alert"] == "task_retry").unwrap();
        let failed = bodies.iter().find(|b| b["alert"] == "task_failed").unwrap();
        for b in [retry, failed] {
            assert_eq!(b["dag_id"], "flaky");
            assert_eq!(b["run_id"], run["run_id"]);
            assert_eq!(b["task_id"], "wobbly");
            assert_eq!(
                b["url"],
                format!(
                    "https://flow.example/runs/{}",
                    run["run_id"].as_str().unwrap()
                )
            );
        }
        assert_eq!(retry["state"], "up_for_retry");
        assert!(
            retry["text"]
                .as_str()
                .unwrap()
                .contains("try 1 failed; another try follows"),
            "{retry}"
        );
        assert_eq!(failed["state"], "failed");
        assert_eq!(failed["failed_tasks"], serde_json::json!(["wobbly"]));
        assert!(
            failed["text"]
                .as_str()
                .unwrap()
                .contains("try 2 failed with no retry left"),
            "{failed}"
        );
    });
}

#[test]
fn a_missed_sla_and_a_stuck_run_are_posted_once_across_schedulers() {
    let Some(env) = Env::new(Db::Postgres) else {
        return;
    };
    let (port, posts) = counting_receiver();
    let toml = format!(
        "poll_interval = \"100ms\"\n[notifications]\nwebhook = \"http://127.0.0.1:{port}/hook\"\n\
         stuck_queued = \"1s\"\n"
    );
    // Each scheduler has a home of its own, as on its own host, with this flow.toml.
    for home in ["host-a", "host-b"] {
        std::fs::create_dir_all(env.path(home)).unwrap();
        std::fs::write(env.path(home).join("flow.toml"), &toml).unwrap();
    }
    env.dag(
        "late.yaml",
        "id: late\nsla: 1s\nmax_active_runs: 1\n\
         tasks:\n  slow: { operator: shell, command: 'sleep 4', sla: 2s }\n  \
         after: { operator: shell, command: 'true', depends_on: [slow] }\n  \
         quick: { operator: shell, command: 'true', sla: 3s }\n",
    );
    let a = spawn_scheduler(&env, "host-a");
    let b = spawn_scheduler(&env, "host-b");
    let first = env.flow_ok(&["trigger", "late"], 0).trim().to_string();
    // max_active_runs holds the second run queued while the first sleeps.
    let second = env.flow_ok(&["trigger", "late"], 0).trim().to_string();
    for run in [&first, &second] {
        let ended = env.wait_run(run, Duration::from_secs(60));
        assert_eq!(ended["state"], "success", "{ended:#}");
    }
    let bodies = posted(&posts, 6);
    let of = |run: &str, alert: &str, task: Option<&str>| {
        bodies
            .iter()
            .filter(|b| b["run_id"] == run && b["alert"] == alert && b["task_id"].as_str() == task)
            .count()
    };
    // The first run: late as a whole (1s) and in `slow` (2s); `quick` met its SLA (3s), and
    // `after` has none.
    assert_eq!(of(&first, "sla_missed", None), 1, "{bodies:#?}");
    assert_eq!(of(&first, "sla_missed", Some("slow")), 1, "{bodies:#?}");
    assert_eq!(of(&first, "sla_missed", Some("quick")), 0, "{bodies:#?}");
    // The second waited queued behind it for about 4 s: stuck, and too late for every SLA.
    assert_eq!(of(&second, "stuck_queued", None), 1, "{bodies:#?}");
    for task in [None, Some("slow"), Some("quick")] {
        assert_eq!(of(&second, "sla_missed", task), 1, "{task:?}: {bodies:#?}");
    }
    assert_eq!(bodies.len(), 6, "{bodies:#?}");
    let stuck = bodies
        .iter()
        .find(|b| b["alert"] == "stuck_queued")
        .unwrap();
    assert_eq!(stuck["dag_id"], "late");
    assert_eq!(stuck["state"], "queued");
    // Nothing else, by either scheduler: no alert twice, no run end (both succeeded and the
    // DAG has no on_success).
    let sent: usize = bodies.iter().filter(|b| b["alert"].is_string()).count();
    assert_eq!(sent, bodies.len(), "{bodies:#?}");
    let mut keys: Vec<String> = bodies
        .iter()
        .map(|b| format!("{} {} {}", b["run_id"], b["alert"], b["task_id"]))
        .collect();
    keys.sort();
    let before = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), before, "an alert posted twice: {bodies:#?}");
    stop_gracefully(a, "scheduler a");
    stop_gracefully(b, "scheduler b");
}
