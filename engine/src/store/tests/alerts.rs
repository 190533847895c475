//! Alerts are claimed once: the first scheduler to record one sends it, on both databases.

use super::*;

async fn an_alert_is_claimed_once_per_run_kind_and_task(db: TestDb) {
    let s = db.store;
    scheduled_run(&*s, &[("a", 0, "default"), ("b", 0, "default")]).await;
    let key = |kind: &'static str, task: Option<&str>| AlertKey {
        run_id: "r".into(),
        kind,
        task_id: task.map(str::to_string),
    };
    assert!(
        s.first_alert(&key("sla_missed", None), at(1))
            .await
            .unwrap()
    );
    assert!(
        !s.first_alert(&key("sla_missed", None), at(2))
            .await
            .unwrap()
    );
    // Another task, another kind: alerts of their own.
    assert!(
        s.first_alert(&key("sla_missed", Some("a")), at(3))
            .await
            .unwrap()
    );
    assert!(
        !s.first_alert(&key("sla_missed", Some("a")), at(4))
            .await
            .unwrap()
    );
    assert!(
        s.first_alert(&key("sla_missed", Some("b")), at(5))
            .await
            .unwrap()
    );
    assert!(
        s.first_alert(&key("stuck_queued", None), at(6))
            .await
            .unwrap()
    );
    // A second store on the same database (another scheduler) sees what the first sent.
    let other = connect(&db.url).await.unwrap();
    assert!(
        !other
            .first_alert(&key("stuck_queued", None), at(7))
            .await
            .unwrap()
    );
}

contract!(an_alert_is_claimed_once_per_run_kind_and_task);
