//! What the planner reads and writes: its rows, and decisions applied under the states they expect. On both databases.

use super::*;

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
    scheduled_run(
        &*s,
        &[
            ("fan", 7, "io"),
            ("none", 3, "default"),
            ("late", 0, "default"),
        ],
    )
    .await;

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

async fn plan_rows_lists_what_the_planner_acts_on_and_counts_the_rest(db: TestDb) {
    let s = db.store;
    scheduled_run(
        &*s,
        &[
            ("src", 0, "default"),
            ("fan", 0, "default"),
            ("join", 0, "default"),
        ],
    )
    .await;
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
    apply_moves_only_instances_in_the_expected_state,
    expand_replaces_the_placeholder,
    plan_rows_lists_what_the_planner_acts_on_and_counts_the_rest,
);
