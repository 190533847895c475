//! History in bulk and the model registry. On both databases.

use super::*;

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

fn model_version(model: &str, auc: f64, at_s: i64) -> NewModelVersion {
    NewModelVersion {
        model: model.into(),
        task: "classification".into(),
        algorithm: "gradient_boosting".into(),
        metrics: json!({"auc": auc}),
        artifact: format!("models/{model}/{at_s}"),
        training_set: "out/training_set/".into(),
        dataset: None,
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

async fn a_model_version_keeps_its_training_events_and_the_runs_that_used_it(db: TestDb) {
    let s = db.store;
    let uri = "lake://ml/training_set";
    let trained = |at_s: i64| NewModelVersion {
        dataset: Some(uri.into()),
        ..model_version("churn", 0.8, at_s)
    };
    // No event of the dataset yet: the version names the dataset and no event.
    s.register_model_version(&trained(10)).await.unwrap();
    let v1 = s.model_version("churn", 1).await.unwrap().unwrap();
    assert_eq!((v1.new.dataset.as_deref(), v1.events.len()), (Some(uri), 0));
    let _old = s
        .record_dataset_event(uri, &json!({"rows": 1}), at(20))
        .await
        .unwrap();
    let latest = s
        .record_dataset_event(uri, &json!({"rows": 2}), at(30))
        .await
        .unwrap();
    s.record_dataset_event("lake://other", &json!({}), at(31))
        .await
        .unwrap();
    // Not triggered by the dataset: the dataset's latest event when the version was registered.
    s.register_model_version(&trained(40)).await.unwrap();
    s.register_model_version(&model_version("churn", 0.7, 50))
        .await
        .unwrap();
    let versions = s.model_versions("churn").await.unwrap();
    let events: Vec<Vec<i64>> = versions
        .iter()
        .map(|v| v.events.iter().map(|e| e.id).collect())
        .collect();
    assert_eq!(events, vec![vec![], vec![latest.id], vec![]]);
    assert_eq!(versions[1].events[0].extra, json!({"rows": 2}));
    // Retention keeps an event a version was trained on.
    assert_eq!(s.old_dataset_events(at(1_000), false).await.unwrap(), 2);
    assert_eq!(
        s.model_version("churn", 2).await.unwrap().unwrap().events[0].id,
        latest.id
    );

    s.import_history(&[history_run("r1", at(100)), history_run("r2", at(200))])
        .await
        .unwrap();
    let used = |run: &str, version: i64, at_s: i64| PredictionUse {
        model: "churn".into(),
        version,
        dag_id: "etl".into(),
        run_id: run.into(),
        task_id: "predict".into(),
        map_index: -1,
        rows_scored: Some(5),
        created_at: at(at_s),
    };
    s.record_prediction(&used("r1", 2, 300)).await.unwrap();
    s.record_prediction(&used("r1", 2, 301)).await.unwrap();
    s.record_prediction(&used("r2", 3, 400)).await.unwrap();
    // A run that is not recorded (a task tested alone) leaves no use.
    s.record_prediction(&used("no-such-run", 3, 500))
        .await
        .unwrap();
    let uses = s.model_predictions("churn", 10).await.unwrap();
    assert_eq!(uses, vec![used("r2", 3, 400), used("r1", 2, 300)]);
    assert_eq!(s.model_predictions("churn", 1).await.unwrap().len(), 1);
    assert!(s.model_predictions("other", 10).await.unwrap().is_empty());
}

contract!(
    the_model_registry_numbers_versions_and_promotes_by_compare_and_set,
    a_model_version_keeps_its_training_events_and_the_runs_that_used_it,
    import_history_writes_runs_instances_and_tries_once,
);
