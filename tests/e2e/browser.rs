//! The web pages in a real headless Chromium: `tests/browser/ui.mjs` (playwright-core) against a
//! `flow standalone`. `scripts/test.sh` installs Debian's chromium and the npm package; without
//! them the test is skipped with a note, except under CI=true, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;

use crate::api_server::Server;
use crate::harness::Db;
use crate::pages::{admin_token, page_env};

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Skips (outside CI) or fails (under CI) for a missing tool.
fn missing(what: &str) -> Option<PathBuf> {
    assert!(
        !ci(),
        "{what} is missing, and CI=true requires the browser test; scripts/test.sh installs it"
    );
    eprintln!("note: {what} is missing; skipping the browser test (scripts/test.sh installs it)");
    None
}

fn which(name: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/browser")
}

/// Where the screenshots go: next to the build's other outputs, kept after the test.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(|p| p.join("ui-screenshots"))
        .unwrap_or_else(|| PathBuf::from("target/ui-screenshots"))
}

#[test]
fn pages_in_headless_chromium() {
    let Some(chromium) = which("chromium").or_else(|| missing("chromium (apt: chromium)")) else {
        return;
    };
    let Some(node) = which("node").or_else(|| missing("node")) else {
        return;
    };
    if !browser_dir().join("node_modules/playwright-core").is_dir() {
        missing("tests/browser/node_modules/playwright-core (npm install in tests/browser)");
        return;
    }
    // On both databases: the pages render what each store gives back.
    for db in [Db::Sqlite, Db::Postgres] {
        if let Some(env) = page_env(db) {
            in_chromium(&env, db, &chromium, &node);
        }
    }
}

/// Runs `ui.mjs` against a `flow standalone` on `env`.
fn in_chromium(env: &crate::harness::Env, db: Db, chromium: &Path, node: &Path) {
    let server = Server::start(env, "standalone");
    let shots = screenshot_dir().join(format!("{db:?}").to_lowercase());
    let out = Command::new(node)
        .arg(browser_dir().join("ui.mjs"))
        .current_dir(browser_dir())
        .env("FLOW_URL", &server.base)
        .env("FLOW_TOKEN", admin_token(env))
        .env("FLOW_SCREENSHOTS", &shots)
        .env("CHROMIUM", chromium)
        .env(
            "FLOW_XSS_PAYLOADS",
            crate::pages::XSS_PAYLOADS
                .lines()
                .filter(|l| !l.is_empty())
                .count()
                .to_string(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Json = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("ui.mjs printed no result\nstdout: {stdout}\nstderr: {stderr}"));
    eprintln!("screenshots of the pages: {}", shots.display());
    assert!(
        out.status.success() && result["ok"] == true,
        "{db:?}: the browser test failed: {:#}\nstderr: {stderr}",
        result
    );
    assert!(
        result["checks"].as_array().unwrap().len() >= 20,
        "{result:#}"
    );
    for shot in result["screenshots"].as_array().unwrap() {
        assert!(Path::new(shot.as_str().unwrap()).is_file(), "{shot}");
    }
    server.stop();
}
