//! Command-line contract: exit codes, validation output, listing, pausing.

use crate::harness::*;

#[test]
fn example_dags_validate() {
    let env = Env::new(Db::Sqlite).unwrap();
    let out = env.flow_ok(
        &[
            "dags",
            "validate",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../dags"),
        ],
        0,
    );
    assert!(out.contains("valid"), "{out}");
}

#[test]
fn validate_reports_every_problem_with_its_position() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "broken.yaml",
        "id: broken\ntasks:\n  a:\n    operator: shell\n    command: echo\n    retires: 3\n  b:\n    operator: teleport\n    depends_on: [a, zz]\n",
    );
    env.dag(
        "other.yaml",
        "id: broken\ntasks:\n  x: { operator: shell, command: echo }\n",
    );
    let out = env.flow(&["dags", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let path = env.dags().join("broken.yaml");
    let p = path.display();
    assert!(
        stderr.contains(&format!(
            "{p}:6:5: unknown key 'retires' in task 'a' (did you mean 'retries'?)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{p}:8:15: unknown operator 'teleport'")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{p}:9:21: task 'b' depends on unknown task 'zz'")),
        "{stderr}"
    );
    // broken.yaml has problems, so other.yaml's id is not a duplicate of anything valid.
    assert!(!stderr.contains("duplicate DAG id"), "{stderr}");
}

#[test]
fn bad_input_exits_2_with_one_line() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "p.yaml",
        "id: p\nparams:\n  n: { type: integer, default: 1 }\ntasks:\n  a: { operator: shell, command: echo }\n",
    );
    let cases: &[&[&str]] = &[
        &["run", "nope"],
        &["trigger", "nope"],
        &["run", "p", "--param", "zz=1"],
        &["run", "p", "--param", "n=abc"],
        &["run", "p", "--logical-date", "yesterday"],
        &["runs", "show", "no_such_run"],
        &["tasks", "logs", "no_such_run", "a"],
        &["tasks", "clear", "no_such_run", "a"],
        &["dags", "pause", "nope"],
        &["runs", "list", "--state", "done"],
        &["run", "p", "--no-such-flag"],
    ];
    for args in cases {
        let out = env.flow(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.trim().is_empty(), "{args:?} printed no reason");
    }
    let out = env.flow(&["run", "p", "--param", "zz=1"]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no param 'zz'"), "{stderr}");
}

#[test]
fn dags_list_pause_and_unpause() {
    each_db(|env, _| {
        env.dag(
            "sched.yaml",
            "id: sched\ndescription: daily\nschedule: '@daily'\nstart_date: 2026-01-01\ntags: [a]\ntasks:\n  a: { operator: shell, command: echo }\n",
        );
        env.flow_ok(&["dags", "pause", "sched"], 0);
        let list = env.flow_json(&["dags", "list", "--json"], 0);
        let d = &list.as_array().unwrap()[0];
        assert_eq!(d["dag_id"], "sched");
        assert_eq!(d["paused"], true);
        assert_eq!(d["schedule"], "@daily");
        assert_eq!(d["timezone"], "UTC");
        assert_eq!(d["tags"], serde_json::json!(["a"]));
        assert!(d["next_run_at"].as_str().unwrap().ends_with('Z'));
        assert!(d["last_run"].is_null());
        env.flow_ok(&["dags", "unpause", "sched"], 0);
        let list = env.flow_json(&["dags", "list", "--json"], 0);
        assert_eq!(list[0]["paused"], false);
    });
}

#[test]
fn backfill_creates_each_interval_once() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "daily.yaml",
        "id: daily\nschedule: '@daily'\ntimezone: Europe/Amsterdam\nstart_date: 2026-01-01\ntasks:\n  a: { operator: shell, command: 'echo {{ ds }}' }\n",
    );
    let out = env.flow_ok(
        &[
            "backfill",
            "daily",
            "--from",
            "2026-03-28",
            "--to",
            "2026-03-30",
        ],
        0,
    );
    let ids: Vec<&str> = out.lines().collect();
    assert_eq!(ids.len(), 3, "{out}");
    let again = env.flow(&[
        "backfill",
        "daily",
        "--from",
        "2026-03-28",
        "--to",
        "2026-03-30",
    ]);
    assert_eq!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stdout).trim().is_empty());
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 run(s) created, 3 already existed"));
    let runs = env.flow_json(&["runs", "list", "--dag", "daily", "--json"], 0);
    let mut starts: Vec<(String, String)> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["data_interval_start"].as_str().unwrap().to_string(),
                r["data_interval_end"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    starts.sort();
    // Local midnights in Amsterdam; 2026-03-29 is 23 hours long (clocks go forward).
    assert_eq!(
        starts,
        vec![
            (
                "2026-03-27T23:00:00Z".to_string(),
                "2026-03-28T23:00:00Z".to_string()
            ),
            (
                "2026-03-28T23:00:00Z".to_string(),
                "2026-03-29T22:00:00Z".to_string()
            ),
            (
                "2026-03-29T22:00:00Z".to_string(),
                "2026-03-30T22:00:00Z".to_string()
            ),
        ]
    );
}

