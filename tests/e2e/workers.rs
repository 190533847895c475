//! Scale-out, first slice (issue 21): `flow scheduler --no-tasks` plans and runs nothing;
//! `flow worker`, started with a home of its own and no DAGs folder (as on another host),
//! claims the tries from the shared database and runs them.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `flow worker` with its own home and a DAGs folder that does not exist.
fn spawn_worker(env: &Env, home: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path("spawned.log"))
        .unwrap();
    env.command(&["worker"])
        .env("FLOW_HOME", home)
        .env("FLOW_DAGS_FOLDER", env.path("no-such-folder"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[test]
fn a_planning_scheduler_and_a_worker_elsewhere_run_a_dag() {
    each_db(|env, db| {
        env.dag(
            "fanout.yaml",
            "id: fanout\ntasks:\n  a: { operator: shell, command: 'echo from-a' }\n  b: { operator: shell, command: 'echo item-$ITEM', env: { ITEM: '{{ item }}' }, for_each: [1, 2, 3], depends_on: [a] }\n",
        );
        let scheduler = env.spawn(&["scheduler", "--no-tasks"]);
        let run_id = env.flow_ok(&["trigger", "fanout"], 0).trim().to_string();
        // The scheduler starts the run and queues its first task, and no process runs it.
        let start = Instant::now();
        loop {
            let run = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
            if run["state"] == "running" && task(&run, "a", None)["state"] == "queued" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{db:?}: {run:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        let run = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
        assert_eq!(
            task(&run, "a", None)["state"],
            "queued",
            "{db:?}: a scheduler with --no-tasks ran a task: {run:#}"
        );

        let worker_home = env.path("worker-home");
        let worker = spawn_worker(&env, &worker_home);
        let run = env.wait_run(&run_id, Duration::from_secs(60));
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        assert_eq!(task(&run, "b", Some(2))["state"], "success", "{run:#}");
        // The tries ran in the worker's process: their logs are in its home, none in the
        // scheduler's.
        let logs = files_under(&worker_home.join("logs"));
        assert!(
            logs.iter().any(|f| f.contains("task_id=a")),
            "{db:?}: no log of a in the worker's home: {logs:?}"
        );
        assert!(
            files_under(&env.home().join("logs")).is_empty(),
            "{db:?}: the scheduler ran a try"
        );
        stop_gracefully(worker, "the worker");
        stop_gracefully(scheduler, "the scheduler");
    });
}

/// SIGTERM drains a worker (ECS stops tasks with SIGTERM, then SIGKILL after 30 s): the try it
/// runs is stopped and put back in the queue without using a retry, the worker exits 0, and
/// another worker runs the task.
#[test]
fn a_stopped_worker_gives_its_try_back_and_another_runs_it() {
    each_db(|env, db| {
        // Long the first time, short once a marker exists: the second worker need not wait.
        let marker = env.path("started-once");
        env.dag(
            "slow.yaml",
            &format!(
                "id: slow\ntasks:\n  nap: {{ operator: shell, retries: 0, command: 'test -e {m} && exit 0; touch {m}; sleep 30' }}\n",
                m = marker.display()
            ),
        );
        let scheduler = env.spawn(&["scheduler", "--no-tasks"]);
        let first = spawn_worker(&env, &env.path("worker-1"));
        let run_id = env.flow_ok(&["trigger", "slow"], 0).trim().to_string();
        let start = Instant::now();
        loop {
            let run = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
            if task(&run, "nap", None)["state"] == "running" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{db:?}: {run:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopped = Instant::now();
        stop_gracefully(first, "the first worker");
        assert!(
            stopped.elapsed() < Duration::from_secs(15),
            "{db:?}: the worker waited for its task instead of draining"
        );
        let run = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
        assert_eq!(
            task(&run, "nap", None)["state"],
            "queued",
            "{db:?}: the interrupted try was not given back: {run:#}"
        );
        let second = spawn_worker(&env, &env.path("worker-2"));
        let run = env.wait_run(&run_id, Duration::from_secs(60));
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        stop_gracefully(second, "the second worker");
        stop_gracefully(scheduler, "the scheduler");
    });
}
