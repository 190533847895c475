//! Claims: queue order, limits, sized pools, concurrent claimers. On both databases.

use super::*;

async fn claim_takes_highest_priority_then_oldest_within_its_pool(db: TestDb) {
    let s = db.store;
    scheduled_run(
        &*s,
        &[
            ("low", 1, "default"),
            ("z_old", 5, "default"),
            ("a_new", 5, "default"),
            ("high", 9, "default"),
            ("gpu", 100, "gpu"),
        ],
    )
    .await;
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
    scheduled_run(
        &*s,
        &[
            ("m", 0, "default"),
            ("hi", 9, "default"),
            ("other", 5, "default"),
        ],
    )
    .await;
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

/// The pools of lanes of the default queue, in order.
fn pools(lanes: Vec<Lane>) -> Vec<String> {
    assert!(lanes.iter().all(|l| l.queue == "default"), "{lanes:?}");
    lanes.into_iter().map(|l| l.pool).collect()
}

async fn running_by_pool_and_queued_lanes(db: TestDb) {
    let s = db.store;
    assert!(s.running_by_pool().await.unwrap().is_empty());
    assert!(pools(s.queued_lanes().await.unwrap()).is_empty());
    scheduled_run(
        &*s,
        &[
            ("d0", 0, "default"),
            ("d1", 0, "default"),
            ("d2", 0, "default"),
            ("g0", 0, "gpu"),
            ("g1", 0, "gpu"),
            ("i0", 0, "io"),
        ],
    )
    .await;
    assert!(
        pools(s.queued_lanes().await.unwrap()).is_empty(),
        "scheduled is not queued"
    );

    queue_all(&*s, "r", at(1)).await;
    assert_eq!(
        pools(s.queued_lanes().await.unwrap()),
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
        pools(s.queued_lanes().await.unwrap()),
        ["default", "gpu", "io"]
    );

    s.claim(&claim_req("w1", "gpu", 5, at(3))).await.unwrap();
    s.claim(&claim_req("w1", "io", 5, at(3))).await.unwrap();
    assert_eq!(pools(s.queued_lanes().await.unwrap()), ["default"]);
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

/// A claim reads one queue: a worker of `gpu` takes only `gpu` tries, whatever their priority
/// next to the `default` queue's, and the lanes name both.
async fn claims_read_only_their_queue(db: TestDb) {
    let s = db.store;
    let mut run = new_run(
        "r",
        "etl",
        RunType::Manual,
        at(0),
        &[
            ("cpu", 0, "default"),
            ("train", 9, "default"),
            ("infer", 0, "default"),
        ],
    );
    for t in &mut run.tasks {
        if t.task_id != "cpu" {
            t.queue = "gpu".into();
        }
    }
    create_started(&*s, &run).await;
    queue_all(&*s, "r", at(1)).await;
    assert_eq!(
        s.queued_lanes().await.unwrap(),
        [
            Lane {
                pool: "default".into(),
                queue: "default".into()
            },
            Lane {
                pool: "default".into(),
                queue: "gpu".into()
            }
        ]
    );
    assert_eq!(ti(&*s, "r", "train", UNMAPPED).await.queue, "gpu");

    let cpu = s
        .claim(&claim_req("w1", "default", 10, at(2)))
        .await
        .unwrap();
    assert_eq!(
        cpu.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(),
        ["cpu"]
    );
    let gpu = s
        .claim(&ClaimRequest {
            queue: "gpu".into(),
            ..claim_req("w2", "default", 10, at(2))
        })
        .await
        .unwrap();
    assert_eq!(
        gpu.iter().map(|c| c.task_id.as_str()).collect::<Vec<_>>(),
        ["train", "infer"],
        "priority order within the queue"
    );
    assert!(
        s.claim(&ClaimRequest {
            queue: "big-memory".into(),
            ..claim_req("w3", "default", 10, at(2))
        })
        .await
        .unwrap()
        .is_empty()
    );
}

contract!(
    claims_read_only_their_queue,
    claim_takes_highest_priority_then_oldest_within_its_pool,
    claims_keep_the_queue_order_as_they_read_on,
    claim_respects_limit_and_run_filter,
    claim_records_the_try_and_counts_tries,
    concurrent_claimers_never_share_a_try,
    running_by_pool_and_queued_lanes,
    claim_takes_only_the_free_slots_of_a_sized_pool,
    concurrent_claims_of_a_sized_pool_never_take_more_than_its_slots,
    claims_of_several_sized_pools_at_once_never_deadlock,
);
