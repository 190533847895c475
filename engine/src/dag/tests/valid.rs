//! Valid DAG files: what parsing keeps of them (schedules, params, policies, versions), the
//! folder loader, and the problems only a whole file shows.

use super::*;

fn valid(file: &str) -> Dag {
    let rel = format!("{VALID}/{file}");
    parse_file(&rel).unwrap_or_else(|p| panic!("{rel}:\n{}", render(&p)))
}

fn ids(dag: &Dag) -> Vec<&str> {
    dag.tasks.iter().map(|t| t.id.as_str()).collect()
}

fn assert_topological(dag: &Dag) {
    for (i, t) in dag.tasks.iter().enumerate() {
        for d in &t.depends_on {
            let at = dag.task_index(d).unwrap_or_else(|| panic!("unknown {d}"));
            assert!(
                at < i,
                "{} comes before its upstream {d}: {:?}",
                t.id,
                ids(dag)
            );
        }
        assert_eq!(dag.task(&t.id).map(|x| &x.id), Some(&t.id));
    }
}

#[test]
fn the_contract_example_parses_into_the_documented_model() {
    let dag = valid("contract_example.yaml");
    assert_topological(&dag);
    assert_eq!(dag.id, "build_training_set");
    assert_eq!(dag.id_pos, Pos::new(1, 5));
    assert_eq!(
        dag.description.as_deref(),
        Some("Join events and profiles into the daily training set")
    );
    assert_eq!(dag.schedule_text.as_deref(), Some("0 3 * * *"));
    assert!(dag.schedule.is_some());
    assert_eq!(dag.timezone, chrono_tz::Europe::Amsterdam);
    // Dates are midnight in the DAG's zone: CET is UTC+1 on both days.
    assert_eq!(
        dag.start_date,
        Some(Utc.with_ymd_and_hms(2025, 12, 31, 23, 0, 0).unwrap())
    );
    assert_eq!(
        dag.end_date,
        Some(Utc.with_ymd_and_hms(2026, 12, 30, 23, 0, 0).unwrap())
    );
    assert!(!dag.catchup);
    assert!(!dag.paused);
    assert_eq!(dag.max_active_runs, 1);
    assert_eq!(dag.tags, ["ml", "training"]);
    assert_eq!(
        dag.on_failure,
        Some(Notification {
            webhook: "{{ secrets.SLACK_WEBHOOK_URL }}".to_string()
        })
    );
    assert_eq!(dag.on_success, None);
    assert!(dag.timetable().is_some());

    let params: Vec<(&str, ParamType, Option<&serde_json::Value>)> = dag
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.default.as_ref()))
        .collect();
    assert_eq!(
        params,
        [
            (
                "model",
                ParamType::String,
                Some(&json!("email_unsubscribe"))
            ),
            ("sample_rate", ParamType::Number, Some(&json!(0.1))),
            ("full_refresh", ParamType::Boolean, Some(&json!(false))),
            ("regions", ParamType::Array, Some(&json!(["eu", "us"]))),
        ]
    );

    assert_eq!(ids(&dag), ["extract", "transform", "report"]);
    let from_defaults = RetryPolicy {
        retries: 2,
        delay: Duration::from_secs(30),
        backoff: Backoff::Exponential,
        max_delay: Some(Duration::from_secs(600)),
    };
    let extract = dag.task("extract").unwrap();
    assert_eq!(extract.operator, "shell");
    assert_eq!(extract.retry, from_defaults);
    assert_eq!(extract.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(extract.trigger_rule, TriggerRule::AllSuccess);
    assert_eq!(extract.pool, DEFAULT_POOL);
    assert_eq!(extract.queue, DEFAULT_QUEUE);
    assert_eq!(extract.priority, 0);
    assert_eq!(
        serde_json::Value::Object(extract.config.clone()),
        json!({"command": "echo extracting {{ ds }} for {{ params.model | shell_quote }}"})
    );

    // A task's own keys override the defaults one by one.
    let transform = dag.task("transform").unwrap();
    assert_eq!(transform.depends_on, ["extract"]);
    assert_eq!(
        transform.retry,
        RetryPolicy {
            retries: 0,
            ..from_defaults.clone()
        }
    );
    assert_eq!(transform.timeout, Some(Duration::from_secs(300)));
    assert_eq!(
        transform.config["command"],
        json!(r#"./scripts/transform.sh "{{ data_interval_start }}" "{{ data_interval_end }}""#)
    );

    let report = dag.task("report").unwrap();
    assert_eq!(report.trigger_rule, TriggerRule::AllDone);
    assert_eq!(report.retry, from_defaults);
}

#[test]
fn a_file_using_every_key_parses_into_the_model() {
    let dag = valid("full_featured.yaml");
    // Written in reverse; the dependencies force one order.
    assert_topological(&dag);
    assert_eq!(
        ids(&dag),
        ["extract", "prepare", "train", "report", "cleanup"]
    );
    assert_eq!(dag.timezone, chrono_tz::America::New_York);
    assert_eq!(
        dag.start_date,
        Some(Utc.with_ymd_and_hms(2026, 3, 1, 6, 30, 0).unwrap())
    );
    // EST is UTC-5 on the last day of the year.
    assert_eq!(
        dag.end_date,
        Some(Utc.with_ymd_and_hms(2026, 12, 31, 5, 0, 0).unwrap())
    );
    assert!(dag.catchup);
    assert!(dag.paused);
    assert_eq!(dag.max_active_runs, 3);
    assert_eq!(
        dag.on_success,
        Some(Notification {
            webhook: "https://example.com/hooks/done".to_string()
        })
    );
    let kinds: Vec<(&str, ParamType)> = dag
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("model", ParamType::String),
            ("sample_rate", ParamType::Number),
            ("epochs", ParamType::Integer),
            ("full_refresh", ParamType::Boolean),
            ("regions", ParamType::Array),
            ("limits", ParamType::Object),
        ]
    );
    assert_eq!(
        dag.params[0].description.as_deref(),
        Some("which model to train")
    );
    assert_eq!(dag.params[5].default, Some(json!({"rows": 1000})));
    assert_eq!(
        dag.resolve_params(&serde_json::Map::new()).unwrap()["epochs"],
        json!(4)
    );

    let extract = dag.task("extract").unwrap();
    assert_eq!(
        extract.for_each,
        Some(ForEach::Items(vec![
            json!("eu"),
            json!("us"),
            json!("apac")
        ]))
    );
    assert_eq!(extract.pool, "gpu");
    assert_eq!(extract.queue, "gpu-hosts");
    assert_eq!(extract.priority, 5);

    let prepare = dag.task("prepare").unwrap();
    // A single id is shorthand for a one-element list.
    assert_eq!(prepare.depends_on, ["extract"]);
    assert_eq!(
        prepare.when.as_deref(),
        Some("{{ not params.full_refresh }}")
    );
    assert_eq!(
        prepare.retry,
        RetryPolicy {
            retries: 3,
            delay: Duration::from_secs(20),
            backoff: Backoff::Exponential,
            max_delay: Some(Duration::from_secs(300)),
        }
    );
    assert_eq!(prepare.timeout, Some(Duration::from_secs(7200)));

    let train = dag.task("train").unwrap();
    assert_eq!(
        train.for_each,
        Some(ForEach::Template(
            "{{ tasks.prepare.output.regions }}".to_string()
        ))
    );
    assert_eq!(
        train.retry,
        RetryPolicy {
            retries: 1,
            delay: Duration::from_secs(60),
            backoff: Backoff::Fixed,
            max_delay: Some(Duration::from_secs(3600)),
        }
    );
    assert_eq!(train.timeout, Some(Duration::from_secs(1800)));
    assert_eq!(train.pool, "default");
    assert_eq!(train.queue, "default");
    assert_eq!(train.priority, 10);
    // Only the operator's keys are config; the common keys are in the model.
    let mut config_keys: Vec<&str> = train.config.keys().map(String::as_str).collect();
    config_keys.sort();
    assert_eq!(config_keys, ["command", "cwd", "env"]);
    assert_eq!(
        train.config["env"],
        json!({"MODEL": "{{ params.model }}", "TOKEN": "{{ secrets.API_TOKEN }}"})
    );

    let cleanup = dag.task("cleanup").unwrap();
    assert_eq!(cleanup.trigger_rule, TriggerRule::Always);
    assert_eq!(cleanup.when.as_deref(), Some("false"));
    assert_eq!(cleanup.depends_on, ["extract", "report"]);
    assert_eq!(
        dag.all_downstream("extract"),
        ["prepare", "train", "report", "cleanup"]
    );
    assert_eq!(
        dag.ancestors("report").into_iter().collect::<Vec<_>>(),
        ["extract", "prepare", "train"]
    );
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let dag = valid("minimal.yaml");
    assert_eq!(ids(&dag), ["hello"]);
    assert!(dag.schedule.is_none() && dag.schedule_text.is_none());
    assert!(dag.timetable().is_none());
    assert_eq!(dag.timezone, chrono_tz::UTC);
    assert_eq!(dag.max_active_runs, DEFAULT_MAX_ACTIVE_RUNS);
    assert_eq!(dag.max_active_runs, 16);
    assert!(!dag.catchup && !dag.paused);
    assert!(dag.params.is_empty() && dag.tags.is_empty());
    let hello = dag.task("hello").unwrap();
    assert_eq!(
        hello.retry,
        RetryPolicy {
            retries: 0,
            delay: Duration::from_secs(10),
            backoff: Backoff::Fixed,
            max_delay: None,
        }
    );
    assert_eq!(hello.timeout, None);
    assert_eq!(hello.trigger_rule, TriggerRule::AllSuccess);
    assert_eq!(hello.pool, "default");
    assert_eq!(hello.priority, 0);
    assert_eq!(hello.when, None);
    assert_eq!(hello.for_each, None);
}

