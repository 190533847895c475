//! The schema against the parser: the same keys, and the same verdict on the test DAGs.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value as Json;

use super::dag_schema;
use crate::dag::parse::{DAG_KEYS, PARAM_KEYS, POLICY_KEYS, TASK_KEYS};
use crate::keys::{Catalog, OperatorKeys};
use crate::yaml::{self, Limits};

struct TwoOperators;

impl Catalog for TwoOperators {
    fn keys(&self, operator: &str) -> Option<OperatorKeys> {
        let (required, optional): (&'static [&'static str], &'static [&'static str]) =
            match operator {
                "shell" => (&["command"], &["env", "cwd"]),
                "sql" => (&["query"], &["sources", "bind", "output"]),
                _ => return None,
            };
        Some(OperatorKeys {
            required,
            optional,
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        })
    }
    fn names(&self) -> Vec<&str> {
        vec!["shell", "sql"]
    }
}

fn schema() -> Json {
    dag_schema(&TwoOperators)
}

fn keys(schema: &Json) -> BTreeSet<String> {
    schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("no properties in {schema:#}"))
        .keys()
        .cloned()
        .collect()
}

fn set(lists: &[&[&str]]) -> BTreeSet<String> {
    lists
        .iter()
        .flat_map(|l| l.iter().map(|s| s.to_string()))
        .collect()
}

fn errors(text: &str) -> Vec<String> {
    let instance = yaml::parse(text, &Limits::default())
        .unwrap_or_else(|e| panic!("{e:?}"))
        .to_json();
    let validator = jsonschema::draft202012::new(&schema()).expect("the schema compiles");
    validator
        .iter_errors(&instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_schema_names_exactly_the_keys_the_parser_takes() {
    let s = schema();
    assert_eq!(keys(&s), set(&[DAG_KEYS]));
    let defs = &s["$defs"];
    assert_eq!(keys(&defs["TaskDoc"]), set(&[TASK_KEYS, POLICY_KEYS]));
    assert_eq!(keys(&defs["DefaultsDoc"]), set(&[POLICY_KEYS]));
    assert_eq!(keys(&defs["ParamSpec"]), set(&[PARAM_KEYS]));
}

#[test]
fn the_schema_is_draft_2020_12_with_enums_and_descriptions() {
    let s = schema();
    assert_eq!(s["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::meta::validate(&s).expect("a valid 2020-12 schema");
    let text = s.to_string();
    for rule in crate::dag::TriggerRule::ALL.iter().map(|(_, n)| *n) {
        assert!(
            text.contains(&format!("\"{rule}\"")),
            "trigger rule {rule} missing"
        );
    }
    assert_eq!(
        s["$defs"]["TaskDoc"]["properties"]["operator"]["enum"],
        serde_json::json!(["shell", "sql"])
    );
    assert!(
        s["properties"]["catchup"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("missed interval")),
        "{:#}",
        s["properties"]["catchup"]
    );
}

#[test]
fn every_valid_fixture_validates_and_bad_keys_do_not() {
    let dir = Path::new("tests/fixtures/valid");
    for entry in std::fs::read_dir(dir).expect("fixtures") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(errors(&text), Vec::<String>::new(), "{}", path.display());
    }
    let unknown =
        errors("id: a\ntasks:\n  t:\n    operator: shell\n    command: x\n    comand: y\n");
    assert!(unknown.iter().any(|e| e.contains("comand")), "{unknown:?}");
    let missing = errors("id: a\ntasks:\n  t:\n    operator: sql\n");
    assert!(missing.iter().any(|e| e.contains("query")), "{missing:?}");
    let top = errors("id: a\nschedul: '@daily'\ntasks:\n  t: {operator: shell, command: x}\n");
    assert!(top.iter().any(|e| e.contains("schedul")), "{top:?}");
    let rule = errors("id: a\ntasks:\n  t: {operator: shell, command: x, trigger_rule: most}\n");
    assert_eq!(rule.len(), 1, "{rule:?}");
}

#[test]
fn anchors_under_x_keys_and_merges_validate() {
    let text = "\
id: merged
x-task: &task
  operator: shell
  retries: 2
tasks:
  x-note: anything
  a:
    <<: *task
    command: echo a
  b:
    <<: *task
    command: echo b
    depends_on: [a]
";
    assert_eq!(errors(text), Vec::<String>::new());
}
