-- Alerts (issue 22): a missed SLA and a run stuck queued are posted once per run (and task),
-- whichever scheduler sees them first: the one whose insert of the alert's row succeeds.
CREATE TABLE alerts_sent (
    run_id   TEXT NOT NULL REFERENCES dag_runs (run_id) ON DELETE CASCADE,
    kind     TEXT NOT NULL,
    -- '' for an alert about the run itself.
    task_id  TEXT NOT NULL DEFAULT '',
    sent_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, kind, task_id)
);