#[test]
fn an_interval_schedule_and_shorthand_params() {
    let dag = valid("interval_schedule.yml");
    assert!(matches!(
        dag.schedule,
        Some(crate::schedule::Schedule::Every(d)) if d == Duration::from_secs(900)
    ));
    assert_eq!(
        dag.start_date,
        Some(Utc.with_ymd_and_hms(2025, 12, 31, 23, 0, 0).unwrap())
    );
    let params: Vec<(&str, ParamType, Option<serde_json::Value>)> = dag
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.kind, p.default.clone()))
        .collect();
    assert_eq!(
        params,
        [
            ("threshold", ParamType::Number, Some(json!(0.5))),
            ("label", ParamType::String, Some(json!("nightly"))),
        ]
    );
}

#[test]
fn the_same_text_has_the_same_version() {
    let a = valid("minimal.yaml");
    let b = valid("minimal.yaml");
    assert_eq!(a.version, b.version);
    assert_ne!(a.version, valid("contract_example.yaml").version);
}

#[test]
fn a_duplicate_dag_id_across_files_is_reported_on_the_second_file() {
    let first = PathBuf::from("tests/fixtures/duplicate_id/first.yaml");
    let second = PathBuf::from("tests/fixtures/duplicate_id/second.yaml");
    let loaded = load_files(
        &[first.clone(), second.clone()],
        &TestCatalog,
        &ParseOptions::default(),
    );
    assert_eq!(loaded.dags.len(), 1);
    assert_eq!(loaded.dags[0].path, first);
    let problems: Vec<String> = loaded.problems().map(ToString::to_string).collect();
    assert_eq!(
        problems,
        [
            "tests/fixtures/duplicate_id/second.yaml:3:5: duplicate DAG id 'shared_name': \
         already defined in tests/fixtures/duplicate_id/first.yaml"
        ]
    );
    assert_eq!(loaded.errors.keys().collect::<Vec<_>>(), [&second]);
}

