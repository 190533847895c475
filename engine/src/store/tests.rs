//! The store contract: every case below runs once on SQLite and once on PostgreSQL (the
//! `contract!` list at the bottom stamps out `sqlite::<case>` and `postgres::<case>`), so the two
//! backends cannot drift apart behind the one `Store` trait.
//!
//! PostgreSQL is expected at 127.0.0.1:5432 (user postgres, trust auth); each test gets a fresh
//! database. Where it is unreachable the PostgreSQL half is skipped with a note, except under
//! `CI=true`, where a silently skipped half would let a backend regress unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use serde_json::{Value as Json, json};

use super::*;
use crate::plan::InstanceCount;
use crate::plan::{Decision, Failure, UNMAPPED};
use crate::state::{RunState, RunType, TaskState};

const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

struct TestDb {
    url: String,
    store: Arc<dyn Store>,
}

async fn on_sqlite<F, Fut>(case: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("create a temp dir");
    let url = format!("sqlite://{}/flow.db", dir.path().display());
    let store = connect(&url).await.expect("open a fresh SQLite store");
    assert_eq!(store.backend(), "sqlite");
    case(TestDb { url, store }).await;
}

async fn on_postgres<F, Fut>(case: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let probe = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        tokio::net::TcpStream::connect("127.0.0.1:5432"),
    )
    .await;
    if !matches!(probe, Ok(Ok(_))) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL is unreachable at 127.0.0.1:5432 and CI=true: the PostgreSQL half of the \
             store contract must run in CI"
        );
        eprintln!("note: PostgreSQL unreachable at 127.0.0.1:5432; skipping the PostgreSQL half");
        return;
    }
    let name = format!("flow_test_{:016x}", rand::random::<u64>());
    let url = format!("{PG_SERVER}/{name}");
    let store = connect(&url).await.expect("open a fresh PostgreSQL store");
    assert_eq!(store.backend(), "postgres");
    // Run the case on its own task so that a failing assertion still lets us drop the database.
    let outcome = tokio::spawn(case(TestDb { url, store })).await;
    drop_database(&name).await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task did not finish: {e}"),
        }
    }
}

/// Best-effort: a leftover test database is clutter, not a failure.
async fn drop_database(name: &str) {
    use sqlx::Connection;
    let Ok(mut admin) = sqlx::PgConnection::connect(&format!("{PG_SERVER}/postgres")).await else {
        return;
    };
    // FORCE: pool connections of the dropped store may still be closing.
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut admin)
        .await;
    let _ = admin.close().await;
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Seconds after a fixed instant that carries an odd microsecond fraction, so that a backend
/// rounding to milliseconds (or seconds) breaks equality everywhere, not only in one case.
fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
        + Duration::seconds(secs)
        + Duration::microseconds(123_457)
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn no_errors() -> BTreeMap<String, Vec<String>> {
    BTreeMap::new()
}

fn dag(dag_id: &str, version: &str, paused: bool) -> DagRecord {
    DagRecord {
        dag_id: dag_id.into(),
        fileloc: format!("dags/{dag_id}.yaml"),
        version: version.into(),
        description: Some(format!("{dag_id} at {version}")),
        schedule: Some("@daily".into()),
        timezone: "Europe/Paris".into(),
        tags: vec!["team-a".into(), version.into()],
        params: json!({"limit": {"type": "integer", "default": 10}}),
        paused,
        next_run_at: Some(at(86_400)),
        source: format!("# {dag_id} {version}\ntasks:\n  - id: t\n"),
    }
}

fn new_run(
    run_id: &str,
    dag_id: &str,
    run_type: RunType,
    logical: DateTime<Utc>,
    tasks: &[(&str, i32, &str)],
) -> NewRun {
    NewRun {
        run_id: run_id.into(),
        dag_id: dag_id.into(),
        dag_version: "v1".into(),
        run_type,
        logical_date: logical,
        data_interval_start: logical - Duration::days(1),
        data_interval_end: logical,
        params: json!({"limit": 3, "label": "ünïcode"}),
        tasks: tasks
            .iter()
            .map(|(task_id, priority, pool)| NewTaskInstance {
                task_id: task_id.to_string(),
                priority: *priority,
                pool: pool.to_string(),
            })
            .collect(),
        queued_at: logical,
    }
}

/// A started manual run whose tasks (all priority 0, pool `default`) are still `scheduled`.
async fn started_run(s: &dyn Store, run_id: &str, tasks: &[&str]) {
    let tasks: Vec<(&str, i32, &str)> = tasks.iter().map(|t| (*t, 0, "default")).collect();
    assert!(
        s.create_run(&new_run(run_id, "etl", RunType::Manual, at(0), &tasks))
            .await
            .unwrap()
    );
    assert!(s.start_run(run_id, at(0)).await.unwrap());
}

fn queue(task_id: &str) -> Decision {
    Decision::Queue {
        task_id: task_id.into(),
        map_index: UNMAPPED,
    }
}

/// Maps `task_id` over the items 0, 1, ... n-1.
fn expand(task_id: &str, n: i64) -> Decision {
    Decision::Expand {
        task_id: task_id.into(),
        items: (0..n).map(|i| json!(i)).collect(),
    }
}

/// Run "r" of DAG "etl", started, with every instance queued.
async fn queued_run(s: &dyn Store, tasks: &[(&str, i32, &str)]) {
    let run = new_run("r", "etl", RunType::Manual, at(0), tasks);
    assert!(s.create_run(&run).await.unwrap());
    assert!(s.start_run("r", at(0)).await.unwrap());
    queue_all(s, "r", at(1)).await;
}

async fn queue_all(s: &dyn Store, run_id: &str, now: DateTime<Utc>) {
    let decisions: Vec<Decision> = s
        .task_instances(run_id)
        .await
        .unwrap()
        .iter()
        .map(|t| Decision::Queue {
            task_id: t.task_id.clone(),
            map_index: t.map_index,
        })
        .collect();
    s.apply(run_id, &decisions, now).await.unwrap();
}

async fn ti(s: &dyn Store, run_id: &str, task_id: &str, map_index: i64) -> TiRow {
    s.task_instances(run_id)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.task_id == task_id && t.map_index == map_index)
        .unwrap_or_else(|| panic!("no task instance {run_id}/{task_id}[{map_index}]"))
}

fn fresh_ti(run_id: &str, task_id: &str, priority: i64, pool: &str) -> TiRow {
    TiRow {
        run_id: run_id.into(),
        task_id: task_id.into(),
        map_index: UNMAPPED,
        state: TaskState::Scheduled,
        try_number: 0,
        try_base: 0,
        priority,
        pool: pool.into(),
        item: None,
        output: None,
        error: None,
        queued_at: None,
        started_at: None,
        ended_at: None,
        next_try_at: None,
        lease_owner: None,
        lease_expires_at: None,
        hostname: None,
        pid: None,
        external_ref: None,
    }
}

fn claim_req(owner: &str, pool: &str, limit: i64, now: DateTime<Utc>) -> ClaimRequest {
    ClaimRequest {
        pool_slots: None,
        owner: owner.into(),
        hostname: format!("{owner}.local"),
        pool: pool.into(),
        limit,
        now,
        lease_until: now + Duration::seconds(60),
        run_id: None,
    }
}

async fn claim_one(s: &dyn Store, owner: &str, now: DateTime<Utc>) -> Claim {
    let mut got = s.claim(&claim_req(owner, "default", 1, now)).await.unwrap();
    assert_eq!(got.len(), 1, "expected one claimable try for {owner}");
    got.pop().unwrap()
}

fn ended(state: TaskState, now: DateTime<Utc>) -> TryEnd {
    TryEnd {
        state,
        output: None,
        error: None,
        next_try_at: None,
        now,
        requeue: false,
        reschedule: false,
    }
}

fn run_ids(runs: &[RunRow]) -> Vec<&str> {
    runs.iter().map(|r| r.run_id.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn migrations_apply_on_fresh_db_and_again_on_reopen(db: TestDb) {
    let s = db.store;
    // Each of these reads a different table: a missing migration fails here, not later.
    assert!(s.list_dags().await.unwrap().is_empty());
    assert!(s.import_errors().await.unwrap().is_empty());
    assert!(s.active_runs().await.unwrap().is_empty());
    assert!(s.running_by_pool().await.unwrap().is_empty());
    assert_eq!(s.last_heartbeat().await.unwrap(), None);
    s.sync_dags(
        &[dag("etl", "v1", false)],
        &ids(&["etl"]),
        &no_errors(),
        at(0),
    )
    .await
    .unwrap();

    for _ in 0..2 {
        let reopened = connect(&db.url)
            .await
            .expect("reopening an up-to-date database must not fail on its migrations");
        assert_eq!(reopened.backend(), s.backend());
        let etl = reopened.get_dag("etl").await.unwrap();
        assert_eq!(etl.map(|d| d.version), Some("v1".to_string()));
    }
}

async fn sync_dags_upserts_keeps_pause_and_deactivates(db: TestDb) {
    let s = db.store;
    let errors = BTreeMap::from([("dags/broken.yaml".to_string(), ids(&["line 3: bad indent"]))]);
    s.sync_dags(
        &[dag("etl", "v1", true), dag("report", "v1", false)],
        &ids(&["etl", "report"]),
        &errors,
        at(0),
    )
    .await
    .unwrap();

    let want = dag("etl", "v1", true);
    assert_eq!(
        s.get_dag("etl").await.unwrap(),
        Some(DagRow {
            dag_id: want.dag_id,
            fileloc: want.fileloc,
            version: want.version,
            description: want.description,
            schedule: want.schedule,
            timezone: want.timezone,
            tags: want.tags,
            params: want.params,
            paused: true,
            active: true,
            next_run_at: want.next_run_at,
            last_run: None,
        })
    );
    let listed: Vec<String> = s
        .list_dags()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.dag_id)
        .collect();
    assert_eq!(listed, ["etl", "report"]);
    assert_eq!(s.import_errors().await.unwrap(), errors);

    // The user unpauses etl; its file then changes, and the new record's initial pause state
    // must not override the user's choice.
    assert!(s.set_paused("etl", false).await.unwrap());
    let errors = BTreeMap::from([(
        "dags/other.yaml".to_string(),
        ids(&["unknown operator 'shel'", "cycle a -> b -> a"]),
    )]);
    s.sync_dags(&[dag("etl", "v2", true)], &ids(&["etl"]), &errors, at(10))
        .await
        .unwrap();

    let etl = s.get_dag("etl").await.unwrap().expect("etl is still known");
    assert_eq!(etl.version, "v2");
    assert_eq!(etl.description.as_deref(), Some("etl at v2"));
    assert_eq!(etl.tags, ["team-a", "v2"]);
    assert!(
        !etl.paused,
        "a re-sync must keep the pause flag the user set"
    );
    assert!(etl.active);

    let report = s
        .get_dag("report")
        .await
        .unwrap()
        .expect("inactive DAGs are kept");
    assert!(
        !report.active,
        "a DAG missing from `present` must be marked inactive"
    );
    assert_eq!(report.version, "v1");
    let listed: Vec<String> = s
        .list_dags()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.dag_id)
        .collect();
    assert_eq!(listed, ["etl"]);
    assert_eq!(
        s.import_errors().await.unwrap(),
        errors,
        "import errors are replaced, not merged"
    );

    // Runs started on v1 still need v1's source after v2 arrives.
    for v in ["v1", "v2"] {
        assert_eq!(
            s.dag_source("etl", v).await.unwrap(),
            Some(DagSource {
                fileloc: "dags/etl.yaml".to_string(),
                source: dag("etl", v, true).source,
            })
        );
    }
    assert_eq!(s.dag_source("etl", "v3").await.unwrap(), None);
    assert_eq!(s.dag_source("report", "v2").await.unwrap(), None);

    // A file that comes back reactivates its DAG; an empty error map clears the errors.
    s.sync_dags(
        &[dag("report", "v1", false)],
        &ids(&["etl", "report"]),
        &no_errors(),
        at(20),
    )
    .await
    .unwrap();
    assert!(s.get_dag("report").await.unwrap().unwrap().active);
    assert!(s.get_dag("etl").await.unwrap().unwrap().active);
    assert!(s.import_errors().await.unwrap().is_empty());

    // An empty DAGs folder deactivates everything.
    s.sync_dags(&[], &[], &no_errors(), at(30)).await.unwrap();
    assert!(s.list_dags().await.unwrap().is_empty());
    assert!(!s.get_dag("etl").await.unwrap().unwrap().active);
}

