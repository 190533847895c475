-- Pages of runs are keyset pages ordered by (queued_at, run_id), newest first. With run_id in
-- the index, a page deep in a long history is a range read of `limit` entries, not a scan from
-- the newest run down with a sort of the ties.
DROP INDEX dag_runs_by_dag;
DROP INDEX dag_runs_by_time;
CREATE INDEX dag_runs_by_dag ON dag_runs (dag_id, queued_at DESC, run_id DESC);
CREATE INDEX dag_runs_by_time ON dag_runs (queued_at DESC, run_id DESC);