#[test]
fn loading_the_fixture_folders() {
    let opts = ParseOptions::default();
    let valid = load_folder(Path::new(VALID), &TestCatalog, &opts).unwrap();
    assert!(
        valid.errors.is_empty(),
        "{}",
        valid
            .problems()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let mut dag_ids: Vec<&str> = valid.dags.iter().map(|d| d.id.as_str()).collect();
    dag_ids.sort();
    // `.yml` counts as well as `.yaml`.
    assert_eq!(
        dag_ids,
        [
            "build_training_set",
            "full_featured",
            "interval_schedule",
            "minimal"
        ]
    );

    let invalid = load_folder(Path::new(INVALID), &TestCatalog, &opts).unwrap();
    assert!(invalid.dags.is_empty());
    assert_eq!(invalid.errors.len(), 25);
}

fn inline(yaml: &str) -> Vec<Problem> {
    match parse_dag(
        Path::new("inline.yaml"),
        yaml,
        &TestCatalog,
        &ParseOptions::default(),
    ) {
        Ok(dag) => panic!("accepted as DAG '{}':\n{yaml}", dag.id),
        Err(problems) => problems,
    }
}

// The contract asks for every problem at once: a missing id or a cycle must not hide the
// problems in templates.
#[test]
fn template_problems_are_reported_even_without_an_id() {
    let p = inline("tasks:\n  a:\n    operator: shell\n    command: \"echo {{ params.nope }}\"\n");
    assert_eq!(p.len(), 2, "{}", render(&p));
    has(&p, 1, 1, &["missing required key 'id'"]);
    has(&p, 4, 14, &["unknown param 'nope'"]);
}

#[test]
fn template_problems_are_reported_even_with_a_cycle() {
    let p = inline(
        "id: x\ntasks:\n  a:\n    operator: shell\n    depends_on: [b]\n    command: \"echo {{ params.nope }}\"\n  b:\n    operator: shell\n    depends_on: [a]\n    command: echo\n",
    );
    assert_eq!(p.len(), 2, "{}", render(&p));
    has(&p, 3, 3, &["a -> b -> a"]);
    has(&p, 6, 14, &["unknown param 'nope'"]);
}

// A task or param that is declared but broken is reported once, where it is broken; reading it
// elsewhere is not a second, misleading "unknown" problem.
#[test]
fn reading_a_broken_task_or_param_is_not_reported_as_unknown() {
    let p = inline(
        "id: x\nparams:\n  mode: { type: strng }\ntasks:\n  a:\n    operator: teleport\n    command: echo\n  b:\n    operator: shell\n    depends_on: [a]\n    command: \"echo {{ tasks.a.output | shell_quote }} {{ params.mode | shell_quote }}\"\n",
    );
    assert_eq!(p.len(), 2, "{}", render(&p));
    has(&p, 3, 17, &["unknown param type 'strng'"]);
    has(&p, 6, 15, &["unknown operator 'teleport'"]);
}

// A try reads from the store only the outputs its keys' templates name, so the 10,000 tries of
// a map whose command reads nothing cost no reads at all.
#[test]
fn output_reads_name_what_templates_read() {
    let cfg = |v: serde_json::Value| v.as_object().unwrap().clone();
    assert_eq!(
        OutputReads::of(&cfg(json!({"command": "true", "env": {"A": "{{ ds }}"}}))),
        OutputReads::Nothing
    );
    let some = OutputReads::of(&cfg(json!({
        "command": "echo {{ tasks.a.output.rows }}",
        "env": {"B": ["{{ tasks.b.output }}", "{{ params.x }}"]},
    })));
    assert_eq!(
        some,
        OutputReads::Tasks(["a", "b"].into_iter().map(String::from).collect())
    );
    let upstream: BTreeSet<&str> = ["a", "c"].into_iter().collect();
    assert_eq!(some.among(&upstream), BTreeSet::from(["a"]));
    for whole in [
        "{{ tasks['a'].output }}",
        "{% for t in tasks %}{{ t }}{% endfor %}",
        "{{ broken",
    ] {
        let reads = OutputReads::of(&cfg(json!({ "command": whole })));
        assert_eq!(reads, OutputReads::AllUpstream, "{whole}");
        assert_eq!(reads.among(&upstream), upstream);
    }
    assert!(OutputReads::Nothing.among(&upstream).is_empty());
}
