-- Experiments as records (issue 24). The `experiment` operator keeps one row per experiment and
-- metric: the sequential test's state over its looks (history, JSON per variant), the last
-- look's result, and once it concludes the decision, which later looks return without
-- recomputing, so a conclusion sticks and its webhook fires once. A person may stop it.
CREATE TABLE experiments (
    name              TEXT NOT NULL,
    metric            TEXT NOT NULL,
    -- fixed | sequential, fixed at the first look.
    method            TEXT NOT NULL,
    alpha             DOUBLE PRECISION NOT NULL,
    dag_id            TEXT NOT NULL,
    task_id           TEXT NOT NULL,
    -- running | concluded | stopped
    state             TEXT NOT NULL,
    looks             BIGINT NOT NULL,
    history           TEXT NOT NULL,
    result            TEXT NOT NULL,
    -- The decision once concluded: the winning variant, and the compared variant whose test
    -- concluded it (the smallest p-value) with its lift and interval.
    winner            TEXT,
    variant           TEXT,
    lift              DOUBLE PRECISION,
    lift_low          DOUBLE PRECISION,
    lift_high         DOUBLE PRECISION,
    p_value           DOUBLE PRECISION,
    last_run_id       TEXT NOT NULL,
    concluded_run_id  TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    ended_at          BIGINT,
    PRIMARY KEY (name, metric)
);
CREATE INDEX experiments_by_update ON experiments (updated_at);
