-- The model registry: a model has integer versions 1, 2, ...; each version is a trained artifact
-- with its metrics and where it came from (training set, data interval, run, DAG version), in one
-- stage: candidate (new), production (at most one per model) or archived (a former production).
CREATE TABLE models (
    name TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL
);

CREATE TABLE model_versions (
    model TEXT NOT NULL REFERENCES models (name),
    version BIGINT NOT NULL,
    stage TEXT NOT NULL,
    task TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    metrics TEXT NOT NULL,
    artifact TEXT NOT NULL,
    training_set TEXT NOT NULL,
    data_interval_start BIGINT,
    data_interval_end BIGINT,
    dag_id TEXT NOT NULL,
    dag_version TEXT NOT NULL,
    run_id TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    stage_changed_at BIGINT NOT NULL,
    PRIMARY KEY (model, version)
);

CREATE UNIQUE INDEX model_versions_one_production ON model_versions (model) WHERE stage = 'production';
