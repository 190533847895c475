//! `flow run`: one run in-process, with the whole engine.

use std::time::Duration;

use crate::harness::*;

const PIPELINE: &str = r#"
id: pipeline
params:
  name: { type: string, default: world }
  count: { type: integer, default: 3 }
tasks:
  produce:
    operator: shell
    command: |
      echo hello {{ params.name | shell_quote }} on "{{ ds }} with token {{ secrets.API_TOKEN }}"
      echo "env token: $TOKEN"
      echo '{"items": {{ range(params.count) | list }}, "note": "{{ secrets.API_TOKEN }}"}' > "$FLOW_OUTPUT"
    env: { TOKEN: "{{ secrets.API_TOKEN }}" }
  fan:
    operator: shell
    depends_on: [produce]
    for_each: "{{ tasks.produce.output.items }}"
    command: |
      printf '{"square": %s, "index": %s}' {{ (item * item) | shell_quote }} {{ map_index }} > "$FLOW_OUTPUT"
  total:
    operator: shell
    depends_on: [fan]
    env: { SUM: "{{ tasks.fan.output | sum(attribute='square') }}" }
    command: |
      echo "{\"sum\": $SUM}" > "$FLOW_OUTPUT"
"#;

#[test]
fn run_records_outputs_and_mapping_and_masks_secrets() {
    each_db(|mut env, db| {
        env.secrets
            .push(("API_TOKEN".into(), "s3cr3t-value-42".into()));
        env.dag("pipeline.yaml", PIPELINE);
        let run = env.flow_json(&["run", "pipeline", "--param", "count=4", "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?} {run:#}");
        assert_eq!(run["dag_id"], "pipeline");
        assert_eq!(run["params"]["count"], 4);
        assert_eq!(run["params"]["name"], "world");
        for key in [
            "logical_date",
            "data_interval_start",
            "data_interval_end",
            "started_at",
            "ended_at",
        ] {
            let ts = run[key].as_str().unwrap_or_else(|| panic!("{key} missing"));
            assert!(ts.ends_with('Z'), "{key}={ts}");
        }
        let run_id = run["run_id"].as_str().unwrap();
        assert!(
            run_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:+-".contains(c)),
            "{run_id}"
        );
        let produce = task(&run, "produce", None);
        assert_eq!(produce["tries"], 1);
        assert_eq!(produce["output"]["items"], serde_json::json!([0, 1, 2, 3]));
        assert_eq!(
            produce["output"]["note"], "***",
            "secrets are masked in outputs"
        );
        for i in 0..4 {
            let t = task(&run, "fan", Some(i));
            assert_eq!(t["state"], "success");
            assert_eq!(t["output"]["square"], i * i);
            assert_eq!(t["output"]["index"], i);
        }
        assert!(
            run["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["task_id"] != "fan" || !t["map_index"].is_null()),
            "a mapped task has no parent instance"
        );
        assert_eq!(task(&run, "total", None)["output"]["sum"], 14);

        let log = env.flow_ok(&["tasks", "logs", run_id, "produce"], 0);
        assert!(log.contains("hello world on"), "{log}");
        assert!(log.contains("token ***"), "{log}");
        assert!(log.contains("env token: ***"), "{log}");
        assert!(!log.contains("s3cr3t"), "{log}");
        let log = env.flow_ok(&["tasks", "logs", run_id, "fan", "--map-index", "2"], 0);
        assert!(log.contains("try succeeded"), "{log}");
        // A try that printed nothing and succeeded left no file; its log is told from its
        // record, with the header a file would have started with.
        let logs = env
            .home()
            .join("logs/dag_id=pipeline")
            .join(format!("run_id={run_id}"));
        assert!(
            !logs.join("task_id=fan/map_index=2.attempt=1.log").exists(),
            "a quiet try made a log file"
        );
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(
            lines[0].starts_with(&format!("flow: task fan try 1 of run {run_id} started at ")),
            "{log}"
        );
        assert_eq!(lines[1], "flow: try succeeded");
        // A try that printed made its file, headed the same way.
        let file = std::fs::read_to_string(logs.join("task_id=produce/attempt=1.log")).unwrap();
        assert!(
            file.starts_with(&format!(
                "flow: task produce try 1 of run {run_id} started at "
            )),
            "{file}"
        );
        assert!(file.trim_end().ends_with("flow: try succeeded"), "{file}");
        for (path, bytes) in env.home_files() {
            assert!(
                !contains(&bytes, "s3cr3t-value-42"),
                "secret found unmasked in {}",
                path.display()
            );
        }
    });
}

#[test]
fn failing_task_retries_then_fails_the_run_and_marks_downstream() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "failing.yaml",
        r#"
id: failing
tasks:
  flaky:
    operator: shell
    command: echo "try $FLOW_TRY_NUMBER"; exit 3
    retries: 2
    retry_delay: 100ms
    retry_backoff: exponential
  after:
    operator: shell
    depends_on: [flaky]
    command: echo never
  cleanup:
    operator: shell
    depends_on: [after]
    trigger_rule: all_done
    command: echo cleaning
"#,
    );
    let run = env.flow_json(&["run", "failing", "--json"], 1);
    assert_eq!(run["state"], "failed");
    let flaky = task(&run, "flaky", None);
    assert_eq!(flaky["state"], "failed");
    assert_eq!(flaky["tries"], 3);
    assert_eq!(task(&run, "after", None)["state"], "upstream_failed");
    assert_eq!(task(&run, "cleanup", None)["state"], "success");
    let run_id = run["run_id"].as_str().unwrap();
    let first = env.flow_ok(&["tasks", "logs", run_id, "flaky", "--try", "1"], 0);
    assert!(first.contains("try 1"), "{first}");
    assert!(first.contains("exited with code 3"), "{first}");
    let latest = env.flow_ok(&["tasks", "logs", run_id, "flaky"], 0);
    assert!(latest.contains("try 3"), "{latest}");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let env = Env::new(Db::Sqlite).unwrap();
    let pid_file = env.path("child.pid");
    env.dag(
        "slow.yaml",
        &format!(
            r#"
id: slow
tasks:
  hang:
    operator: shell
    timeout: 700ms
    command: sleep 60 & echo $! > {}; wait
"#,
            pid_file.display()
        ),
    );
    let run = env.flow_json(&["run", "slow", "--json"], 1);
    let hang = task(&run, "hang", None);
    assert_eq!(hang["state"], "failed");
    assert!(
        hang["error"]
            .as_str()
            .unwrap()
            .contains("timed out after 700ms"),
        "{hang}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let start = std::time::Instant::now();
    while pid_alive(pid) && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !pid_alive(pid),
        "the task's child process {pid} survived the timeout"
    );
}

