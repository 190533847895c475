//! The scheduler daemon: triggered runs, scheduled runs, clears, clean shutdown and crash recovery.

use std::time::{Duration, Instant};

use crate::harness::*;

#[test]
fn daemon_runs_triggered_runs_and_clears() {
    each_db(|env, db| {
        env.dag(
            "chain.yaml",
            "id: chain\ntasks:\n  a: { operator: shell, command: 'echo a' }\n  b: { operator: shell, command: 'echo b', depends_on: [a] }\n  c: { operator: shell, command: 'echo c', depends_on: [b] }\n",
        );
        let scheduler = env.spawn(&["scheduler"]);
        let run = env.flow_json(&["trigger", "chain", "--wait", "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?}");
        let run_id = run["run_id"].as_str().unwrap().to_string();
        // Without --wait: the run id alone on stdout.
        let out = env.flow_ok(&["trigger", "chain"], 0);
        assert!(
            out.trim().starts_with("chain__") && out.trim().lines().count() == 1,
            "{out}"
        );
        env.wait_run(out.trim(), Duration::from_secs(30));

        env.flow_ok(&["tasks", "clear", &run_id, "b", "--downstream"], 0);
        let run = env.wait_run(&run_id, Duration::from_secs(30));
        assert_eq!(run["state"], "success");
        assert_eq!(task(&run, "a", None)["tries"], 1, "a was not cleared");
        assert_eq!(task(&run, "b", None)["tries"], 2);
        assert_eq!(task(&run, "c", None)["tries"], 2);
        stop_gracefully(scheduler, "the scheduler");
    });
}

#[test]
fn daemon_creates_scheduled_runs_and_respects_pause() {
    let env = Env::new(Db::Sqlite).unwrap();
    // A schedule every second, started long ago, without catchup: exactly the latest interval.
    env.dag(
        "ticker.yaml",
        "id: ticker\nschedule: '* * * * * *'\nstart_date: 2026-01-01\nmax_active_runs: 1\ntasks:\n  a: { operator: shell, command: 'echo {{ data_interval_start }}' }\n",
    );
    env.flow_ok(&["dags", "pause", "ticker"], 0);
    let scheduler = env.spawn(&["scheduler"]);
    std::thread::sleep(Duration::from_millis(2500));
    let runs = env.flow_json(&["runs", "list", "--dag", "ticker", "--json"], 0);
    assert_eq!(
        runs.as_array().unwrap().len(),
        0,
        "a paused DAG got runs: {runs:#}"
    );
    env.flow_ok(&["dags", "unpause", "ticker"], 0);
    let runs = env.poll_runs(
        &["--dag", "ticker", "--state", "success"],
        Duration::from_secs(20),
        |runs| runs.len() >= 2,
    );
    stop_gracefully(scheduler, "the scheduler");
    assert!(runs.len() >= 2, "expected scheduled runs: {runs:#?}");
    for r in runs {
        assert_eq!(r["run_type"], "scheduled");
        let start =
            chrono::DateTime::parse_from_rfc3339(r["data_interval_start"].as_str().unwrap())
                .unwrap();
        let end =
            chrono::DateTime::parse_from_rfc3339(r["data_interval_end"].as_str().unwrap()).unwrap();
        assert_eq!((end - start).num_seconds(), 1, "{r}");
        assert_eq!(r["logical_date"], r["data_interval_start"]);
    }
    let all = env.flow_json(&["runs", "list", "--dag", "ticker", "--json"], 0);
    let mut dates: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["logical_date"].as_str().unwrap())
        .collect();
    let n = dates.len();
    dates.sort();
    dates.dedup();
    assert_eq!(dates.len(), n, "two runs for one interval");
}

