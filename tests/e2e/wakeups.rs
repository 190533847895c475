//! Wake-ups carry the news between processes (issue 21, point 8). Every process here reads the
//! database only every two minutes (`poll_interval = "120s"`), so a run that gets through well
//! within that travelled on wake-ups alone: the trigger to the scheduler, its queued tries to
//! the worker, their ends back to the scheduler, and the run's end to `flow trigger --wait` and
//! to an API waiter. The bound below is a proof of the path, not a speed check: the run takes
//! about a second either way, and without wake-ups it takes minutes.

use std::time::{Duration, Instant};

use crate::api_server::{Server, token};
use crate::harness::*;
use crate::workers::spawn_worker;

const SLOW_POLL: &str = "poll_interval = \"120s\"\n";

/// Far below one poll of every process: only wake-ups can have made it in this time.
const WITHOUT_POLLS: Duration = Duration::from_secs(60);

#[test]
fn news_travels_by_wake_up_when_polls_are_minutes_apart() {
    each_db(|env, db| {
        env.config(SLOW_POLL);
        env.dag(
            "chain3.yaml",
            "id: chain3\ntasks:\n  a: { operator: shell, command: 'true' }\n  b: { operator: shell, command: 'true', depends_on: [a] }\n  c: { operator: shell, command: 'true', depends_on: [b] }\n",
        );
        // Its ends of `a` and `b` cannot by themselves start `c` (`settled` wake-ups, which a
        // planner may put off for a moment): the run must still end without a poll.
        env.dag(
            "join.yaml",
            "id: join\ntasks:\n  a: { operator: shell, command: 'true' }\n  b: { operator: shell, command: 'true' }\n  c: { operator: shell, command: 'true', depends_on: [a, b] }\n",
        );
        let scheduler = env.spawn(&["scheduler", "--no-tasks"]);
        let worker_home = env.path("worker-home");
        std::fs::create_dir_all(&worker_home).unwrap();
        std::fs::write(worker_home.join("flow.toml"), SLOW_POLL).unwrap();
        let worker = spawn_worker(&env, &worker_home);
        let server = Server::start(&env, "server");
        let viewer = token(&env, "waiter", "viewer");

        for (round, dag) in ["chain3", "join", "chain3"].into_iter().enumerate() {
            let started = Instant::now();
            let out = env.flow_ok(&["trigger", dag, "--wait"], 0);
            let run_id = out.trim().to_string();
            assert!(
                started.elapsed() < WITHOUT_POLLS,
                "{db:?}: round {round} ({dag}): the run took {:?}, as long as a poll: some news did not \
                 travel by wake-up",
                started.elapsed()
            );
            let run = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
            assert_eq!(run["state"], "success", "{db:?}: {run:#}");
            assert_eq!(task(&run, "c", None)["state"], "success", "{run:#}");
        }

        // An API client waits for a run's end in one request.
        let run_id = env.flow_ok(&["trigger", "chain3"], 0).trim().to_string();
        let started = Instant::now();
        let answer = server.get(&format!("/api/v1/runs/{run_id}?wait=55"), &viewer);
        assert!(
            started.elapsed() < WITHOUT_POLLS,
            "{db:?}: the waiter answered after {:?}",
            started.elapsed()
        );
        let run = answer.ok();
        assert_eq!(
            run["state"], "success",
            "{db:?}: the waiter answered before the end: {run:#}"
        );
        // A run that has ended answers at once; a wait past the limit is refused.
        let again = server
            .get(&format!("/api/v1/runs/{run_id}?wait=55"), &viewer)
            .ok();
        assert_eq!(again["state"], "success");
        let refused = server.get(&format!("/api/v1/runs/{run_id}?wait=56"), &viewer);
        assert_eq!(refused.status, 400, "{:?}", refused.body);

        server.stop();
        stop_gracefully(worker, "the worker");
        stop_gracefully(scheduler, "the scheduler");
    });
}
