//! A claimed try's writes: fenced ends, reschedules, external references, leases and heartbeats, the group commit. On both databases.

use super::*;
use crate::executor::try_key;

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
        produced: Vec::new(),
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
        produced: Vec::new(),
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

async fn heartbeat_extends_only_the_tries_the_owner_holds(db: TestDb) {
    let s = db.store;
    assert_eq!(s.last_heartbeat().await.unwrap(), None);
    started_run(&*s, "r", &["a", "b", "c", "d"]).await;
    queue_all(&*s, "r", at(1)).await;
    let mine = claim_one(&*s, "w1", at(5)).await;
    // Claimed under w1's name, but its start failed: w1 does not hold it.
    let stray = claim_one(&*s, "w1", at(5)).await;
    let theirs = claim_one(&*s, "w2", at(5)).await;
    let lease = |task: String| {
        let s = s.clone();
        async move { ti(&*s, "r", &task, UNMAPPED).await.lease_expires_at }
    };

    // w1 names w2's try and an older try of its own as well: neither is extended.
    let old = TryId {
        try_number: mine.try_number - 1,
        ..try_key(&mine)
    };
    let held = [try_key(&mine), try_key(&theirs), old];
    s.heartbeat("w1", "w1.local", 100, at(30), at(90), &held)
        .await
        .unwrap();
    assert_eq!(lease(mine.task_id.clone()).await, Some(at(90)));
    assert_eq!(lease(stray.task_id.clone()).await, Some(at(65)), "not held");
    assert_eq!(lease(theirs.task_id.clone()).await, Some(at(65)));
    assert_eq!(lease("d".into()).await, None);
    assert_eq!(s.last_heartbeat().await.unwrap(), Some(at(30)));
    // The stray claim lapses, for recovery to run again.
    let expired: Vec<String> = s
        .expired_tries(at(70))
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.task_id)
        .collect();
    assert!(expired.contains(&stray.task_id), "{expired:?}");
    assert!(!expired.contains(&mine.task_id), "{expired:?}");

    // A finished try has no lease left to extend.
    assert!(
        s.finish_try(&mine, &ended(TaskState::Success, at(40)))
            .await
            .unwrap()
    );
    s.heartbeat("w1", "w1.local", 100, at(50), at(110), &[try_key(&mine)])
        .await
        .unwrap();
    let done = ti(&*s, "r", &mine.task_id, UNMAPPED).await;
    assert_eq!(
        (done.state, done.lease_expires_at),
        (TaskState::Success, None)
    );

    s.heartbeat("w2", "w2.local", 200, at(45), at(120), &[try_key(&theirs)])
        .await
        .unwrap();
    assert_eq!(lease(theirs.task_id.clone()).await, Some(at(120)));
    // Nothing held: the scheduler is alive, and no lease moves.
    s.heartbeat("w2", "w2.local", 200, at(46), at(500), &[])
        .await
        .unwrap();
    assert_eq!(lease(theirs.task_id.clone()).await, Some(at(120)));
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

    s.heartbeat("w1", "w1.local", 1, at(100), at(300), &[try_key(&short)])
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

contract!(
    finish_try_is_fenced_by_owner_and_try_number,
    a_rescheduled_try_gives_its_slot_back_and_runs_again_as_the_same_try,
    an_external_reference_outlives_a_requeue_and_nothing_else,
    heartbeat_extends_only_the_tries_the_owner_holds,
    expired_tries_finds_running_tries_past_their_lease,
    record_and_claim_ends_first_then_claims_within_one_limit,
    ends_in_one_group_commit_are_fenced_one_by_one,
);