async fn set_paused_reports_unknown_dags(db: TestDb) {
    let s = db.store;
    assert!(!s.set_paused("ghost", true).await.unwrap());
    assert_eq!(
        s.get_dag("ghost").await.unwrap(),
        None,
        "set_paused must not create a DAG"
    );

    s.sync_dags(
        &[dag("etl", "v1", false)],
        &ids(&["etl"]),
        &no_errors(),
        at(0),
    )
    .await
    .unwrap();
    assert!(s.set_paused("etl", true).await.unwrap());
    assert!(s.get_dag("etl").await.unwrap().unwrap().paused);
    // Setting the flag it already has is still a known DAG.
    assert!(s.set_paused("etl", true).await.unwrap());
    assert!(s.set_paused("etl", false).await.unwrap());
    assert!(!s.get_dag("etl").await.unwrap().unwrap().paused);
}

async fn create_run_creates_the_run_and_its_instances(db: TestDb) {
    let s = db.store;
    let day = at(0);
    let first = new_run(
        "scheduled__d1",
        "etl",
        RunType::Scheduled,
        day,
        &[("extract", 5, "default"), ("load", 0, "db")],
    );
    assert!(s.create_run(&first).await.unwrap());
    assert_eq!(
        s.get_run("scheduled__d1").await.unwrap(),
        Some(RunRow {
            run_id: first.run_id.clone(),
            dag_id: first.dag_id.clone(),
            dag_version: first.dag_version.clone(),
            run_type: RunType::Scheduled,
            state: RunState::Queued,
            logical_date: first.logical_date,
            data_interval_start: first.data_interval_start,
            data_interval_end: first.data_interval_end,
            params: first.params.clone(),
            queued_at: first.queued_at,
            started_at: None,
            ended_at: None,
        })
    );
    assert_eq!(
        s.task_instances("scheduled__d1").await.unwrap(),
        [
            fresh_ti("scheduled__d1", "extract", 5, "default"),
            fresh_ti("scheduled__d1", "load", 0, "db"),
        ]
    );

    // The scheduler and a backfill may race for the same interval: exactly one run may win.
    for (run_id, run_type) in [
        ("scheduled__again", RunType::Scheduled),
        ("backfill__d1", RunType::Backfill),
    ] {
        let dup = new_run(run_id, "etl", run_type, day, &[("other", 0, "default")]);
        assert!(
            !s.create_run(&dup).await.unwrap(),
            "{run_id} duplicates an interval"
        );
        assert_eq!(s.get_run(run_id).await.unwrap(), None);
        assert!(s.task_instances(run_id).await.unwrap().is_empty());
    }
    // Reusing a run id is refused too, without touching the existing run's instances.
    let same_id = new_run(
        "scheduled__d1",
        "etl",
        RunType::Manual,
        at(99),
        &[("other", 0, "default")],
    );
    assert!(!s.create_run(&same_id).await.unwrap());
    assert_eq!(s.task_instances("scheduled__d1").await.unwrap().len(), 2);
    assert_eq!(
        s.get_run("scheduled__d1").await.unwrap().unwrap().run_type,
        RunType::Scheduled
    );

    for run_id in ["manual__1", "manual__2"] {
        let manual = new_run(
            run_id,
            "etl",
            RunType::Manual,
            day,
            &[("extract", 5, "default")],
        );
        assert!(
            s.create_run(&manual).await.unwrap(),
            "manual runs may share a logical date"
        );
        assert_eq!(s.task_instances(run_id).await.unwrap().len(), 1);
    }
    // Uniqueness is per DAG and per logical date.
    let other_dag = new_run("scheduled__r1", "report", RunType::Scheduled, day, &[]);
    assert!(s.create_run(&other_dag).await.unwrap());
    let next_day = new_run("scheduled__d2", "etl", RunType::Backfill, at(86_400), &[]);
    assert!(s.create_run(&next_day).await.unwrap());
}

async fn list_runs_newest_first_with_filters_and_keyset(db: TestDb) {
    let s = db.store;
    for (i, dag_id) in ["etl", "report", "etl", "etl", "report"].iter().enumerate() {
        let run = new_run(
            &format!("r{i}"),
            dag_id,
            RunType::Manual,
            at(i as i64 * 60),
            &[],
        );
        assert!(s.create_run(&run).await.unwrap());
    }
    assert!(s.start_run("r1", at(500)).await.unwrap());
    assert!(s.start_run("r3", at(500)).await.unwrap());

    let list = |dag_id: Option<&str>, state: Option<RunState>, limit: i64, before| {
        let s = s.clone();
        let filter = RunFilter {
            dag_id: dag_id.map(str::to_string),
            state,
            limit,
            before,
            before_run_id: None,
        };
        async move { s.list_runs(&filter).await.unwrap() }
    };

    assert_eq!(
        run_ids(&list(None, None, 10, None).await),
        ["r4", "r3", "r2", "r1", "r0"]
    );
    assert_eq!(
        run_ids(&list(Some("etl"), None, 10, None).await),
        ["r3", "r2", "r0"]
    );
    assert_eq!(
        run_ids(&list(None, Some(RunState::Running), 10, None).await),
        ["r3", "r1"]
    );
    assert_eq!(
        run_ids(&list(Some("etl"), Some(RunState::Queued), 10, None).await),
        ["r2", "r0"]
    );
    assert_eq!(run_ids(&list(None, None, 2, None).await), ["r4", "r3"]);
    // `before` is strict: r3 itself (queued at 180 s) is on the previous page.
    assert_eq!(
        run_ids(&list(None, None, 10, Some(at(180))).await),
        ["r2", "r1", "r0"]
    );
    assert_eq!(
        run_ids(&list(Some("report"), None, 10, Some(at(240))).await),
        ["r1"]
    );

    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = list(None, None, 2, before).await;
        let Some(last) = page.last() else { break };
        before = Some(last.queued_at);
        pages.push(
            run_ids(&page)
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(
        pages,
        [ids(&["r4", "r3"]), ids(&["r2", "r1"]), ids(&["r0"])]
    );
}

async fn start_run_only_from_queued(db: TestDb) {
    let s = db.store;
    let run = new_run("r", "etl", RunType::Manual, at(0), &[("a", 0, "default")]);
    assert!(s.create_run(&run).await.unwrap());
    assert_eq!(run_ids(&s.active_runs().await.unwrap()), ["r"]);

    assert!(s.start_run("r", at(5)).await.unwrap());
    let row = s.get_run("r").await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.started_at),
        (RunState::Running, Some(at(5)))
    );

    assert!(
        !s.start_run("r", at(9)).await.unwrap(),
        "a running run is not queued"
    );
    assert_eq!(
        s.get_run("r").await.unwrap().unwrap().started_at,
        Some(at(5))
    );
    assert!(!s.start_run("ghost", at(9)).await.unwrap());

    s.apply("r", &[Decision::FinishRun(RunState::Success)], at(20))
        .await
        .unwrap();
    assert!(
        !s.start_run("r", at(30)).await.unwrap(),
        "a finished run is not queued"
    );
    let row = s.get_run("r").await.unwrap().unwrap();
    assert_eq!((row.state, row.ended_at), (RunState::Success, Some(at(20))));
    assert!(s.active_runs().await.unwrap().is_empty());
}

async fn apply_moves_only_instances_in_the_expected_state(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["a", "b", "c", "d", "e", "f"]).await;
    let retry_at = at(300);
    let fail_try = |task_id: &str, outcome| Decision::FailTry {
        task_id: task_id.into(),
        map_index: UNMAPPED,
        message: format!("`when` of {task_id} did not render"),
        outcome,
    };
    let skip = |task_id: &str| Decision::Skip {
        task_id: task_id.into(),
        map_index: UNMAPPED,
    };
    let upstream_failed = |task_id: &str| Decision::UpstreamFailed {
        task_id: task_id.into(),
        map_index: UNMAPPED,
    };
    s.apply(
        "r",
        &[
            queue("a"),
            skip("b"),
            upstream_failed("c"),
            fail_try("d", Failure::Retry { at: retry_at }),
            fail_try("e", Failure::Final),
        ],
        at(1),
    )
    .await
    .unwrap();

    let a = ti(&*s, "r", "a", UNMAPPED).await;
    assert_eq!(
        (a.state, a.queued_at, a.try_number),
        (TaskState::Queued, Some(at(1)), 0)
    );
    let b = ti(&*s, "r", "b", UNMAPPED).await;
    assert_eq!((b.state, b.ended_at), (TaskState::Skipped, Some(at(1))));
    let c = ti(&*s, "r", "c", UNMAPPED).await;
    assert_eq!(
        (c.state, c.ended_at),
        (TaskState::UpstreamFailed, Some(at(1)))
    );
    let d = ti(&*s, "r", "d", UNMAPPED).await;
    assert_eq!(d.state, TaskState::UpForRetry);
    assert_eq!(
        d.try_number, 1,
        "a try that failed before the executor still counts"
    );
    assert_eq!(d.error.as_deref(), Some("`when` of d did not render"));
    assert_eq!((d.started_at, d.ended_at), (Some(at(1)), Some(at(1))));
    assert_eq!(d.next_try_at, Some(retry_at));
    assert_eq!(
        s.tries("r", "d", UNMAPPED).await.unwrap(),
        [TryRow {
            try_number: 1,
            state: TaskState::Failed,
            started_at: at(1),
            ended_at: Some(at(1)),
            error: Some("`when` of d did not render".into()),
        }]
    );
    let e = ti(&*s, "r", "e", UNMAPPED).await;
    assert_eq!(
        (e.state, e.try_number, e.next_try_at),
        (TaskState::Failed, 1, None)
    );
    assert_eq!(
        ti(&*s, "r", "f", UNMAPPED).await,
        fresh_ti("r", "f", 0, "default")
    );

    // A plan made from a stale snapshot (or replayed) must not move instances that have moved on.
    let claimed = claim_one(&*s, "w1", at(2)).await;
    assert_eq!(claimed.task_id, "a");
    let before = s.task_instances("r").await.unwrap();
    s.apply(
        "r",
        &[
            queue("a"),
            skip("a"),
            upstream_failed("a"),
            fail_try("a", Failure::Final),
            queue("b"),
            upstream_failed("b"),
            queue("c"),
            skip("d"),
            fail_try("d", Failure::Final),
            queue("e"),
            skip("e"),
            // Unknown instances are no-ops, not errors.
            queue("ghost"),
        ],
        at(3),
    )
    .await
    .unwrap();
    assert_eq!(s.task_instances("r").await.unwrap(), before);
    assert_eq!(s.tries("r", "a", UNMAPPED).await.unwrap().len(), 1);
    assert_eq!(s.tries("r", "d", UNMAPPED).await.unwrap().len(), 1);

    // A retry whose time has come goes back to the queue.
    s.apply("r", &[queue("d")], at(301)).await.unwrap();
    let d = ti(&*s, "r", "d", UNMAPPED).await;
    assert_eq!(
        (d.state, d.queued_at, d.next_try_at),
        (TaskState::Queued, Some(at(301)), None)
    );
    assert_eq!(d.try_number, 1);

    // Decisions are scoped to their run.
    started_run(&*s, "r2", &["f"]).await;
    s.apply("r2", &[queue("f")], at(4)).await.unwrap();
    assert_eq!(
        ti(&*s, "r", "f", UNMAPPED).await.state,
        TaskState::Scheduled
    );
    assert_eq!(ti(&*s, "r2", "f", UNMAPPED).await.state, TaskState::Queued);

    s.apply("r", &[Decision::FinishRun(RunState::Success)], at(5))
        .await
        .unwrap();
    let run = s.get_run("r").await.unwrap().unwrap();
    assert_eq!((run.state, run.ended_at), (RunState::Success, Some(at(5))));
    s.apply("r", &[Decision::FinishRun(RunState::Failed)], at(6))
        .await
        .unwrap();
    let run = s.get_run("r").await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.ended_at),
        (RunState::Success, Some(at(5))),
        "finished once"
    );

    let queued = new_run("r3", "etl", RunType::Manual, at(0), &[]);
    assert!(s.create_run(&queued).await.unwrap());
    s.apply("r3", &[Decision::FinishRun(RunState::Failed)], at(7))
        .await
        .unwrap();
    let run = s.get_run("r3").await.unwrap().unwrap();
    assert_eq!(
        (run.state, run.ended_at),
        (RunState::Queued, None),
        "only a running run finishes"
    );
}

