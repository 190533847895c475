//! The run snapshots the planner and the template context read, built from store rows.

use crate::plan::{RunSnapshot, TiSnapshot};
use crate::state::TaskState;
use crate::store::{PlanRows, RunRow, TaskOutput};

/// A run's snapshot for the planner.
pub(crate) fn plan_snapshot(run: &RunRow, rows: PlanRows) -> RunSnapshot {
    RunSnapshot {
        run_id: run.run_id.clone(),
        dag_id: run.dag_id.clone(),
        state: run.state,
        logical_date: run.logical_date,
        data_interval_start: run.data_interval_start,
        data_interval_end: run.data_interval_end,
        params: run.params.clone(),
        tis: rows.rows,
        counts: rows.counts,
    }
}

/// A run's snapshot holding only its upstream tasks' outputs: what rendering a task's
/// templates reads (the executor before a try, the task page for its rendered command).
pub fn outputs_snapshot(run: &RunRow, outputs: Vec<TaskOutput>) -> RunSnapshot {
    let rows = outputs
        .into_iter()
        .map(|o| TiSnapshot {
            task_id: o.task_id,
            map_index: o.map_index,
            state: TaskState::Success,
            try_number: 0,
            try_base: 0,
            next_try_at: None,
            output: o.output,
        })
        .collect();
    plan_snapshot(
        run,
        PlanRows {
            rows,
            counts: Vec::new(),
        },
    )
}
