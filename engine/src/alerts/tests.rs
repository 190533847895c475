use chrono::TimeZone;

use super::*;
use crate::state::RunType;

const YAML: &str = "id: nightly\nschedule: '@daily'\nstart_date: 2026-01-01\nsla: 2h\n\
defaults:\n  on_retry: { webhook: 'http://hooks/retry' }\n\
tasks:\n  extract: { operator: shell, command: 'true', sla: 30m }\n  \
load: { operator: shell, command: 'true', depends_on: [extract], sla: 1h, on_failure: { webhook: 'http://hooks/fail' } }\n  \
report: { operator: shell, command: 'true', depends_on: [load] }\n";

fn dag() -> Dag {
    crate::dag::testing::dag(YAML)
}

fn t(h: i64, m: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 5, 0, 0, 0).unwrap()
        + chrono::Duration::hours(h)
        + chrono::Duration::minutes(m)
}

fn run(state: RunState) -> RunRow {
    RunRow {
        run_id: "r1".into(),
        dag_id: "nightly".into(),
        dag_version: "v".into(),
        run_type: RunType::Scheduled,
        state,
        logical_date: t(-24, 0),
        data_interval_start: t(-24, 0),
        data_interval_end: t(0, 0),
        params: serde_json::json!({}),
        queued_at: t(0, 1),
        started_at: Some(t(0, 1)),
        ended_at: None,
    }
}

#[test]
fn the_sla_keys_parse_for_the_dag_and_its_tasks() {
    let d = dag();
    assert_eq!(d.sla, Some(Duration::from_secs(7200)));
    assert_eq!(
        d.task("extract").unwrap().sla,
        Some(Duration::from_secs(1800))
    );
    assert_eq!(d.task("report").unwrap().sla, None);
    // `defaults:` gives every task its on_retry; on_failure is load's own.
    for t in ["extract", "load", "report"] {
        assert_eq!(
            d.task(t).unwrap().on_retry.as_ref().unwrap().webhook,
            "http://hooks/retry"
        );
    }
    assert!(d.task("extract").unwrap().on_failure.is_none());
    assert_eq!(
        d.task("load").unwrap().on_failure.as_ref().unwrap().webhook,
        "http://hooks/fail"
    );
}

#[test]
fn a_run_misses_its_sla_only_after_the_interval_end_plus_the_sla() {
    let d = dag();
    let r = run(RunState::Running);
    assert!(run_alerts_due(&d, &r, t(2, 0), None, "http://ui").is_empty());
    let due = run_alerts_due(&d, &r, t(2, 1), None, "http://ui/");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].kind, AlertKind::SlaMissed);
    assert_eq!(due[0].task_id, None);
    assert_eq!(due[0].url, "http://ui/runs/r1");
    let m = due[0].message();
    assert_eq!(m["alert"], "sla_missed");
    assert_eq!(m["state"], "running");
    assert_eq!(m["failed_tasks"], serde_json::json!([]));
    assert!(
        m["text"].as_str().unwrap().contains("missed its SLA of 2h"),
        "{m}"
    );
    // An ended run is past alerting.
    assert!(run_alerts_due(&d, &run(RunState::Success), t(5, 0), None, "u").is_empty());
}

#[test]
fn a_run_queued_longer_than_the_threshold_is_stuck() {
    let d = dag();
    let mut r = run(RunState::Queued);
    r.data_interval_end = t(10, 0); // no SLA due
    let after = Some(Duration::from_secs(600));
    assert!(run_alerts_due(&d, &r, t(0, 11), after, "u").is_empty());
    let due = run_alerts_due(&d, &r, t(0, 12), after, "u");
    assert_eq!(
        due.iter().map(|a| a.kind).collect::<Vec<_>>(),
        [AlertKind::StuckQueued]
    );
    // A running run is not stuck, however long ago it was queued.
    r.state = RunState::Running;
    assert!(run_alerts_due(&d, &r, t(5, 0), after, "u").is_empty());
    // Nor is anything without the setting.
    r.state = RunState::Queued;
    assert!(run_alerts_due(&d, &r, t(5, 0), None, "u").is_empty());
}

#[test]
fn a_task_misses_its_sla_while_any_instance_is_not_done() {
    let d = dag();
    let r = run(RunState::Running);
    assert!(!task_sla_passed(&d, &r, t(0, 30)));
    assert!(task_sla_passed(&d, &r, t(0, 31)));
    let st = |task_id, state| TaskStateAt { task_id, state };
    // 00:31: extract (30m) is late while running; load (1h) is not due yet.
    let states = [st("extract", TaskState::Running)];
    let due = task_alerts_due(&d, &r, &states, t(0, 31), "u");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].task_id.as_deref(), Some("extract"));
    // 01:01: extract succeeded; load has no instance yet, which is late too.
    let states = [st("extract", TaskState::Success)];
    let due = task_alerts_due(&d, &r, &states, t(1, 1), "u");
    assert_eq!(
        due.iter().map(|a| a.task_id.as_deref()).collect::<Vec<_>>(),
        [Some("load")]
    );
    // A mapped task is done when every instance is.
    let states = [
        st("extract", TaskState::Success),
        st("load", TaskState::Success),
        st("load", TaskState::Skipped),
    ];
    assert!(task_alerts_due(&d, &r, &states, t(1, 1), "u").is_empty());
    let states = [
        st("extract", TaskState::Success),
        st("load", TaskState::Success),
        st("load", TaskState::Failed),
    ];
    assert_eq!(task_alerts_due(&d, &r, &states, t(1, 1), "u").len(), 1);
}

#[test]
fn a_try_alerts_its_tasks_on_retry_or_on_failure_webhook() {
    let d = dag();
    let r = run(RunState::Running);
    let retry = try_alert(
        &d,
        &r,
        "extract",
        TaskState::UpForRetry,
        "exit 1".into(),
        "u",
    );
    let (to, alert) = retry.unwrap();
    assert_eq!(to.webhook, "http://hooks/retry");
    assert_eq!(alert.message()["alert"], "task_retry");
    assert_eq!(alert.message()["failed_tasks"], serde_json::json!([]));
    // extract has no on_failure of its own.
    assert!(try_alert(&d, &r, "extract", TaskState::Failed, String::new(), "u").is_none());
    let (to, alert) = try_alert(&d, &r, "load", TaskState::Failed, "exit 2".into(), "u").unwrap();
    assert_eq!(to.webhook, "http://hooks/fail");
    let m = alert.message();
    assert_eq!(m["failed_tasks"], serde_json::json!(["load"]));
    assert_eq!(m["task_id"], "load");
    assert_eq!(m["state"], "failed");
    assert!(m["text"].as_str().unwrap().contains("exit 2"), "{m}");
    // Success alerts nobody.
    assert!(try_alert(&d, &r, "load", TaskState::Success, String::new(), "u").is_none());
}
