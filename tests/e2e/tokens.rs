//! The tokens' lifecycle (SECURITY.md rule 7): expiry, listing, revocation that ends page
//! sessions at once, last use written in batches, and the login form's rate limit.

use std::time::{Duration, Instant};

use crate::api_server::{Server, token};
use crate::harness::*;
use crate::pages::{Auth, call, login, login_form};

fn status(server: &Server, method: &str, path: &str, token: &str) -> u16 {
    server.call(method, path, Some(token), None).status
}

#[test]
fn tokens_expire_are_listed_revoked_and_logins_are_rate_limited() {
    each_db(|env, db| {
        env.dag(
            "idem.yaml",
            "id: idem\nparams:\n  n: { type: integer, default: 0 }\ntasks:\n  t: { operator: shell, command: 'true' }\n",
        );
        // The test's requests come from 127.0.0.1, standing in for a load balancer.
        env.config("[api]\ntrusted_proxies = [\"127.0.0.1\"]\n");
        let ops = token(&env, "ops", "operator");
        let short = env
            .flow_ok(
                &[
                    "tokens",
                    "create",
                    "short",
                    "--role",
                    "viewer",
                    "--expires",
                    "2s",
                ],
                0,
            )
            .trim()
            .to_string();
        let out = env.flow(&["tokens", "create", "bad", "--expires", "soon"]);
        assert_eq!(out.status.code(), Some(2), "{db:?}");
        let server = Server::start(&env, "standalone");
        let admin = std::fs::read_to_string(env.home().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();

        // The CLI lists every token, never a secret or hash.
        let listed = env.flow_json(&["tokens", "list", "--json"], 0);
        let names: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["admin", "ops", "short"], "{db:?}");
        let text = listed.to_string();
        for secret in [&ops, &short, &admin] {
            assert!(!text.contains(secret.as_str()), "{db:?}: {text}");
        }
        assert!(listed[2]["expires_at"].is_string(), "{db:?}: {listed:#}");
        assert!(listed[1]["expires_at"].is_null(), "{db:?}: {listed:#}");

        // An Idempotency-Key is the token's own, and names one request (the Stripe rule).
        let post = |token: &str, body: serde_json::Value| {
            server.call_with(
                "POST",
                "/api/v1/dags/idem/runs",
                Some(token),
                Some(&body),
                &[("Idempotency-Key", "nightly-1")],
            )
        };
        let first = post(&ops, serde_json::json!({"params": {"n": 1}}));
        assert_eq!(first.status, 201, "{db:?} {:#}", first.body);
        let again = post(&ops, serde_json::json!({"params": {"n": 1}}));
        assert_eq!(
            (again.status, &again.body["run_id"]),
            (200, &first.body["run_id"])
        );
        let other = post(&ops, serde_json::json!({"params": {"n": 2}}));
        assert_eq!(other.status, 422, "{db:?} {:#}", other.body);
        assert_eq!(other.body["error"]["code"], "idempotency_key_reused");
        let by_admin = post(&admin, serde_json::json!({"params": {"n": 2}}));
        assert_eq!(
            by_admin.status, 201,
            "{db:?}: another token's key {:#}",
            by_admin.body
        );
        assert_ne!(by_admin.body["run_id"], first.body["run_id"]);

        // The API's list is for admins.
        assert_eq!(
            status(&server, "GET", "/api/v1/tokens", &ops),
            403,
            "{db:?}"
        );
        assert_eq!(status(&server, "GET", "/api/v1/dags", &ops), 200, "{db:?}");

        // Last use reaches the list within a few seconds (written in batches).
        let start = Instant::now();
        loop {
            let tokens = server.get("/api/v1/tokens", &admin).ok();
            let used = tokens
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == "ops")
                .map(|t| t["last_used_at"].clone())
                .unwrap();
            if used.is_string() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{db:?}: ops's last use never written: {tokens:#}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }

        // An expired token is refused like an unknown one.
        let start = Instant::now();
        while status(&server, "GET", "/api/v1/dags", &short) == 200 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{db:?}: never expired"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            status(&server, "GET", "/api/v1/dags", &short),
            401,
            "{db:?}"
        );

        // Revoking ends the token's API access and its page session at once.
        let (cookie, _) = login(&server.base, &ops);
        assert_eq!(
            call(&server.base, "GET", "/", &Auth::Cookie(&cookie), None).status,
            200
        );
        assert_eq!(
            status(&server, "DELETE", "/api/v1/tokens/ops", &ops),
            403,
            "{db:?}"
        );
        assert_eq!(
            status(&server, "DELETE", "/api/v1/tokens/ops", &admin),
            204,
            "{db:?}"
        );
        assert_eq!(
            status(&server, "DELETE", "/api/v1/tokens/ops", &admin),
            404,
            "{db:?}"
        );
        assert_eq!(status(&server, "GET", "/api/v1/dags", &ops), 401, "{db:?}");
        // A new token given the revoked one's name has keys of its own.
        let ops2 = token(&env, "ops", "operator");
        let fresh = post(&ops2, serde_json::json!({"params": {"n": 3}}));
        assert_eq!(
            fresh.status, 201,
            "{db:?}: a reused name shares keys {:#}",
            fresh.body
        );
        env.flow_ok(&["tokens", "revoke", "ops"], 0);
        let page = call(&server.base, "GET", "/", &Auth::Cookie(&cookie), None);
        assert_eq!(
            page.status, 303,
            "{db:?}: the revoked token's session still works"
        );
        assert!(
            page.header("location")
                .unwrap_or_default()
                .starts_with("/login")
        );
        let out = env.flow(&["tokens", "revoke", "ops"]);
        assert_eq!(out.status.code(), Some(2), "{db:?}");
        env.flow_ok(&["tokens", "revoke", "short"], 0);
        let left = env.flow_json(&["tokens", "list", "--json"], 0);
        assert_eq!(left.as_array().unwrap().len(), 1, "{db:?}: {left:#}");

        // Login attempts from one address are limited: a guesser gets 429.
        let attempts = |via: Option<&str>| -> Vec<u16> {
            (0..12)
                .map(|_| {
                    let (cookie, csrf) = login_form(&server.base);
                    let body = format!("csrf={csrf}&next=%2F&token=flow_guess");
                    let auth = match via {
                        Some(client) => Auth::CookieVia(&cookie, client),
                        None => Auth::Cookie(&cookie),
                    };
                    call(&server.base, "POST", "/login", &auth, Some(&body)).status
                })
                .collect()
        };
        let direct = attempts(None);
        assert!(direct.contains(&429), "{db:?}: {direct:?}");
        // Behind a trusted balancer each forwarded client has a budget of its own.
        let forwarded = attempts(Some("203.0.113.9"));
        assert_ne!(forwarded[0], 429, "{db:?}: {forwarded:?}");
        assert!(forwarded.contains(&429), "{db:?}: {forwarded:?}");
        server.stop();
    });
}