async fn expand_replaces_the_placeholder(db: TestDb) {
    let s = db.store;
    let run = new_run(
        "r",
        "etl",
        RunType::Manual,
        at(0),
        &[
            ("fan", 7, "io"),
            ("none", 3, "default"),
            ("late", 0, "default"),
        ],
    );
    assert!(s.create_run(&run).await.unwrap());
    assert!(s.start_run("r", at(0)).await.unwrap());

    // More than one insert batch, so chunking cannot drop or renumber items.
    let items: Vec<Json> = (0..2500)
        .map(|i| json!({"n": i, "file": format!("part-{i:05}.csv")}))
        .collect();
    let expand = |task_id: &str, items: Vec<Json>| Decision::Expand {
        task_id: task_id.into(),
        items,
    };
    s.apply("r", &[expand("fan", items.clone())], at(1))
        .await
        .unwrap();
    let fan: Vec<TiRow> = s
        .task_instances("r")
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.task_id == "fan")
        .collect();
    assert_eq!(
        fan.len(),
        2500,
        "one instance per item, and the placeholder gone"
    );
    for (i, t) in fan.iter().enumerate() {
        assert_eq!(t.map_index, i as i64);
        assert_eq!(t.state, TaskState::Queued);
        assert_eq!(t.item.as_ref(), Some(&items[i]));
        assert_eq!((t.priority, t.pool.as_str()), (7, "io"));
        assert_eq!((t.queued_at, t.try_number, t.try_base), (Some(at(1)), 0, 0));
    }

    // Replaying the expansion finds no placeholder and changes nothing.
    s.apply("r", &[expand("fan", vec![json!(1), json!(2)])], at(2))
        .await
        .unwrap();
    let again: Vec<TiRow> = s
        .task_instances("r")
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.task_id == "fan")
        .collect();
    assert_eq!(again, fan);

    s.apply("r", &[expand("none", vec![])], at(3))
        .await
        .unwrap();
    let none: Vec<TiRow> = s
        .task_instances("r")
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.task_id == "none")
        .collect();
    assert_eq!(none.len(), 1);
    assert_eq!(
        (none[0].map_index, none[0].state, none[0].ended_at),
        (UNMAPPED, TaskState::Skipped, Some(at(3)))
    );

    // Only a scheduled placeholder expands.
    s.apply("r", &[queue("late")], at(4)).await.unwrap();
    s.apply("r", &[expand("late", vec![json!("x"), json!("y")])], at(5))
        .await
        .unwrap();
    let late: Vec<TiRow> = s
        .task_instances("r")
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.task_id == "late")
        .collect();
    assert_eq!(late.len(), 1);
    assert_eq!(
        (late[0].map_index, late[0].state),
        (UNMAPPED, TaskState::Queued)
    );

    let claims = s.claim(&claim_req("w1", "io", 1, at(6))).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(
        (claims[0].map_index, claims[0].item.as_ref()),
        (0, Some(&items[0]))
    );
}

async fn claim_takes_highest_priority_then_oldest_within_its_pool(db: TestDb) {
    let s = db.store;
    let run = new_run(
        "r",
        "etl",
        RunType::Manual,
        at(0),
        &[
            ("low", 1, "default"),
            ("z_old", 5, "default"),
            ("a_new", 5, "default"),
            ("high", 9, "default"),
            ("gpu", 100, "gpu"),
        ],
    );
    assert!(s.create_run(&run).await.unwrap());
    assert!(s.start_run("r", at(0)).await.unwrap());
    // The names sort against their age, so only queued_at can put z_old before a_new.
    s.apply("r", &[queue("low"), queue("z_old")], at(1))
        .await
        .unwrap();
    s.apply("r", &[queue("a_new"), queue("high"), queue("gpu")], at(2))
        .await
        .unwrap();

    let mut order = Vec::new();
    loop {
        let got = s
            .claim(&claim_req("w1", "default", 1, at(10)))
            .await
            .unwrap();
        assert!(got.len() <= 1, "limit 1 returned {} claims", got.len());
        let Some(c) = got.into_iter().next() else {
            break;
        };
        order.push(c.task_id);
    }
    assert_eq!(order, ["high", "z_old", "a_new", "low"]);
    assert_eq!(
        ti(&*s, "r", "gpu", UNMAPPED).await.state,
        TaskState::Queued,
        "another pool's try, whatever its priority, is not claimed"
    );
    let gpu = s.claim(&claim_req("w1", "gpu", 5, at(11))).await.unwrap();
    assert_eq!(
        gpu.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(),
        ["gpu"]
    );
}

/// On PostgreSQL a claim reads on from where this store's last claim stopped (ADR 8); whatever is
/// queued before that point still comes first: a higher priority, a requeued try, and (within
/// a second) a try another process queued.
async fn claims_keep_the_queue_order_as_they_read_on(db: TestDb) {
    let s = db.store;
    let run = new_run(
        "r",
        "etl",
        RunType::Manual,
        at(0),
        &[
            ("m", 0, "default"),
            ("hi", 9, "default"),
            ("other", 5, "default"),
        ],
    );
    assert!(s.create_run(&run).await.unwrap());
    assert!(s.start_run("r", at(0)).await.unwrap());
    s.apply("r", &[expand("m", 12)], at(1)).await.unwrap();
    let one = |now| {
        let s = s.clone();
        async move {
            let got = s.claim(&claim_req("w1", "default", 1, now)).await.unwrap();
            assert_eq!(got.len(), 1, "a queued try is left to claim");
            got.into_iter().next().unwrap()
        }
    };
    let key = |c: &Claim| (c.task_id.clone(), c.map_index);
    let m = |i: i64| ("m".to_string(), i);
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(one(at(2)).await);
    }
    assert_eq!(
        first.iter().map(key).collect::<Vec<_>>(),
        [m(0), m(1), m(2), m(3)]
    );

    // Queued after the cursor moved, but of a higher priority: it goes first.
    s.apply("r", &[queue("hi")], at(3)).await.unwrap();
    assert_eq!(key(&one(at(3)).await), ("hi".to_string(), UNMAPPED));
    assert_eq!(key(&one(at(3)).await), m(4));

    // A requeued try keeps its place, before the cursor.
    let requeue = TryEnd {
        requeue: true,
        ..ended(TaskState::Queued, at(4))
    };
    assert!(s.finish_try(&first[1], &requeue).await.unwrap());
    let three = s
        .claim(&claim_req("w1", "default", 3, at(5)))
        .await
        .unwrap();
    assert_eq!(
        three.iter().map(key).collect::<BTreeSet<_>>(),
        BTreeSet::from([m(1), m(5), m(6)])
    );

    // Another process requeues a try (this store learns nothing of it): a claim that finds too
    // few after the cursor reads the queue from its head.
    let elsewhere = connect(&db.url).await.unwrap();
    assert!(elsewhere.finish_try(&first[2], &requeue).await.unwrap());
    let rest = s
        .claim(&claim_req("w1", "default", 6, at(6)))
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(key).collect::<BTreeSet<_>>(),
        BTreeSet::from([m(2), m(7), m(8), m(9), m(10), m(11)])
    );

    // Another process queues a map, then a higher priority: once the cursor has aged, the
    // higher priority goes first.
    let later = new_run(
        "r2",
        "etl",
        RunType::Manual,
        at(86_400),
        &[("m", 0, "default")],
    );
    assert!(elsewhere.create_run(&later).await.unwrap());
    assert!(elsewhere.start_run("r2", at(7)).await.unwrap());
    elsewhere
        .apply("r2", &[expand("m", 3)], at(7))
        .await
        .unwrap();
    let c = one(at(8)).await;
    assert_eq!((c.run_id.as_str(), c.map_index), ("r2", 0));
    elsewhere
        .apply("r", &[queue("other")], at(9))
        .await
        .unwrap();
    tokio::time::sleep(super::cursor::CURSOR_TTL).await;
    assert_eq!(key(&one(at(10)).await), ("other".to_string(), UNMAPPED));
    let c = one(at(10)).await;
    assert_eq!((c.run_id.as_str(), c.map_index), ("r2", 1));
}

