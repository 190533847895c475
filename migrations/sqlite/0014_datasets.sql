-- Data-aware scheduling (issue 23). A successful try of a task that `produces:` a URI records an
-- event (in the transaction that records the try's end), and the same statement queues the event
-- for every active DAG scheduled on that URI, as Airflow's dataset_dag_run_queue does. A
-- scheduler takes a DAG's queued events, creates its run and deletes them in one transaction:
-- the delete is the claim, so two schedulers never both consume an event, and no event is
-- skipped whatever order concurrent transactions commit in (a watermark on ids could be).
CREATE TABLE dataset_events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    uri              TEXT NOT NULL,
    -- The producing try's output (masked), or an API caller's extra: JSON.
    extra            TEXT NOT NULL DEFAULT '{}',
    -- NULL for an event recorded through the API.
    source_dag_id    TEXT,
    source_run_id    TEXT,
    source_task_id   TEXT,
    source_map_index BIGINT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX dataset_events_by_uri ON dataset_events (uri, id);

-- What each DAG version in use produces and consumes, rewritten when the DAG is recorded: the
-- datasets page and the event's queueing read it. task_id is '' for a consumer.
CREATE TABLE dataset_refs (
    dag_id   TEXT NOT NULL,
    uri      TEXT NOT NULL,
    role     TEXT NOT NULL,
    task_id  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (dag_id, uri, role, task_id)
);
CREATE INDEX dataset_refs_by_uri ON dataset_refs (uri, role);

CREATE TABLE dataset_queue (
    dag_id    TEXT NOT NULL,
    event_id  BIGINT NOT NULL REFERENCES dataset_events (id) ON DELETE CASCADE,
    uri       TEXT NOT NULL,
    PRIMARY KEY (dag_id, event_id)
);

-- The events a dataset-triggered run consumed: its {{ triggering_events }}.
CREATE TABLE run_dataset_events (
    run_id    TEXT NOT NULL REFERENCES dag_runs (run_id) ON DELETE CASCADE,
    event_id  BIGINT NOT NULL REFERENCES dataset_events (id) ON DELETE CASCADE,
    PRIMARY KEY (run_id, event_id)
);