#[test]
fn kill_9_loses_nothing_and_runs_nothing_twice() {
    each_db(|env, db| {
        env.config("lease_timeout = \"2s\"\n");
        let marker = env.path("markers");
        std::fs::create_dir_all(&marker).unwrap();
        let m = marker.display();
        env.dag(
            "crash.yaml",
            &format!(
                r#"
id: crash
tasks:
  first:
    operator: shell
    command: echo ran >> {m}/first
  second:
    operator: shell
    depends_on: [first]
    retries: 1
    retry_delay: 100ms
    command: |
      echo "$FLOW_TRY_NUMBER" >> {m}/second
      if [ "$FLOW_TRY_NUMBER" = 1 ]; then sleep 60 & echo $! > {m}/orphan; wait; fi
  third:
    operator: shell
    depends_on: [second]
    command: echo ran >> {m}/third
"#
            ),
        );
        let mut scheduler = env.spawn(&["scheduler"]);
        let run_id = env.flow_ok(&["trigger", "crash"], 0).trim().to_string();
        wait_for_file(
            &marker.join("orphan"),
            Duration::from_secs(30),
            "{db:?}: second never started",
        );
        kill_9(&mut scheduler);
        let orphan = read_pid(&marker.join("orphan"));
        let run = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
        assert_eq!(run["state"], "running", "{db:?}: {run:#}");
        assert_eq!(task(&run, "second", None)["state"], "running");
        // The scheduler writes a try's pid to the database without waiting for the commit; its
        // pid journal had it first. On PostgreSQL, forget the database's copy, so that the
        // restart must find the orphan through the journal (on SQLite it uses the database's).
        if db == Db::Postgres {
            env.psql("UPDATE task_instances SET pid = NULL WHERE task_id = 'second'")
                .unwrap();
        }

        let restarted = env.spawn(&["scheduler"]);
        let run = env.wait_run(&run_id, Duration::from_secs(60));
        stop_gracefully(restarted, "the scheduler");
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        assert_eq!(task(&run, "first", None)["tries"], 1);
        assert_eq!(task(&run, "second", None)["tries"], 2);
        assert_eq!(
            std::fs::read_to_string(marker.join("first")).unwrap(),
            "ran\n",
            "first ran twice"
        );
        assert_eq!(
            std::fs::read_to_string(marker.join("second")).unwrap(),
            "1\n2\n"
        );
        assert_eq!(
            std::fs::read_to_string(marker.join("third")).unwrap(),
            "ran\n"
        );
        assert!(
            !pid_alive(orphan),
            "{db:?}: the orphaned try's process {orphan} was not stopped"
        );
        let log = env.flow_ok(&["tasks", "logs", &run_id, "second", "--try", "1"], 0);
        assert!(log.contains("try 1"), "{log}");
    });
}

#[test]
fn backfill_runs_oldest_first_within_max_active_runs() {
    let env = Env::new(Db::Sqlite).unwrap();
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    env.dag(
        "nightly.yaml",
        &format!(
            "id: nightly\nschedule: '@daily'\nstart_date: 2026-01-01\nmax_active_runs: 1\ntasks:\n  work:\n    operator: shell\n    command: |\n      echo \"start {{{{ ds }}}} $(date +%s%N)\" >> {m}/log\n      sleep 0.3\n      echo \"end {{{{ ds }}}} $(date +%s%N)\" >> {m}/log\n",
            m = marks.display()
        ),
    );
    // The DAG is paused so that the daemon creates no scheduled run of its own (start_date is in
    // the past); backfill runs wait for an unpause like any queued run.
    env.flow_ok(&["dags", "pause", "nightly"], 0);
    let out = env.flow_ok(
        &[
            "backfill",
            "nightly",
            "--from",
            "2026-02-01",
            "--to",
            "2026-02-04",
        ],
        0,
    );
    assert_eq!(out.lines().count(), 4, "{out}");
    let scheduler = env.spawn(&["scheduler"]);
    env.flow_ok(&["dags", "unpause", "nightly"], 0);
    let backfilled =
        |runs: &[serde_json::Value]| runs.iter().filter(|r| r["run_type"] == "backfill").count();
    let runs = env.poll_runs(
        &["--dag", "nightly", "--state", "success"],
        Duration::from_secs(60),
        |runs| backfilled(runs) == 4,
    );
    assert_eq!(backfilled(&runs), 4, "backfill did not finish");
    stop_gracefully(scheduler, "the scheduler");
    let log = std::fs::read_to_string(marks.join("log")).unwrap();
    let events: Vec<(String, String)> = log
        .lines()
        .map(|l| {
            let mut p = l.split_whitespace();
            (p.next().unwrap().to_string(), p.next().unwrap().to_string())
        })
        .collect();
    let backfill: Vec<&(String, String)> = events
        .iter()
        .filter(|(_, d)| d.starts_with("2026-02"))
        .collect();
    let expected: Vec<(String, String)> = ["01", "02", "03", "04"]
        .iter()
        .flat_map(|d| {
            [
                ("start".to_string(), format!("2026-02-{d}")),
                ("end".to_string(), format!("2026-02-{d}")),
            ]
        })
        .collect();
    assert_eq!(
        backfill.into_iter().cloned().collect::<Vec<_>>(),
        expected,
        "runs overlapped or ran out of order:\n{log}"
    );
}