async fn claim_respects_limit_and_run_filter(db: TestDb) {
    let s = db.store;
    let hi: Vec<(String, i32, &str)> = (0..5).map(|i| (format!("t{i}"), 10, "default")).collect();
    let lo: Vec<(String, i32, &str)> = (0..3).map(|i| (format!("t{i}"), 0, "default")).collect();
    for (run_id, day, tasks) in [("r1", 0, &hi), ("r2", 86_400, &lo)] {
        let tasks: Vec<(&str, i32, &str)> = tasks
            .iter()
            .map(|(t, p, pool)| (t.as_str(), *p, *pool))
            .collect();
        assert!(
            s.create_run(&new_run(run_id, "etl", RunType::Manual, at(day), &tasks))
                .await
                .unwrap()
        );
        assert!(s.start_run(run_id, at(day)).await.unwrap());
        queue_all(&*s, run_id, at(1)).await;
    }

    assert!(
        s.claim(&claim_req("w1", "default", 0, at(2)))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.claim(&claim_req("w1", "default", -1, at(2)))
            .await
            .unwrap()
            .is_empty()
    );

    let three = s
        .claim(&claim_req("w1", "default", 3, at(2)))
        .await
        .unwrap();
    assert_eq!(three.len(), 3);
    assert!(
        three.iter().all(|c| c.run_id == "r1"),
        "r1's tries have the higher priority"
    );

    let only_r2 = ClaimRequest {
        pool_slots: None,
        run_id: Some("r2".into()),
        ..claim_req("w1", "default", 10, at(3))
    };
    let r2: BTreeSet<(String, String)> = s
        .claim(&only_r2)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.run_id, c.task_id))
        .collect();
    let want: BTreeSet<(String, String)> = (0..3)
        .map(|i| ("r2".to_string(), format!("t{i}")))
        .collect();
    assert_eq!(r2, want);

    let rest = s
        .claim(&claim_req("w1", "default", 10, at(4)))
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|c| c.run_id == "r1"));
    assert!(
        s.claim(&claim_req("w1", "default", 10, at(5)))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn claim_records_the_try_and_counts_tries(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["a"]).await;
    s.apply("r", &[queue("a")], at(1)).await.unwrap();

    let c = claim_one(&*s, "w1", at(5)).await;
    assert_eq!(
        c,
        Claim {
            run_id: "r".into(),
            task_id: "a".into(),
            map_index: UNMAPPED,
            try_number: 1,
            try_base: 0,
            item: None,
            owner: "w1".into(),
            started_at: at(5),
            external: None,
        }
    );
    assert_eq!(
        ti(&*s, "r", "a", UNMAPPED).await,
        TiRow {
            state: TaskState::Running,
            try_number: 1,
            queued_at: Some(at(1)),
            started_at: Some(at(5)),
            lease_owner: Some("w1".into()),
            lease_expires_at: Some(at(65)),
            hostname: Some("w1.local".into()),
            ..fresh_ti("r", "a", 0, "default")
        }
    );
    assert_eq!(
        s.tries("r", "a", UNMAPPED).await.unwrap(),
        [TryRow {
            try_number: 1,
            state: TaskState::Running,
            started_at: at(5),
            ended_at: None,
            error: None,
        }]
    );

    s.set_pid(&c, 4242).await.unwrap();
    assert_eq!(ti(&*s, "r", "a", UNMAPPED).await.pid, Some(4242));
    let stranger = Claim {
        owner: "w2".into(),
        ..c.clone()
    };
    s.set_pid(&stranger, 1).await.unwrap();
    assert_eq!(
        ti(&*s, "r", "a", UNMAPPED).await.pid,
        Some(4242),
        "set_pid is fenced too"
    );

    let retry = TryEnd {
        error: Some("exit status 1".into()),
        next_try_at: Some(at(30)),
        ..ended(TaskState::UpForRetry, at(6))
    };
    assert!(s.finish_try(&c, &retry).await.unwrap());
    s.apply("r", &[queue("a")], at(30)).await.unwrap();
    let second = claim_one(&*s, "w2", at(31)).await;
    assert_eq!((second.try_number, second.try_base), (2, 0));
    let a = ti(&*s, "r", "a", UNMAPPED).await;
    assert_eq!(
        (a.try_number, a.error, a.pid),
        (2, None, None),
        "a new try starts clean"
    );
    assert_eq!(
        s.tries("r", "a", UNMAPPED).await.unwrap(),
        [
            TryRow {
                try_number: 1,
                state: TaskState::UpForRetry,
                started_at: at(5),
                ended_at: Some(at(6)),
                error: Some("exit status 1".into()),
            },
            TryRow {
                try_number: 2,
                state: TaskState::Running,
                started_at: at(31),
                ended_at: None,
                error: None,
            },
        ]
    );
}

async fn concurrent_claimers_never_share_a_try(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["m"]).await;
    s.apply("r", &[expand("m", 200)], at(1)).await.unwrap();

    let workers: Vec<_> = ["w1", "w2"]
        .into_iter()
        .map(|owner| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = s
                        .claim(&claim_req(owner, "default", 1, at(2)))
                        .await
                        .unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    got.extend(batch);
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("claimer task panicked"));
    }

    let distinct: BTreeSet<i64> = all.iter().map(|c| c.map_index).collect();
    assert_eq!(all.len(), 200, "every try claimed exactly once");
    assert_eq!(distinct, (0..200).collect::<BTreeSet<i64>>());
    assert!(all.iter().all(|c| c.try_number == 1));
    // The database agrees with each claimer about who owns what.
    let owners: BTreeMap<i64, String> =
        all.iter().map(|c| (c.map_index, c.owner.clone())).collect();
    for t in s.task_instances("r").await.unwrap() {
        assert_eq!(t.state, TaskState::Running);
        assert_eq!(t.try_number, 1);
        assert_eq!(t.lease_owner.as_ref(), owners.get(&t.map_index));
    }
}

async fn finish_try_is_fenced_by_owner_and_try_number(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["a", "b"]).await;
    queue_all(&*s, "r", at(1)).await;
    let c = claim_one(&*s, "w1", at(5)).await;
    assert_eq!(c.task_id, "a");

    let output = json!({"rows": 3, "files": ["a.csv", "b.csv"], "ok": true});
    let success = TryEnd {
        output: Some(output.clone()),
        ..ended(TaskState::Success, at(9))
    };
    let before = ti(&*s, "r", "a", UNMAPPED).await;
    let before_tries = s.tries("r", "a", UNMAPPED).await.unwrap();
    let stranger = Claim {
        owner: "w2".into(),
        ..c.clone()
    };
    let stale = Claim {
        try_number: c.try_number + 1,
        ..c.clone()
    };
    assert!(!s.finish_try(&stranger, &success).await.unwrap());
    assert!(!s.finish_try(&stale, &success).await.unwrap());
    assert_eq!(ti(&*s, "r", "a", UNMAPPED).await, before);
    assert_eq!(s.tries("r", "a", UNMAPPED).await.unwrap(), before_tries);

    assert!(s.finish_try(&c, &success).await.unwrap());
    let a = ti(&*s, "r", "a", UNMAPPED).await;
    assert_eq!(a.state, TaskState::Success);
    assert_eq!(a.output, Some(output));
    assert_eq!(a.ended_at, Some(at(9)));
    assert_eq!((a.lease_owner, a.lease_expires_at), (None, None));
    assert_eq!((a.try_number, a.try_base), (1, 0));
    assert_eq!(
        s.tries("r", "a", UNMAPPED).await.unwrap(),
        [TryRow {
            try_number: 1,
            state: TaskState::Success,
            started_at: at(5),
            ended_at: Some(at(9)),
            error: None,
        }]
    );
    // Orphan recovery racing the executor: whoever ends the try second loses.
    assert!(
        !s.finish_try(&c, &ended(TaskState::Failed, at(10)))
            .await
            .unwrap()
    );
    assert_eq!(ti(&*s, "r", "a", UNMAPPED).await.state, TaskState::Success);

    // A try cut short by a clean shutdown goes back to the queue without using up a retry.
    let cb = claim_one(&*s, "w1", at(11)).await;
    assert_eq!((cb.task_id.as_str(), cb.try_number), ("b", 1));
    let requeue = TryEnd {
        error: Some("interrupted".into()),
        requeue: true,
        reschedule: false,
        ..ended(TaskState::Queued, at(12))
    };
    assert!(s.finish_try(&cb, &requeue).await.unwrap());
    let b = ti(&*s, "r", "b", UNMAPPED).await;
    assert_eq!(
        (b.state, b.try_number, b.try_base),
        (TaskState::Queued, 1, 1)
    );
    assert_eq!((b.lease_owner, b.lease_expires_at), (None, None));
    let tries = s.tries("r", "b", UNMAPPED).await.unwrap();
    assert_eq!(tries.len(), 1);
    assert_eq!(
        tries[0].ended_at,
        Some(at(12)),
        "the interrupted try is closed in the history"
    );
    let again = claim_one(&*s, "w2", at(13)).await;
    assert_eq!(
        (again.task_id.as_str(), again.try_number, again.try_base),
        ("b", 2, 1)
    );
}

async fn a_rescheduled_try_gives_its_slot_back_and_runs_again_as_the_same_try(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["wait"]).await;
    queue_all(&*s, "r", at(1)).await;
    let first = claim_one(&*s, "w1", at(5)).await;
    assert_eq!((first.try_number, first.started_at), (1, at(5)));
    let poke = TryEnd {
        next_try_at: Some(at(35)),
        reschedule: true,
        ..ended(TaskState::UpForRetry, at(6))
    };
    assert!(s.finish_try(&first, &poke).await.unwrap());
    let w = ti(&*s, "r", "wait", UNMAPPED).await;
    assert_eq!(
        (w.state, w.try_number, w.try_base, w.next_try_at),
        (TaskState::UpForRetry, 1, 0, Some(at(35)))
    );
    assert_eq!((w.lease_owner, w.lease_expires_at), (None, None));

    // Claimed again: the same try number, started when the first poke was.
    queue_all(&*s, "r", at(35)).await;
    let second = claim_one(&*s, "w2", at(36)).await;
    assert_eq!((second.try_number, second.started_at), (1, at(5)));
    let tries = s.tries("r", "wait", UNMAPPED).await.unwrap();
    assert_eq!(tries.len(), 1, "{tries:?}");
    assert_eq!(
        (tries[0].state, tries[0].started_at, tries[0].ended_at),
        (TaskState::Running, at(5), None)
    );
    assert!(
        s.finish_try(&second, &ended(TaskState::Success, at(40)))
            .await
            .unwrap()
    );
    let w = ti(&*s, "r", "wait", UNMAPPED).await;
    assert_eq!(
        (w.state, w.try_number, w.started_at),
        (TaskState::Success, 1, Some(at(5)))
    );

    // After the try ends for good, a clear starts a new try that starts when it is claimed.
    s.clear_tasks("r", &["wait".to_string()], at(50))
        .await
        .unwrap();
    queue_all(&*s, "r", at(51)).await;
    let third = claim_one(&*s, "w1", at(52)).await;
    assert_eq!((third.try_number, third.started_at), (2, at(52)));
}

