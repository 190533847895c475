//! Authoring aids through the binary: the DAG JSON Schema, YAML merge keys and `x-` keys, and
//! param rules refusing a trigger on both databases.

use serde_json::Value as Json;

use crate::harness::*;

fn shipped_dags() -> Vec<std::path::PathBuf> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../dags");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("dags/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_dag_validates_against_the_printed_schema() {
    let env = Env::new(Db::Sqlite).unwrap();
    let schema: Json = env.flow_json(&["dags", "schema"], 0);
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    jsonschema::meta::validate(&schema).expect("a valid 2020-12 schema");
    let operators = &schema["$defs"]["TaskDoc"]["properties"]["operator"]["enum"];
    for name in ["shell", "sql", "spark", "train", "predict", "experiment"] {
        assert!(
            operators.as_array().unwrap().contains(&Json::from(name)),
            "{operators}"
        );
    }
    let validator = jsonschema::draft202012::new(&schema).expect("compiles");
    let files = shipped_dags();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let doc = flow_engine::yaml::parse(&text, &Default::default())
            .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()))
            .to_json();
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
}

#[test]
fn merge_keys_and_x_keys_run_end_to_end() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "merged.yaml",
        r#"id: merged
x-shell: &shell
  operator: shell
  retries: 1
  env: { GREETING: hello }
tasks:
  a:
    <<: *shell
    command: 'echo "$GREETING a"'
  b:
    <<: *shell
    depends_on: [a]
    command: 'echo "$GREETING b"'
"#,
    );
    env.flow_ok(&["dags", "validate"], 0);
    let run = env.flow_json(&["run", "merged", "--json"], 0);
    assert_eq!(run["state"], "success", "{run:#}");
    let log = env.flow_ok(&["tasks", "logs", run["run_id"].as_str().unwrap(), "b"], 0);
    assert!(log.contains("hello b"), "{log}");
}

const RULED: &str = r#"id: ruled
params:
  region: { type: string, enum: [eu, us], default: eu }
  rate: { type: number, minimum: 0, maximum: 1, default: 0.5 }
tasks:
  t: { operator: shell, command: "echo {{ params.region | shell_quote }} {{ params.rate }}" }
"#;

