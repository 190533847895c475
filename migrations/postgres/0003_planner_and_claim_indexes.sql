-- A claim orders queued tries by (priority, age) and breaks ties by key; with every ORDER BY
-- column in the index, LIMIT n reads n entries instead of sorting every queued try.
DROP INDEX task_instances_ready;
CREATE INDEX task_instances_ready ON task_instances (pool, priority DESC, queued_at, run_id, task_id, map_index) WHERE state = 'queued';
-- The planner counts a run's instances per task and state; this index answers that without
-- reading the rows.
CREATE INDEX task_instances_plan ON task_instances (run_id, task_id, state, map_index);