#[test]
fn tokens_are_printed_once_and_stored_as_hashes() {
    each_db(|env, db| {
        let token = env.flow_ok(&["tokens", "create", "ci-bot", "--role", "operator"], 0);
        let token = token.trim();
        assert!(token.starts_with("flow_") && token.len() > 40, "{token}");
        let again = env.flow(&["tokens", "create", "ci-bot"]);
        assert_eq!(
            again.status.code(),
            Some(2),
            "a duplicate name is an input error"
        );
        let bad = env.flow(&["tokens", "create", "x", "--role", "root"]);
        assert_eq!(bad.status.code(), Some(2));
        if db == Db::Sqlite {
            for (path, bytes) in env.home_files() {
                assert!(
                    !contains(&bytes, token),
                    "the token is stored in {}",
                    path.display()
                );
            }
        }
    });
}

#[test]
fn dags_list_mentions_files_that_failed_to_load() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "ok.yaml",
        "id: ok\ntasks:\n  a: { operator: shell, command: 'true' }\n",
    );
    env.dag("bad.yaml", "id: bad\ntasks:\n  a: { operator: nope }\n");
    let out = env.flow(&["dags", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "the valid DAG is listed: {list}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 DAG file(s) failed to load"), "{stderr}");
}

/// `flow-bench bench` on its smallest workloads: every row is there with figures that parse, and the
/// machine's own costs head the table. Times are reported, never asserted.
#[test]
fn bench_reports_each_workload_and_the_machine_costs() {
    let env = Env::new(Db::Sqlite).unwrap();
    let pg = Env::new(Db::Postgres);
    let mut args = vec!["bench", "--only", "chain40,dags1000", "--repeats", "1"];
    if let Some(pg) = &pg {
        args.extend(["--postgres", pg.db_url.as_str()]);
    }
    let out = env
        .command_of(FLOW_BENCH, &args)
        .env("TMPDIR", env.path(""))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |text: &str| -> f64 {
        text.trim()
            .trim_matches('*')
            .parse()
            .unwrap_or_else(|e| panic!("not a number ({e}): {text:?} in\n{stdout}"))
    };
    let machine = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# machine: /bin/sh -c true starts and ends in "))
        .unwrap_or_else(|| panic!("no machine line:\n{stdout}"));
    assert!(
        number(machine.split(" ms").next().unwrap()) > 0.0,
        "{machine}"
    );
    let mut databases = vec!["sqlite"];
    if pg.is_some() {
        databases.push("postgres");
    }
    for db in databases {
        let cells = |workload: &str| -> Vec<String> {
            stdout
                .lines()
                .map(|l| {
                    l.split('|')
                        .map(|c| c.trim().to_string())
                        .collect::<Vec<_>>()
                })
                .find(|c| c.len() > 3 && c[1].starts_with(workload) && c[2] == db)
                .unwrap_or_else(|| panic!("no {workload} row for {db}:\n{stdout}"))
        };
        let chain = cells("chain40");
        // "", workload, database, tasks, wall, per task, latency, CPU per task, "".
        assert_eq!(chain.len(), 9, "{chain:?}");
        assert_eq!(chain[3], "40");
        let wall: Vec<f64> = chain[4].split('/').map(number).collect();
        assert_eq!(wall.len(), 3, "{chain:?}");
        assert!(
            wall[0] > 0.0 && wall[0] <= wall[1] && wall[1] <= wall[2],
            "{chain:?}"
        );
        let latency: Vec<f64> = chain[6].split('/').map(number).collect();
        assert!(latency[0] >= 0.0 && latency[0] <= latency[1], "{chain:?}");
        assert!(number(&chain[7]) > 0.0, "flow's CPU per task: {chain:?}");
        let dags = cells("dags1000");
        assert_eq!(dags[3], "1000 DAGs", "{dags:?}");
        assert!(dags[6].starts_with("peak RSS "), "{dags:?}");
    }
}

/// `flow --help` lists the product's commands and nothing else: the benchmarks and the demo-data
/// generator are `flow-bench`'s.
#[test]
fn flow_help_lists_only_product_commands() {
    let out = std::process::Command::new(FLOW)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .split("Commands:")
        .nth(1)
        .and_then(|rest| rest.split("Options:").next())
        .unwrap_or_else(|| panic!("no command list in:\n{help}"))
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        [
            "dags",
            "run",
            "trigger",
            "backfill",
            "runs",
            "tasks",
            "tokens",
            "models",
            "experiments",
            "scheduler",
            "worker",
            "db",
            "server",
            "standalone",
            "help"
        ],
        "{help}"
    );
    let bench = std::process::Command::new(FLOW_BENCH)
        .arg("--help")
        .output()
        .unwrap();
    let bench_help = String::from_utf8_lossy(&bench.stdout);
    for c in ["bench", "bench-ui", "bench-heavy", "bench-ml", "demo-data"] {
        assert!(
            bench_help.contains(c),
            "flow-bench has no {c}:\n{bench_help}"
        );
    }
}
