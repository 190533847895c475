//! `[logs] remote` (issue 21): a worker on "another host" (a home of its own) copies its tries'
//! logs to S3 (the emulator) while they run and whole when they end; a server whose home has no
//! log of them shows them live and finished through the API, and `flow tasks logs` prints them.

use std::time::Duration;

use crate::api_server::{Server, query, token, trigger_id};
use crate::harness::*;
use crate::workers::spawn_worker;

const SECRET: &str = "remote-log-secret-7d1e";
/// How long a log read may take to show what the test waits for.
const LIMIT: Duration = Duration::from_secs(30);

fn logs_config(endpoint: &str, bucket: &str) -> String {
    format!(
        "[logs]\nremote = \"s3://{bucket}/logs\"\nconnection = \"lake\"\nship_every = \"200ms\"\n\n{}",
        s3_connection("lake", endpoint)
    )
}

#[test]
fn a_server_elsewhere_shows_a_workers_log_live_and_finished() {
    let Some((endpoint, bucket)) = s3_bucket("remote-logs") else {
        return;
    };
    let Some(mut env) = Env::new(Db::Postgres) else {
        return;
    };
    env.secrets
        .push(("LAKE_KEY".into(), "lake-secret-9f2c".into()));
    env.secrets.push(("TALK_TOKEN".into(), SECRET.into()));
    let gate = env.path("gate");
    env.dag(
        "talk.yaml",
        &format!(
            "id: talk\ntasks:\n  talk:\n    operator: shell\n    env: {{ TOKEN: '{{{{ secrets.TALK_TOKEN }}}}' }}\n    \
             command: 'echo \"first line $TOKEN\"; while [ ! -e {gate} ]; do sleep 0.1; done; echo second line'\n",
            gate = gate.display()
        ),
    );
    env.config(&logs_config(&endpoint, &bucket));
    let worker_home = env.path("worker-home");
    std::fs::create_dir_all(&worker_home).unwrap();
    std::fs::write(
        worker_home.join("flow.toml"),
        logs_config(&endpoint, &bucket),
    )
    .unwrap();

    let scheduler = env.spawn(&["scheduler", "--no-tasks"]);
    let worker = spawn_worker(&env, &worker_home);
    let server = Server::start(&env, "server");
    let admin = token(&env, "remote-logs", "admin");
    let run_id = trigger_id(&server, &admin, "talk");
    let path = format!("/api/v1/runs/{}/tasks/talk/logs", query(&run_id));

    // Live: the first line reaches the server from S3 while the task still waits.
    let live = server.get_until(&format!("{path}?offset=0"), &admin, LIMIT, |c| {
        c["content"].as_str().unwrap_or("").contains("first line")
    });
    assert_eq!(live["complete"], false, "{live:#}");
    let content = live["content"].as_str().unwrap();
    assert!(content.contains("first line ***"), "masked: {content}");
    assert!(!content.contains("second line"), "{content}");
    let prefix = format!("logs/dag_id=talk/run_id={run_id}/task_id=talk/attempt=1.log");
    let keys = s3_keys(&endpoint, &bucket, &query(&prefix));
    assert!(
        keys.iter().any(|k| k.contains(".parts/")),
        "parts while running: {keys:?}"
    );

    // Finished: the rest comes from where the live read ended, and the parts are gone.
    std::fs::write(&gate, "").unwrap();
    let offset = live["next_offset"].as_u64().unwrap();
    let rest = server.get_until(&format!("{path}?offset={offset}"), &admin, LIMIT, |c| {
        c["complete"] == true
    });
    let rest_text = rest["content"].as_str().unwrap();
    assert!(rest_text.starts_with("second line\n"), "{rest:#}");
    assert!(rest_text.contains("flow: try succeeded"), "{rest:#}");
    let keys = s3_keys(&endpoint, &bucket, &query(&prefix));
    assert_eq!(keys, vec![prefix.clone()], "the whole log, no parts left");
    let whole = String::from_utf8(s3_get(&endpoint, &bucket, &query(&prefix))).unwrap();
    assert!(whole.contains("first line ***\n"), "{whole}");
    assert!(!whole.contains(SECRET), "a secret reached S3: {whole}");

    // The server's home has no log file: everything above came from S3. The CLI reads it too.
    assert!(
        !env.home().join("logs").exists(),
        "the server's home has logs"
    );
    let printed = env.flow_ok(&["tasks", "logs", &run_id, "talk"], 0);
    assert!(
        printed.contains("first line ***") && printed.contains("second line"),
        "{printed}"
    );

    server.stop();
    stop_gracefully(worker, "the worker");
    stop_gracefully(scheduler, "the scheduler");
}
