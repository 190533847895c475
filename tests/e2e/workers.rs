//! Scale-out, first slice (issue 21): `flow scheduler --no-tasks` plans and runs nothing;
//! `flow worker`, started with a home of its own and no DAGs folder (as on another host),
//! claims the tries from the shared database and runs them.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `flow worker` with its own home and a DAGs folder that does not exist.
pub(crate) fn spawn_worker(env: &Env, home: &std::path::Path) -> Child {
    spawn_worker_with(env, home, &[], &[])
}

/// [`spawn_worker`] with more variables in its environment.
pub(crate) fn spawn_worker_env(
    env: &Env,
    home: &std::path::Path,
    vars: &[(&'static str, String)],
) -> Child {
    spawn_worker_with(env, home, &[], vars)
}

fn spawn_worker_with(
    env: &Env,
    home: &std::path::Path,
    args: &[&str],
    vars: &[(&'static str, String)],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path("spawned.log"))
        .unwrap();
    let mut argv = vec!["worker"];
    argv.extend_from_slice(args);
    env.command(&argv)
        .env("FLOW_HOME", home)
        .env("FLOW_DAGS_FOLDER", env.path("no-such-folder"))
        .envs(vars.iter().map(|(k, v)| (k, v)))
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
        env.wait_run_until(
            &run_id,
            Duration::from_secs(20),
            &format!("start and queue a ({db:?})"),
            |run| run["state"] == "running" && task(run, "a", None)["state"] == "queued",
        );
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
        env.wait_run_until(
            &run_id,
            Duration::from_secs(30),
            &format!("start nap ({db:?})"),
            |run| task(run, "nap", None)["state"] == "running",
        );
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

/// Which task logs a process's home holds.
fn logged_tasks(home: &std::path::Path) -> Vec<String> {
    let mut tasks: Vec<String> = files_under(&home.join("logs"))
        .iter()
        .filter_map(|f| {
            let at = f.find("task_id=")? + "task_id=".len();
            Some(f[at..].split('/').next()?.to_string())
        })
        .collect();
    tasks.sort();
    tasks.dedup();
    tasks
}

/// A task's `queue:` sends it to the workers of that queue alone (a GPU host, say): a worker
/// of the default queue leaves it queued, a worker started with `--queue gpu` runs it and
/// nothing else.
#[test]
fn a_task_of_a_queue_runs_only_on_a_worker_of_that_queue() {
    each_db(|env, db| {
        env.dag(
            "train.yaml",
            "id: train\ntasks:\n  prep: { operator: shell, command: 'echo prep' }\n  fit: { operator: shell, queue: gpu, command: 'echo fit', depends_on: [prep] }\n  report: { operator: shell, command: 'echo report', depends_on: [fit] }\n",
        );
        let scheduler = env.spawn(&["scheduler", "--no-tasks"]);
        let cpu_home = env.path("worker-cpu");
        let cpu = spawn_worker(&env, &cpu_home);
        let run_id = env.flow_ok(&["trigger", "train"], 0).trim().to_string();
        env.wait_run_until(
            &run_id,
            Duration::from_secs(30),
            &format!("run prep and queue fit ({db:?})"),
            |run| {
                task(run, "prep", None)["state"] == "success"
                    && task(run, "fit", None)["state"] == "queued"
            },
        );
        std::thread::sleep(Duration::from_secs(2));
        let run = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
        assert_eq!(
            task(&run, "fit", None)["state"],
            "queued",
            "{db:?}: a worker of the default queue ran a gpu task: {run:#}"
        );

        let gpu_home = env.path("worker-gpu");
        let gpu = spawn_worker_with(&env, &gpu_home, &["--queue", "gpu"], &[]);
        let run = env.wait_run(&run_id, Duration::from_secs(60));
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        assert_eq!(logged_tasks(&gpu_home), ["fit"], "{db:?}");
        assert_eq!(logged_tasks(&cpu_home), ["prep", "report"], "{db:?}");
        stop_gracefully(gpu, "the gpu worker");
        stop_gracefully(cpu, "the cpu worker");
        stop_gracefully(scheduler, "the scheduler");

        // Alone on its machine, `flow run` (like the all-in-one scheduler) runs every queue.
        let run = env.flow_json(&["run", "train", "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
    });
}

#[test]
fn a_queue_name_a_flag_cannot_say_is_refused() {
    let env = Env::new(Db::Sqlite).unwrap();
    let err = |args: &[&str], code: i32| {
        let out = env.flow(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(code), "flow {args:?}: {stderr}");
        stderr
    };
    let err_worker = err(&["worker", "--queue", "gpu hosts"], 2);
    assert!(err_worker.contains("--queue 'gpu hosts'"), "{err_worker}");
    let both = err(&["scheduler", "--no-tasks", "--queue", "gpu"], 2);
    assert!(both.contains("--no-tasks"), "{both}");
    env.dag(
        "bad.yaml",
        "id: bad\ntasks:\n  a: { operator: shell, queue: 'gpu hosts', command: 'true' }\n",
    );
    let invalid = err(&["dags", "validate"], 1);
    assert!(
        invalid.contains("bad.yaml:3:")
            && invalid.contains("queue 'gpu hosts' is not a valid name"),
        "{invalid}"
    );
}
