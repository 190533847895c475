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
        consumes: Vec::new(),
        produces: Vec::new(),
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
                queue: "default".into(),
            })
            .collect(),
        queued_at: logical,
    }
}

/// Creates `run` and starts it at `at(0)`: its instances are `scheduled`.
async fn create_started(s: &dyn Store, run: &NewRun) {
    assert!(s.create_run(run).await.unwrap());
    assert!(s.start_run(&run.run_id, at(0)).await.unwrap());
}

/// Run "r" of DAG "etl", started, its instances (`(task, priority, pool)`) `scheduled`.
async fn scheduled_run(s: &dyn Store, tasks: &[(&str, i32, &str)]) {
    create_started(s, &new_run("r", "etl", RunType::Manual, at(0), tasks)).await;
}

/// A started manual run whose tasks (all priority 0, pool `default`) are still `scheduled`.
async fn started_run(s: &dyn Store, run_id: &str, tasks: &[&str]) {
    let tasks: Vec<(&str, i32, &str)> = tasks.iter().map(|t| (*t, 0, "default")).collect();
    create_started(s, &new_run(run_id, "etl", RunType::Manual, at(0), &tasks)).await;
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
    scheduled_run(s, tasks).await;
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
        queue: "default".into(),
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
        queue: "default".into(),
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
        produced: Vec::new(),
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
    // Each version is dated by the sync that first recorded it (v1 at 0, v2 at 10).
    for (v, seen) in [("v1", at(0)), ("v2", at(10))] {
        let stored = s.dag_source("etl", v).await.unwrap().expect("kept");
        assert_eq!(stored.fileloc, "dags/etl.yaml");
        assert_eq!(stored.source, dag("etl", v, true).source);
        assert_eq!(stored.seen_at, seen, "{v}");
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
    s.heartbeat("w1", "w1.local", 1, instants[0], instants[3], &[])
        .await
        .unwrap();
    assert_eq!(s.last_heartbeat().await.unwrap(), Some(instants[0]));
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

contract!(
    migrations_apply_on_fresh_db_and_again_on_reopen,
    sync_dags_upserts_keeps_pause_and_deactivates,
    set_paused_reports_unknown_dags,
    timestamps_round_trip_exactly,
    paused_flags_cover_active_dags,
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

mod activity;
mod alerts;
mod claims;
mod experiments;
mod history;
mod keys;
mod plan;
mod runs;
mod tls;
mod tokens;
mod tries;
mod wake;
