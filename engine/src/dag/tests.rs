//! Validation of DAG files against the contract, driven by the fixtures under
//! `tests/fixtures/`: each invalid file breaks one rule (or, in `several_problems`, several) and
//! its rendered problems are pinned by a snapshot; the facts the contract promises (position,
//! quoted name, hint) are asserted in code as well, so a snapshot accepted carelessly cannot
//! hide a regression in them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::load::{load_files, load_folder};
use super::*;
use crate::keys::{Catalog, OperatorKeys};

struct TestCatalog;

impl Catalog for TestCatalog {
    fn keys(&self, operator: &str) -> Option<OperatorKeys> {
        match operator {
            "shell" => Some(OperatorKeys {
                required: &["command"],
                optional: &["env", "cwd"],
                code: &[],
                shell: &["command"],
                url: &[],
                program: &[],
            }),
            "sql" => Some(OperatorKeys {
                required: &["query"],
                optional: &["sources", "bind", "output"],
                code: &["query"],
                shell: &[],
                url: &[],
                program: &[],
            }),
            _ => None,
        }
    }
    fn names(&self) -> Vec<&str> {
        vec!["shell", "sql"]
    }
}

// Relative to the engine crate (cargo runs tests there), so that the paths inside the
// snapshots do not depend on the machine.
const INVALID: &str = "tests/fixtures/invalid";
const VALID: &str = "tests/fixtures/valid";

fn parse_file(rel: &str) -> Result<Dag, Vec<Problem>> {
    let source = std::fs::read_to_string(rel).unwrap_or_else(|e| panic!("{rel}: {e}"));
    parse_dag(
        Path::new(rel),
        &source,
        &TestCatalog,
        &ParseOptions::default(),
    )
}

/// A DAG file's text parsed as `inline.yaml`, for tests that write their DAG in place.
fn parse(text: &str) -> Result<Dag, Vec<Problem>> {
    parse_dag(
        Path::new("inline.yaml"),
        text,
        &TestCatalog,
        &ParseOptions::default(),
    )
}

/// Its problems as `LINE:COL: message`, none when it parses.
fn problems(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => Vec::new(),
        Err(p) => p
            .iter()
            .map(|p| format!("{}: {}", p.pos, p.message))
            .collect(),
    }
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Parses `invalid/NAME.yaml`, snapshots its problems and returns them.
fn invalid(name: &str) -> Vec<Problem> {
    let rel = format!("{INVALID}/{name}.yaml");
    let problems = match parse_file(&rel) {
        Ok(dag) => panic!("{rel} was accepted as DAG '{}'", dag.id),
        Err(problems) => problems,
    };
    assert!(!problems.is_empty(), "{rel}: rejected without a problem");
    for p in &problems {
        assert_eq!(p.path, rel, "{p}");
    }
    insta::assert_snapshot!(name, render(&problems));
    problems
}

/// The only problem, which must be at `line:col` and contain every one of `parts`.
fn only(problems: &[Problem], line: usize, col: usize, parts: &[&str]) {
    assert_eq!(problems.len(), 1, "{}", render(problems));
    has(problems, line, col, parts);
}

/// Some problem is at `line:col` and contains every one of `parts`.
fn has(problems: &[Problem], line: usize, col: usize, parts: &[&str]) {
    let found = problems.iter().any(|p| {
        (p.pos.line, p.pos.col) == (line, col) && parts.iter().all(|s| p.message.contains(s))
    });
    assert!(
        found,
        "no problem at {line}:{col} containing {parts:?} in:\n{}",
        render(problems)
    );
}

#[test]
fn yaml_syntax() {
    let p = invalid("yaml_syntax");
    assert_eq!(p.len(), 1, "{}", render(&p));
    assert_eq!(p[0].pos.line, 5, "{}", p[0]);
}

#[test]
fn unknown_key() {
    only(
        &invalid("unknown_key"),
        6,
        5,
        &["unknown key 'retires'", "did you mean 'retries'"],
    );
}

