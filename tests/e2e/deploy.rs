//! The deployment files (Dockerfile, docker-compose.yml, deploy/aws/flow.yaml, docs/deploy.md),
//! checked as far as a machine without a Docker engine or an AWS account can: `deploy/check.py`
//! (cfn-lint, the compose-spec schema, hadolint, shellcheck, the image's setup scripts run into a
//! scratch root, the structure rules), then every flow command line those files use against this
//! build's binary, and the flow.toml each deployment gives flow.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::FLOW;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// The python of the venv that `scripts/testbed.sh` makes for deploy/check.py, beside cfn-lint;
/// None outside CI without it (CI=true fails instead).
fn python() -> Option<PathBuf> {
    let found = std::env::var("FLOW_TEST_CFN_LINT")
        .ok()
        .map(PathBuf::from)
        .filter(|cfn_lint| cfn_lint.is_file())
        .and_then(|cfn_lint| cfn_lint.parent().map(|bin| bin.join("python")))
        .filter(|python| python.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "FLOW_TEST_CFN_LINT names no cfn-lint: CI=true requires cfn-lint and the other deploy \
             checks' tools (scripts/testbed.sh installs them)"
        );
        eprintln!("note: no cfn-lint venv (run the tests with ./scripts/test.sh); skipping");
    }
    found
}

fn check_py(python: &Path, args: &[&str]) -> Output {
    let out = Command::new(python)
        .arg("deploy/check.py")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "deploy/check.py {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn the_deployment_files_pass_their_checks() {
    let Some(python) = python() else {
        return;
    };
    let out = check_py(&python, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("checks hold"), "{stdout}");
}

/// Every `flow ...` the compose file, the task definitions and docs/deploy.md run: its
/// subcommand exists in this build and lists every flag the line uses.
#[test]
fn every_command_line_of_the_deployment_is_one_this_flow_takes() {
    let Some(python) = python() else {
        return;
    };
    let out = check_py(&python, &["--commands"]);
    let commands: Vec<Vec<String>> = serde_json::from_slice(&out.stdout).unwrap();
    let firsts: Vec<&str> = commands.iter().map(|argv| argv[0].as_str()).collect();
    for role in ["scheduler", "worker", "server", "tokens"] {
        assert!(firsts.contains(&role), "no `flow {role}` in {commands:?}");
    }
    for argv in &commands {
        let words: Vec<&str> = argv
            .iter()
            .map(String::as_str)
            .take_while(|w| !w.starts_with('-'))
            .collect();
        let help = Command::new(FLOW)
            .args(&words)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.status.success(),
            "flow {} --help: {}",
            words.join(" "),
            String::from_utf8_lossy(&help.stderr)
        );
        for flag in argv.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            assert!(
                text.contains(flag),
                "the deployment runs `flow {}`, but `flow {} --help` has no {flag}:\n{text}",
                argv.join(" "),
                words.join(" ")
            );
        }
    }
}

/// The flow.toml of docker-compose.yml and the one the CloudFormation template writes (rendered
/// with sample values) are read by this build: `flow dags validate` of the shipped DAGs under
/// each. A key designed for flow.toml and still being built is noted, not failed, until flow
/// has it (deploy/check.py `PENDING_KEYS`).
#[test]
fn each_deployments_flow_toml_is_one_this_flow_reads() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    check_py(&python, &["--flow-tomls", dir_arg]);
    for name in ["compose", "ecs"] {
        let home = dir.path().join(name);
        std::fs::create_dir_all(&home).unwrap();
        std::fs::copy(
            dir.path().join(format!("{name}.toml")),
            home.join("flow.toml"),
        )
        .unwrap();
        let out = Command::new(FLOW)
            .args(["dags", "validate"])
            .env("FLOW_HOME", &home)
            .env("FLOW_DAGS_FOLDER", root().join("dags"))
            .env(
                "FLOW_DATABASE_URL",
                format!("sqlite://{}", home.join("flow.db").display()),
            )
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "flow dags validate with {name}'s flow.toml:\n{stderr}"
        );
    }
}
