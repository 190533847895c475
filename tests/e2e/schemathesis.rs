//! schemathesis (PyPI) against a real `flow standalone`, with a token of each role: every
//! operation of the served OpenAPI document, fuzzed, must answer without a 5xx, with a status,
//! content type, headers and body its document declares, and never with a secret (a task's
//! secret or any of the tokens) in it (`tests/testbed/st_hooks.py`). SECURITY.md has the long
//! run's figures.

use std::path::Path;
use std::process::Command;

use crate::api_server::{Server, token};
use crate::harness::*;

const DAG: &str = "id: api\nparams:\n  n: { type: integer, default: 1 }\n  s: { type: string, default: x }\ntasks:\n  a:\n    operator: shell\n    env: { TOKEN: \"{{ secrets.API_TOKEN }}\" }\n    command: echo {{ params.s | shell_quote }} {{ params.n }} \"$TOKEN\"\n";

const SECRET: &str = "st-s3cr3t-9d1e";

const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance,no_secret_in_response";

/// The schemathesis CLI that `scripts/testbed.sh` installs; None outside CI without it.
fn schemathesis() -> Option<String> {
    match std::env::var("FLOW_TEST_SCHEMATHESIS") {
        Ok(st) if Path::new(&st).is_file() => Some(st),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "FLOW_TEST_SCHEMATHESIS is not set: CI=true requires schemathesis (scripts/testbed.sh \
                 installs it)"
            );
            eprintln!("note: no schemathesis (run the tests with ./scripts/test.sh); skipping");
            None
        }
    }
}

#[test]
fn the_api_answers_fuzzed_requests_as_its_document_says_for_every_role() {
    let Some(st) = schemathesis() else {
        return;
    };
    each_db(|mut env, db| {
        env.secrets.push(("API_TOKEN".into(), SECRET.into()));
        env.dag("api.yaml", DAG);
        // The per-token budget would turn most of the run into 429s.
        env.config("[api]\nrate_limit_per_minute = 1000000\nrate_limit_burst = 100000\n");
        let viewer = token(&env, "st-viewer", "viewer");
        let operator = token(&env, "st-operator", "operator");
        env.flow_ok(&["run", "api"], 0);
        let server = Server::start(&env, "standalone");
        let admin = std::fs::read_to_string(env.home().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let secrets = [SECRET, &viewer, &operator, &admin].join("\n");
        let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/testbed");
        // The admin last: its stateful phase may revoke the other tokens (never its own).
        for (role, token) in [
            ("viewer", &viewer),
            ("operator", &operator),
            ("admin", &admin),
        ] {
            let out = Command::new(&st)
                .args(["run", &format!("{}/api/v1/openapi.json", server.base)])
                .args(["--header", &format!("Authorization: Bearer {token}")])
                .args(["--checks", CHECKS])
                .args(["--max-examples", "15", "--seed", "20261204", "--no-color"])
                .args(["--request-timeout", "20"])
                .current_dir(env.dir.path())
                .env("PYTHONPATH", &hooks)
                .env("SCHEMATHESIS_HOOKS", "st_hooks")
                .env("FLOW_ST_SECRETS", &secrets)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{db:?}: schemathesis found failures with the {role} token:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("passed"), "{db:?} {role}: {stdout}");
        }
        server.stop();
    });
}
