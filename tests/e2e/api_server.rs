//! The `flow server` / `flow standalone` process the API tests talk to, and how they call it.

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value as Json, json};

use crate::harness::*;

/// Servers started so far, for unique log file names.
static STARTS: AtomicUsize = AtomicUsize::new(0);

/// A `flow server` or `flow standalone` process on a port the OS chose.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) base: String,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

impl Server {
    pub(crate) fn start(env: &Env, command: &str) -> Server {
        let n = STARTS.fetch_add(1, Ordering::SeqCst);
        let stdout = env.path(&format!("{command}-{n}.out"));
        let stderr = env.path(&format!("{command}-{n}.err"));
        let child = env
            .command(&[command, "--bind", "127.0.0.1:0"])
            .env("FLOW_LOG", "info")
            .stdout(Stdio::from(std::fs::File::create(&stdout).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .unwrap();
        let mut server = Server {
            child: Some(child),
            base: String::new(),
            stdout,
            stderr,
        };
        let start = Instant::now();
        let marker = format!("flow {command}: listening on http://");
        loop {
            let log = std::fs::read_to_string(&server.stderr).unwrap_or_default();
            if let Some(rest) = log.split(&marker).nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                server.base = format!("http://{addr}");
                return server;
            }
            if let Some(status) = server.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("flow {command} exited with {status} before listening:\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "flow {command} did not listen within 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn printed(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap()
    }

    /// SIGTERM; the process must exit 0 within 20 s.
    pub(crate) fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert_eq!(status.code(), Some(0), "not a clean shutdown");
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "SIGTERM ignored");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Json>,
    ) -> Answer {
        self.call_with(method, path, token, body, &[])
    }

    pub(crate) fn call_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Json>,
        headers: &[(&str, &str)],
    ) -> Answer {
        request(
            &self.base,
            method,
            path,
            token,
            body.map(|b| b.to_string()),
            headers,
        )
    }

    pub(crate) fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None)
    }

    /// Polls `GET /api/v1/runs/{id}` until `done` holds; panics after `limit`.
    pub(crate) fn wait_run(
        &self,
        token: &str,
        run_id: &str,
        limit: Duration,
        done: impl Fn(&Json) -> bool,
    ) -> Json {
        self.get_until(&format!("/api/v1/runs/{run_id}"), token, limit, done)
    }

    /// Polls `GET path` (which must answer 200) until `done` holds; panics after `limit`.
    pub(crate) fn get_until(
        &self,
        path: &str,
        token: &str,
        limit: Duration,
        done: impl Fn(&Json) -> bool,
    ) -> Json {
        let start = Instant::now();
        loop {
            let body = self.get(path, token).ok();
            if done(&body) {
                return body;
            }
            assert!(
                start.elapsed() < limit,
                "GET {path} never got there: {body:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of {} ---\n{}",
                self.base,
                std::fs::read_to_string(&self.stderr).unwrap_or_default()
            );
        }
    }
}

#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Json,
    pub(crate) retry_after: Option<String>,
}

impl Answer {
    pub(crate) fn ok(self) -> Json {
        assert_eq!(self.status, 200, "{:#}", self.body);
        self.body
    }

    /// Asserts an error answer: this status, the API's error shape, and this code.
    pub(crate) fn error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "{:#}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{:#}", self.body);
        self.body["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no message: {:#}", self.body))
            .to_string()
    }
}

pub(crate) fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = ureq::http::Request::builder()
        .method(method)
        .uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("Authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut response = match body {
        Some(b) => agent
            .run(
                req.header("Content-Type", "application/json")
                    .body(b)
                    .unwrap(),
            )
            .unwrap(),
        None => agent.run(req.body(()).unwrap()).unwrap(),
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let plain = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/plain"));
    let text = response.body_mut().read_to_string().unwrap();
    // 204 No Content has no body at all; `/metrics` answers Prometheus text.
    let body = if status == 204 && text.is_empty() {
        Json::Null
    } else if plain {
        Json::String(text)
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("{method} {path}: {status} answer is not JSON ({e}): {text}")
        })
    };
    Answer {
        status,
        body,
        retry_after,
    }
}

/// A run id as a query-string value: `+` (in the id's UTC offset) would read as a space.
pub(crate) fn query(value: &str) -> String {
    value.replace('+', "%2B")
}

pub(crate) fn token(env: &Env, name: &str, role: &str) -> String {
    env.flow_ok(&["tokens", "create", name, "--role", role], 0)
        .trim()
        .to_string()
}

pub(crate) fn trigger(server: &Server, token: &str, dag: &str, body: Json) -> Answer {
    server.call(
        "POST",
        &format!("/api/v1/dags/{dag}/runs"),
        Some(token),
        Some(&body),
    )
}

/// Triggers `dag` (201) and returns the new run's id.
pub(crate) fn trigger_id(server: &Server, token: &str, dag: &str) -> String {
    let created = trigger(server, token, dag, json!({}));
    assert_eq!(created.status, 201, "{:#}", created.body);
    created.body["run_id"].as_str().unwrap().to_string()
}

pub(crate) fn state_is<'a>(states: &'a [&'a str]) -> impl Fn(&Json) -> bool + 'a {
    move |run| states.iter().any(|s| run["state"] == *s)
}
