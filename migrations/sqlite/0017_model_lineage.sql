-- Model lineage (issue 24): what a model version was trained on and which runs scored with it.
-- The training set's dataset URI (train's `dataset:`), if given.
ALTER TABLE model_versions ADD COLUMN dataset TEXT;

-- The dataset events a version was trained on: the events of its dataset that triggered the
-- training run, else the dataset's latest event when the version was registered. Retention
-- keeps an event a version names.
CREATE TABLE model_version_events (
    model     TEXT NOT NULL,
    version   BIGINT NOT NULL,
    event_id  BIGINT NOT NULL REFERENCES dataset_events (id),
    PRIMARY KEY (model, version, event_id),
    FOREIGN KEY (model, version) REFERENCES model_versions (model, version)
);

-- Each `predict` task that scored with a version, recorded when its try succeeds; it goes with
-- its run when retention deletes the run.
CREATE TABLE model_predictions (
    model      TEXT NOT NULL,
    version    BIGINT NOT NULL,
    dag_id     TEXT NOT NULL,
    run_id     TEXT NOT NULL REFERENCES dag_runs (run_id) ON DELETE CASCADE,
    task_id    TEXT NOT NULL,
    map_index  BIGINT NOT NULL DEFAULT -1,
    rows_scored BIGINT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (model, version, run_id, task_id, map_index)
);
CREATE INDEX model_predictions_newest ON model_predictions (model, created_at);
