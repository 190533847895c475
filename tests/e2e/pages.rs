//! The web pages over plain HTTP (no browser): headers, login, sessions, CSRF, roles, escaping,
//! and that no GET changes anything. `browser.rs` drives the same pages in Chromium.

use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::api_server::{Server, token};
use crate::harness::*;

pub const DEMO_DAG: &str = "id: demo\ndescription: a demo DAG\ntags: [ml, nightly]\nparams:\n  n: { type: integer, default: 1 }\n  name: { type: string, default: world }\ntasks:\n  a: { operator: shell, command: 'echo hello {{ params.name | shell_quote }} {{ params.n }}' }\n  b: { operator: shell, command: 'echo b', depends_on: [a] }\n  c: { operator: shell, command: 'echo c', depends_on: [a] }\n  d: { operator: shell, command: 'echo d', depends_on: [b, c] }\n";

/// Task ids may only hold `[a-z0-9_]`, so the hostile text is in everything else an author
/// writes: the description, a tag, a param's default and description, and the log.
pub const XSS_DAG: &str = r#"id: xss
description: "<script>window.__xss=1</script><img src=x onerror=window.__xss=1>"
tags: ["<img src=x onerror=window.__xss=1>"]
params:
  p: { type: string, default: "<script>window.__xss=1</script>", description: "<img src=x onerror=window.__xss=1>" }
tasks:
  t: { operator: shell, command: "echo '<script>window.__xss=1</script>'; echo '<img src=x onerror=window.__xss=1>'; echo param {{ params.p | shell_quote }}" }
"#;

/// The payload list (`tests/browser/xss-payloads.txt`), one per line.
pub const XSS_PAYLOADS: &str = include_str!("../browser/xss-payloads.txt");

/// Every payload of the list in each place an author or a trigger fills: the description, the
/// tags, a param's default and description, a task's log lines and its output (one mapped
/// instance per payload).
pub fn xss_list_dag() -> String {
    let payloads: Vec<&str> = XSS_PAYLOADS.lines().filter(|l| !l.is_empty()).collect();
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let all = payloads.join(" ");
    let list = payloads.iter().map(|p| q(p)).collect::<Vec<_>>().join(", ");
    format!(
        "id: xss_list\ndescription: {all}\ntags: [{list}]\nparams:\n  p: {{ type: string, default: {first}, description: {all} }}\n\
         tasks:\n  each:\n    operator: shell\n    for_each: [{list}]\n    command: |\n      echo {{{{ item | shell_quote }}}}\n      \
         printf '{{\"payload\": %s}}' {{{{ item | tojson | shell_quote }}}} > \"$FLOW_OUTPUT\"\n",
        all = q(&all),
        first = q(payloads[0]),
    )
}

/// A mapped task (one grid cell with counts) whose command uses a secret (masked on the page).
pub const FAN_DAG: &str = "id: fan\ntasks:\n  fan: { operator: shell, for_each: [1, 2, 3], command: 'echo item {{ item }} token {{ secrets.API_TOKEN }}' }\n";

const SECRET: &str = "s3cr3t-v4lue";

/// A try that writes its log in two steps, for the live tail.
pub const SLOW_DAG: &str = "id: slow\ntasks:\n  sleepy: { operator: shell, command: 'echo first line; sleep 3; echo second line; sleep 2' }\n";

pub const BROKEN_DAG: &str = "id: broken\ntasks:\n  a: { operator: shel, command: x }\n";

/// A scratch home with the page tests' DAGs; None for PostgreSQL where it is not available.
pub fn page_env(db: Db) -> Option<Env> {
    let mut env = Env::new(db)?;
    env.secrets.push(("API_TOKEN".into(), SECRET.into()));
    env.dag("fan.yaml", FAN_DAG);
    env.dag("slow.yaml", SLOW_DAG);
    env.dag("demo.yaml", DEMO_DAG);
    env.dag("xss.yaml", XSS_DAG);
    env.dag("xss_list.yaml", &xss_list_dag());
    env.dag("broken.yaml", BROKEN_DAG);
    Some(env)
}