async fn an_external_reference_outlives_a_requeue_and_nothing_else(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["step"]).await;
    queue_all(&*s, "r", at(1)).await;
    let first = claim_one(&*s, "w1", at(5)).await;
    assert_eq!(first.external, None);
    let step = serde_json::json!({"cluster_id": "j-1", "step_id": "s-1"});
    let stranger = Claim {
        owner: "w2".into(),
        ..first.clone()
    };
    assert_eq!(
        s.record_tries(&[TryWrite::External(stranger, step.clone())])
            .await
            .unwrap(),
        vec![false],
        "the write is fenced on the lease"
    );
    assert_eq!(
        s.record_tries(&[TryWrite::External(first.clone(), step.clone())])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        ti(&*s, "r", "step", UNMAPPED).await.external_ref,
        Some(step.clone())
    );

    // A requeue (shutdown, or orphan recovery) keeps it for the next try, which re-attaches.
    let requeue = TryEnd {
        requeue: true,
        ..ended(TaskState::Queued, at(6))
    };
    assert!(s.finish_try(&first, &requeue).await.unwrap());
    let second = claim_one(&*s, "w2", at(7)).await;
    assert_eq!(
        (second.try_number, second.external.clone()),
        (2, Some(step.clone()))
    );

    // Any other end empties it: the next try starts its own work.
    let failed = TryEnd {
        next_try_at: Some(at(8)),
        ..ended(TaskState::UpForRetry, at(8))
    };
    assert!(s.finish_try(&second, &failed).await.unwrap());
    assert_eq!(ti(&*s, "r", "step", UNMAPPED).await.external_ref, None);
    queue_all(&*s, "r", at(9)).await;
    let third = claim_one(&*s, "w1", at(9)).await;
    assert_eq!(third.external, None);

    // A clear empties it too, even while a try holds it.
    assert_eq!(
        s.record_tries(&[TryWrite::External(third.clone(), step.clone())])
            .await
            .unwrap(),
        vec![true]
    );
    s.clear_tasks("r", &["step".to_string()], at(10))
        .await
        .unwrap();
    assert_eq!(ti(&*s, "r", "step", UNMAPPED).await.external_ref, None);
}

fn model_version(model: &str, auc: f64, at_s: i64) -> NewModelVersion {
    NewModelVersion {
        model: model.into(),
        task: "classification".into(),
        algorithm: "gradient_boosting".into(),
        metrics: json!({"auc": auc}),
        artifact: format!("models/{model}/{at_s}"),
        training_set: "out/training_set/".into(),
        data_interval: Some(DataInterval {
            start: at(at_s - 86_400),
            end: at(at_s),
        }),
        dag_id: "train_model".into(),
        dag_version: "v1".into(),
        run_id: format!("r{at_s}"),
        task_id: "train".into(),
        created_at: at(at_s),
    }
}

async fn the_model_registry_numbers_versions_and_promotes_by_compare_and_set(db: TestDb) {
    let s = db.store;
    assert_eq!(s.models().await.unwrap(), vec![]);
    // Concurrent registrations never share a number.
    let mut joins = Vec::new();
    for i in 0..6 {
        let s = s.clone();
        joins.push(tokio::spawn(async move {
            s.register_model_version(&model_version("churn", 0.7, 100 + i))
                .await
                .unwrap()
        }));
    }
    let mut numbers = Vec::new();
    for j in joins {
        numbers.push(j.await.unwrap());
    }
    numbers.sort();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(
        s.register_model_version(&model_version("other", 0.6, 10))
            .await
            .unwrap(),
        1,
        "versions count per model"
    );

    let v2 = s.model_version("churn", 2).await.unwrap().unwrap();
    assert_eq!(v2.stage, ModelStage::Candidate);
    assert_eq!(v2.new.metrics, json!({"auc": 0.7}));
    assert_eq!(
        v2.new.data_interval.map(|i| i.end.timestamp() >= 100),
        Some(true)
    );
    assert_eq!(s.model_version("churn", 99).await.unwrap(), None);
    let all = s.model_versions("churn").await.unwrap();
    assert_eq!(
        all.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![6, 5, 4, 3, 2, 1]
    );

    // The first promotion expects no production version.
    assert_eq!(
        s.promote_model_version("churn", 2, None, at(200))
            .await
            .unwrap(),
        Promotion::Promoted { previous: None }
    );
    // A promoter that compared against a stale production version changes nothing.
    assert_eq!(
        s.promote_model_version("churn", 3, None, at(201))
            .await
            .unwrap(),
        Promotion::Stale { current: Some(2) }
    );
    assert_eq!(
        s.promote_model_version("churn", 3, Some(2), at(202))
            .await
            .unwrap(),
        Promotion::Promoted { previous: Some(2) }
    );
    assert_eq!(
        s.model_version("churn", 2).await.unwrap().unwrap().stage,
        ModelStage::Archived
    );
    let v3 = s.model_version("churn", 3).await.unwrap().unwrap();
    assert_eq!(
        (v3.stage, v3.stage_changed_at),
        (ModelStage::Production, at(202))
    );
    assert_eq!(
        s.promote_model_version("churn", 42, Some(3), at(203))
            .await
            .unwrap(),
        Promotion::Unknown
    );
    assert_eq!(
        s.promote_model_version("nope", 1, None, at(203))
            .await
            .unwrap(),
        Promotion::Unknown
    );
    let models = s.models().await.unwrap();
    assert_eq!(
        models
            .iter()
            .map(|m| (
                m.name.as_str(),
                m.versions,
                m.latest_version,
                m.production_version
            ))
            .collect::<Vec<_>>(),
        vec![("churn", 6, 6, Some(3)), ("other", 1, 1, None)]
    );
}

async fn heartbeat_extends_only_the_owners_leases(db: TestDb) {
    let s = db.store;
    assert_eq!(s.last_heartbeat().await.unwrap(), None);
    started_run(&*s, "r", &["a", "b", "c"]).await;
    queue_all(&*s, "r", at(1)).await;
    let mine = claim_one(&*s, "w1", at(5)).await;
    let theirs = claim_one(&*s, "w2", at(5)).await;

    s.heartbeat("w1", "w1.local", 100, at(30), at(90))
        .await
        .unwrap();
    assert_eq!(
        ti(&*s, "r", &mine.task_id, UNMAPPED).await.lease_expires_at,
        Some(at(90))
    );
    assert_eq!(
        ti(&*s, "r", &theirs.task_id, UNMAPPED)
            .await
            .lease_expires_at,
        Some(at(65))
    );
    assert_eq!(ti(&*s, "r", "c", UNMAPPED).await.lease_expires_at, None);
    assert_eq!(s.last_heartbeat().await.unwrap(), Some(at(30)));

    // A finished try has no lease left to extend.
    assert!(
        s.finish_try(&mine, &ended(TaskState::Success, at(40)))
            .await
            .unwrap()
    );
    s.heartbeat("w1", "w1.local", 100, at(50), at(110))
        .await
        .unwrap();
    let done = ti(&*s, "r", &mine.task_id, UNMAPPED).await;
    assert_eq!(
        (done.state, done.lease_expires_at),
        (TaskState::Success, None)
    );
    assert_eq!(
        ti(&*s, "r", &theirs.task_id, UNMAPPED)
            .await
            .lease_expires_at,
        Some(at(65))
    );

    s.heartbeat("w2", "w2.local", 200, at(45), at(120))
        .await
        .unwrap();
    assert_eq!(
        ti(&*s, "r", &theirs.task_id, UNMAPPED)
            .await
            .lease_expires_at,
        Some(at(120))
    );
    assert_eq!(
        s.last_heartbeat().await.unwrap(),
        Some(at(50)),
        "the latest of all schedulers"
    );
}

async fn expired_tries_finds_running_tries_past_their_lease(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["a", "b", "c"]).await;
    queue_all(&*s, "r", at(0)).await;
    let short = s
        .claim(&ClaimRequest {
            pool_slots: None,
            lease_until: at(60),
            ..claim_req("w1", "default", 1, at(0))
        })
        .await
        .unwrap()
        .remove(0);
    let long = s
        .claim(&ClaimRequest {
            pool_slots: None,
            lease_until: at(600),
            ..claim_req("w2", "default", 1, at(0))
        })
        .await
        .unwrap()
        .remove(0);

    assert!(s.expired_tries(at(30)).await.unwrap().is_empty());
    assert_eq!(
        s.expired_tries(at(120)).await.unwrap(),
        [ti(&*s, "r", &short.task_id, UNMAPPED).await]
    );
    let both: BTreeSet<String> = s
        .expired_tries(at(1000))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(
        both,
        BTreeSet::from([short.task_id.clone(), long.task_id.clone()])
    );

    s.heartbeat("w1", "w1.local", 1, at(100), at(300))
        .await
        .unwrap();
    assert!(s.expired_tries(at(120)).await.unwrap().is_empty());
    assert!(
        s.finish_try(&long, &ended(TaskState::Success, at(130)))
            .await
            .unwrap()
    );
    let left: Vec<String> = s
        .expired_tries(at(1000))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert_eq!(left, [short.task_id], "only running tries can expire");
}

async fn clear_tasks_resets_instances_and_requeues_the_run(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["a", "b", "c"]).await;
    queue_all(&*s, "r", at(1)).await;
    let claims = s
        .claim(&claim_req("w1", "default", 3, at(2)))
        .await
        .unwrap();
    assert_eq!(claims.len(), 3);
    for c in &claims {
        s.set_pid(c, 77).await.unwrap();
        let end = match c.task_id.as_str() {
            "b" => TryEnd {
                error: Some("boom".into()),
                ..ended(TaskState::Failed, at(3))
            },
            _ => TryEnd {
                output: Some(json!({"task": c.task_id})),
                ..ended(TaskState::Success, at(3))
            },
        };
        assert!(s.finish_try(c, &end).await.unwrap());
    }
    s.apply("r", &[Decision::FinishRun(RunState::Failed)], at(4))
        .await
        .unwrap();
    let c_before = ti(&*s, "r", "c", UNMAPPED).await;

    assert!(s.clear_tasks("r", &ids(&["a", "b"]), at(5)).await.unwrap());
    for task_id in ["a", "b"] {
        let t = ti(&*s, "r", task_id, UNMAPPED).await;
        assert_eq!(
            t,
            TiRow {
                state: TaskState::Scheduled,
                try_number: 1,
                try_base: 1,
                // Informational only; whether a clear forgets it is not part of the contract.
                hostname: t.hostname.clone(),
                ..fresh_ti("r", task_id, 0, "default")
            }
        );
        assert_eq!(
            s.tries("r", task_id, UNMAPPED).await.unwrap().len(),
            1,
            "history is kept"
        );
    }
    assert_eq!(ti(&*s, "r", "c", UNMAPPED).await, c_before);
    let run = s.get_run("r").await.unwrap().unwrap();
    assert_eq!((run.state, run.ended_at), (RunState::Queued, None));

    assert!(!s.clear_tasks("ghost", &ids(&["a"]), at(6)).await.unwrap());
    assert_eq!(s.get_run("ghost").await.unwrap(), None);

    // Try numbers keep counting after a clear; retries count from try_base.
    assert!(s.start_run("r", at(7)).await.unwrap());
    s.apply("r", &[queue("a")], at(7)).await.unwrap();
    let again = claim_one(&*s, "w2", at(8)).await;
    assert_eq!(
        (again.task_id.as_str(), again.try_number, again.try_base),
        ("a", 2, 1)
    );
}