#[test]
fn a_pool_of_one_slot_runs_one_task_at_a_time_highest_priority_first() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.config("[pools]\nsolo = 1\n");
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    let mut yaml =
        String::from("id: pooled\ntasks:\n  gate: { operator: shell, command: 'true' }\n");
    for (i, prio) in [(1, 1), (2, 5), (3, 3)] {
        yaml.push_str(&format!(
            "  t{i}:\n    operator: shell\n    pool: solo\n    priority: {prio}\n    depends_on: [gate]\n    command: |\n      echo \"start t{i}\" >> {m}/log\n      sleep 0.2\n      echo \"end t{i}\" >> {m}/log\n"
        ));
    }
    env.dag("pooled.yaml", &yaml);
    let run = env.flow_json(&["run", "pooled", "--json"], 0);
    assert_eq!(run["state"], "success");
    let log = std::fs::read_to_string(marks.join("log")).unwrap();
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        [
            "start t2", "end t2", "start t3", "end t3", "start t1", "end t1"
        ],
        "{log}"
    );
}

#[test]
fn an_unconfigured_pool_fails_the_task_with_a_clear_message() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "nopool.yaml",
        "id: nopool\ntasks:\n  a: { operator: shell, command: 'true', pool: gpu }\n",
    );
    let run = env.flow_json(&["run", "nopool", "--json"], 1);
    let a = task(&run, "a", None);
    assert_eq!(a["state"], "failed");
    assert!(
        a["error"]
            .as_str()
            .unwrap()
            .contains("pool 'gpu' is not configured"),
        "{a}"
    );
}

#[test]
fn the_daemon_picks_up_new_files_and_a_run_keeps_its_version() {
    let env = Env::new(Db::Sqlite).unwrap();
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    env.dag("broken.yaml", "id: broken\ntasks: [\n");
    let scheduler = env.spawn(&["scheduler"]);
    std::thread::sleep(Duration::from_millis(700));
    // A new file while the daemon runs: no restart needed.
    env.dag(
        "live.yaml",
        &format!("id: live\ntasks:\n  a:\n    operator: shell\n    command: |\n      echo v1 >> {m}/a\n      sleep 1\n  b:\n    operator: shell\n    depends_on: [a]\n    command: echo v1 >> {m}/b\n"),
    );
    std::thread::sleep(Duration::from_millis(700));
    let run_id = env.flow_ok(&["trigger", "live"], 0).trim().to_string();
    wait_for_file(&marks.join("a"), Duration::from_secs(20), "a never started");
    // Edit the file while the run is in flight: the run keeps the version it started with.
    env.dag(
        "live.yaml",
        &format!("id: live\ntasks:\n  a:\n    operator: shell\n    command: echo v2 >> {m}/a\n  b:\n    operator: shell\n    depends_on: [a]\n    command: echo v2 >> {m}/b\n"),
    );
    let run = env.wait_run(&run_id, Duration::from_secs(30));
    assert_eq!(run["state"], "success");
    assert_eq!(std::fs::read_to_string(marks.join("b")).unwrap(), "v1\n");
    let second = env.flow_json(&["trigger", "live", "--wait", "--json"], 0);
    assert_eq!(second["state"], "success");
    stop_gracefully(scheduler, "the scheduler");
    assert_eq!(
        std::fs::read_to_string(marks.join("b")).unwrap(),
        "v1\nv2\n"
    );
}

