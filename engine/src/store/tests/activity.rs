//! What is in flight, as the metrics read it: active runs by DAG and state, and each pool's
//! queue. On both databases.

use super::*;

async fn activity_counts_active_runs_and_each_pools_queue(db: TestDb) {
    let s = db.store;
    assert_eq!(s.activity().await.unwrap(), Activity::default());
    // Run r: started, three instances queued at t=1 and t=2 in two pools, one of them claimed.
    scheduled_run(
        &*s,
        &[("a", 0, "default"), ("b", 0, "default"), ("g", 0, "gpu")],
    )
    .await;
    s.apply("r", &[queue("a"), queue("g")], at(1))
        .await
        .unwrap();
    s.apply("r", &[queue("b")], at(2)).await.unwrap();
    let claimed = claim_one(&*s, "w1", at(3)).await;
    assert_eq!(claimed.task_id, "a");
    // Two queued runs of another DAG, and a finished run that is history, not activity.
    for (id, secs) in [("q1", 10), ("q2", 20)] {
        let run = new_run(
            id,
            "report",
            RunType::Manual,
            at(secs),
            &[("x", 0, "default")],
        );
        assert!(s.create_run(&run).await.unwrap());
    }
    let done = new_run(
        "d",
        "report",
        RunType::Manual,
        at(30),
        &[("x", 0, "default")],
    );
    create_started(&*s, &done).await;
    s.apply("d", &[Decision::FinishRun(RunState::Success)], at(31))
        .await
        .unwrap();

    let got = s.activity().await.unwrap();
    assert_eq!(
        got.runs,
        vec![
            ActiveRuns {
                dag_id: "etl".into(),
                state: RunState::Running,
                count: 1
            },
            ActiveRuns {
                dag_id: "report".into(),
                state: RunState::Queued,
                count: 2
            },
        ]
    );
    assert_eq!(
        got.pools,
        vec![
            PoolActivity {
                pool: "default".into(),
                queued: 1,
                running: 1,
                oldest_queued_at: Some(at(2)),
            },
            PoolActivity {
                pool: "gpu".into(),
                queued: 1,
                running: 0,
                oldest_queued_at: Some(at(1)),
            },
        ]
    );
}

contract!(activity_counts_active_runs_and_each_pools_queue);
