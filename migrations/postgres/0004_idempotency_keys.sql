-- `Idempotency-Key` of API triggers: the first request with a key for a DAG records the run it
-- created; a repeat within the window finds this row instead of creating a run. The primary key
-- makes concurrent repeats race-free: one insert wins, the others see its row. No foreign key to
-- dag_runs, because the key is inserted first, in the same transaction as its run.
CREATE TABLE idempotency_keys (
    dag_id      TEXT NOT NULL,
    idem_key    TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (dag_id, idem_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
