//! Runs and their instances: creation (keyed and batched), listing and paging, starting, clearing and marking. On both databases.

use super::*;

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

/// `max_active_runs` across schedulers: starts of one DAG's runs at the same moment, each in
/// its own transaction (as from several processes), never leave more running than the cap;
/// another DAG's runs do not count.
async fn concurrent_starts_never_pass_max_active_runs(db: TestDb) {
    let s = db.store;
    for i in 0..12 {
        let run = new_run(
            &format!("r{i:02}"),
            "etl",
            RunType::Manual,
            at(i),
            &[("a", 0, "default")],
        );
        assert!(s.create_run(&run).await.unwrap());
    }
    let other = new_run("o", "other", RunType::Manual, at(0), &[("a", 0, "default")]);
    assert!(s.create_run(&other).await.unwrap());
    assert!(s.start_run_within("o", 1, at(1)).await.unwrap());

    let starts = (0..12).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            s.start_run_within(&format!("r{i:02}"), 3, at(20))
                .await
                .unwrap()
        })
    });
    let mut started = 0;
    for st in starts.collect::<Vec<_>>() {
        started += st.await.unwrap() as usize;
    }
    assert_eq!(started, 3, "three runs of etl may run at once");
    let running = |dag: &'static str| {
        let s = s.clone();
        async move {
            s.active_runs()
                .await
                .unwrap()
                .iter()
                .filter(|r| r.dag_id == dag && r.state == RunState::Running)
                .count()
        }
    };
    assert_eq!(running("etl").await, 3);
    assert_eq!(running("other").await, 1);
    // Room again once a run ends.
    let first = s
        .active_runs()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.dag_id == "etl" && r.state == RunState::Running)
        .unwrap();
    let finish = [crate::plan::Decision::FinishRun(RunState::Success)];
    assert!(
        s.apply(&first.run_id, &finish, at(30))
            .await
            .unwrap()
            .finished
    );
    assert!(
        !s.apply(&first.run_id, &finish, at(31))
            .await
            .unwrap()
            .finished,
        "a run ends once: a second scheduler's FinishRun changes nothing"
    );
    let queued = s
        .active_runs()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.state == RunState::Queued)
        .unwrap();
    assert!(s.start_run_within(&queued.run_id, 3, at(32)).await.unwrap());
    assert_eq!(running("etl").await, 3);
}

contract!(
    concurrent_starts_never_pass_max_active_runs,
    create_run_creates_the_run_and_its_instances,
    list_runs_newest_first_with_filters_and_keyset,
    start_run_only_from_queued,
    keyset_pages_split_runs_queued_in_the_same_instant,
    create_run_keyed_creates_once_per_key_and_dag_within_the_window,
    concurrent_keyed_creates_make_one_run,
    create_runs_applies_a_batch_in_order_in_one_transaction,
    clear_tasks_resets_instances_and_requeues_the_run,
    mark_task_wins_over_a_running_try_and_requeues_a_finished_run,
);
