//! Test DAGs for unit tests of the pure logic around DAGs (plans, alerts): `shell` as the only
//! operator, without the shell-quoting checks, so a test writes its tasks plainly.

use std::path::Path;

use super::{Dag, ParseOptions, parse_dag};
use crate::keys::{Catalog, OperatorKeys};

struct ShellOnly;

impl Catalog for ShellOnly {
    fn keys(&self, operator: &str) -> Option<OperatorKeys> {
        (operator == "shell").then_some(OperatorKeys {
            required: &["command"],
            optional: &["env", "cwd"],
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        })
    }
    fn names(&self) -> Vec<&str> {
        vec!["shell"]
    }
}

/// The DAG `yaml` describes; panics with its problems when it does not parse.
pub(crate) fn dag(yaml: &str) -> Dag {
    parse_dag(
        Path::new("test.yaml"),
        yaml,
        &ShellOnly,
        &ParseOptions::default(),
    )
    .unwrap_or_else(|problems| panic!("test DAG does not parse: {problems:#?}\n{yaml}"))
}
