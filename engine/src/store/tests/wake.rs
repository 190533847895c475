//! Wake-ups reach every process on the database, on both databases: a second store opened on
//! the same URL stands for a second process (it holds its own connections and, on SQLite, its
//! own socket).

use super::*;

/// The next wake-up, or a failure after a few seconds (a wake-up that never comes).
async fn next(w: &mut Wakeups) -> Wake {
    tokio::time::timeout(std::time::Duration::from_secs(5), w.recv())
        .await
        .expect("a wake-up within 5 s")
}

async fn wakes_reach_every_listener_of_the_database(db: TestDb) {
    let a = db.store;
    let b = connect(&db.url)
        .await
        .expect("open the database a second time");
    let mut heard_by_a = a.wakeups().await;
    let mut heard_by_b = b.wakeups().await;

    a.wake(&Wake::Ended("run:1".into())).await;
    assert_eq!(next(&mut heard_by_b).await, Wake::Ended("run:1".into()));
    assert_eq!(next(&mut heard_by_a).await, Wake::Ended("run:1".into()));

    // A write other processes must act on rings by itself, once it is committed.
    let run = new_run("r1", "etl", RunType::Manual, at(0), &[("a", 0, "default")]);
    assert!(b.create_run(&run).await.unwrap());
    assert_eq!(next(&mut heard_by_a).await, Wake::Runs);
    assert!(a.get_run("r1").await.unwrap().is_some());
    // A write that changed nothing rings nothing: the next wake-up is the one sent after it.
    assert!(!b.create_run(&run).await.unwrap());
    b.wake(&Wake::Tried("r1".into())).await;
    assert_eq!(next(&mut heard_by_a).await, Wake::Tried("r1".into()));

    // A listener that came and went leaves nothing that stops the others' wake-ups.
    let c = connect(&db.url)
        .await
        .expect("open the database a third time");
    drop(c.wakeups().await);
    drop(c);
    a.wake(&Wake::Ready).await;
    assert_eq!(next(&mut heard_by_b).await, Wake::Runs);
    assert_eq!(next(&mut heard_by_b).await, Wake::Tried("r1".into()));
    assert_eq!(next(&mut heard_by_b).await, Wake::Ready);
}

contract!(wakes_reach_every_listener_of_the_database);