pub fn admin_token(env: &Env) -> String {
    std::fs::read_to_string(env.home().join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

pub(crate) struct Page {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the first `name="csrf"` hidden field.
    pub(crate) fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field in:\n{}", self.body));
        let rest = &self.body[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

pub(crate) enum Auth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
    /// A cookie, sent as if through a load balancer for this client address.
    CookieVia(&'a str, &'a str),
}

pub(crate) fn call(base: &str, method: &str, path: &str, auth: &Auth, form: Option<&str>) -> Page {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    match auth {
        Auth::None => {}
        Auth::Bearer(t) => req = req.header("Authorization", format!("Bearer {t}")),
        Auth::Cookie(c) => req = req.header("Cookie", *c),
        Auth::CookieVia(c, client) => {
            req = req.header("Cookie", *c).header("X-Forwarded-For", *client)
        }
    }
    let mut res = match form {
        Some(body) => agent
            .run(
                req.header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body.to_string())
                    .unwrap(),
            )
            .unwrap(),
        None => agent.run(req.body(()).unwrap()).unwrap(),
    };
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    Page {
        status: res.status().as_u16(),
        headers,
        body: res.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn api_json(base: &str, path: &str, token: &str) -> Json {
    let p = call(base, "GET", path, &Auth::Bearer(token), None);
    assert_eq!(p.status, 200, "{path}: {}", p.body);
    serde_json::from_str(&p.body).unwrap()
}

fn wait_success(base: &str, token: &str, run_id: &str) -> Json {
    let start = Instant::now();
    loop {
        let run = api_json(base, &format!("/api/v1/runs/{}", enc(run_id)), token);
        if run["state"] == "success" {
            return run;
        }
        assert!(
            run["state"] != "failed" && start.elapsed() < Duration::from_secs(60),
            "run {run_id} did not succeed: {run:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Triggers through the page form with a bearer token (no CSRF needed); returns the run id.
fn trigger_form(base: &str, token: &str, dag: &str, form: &str) -> String {
    let p = call(
        base,
        "POST",
        &format!("/dags/{dag}/trigger"),
        &Auth::Bearer(token),
        Some(form),
    );
    assert_eq!(p.status, 303, "{}", p.body);
    let location = p.header("location").unwrap();
    let id = location.split("?run=").nth(1).unwrap();
    percent_decode(id)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() + 1 {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

const CSP_PARTS: &[&str] = &[
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
];

fn assert_secure_headers(p: &Page, what: &str) {
    let csp = p
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no Content-Security-Policy"));
    for part in CSP_PARTS {
        assert!(csp.contains(part), "{what}: CSP {csp} lacks {part}");
    }
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(
        p.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(p.header("referrer-policy"), Some("same-origin"), "{what}");
    // Our own markup needs no inline script or style, so the CSP costs nothing.
    assert!(
        !p.body.contains("<script>") && !p.body.contains(" style="),
        "{what}: inline script or style in:\n{}",
        p.body
    );
}

/// Opens the login form as a browser does: its cookie (as a Cookie header) and its CSRF token.
pub(crate) fn login_form(base: &str) -> (String, String) {
    let form = call(base, "GET", "/login", &Auth::None, None);
    assert_eq!(form.status, 200);
    let cookie = form
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("flow_login="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, form.csrf())
}

/// Logs in through the form as a browser does; returns the session's Cookie header and CSRF token.
pub(crate) fn login(base: &str, token: &str) -> (String, String) {
    let (login_cookie, form_csrf) = login_form(base);
    let done = call(
        base,
        "POST",
        "/login",
        &Auth::Cookie(&login_cookie),
        Some(&format!("csrf={form_csrf}&next=%2F&token={}", enc(token))),
    );
    assert_eq!(done.status, 303, "{}", done.body);
    assert_eq!(done.header("location"), Some("/"));
    let session = done
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("flow_session="))
        .expect("no session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(
            session.contains(attr),
            "session cookie {session} lacks {attr}"
        );
    }
    let cookie = session.split(';').next().unwrap().to_string();
    let list = call(base, "GET", "/", &Auth::Cookie(&cookie), None);
    assert_eq!(list.status, 200, "{}", list.body);
    let csrf = list.csrf();
    (cookie, csrf)
}

#[test]
fn pages_login_csrf_roles_headers_and_escaping() {
    for db in [Db::Sqlite, Db::Postgres] {
        if let Some(env) = page_env(db) {
            pages_on(&env);
        }
    }
}

fn pages_on(env: &Env) {
    let server = Server::start(env, "standalone");
    let base = server.base.clone();
    let admin = admin_token(env);
    let viewer = token(env, "looker", "viewer");

    // Anonymous: every page redirects to the login form (303), which keeps where it came from.
    let anon = call(&base, "GET", "/dags/demo", &Auth::None, None);
    assert_eq!(anon.status, 303);
    assert_eq!(anon.header("location"), Some("/login?next=%2Fdags%2Fdemo"));
    assert_secure_headers(&anon, "the redirect");
    let form = call(&base, "GET", "/login", &Auth::None, None);
    assert_secure_headers(&form, "the login form");
    // A login form posted without its cookie (from another site) is refused.
    let forged = call(
        &base,
        "POST",
        "/login",
        &Auth::None,
        Some(&format!("csrf={}&token={}", form.csrf(), enc(&admin))),
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    // A wrong token shows the form again with the reason.
    let cookie = form.cookies()[0].split(';').next().unwrap().to_string();
    let wrong = call(
        &base,
        "POST",
        "/login",
        &Auth::Cookie(&cookie),
        Some(&format!("csrf={}&token=flow_nope", form.csrf())),
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("unknown token"), "{}", wrong.body);

    let (session, csrf) = login(&base, &admin);
    let as_admin = Auth::Cookie(&session);

    // A run, through the API, to have a run page and a task page.
    let run_id = trigger_form(&base, &admin, "demo", "p_n=7&p_name=http");
    wait_success(&base, &admin, &run_id);
    let xss_run = trigger_form(&base, &admin, "xss", "");
    wait_success(&base, &admin, &xss_run);
    let fan_run = trigger_form(&base, &admin, "fan", "");
    wait_success(&base, &admin, &fan_run);
    let run_path = format!("/runs/{}", enc(&run_id));
    let task_path = format!("{run_path}/tasks/a");

    // Every page: 200 with the headers, for a session and for a bearer token alike.
    let pages = [
        "/".to_string(),
        "/?tag=ml&q=demo".to_string(),
        "/dags/demo".to_string(),
        format!("/dags/demo?run={}", enc(&run_id)),
        run_path.clone(),
        task_path.clone(),
        format!("{task_path}?try=1"),
    ];
    for path in &pages {
        for auth in [&as_admin, &Auth::Bearer(&admin), &Auth::Bearer(&viewer)] {
            let p = call(&base, "GET", path, auth, None);
            assert_eq!(p.status, 200, "{path}: {}", p.body);
            assert_secure_headers(&p, path);
            assert!(
                p.header("content-type").unwrap().starts_with("text/html"),
                "{path}"
            );
        }
    }
    let task_page = call(&base, "GET", &task_path, &as_admin, None);
    assert!(
        task_page.body.contains("hello http 7"),
        "{}",
        task_page.body
    );
    assert!(
        task_page.body.contains("echo hello &#39;http&#39; 7"),
        "rendered command, the string param quoted: {}",
        task_page.body
    );
    let tail = call(
        &base,
        "GET",
        &format!("{task_path}/log?try=1&offset=0"),
        &as_admin,
        None,
    );
    assert_eq!(tail.status, 200);
    let chunk: Json = serde_json::from_str(&tail.body).unwrap();
    assert!(chunk["content"].as_str().unwrap().contains("hello http 7"));
    assert_eq!(chunk["complete"], true);
    // A mapped task is one grid cell with its count; an instance's page masks the secret.
    let fan = call(&base, "GET", "/dags/fan", &as_admin, None);
    assert!(
        fan.body.contains("cell mapped s-success") && fan.body.contains("3 success"),
        "{}",
        fan.body
    );
    let fan_task = call(
        &base,
        "GET",
        &format!("/runs/{}/tasks/fan?map_index=1", enc(&fan_run)),
        &as_admin,
        None,
    );
    assert_eq!(fan_task.status, 200, "{}", fan_task.body);
    assert!(
        fan_task.body.contains("item 2 token ***"),
        "{}",
        fan_task.body
    );
    assert!(!fan_task.body.contains(SECRET), "{}", fan_task.body);
    let fan_run_page = call(
        &base,
        "GET",
        &format!("/runs/{}", enc(&fan_run)),
        &as_admin,
        None,
    );
    assert!(
        fan_run_page.body.contains("fan[2]"),
        "{}",
        fan_run_page.body
    );
    let list = call(&base, "GET", "/", &as_admin, None);
    assert!(list.body.contains("id=\"import-errors\""), "no banner");
    assert!(list.body.contains("broken.yaml:3:"), "{}", list.body);
    let css = call(&base, "GET", "/static/flow.css", &Auth::None, None);
    assert_eq!(css.status, 200);
    assert!(
        css.header("cache-control")
            .unwrap()
            .contains("max-age=31536000")
    );

    // Bad input: HTML 404 and 400 pages; the API keeps its JSON 404.
    for (path, status) in [
        ("/dags/nope".to_string(), 404),
        ("/runs/nope".to_string(), 404),
        ("/runs/nope/tasks/a".to_string(), 404),
        (format!("{run_path}/tasks/zz"), 404),
        (format!("{task_path}?try=9"), 404),
        (format!("{task_path}?try=abc"), 400),
        ("/dags/demo?before=nope".to_string(), 400),
        ("/dags/demo?run=nope".to_string(), 404),
        ("/no/such/page".to_string(), 404),
    ] {
        let p = call(&base, "GET", &path, &as_admin, None);
        assert_eq!(p.status, status, "{path}: {}", p.body);
        assert!(p.header("content-type").unwrap().starts_with("text/html"));
        assert_secure_headers(&p, &path);
    }
    let api404 = call(&base, "GET", "/api/v1/nope", &Auth::Bearer(&admin), None);
    assert_eq!(api404.status, 404);
    assert!(api404.body.starts_with("{\"error\""), "{}", api404.body);

    // Keyset pagination: the page before the newest run does not show it.
    let older = call(
        &base,
        "GET",
        &format!("/dags/demo?before={}", enc(&run_id)),
        &as_admin,
        None,
    );
    assert_eq!(older.status, 200);
    assert!(!older.body.contains(&format!("?run={}", enc(&run_id))));

    // GET never changes state: every page and every action path answered GET, then the same
    // runs, states and pause flag as before.
    let before_runs = api_json(&base, "/api/v1/runs", &admin);
    let before_dag = api_json(&base, "/api/v1/dags/demo", &admin);
    for path in [
        "/dags/demo/pause?paused=true".to_string(),
        "/dags/demo/trigger?p_n=3".to_string(),
        format!("{task_path}/clear?downstream=true"),
        format!("{task_path}/mark?state=failed"),
        "/logout".to_string(),
    ] {
        let p = call(&base, "GET", &path, &as_admin, None);
        assert_eq!(p.status, 405, "GET {path}: {}", p.body);
    }
    for path in &pages {
        call(&base, "GET", path, &as_admin, None);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(api_json(&base, "/api/v1/runs", &admin), before_runs);
    assert_eq!(api_json(&base, "/api/v1/dags/demo", &admin), before_dag);

    // CSRF: a session's POST without the token, or with another, is refused.
    for body in ["paused=true", "paused=true&csrf=0000", "paused=true&csrf="] {
        let p = call(&base, "POST", "/dags/demo/pause", &as_admin, Some(body));
        assert_eq!(p.status, 403, "{body}: {}", p.body);
        assert_secure_headers(&p, "403");
    }
    let clear_nocsrf = call(
        &base,
        "POST",
        &format!("{task_path}/clear"),
        &as_admin,
        Some(""),
    );
    assert_eq!(clear_nocsrf.status, 403);
    let trigger_nocsrf = call(
        &base,
        "POST",
        "/dags/demo/trigger",
        &as_admin,
        Some("p_n=2"),
    );
    assert_eq!(trigger_nocsrf.status, 403);
    assert_eq!(api_json(&base, "/api/v1/runs", &admin), before_runs);
    // With it: done, then back to where the form was.
    let paused = call(
        &base,
        "POST",
        "/dags/demo/pause",
        &as_admin,
        Some(&format!("paused=true&back=dag&csrf={csrf}")),
    );
    assert_eq!(paused.status, 303, "{}", paused.body);
    assert_eq!(paused.header("location"), Some("/dags/demo"));
    assert_eq!(api_json(&base, "/api/v1/dags/demo", &admin)["paused"], true);
    let unpaused = call(
        &base,
        "POST",
        "/dags/demo/pause",
        &as_admin,
        Some(&format!("paused=false&csrf={csrf}")),
    );
    assert_eq!(unpaused.status, 303);
    assert_eq!(
        api_json(&base, "/api/v1/dags/demo", &admin)["paused"],
        false
    );

    // A form that does not fit, or a path that does not decode, is the HTML 400 page.
    let unfit = call(
        &base,
        "POST",
        "/dags/demo/pause",
        &as_admin,
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(unfit.status, 400, "{}", unfit.body);
    assert!(
        unfit
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let undecodable = call(&base, "GET", "/dags/%FF", &as_admin, None);
    assert_eq!(undecodable.status, 400, "{}", undecodable.body);
    assert!(
        undecodable
            .header("content-type")
            .unwrap()
            .starts_with("text/html")
    );

    // A viewer sees everything but no action, and every action POST is 403.
    let seen = call(&base, "GET", &run_path, &Auth::Bearer(&viewer), None);
    assert!(!seen.body.contains("clear-form") && !seen.body.contains("mark-form"));
    let seen = call(&base, "GET", "/dags/demo", &Auth::Bearer(&viewer), None);
    assert!(!seen.body.contains("trigger-form") && !seen.body.contains("pause-form"));
    let (viewer_session, viewer_csrf) = login(&base, &viewer);
    for (path, body) in [
        ("/dags/demo/pause".to_string(), "paused=true"),
        ("/dags/demo/trigger".to_string(), "p_n=2"),
        (format!("{task_path}/clear"), "downstream=true"),
        (format!("{task_path}/mark"), "state=failed"),
    ] {
        let p = call(&base, "POST", &path, &Auth::Bearer(&viewer), Some(body));
        assert_eq!(p.status, 403, "viewer POST {path}: {}", p.body);
        let p = call(
            &base,
            "POST",
            &path,
            &Auth::Cookie(&viewer_session),
            Some(&format!("{body}&csrf={viewer_csrf}")),
        );
        assert_eq!(p.status, 403, "viewer session POST {path}: {}", p.body);
    }
    assert_eq!(api_json(&base, "/api/v1/runs", &admin), before_runs);

    // The trigger form validates like the API, and shows the error by its field.
    let bad = call(
        &base,
        "POST",
        "/dags/demo/trigger",
        &as_admin,
        Some(&format!("csrf={csrf}&p_n=seven")),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("id=\"error-p_n\""), "{}", bad.body);
    assert!(
        bad.body.contains("value=\"seven\""),
        "the form keeps what was typed"
    );
    let undeclared = call(
        &base,
        "POST",
        "/dags/demo/trigger",
        &as_admin,
        Some(&format!("csrf={csrf}&p_zz=1")),
    );
    assert_eq!(undeclared.status, 400);
    assert_eq!(api_json(&base, "/api/v1/runs", &admin), before_runs);

    // Clear through the run page's form: a second try of a.
    let cleared = call(
        &base,
        "POST",
        &format!("{task_path}/clear"),
        &as_admin,
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(cleared.status, 303, "{}", cleared.body);
    let start = Instant::now();
    loop {
        let run = api_json(&base, &format!("/api/v1/runs/{}", enc(&run_id)), &admin);
        if run["state"] == "success" && task(&run, "a", None)["tries"] == 2 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{run:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let marked = call(
        &base,
        "POST",
        &format!("{run_path}/tasks/d/mark"),
        &as_admin,
        Some(&format!("csrf={csrf}&state=failed")),
    );
    assert_eq!(marked.status, 303, "{}", marked.body);
    let run = api_json(&base, &format!("/api/v1/runs/{}", enc(&run_id)), &admin);
    assert_eq!(task(&run, "d", None)["state"], "failed");

    // Everything a DAG author or user wrote is escaped in the raw HTML.
    let xss_run_path = format!("/runs/{}", enc(&xss_run));
    for path in [
        "/".to_string(),
        "/?tag=%3Cimg%20src%3Dx%20onerror%3Dwindow.__xss%3D1%3E".to_string(),
        "/dags/xss".to_string(),
        xss_run_path.clone(),
        format!("{xss_run_path}/tasks/t"),
    ] {
        let p = call(&base, "GET", &path, &as_admin, None);
        assert_eq!(p.status, 200, "{path}");
        for raw in ["<script>window", "<img src=x", "onerror=window.__xss=1>"] {
            assert!(
                !p.body.contains(raw),
                "{path}: raw {raw:?} in the page:\n{}",
                p.body
            );
        }
        assert!(
            p.body
                .contains("&#60;script&#62;window.__xss=1&#60;/script&#62;")
                || p.body
                    .contains("&#60;img src=x onerror=window.__xss=1&#62;"),
            "{path}: the hostile text is not shown escaped:\n{}",
            p.body
        );
    }

    // Logout ends the session: the cookie no longer opens a page.
    let out = call(
        &base,
        "POST",
        "/logout",
        &as_admin,
        Some(&format!("csrf={csrf}")),
    );
    assert_eq!(out.status, 303);
    let after = call(&base, "GET", "/", &as_admin, None);
    assert_eq!(after.status, 303);
    server.stop();
}

/// Param rules (issue 23) shape the trigger form: an `enum` is a list to pick from, bounds and
/// a pattern are the fields' attributes, and what breaks a rule is refused by its field.
#[test]
fn the_trigger_form_reflects_param_rules() {
    each_db(|env, db| {
        env.dag(
            "ruled.yaml",
            "id: ruled\nparams:\n  region: { type: string, enum: [eu, us], default: us }\n  rate: { type: number, minimum: 0, maximum: 1, default: 0.5 }\n  model: { type: string, pattern: '^[a-z_]+$', default: churn }\ntasks:\n  t: { operator: shell, command: echo }\n",
        );
        let server = Server::start(&env, "standalone");
        let admin = admin_token(&env);
        let page = call(
            &server.base,
            "GET",
            "/dags/ruled",
            &Auth::Bearer(&admin),
            None,
        );
        assert_eq!(page.status, 200, "{db:?}: {}", page.body);
        let body = &page.body;
        assert!(
            body.contains(r#"<select id="p_region" name="p_region">"#),
            "{db:?}: {body}"
        );
        assert!(
            body.contains(r#"<option value="us" selected>us</option>"#),
            "{body}"
        );
        assert!(body.contains(r#"<option value="eu">eu</option>"#), "{body}");
        assert!(body.contains(r#"min="0" max="1""#), "{body}");
        assert!(body.contains(r#"pattern=".*(?:^[a-z_]+$).*""#), "{body}");
        for (form, field) in [
            ("p_region=fr", "p_region"),
            ("p_rate=2", "p_rate"),
            ("p_model=Bad%21", "p_model"),
        ] {
            let refused = call(
                &server.base,
                "POST",
                "/dags/ruled/trigger",
                &Auth::Bearer(&admin),
                Some(form),
            );
            assert_eq!(refused.status, 400, "{db:?} {form}: {}", refused.body);
            assert!(
                refused.body.contains(&format!("id=\"error-{field}\"")),
                "{db:?} {form}: {}",
                refused.body
            );
        }
        let run_id = trigger_form(&server.base, &admin, "ruled", "p_region=eu&p_rate=1");
        let run = wait_success(&server.base, &admin, &run_id);
        assert_eq!(run["params"]["region"], "eu", "{run:#}");
    });
}