#[test]
fn clearing_a_running_task_stops_its_process_and_runs_it_again() {
    let env = Env::new(Db::Sqlite).unwrap();
    let marks = env.path("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    env.dag(
        "long.yaml",
        &format!(
            "id: long\ntasks:\n  work:\n    operator: shell\n    command: |\n      echo \"$FLOW_TRY_NUMBER\" >> {m}/tries\n      if [ \"$FLOW_TRY_NUMBER\" = 1 ]; then sleep 60 & echo $! > {m}/pid; wait; fi\n"
        ),
    );
    let scheduler = env.spawn(&["scheduler"]);
    let run_id = env.flow_ok(&["trigger", "long"], 0).trim().to_string();
    wait_for_file(
        &marks.join("pid"),
        Duration::from_secs(30),
        "work never started",
    );
    let pid: i32 = std::fs::read_to_string(marks.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    env.flow_ok(&["tasks", "clear", &run_id, "work"], 0);
    let run = env.wait_run(&run_id, Duration::from_secs(30));
    let start = Instant::now();
    while pid_alive(pid) && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_gracefully(scheduler, "the scheduler");
    assert_eq!(run["state"], "success", "{run:#}");
    assert_eq!(task(&run, "work", None)["tries"], 2);
    assert_eq!(
        std::fs::read_to_string(marks.join("tries")).unwrap(),
        "1\n2\n"
    );
    assert!(
        !pid_alive(pid),
        "the cleared try's process {pid} is still running"
    );
}

#[test]
fn catchup_creates_every_missed_interval_oldest_first() {
    let env = Env::new(Db::Sqlite).unwrap();
    // Started 6 seconds ago, every 2 seconds: three intervals have ended by now.
    let start = (chrono::Utc::now() - chrono::Duration::seconds(6))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    env.dag(
        "catchup.yaml",
        &format!(
            "id: catchup\nschedule: every 2s\nstart_date: \"{start}\"\ncatchup: true\nmax_active_runs: 1\ntasks:\n  a: {{ operator: shell, command: 'echo {{{{ data_interval_start }}}}' }}\n"
        ),
    );
    let scheduler = env.spawn(&["scheduler"]);
    let mut runs = env.poll_runs(
        &["--dag", "catchup", "--state", "success"],
        Duration::from_secs(30),
        |runs| runs.len() >= 3,
    );
    stop_gracefully(scheduler, "the scheduler");
    assert!(runs.len() >= 3, "{runs:#?}");
    runs.sort_by_key(|r| r["logical_date"].as_str().unwrap().to_string());
    let first =
        chrono::DateTime::parse_from_rfc3339(runs[0]["logical_date"].as_str().unwrap()).unwrap();
    assert_eq!(
        first,
        chrono::DateTime::parse_from_rfc3339(&start).unwrap(),
        "the first interval starts at start_date"
    );
    for pair in runs.windows(2) {
        let a = chrono::DateTime::parse_from_rfc3339(pair[0]["logical_date"].as_str().unwrap())
            .unwrap();
        let b = chrono::DateTime::parse_from_rfc3339(pair[1]["logical_date"].as_str().unwrap())
            .unwrap();
        assert_eq!((b - a).num_seconds(), 2, "no interval skipped or doubled");
        // max_active_runs 1: the older run ended before the newer one started.
        let ended =
            chrono::DateTime::parse_from_rfc3339(pair[0]["ended_at"].as_str().unwrap()).unwrap();
        let next_started =
            chrono::DateTime::parse_from_rfc3339(pair[1]["started_at"].as_str().unwrap()).unwrap();
        assert!(ended <= next_started, "runs overlapped: {pair:#?}");
    }
}

#[test]
fn flow_toml_notifications_webhook_is_the_default_on_failure() {
    let (port, receiver) = one_post_receiver();
    let env = Env::new(Db::Sqlite).unwrap();
    env.config(&format!("base_url = \"https://flow.example\"\n[notifications]\nwebhook = \"http://127.0.0.1:{port}/slack\"\n"));
    env.dag(
        "fails.yaml",
        "id: fails\ntasks:\n  boom: { operator: shell, command: 'exit 7' }\n",
    );
    env.flow_ok(&["run", "fails"], 1);
    let (_, body) = receiver.join().unwrap();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["dag_id"], "fails");
    assert!(
        body["url"]
            .as_str()
            .unwrap()
            .starts_with("https://flow.example/runs/fails__"),
        "{body}"
    );
    assert!(body["text"].as_str().unwrap().contains("boom"), "{body}");
}
