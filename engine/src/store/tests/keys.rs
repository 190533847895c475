//! Idempotency keys read without creating (a trigger answered when the DAG's queue is full), on
//! both databases.

use super::*;

async fn keyed_run_finds_the_run_a_key_made_within_its_window(db: TestDb) {
    let s = db.store;
    let run = NewRun {
        queued_at: at(100),
        ..new_run(
            "r1",
            "etl",
            RunType::Manual,
            at(100),
            &[("a", 0, "default")],
        )
    };
    assert_eq!(s.keyed_run("etl", "k", at(0)).await.unwrap(), None);
    assert_eq!(
        s.create_run_keyed(&run, "k", at(0)).await.unwrap(),
        KeyedRun::Created
    );
    assert_eq!(
        s.keyed_run("etl", "k", at(0)).await.unwrap(),
        Some("r1".to_string())
    );
    // The key is the DAG's own, and forgotten once its window has passed.
    assert_eq!(s.keyed_run("report", "k", at(0)).await.unwrap(), None);
    assert_eq!(s.keyed_run("etl", "other", at(0)).await.unwrap(), None);
    assert_eq!(s.keyed_run("etl", "k", at(101)).await.unwrap(), None);
}

contract!(keyed_run_finds_the_run_a_key_made_within_its_window);
