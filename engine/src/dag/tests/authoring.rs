//! Authoring aids: YAML merge keys and `x-` keys, param rules, and params a schedule needs.

use serde_json::json;

use super::*;

#[test]
fn merge_keys_and_x_keys_build_tasks_from_a_base() {
    let text = "\
id: merged
x-base: &base
  operator: shell
  retries: 3
  timeout: 5m
tasks:
  x-more: &more {retry_delay: 1m}
  a:
    <<: *base
    command: echo a
  b:
    <<: [*base, *more]
    command: echo b
    retries: 0
    depends_on: [a]
";
    let dag = parse(text).unwrap_or_else(|p| panic!("{}", render(&p)));
    assert_eq!(ids_of(&dag), ["a", "b"]);
    let a = dag.task("a").unwrap();
    assert_eq!(a.retry.retries, 3);
    assert_eq!(a.timeout, Some(Duration::from_secs(300)));
    assert_eq!(a.config.get("command"), Some(&json!("echo a")));
    let b = dag.task("b").unwrap();
    assert_eq!(
        b.retry.retries, 0,
        "the task's own key wins over the merged one"
    );
    assert_eq!(b.retry.delay, Duration::from_secs(60));
}

fn ids_of(dag: &Dag) -> Vec<&str> {
    dag.tasks.iter().map(|t| t.id.as_str()).collect()
}

#[test]
fn a_merged_key_is_checked_where_it_is_written() {
    let text = "\
id: merged
x-base: &base
  operator: shell
  retrys: 3
tasks:
  a:
    <<: *base
    command: echo a
";
    assert_eq!(
        problems(text),
        ["4:3: unknown key 'retrys' in task 'a' (did you mean 'retries'?)"]
    );
}

const RULES: &str = "\
id: ruled
params:
  region: { type: string, enum: [eu, us], default: eu }
  rate: { type: number, minimum: 0, maximum: 1, default: 0.5 }
  model: { type: string, pattern: '^[a-z_]+$', default: churn }
tasks:
  t: { operator: shell, command: echo }
";

#[test]
fn param_rules_are_kept_and_checked_on_trigger() {
    let dag = parse(RULES).unwrap_or_else(|p| panic!("{}", render(&p)));
    let region = &dag.params[0];
    assert_eq!(region.rules.one_of, Some(vec![json!("eu"), json!("us")]));
    assert_eq!(dag.params[1].rules.minimum, Some(0.0));
    assert_eq!(dag.params[2].rules.pattern.as_deref(), Some("^[a-z_]+$"));
    let given = |v: serde_json::Value| v.as_object().cloned().unwrap();
    assert!(
        dag.resolve_params(&given(json!({"region": "us", "rate": 1})))
            .is_ok()
    );
    assert_eq!(
        dag.resolve_params(&given(json!({"region": "fr"}))),
        Err(r#"param 'region' must be one of "eu", "us", got "fr""#.to_string())
    );
    assert_eq!(
        dag.resolve_params(&given(json!({"rate": 1.5}))),
        Err("param 'rate' must be at most 1, got 1.5".to_string())
    );
    assert_eq!(
        dag.resolve_params(&given(json!({"model": "x; rm -rf /"}))),
        Err(r#"param 'model' must match the pattern "^[a-z_]+$", got "x; rm -rf /""#.to_string())
    );
}

#[test]
fn bad_param_rules_are_reported_where_written() {
    let text = "\
id: ruled
params:
  a: { type: string, enum: [eu, 3], default: eu }
  b: { type: integer, minimum: 5, maximum: 1, default: 3 }
  c: { type: string, minimum: 1, default: x }
  d: { type: string, pattern: '[a-', default: x }
  e: { type: string, enum: [eu, us], default: fr }
  f: { type: number, maximum: 1, default: 2 }
  g: { type: integer, pattern: '^1$', default: 1 }
tasks:
  t: { operator: shell, command: echo }
";
    let got = problems(text);
    let expect = [
        "3:33: 'enum' of param 'a' lists 3, which is not of type string",
        "4:44: param 'b' has maximum 1 below its minimum 5",
        "4:56: default of param 'b' must be at least 5, got 3",
        "5:31: 'minimum' applies to number and integer params, but param 'c' is of type string",
        "6:31: 'pattern' of param 'd' is not a valid regular expression: unclosed character class",
        "7:47: default of param 'e' must be one of \"eu\", \"us\", got \"fr\"",
        "8:43: default of param 'f' must be at most 1, got 2",
        "9:32: 'pattern' applies to string params, but param 'g' is of type integer",
    ];
    assert_eq!(got, expect);
}

#[test]
fn a_scheduled_dag_needs_a_default_for_every_param() {
    let text = "\
id: nightly
schedule: '@daily'
start_date: 2026-01-01
params:
  model: { type: string }
  rate: 0.1
tasks:
  t: { operator: shell, command: echo }
";
    assert_eq!(
        problems(text),
        [
            "5:3: param 'model' has no default, but the DAG has a schedule: its scheduled runs could \
          never be given one"
        ]
    );
    // Without a schedule, a trigger must give it instead.
    let manual = text.replace("schedule: '@daily'\n", "");
    let dag = parse(&manual).unwrap_or_else(|p| panic!("{}", render(&p)));
    assert!(dag.resolve_params(&serde_json::Map::new()).is_err());
}