async fn timestamps_round_trip_exactly(db: TestDb) {
    let s = db.store;
    let instants = [
        Utc.timestamp_micros(1_767_225_600_123_457).unwrap(),
        // Before the epoch: negative microseconds must not be rounded toward zero.
        Utc.timestamp_micros(-1).unwrap(),
        Utc.timestamp_micros(-86_400_000_001).unwrap(),
        Utc.timestamp_micros(4_102_444_799_999_999).unwrap(),
    ];
    s.sync_dags(
        &[dag("etl", "v1", false)],
        &ids(&["etl"]),
        &no_errors(),
        at(0),
    )
    .await
    .unwrap();
    for (i, t) in instants.into_iter().enumerate() {
        let run_id = format!("r{i}");
        let run = NewRun {
            data_interval_start: t - Duration::microseconds(1),
            data_interval_end: t + Duration::microseconds(1),
            queued_at: t + Duration::microseconds(7),
            ..new_run(
                &run_id,
                "etl",
                RunType::Scheduled,
                t,
                &[("a", 0, "default")],
            )
        };
        assert!(s.create_run(&run).await.unwrap());
        let row = s.get_run(&run_id).await.unwrap().unwrap();
        assert_eq!(row.logical_date, run.logical_date);
        assert_eq!(row.data_interval_start, run.data_interval_start);
        assert_eq!(row.data_interval_end, run.data_interval_end);
        assert_eq!(row.queued_at, run.queued_at);

        assert!(s.start_run(&run_id, t).await.unwrap());
        assert_eq!(
            s.get_run(&run_id).await.unwrap().unwrap().started_at,
            Some(t)
        );
        s.set_next_run_at("etl", Some(t)).await.unwrap();
        assert_eq!(
            s.get_dag("etl").await.unwrap().unwrap().next_run_at,
            Some(t)
        );

        s.apply(&run_id, &[queue("a")], t).await.unwrap();
        let claim = s
            .claim(&ClaimRequest {
                pool_slots: None,
                run_id: Some(run_id.clone()),
                lease_until: t + Duration::microseconds(3),
                ..claim_req("w1", "default", 1, t)
            })
            .await
            .unwrap()
            .remove(0);
        let a = ti(&*s, &run_id, "a", UNMAPPED).await;
        assert_eq!((a.queued_at, a.started_at), (Some(t), Some(t)));
        assert_eq!(a.lease_expires_at, Some(t + Duration::microseconds(3)));
        let end = TryEnd {
            next_try_at: Some(t + Duration::microseconds(11)),
            ..ended(TaskState::UpForRetry, t + Duration::microseconds(5))
        };
        assert!(s.finish_try(&claim, &end).await.unwrap());
        let a = ti(&*s, &run_id, "a", UNMAPPED).await;
        assert_eq!(a.ended_at, Some(t + Duration::microseconds(5)));
        assert_eq!(a.next_try_at, Some(t + Duration::microseconds(11)));
        let tries = s.tries(&run_id, "a", UNMAPPED).await.unwrap();
        assert_eq!(
            (tries[0].started_at, tries[0].ended_at),
            (t, Some(t + Duration::microseconds(5)))
        );
    }
    assert_eq!(
        s.latest_logical_date("etl").await.unwrap(),
        Some(instants[3]),
        "the latest of the scheduled runs"
    );
    s.heartbeat("w1", "w1.local", 1, instants[0], instants[3])
        .await
        .unwrap();
    assert_eq!(s.last_heartbeat().await.unwrap(), Some(instants[0]));
}

async fn running_by_pool_and_queued_pools(db: TestDb) {
    let s = db.store;
    assert!(s.running_by_pool().await.unwrap().is_empty());
    assert!(s.queued_pools().await.unwrap().is_empty());
    let run = new_run(
        "r",
        "etl",
        RunType::Manual,
        at(0),
        &[
            ("d0", 0, "default"),
            ("d1", 0, "default"),
            ("d2", 0, "default"),
            ("g0", 0, "gpu"),
            ("g1", 0, "gpu"),
            ("i0", 0, "io"),
        ],
    );
    assert!(s.create_run(&run).await.unwrap());
    assert!(s.start_run("r", at(0)).await.unwrap());
    assert!(
        s.queued_pools().await.unwrap().is_empty(),
        "scheduled is not queued"
    );

    queue_all(&*s, "r", at(1)).await;
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(s.queued_pools().await.unwrap()),
        ["default", "gpu", "io"]
    );
    assert!(s.running_by_pool().await.unwrap().is_empty());

    let defaults = s
        .claim(&claim_req("w1", "default", 2, at(2)))
        .await
        .unwrap();
    assert_eq!(defaults.len(), 2);
    s.claim(&claim_req("w1", "gpu", 1, at(2))).await.unwrap();
    assert_eq!(
        s.running_by_pool().await.unwrap(),
        BTreeMap::from([("default".to_string(), 2), ("gpu".to_string(), 1)])
    );
    assert_eq!(
        sorted(s.queued_pools().await.unwrap()),
        ["default", "gpu", "io"]
    );

    s.claim(&claim_req("w1", "gpu", 5, at(3))).await.unwrap();
    s.claim(&claim_req("w1", "io", 5, at(3))).await.unwrap();
    assert_eq!(s.queued_pools().await.unwrap(), ["default"]);
    assert!(
        s.finish_try(&defaults[0], &ended(TaskState::Success, at(4)))
            .await
            .unwrap()
    );
    assert_eq!(
        s.running_by_pool().await.unwrap(),
        BTreeMap::from([
            ("default".to_string(), 1),
            ("gpu".to_string(), 2),
            ("io".to_string(), 1),
        ])
    );
}

async fn claim_takes_only_the_free_slots_of_a_sized_pool(db: TestDb) {
    let s = db.store;
    queued_run(
        &*s,
        &[
            ("a", 0, "gpu"),
            ("b", 0, "gpu"),
            ("c", 0, "gpu"),
            ("d", 0, "gpu"),
        ],
    )
    .await;
    let sized = |owner: &str, limit: i64, slots: i64| ClaimRequest {
        pool_slots: Some(slots),
        ..claim_req(owner, "gpu", limit, at(2))
    };
    // Three slots: the first claimer takes two of them (its own limit), the second the one left
    // though it could start more, and a third finds the pool full.
    assert_eq!(s.claim(&sized("w1", 2, 3)).await.unwrap().len(), 2);
    assert_eq!(s.claim(&sized("w2", 5, 3)).await.unwrap().len(), 1);
    assert!(s.claim(&sized("w3", 5, 3)).await.unwrap().is_empty());
    // A pool that shrank below what runs claims nothing (and never a negative LIMIT).
    assert!(s.claim(&sized("w3", 5, 1)).await.unwrap().is_empty());
    assert_eq!(
        s.running_by_pool().await.unwrap(),
        BTreeMap::from([("gpu".to_string(), 3)])
    );
}

async fn concurrent_claims_of_a_sized_pool_never_take_more_than_its_slots(db: TestDb) {
    let s = db.store;
    let tasks: Vec<String> = (0..40).map(|i| format!("t{i:02}")).collect();
    let rows: Vec<(&str, i32, &str)> = tasks.iter().map(|t| (t.as_str(), 0, "gpu")).collect();
    queued_run(&*s, &rows).await;
    // Each claimer's own transaction counts what runs; uncommitted claims of the others are not
    // in its snapshot, so without an order between them several would take the same free slots.
    // Rounds of eight at once, each claimer asking for the whole pool of three.
    for round in 0..5 {
        let claims = (0..8).map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                s.claim(&ClaimRequest {
                    pool_slots: Some(3 * (round + 1)),
                    ..claim_req(&format!("w{w}"), "gpu", 3, at(2))
                })
                .await
                .unwrap()
                .len() as i64
            })
        });
        let mut took = 0;
        for c in claims.collect::<Vec<_>>() {
            took += c.await.unwrap();
        }
        assert_eq!(took, 3, "round {round}: the pool grew by three slots");
        assert_eq!(
            s.running_by_pool().await.unwrap(),
            BTreeMap::from([("gpu".to_string(), 3 * (round + 1))])
        );
    }
}

async fn claims_of_several_sized_pools_at_once_never_deadlock(db: TestDb) {
    let s = db.store;
    let tasks: Vec<(String, &str)> = (0..40)
        .map(|i| (format!("t{i:02}"), if i % 2 == 0 { "gpu" } else { "io" }))
        .collect();
    let rows: Vec<(&str, i32, &str)> = tasks.iter().map(|(t, p)| (t.as_str(), 0, *p)).collect();
    queued_run(&*s, &rows).await;
    // Two claimers ask for the same two sized pools in opposite orders. Had each taken a pool's
    // lock when it came to that pool, each could hold one and wait for the other's.
    for round in 0..10 {
        let batch = |owner: &str, pools: [&str; 2]| ClaimBatch {
            requests: pools
                .iter()
                .map(|p| ClaimRequest {
                    pool_slots: Some(100),
                    ..claim_req(owner, p, 1, at(2))
                })
                .collect(),
            limit: 2,
        };
        let one = batch("w1", ["gpu", "io"]);
        let other = batch("w2", ["io", "gpu"]);
        let (a, b) = tokio::join!(
            s.record_and_claim(&[], Some(&one)),
            s.record_and_claim(&[], Some(&other))
        );
        for (who, got) in [("w1", a), ("w2", b)] {
            let Recorded { claimed, .. } =
                got.unwrap_or_else(|e| panic!("round {round}, {who}: {e}"));
            assert_eq!(
                claimed.iter().map(Vec::len).collect::<Vec<_>>(),
                [1, 1],
                "round {round}, {who}"
            );
        }
    }
}

async fn record_and_claim_ends_first_then_claims_within_one_limit(db: TestDb) {
    let s = db.store;
    queued_run(
        &*s,
        &[
            ("a", 0, "gpu"),
            ("b", 0, "gpu"),
            ("c", 0, "io"),
            ("d", 0, "io"),
            ("e", 0, "io"),
        ],
    )
    .await;
    let gpu = |limit| ClaimRequest {
        pool_slots: Some(1),
        ..claim_req("w1", "gpu", limit, at(2))
    };
    let first = s.claim(&gpu(5)).await.unwrap();
    assert_eq!(first.len(), 1, "a pool of one slot");
    // One transaction: the end frees the gpu slot, so the claim after it takes the other gpu
    // try; the io request gets what the shared limit of 2 leaves (1 of its 3).
    let batch = ClaimBatch {
        requests: vec![gpu(5), claim_req("w1", "io", 5, at(3))],
        limit: 2,
    };
    let Recorded { applied, claimed } = s
        .record_and_claim(
            &[TryWrite::End(
                first[0].clone(),
                ended(TaskState::Success, at(3)),
            )],
            Some(&batch),
        )
        .await
        .unwrap();
    assert_eq!(applied, [true]);
    assert_eq!(claimed.len(), 2);
    assert_eq!(claimed[0].len(), 1, "{claimed:?}");
    assert_ne!(claimed[0][0].task_id, first[0].task_id);
    assert_eq!(claimed[1].len(), 1, "{claimed:?}");
    // Nothing to write and nothing to claim answers without a transaction.
    let empty = ClaimBatch {
        requests: vec![claim_req("w1", "io", 5, at(4))],
        limit: 0,
    };
    let Recorded { applied, claimed } = s.record_and_claim(&[], Some(&empty)).await.unwrap();
    assert!(applied.is_empty());
    assert_eq!(claimed, vec![Vec::<Claim>::new()]);
}

