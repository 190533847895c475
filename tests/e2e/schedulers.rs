//! Several schedulers at once on one PostgreSQL (issue 21, point 2): each run's tasks run once,
//! `max_active_runs` holds across the processes, and a run's end posts its webhook once.
//!
//! Two processes rarely start a run, or end one, in the same millisecond, so this test is the
//! whole system's check, not the race's: the store's contract tests run the races themselves
//! (`concurrent_starts_never_pass_max_active_runs`, the `finished` answer of `apply`).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::*;

/// An HTTP receiver that answers every request 200 and keeps the bodies, until the test ends.
pub(crate) fn counting_receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Ok((_, body)) = read_http_request(&stream) {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, bodies)
}

/// `flow scheduler` with a home of its own, as on another host, on the test's database and
/// DAGs folder.
pub(crate) fn spawn_scheduler(env: &Env, home: &str) -> Child {
    let home = env.path(home);
    std::fs::create_dir_all(&home).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path("spawned.log"))
        .unwrap();
    env.command(&["scheduler"])
        .env("FLOW_HOME", &home)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Start and end times (ns) per run, from the ledger the tasks appended to.
fn ledger_spans(path: &std::path::Path) -> BTreeMap<String, Vec<(String, u128)>> {
    let mut spans: BTreeMap<String, Vec<(String, u128)>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        let mut parts = line.split_whitespace();
        let (Some(run), Some(what), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("a torn ledger line: {line:?}");
        };
        spans
            .entry(run.to_string())
            .or_default()
            .push((what.to_string(), at.parse().unwrap()));
    }
    spans
}

#[test]
fn two_schedulers_keep_max_active_runs_and_post_each_end_once() {
    let Some(env) = Env::new(Db::Postgres) else {
        return;
    };
    let (port, posts) = counting_receiver();
    let ledger = env.path("ledger");
    env.dag(
        "capped.yaml",
        &format!(
            "id: capped\nmax_active_runs: 1\non_success: {{ webhook: 'http://127.0.0.1:{port}/hook' }}\n\
             tasks:\n  work:\n    operator: shell\n    env: {{ RUN: '{{{{ run_id }}}}' }}\n    \
             command: 'echo \"$RUN start $(date +%s%N)\" >> {l}; sleep 0.3; echo \"$RUN end $(date +%s%N)\" >> {l}'\n",
            l = ledger.display()
        ),
    );
    let first = spawn_scheduler(&env, "host-a");
    let second = spawn_scheduler(&env, "host-b");
    let runs: Vec<String> = (0..6)
        .map(|_| env.flow_ok(&["trigger", "capped"], 0).trim().to_string())
        .collect();
    for run in &runs {
        let ended = env.wait_run(run, Duration::from_secs(90));
        assert_eq!(ended["state"], "success", "{ended:#}");
    }

    // Every run's task ran once, and no two runs overlapped: max_active_runs is 1 across both
    // schedulers.
    let spans = ledger_spans(&ledger);
    assert_eq!(
        spans.keys().cloned().collect::<Vec<_>>(),
        {
            let mut sorted = runs.clone();
            sorted.sort();
            sorted
        },
        "a run missing from the ledger, or one nobody triggered"
    );
    let mut intervals: Vec<(u128, u128, &str)> = spans
        .iter()
        .map(|(run, marks)| {
            let kinds: Vec<&str> = marks.iter().map(|(w, _)| w.as_str()).collect();
            assert_eq!(kinds, ["start", "end"], "run {run} ran its task {marks:?}");
            (marks[0].1, marks[1].1, run.as_str())
        })
        .collect();
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "runs {} and {} ran at the same time",
            pair[0].2,
            pair[1].2
        );
    }

    // Each run's end posted its webhook once, whichever scheduler ended it.
    let start = Instant::now();
    while posts.lock().unwrap().len() < runs.len() && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut posted: Vec<String> = posts
        .lock()
        .unwrap()
        .iter()
        .map(|b| {
            let body: Json = serde_json::from_str(b).unwrap();
            body["run_id"].as_str().unwrap().to_string()
        })
        .collect();
    posted.sort();
    let mut expected = runs.clone();
    expected.sort();
    assert_eq!(posted, expected, "one webhook per run end");

    stop_gracefully(first, "the first scheduler");
    stop_gracefully(second, "the second scheduler");
}