#[test]
fn when_and_trigger_rules_decide_what_runs() {
    let env = Env::new(Db::Sqlite).unwrap();
    let run = env.flow_json(
        &[
            "--dags",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../dags"),
            "run",
            "model_health_check",
            "--param",
            "simulated_auc=0.5",
            "--json",
        ],
        0,
    );
    assert_eq!(task(&run, "alert", None)["state"], "success");
    assert_eq!(task(&run, "healthy", None)["state"], "skipped");
    assert_eq!(task(&run, "record", None)["state"], "success");
}

#[test]
fn failure_webhook_posts_a_slack_message() {
    let (port, receiver) = one_post_receiver();
    let mut env = Env::new(Db::Sqlite).unwrap();
    env.secrets
        .push(("HOOK_PATH".into(), "hook-path-123".into()));
    env.dag(
        "alerting.yaml",
        &format!(
            r#"
id: alerting
on_failure:
  webhook: "http://127.0.0.1:{port}/{{{{ secrets.HOOK_PATH }}}}"
tasks:
  broken:
    operator: shell
    command: exit 1
"#
        ),
    );
    env.flow_ok(&["run", "alerting"], 1);
    let (request_line, body) = receiver.join().unwrap();
    assert!(
        request_line.starts_with("POST /hook-path-123 "),
        "{request_line}"
    );
    let msg: serde_json::Value = serde_json::from_str(&body).unwrap();
    let text = msg["text"].as_str().unwrap();
    assert!(
        text.contains("alerting") && text.contains("broken"),
        "{text}"
    );
    assert_eq!(msg["dag_id"], "alerting");
    assert_eq!(msg["failed_tasks"], serde_json::json!(["broken"]));
    assert!(
        msg["url"].as_str().unwrap().contains("/runs/alerting__"),
        "{msg}"
    );
}

#[test]
fn a_failing_webhook_never_fails_a_run() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "quiet.yaml",
        r#"
id: quiet
on_success: { webhook: "http://127.0.0.1:9/nothing-listens-here" }
tasks:
  ok: { operator: shell, command: "true" }
"#,
    );
    let run = env.flow_json(&["run", "quiet", "--json"], 0);
    assert_eq!(run["state"], "success");
}

/// A finished try hands its slot to the next queued try in the transaction that records its
/// end; the parallelism limit must hold all the same.
#[test]
fn parallelism_holds_while_slots_are_handed_over() {
    each_db(|env, db| {
        env.config("parallelism = 2\n");
        let spans = env.path("spans");
        std::fs::create_dir_all(&spans).unwrap();
        let s = spans.display();
        env.dag(
            "wide.yaml",
            &format!(
                "id: wide\ntasks:\n  items:\n    operator: shell\n    command: echo '[0,1,2,3,4,5,6,7,8,9]' > \"$FLOW_OUTPUT\"\n  each:\n    operator: shell\n    depends_on: [items]\n    for_each: '{{{{ tasks.items.output }}}}'\n    command: |\n      echo \"start $(date +%s%N)\" >> {s}/{{{{ item | shell_quote }}}}\n      sleep 0.1\n      echo \"end $(date +%s%N)\" >> {s}/{{{{ item | shell_quote }}}}\n"
            ),
        );
        let run = env.flow_json(&["run", "wide", "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?} {run:#}");
        let mut events: Vec<(u128, i32)> = Vec::new();
        for i in 0..10 {
            let text = std::fs::read_to_string(spans.join(i.to_string())).unwrap();
            for line in text.lines() {
                let (what, at) = line.split_once(' ').unwrap();
                events.push((at.parse().unwrap(), if what == "start" { 1 } else { -1 }));
            }
        }
        assert_eq!(events.len(), 20);
        // Ends sort before starts at the same instant: a slot freed and reused is not overlap.
        events.sort();
        let (mut now, mut most) = (0, 0);
        for (_, d) in events {
            now += d;
            most = most.max(now);
        }
        assert!(
            most <= 2,
            "{db:?}: {most} tries ran at once with parallelism 2"
        );
        assert_eq!(most, 2, "{db:?}: the two slots were never both used");
    });
}
