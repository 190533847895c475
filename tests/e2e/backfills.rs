//! Backfills as objects (issue 23) on both databases: a sliding window of runs, params, dry
//! runs, reverse order, rerun of existing runs, `--wait` over existing runs, and cancel.

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::*;

const DAILY: &str = "id: daily\nschedule: '@daily'\nstart_date: 2025-01-01\nmax_active_runs: 2\nparams:\n  n: { type: integer, default: 1 }\ntasks:\n  t: { operator: shell, command: 'echo {{ ds }} {{ params.n }}; sleep 0.2' }\n";

fn backfills(env: &Env) -> Vec<Json> {
    let v = env.flow_json(&["backfill", "list", "--json"], 0);
    v.as_array().cloned().unwrap_or_default()
}

fn runs_between(env: &Env, from: &str, to: &str) -> Vec<Json> {
    let v = env.flow_json(
        &[
            "runs", "list", "--dag", "daily", "--limit", "1000", "--json",
        ],
        0,
    );
    v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| {
            let d = r["logical_date"].as_str().unwrap_or_default();
            d >= from && d <= to
        })
        .collect()
}

#[test]
fn a_backfill_creates_its_runs_in_a_window_and_finishes() {
    each_db(|env, db| {
        env.dag("daily.yaml", DAILY);
        let dry = env.flow_ok(
            &[
                "backfill",
                "daily",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-10",
                "--dry-run",
            ],
            0,
        );
        assert_eq!(dry.lines().count(), 10, "{db:?}: {dry}");
        assert!(runs_between(&env, "2026-01-01", "2026-01-11").is_empty());

        let out = env.flow_ok(
            &[
                "backfill",
                "daily",
                "--from",
                "2026-01-01",
                "--to",
                "2026-01-10",
                "--param",
                "n=5",
                "--max-active-runs",
                "2",
            ],
            0,
        );
        assert_eq!(out.lines().count(), 2, "{db:?}: the first window: {out}");
        let b = backfills(&env)[0].clone();
        assert_eq!(b["state"], "running", "{db:?}: {b:#}");
        let id = b["id"].as_str().unwrap().to_string();

        let scheduler = env.spawn(&["scheduler"]);
        let begin = Instant::now();
        loop {
            let b = backfills(&env)
                .into_iter()
                .find(|b| b["id"] == id.as_str())
                .unwrap();
            let active =
                b["runs"]["queued"].as_i64().unwrap() + b["runs"]["running"].as_i64().unwrap();
            assert!(
                active <= 2,
                "{db:?}: more than max_active_runs at once: {b:#}"
            );
            if b["state"] == "done" {
                assert_eq!(b["runs"]["success"], 10, "{db:?}: {b:#}");
                break;
            }
            assert!(begin.elapsed() < Duration::from_secs(120), "{db:?}: {b:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let runs = runs_between(&env, "2026-01-01", "2026-01-11");
        assert_eq!(runs.len(), 10, "{db:?}");
        assert!(
            runs.iter()
                .all(|r| r["params"]["n"] == 5 && r["run_type"] == "backfill")
        );

        // Existing runs: --rerun none reports them (--wait follows them), --rerun all runs them again.
        let out = env.flow(&[
            "backfill",
            "daily",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "--wait",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{db:?}: {err}");
        assert!(
            err.contains("0 run(s) created, 2 already existed"),
            "{db:?}: {err}"
        );
        let out = env.flow(&[
            "backfill",
            "daily",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "--rerun",
            "all",
            "--wait",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{db:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let again = runs_between(&env, "2026-01-01", "2026-01-02T23");
        for r in &again {
            let shown = env.flow_json(
                &["runs", "show", r["run_id"].as_str().unwrap(), "--json"],
                0,
            );
            assert_eq!(task(&shown, "t", None)["tries"], 2, "{db:?}: {shown:#}");
        }
        stop_gracefully(scheduler, "scheduler");

        // Newest first, one at a time; then cancelled: the queued run fails, no more are made.
        let out = env.flow_ok(
            &[
                "backfill",
                "daily",
                "--from",
                "2026-02-01",
                "--to",
                "2026-02-05",
                "--reverse",
                "--max-active-runs",
                "1",
            ],
            0,
        );
        assert!(out.contains("2026-02-05"), "{db:?}: {out}");
        let id = backfills(&env)[0]["id"].as_str().unwrap().to_string();
        env.flow_ok(&["backfill", "cancel", &id], 0);
        let b = backfills(&env)
            .into_iter()
            .find(|b| b["id"] == id.as_str())
            .unwrap();
        assert_eq!(b["state"], "cancelled", "{db:?}: {b:#}");
        assert_eq!(b["runs"]["failed"], 1, "{db:?}: {b:#}");
        let scheduler = env.spawn(&["scheduler"]);
        std::thread::sleep(Duration::from_secs(2));
        stop_gracefully(scheduler, "scheduler");
        assert_eq!(
            runs_between(&env, "2026-02-01", "2026-02-06").len(),
            1,
            "{db:?}"
        );
        assert_eq!(
            env.flow(&["backfill", "cancel", "bf_nope"]).status.code(),
            Some(2)
        );
    });
}

#[test]
fn backfills_through_the_api() {
    each_db(|env, db| {
        env.dag("daily.yaml", DAILY);
        let operator = crate::api_server::token(&env, "ops", "operator");
        let viewer = crate::api_server::token(&env, "looker", "viewer");
        let server = crate::api_server::Server::start(&env, "server");
        let body = serde_json::json!({"from": "2026-03-01", "to": "2026-03-03", "params": {"n": 7}, "max_active_runs": 2});
        let path = "/api/v1/dags/daily/backfills";
        let refused = server.call("POST", path, Some(&viewer), Some(&body));
        assert_eq!(refused.status, 403, "{db:?}");
        let dry = serde_json::json!({"from": "2026-03-01", "to": "2026-03-03", "dry_run": true});
        let dry = server.call("POST", path, Some(&operator), Some(&dry)).ok();
        assert_eq!(
            dry["intervals"].as_array().map(Vec::len),
            Some(3),
            "{db:?}: {dry:#}"
        );
        let made = server.call("POST", path, Some(&operator), Some(&body));
        assert_eq!(made.status, 201, "{db:?}: {:#}", made.body);
        let id = made.body["id"].as_str().unwrap().to_string();
        assert_eq!(
            made.body["runs"]["queued"], 2,
            "{db:?}: the first window: {:#}",
            made.body
        );
        assert_eq!(made.body["params"]["n"], 7);
        let bad = serde_json::json!({"from": "2026-03-01", "to": "2026-03-03", "rerun": "some"});
        server
            .call("POST", path, Some(&operator), Some(&bad))
            .error(400, "bad_request");
        let shown = server.get(&format!("/api/v1/backfills/{id}"), &viewer).ok();
        assert_eq!(shown["state"], "running", "{db:?}: {shown:#}");
        let listed = server.get("/api/v1/backfills?dag_id=daily", &viewer).ok();
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{db:?}");
        let cancelled = server
            .call(
                "DELETE",
                &format!("/api/v1/backfills/{id}"),
                Some(&operator),
                None,
            )
            .ok();
        assert_eq!(cancelled["state"], "cancelled", "{db:?}: {cancelled:#}");
        assert_eq!(cancelled["runs"]["failed"], 2, "{db:?}: {cancelled:#}");
        server
            .get("/api/v1/backfills/bf_nope", &viewer)
            .error(404, "not_found");
    });
}

#[test]
fn backfills_through_the_dag_page() {
    use crate::pages::{Auth, call};
    each_db(|env, db| {
        env.dag("daily.yaml", DAILY);
        let operator = crate::api_server::token(&env, "ops", "operator");
        let server = crate::api_server::Server::start(&env, "server");
        let as_ops = Auth::Bearer(&operator);
        let page = call(&server.base, "GET", "/dags/daily", &as_ops, None);
        assert!(
            page.body.contains("id=\"backfill-form\""),
            "{db:?}: {}",
            page.body
        );
        // The DAG's params are fields of the backfill form too, apart from the trigger form's.
        assert!(
            page.body.contains("id=\"bf-p_n\" name=\"p_n\""),
            "{db:?}: {}",
            page.body
        );
        let wrong = call(
            &server.base,
            "POST",
            "/dags/daily/backfills",
            &as_ops,
            Some("from=2026-04-01&to=2026-04-03&p_n=many"),
        );
        assert_eq!(wrong.status, 400, "{db:?}: {}", wrong.body);
        assert!(
            wrong.body.contains("param &#39;n&#39;"),
            "{db:?}: {}",
            wrong.body
        );
        assert!(
            backfills(&env).is_empty(),
            "{db:?}: a refused form made a backfill"
        );
        let made = call(
            &server.base,
            "POST",
            "/dags/daily/backfills",
            &as_ops,
            Some("from=2026-04-01&to=2026-04-03&max_active_runs=2&rerun=none&p_n=7"),
        );
        assert_eq!(made.status, 303, "{db:?}: {}", made.body);
        assert_eq!(
            backfills(&env)[0]["params"]["n"],
            7,
            "{db:?}: {:#?}",
            backfills(&env)
        );
        let page = call(&server.base, "GET", "/dags/daily", &as_ops, None);
        assert!(
            page.body.contains("class=\"backfill-row\""),
            "{db:?}: {}",
            page.body
        );
        assert!(
            page.body.contains("2 unfinished; 2 created"),
            "{db:?}: {}",
            page.body
        );
        let id = backfills(&env)[0]["id"].as_str().unwrap().to_string();
        let bad = call(
            &server.base,
            "POST",
            "/dags/daily/backfills",
            &as_ops,
            Some("from=soon&to=2026-04-03"),
        );
        assert_eq!(bad.status, 400, "{db:?}");
        let cancelled = call(
            &server.base,
            "POST",
            &format!("/dags/daily/backfills/{id}/cancel"),
            &as_ops,
            Some(""),
        );
        assert_eq!(cancelled.status, 303, "{db:?}: {}", cancelled.body);
        let page = call(&server.base, "GET", "/dags/daily", &as_ops, None);
        assert!(
            page.body.contains("<td>cancelled</td>"),
            "{db:?}: {}",
            page.body
        );
    });
}
