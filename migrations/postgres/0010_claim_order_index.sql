-- The claim reads the queue from where this process's last claim stopped (ADR 8) with one row
-- comparison, (-priority, queued_at, run_id, task_id, map_index) > (...), which an index can
-- seek to only if every column in it sorts the same way: hence -priority instead of DESC.
DROP INDEX task_instances_ready;
CREATE INDEX task_instances_ready ON task_instances (pool, (-priority), queued_at, run_id, task_id, map_index) WHERE state = 'queued';
