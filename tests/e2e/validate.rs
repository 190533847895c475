//! `flow dags validate` on what only the operators' keys and flow.toml tell: a param spliced into
//! a query, and `connection:` names flow.toml lacks (a warning unless `--strict`).

use crate::harness::*;

#[test]
fn validate_rejects_a_param_spliced_into_a_query() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag(
        "spliced.yaml",
        "id: spliced\nparams:\n  c: { type: string, default: x }\ntasks:\n  q:\n    operator: sql\n    query: \"SELECT '{{ params.c }}' AS c\"\n",
    );
    let out = env.flow(&["dags", "validate"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spliced.yaml:7:12:") && err.contains("bind it as a parameter"),
        "{err}"
    );
}

#[test]
fn validate_checks_connection_names_against_flow_toml() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.config(&s3_connection("lake", "http://127.0.0.1:9"));
    env.dag(
        "conns.yaml",
        r#"id: conns
tasks:
  put:
    operator: s3_put
    file: a.csv
    to: "s3://b/a.csv"
    connection: laek
  q:
    operator: sql
    sources:
      t: { path: "s3://b/t/", connection: warehouse }
    query: "SELECT 1"
  templated:
    operator: s3_delete
    url: "s3://b/x"
    connection: "{{ params.conn }}"
params:
  conn: { type: string, default: lake }
"#,
    );
    // The contract: a connection flow.toml lacks does not fail validation; it is a warning.
    let out = env.flow(&["dags", "validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let laek =
        "conns.yaml:7:17: connection 'laek' is not defined in flow.toml (did you mean 'lake'?)";
    let warehouse =
        "conns.yaml:11:43: connection 'warehouse' is not defined in flow.toml (defined: lake)";
    for text in [laek, warehouse] {
        assert!(
            err.lines()
                .any(|l| l.starts_with("warning: ") && l.ends_with(text)),
            "{err}"
        );
    }
    // --strict makes them problems.
    let out = env.flow(&["dags", "validate", "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(laek) && !err.contains("warning:"), "{err}");
    assert!(err.contains(warehouse), "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
}
