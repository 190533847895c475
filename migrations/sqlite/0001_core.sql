-- Timestamps are microseconds since the Unix epoch (UTC) in both databases, so that one set of
-- queries serves both and values round-trip exactly. JSON is stored as text.
CREATE TABLE dags (
    dag_id        TEXT PRIMARY KEY,
    fileloc       TEXT NOT NULL,
    version       TEXT NOT NULL,
    description   TEXT,
    schedule      TEXT,
    timezone      TEXT NOT NULL,
    tags          TEXT NOT NULL DEFAULT '[]',
    params        TEXT NOT NULL DEFAULT '[]',
    paused        BOOLEAN NOT NULL,
    active        BOOLEAN NOT NULL DEFAULT TRUE,
    next_run_at   BIGINT,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE dag_versions (
    dag_id      TEXT NOT NULL,
    version     TEXT NOT NULL,
    fileloc     TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (dag_id, version)
);

CREATE TABLE import_errors (
    fileloc     TEXT PRIMARY KEY,
    errors      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE dag_runs (
    run_id               TEXT PRIMARY KEY,
    dag_id               TEXT NOT NULL,
    dag_version          TEXT NOT NULL,
    run_type             TEXT NOT NULL,
    state                TEXT NOT NULL,
    logical_date         BIGINT NOT NULL,
    data_interval_start  BIGINT NOT NULL,
    data_interval_end    BIGINT NOT NULL,
    params               TEXT NOT NULL,
    queued_at            BIGINT NOT NULL,
    started_at           BIGINT,
    ended_at             BIGINT
);
-- No double runs: one scheduled or backfill run per DAG and logical date.
CREATE UNIQUE INDEX dag_runs_once_per_interval ON dag_runs (dag_id, logical_date) WHERE run_type <> 'manual';
CREATE INDEX dag_runs_by_dag ON dag_runs (dag_id, queued_at DESC);
CREATE INDEX dag_runs_by_time ON dag_runs (queued_at DESC);
CREATE INDEX dag_runs_active ON dag_runs (state, logical_date) WHERE state IN ('queued', 'running');

CREATE TABLE task_instances (
    run_id            TEXT NOT NULL REFERENCES dag_runs (run_id) ON DELETE CASCADE,
    task_id           TEXT NOT NULL,
    map_index         BIGINT NOT NULL,
    state             TEXT NOT NULL,
    try_number        BIGINT NOT NULL DEFAULT 0,
    try_base          BIGINT NOT NULL DEFAULT 0,
    priority          BIGINT NOT NULL DEFAULT 0,
    pool              TEXT NOT NULL,
    item              TEXT,
    output            TEXT,
    error             TEXT,
    queued_at         BIGINT,
    started_at        BIGINT,
    ended_at          BIGINT,
    next_try_at       BIGINT,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    hostname          TEXT,
    pid               BIGINT,
    PRIMARY KEY (run_id, task_id, map_index)
);
CREATE INDEX task_instances_ready ON task_instances (pool, priority DESC, queued_at) WHERE state = 'queued';
CREATE INDEX task_instances_leases ON task_instances (lease_expires_at) WHERE state = 'running';

CREATE TABLE task_tries (
    run_id       TEXT NOT NULL REFERENCES dag_runs (run_id) ON DELETE CASCADE,
    task_id      TEXT NOT NULL,
    map_index    BIGINT NOT NULL,
    try_number   BIGINT NOT NULL,
    state        TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    ended_at     BIGINT,
    lease_owner  TEXT,
    hostname     TEXT,
    error        TEXT,
    PRIMARY KEY (run_id, task_id, map_index, try_number)
);

CREATE TABLE schedulers (
    id              TEXT PRIMARY KEY,
    hostname        TEXT NOT NULL,
    pid             BIGINT NOT NULL,
    started_at      BIGINT NOT NULL,
    last_heartbeat  BIGINT NOT NULL
);
