//! Observability (issue 22) checked by real receivers: a run's trace arrives at an OTLP/HTTP
//! receiver (tests/testbed/otlp_receiver.py, decoding with the official opentelemetry-proto
//! classes) with one span for the run and one per try, linked across processes; a task's
//! process gets the try's context as `TRACEPARENT`; `--log-format json` writes one JSON object
//! per line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::*;
use crate::workers::spawn_worker_env;

/// The receiver: None outside CI when the test bed is not installed (CI=true fails instead).
struct Receiver {
    child: Child,
    port: u16,
    out: std::path::PathBuf,
}

impl Receiver {
    fn start(env: &Env) -> Option<Receiver> {
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
    fn vars(&self) -> [(&'static str, String); 2] {
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

    /// Waits until the trace holds a span named `name` from `service`.
    fn wait_span(&self, trace_id: &str, name: &str, service: &str) -> Json {
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

const DAG: &str = "id: traced\ntasks:\n  extract: { operator: shell, command: 'echo extracting' }\n  load: { operator: shell, command: 'printf \"{\\\"traceparent\\\": \\\"%s\\\"}\" \"$TRACEPARENT\" > \"$FLOW_OUTPUT\"', depends_on: [extract] }\n";

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
        let extract = receiver.wait_span(trace_id, "extract", "flow-worker");
        let load = receiver.wait_span(trace_id, "load", "flow-worker");
        check_try(&extract, &run_span, "extract", "flow-worker");
        check_try(&load, &run_span, "load", "flow-worker");
        assert!(
            load["start_ns"].as_u64() >= extract["end_ns"].as_u64(),
            "load starts after extract ends"
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
    // An unknown format is a usage error.
    let out = env
        .command(&["--log-format", "xml", "dags", "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
