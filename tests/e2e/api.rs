//! The REST API of `api.md`, through the real `flow server` and `flow standalone` on a free port.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::api_server::*;
use crate::harness::*;

const API_DAG: &str = "id: api\nparams:\n  n: { type: integer, default: 1 }\ntasks:\n  a: { operator: shell, command: 'echo line one {{ params.n }}; echo line two' }\n  b: { operator: shell, command: 'echo b', depends_on: [a] }\n  c: { operator: shell, command: 'echo c', depends_on: [b] }\n";

#[test]
fn api_end_to_end() {
    each_db(|env, db| {
        env.dag("api.yaml", API_DAG);
        env.dag(
            "flaky.yaml",
            "id: flaky\ntasks:\n  bad: { operator: shell, command: 'exit 3' }\n  after: { operator: shell, command: 'echo after', depends_on: [bad] }\n",
        );
        env.dag(
            "slow.yaml",
            "id: slow\ntasks:\n  sleepy: { operator: shell, command: 'echo started; sleep 5; echo finished' }\n  then: { operator: shell, command: 'echo then', depends_on: [sleepy] }\n",
        );
        let server = Server::start(&env, "standalone");

        // A fresh home: the admin token is printed once and kept in admin.token, mode 0600.
        let admin = server.printed().trim().to_string();
        assert!(admin.starts_with("flow_"), "{db:?}: {admin:?}");
        let file = env.home().join("admin.token");
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), admin);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "admin.token mode {mode:o}");

        // Health needs no token; the scheduler of standalone shows up as alive.
        let start = Instant::now();
        loop {
            let health = server.call("GET", "/api/v1/health", None, None).ok();
            assert_eq!(
                (&health["status"], &health["database"]),
                (&json!("ok"), &json!("ok"))
            );
            if health["scheduler"]["alive"] == true {
                assert!(
                    health["scheduler"]["last_heartbeat"]
                        .as_str()
                        .unwrap()
                        .ends_with('Z')
                );
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{health:#}");
            std::thread::sleep(Duration::from_millis(100));
        }

        // 401 without or with a bad token; 403 for a role too weak.
        server
            .call("GET", "/api/v1/dags", None, None)
            .error(401, "unauthorized");
        server
            .call("GET", "/api/v1/dags", Some("flow_not_a_token"), None)
            .error(401, "unauthorized");
        let viewer = token(&env, "viewer", "viewer");
        let operator = token(&env, "operator", "operator");
        server.get("/api/v1/dags", &viewer).ok();
        trigger(&server, &viewer, "api", json!({})).error(403, "forbidden");
        let new_token = json!({"name": "ci", "role": "operator"});
        server
            .call("POST", "/api/v1/tokens", Some(&operator), Some(&new_token))
            .error(403, "forbidden");
        let created = server.call("POST", "/api/v1/tokens", Some(&admin), Some(&new_token));
        assert_eq!(created.status, 201, "{:#}", created.body);
        assert_eq!(created.body["role"], "operator");
        let ci = created.body["token"].as_str().unwrap().to_string();
        server.get("/api/v1/dags", &ci).ok();
        server
            .call("POST", "/api/v1/tokens", Some(&admin), Some(&new_token))
            .error(409, "conflict");

        // DAGs: the list, a detail with tasks and edges, 404 for an unknown one.
        let dags = server.get("/api/v1/dags", &viewer).ok();
        let api = dags
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["dag_id"] == "api")
            .unwrap();
        assert_eq!(
            (&api["paused"], &api["last_run"]),
            (&json!(false), &Json::Null)
        );
        let detail = server.get("/api/v1/dags/api", &viewer).ok();
        let tasks: Vec<&str> = detail["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_str().unwrap())
            .collect();
        assert_eq!(tasks, ["a", "b", "c"]);
        assert_eq!(
            detail["edges"],
            json!([{"upstream": "a", "downstream": "b"}, {"upstream": "b", "downstream": "c"}])
        );
        server
            .get("/api/v1/dags/nope", &viewer)
            .error(404, "not_found");
        trigger(&server, &operator, "nope", json!({})).error(404, "not_found");

        // Bad input is a 400 that says which and why.
        let m = trigger(&server, &operator, "api", json!({"params": {"n": "x"}}))
            .error(400, "bad_request");
        assert!(m.contains("'n'") && m.contains("integer"), "{m}");
        let m = trigger(&server, &operator, "api", json!({"params": {"zz": 1}}))
            .error(400, "bad_request");
        assert!(m.contains("'zz'"), "{m}");
        let m = trigger(
            &server,
            &operator,
            "api",
            json!({"logical_date": "someday"}),
        )
        .error(400, "bad_request");
        assert!(m.contains("logical_date"), "{m}");
        let bad_json = request(
            &server.base,
            "POST",
            "/api/v1/dags/api/runs",
            Some(&operator),
            Some("{bad".into()),
            &[],
        );
        bad_json.error(400, "bad_json");

        // Trigger: 201, and the same Idempotency-Key answers 200 with the first run.
        let key = [("Idempotency-Key", "key-1")];
        let first = server.call_with(
            "POST",
            "/api/v1/dags/api/runs",
            Some(&operator),
            Some(&json!({"params": {"n": 7}})),
            &key,
        );
        assert_eq!(first.status, 201, "{:#}", first.body);
        assert_eq!(first.body["state"], "queued");
        let run1 = first.body["run_id"].as_str().unwrap().to_string();
        let again = server.call_with(
            "POST",
            "/api/v1/dags/api/runs",
            Some(&operator),
            Some(&json!({"params": {"n": 7}})),
            &key,
        );
        assert_eq!(again.status, 200, "{:#}", again.body);
        assert_eq!(again.body["run_id"], run1.as_str());
        let runs = server.get("/api/v1/runs?dag_id=api", &viewer).ok();
        assert_eq!(runs.as_array().unwrap().len(), 1, "{runs:#}");

        // Concurrent requests with one key make one run.
        let base = server.base.clone();
        let answers: Vec<Answer> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let (base, operator) = (&base, &operator);
                    s.spawn(move || {
                        request(
                            base,
                            "POST",
                            "/api/v1/dags/api/runs",
                            Some(operator),
                            Some("{}".into()),
                            &[("Idempotency-Key", "key-2")],
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let created: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
        assert_eq!(created.len(), 1, "{answers:#?}");
        assert!(
            answers.iter().all(|a| a.status == 201 || a.status == 200),
            "{answers:#?}"
        );
        let run2 = created[0].body["run_id"].as_str().unwrap().to_string();
        assert!(
            answers.iter().all(|a| a.body["run_id"] == run2.as_str()),
            "{answers:#?}"
        );
        let runs = server.get("/api/v1/runs?dag_id=api", &viewer).ok();
        assert_eq!(runs.as_array().unwrap().len(), 2, "{runs:#}");

        // A run is the shape of `flow runs show --json`.
        let done = server.wait_run(
            &viewer,
            &run1,
            Duration::from_secs(60),
            state_is(&["success", "failed"]),
        );
        assert_eq!(done["state"], "success", "{done:#}");
        assert_eq!(done["params"], json!({"n": 7}));
        assert_eq!(done, env.flow_json(&["runs", "show", &run1, "--json"], 0));
        server.wait_run(
            &viewer,
            &run2,
            Duration::from_secs(60),
            state_is(&["success"]),
        );

        // Runs list: newest first, filters, keyset pages.
        let page = server.get("/api/v1/runs?dag_id=api&limit=1", &viewer).ok();
        assert_eq!(page[0]["run_id"], run2.as_str());
        assert!(page[0].get("tasks").is_none(), "{page:#}");
        let next = server
            .get(
                &format!("/api/v1/runs?dag_id=api&limit=1&before={}", query(&run2)),
                &viewer,
            )
            .ok();
        assert_eq!(next[0]["run_id"], run1.as_str());
        let last = server
            .get(
                &format!("/api/v1/runs?dag_id=api&before={}", query(&run1)),
                &viewer,
            )
            .ok();
        assert_eq!(last, json!([]));
        let success = server
            .get("/api/v1/runs?state=success&dag_id=api", &viewer)
            .ok();
        assert_eq!(success.as_array().unwrap().len(), 2);
        server
            .get("/api/v1/runs?state=bogus", &viewer)
            .error(400, "bad_request");
        // A NUL character, which PostgreSQL cannot hold in text, is the caller's mistake, not a
        // 500 (found by schemathesis).
        server
            .get("/api/v1/runs?dag_id=api&before=x%00y", &viewer)
            .error(400, "bad_request");
        server
            .get("/api/v1/runs?limit=0", &viewer)
            .error(400, "bad_request");
        server
            .get("/api/v1/runs?limit=many", &viewer)
            .error(400, "bad_query");
        server
            .get("/api/v1/runs/nope", &viewer)
            .error(404, "not_found");

        // Logs from an offset.
        let logs = format!("/api/v1/runs/{run1}/tasks/a/logs");
        let whole = server.get(&logs, &viewer).ok();
        let content = whole["content"].as_str().unwrap().to_string();
        assert!(content.contains("line one 7\nline two\n"), "{content}");
        assert_eq!(whole["next_offset"], content.len());
        assert_eq!(whole["complete"], true);
        let tail = server.get(&format!("{logs}?offset=5"), &viewer).ok();
        assert_eq!(tail["content"], &content[5..]);
        assert_eq!(tail["next_offset"], content.len());
        let rest = server
            .get(&format!("{logs}?try=1&offset={}", content.len()), &viewer)
            .ok();
        assert_eq!(
            (&rest["content"], &rest["complete"]),
            (&json!(""), &json!(true))
        );
        server
            .get(&format!("{logs}?offset=100000"), &viewer)
            .error(400, "bad_request");
        server
            .get(&format!("{logs}?try=2"), &viewer)
            .error(404, "not_found");
        server
            .get(&format!("/api/v1/runs/{run1}/tasks/zz/logs"), &viewer)
            .error(404, "not_found");

        // Clear with downstream: b and c run again, a does not.
        let clear = format!("/api/v1/runs/{run1}/tasks/b/clear");
        server
            .call(
                "POST",
                &clear,
                Some(&viewer),
                Some(&json!({"downstream": true})),
            )
            .error(403, "forbidden");
        let cleared = server
            .call(
                "POST",
                &clear,
                Some(&operator),
                Some(&json!({"downstream": true})),
            )
            .ok();
        assert_eq!(
            cleared,
            json!({"run_id": run1, "state": "queued", "cleared": ["b", "c"]})
        );
        let rerun = server.wait_run(&viewer, &run1, Duration::from_secs(60), |r| {
            r["state"] == "success" && task(r, "c", None)["tries"] == 2
        });
        assert_eq!(task(&rerun, "a", None)["tries"], 1);
        assert_eq!(task(&rerun, "b", None)["tries"], 2);

        // Mark a failed task success: its upstream_failed downstream runs and the run succeeds.
        let flaky = trigger_id(&server, &operator, "flaky");
        let failed = server.wait_run(
            &viewer,
            &flaky,
            Duration::from_secs(60),
            state_is(&["success", "failed"]),
        );
        assert_eq!(failed["state"], "failed");
        assert_eq!(task(&failed, "after", None)["state"], "upstream_failed");
        let mark = format!("/api/v1/runs/{flaky}/tasks/bad/mark");
        server
            .call(
                "POST",
                &mark,
                Some(&operator),
                Some(&json!({"state": "skipped"})),
            )
            .error(400, "bad_json");
        let marked = server
            .call(
                "POST",
                &mark,
                Some(&operator),
                Some(&json!({"state": "success"})),
            )
            .ok();
        assert_eq!(marked["changed"], 1);
        let healed = server.wait_run(
            &viewer,
            &flaky,
            Duration::from_secs(60),
            state_is(&["success"]),
        );
        assert_eq!(task(&healed, "bad", None)["state"], "success");
        assert_eq!(task(&healed, "after", None)["state"], "success");
        assert_eq!(task(&healed, "after", None)["tries"], 1);

        // Mark a running try failed: the mark wins, the try is stopped, the run fails long
        // before the try's sleep would have ended.
        let slow = trigger_id(&server, &operator, "slow");
        server.wait_run(&viewer, &slow, Duration::from_secs(60), |r| {
            task(r, "sleepy", None)["state"] == "running"
        });
        let marked_at = Instant::now();
        let marked = server
            .call(
                "POST",
                &format!("/api/v1/runs/{slow}/tasks/sleepy/mark"),
                Some(&operator),
                Some(&json!({"state": "failed"})),
            )
            .ok();
        assert_eq!(marked["changed"], 1);
        let ended = server.wait_run(
            &viewer,
            &slow,
            Duration::from_secs(20),
            state_is(&["success", "failed"]),
        );
        assert!(marked_at.elapsed() < Duration::from_secs(20));
        assert_eq!(ended["state"], "failed", "{ended:#}");
        assert_eq!(task(&ended, "then", None)["state"], "upstream_failed");
        // Past the moment the try would have finished: it was stopped, and nothing it could
        // still report has replaced the mark.
        std::thread::sleep(Duration::from_secs(7).saturating_sub(marked_at.elapsed()));
        let later = server.get(&format!("/api/v1/runs/{slow}"), &viewer).ok();
        assert_eq!(
            task(&later, "sleepy", None)["state"],
            "failed",
            "the try overwrote the mark"
        );
        let log = server
            .get(&format!("/api/v1/runs/{slow}/tasks/sleepy/logs"), &viewer)
            .ok();
        let log = log["content"].as_str().unwrap();
        assert!(
            log.contains("started") && !log.contains("finished"),
            "the try was not stopped: {log}"
        );
        assert_eq!(later["state"], "failed");

        // Pause through PATCH; the CLI sees it.
        server
            .call(
                "PATCH",
                "/api/v1/dags/api",
                Some(&viewer),
                Some(&json!({"paused": true})),
            )
            .error(403, "forbidden");
        server
            .call(
                "PATCH",
                "/api/v1/dags/api",
                Some(&operator),
                Some(&json!({"paused": "yes"})),
            )
            .error(400, "bad_json");
        let paused = server
            .call(
                "PATCH",
                "/api/v1/dags/api",
                Some(&operator),
                Some(&json!({"paused": true})),
            )
            .ok();
        assert_eq!(paused["paused"], true);
        assert_eq!(paused["tasks"].as_array().unwrap().len(), 3);
        let listed = env.flow_json(&["dags", "list", "--json"], 0);
        let api = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["dag_id"] == "api")
            .unwrap();
        assert_eq!(api["paused"], true);

        // Unknown routes and methods answer in the error shape.
        server
            .get("/api/v1/nothing", &viewer)
            .error(404, "not_found");
        server
            .call("DELETE", "/api/v1/dags", Some(&viewer), None)
            .error(405, "method_not_allowed");
        server.stop();

        // A home that has its admin token prints none again; the token still works.
        let server = Server::start(&env, "standalone");
        assert_eq!(server.printed(), "");
        server.get("/api/v1/dags", &admin).ok();
        server.stop();
    });
}

#[test]
fn api_rate_limit_answers_429_with_retry_after() {
    each_db(|env, db| {
        env.config("[api]\nrate_limit_per_minute = 6\nrate_limit_burst = 3\n");
        let busy = token(&env, "busy", "viewer");
        let other = token(&env, "other", "viewer");
        let server = Server::start(&env, "server");
        // On PostgreSQL a second server on the same database spends from the same budget
        // (issue 21); on SQLite each process keeps its own.
        let second = (db == Db::Postgres).then(|| Server::start(&env, "server"));
        for i in 0..3 {
            let via = match &second {
                Some(s) if i == 1 => s,
                _ => &server,
            };
            via.get("/api/v1/dags", &busy).ok();
        }
        let limited = second
            .as_ref()
            .unwrap_or(&server)
            .get("/api/v1/dags", &busy);
        limited.error(429, "rate_limited");
        let wait: u64 = limited
            .retry_after
            .as_deref()
            .expect("Retry-After")
            .parse()
            .unwrap();
        // 6 a minute: one request every 10 s.
        assert!((1..=10).contains(&wait), "{db:?}: Retry-After {wait}");
        server.get("/api/v1/dags", &busy).error(429, "rate_limited");
        // Each token has its own budget; health has none.
        server.get("/api/v1/dags", &other).ok();
        for _ in 0..10 {
            server.call("GET", "/api/v1/health", None, None).ok();
        }
        if let Some(s) = second {
            s.stop();
        }
        server.stop();
    });
}

/// Every operation of the document answers with a status it declares, every method it leaves
/// out is 405, and every endpoint of api.md is there. `flow server` alone serves the DAGs folder.
#[test]
fn openapi_documents_every_route_and_its_answers() {
    let env = Env::new(Db::Sqlite).unwrap();
    env.dag("api.yaml", API_DAG);
    let run_id = env.flow_ok(&["run", "api"], 0).trim().to_string();
    // A registered model `m`, for the registry's routes.
    let mut rows = String::from("x,y\n");
    for i in 0..200 {
        rows.push_str(&format!("{i},{}\n", i32::from(i % 7 < 3)));
    }
    std::fs::write(env.dags().join("rows.csv"), rows).unwrap();
    env.dag(
        "model.yaml",
        "id: model\ntasks:\n  fit:\n    operator: train\n    training_set: { path: rows.csv }\n    label: y\n    model: m\n    artifacts: models/\n",
    );
    env.flow_ok(&["run", "model"], 0);
    // An experiment `victim`, for the experiments' routes (the stop route stops it).
    let (mut assigned, mut outcomes) =
        (String::from("unit,variant\n"), String::from("unit,value\n"));
    for i in 0..100 {
        let arm = if i % 2 == 0 { "control" } else { "treatment" };
        assigned.push_str(&format!("{i},{arm}\n"));
        outcomes.push_str(&format!("{i},{}\n", i32::from(i % 5 == 0)));
    }
    std::fs::write(env.dags().join("assignments.csv"), assigned).unwrap();
    std::fs::write(env.dags().join("outcomes.csv"), outcomes).unwrap();
    env.dag(
        "ab.yaml",
        "id: ab\ntasks:\n  look:\n    operator: experiment\n    experiment: victim\n    assignments: { path: assignments.csv }\n    outcomes: { path: outcomes.csv }\n",
    );
    env.flow_ok(&["run", "ab"], 0);
    // A scheduled DAG and a backfill of it, for the backfills' routes.
    env.dag(
        "nightly.yaml",
        "id: nightly\nschedule: '@daily'\nstart_date: 2026-01-01\ntasks:\n  t: { operator: shell, command: 'true' }\n",
    );
    env.flow_ok(
        &[
            "backfill",
            "nightly",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
        ],
        0,
    );
    let listed = env.flow_json(&["backfill", "list", "--json"], 0);
    let backfill_id = listed[0]["id"].as_str().expect("a backfill").to_string();
    let admin = token(&env, "root", "admin");
    // For DELETE /api/v1/tokens/{name}.
    token(&env, "victim", "viewer");
    let server = Server::start(&env, "server");
    let doc = server.call("GET", "/api/v1/openapi.json", None, None).ok();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert!(doc.get("servers").is_none(), "no servers prefix");
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in [
        ("get", "/api/v1/health"),
        ("get", "/api/v1/ready"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/dags"),
        ("get", "/api/v1/dags/{dag_id}"),
        ("patch", "/api/v1/dags/{dag_id}"),
        ("post", "/api/v1/dags/{dag_id}/runs"),
        ("get", "/api/v1/dags/{dag_id}/grid"),
        ("get", "/api/v1/dags/{dag_id}/versions/{version}"),
        ("post", "/api/v1/dags/{dag_id}/backfills"),
        ("get", "/api/v1/backfills"),
        ("get", "/api/v1/backfills/{backfill_id}"),
        ("delete", "/api/v1/backfills/{backfill_id}"),
        ("get", "/api/v1/runs"),
        ("get", "/api/v1/runs/{run_id}"),
        ("get", "/api/v1/runs/{run_id}/tasks/{task_id}/logs"),
        ("post", "/api/v1/runs/{run_id}/tasks/{task_id}/clear"),
        ("post", "/api/v1/runs/{run_id}/tasks/{task_id}/mark"),
        ("post", "/api/v1/tokens"),
        ("get", "/api/v1/tokens"),
        ("delete", "/api/v1/tokens/{name}"),
        ("get", "/api/v1/models"),
        ("get", "/api/v1/models/{model}"),
        ("post", "/api/v1/models/{model}/versions/{version}/promote"),
        ("get", "/api/v1/experiments"),
        ("get", "/api/v1/experiments/{name}"),
        ("post", "/api/v1/experiments/{name}/stop"),
        ("get", "/api/v1/datasets"),
        ("get", "/api/v1/datasets/events"),
        ("post", "/api/v1/datasets/events"),
        ("get", "/metrics"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not documented"
        );
    }
    let run = server.get(&format!("/api/v1/runs/{run_id}"), &admin).ok();
    let dag_version = run["dag_version"].as_str().expect("a run's DAG version");
    assert!(run["dag_version_seen_at"].is_string(), "{run:#}");
    let mut called = 0;
    for (i, (template, item)) in paths.iter().enumerate() {
        let version = if template.contains("/dags/{dag_id}/versions/") {
            dag_version
        } else {
            "1"
        };
        let dag = if template.ends_with("/backfills") {
            "nightly"
        } else {
            "api"
        };
        let path = template
            .replace("{dag_id}", dag)
            .replace("{backfill_id}", &backfill_id)
            .replace("{run_id}", &run_id)
            .replace("{task_id}", "a")
            .replace("{model}", "m")
            .replace("{version}", version)
            .replace("{name}", "victim");
        for method in ["get", "post", "patch", "put", "delete"] {
            let upper = method.to_uppercase();
            let Some(op) = item.get(method) else {
                let answer = server.call(&upper, &path, Some(&admin), None);
                answer.error(405, "method_not_allowed");
                continue;
            };
            let declared: Vec<u16> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.parse().unwrap())
                .collect();
            let body = match (method, template.as_str()) {
                ("post", "/api/v1/tokens") => Some(json!({"name": format!("t{i}")})),
                ("post", p) if p.ends_with("/mark") => Some(json!({"state": "success"})),
                ("post", "/api/v1/datasets/events") => Some(json!({"uri": "s3://lake/x"})),
                ("post", p) if p.ends_with("/backfills") => {
                    Some(json!({"from": "2026-02-01", "to": "2026-02-02"}))
                }
                ("patch", _) => Some(json!({"paused": false})),
                ("post", _) => Some(json!({})),
                _ => None,
            };
            let answer = server.call(&upper, &path, Some(&admin), body.as_ref());
            assert!(
                declared.contains(&answer.status) && answer.status < 300,
                "{upper} {path} answered {} ({:#}); declared {declared:?}",
                answer.status,
                answer.body
            );
            // Without a token: 401 where a token is needed (declared), else the same success.
            let anonymous = server.call(&upper, &path, None, body.as_ref());
            if op.get("security").is_some() {
                anonymous.error(401, "unauthorized");
                assert!(
                    declared.contains(&401) && declared.contains(&429),
                    "{upper} {path}: {declared:?}"
                );
            } else {
                assert_eq!(anonymous.status, 200, "{upper} {path}");
            }
            called += 1;
        }
    }
    assert_eq!(called, 31, "every documented operation was called");
    // The registry's pages, beside its routes.
    let page = |path: &str| {
        ureq::get(format!("{}{path}", server.base))
            .header("Authorization", format!("Bearer {admin}"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let models = page("/models");
    assert!(
        models.contains("data-model=\"m\"") && models.contains("version 1"),
        "{models}"
    );
    let versions = page("/models/m");
    assert!(
        versions.contains("data-version=\"1\"") && versions.contains("stage-production"),
        "{versions}"
    );
    let experiments = page("/experiments");
    assert!(
        experiments.contains("data-experiment=\"victim\"") && experiments.contains("stopped"),
        "{experiments}"
    );
    let experiment = page("/experiments/victim");
    assert!(
        experiment.contains("data-variant=\"treatment\"") && experiment.contains("fixed test"),
        "{experiment}"
    );
    // Stopping is an operator's: a viewer is refused, and the record says so.
    let reader = token(&env, "reader", "viewer");
    server
        .call(
            "POST",
            "/api/v1/experiments/victim/stop",
            Some(&reader),
            Some(&json!({})),
        )
        .error(403, "forbidden");
    let stopped = server.get("/api/v1/experiments/victim", &admin).ok();
    assert_eq!(
        (stopped[0]["state"].clone(), stopped[0]["looks"].clone()),
        (json!("stopped"), json!(1)),
        "{stopped:#}"
    );
    // `flow server` loaded the DAGs folder itself.
    let detail = server.get("/api/v1/dags/api", &admin).ok();
    assert_eq!(detail["tasks"].as_array().unwrap().len(), 3);
    server.stop();
}

#[test]
fn grid_api_pages_runs_with_their_cells_counted_per_state() {
    each_db(|env, _db| {
        env.dag(
            "grid.yaml",
            "id: grid\nparams:\n  fail: { type: boolean, default: false }\ntasks:\n  items:\n    operator: shell\n    command: echo '[1, 2, 3]' > \"$FLOW_OUTPUT\"\n  each:\n    operator: shell\n    depends_on: [items]\n    for_each: '{{ tasks.items.output }}'\n    command: test {{ params.fail }}-{{ item | shell_quote }} != true-2\n",
        );
        // Three runs, oldest first: a success, a failure (one mapped instance fails), a success.
        for fail in ["false", "true", "false"] {
            let param = format!("fail={fail}");
            let code = if fail == "false" { 0 } else { 1 };
            env.flow_ok(&["run", "grid", "--param", &param], code);
            // Distinct queued times, so the order is the trigger order.
            std::thread::sleep(Duration::from_millis(5));
        }
        let viewer = token(&env, "viewer", "viewer");
        let server = Server::start(&env, "server");
        let page = server.get("/api/v1/dags/grid/grid?limit=2", &viewer).ok();
        assert_eq!(page["dag_id"], "grid");
        assert_eq!(page["tasks"], json!(["items", "each"]));
        let runs = page["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0]["state"], "success");
        assert_eq!(runs[1]["state"], "failed");
        let failed_each = &runs[1]["tasks"]["each"];
        assert_eq!(failed_each["count"], 3, "{failed_each:#}");
        assert_eq!(failed_each["mapped"], true);
        assert_eq!(failed_each["state"], "failed");
        assert_eq!(failed_each["states"], json!({"failed": 1, "success": 2}));
        assert_eq!(runs[1]["tasks"]["items"]["mapped"], false);
        assert_eq!(runs[1]["tasks"]["items"]["count"], 1);
        // The next page holds the oldest run and is the last.
        let before = page["next_before"].as_str().unwrap();
        let next = server
            .get(
                &format!("/api/v1/dags/grid/grid?limit=2&before={}", query(before)),
                &viewer,
            )
            .ok();
        let older = next["runs"].as_array().unwrap();
        assert_eq!(older.len(), 1);
        assert_eq!(older[0]["state"], "success");
        assert_eq!(next["next_before"], Json::Null);
        assert_eq!(older[0]["tasks"]["each"]["states"], json!({"success": 3}));
        // Bad input.
        server
            .get("/api/v1/dags/grid/grid?limit=0", &viewer)
            .error(400, "bad_request");
        server
            .get("/api/v1/dags/grid/grid?before=nope", &viewer)
            .error(400, "bad_request");
        server
            .get("/api/v1/dags/nope/grid", &viewer)
            .error(404, "not_found");
        server.stop();
    });
}