#[test]
fn missing_id() {
    only(&invalid("missing_id"), 1, 1, &["missing required key 'id'"]);
}

#[test]
fn missing_operator() {
    only(
        &invalid("missing_operator"),
        3,
        3,
        &["'extract'", "missing required key 'operator'"],
    );
}

#[test]
fn duplicate_key() {
    let p = invalid("duplicate_key");
    assert_eq!(p.len(), 2, "{}", render(&p));
    has(&p, 6, 5, &["duplicate key 'command'", "line 5"]);
    has(&p, 7, 3, &["duplicate key 'extract'", "line 3"]);
}

#[test]
fn unknown_operator() {
    only(
        &invalid("unknown_operator"),
        4,
        15,
        &["unknown operator 'teleport'"],
    );
}

#[test]
fn unknown_dependency() {
    only(
        &invalid("unknown_dependency"),
        8,
        18,
        &["unknown task 'extrct'", "did you mean 'extract'"],
    );
}

#[test]
fn cycle() {
    only(&invalid("cycle"), 3, 3, &["a -> b -> c -> a"]);
}

#[test]
fn bad_cron() {
    only(&invalid("bad_cron"), 2, 11, &["'61 * * * *'"]);
}

#[test]
fn bad_duration() {
    only(
        &invalid("bad_duration"),
        3,
        16,
        &["bad duration '5 minutes'"],
    );
}

#[test]
fn bad_timezone() {
    only(
        &invalid("bad_timezone"),
        3,
        11,
        &[
            "unknown timezone 'Europe/Amsterdm'",
            "did you mean 'Europe/Amsterdam'",
        ],
    );
}

#[test]
fn bad_date() {
    only(&invalid("bad_date"), 3, 13, &["bad date '2026-13-01'"]);
}

#[test]
fn bad_trigger_rule() {
    only(
        &invalid("bad_trigger_rule"),
        9,
        19,
        &[
            "unknown trigger rule 'all_sucess'",
            "did you mean 'all_success'",
        ],
    );
}

#[test]
fn param_wrong_type() {
    only(
        &invalid("param_wrong_type"),
        3,
        41,
        &["param 'sample_rate'", "number", "high"],
    );
}

#[test]
fn template_syntax() {
    only(
        &invalid("template_syntax"),
        5,
        14,
        &["template error in 'command' of task 'extract'"],
    );
}

#[test]
fn unknown_param_in_template() {
    only(
        &invalid("unknown_param_in_template"),
        7,
        14,
        &["unknown param 'modle'", "did you mean 'model'"],
    );
}

#[test]
fn param_spliced_into_shell() {
    // The contract's own example line: a string param spliced into a command is refused, with
    // env: as the way out; a typed integer param and flow's own `ds` may stay.
    let p = invalid("param_spliced_into_shell");
    assert_eq!(p.len(), 2, "{}", render(&p));
    has(
        &p,
        8,
        14,
        &[
            "params.model would reach the shell unquoted",
            "did you mean to pass it in env:?",
            "env: { MODEL: \"{{ params.model }}\" }",
            "{{ params.model | shell_quote }}",
        ],
    );
    // A block scalar's position is its first line; the message counts from there.
    has(
        &p,
        12,
        7,
        &[
            "(line 2 of the command)",
            "inside \"...\" quotes",
            "outside the quotes",
            "env: { MODEL: \"{{ params.model }}\" }",
        ],
    );
}

#[test]
fn shell_paths_and_items() {
    // A written item that is not one plain word, a branch that leaves a quote open before a
    // quoted value, and a list glued to other text: each refused where it is written.
    let p = invalid("shell_paths_and_items");
    assert_eq!(p.len(), 3, "{}", render(&p));
    has(&p, 10, 14, &["item would reach the shell unquoted"]);
    has(
        &p,
        13,
        14,
        &["inside '...' quotes", "shell_quote does not protect"],
    );
    has(
        &p,
        16,
        14,
        &["glued to other text", "params.files is a list", "join(',')"],
    );
}

