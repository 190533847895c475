-- The DAG page's grid counts a page of runs' instances per task and state with their highest
-- map index and try number. With try_number in the planner's index the count reads the index
-- alone: on a history of a million instances, reading the rows for it made a page a third slower
-- than on a hundred runs.
DROP INDEX task_instances_plan;
CREATE INDEX task_instances_plan ON task_instances (run_id, task_id, state, map_index, try_number);