async fn ends_in_one_group_commit_are_fenced_one_by_one(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["a", "b", "c"]).await;
    queue_all(&*s, "r", at(1)).await;
    let tries = s
        .claim(&claim_req("w1", "default", 3, at(2)))
        .await
        .unwrap();
    let by = |t: &str| tries.iter().find(|c| c.task_id == t).unwrap().clone();
    let (a, b, c) = (by("a"), by("b"), by("c"));
    let stranger = Claim {
        owner: "w2".into(),
        ..b.clone()
    };
    let failed = TryEnd {
        error: Some("exit 3".into()),
        ..ended(TaskState::Failed, at(4))
    };
    let requeue = TryEnd {
        error: Some("interrupted".into()),
        requeue: true,
        ..ended(TaskState::Queued, at(5))
    };
    let writes = [
        TryWrite::End(
            a.clone(),
            TryEnd {
                output: Some(json!({"rows": 7})),
                ..ended(TaskState::Success, at(3))
            },
        ),
        TryWrite::End(stranger, ended(TaskState::Success, at(3))),
        TryWrite::Pid(c.clone(), 4242),
        TryWrite::End(c.clone(), failed),
        // The same try ended twice in one commit: the second finds it ended, as it would alone.
        TryWrite::End(c.clone(), ended(TaskState::Success, at(6))),
        TryWrite::End(b.clone(), requeue),
    ];
    let Recorded { applied, .. } = s.record_and_claim(&writes, None).await.unwrap();
    assert_eq!(applied, [true, false, true, true, false, true]);

    let ta = ti(&*s, "r", "a", UNMAPPED).await;
    assert_eq!(
        (ta.state, ta.output, ta.ended_at),
        (TaskState::Success, Some(json!({"rows": 7})), Some(at(3)))
    );
    let tc = ti(&*s, "r", "c", UNMAPPED).await;
    assert_eq!(
        (tc.state, tc.pid, tc.error.as_deref(), tc.lease_owner),
        (TaskState::Failed, Some(4242), Some("exit 3"), None)
    );
    let tb = ti(&*s, "r", "b", UNMAPPED).await;
    assert_eq!(
        (tb.state, tb.try_number, tb.try_base),
        (TaskState::Queued, 1, 1)
    );
    let mut last = Vec::new();
    for t in ["a", "b", "c"] {
        last.push(s.tries("r", t, UNMAPPED).await.unwrap().pop().unwrap());
    }
    let [ra, rb, rc] = <[TryRow; 3]>::try_from(last).unwrap();
    assert_eq!((ra.state, ra.ended_at), (TaskState::Success, Some(at(3))));
    assert_eq!(
        (rb.state, rb.ended_at, rb.error.as_deref()),
        (TaskState::Failed, Some(at(5)), Some("interrupted"))
    );
    assert_eq!(
        (rc.state, rc.ended_at, rc.error.as_deref()),
        (TaskState::Failed, Some(at(4)), Some("exit 3"))
    );
}

async fn paused_flags_cover_active_dags(db: TestDb) {
    let s = db.store;
    assert!(s.paused_flags().await.unwrap().is_empty());
    s.sync_dags(
        &[
            dag("a", "v1", true),
            dag("b", "v1", false),
            dag("c", "v1", false),
        ],
        &ids(&["a", "b", "c"]),
        &no_errors(),
        at(0),
    )
    .await
    .unwrap();
    let flags = |pairs: &[(&str, bool)]| -> BTreeMap<String, bool> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    };
    assert_eq!(
        s.paused_flags().await.unwrap(),
        flags(&[("a", true), ("b", false), ("c", false)])
    );

    assert!(s.set_paused("b", true).await.unwrap());
    s.sync_dags(&[], &ids(&["a", "b"]), &no_errors(), at(1))
        .await
        .unwrap();
    assert_eq!(
        s.paused_flags().await.unwrap(),
        flags(&[("a", true), ("b", true)])
    );
}

async fn keyset_pages_split_runs_queued_in_the_same_instant(db: TestDb) {
    let s = db.store;
    for id in ["a", "b", "c"] {
        assert!(
            s.create_run(&new_run(id, "etl", RunType::Manual, at(60), &[]))
                .await
                .unwrap()
        );
    }
    assert!(
        s.create_run(&new_run("z", "etl", RunType::Manual, at(0), &[]))
            .await
            .unwrap()
    );
    let page = |before: Option<&RunRow>| {
        let filter = RunFilter {
            limit: 2,
            before: before.map(|r| r.queued_at),
            before_run_id: before.map(|r| r.run_id.clone()),
            ..Default::default()
        };
        let s = s.clone();
        async move { s.list_runs(&filter).await.unwrap() }
    };
    let first = page(None).await;
    assert_eq!(run_ids(&first), ["c", "b"]);
    let second = page(first.last()).await;
    assert_eq!(
        run_ids(&second),
        ["a", "z"],
        "a shares b's instant and must not be lost"
    );
    assert!(page(second.last()).await.is_empty());
}

async fn create_run_keyed_creates_once_per_key_and_dag_within_the_window(db: TestDb) {
    let s = db.store;
    let run = |id: &str, dag_id: &str, queued: i64| NewRun {
        queued_at: at(queued),
        ..new_run(
            id,
            dag_id,
            RunType::Manual,
            at(queued),
            &[("a", 0, "default")],
        )
    };
    assert_eq!(
        s.create_run_keyed(&run("r1", "etl", 100), "k", at(0))
            .await
            .unwrap(),
        KeyedRun::Created
    );
    assert_eq!(
        s.create_run_keyed(&run("r2", "etl", 200), "k", at(0))
            .await
            .unwrap(),
        KeyedRun::Existing("r1".into())
    );
    assert_eq!(
        s.get_run("r2").await.unwrap(),
        None,
        "a repeat creates nothing"
    );
    // The key belongs to one DAG; another DAG may use it.
    assert_eq!(
        s.create_run_keyed(&run("r3", "report", 200), "k", at(0))
            .await
            .unwrap(),
        KeyedRun::Created
    );
    // Past the window the key is forgotten and a new run is created.
    assert_eq!(
        s.create_run_keyed(&run("r4", "etl", 300), "k", at(150))
            .await
            .unwrap(),
        KeyedRun::Created
    );
    assert_eq!(
        ti(&*s, "r4", "a", UNMAPPED).await.state,
        TaskState::Scheduled
    );
    assert_eq!(
        s.create_run_keyed(&run("r5", "etl", 310), "k", at(150))
            .await
            .unwrap(),
        KeyedRun::Existing("r4".into())
    );
}

async fn concurrent_keyed_creates_make_one_run(db: TestDb) {
    let s = db.store;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let run = new_run(
                &format!("r{i}"),
                "etl",
                RunType::Manual,
                at(0),
                &[("a", 0, "default")],
            );
            s.create_run_keyed(&run, "same", at(-10)).await.unwrap()
        }));
    }
    let mut created = 0;
    let mut firsts = BTreeSet::new();
    for t in tasks {
        match t.await.unwrap() {
            KeyedRun::Created => created += 1,
            KeyedRun::Existing(id) => {
                firsts.insert(id);
            }
        }
    }
    assert_eq!(created, 1);
    let runs = s
        .list_runs(&RunFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(firsts.iter().all(|id| *id == runs[0].run_id), "{firsts:?}");
}

fn mark(
    run_id: &str,
    task_id: &str,
    state: TaskState,
    downstream: &[&str],
    now: DateTime<Utc>,
) -> Mark {
    Mark {
        run_id: run_id.into(),
        task_id: task_id.into(),
        map_index: None,
        state,
        note: format!("marked {state} by test"),
        downstream: ids(downstream),
        now,
    }
}

async fn mark_task_wins_over_a_running_try_and_requeues_a_finished_run(db: TestDb) {
    let s = db.store;
    started_run(&*s, "r", &["a", "b", "c"]).await;
    s.apply("r", &[queue("a")], at(1)).await.unwrap();
    let c = claim_one(&*s, "w1", at(2)).await;

    // Marking the running try: the instance and its try end as marked, the lease is gone.
    assert_eq!(
        s.mark_task(&mark("r", "a", TaskState::Failed, &[], at(3)))
            .await
            .unwrap(),
        Some(1)
    );
    let a = ti(&*s, "r", "a", UNMAPPED).await;
    assert_eq!(
        (a.state, a.ended_at, a.lease_owner.as_deref()),
        (TaskState::Failed, Some(at(3)), None)
    );
    assert_eq!(a.error.as_deref(), Some("marked failed by test"));
    let tries = s.tries("r", "a", UNMAPPED).await.unwrap();
    assert_eq!(
        (tries[0].state, tries[0].ended_at),
        (TaskState::Failed, Some(at(3)))
    );
    assert!(
        s.owned_tries("w1").await.unwrap().is_empty(),
        "the scheduler must see it lost the try"
    );
    // The try's own result comes too late and is not applied.
    assert!(
        !s.finish_try(&c, &ended(TaskState::Success, at(4)))
            .await
            .unwrap()
    );
    assert_eq!(ti(&*s, "r", "a", UNMAPPED).await.state, TaskState::Failed);

    // The run fails; marking `a` success resets its upstream_failed downstream and requeues the run.
    s.apply(
        "r",
        &[
            Decision::UpstreamFailed {
                task_id: "b".into(),
                map_index: UNMAPPED,
            },
            Decision::UpstreamFailed {
                task_id: "c".into(),
                map_index: UNMAPPED,
            },
            Decision::FinishRun(RunState::Failed),
        ],
        at(5),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_run("r").await.unwrap().unwrap().state,
        RunState::Failed
    );
    assert_eq!(
        s.mark_task(&mark("r", "a", TaskState::Success, &["b"], at(6)))
            .await
            .unwrap(),
        Some(1)
    );
    let a = ti(&*s, "r", "a", UNMAPPED).await;
    assert_eq!((a.state, a.error), (TaskState::Success, None));
    assert_eq!(
        ti(&*s, "r", "b", UNMAPPED).await.state,
        TaskState::Scheduled
    );
    assert_eq!(
        ti(&*s, "r", "c", UNMAPPED).await.state,
        TaskState::UpstreamFailed,
        "not listed"
    );
    let run = s.get_run("r").await.unwrap().unwrap();
    assert_eq!((run.state, run.ended_at), (RunState::Queued, None));

    // Marking again changes nothing; an unknown run is None.
    assert_eq!(
        s.mark_task(&mark("r", "a", TaskState::Success, &[], at(7)))
            .await
            .unwrap(),
        Some(0)
    );
    assert_eq!(
        s.mark_task(&mark("ghost", "a", TaskState::Success, &[], at(7)))
            .await
            .unwrap(),
        None
    );
}

fn history_run(run_id: &str, queued: DateTime<Utc>) -> HistoryRun {
    let try_row = |n: i64, state: TaskState, start: i64| TryRow {
        try_number: n,
        state,
        started_at: queued + Duration::seconds(start),
        ended_at: Some(queued + Duration::seconds(start + 1)),
        error: (state == TaskState::Failed).then(|| "exit 1".to_string()),
    };
    HistoryRun {
        run: RunRow {
            run_id: run_id.into(),
            dag_id: "etl".into(),
            dag_version: "v1".into(),
            run_type: RunType::Scheduled,
            state: RunState::Success,
            logical_date: queued,
            data_interval_start: queued,
            data_interval_end: queued + Duration::days(1),
            params: json!({"region": "eu"}),
            queued_at: queued,
            started_at: Some(queued),
            ended_at: Some(queued + Duration::seconds(5)),
        },
        tasks: vec![
            HistoryTask {
                task_id: "extract".into(),
                map_index: UNMAPPED,
                state: TaskState::Success,
                output: Some(json!({"rows": 3})),
                tries: vec![
                    try_row(1, TaskState::Failed, 0),
                    try_row(2, TaskState::Success, 2),
                ],
            },
            HistoryTask {
                task_id: "load".into(),
                map_index: UNMAPPED,
                state: TaskState::Success,
                output: None,
                tries: vec![try_row(1, TaskState::Success, 4)],
            },
        ],
    }
}

