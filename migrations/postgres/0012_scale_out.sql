-- Queues (issue 21): a task may name the queue of the workers that may run it (`queue: gpu`);
-- a worker claims only from the queues it serves. Every existing instance is in `default`.
ALTER TABLE task_instances ADD COLUMN queue TEXT NOT NULL DEFAULT 'default';
-- A claim reads one (pool, queue) in claim order, so the queue joins the index right after
-- the pool: a worker of queue `gpu` never walks past the `default` queue's tries.
DROP INDEX task_instances_ready;
CREATE INDEX task_instances_ready ON task_instances (pool, queue, (-priority), queued_at, run_id, task_id, map_index) WHERE state = 'queued';
-- Starting a run counts its DAG's running runs in the same transaction (max_active_runs held
-- across schedulers); this index makes that count read the active runs alone, not the history.
CREATE INDEX dag_runs_active_by_dag ON dag_runs (dag_id, state) WHERE state IN ('queued', 'running');
-- A token's request budget, shared by every server on this database: when the budget is full
-- again (GCRA's theoretical arrival time, microseconds since the epoch).
CREATE TABLE api_rate_limits (
    key  TEXT PRIMARY KEY,
    tat  BIGINT NOT NULL
);
