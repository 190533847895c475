//! Observability (issue 22) checked by real receivers: a run's trace arrives at an OTLP/HTTP
//! receiver (tests/testbed/otlp_receiver.py, decoding with the official opentelemetry-proto
//! classes) with one span for the run and one per try, linked across processes; a task's
//! process gets the try's context as `TRACEPARENT`; `--log-format json` writes one JSON object
//! per line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::api_server::{Server, token};
use crate::harness::*;
use crate::workers::spawn_worker_env;

/// The receiver: None outside CI when the test bed is not installed (CI=true fails instead).
pub(crate) struct Receiver {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    pub(crate) fn start(env: &Env) -> Option<Receiver> {
        let Ok(python) = std::env::var("FLOW_TEST_OTEL_PYTHON") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "FLOW_TEST_OTEL_PYTHON is not set: the OTLP receiver's venv is missing, and \
                 CI=true requires it (scripts/testbed.sh installs it)"
            );
            eprintln!("note: no OTLP receiver (run the tests with ./scripts/test.sh); skipping");
            return None;
        };
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/testbed/otlp_receiver.py"
        );
        let out = env.path("otlp.jsonl");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the OTLP receiver starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = first
            .trim()
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the receiver said {first:?}, not its port"));
        Some(Receiver { child, port, out })
    }

    /// The variables that send a process's traces here, flushed every 100 ms.
    pub(crate) fn vars(&self) -> [(&'static str, String); 2] {
        [
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ]
    }

    fn spans(&self) -> Vec<Json> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Json>(l).unwrap())
            .filter(|l| l["signal"] == "span")
            .collect()
    }

    /// The data point of metric `name` whose attributes include `labels`, once it arrived.
    pub(crate) fn wait_point(&self, name: &str, labels: &[(&str, &str)]) -> Json {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = std::fs::read_to_string(&self.out).unwrap_or_default();
            let found = lines
                .lines()
                .map(|l| serde_json::from_str::<Json>(l).unwrap())
                .rfind(|p| {
                    p["signal"] == "metric"
                        && p["name"] == name
                        && labels.iter().all(|(k, v)| p["attributes"][*k] == *v)
                });
            if let Some(p) = found {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "no metric {name} {labels:?} arrived: {lines}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the trace holds a span named `name` from `service`.
    pub(crate) fn wait_span(&self, trace_id: &str, name: &str, service: &str) -> Json {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.spans().into_iter().find(|s| {
                s["trace_id"] == trace_id && s["name"] == name && s["service"] == service
            });
            if let Some(s) = found {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span {name} from {service} in trace {trace_id}: {:#?}",
                self.spans()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const DAG: &str = "id: traced\ntasks:\n  extract: { operator: shell, command: 'echo extracting' }\n  load: { operator: shell, command: 'printf \"{\\\"traceparent\\\": \\\"%s\\\"}\" \"$TRACEPARENT\" > \"$FLOW_OUTPUT\"', depends_on: [extract] }\n  count: { operator: sql, query: 'SELECT 42 AS answer', depends_on: [load] }\n";

fn check_try(try_span: &Json, run_span: &Json, task: &str, service: &str) {
    assert_eq!(
        try_span["parent_span_id"], run_span["span_id"],
        "{try_span:#}"
    );
    assert_eq!(try_span["service"], service);
    let a = &try_span["attributes"];
    assert_eq!(a["dag_id"], "traced", "{try_span:#}");
    assert_eq!(a["task_id"], task);
    assert_eq!(a["try_number"], 1);
    assert_eq!(a["map_index"], -1);
    assert_eq!(a["operator"], "shell");
    assert_eq!(a["pool"], "default");
    assert_eq!(a["state"], "success");
    assert!(a["host"].as_str().is_some_and(|h| !h.is_empty()));
}

/// A scheduler that plans and a worker that runs, each its own process (and service): the
/// worker's try spans hang under the run span the scheduler sends when the run ends.
#[test]
fn a_runs_trace_spans_a_scheduler_and_a_worker() {
    each_db(|env, db| {
        let Some(receiver) = Receiver::start(&env) else {
            return;
        };
        env.dag("traced.yaml", DAG);
        let log = std::fs::File::create(env.path("scheduler.log")).unwrap();
        let mut scheduler = env.command(&["scheduler", "--no-tasks"]);
        scheduler
            .envs(receiver.vars())
            .stdout(Stdio::null())
            .stderr(log);
        let scheduler = scheduler.spawn().unwrap();
        let worker_home = env.path("worker-home");
        std::fs::create_dir_all(&worker_home).unwrap();
        let worker = spawn_worker_env(&env, &worker_home, &receiver.vars());

        let run_id = env.flow_ok(&["trigger", "traced", "--wait"], 0);
        let run = env.flow_json(&["runs", "show", run_id.trim(), "--json"], 0);
        assert_eq!(run["state"], "success", "{db:?}: {run:#}");
        let trace_id = run["trace_id"]
            .as_str()
            .expect("the run JSON names its trace");
        assert_eq!(trace_id.len(), 32, "{trace_id}");

        let run_span = receiver.wait_span(trace_id, "traced", "flow-scheduler");
        assert_eq!(run_span["parent_span_id"], "", "the run's span is the root");
        assert_eq!(run_span["attributes"]["run_id"], run["run_id"]);
        assert_eq!(run_span["attributes"]["state"], "success");
        // Each pass with work is a root span of its own.
        let pass = receiver
            .spans()
            .into_iter()
            .find(|s| s["name"] == "scheduler.pass" && s["service"] == "flow-scheduler");
        let pass = pass.expect("a scheduler.pass span from the scheduler");
        assert_eq!(pass["parent_span_id"], "", "{pass:#}");
        assert!(pass["attributes"]["runs"].is_i64(), "{pass:#}");
        let extract = receiver.wait_span(trace_id, "extract", "flow-worker");
        let load = receiver.wait_span(trace_id, "load", "flow-worker");
        check_try(&extract, &run_span, "extract", "flow-worker");
        check_try(&load, &run_span, "load", "flow-worker");
        assert!(
            load["start_ns"].as_u64() >= extract["end_ns"].as_u64(),
            "load starts after extract ends"
        );

        // DataFusion's phases are children of the sql try's span.
        let count = receiver.wait_span(trace_id, "count", "flow-worker");
        assert_eq!(count["parent_span_id"], run_span["span_id"]);
        assert_eq!(count["attributes"]["operator"], "sql");
        let plan = receiver.wait_span(trace_id, "datafusion.plan", "flow-worker");
        let execute = receiver.wait_span(trace_id, "datafusion.execute", "flow-worker");
        assert_eq!(plan["parent_span_id"], count["span_id"], "{plan:#}");
        assert_eq!(execute["parent_span_id"], count["span_id"], "{execute:#}");
        assert_eq!(execute["attributes"]["rows"], 1, "{execute:#}");
        assert!(
            execute["attributes"]["bytes"].as_u64() > Some(0),
            "{execute:#}"
        );

        // The task's process continues the try's span.
        let output = &task(&run, "load", None)["output"];
        assert_eq!(
            output["traceparent"],
            format!("00-{trace_id}-{}-01", load["span_id"].as_str().unwrap()),
            "{output:#}"
        );
        // The log header names the trace, so a log and its trace find each other.
        let log = env.flow_ok(&["tasks", "logs", run_id.trim(), "extract"], 0);
        assert!(
            log.lines()
                .next()
                .unwrap()
                .ends_with(&format!(", trace {trace_id}")),
            "{log}"
        );
        stop_gracefully(worker, "the worker");
        stop_gracefully(scheduler, "the scheduler");
    });
}

/// `--log-format json`: every line on stderr is one JSON object a log shipper can parse.
#[test]
fn json_logs_are_one_object_a_line() {
    let Some(env) = Env::new(Db::Sqlite) else {
        return;
    };
    env.dag("traced.yaml", DAG);
    env.dag(
        "broken.yaml",
        "id: broken\ntasks:\n  a: { operator: shell, command: 'exit 3' }\n",
    );
    let out = env
        .command(&["--log-format", "json", "run", "broken"])
        .env("FLOW_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logged: Vec<Json> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!logged.is_empty(), "no JSON lines in {stderr}");
    for line in &logged {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["message"].is_string(), "{line}");
    }
    assert!(
        logged
            .iter()
            .any(|l| l["message"].as_str().unwrap().contains("ended failed")),
        "{stderr}"
    );
    // The same setting from the environment, as a container sets it.
    let out = env
        .command(&["run", "traced"])
        .env("FLOW_LOG", "info")
        .env("FLOW_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with('{') && l.contains("ended success")),
        "{stderr}"
    );
    assert!(
        !stderr
            .lines()
            .any(|l| !l.starts_with('{') && l.contains(" INFO ")),
        "a text log line: {stderr}"
    );
    // Text lines name no scheduler pass: its span is for traces only.
    let out = env
        .command(&["run", "traced"])
        .env("FLOW_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ended success"), "{stderr}");
    assert!(!stderr.contains("scheduler.pass"), "{stderr}");
    // An unknown format is a usage error.
    let out = env
        .command(&["--log-format", "xml", "dags", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The Prometheus text of `GET /metrics`, parsed by prometheus-client's own parser: a sample
/// per line as `[name, labels, value]`.
fn scrape(server: &Server, token: &str) -> Vec<(String, Json, f64)> {
    let text = ureq::get(format!("{}/metrics", server.base))
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .expect("GET /metrics answers 200")
        .body_mut()
        .read_to_string()
        .unwrap();
    let python = std::env::var("FLOW_TEST_OTEL_PYTHON").unwrap();
    let parse = "import json, sys\n\
        from prometheus_client.parser import text_string_to_metric_families\n\
        out = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))";
    let mut child = Command::new(python)
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus-client cannot parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Json, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    samples
}

fn sample(samples: &[(String, Json, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| *v)
}

/// `flow standalone` answers `GET /metrics` with a viewer token: its runs, tries and requests,
/// and the database's queues, in text a real Prometheus parser reads.
#[test]
fn metrics_are_prometheus_text_behind_a_token() {
    each_db(|env, db| {
        if Receiver::start(&env).is_none() {
            return;
        }
        env.dag("traced.yaml", DAG);
        env.dag(
            "stuck.yaml",
            "id: stuck\ntasks:\n  a: { operator: shell, command: 'true', pool: nowhere }\n",
        );
        env.config("[pools]\nnowhere = 0\n");
        let server = Server::start(&env, "standalone");
        let viewer = token(&env, "scraper", "viewer");
        let run_id = env.flow_ok(&["trigger", "traced", "--wait"], 0);
        let stuck = env.flow_ok(&["trigger", "stuck"], 0);
        server.wait_run(&viewer, stuck.trim(), Duration::from_secs(30), |run| {
            task(run, "a", None)["state"] == "queued"
        });

        let samples = scrape(&server, &viewer);
        let s = |name: &str, labels: &[(&str, &str)]| sample(&samples, name, labels);
        assert_eq!(
            s(
                "flow_runs_ended_total",
                &[("dag_id", "traced"), ("state", "success")]
            ),
            Some(1.0),
            "{db:?}: {samples:#?}"
        );
        assert_eq!(
            s(
                "flow_tries_ended_total",
                &[
                    ("dag_id", "traced"),
                    ("operator", "shell"),
                    ("state", "success")
                ]
            ),
            Some(2.0)
        );
        assert_eq!(
            s(
                "flow_try_duration_seconds_count",
                &[
                    ("dag_id", "traced"),
                    ("task_id", "load"),
                    ("state", "success")
                ]
            ),
            Some(1.0)
        );
        assert!(s("flow_scheduler_pass_duration_seconds_count", &[]).unwrap_or(0.0) > 0.0);
        assert!(
            s(
                "flow_scheduling_delay_seconds_count",
                &[("pool", "default")]
            )
            .unwrap_or(0.0)
                >= 2.0
        );
        // The database's activity: the stuck run waits in its empty pool.
        assert_eq!(
            s(
                "flow_runs_active",
                &[("dag_id", "stuck"), ("state", "running")]
            ),
            Some(1.0)
        );
        assert_eq!(s("flow_pool_queued", &[("pool", "nowhere")]), Some(1.0));
        assert!(
            s(
                "flow_pool_oldest_queued_age_seconds",
                &[("pool", "nowhere")]
            )
            .is_some()
        );
        // This scrape's own request is not counted yet; the polls of the stuck run are.
        assert!(
            s(
                "flow_api_request_duration_seconds_count",
                &[
                    ("route", "/api/v1/runs/{run_id}"),
                    ("method", "GET"),
                    ("status", "200")
                ]
            )
            .unwrap_or(0.0)
                > 0.0,
            "{samples:#?}"
        );
        let run = env.flow_json(&["runs", "show", run_id.trim(), "--json"], 0);
        assert_eq!(run["state"], "success", "{run:#}");

        // No token, no metrics.
        let anonymous = ureq::get(format!("{}/metrics", server.base))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .unwrap();
        assert_eq!(anonymous.status().as_u16(), 401);
        server.stop();
    });
}

/// The Grafana dashboard (deploy/grafana) queries only metrics flow exports, as the docs list
/// them, and is a dashboard Grafana lays out: unique ids, panels within the 24-column grid,
/// every query on the dashboard's Prometheus variable.
#[test]
fn the_dashboard_queries_the_metrics_flow_exports() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dashboard: Json = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/flow-dashboard.json")).unwrap(),
    )
    .unwrap();
    let docs = std::fs::read_to_string(format!("{root}/docs/observability.md")).unwrap();
    let documented = |name: &str| {
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        docs.contains(&format!("`{base}`")) || docs.contains(&format!("`{base}`,"))
    };
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut queried = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "a duplicate id: {p}");
        let g = &p["gridPos"];
        assert!(
            g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
            "{p}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{p}");
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("flow_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.insert(name);
            }
        }
    }
    assert!(queried.len() >= 15, "{queried:?}");
    let unknown: Vec<&String> = queried.iter().filter(|n| !documented(n)).collect();
    assert!(unknown.is_empty(), "queried but not exported: {unknown:?}");
}