async fn import_history_writes_runs_instances_and_tries_once(db: TestDb) {
    let s = db.store;
    let runs = vec![history_run("r1", at(0)), history_run("r2", at(100))];
    assert_eq!(s.import_history(&runs).await.unwrap(), 2);
    // A second import of the same runs writes nothing.
    assert_eq!(s.import_history(&runs).await.unwrap(), 0);
    let listed = s
        .list_runs(&RunFilter {
            dag_id: Some("etl".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
        ["r2", "r1"]
    );
    assert_eq!(listed[1], runs[0].run);
    let tis = s.task_instances("r1").await.unwrap();
    assert_eq!(tis.len(), 2);
    let extract = tis.iter().find(|t| t.task_id == "extract").unwrap();
    assert_eq!(extract.state, TaskState::Success);
    assert_eq!(extract.try_number, 2);
    assert_eq!(extract.output, Some(json!({"rows": 3})));
    assert_eq!(extract.started_at, Some(at(2)));
    assert_eq!(extract.ended_at, Some(at(3)));
    let tries = s.tries("r1", "extract", UNMAPPED).await.unwrap();
    assert_eq!(tries, runs[0].tasks[0].tries);
    // Imported runs are history: nothing of them is left to claim.
    assert!(s.active_runs().await.unwrap().is_empty());
}

async fn create_runs_applies_a_batch_in_order_in_one_transaction(db: TestDb) {
    let s = db.store;
    let tasks = [("a", 0, "default"), ("b", 0, "default")];
    let keyed = |run_id: &str, key: &str| RunCreate {
        run: new_run(run_id, "etl", RunType::Manual, at(0), &tasks),
        key: Some(IdempotencyKey {
            key: key.to_string(),
            not_before: at(-100),
        }),
    };
    let plain = |run_id: &str, run_type: RunType| RunCreate {
        run: new_run(run_id, "etl", run_type, at(0), &tasks),
        key: None,
    };
    let answers = s
        .create_runs(&[
            plain("m1", RunType::Manual),
            keyed("k1", "key-1"),
            // The same key again in the same batch answers with the first entry's run.
            keyed("k2", "key-1"),
            plain("s1", RunType::Scheduled),
            // A second scheduled run for the same logical date is a duplicate ...
            plain("s2", RunType::Scheduled),
            // ... and so is a keyed run whose id is taken; its key is not kept.
            keyed("m1", "key-2"),
        ])
        .await
        .unwrap();
    assert_eq!(
        answers,
        vec![
            Created::Created,
            Created::Created,
            Created::Existing("k1".into()),
            Created::Created,
            Created::Duplicate,
            Created::Duplicate,
        ]
    );
    let mut ids: Vec<String> = s
        .list_runs(&RunFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    ids.sort();
    assert_eq!(ids, ["k1", "m1", "s1"]);
    assert_eq!(s.task_instances("k1").await.unwrap().len(), 2);
    // key-2 was rolled back: a later request with it creates its run.
    assert_eq!(
        s.create_run_keyed(
            &new_run("k3", "etl", RunType::Manual, at(1), &tasks),
            "key-2",
            at(-100)
        )
        .await
        .unwrap(),
        KeyedRun::Created
    );
    // key-1 is still remembered.
    assert_eq!(
        s.create_runs(&[keyed("k4", "key-1")]).await.unwrap(),
        vec![Created::Existing("k1".into())]
    );
}

macro_rules! contract {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_sqlite(super::$case).await;
                }
            )+
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::on_postgres(super::$case).await;
                }
            )+
        }
    };
}

async fn plan_rows_lists_what_the_planner_acts_on_and_counts_the_rest(db: TestDb) {
    let s = db.store;
    let run = new_run(
        "r",
        "etl",
        RunType::Manual,
        at(0),
        &[
            ("src", 0, "default"),
            ("fan", 0, "default"),
            ("join", 0, "default"),
        ],
    );
    assert!(s.create_run(&run).await.unwrap());
    assert!(s.start_run("r", at(0)).await.unwrap());
    s.apply("r", &[expand("fan", 10)], at(1)).await.unwrap();
    // Three mapped instances run and succeed, one with an output.
    let claims = s
        .claim(&ClaimRequest {
            pool_slots: None,
            limit: 3,
            ..claim_req("w", "default", 3, at(2))
        })
        .await
        .unwrap();
    assert_eq!(claims.len(), 3);
    for (i, c) in claims.iter().enumerate() {
        let mut end = ended(TaskState::Success, at(3));
        if i == 0 {
            end.output = Some(json!({"n": 1}));
        }
        assert!(s.finish_try(c, &end).await.unwrap());
    }
    let rows = s.plan_rows("r", &[]).await.unwrap();
    let listed: Vec<(&str, i64)> = rows
        .rows
        .iter()
        .map(|r| (r.task_id.as_str(), r.map_index))
        .collect();
    // The unmapped instances are listed; the mapped ones are counted, not one of them listed.
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&("src", -1)) && listed.contains(&("join", -1)));
    let mut counts = rows.counts.clone();
    counts.sort_by_key(|a| a.state);
    assert_eq!(
        counts,
        vec![
            InstanceCount {
                task_id: "fan".to_string(),
                state: TaskState::Queued,
                count: 7
            },
            InstanceCount {
                task_id: "fan".to_string(),
                state: TaskState::Success,
                count: 3
            }
        ]
    );
    assert!(rows.rows.iter().all(|r| r.output.is_none()));
    // A task named in full_tasks is listed instance by instance, with outputs.
    let rows = s.plan_rows("r", &ids(&["fan"])).await.unwrap();
    assert_eq!(rows.rows.len(), 12);
    assert!(rows.counts.is_empty(), "{:?}", rows.counts);
    let with_output: Vec<_> = rows.rows.iter().filter(|r| r.output.is_some()).collect();
    assert_eq!(with_output.len(), 1);
    assert_eq!(with_output[0].output, Some(json!({"n": 1})));
    // outputs() reads every instance of the named tasks.
    let outputs = s.outputs("r", &ids(&["fan"])).await.unwrap();
    assert_eq!(outputs.len(), 10);
    assert_eq!(outputs.iter().filter(|o| o.output.is_some()).count(), 1);
}

contract!(
    plan_rows_lists_what_the_planner_acts_on_and_counts_the_rest,
    migrations_apply_on_fresh_db_and_again_on_reopen,
    sync_dags_upserts_keeps_pause_and_deactivates,
    set_paused_reports_unknown_dags,
    create_run_creates_the_run_and_its_instances,
    list_runs_newest_first_with_filters_and_keyset,
    start_run_only_from_queued,
    apply_moves_only_instances_in_the_expected_state,
    expand_replaces_the_placeholder,
    claim_takes_highest_priority_then_oldest_within_its_pool,
    claims_keep_the_queue_order_as_they_read_on,
    claim_respects_limit_and_run_filter,
    claim_records_the_try_and_counts_tries,
    concurrent_claimers_never_share_a_try,
    finish_try_is_fenced_by_owner_and_try_number,
    a_rescheduled_try_gives_its_slot_back_and_runs_again_as_the_same_try,
    an_external_reference_outlives_a_requeue_and_nothing_else,
    the_model_registry_numbers_versions_and_promotes_by_compare_and_set,
    heartbeat_extends_only_the_owners_leases,
    expired_tries_finds_running_tries_past_their_lease,
    clear_tasks_resets_instances_and_requeues_the_run,
    timestamps_round_trip_exactly,
    running_by_pool_and_queued_pools,
    claim_takes_only_the_free_slots_of_a_sized_pool,
    concurrent_claims_of_a_sized_pool_never_take_more_than_its_slots,
    claims_of_several_sized_pools_at_once_never_deadlock,
    record_and_claim_ends_first_then_claims_within_one_limit,
    ends_in_one_group_commit_are_fenced_one_by_one,
    paused_flags_cover_active_dags,
    keyset_pages_split_runs_queued_in_the_same_instant,
    create_run_keyed_creates_once_per_key_and_dag_within_the_window,
    concurrent_keyed_creates_make_one_run,
    mark_task_wins_over_a_running_try_and_requeues_a_finished_run,
    import_history_writes_runs_instances_and_tries_once,
    create_runs_applies_a_batch_in_order_in_one_transaction,
);

async fn grid_counts_groups_each_run_task_and_state(db: TestDb) {
    let s = db.store;
    for (id, t) in [("r1", 0), ("r2", 10), ("other", 20)] {
        let run = new_run(
            id,
            "etl",
            RunType::Manual,
            at(t),
            &[("src", 0, "default"), ("fan", 0, "default")],
        );
        assert!(s.create_run(&run).await.unwrap());
    }
    assert!(s.start_run("r1", at(0)).await.unwrap());
    s.apply("r1", &[expand("fan", 5)], at(1)).await.unwrap();
    // Two mapped instances of r1 run and succeed.
    let claims = s
        .claim(&ClaimRequest {
            pool_slots: None,
            limit: 2,
            run_id: Some("r1".into()),
            ..claim_req("w", "default", 2, at(2))
        })
        .await
        .unwrap();
    assert_eq!(claims.len(), 2);
    for c in &claims {
        assert!(
            s.finish_try(c, &ended(TaskState::Success, at(3)))
                .await
                .unwrap()
        );
    }
    assert!(s.grid_counts(&[]).await.unwrap().is_empty());
    let counts = s.grid_counts(&ids(&["r1", "r2"])).await.unwrap();
    // Nothing of the run not asked for.
    assert!(counts.iter().all(|c| c.run_id != "other"), "{counts:?}");
    let of = |run: &str, task: &str| -> Vec<(TaskState, i64, i64, i64)> {
        counts
            .iter()
            .filter(|c| c.run_id == run && c.task_id == task)
            .map(|c| (c.state, c.count, c.max_map_index, c.max_try_number))
            .collect()
    };
    let fan: i64 = of("r1", "fan").iter().map(|c| c.1).sum();
    assert_eq!(fan, 5, "{counts:?}");
    // Per state: the queued ones are the last three of the map.
    assert_eq!(
        of("r1", "fan")
            .iter()
            .find(|c| c.0 == TaskState::Queued)
            .map(|c| (c.1, c.2)),
        Some((3, 4))
    );
    assert_eq!(
        of("r1", "fan")
            .iter()
            .find(|c| c.0 == TaskState::Success)
            .map(|c| (c.1, c.3)),
        Some((2, 1))
    );
    // The unmapped instances of an untouched run: one each, no try yet.
    assert_eq!(
        of("r2", "src"),
        vec![(TaskState::Scheduled, 1, UNMAPPED, 0)]
    );
    assert_eq!(
        of("r2", "fan"),
        vec![(TaskState::Scheduled, 1, UNMAPPED, 0)]
    );
}

/// The contract cases added with the web pages, in a module of their own so that the list above
/// stays as it was.
mod pages {
    use super::*;

    contract!(grid_counts_groups_each_run_task_and_state);
}

mod keys;
mod tokens;