#[test]
fn param_rules_refuse_a_trigger_on_both_databases() {
    each_db(|env, db| {
        env.dag("ruled.yaml", RULED);
        let out = env.flow(&["trigger", "ruled", "--param", "region=fr"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{db:?}: {err}");
        assert!(
            err.contains(r#"param 'region' must be one of "eu", "us", got "fr""#),
            "{db:?}: {err}"
        );
        let out = env.flow(&["trigger", "ruled", "--param", "rate=2"]);
        assert_eq!(out.status.code(), Some(2), "{db:?}");
        let run = env.flow_json(&["run", "ruled", "--param", "region=us", "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        assert_eq!(run["params"]["region"], "us", "{db:?}: {run:#}");
    });
}

#[test]
fn a_scheduled_dag_without_a_param_default_fails_validation() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "nightly.yaml",
        "id: nightly\nschedule: '@daily'\nstart_date: 2026-01-01\nparams:\n  model: { type: string }\ntasks:\n  t: { operator: shell, command: echo }\n",
    );
    let out = env.flow(&["dags", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nightly.yaml:5:3: param 'model' has no default, but the DAG has a schedule"),
        "{err}"
    );
}

const TESTED: &str = r#"id: tested
params:
  who: { type: string, default: world }
tasks:
  extract:
    operator: shell
    command: 'echo "{\"rows\": 3}" > "$FLOW_OUTPUT"'
  report:
    operator: shell
    depends_on: [extract]
    env: { ROWS: "{{ tasks.extract.output.rows }}", WHO: "{{ params.who }}" }
    command: 'echo "rows=$ROWS who=$WHO ds={{ ds }}"; echo "{\"ok\": true}" > "$FLOW_OUTPUT"'
  each:
    operator: shell
    for_each: [alpha, beta]
    command: 'echo "item={{ item }}"'
  broken:
    operator: shell
    command: 'echo about to fail; exit 3'
"#;

fn runs(env: &Env) -> Vec<Json> {
    let v = env.flow_json(&["runs", "list", "--json"], 0);
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn tasks_test_runs_one_task_with_given_outputs_and_records_nothing() {
    each_db(|env, db| {
        env.dag("tested.yaml", TESTED);
        let out = env.flow(&[
            "tasks",
            "test",
            "tested",
            "report",
            "--output",
            r#"extract={"rows": 7}"#,
            "--param",
            "who=ann",
            "--date",
            "2026-03-01",
        ]);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{db:?}: {stderr}");
        assert!(
            stderr.contains("rows=7 who=ann ds=2026-03-01"),
            "{db:?}: {stderr}"
        );
        let output: Json = serde_json::from_str(&stdout).expect("stdout is the output");
        assert_eq!(output, serde_json::json!({"ok": true}), "{db:?}");
        assert!(runs(&env).is_empty(), "{db:?}: tasks test recorded a run");

        // A failing task: exit 1 and why, still nothing recorded.
        let out = env.flow(&["tasks", "test", "tested", "broken"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{db:?}: {stderr}");
        assert!(stderr.contains("about to fail"), "{db:?}: {stderr}");
        assert!(
            stderr.contains("flow: task 'broken' failed:"),
            "{db:?}: {stderr}"
        );
        assert!(runs(&env).is_empty(), "{db:?}");
    });
}

#[test]
fn tasks_test_reads_upstream_outputs_from_a_past_run() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag("tested.yaml", &TESTED.replace("exit 3", "exit 0"));
    let run = env.flow_json(&["run", "tested", "--json"], 0);
    let run_id = run["run_id"].as_str().unwrap();
    let out = env.flow(&[
        "tasks",
        "test",
        "tested",
        "report",
        "--outputs-from",
        run_id,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("rows=3 who=world"), "{stderr}");
    // --output wins over the past run's.
    let out = env.flow(&[
        "tasks",
        "test",
        "tested",
        "report",
        "--outputs-from",
        run_id,
        "--output",
        "extract={\"rows\": 9}",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("rows=9"));
    assert_eq!(runs(&env).len(), 1, "only the flow run is recorded");
}

#[test]
fn tasks_test_refuses_bad_input_with_exit_2() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag("tested.yaml", TESTED);
    let cases: &[(&[&str], &str)] = &[
        (
            &["tasks", "test", "tested", "nope"],
            "DAG 'tested' has no task 'nope'",
        ),
        (
            &["tasks", "test", "tested", "each"],
            "pick one with --map-index 0..1",
        ),
        (
            &["tasks", "test", "tested", "each", "--map-index", "5"],
            "--map-index 5 is out of range",
        ),
        (
            &["tasks", "test", "tested", "report", "--map-index", "0"],
            "takes no --map-index",
        ),
        (
            &[
                "tasks", "test", "tested", "report", "--param", "who=1", "--param", "nobody=2",
            ],
            "declares no param 'nobody'",
        ),
        (
            &[
                "tasks",
                "test",
                "tested",
                "report",
                "--outputs-from",
                "nope",
            ],
            "no run 'nope'",
        ),
    ];
    for (args, message) in cases {
        let out = env.flow(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
    let out = env.flow(&["tasks", "test", "tested", "each", "--map-index", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("item=beta"), "{stderr}");
}

#[test]
fn tasks_test_record_records_a_run_of_the_one_task() {
    each_db(|env, db| {
        env.dag("tested.yaml", TESTED);
        let out = env.flow(&[
            "tasks",
            "test",
            "tested",
            "report",
            "--output",
            r#"extract={"rows": 5}"#,
            "--date",
            "2026-03-02",
            "--record",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{db:?}: {stderr}");
        assert!(stderr.contains("rows=5 who=world"), "{db:?}: {stderr}");
        let listed = runs(&env);
        assert_eq!(listed.len(), 1, "{db:?}: {listed:#?}");
        let run_id = listed[0]["run_id"].as_str().unwrap().to_string();
        assert!(
            stderr.contains(&format!("flow: recorded run {run_id}")),
            "{db:?}: {stderr}"
        );
        let shown = env.flow_json(&["runs", "show", &run_id, "--json"], 0);
        assert_eq!(shown["state"], "success", "{db:?}: {shown:#}");
        assert_eq!(shown["logical_date"], "2026-03-02T00:00:00Z", "{db:?}");
        let state = |task: &str| {
            shown["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["task_id"] == task)
                .cloned()
                .unwrap_or_else(|| panic!("{db:?}: no task {task} in {shown:#}"))
        };
        let report = state("report");
        assert_eq!(report["state"], "success", "{db:?}: {report:#}");
        assert_eq!(report["tries"], 1, "{db:?}: {report:#}");
        assert_eq!(report["output"], serde_json::json!({"ok": true}), "{db:?}");
        for other in ["extract", "each", "broken"] {
            assert_eq!(state(other)["state"], "skipped", "{db:?}: {other}");
        }
        let log = env.flow(&["tasks", "logs", &run_id, "report"]);
        assert!(
            String::from_utf8_lossy(&log.stdout).contains("rows=5 who=world"),
            "{db:?}: the recorded try's log: {log:?}"
        );

        // A failing task records a failed run; a mapped one is refused.
        let out = env.flow(&["tasks", "test", "tested", "broken", "--record"]);
        assert_eq!(out.status.code(), Some(1), "{db:?}");
        let failed: Vec<Json> = runs(&env)
            .into_iter()
            .filter(|r| r["state"] == "failed")
            .collect();
        assert_eq!(failed.len(), 1, "{db:?}: {failed:#?}");
        let each = &[
            "tasks",
            "test",
            "tested",
            "each",
            "--map-index",
            "0",
            "--record",
        ];
        let out = env.flow(each);
        assert_eq!(out.status.code(), Some(2), "{db:?}: {out:?}");
        assert_eq!(runs(&env).len(), 2, "{db:?}: a refused test recorded a run");
    });
}
