//! DAG versions (issue 23): a run shows the version it started on, and that version's YAML stays
//! readable (API and page) after the file changed.

use crate::api_server::{Server, token};
use crate::harness::*;

#[test]
fn a_run_shows_its_version_and_the_version_keeps_its_yaml() {
    each_db(|env, db| {
        let v1 = "id: versioned\ntasks:\n  t: { operator: shell, command: echo one }\n";
        env.dag("versioned.yaml", v1);
        let first = env.flow_json(&["run", "versioned", "--json"], 0);
        env.dag(
            "versioned.yaml",
            "id: versioned\ntasks:\n  t: { operator: shell, command: echo two }\n",
        );
        let second = env.flow_json(&["run", "versioned", "--json"], 0);
        let (h1, h2) = (
            first["dag_version"].as_str().expect("a version"),
            second["dag_version"].as_str().expect("a version"),
        );
        assert_ne!(h1, h2, "{db:?}: an edit is a new version");
        assert!(
            first["dag_version_seen_at"].is_string(),
            "{db:?}: {first:#}"
        );
        let listed = env.flow_json(&["runs", "list", "--json"], 0);
        assert!(listed[0]["dag_version"].is_string(), "{db:?}: {listed:#}");

        let viewer = token(&env, "looker", "viewer");
        let server = Server::start(&env, "server");
        let old = server
            .get(&format!("/api/v1/dags/versioned/versions/{h1}"), &viewer)
            .ok();
        assert_eq!(old["source"], v1, "{db:?}: {old:#}");
        assert_eq!(old["version"], h1);
        server
            .get("/api/v1/dags/versioned/versions/nope", &viewer)
            .error(404, "not_found");
        let page = |path: &str| {
            ureq::get(format!("{}{path}", server.base))
                .header("Authorization", format!("Bearer {viewer}"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap()
        };
        let run_id = first["run_id"].as_str().unwrap().replace('+', "%2B");
        let run_page = page(&format!("/runs/{run_id}"));
        let href = format!("/dags/versioned/versions/{h1}");
        assert!(
            run_page.contains(&format!("href=\"{href}\"")),
            "{db:?}: {run_page}"
        );
        let version_page = page(&href);
        assert!(version_page.contains("echo one"), "{db:?}: {version_page}");
    });
}