#[test]
fn param_spliced_into_sql() {
    // `{{ ds }}` is flow's own value and may stay; the param must be bound.
    only(
        &invalid("param_spliced_into_sql"),
        8,
        12,
        &[
            "'params.country' would be spliced",
            "bind: { country:",
            "$country",
        ],
    );
}

#[test]
fn unknown_task_in_template() {
    only(
        &invalid("unknown_task_in_template"),
        9,
        14,
        &["unknown task 'extrct'", "did you mean 'extract'"],
    );
}

#[test]
fn output_not_upstream() {
    only(
        &invalid("output_not_upstream"),
        8,
        14,
        &["output of task 'extract'", "not upstream of 'transform'"],
    );
}

#[test]
fn item_outside_for_each() {
    only(
        &invalid("item_outside_for_each"),
        5,
        14,
        &["'item'", "for_each"],
    );
}

#[test]
fn schedule_without_start_date() {
    only(
        &invalid("schedule_without_start_date"),
        2,
        11,
        &["'start_date'"],
    );
}

#[test]
fn billion_laughs() {
    let p = invalid("billion_laughs");
    assert_eq!(p.len(), 1, "{}", render(&p));
    assert!(p[0].message.contains("alias expansion"), "{}", p[0]);
}

#[test]
fn several_problems() {
    let p = invalid("several_problems");
    assert!(p.len() >= 3, "{}", render(&p));
    has(&p, 2, 11, &["unknown timezone 'Mars/Olympus_Mons'"]);
    has(&p, 4, 16, &["bad duration 'soon'"]);
    has(&p, 7, 15, &["unknown operator 'teleport'"]);
    has(&p, 11, 27, &["unknown task 'load'"]);
    has(&p, 13, 19, &["unknown trigger rule 'sometimes'"]);
    let mut sorted = p.clone();
    sorted.sort_by_key(|p| p.pos);
    assert_eq!(p, sorted, "problems are reported in file order");
}

/// Every invalid fixture is covered by a test above, and every problem points inside its file.
#[test]
fn every_invalid_fixture_is_checked_and_points_into_its_file() {
    const CHECKED: &[&str] = &[
        "bad_cron",
        "bad_date",
        "bad_duration",
        "bad_timezone",
        "bad_trigger_rule",
        "billion_laughs",
        "cycle",
        "duplicate_key",
        "item_outside_for_each",
        "missing_id",
        "missing_operator",
        "output_not_upstream",
        "param_spliced_into_shell",
        "param_spliced_into_sql",
        "param_wrong_type",
        "schedule_without_start_date",
        "several_problems",
        "shell_paths_and_items",
        "template_syntax",
        "unknown_dependency",
        "unknown_key",
        "unknown_operator",
        "unknown_param_in_template",
        "unknown_task_in_template",
        "yaml_syntax",
    ];
    let mut on_disk: Vec<String> = std::fs::read_dir(INVALID)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let expected: Vec<String> = CHECKED.iter().map(|n| format!("{n}.yaml")).collect();
    assert_eq!(on_disk, expected);

    for name in CHECKED {
        let rel = format!("{INVALID}/{name}.yaml");
        let source = std::fs::read_to_string(&rel).unwrap();
        let lines: Vec<&str> = source.lines().collect();
        for p in parse_file(&rel).unwrap_err() {
            assert!(p.pos.line >= 1 && p.pos.col >= 1, "{p}");
            let line = lines
                .get(p.pos.line - 1)
                .unwrap_or_else(|| panic!("{p}: past the end of the file"));
            assert!(
                p.pos.col <= line.chars().count() + 1,
                "{p}: past the end of line {:?}",
                line
            );
        }
    }
}

/// The valid fixtures, the folder loader, and what validation keeps of a valid DAG.
mod valid;

/// YAML merge keys, `x-` keys and param rules.
mod authoring;

/// Data-aware scheduling: produces, schedule on datasets.
mod datasets;
