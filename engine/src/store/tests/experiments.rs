//! The experiments' records' contract cases (migration 0016), on both databases.

use super::*;

fn look(run: &str, looks_after: u64, concluded: bool, t: i64) -> ExperimentLook {
    ExperimentLook {
        name: "subject_line".into(),
        metric: "conversion".into(),
        method: "sequential".into(),
        alpha: 0.05,
        dag_id: "ab".into(),
        task_id: "compute".into(),
        run_id: run.into(),
        history: json!({"treatment": {"looks": looks_after, "tau2": 1.5e-4}}),
        result: json!({"concluded": concluded, "looks": looks_after}),
        leader: Some(Leader {
            variant: "treatment".into(),
            lift: 0.02,
            lift_low: 0.011,
            lift_high: 0.029,
            p_value: 0.0125,
        }),
        winner: concluded.then(|| "treatment".to_string()),
        concluded,
        at: at(t),
    }
}

fn recorded(r: LookRecorded) -> ExperimentRecord {
    match r {
        LookRecorded::Recorded(rec) => *rec,
        LookRecorded::Stale => panic!("the look was refused"),
    }
}

async fn experiment_looks_are_compare_and_set_and_a_conclusion_ends_them(db: TestDb) {
    let s = db.store;
    assert_eq!(
        s.experiment("subject_line", "conversion").await.unwrap(),
        None
    );
    let first = recorded(
        s.record_experiment_look(&look("r1", 1, false, 0), 0)
            .await
            .unwrap(),
    );
    assert_eq!(
        (first.state, first.looks, first.created_at, first.ended_at),
        (ExperimentState::Running, 1, at(0), None)
    );
    assert_eq!(first.leader.as_ref().unwrap().lift_high, 0.029);
    assert_eq!(first.history["treatment"]["looks"], 1);
    // A second creation, or a look that read an older record, changes nothing.
    assert_eq!(
        s.record_experiment_look(&look("r2", 1, false, 5), 0)
            .await
            .unwrap(),
        LookRecorded::Stale
    );
    assert_eq!(
        s.record_experiment_look(&look("r2", 2, false, 5), 2)
            .await
            .unwrap(),
        LookRecorded::Stale
    );
    let second = recorded(
        s.record_experiment_look(&look("r2", 2, false, 10), 1)
            .await
            .unwrap(),
    );
    assert_eq!((second.looks, second.last_run_id.as_str()), (2, "r2"));
    let third = recorded(
        s.record_experiment_look(&look("r3", 3, true, 20), 2)
            .await
            .unwrap(),
    );
    assert_eq!(
        (
            third.state,
            third.looks,
            third.winner.as_deref(),
            third.concluded_run_id.as_deref(),
            third.ended_at,
            third.updated_at,
            third.created_at,
        ),
        (
            ExperimentState::Concluded,
            3,
            Some("treatment"),
            Some("r3"),
            Some(at(20)),
            at(20),
            at(0)
        )
    );
    // A concluded experiment takes no more looks, and stopping it leaves it concluded.
    assert_eq!(
        s.record_experiment_look(&look("r4", 4, false, 30), 3)
            .await
            .unwrap(),
        LookRecorded::Stale
    );
    let stopped = s.stop_experiment("subject_line", at(40)).await.unwrap();
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].state, ExperimentState::Concluded);
    assert_eq!(
        s.experiment("subject_line", "conversion")
            .await
            .unwrap()
            .unwrap(),
        third
    );
}

async fn a_stopped_experiment_takes_no_look_and_unknown_ones_stop_nothing(db: TestDb) {
    let s = db.store;
    assert!(
        s.stop_experiment("nothing", at(0))
            .await
            .unwrap()
            .is_empty()
    );
    recorded(
        s.record_experiment_look(&look("r1", 1, false, 0), 0)
            .await
            .unwrap(),
    );
    let mut mean = look("r1", 1, false, 5);
    mean.metric = "mean".into();
    mean.leader = None;
    recorded(s.record_experiment_look(&mean, 0).await.unwrap());
    let stopped = s.stop_experiment("subject_line", at(10)).await.unwrap();
    assert_eq!(
        stopped
            .iter()
            .map(|e| (e.metric.as_str(), e.state, e.ended_at))
            .collect::<Vec<_>>(),
        vec![
            ("conversion", ExperimentState::Stopped, Some(at(10))),
            ("mean", ExperimentState::Stopped, Some(at(10))),
        ]
    );
    assert_eq!(stopped[1].leader, None);
    assert_eq!(
        s.record_experiment_look(&look("r2", 2, true, 20), 1)
            .await
            .unwrap(),
        LookRecorded::Stale
    );
    // The list: the most recently changed first.
    let listed: Vec<String> = s
        .experiments()
        .await
        .unwrap()
        .iter()
        .map(|e| e.metric.clone())
        .collect();
    assert_eq!(listed, ["conversion", "mean"]);
}

contract!(
    experiment_looks_are_compare_and_set_and_a_conclusion_ends_them,
    a_stopped_experiment_takes_no_look_and_unknown_ones_stop_nothing
);
