-- Backfills as objects (issue 23). A backfill names a DAG's intervals in [from_date, to_date];
-- schedulers create its runs as room appears (at most max_active_runs of them queued or
-- running), from cursor_date on (down from it when reverse), so a 10-year daily backfill never
-- holds 3,650 queued runs. Its runs, and the existing runs it covers, carry its id.
CREATE TABLE backfills (
    id               TEXT PRIMARY KEY,
    dag_id           TEXT NOT NULL,
    from_date        BIGINT NOT NULL,
    to_date          BIGINT NOT NULL,
    params           TEXT NOT NULL,
    -- none | failed | all: what to do with a run that exists for an interval.
    rerun            TEXT NOT NULL,
    reverse          BOOLEAN NOT NULL,
    max_active_runs  BIGINT NOT NULL,
    -- running | done | cancelled
    state            TEXT NOT NULL,
    -- The logical date of the next interval to consider; NULL once every one was.
    cursor_date      BIGINT,
    created          BIGINT NOT NULL DEFAULT 0,
    existing         BIGINT NOT NULL DEFAULT 0,
    created_at       BIGINT NOT NULL,
    ended_at         BIGINT
);
CREATE INDEX backfills_by_state ON backfills (state);
CREATE INDEX backfills_by_dag ON backfills (dag_id, created_at);

ALTER TABLE dag_runs ADD COLUMN backfill_id TEXT;
CREATE INDEX dag_runs_by_backfill ON dag_runs (backfill_id, state);
