//! The planner: one pure function that decides every state transition of a run.
//!
//! `plan(dag, snapshot, now)` looks at the task instances of one run and returns what should
//! change: queue what is ready, skip or mark `upstream_failed` what can no longer run, expand
//! mapped tasks, and finish the run. It never reads a clock or a database, so every rule here is
//! covered by table tests; the store applies the decisions in one transaction, each as a
//! compare-and-set on the state the planner saw.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use crate::dag::{Dag, ForEach, RetryPolicy, Task, TriggerRule};
use crate::secrets::Secrets;
use crate::state::{RunState, TaskState};
use crate::template::{self, RunContext, TaskPart};

pub use crate::state::UNMAPPED;

/// Mapping more items than this is a failed try rather than a run that swamps the database.
pub(crate) const MAX_MAP_ITEMS: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
pub struct TiSnapshot {
    pub task_id: String,
    pub map_index: i64,
    pub state: TaskState,
    /// Tries started so far.
    pub try_number: i64,
    /// `try_number` when the instance was last cleared: retries count from here.
    pub try_base: i64,
    pub next_try_at: Option<DateTime<Utc>>,
    pub output: Option<Json>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunSnapshot {
    pub run_id: String,
    pub dag_id: String,
    pub state: RunState,
    pub logical_date: DateTime<Utc>,
    pub data_interval_start: DateTime<Utc>,
    pub data_interval_end: DateTime<Utc>,
    pub params: Json,
    /// Instances listed one by one: every one the planner may act on, and any other the caller
    /// chose to list (with outputs, for rendering).
    pub tis: Vec<TiSnapshot>,
    /// The instances not in `tis`, counted per task and state: mapped instances the planner only
    /// needs to count.
    pub counts: Vec<InstanceCount>,
}

/// How many instances of a task are in a state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCount {
    pub task_id: String,
    pub state: TaskState,
    pub count: usize,
}

impl RunSnapshot {
    /// The template context of this run, with the outputs of the given tasks.
    pub fn context<'a>(&self, tasks: impl IntoIterator<Item = &'a str>) -> RunContext {
        let mut outputs = serde_json::Map::new();
        for id in tasks {
            let mut mine: Vec<&TiSnapshot> = self.tis.iter().filter(|t| t.task_id == id).collect();
            mine.sort_by_key(|t| t.map_index);
            let mapped = mine.iter().any(|t| t.map_index != UNMAPPED);
            let value = if mapped {
                Some(Json::Array(
                    mine.iter()
                        .map(|t| t.output.clone().unwrap_or(Json::Null))
                        .collect(),
                ))
            } else {
                mine.first().and_then(|t| t.output.clone())
            };
            if let Some(v) = value {
                let mut entry = serde_json::Map::new();
                entry.insert("output".into(), v);
                outputs.insert(id.to_string(), Json::Object(entry));
            }
        }
        RunContext {
            dag_id: self.dag_id.clone(),
            run_id: self.run_id.clone(),
            logical_date: self.logical_date,
            data_interval_start: self.data_interval_start,
            data_interval_end: self.data_interval_end,
            params: self.params.clone(),
            tasks: outputs,
            triggering_events: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Queue {
        task_id: String,
        map_index: i64,
    },
    Skip {
        task_id: String,
        map_index: i64,
    },
    UpstreamFailed {
        task_id: String,
        map_index: i64,
    },
    /// Replace the unmapped placeholder with one queued instance per item (none: skipped).
    Expand {
        task_id: String,
        items: Vec<Json>,
    },
    /// A try that failed before reaching the executor (`when` or `for_each` did not render).
    FailTry {
        task_id: String,
        map_index: i64,
        message: String,
        outcome: Failure,
    },
    FinishRun(RunState),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    Retry { at: DateTime<Utc> },
    Final,
}

impl Failure {
    pub fn state(self) -> TaskState {
        match self {
            Failure::Retry { .. } => TaskState::UpForRetry,
            Failure::Final => TaskState::Failed,
        }
    }

    pub(crate) fn retry_at(self) -> Option<DateTime<Utc>> {
        match self {
            Failure::Retry { at } => Some(at),
            Failure::Final => None,
        }
    }
}

/// What a failed try leads to: another try later, or the end.
/// `tries` is the number of tries made since the last clear, this one included.
pub(crate) fn after_failure(
    policy: &RetryPolicy,
    tries: i64,
    retryable: bool,
    now: DateTime<Utc>,
) -> Failure {
    if retryable && tries <= policy.retries as i64 {
        let delay = policy.delay_before(tries as u32 + 1);
        let delay = chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        Failure::Retry {
            at: now
                .checked_add_signed(delay)
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        }
    } else {
        Failure::Final
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    pub total: usize,
    pub success: usize,
    /// failed or upstream_failed
    pub failed: usize,
    pub skipped: usize,
    pub done: usize,
}

impl Upstream {
    fn add(&mut self, s: TaskState, n: usize) {
        self.total += n;
        if s.is_terminal() {
            self.done += n;
        }
        match s {
            TaskState::Success => self.success += n,
            TaskState::Failed | TaskState::UpstreamFailed => self.failed += n,
            TaskState::Skipped => self.skipped += n,
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    Wait,
    Run,
    Skip,
    UpstreamFailed,
}

/// The trigger-rule table (Airflow's): what a task does given its upstreams' states.
pub(crate) fn evaluate(rule: TriggerRule, u: Upstream) -> Readiness {
    use Readiness::*;
    if u.total == 0 {
        return Run;
    }
    let all_done = u.done == u.total;
    match rule {
        TriggerRule::Always => Run,
        TriggerRule::OneSuccess if u.success > 0 => Run,
        TriggerRule::OneFailed if u.failed > 0 => Run,
        TriggerRule::OneDone if u.success + u.failed > 0 => Run,
        // A skip settles these before the rest ends, as in Airflow.
        TriggerRule::NoneSkipped if u.skipped > 0 => Skip,
        TriggerRule::AllSkipped if u.success + u.failed > 0 => Skip,
        _ if !all_done => Wait,
        TriggerRule::AllSuccess if u.success == u.total => Run,
        TriggerRule::AllSuccess if u.failed > 0 => UpstreamFailed,
        TriggerRule::AllSuccess => Skip,
        TriggerRule::AllFailed if u.failed == u.total => Run,
        TriggerRule::AllFailed => Skip,
        TriggerRule::AllDone => Run,
        TriggerRule::OneSuccess if u.skipped == u.total => Skip,
        TriggerRule::OneSuccess => UpstreamFailed,
        TriggerRule::OneFailed => Skip,
        TriggerRule::NoneFailed if u.failed == 0 => Run,
        TriggerRule::NoneFailed => UpstreamFailed,
        TriggerRule::NoneFailedMinOneSuccess if u.failed > 0 => UpstreamFailed,
        TriggerRule::NoneFailedMinOneSuccess if u.success > 0 => Run,
        TriggerRule::NoneFailedMinOneSuccess => Skip,
        // Every upstream ended skipped: nothing was done.
        TriggerRule::OneDone => Skip,
        TriggerRule::NoneSkipped => Run,
        TriggerRule::AllSkipped => Run,
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// The earliest moment something in this run becomes due by time alone (a retry).
    pub wake_at: Option<DateTime<Utc>>,
}

/// Decides what changes in `run` now.
pub fn plan(dag: &Dag, run: &RunSnapshot, secrets: &Secrets, now: DateTime<Utc>) -> Plan {
    if run.state != RunState::Running {
        return Plan::default();
    }
    Planner {
        dag,
        run,
        secrets,
        now,
        out: Plan::default(),
    }
    .plan()
}

/// (map index, state) of a task's instances in the planner's working copy.
type Instances = Vec<(i64, TaskState)>;

/// One planning call: its inputs, and the decisions made so far.
struct Planner<'a> {
    dag: &'a Dag,
    run: &'a RunSnapshot,
    secrets: &'a Secrets,
    now: DateTime<Utc>,
    out: Plan,
}

impl<'a> Planner<'a> {
    fn plan(mut self) -> Plan {
        // Working copy of states: a decision made for one task is seen by its downstream tasks
        // in the same call, so an upstream failure cascades through the whole DAG at once.
        let mut states: HashMap<&str, Instances> = HashMap::new();
        // Counted instances never change in a plan: they are neither scheduled nor up for retry.
        let mut counted: HashMap<&str, Vec<(TaskState, usize)>> = HashMap::new();
        for c in &self.run.counts {
            counted
                .entry(c.task_id.as_str())
                .or_default()
                .push((c.state, c.count));
        }
        let mut by_key: HashMap<(&str, i64), &TiSnapshot> = HashMap::new();
        for ti in &self.run.tis {
            states
                .entry(ti.task_id.as_str())
                .or_default()
                .push((ti.map_index, ti.state));
            by_key.insert((ti.task_id.as_str(), ti.map_index), ti);
        }
        for task in &self.dag.tasks {
            let mut upstream = Upstream::default();
            for d in &task.depends_on {
                for (_, s) in states.get(d.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                    upstream.add(*s, 1);
                }
                for (s, n) in counted.get(d.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                    upstream.add(*s, *n);
                }
            }
            let mine = states.get(task.id.as_str()).cloned().unwrap_or_default();
            let mut updated = Vec::with_capacity(mine.len());
            for (map_index, state) in mine {
                let ti = by_key[&(task.id.as_str(), map_index)];
                let replacement = self.decide(task, ti, state, upstream);
                updated.extend(replacement.unwrap_or_else(|| vec![(map_index, state)]));
            }
            states.insert(task.id.as_str(), updated);
        }
        self.finish_run(&states, &counted);
        self.out
    }

    /// One instance: None when it stays as it is, else what replaces it in the working copy.
    fn decide(
        &mut self,
        task: &Task,
        ti: &TiSnapshot,
        state: TaskState,
        upstream: Upstream,
    ) -> Option<Instances> {
        match state {
            TaskState::Scheduled => self.decide_scheduled(task, ti, upstream),
            TaskState::UpForRetry => match ti.next_try_at {
                Some(at) if at > self.now => {
                    self.wake(at);
                    None
                }
                _ => Some(self.queue(task, ti.map_index)),
            },
            _ => None,
        }
    }

    /// The run ends when every instance is final: failed if any failed.
    fn finish_run(
        &mut self,
        states: &HashMap<&str, Instances>,
        counted: &HashMap<&str, Vec<(TaskState, usize)>>,
    ) {
        let all: Vec<TaskState> = states
            .values()
            .flatten()
            .map(|(_, s)| *s)
            .chain(
                counted
                    .values()
                    .flatten()
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, _)| *s),
            )
            .collect();
        if !all.is_empty() && all.iter().all(|s| s.is_terminal()) {
            let failed = all.iter().any(|s| s.is_failure());
            self.out.decisions.push(Decision::FinishRun(if failed {
                RunState::Failed
            } else {
                RunState::Success
            }));
        }
    }

    fn wake(&mut self, at: DateTime<Utc>) {
        self.out.wake_at = Some(self.out.wake_at.map_or(at, |w| w.min(at)));
    }

    fn queue(&mut self, task: &Task, map_index: i64) -> Instances {
        self.out.decisions.push(Decision::Queue {
            task_id: task.id.clone(),
            map_index,
        });
        vec![(map_index, TaskState::Queued)]
    }

    fn skip(&mut self, task: &Task, map_index: i64) -> Instances {
        self.out.decisions.push(Decision::Skip {
            task_id: task.id.clone(),
            map_index,
        });
        vec![(map_index, TaskState::Skipped)]
    }

    /// A try that fails before it starts (its `when` or `for_each` cannot be used); it counts
    /// as a try, retried per the task's policy.
    fn fail(&mut self, task: &Task, ti: &TiSnapshot, message: String) -> Instances {
        let outcome = after_failure(&task.retry, ti.try_number + 1 - ti.try_base, true, self.now);
        if let Some(at) = outcome.retry_at() {
            self.wake(at);
        }
        self.out.decisions.push(Decision::FailTry {
            task_id: task.id.clone(),
            map_index: ti.map_index,
            message,
            outcome,
        });
        vec![(ti.map_index, outcome.state())]
    }

    /// A `scheduled` instance: wait (None), or move on. Returns the instances that replace it in
    /// the working copy: itself in its new state, or the mapped instances it expands into.
    fn decide_scheduled(
        &mut self,
        task: &Task,
        ti: &TiSnapshot,
        upstream: Upstream,
    ) -> Option<Instances> {
        let map_index = ti.map_index;
        match evaluate(task.trigger_rule, upstream) {
            Readiness::Wait => None,
            Readiness::Skip => Some(self.skip(task, map_index)),
            Readiness::UpstreamFailed => {
                self.out.decisions.push(Decision::UpstreamFailed {
                    task_id: task.id.clone(),
                    map_index,
                });
                Some(vec![(map_index, TaskState::UpstreamFailed)])
            }
            // Expanded instances passed `when` and were mapped before they were created.
            Readiness::Run if map_index != UNMAPPED => Some(self.queue(task, map_index)),
            Readiness::Run => Some(self.ready(task, ti)),
        }
    }

    /// An unmapped instance whose upstreams allow it to run: its `when` decides whether it
    /// runs, its `for_each` whether it runs as mapped instances.
    fn ready(&mut self, task: &Task, ti: &TiSnapshot) -> Instances {
        let ancestors = self.dag.ancestors(&task.id);
        let ctx = || {
            self.run.context(ancestors.iter().copied()).to_value(
                &TaskPart {
                    task_id: &task.id,
                    try_number: ti.try_number + 1,
                    item: None,
                    map_index: None,
                },
                self.secrets,
            )
        };
        if let Some(when) = &task.when {
            match template::render(when, &ctx()) {
                Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
                    "true" => {}
                    "false" => return self.skip(task, ti.map_index),
                    other => {
                        let msg = format!("'when' rendered to '{other}', expected true or false");
                        return self.fail(task, ti, msg);
                    }
                },
                Err(e) => return self.fail(task, ti, format!("'when' did not render: {e}")),
            }
        }
        let Some(for_each) = &task.for_each else {
            return self.queue(task, ti.map_index);
        };
        let items = match for_each {
            ForEach::Items(items) => Ok(items.clone()),
            ForEach::Template(src) => rendered_items(src, &ctx()),
        };
        match items {
            Ok(items) if items.len() > MAX_MAP_ITEMS => {
                let msg = format!(
                    "'for_each' has {} items; the limit is {MAX_MAP_ITEMS}",
                    items.len()
                );
                self.fail(task, ti, msg)
            }
            Ok(items) => {
                // Mapping over nothing skips the task, as in Airflow.
                let replacement = if items.is_empty() {
                    vec![(UNMAPPED, TaskState::Skipped)]
                } else {
                    (0..items.len() as i64)
                        .map(|i| (i, TaskState::Queued))
                        .collect()
                };
                self.out.decisions.push(Decision::Expand {
                    task_id: task.id.clone(),
                    items,
                });
                replacement
            }
            Err(msg) => self.fail(task, ti, msg),
        }
    }
}

/// The items of a templated `for_each`: it must render to a JSON list.
pub(crate) fn rendered_items(src: &str, ctx: &minijinja::Value) -> Result<Vec<Json>, String> {
    let text = template::render(src, ctx).map_err(|e| format!("'for_each' did not render: {e}"))?;
    match serde_json::from_str::<Json>(&text) {
        Ok(Json::Array(items)) => Ok(items),
        _ => Err(format!(
            "'for_each' must render to a JSON list, got '{}'",
            text.chars().take(200).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::dag::Backoff;
    use crate::state::TaskState as S;

    use crate::dag::testing::dag;

    /// `id -> depends_on` for shell tasks, each with the given extra YAML lines.
    fn tasks_yaml(tasks: &[(&str, &[&str], &str)]) -> String {
        let mut out = String::from("id: test\ntasks:\n");
        for (id, deps, extra) in tasks {
            out.push_str(&format!(
                "  {id}:\n    operator: shell\n    command: echo {id}\n"
            ));
            if !deps.is_empty() {
                out.push_str(&format!("    depends_on: [{}]\n", deps.join(", ")));
            }
            for line in extra.lines().filter(|l| !l.trim().is_empty()) {
                out.push_str(&format!("    {}\n", line.trim()));
            }
        }
        out
    }

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap()
    }

    fn ti(task: &str, state: S) -> TiSnapshot {
        TiSnapshot {
            task_id: task.to_string(),
            map_index: UNMAPPED,
            state,
            // An ended instance has made a try; one still waiting has not.
            try_number: i64::from(!matches!(state, S::Scheduled | S::Queued)),
            try_base: 0,
            next_try_at: None,
            output: None,
        }
    }

    fn with_output(mut t: TiSnapshot, output: Json) -> TiSnapshot {
        t.output = Some(output);
        t
    }

    fn mapped(task: &str, map_index: i64, state: S) -> TiSnapshot {
        TiSnapshot {
            map_index,
            ..ti(task, state)
        }
    }

    fn run_with(params: Json, tis: Vec<TiSnapshot>) -> RunSnapshot {
        RunSnapshot {
            run_id: "manual__2026-03-01T00:00:00Z".to_string(),
            dag_id: "test".to_string(),
            state: RunState::Running,
            logical_date: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            data_interval_start: Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap(),
            data_interval_end: t0(),
            params,
            tis,
            counts: Vec::new(),
        }
    }

    fn run(tis: Vec<TiSnapshot>) -> RunSnapshot {
        run_with(json!({}), tis)
    }

    fn plan_at(dag: &Dag, run: &RunSnapshot, now: DateTime<Utc>) -> Plan {
        plan(dag, run, &Secrets::default(), now)
    }

    fn decide(dag: &Dag, run: &RunSnapshot) -> Vec<Decision> {
        plan_at(dag, run, t0()).decisions
    }

    fn queue(task: &str) -> Decision {
        Decision::Queue {
            task_id: task.to_string(),
            map_index: UNMAPPED,
        }
    }

    fn skip(task: &str) -> Decision {
        Decision::Skip {
            task_id: task.to_string(),
            map_index: UNMAPPED,
        }
    }

    fn upstream_failed(task: &str) -> Decision {
        Decision::UpstreamFailed {
            task_id: task.to_string(),
            map_index: UNMAPPED,
        }
    }

    fn expand(task: &str, items: Vec<Json>) -> Decision {
        Decision::Expand {
            task_id: task.to_string(),
            items,
        }
    }

    fn upstream(states: &[S]) -> Upstream {
        let mut u = Upstream::default();
        for s in states {
            u.add(*s, 1);
        }
        u
    }

    // ---- evaluate: the contract's trigger-rule table ----

    #[test]
    fn upstream_counts_upstream_failed_as_failed_and_only_terminal_states_as_done() {
        let u = upstream(&[
            S::Success,
            S::Failed,
            S::UpstreamFailed,
            S::Skipped,
            S::Running,
            S::UpForRetry,
            S::Queued,
            S::Scheduled,
        ]);
        assert_eq!(
            u,
            Upstream {
                total: 8,
                success: 1,
                failed: 2,
                skipped: 1,
                done: 4,
            }
        );
    }

    #[test]
    fn evaluate_matches_the_contract_table_for_every_rule() {
        use Readiness::{Run, Skip, UpstreamFailed as UpF, Wait};
        // Columns follow TriggerRule::ALL: all_success, all_failed, all_done, one_success,
        // one_failed, none_failed, none_failed_min_one_success, always.
        let table: &[(&str, &[S], [Readiness; 8])] = &[
            ("no upstreams", &[], [Run; 8]),
            (
                "all success",
                &[S::Success, S::Success],
                [Run, Skip, Run, Run, Skip, Run, Run, Run],
            ),
            (
                "all failed",
                &[S::Failed, S::Failed],
                [UpF, Run, Run, UpF, Run, UpF, UpF, Run],
            ),
            (
                "all skipped",
                &[S::Skipped, S::Skipped],
                [Skip, Skip, Run, Skip, Skip, Run, Skip, Run],
            ),
            (
                "success and failed",
                &[S::Success, S::Failed],
                [UpF, Skip, Run, Run, Run, UpF, UpF, Run],
            ),
            (
                "success and skipped",
                &[S::Success, S::Skipped],
                [Skip, Skip, Run, Run, Skip, Run, Run, Run],
            ),
            (
                "failed and skipped",
                &[S::Failed, S::Skipped],
                [UpF, Skip, Run, UpF, Run, UpF, UpF, Run],
            ),
            (
                "one success, one running",
                &[S::Success, S::Running],
                [Wait, Wait, Wait, Run, Wait, Wait, Wait, Run],
            ),
            (
                "one failed, one running",
                &[S::Failed, S::Running],
                [Wait, Wait, Wait, Wait, Run, Wait, Wait, Run],
            ),
            (
                "one skipped, one running",
                &[S::Skipped, S::Running],
                [Wait, Wait, Wait, Wait, Wait, Wait, Wait, Run],
            ),
            (
                "nothing ended yet",
                &[S::Scheduled, S::Queued],
                [Wait, Wait, Wait, Wait, Wait, Wait, Wait, Run],
            ),
            // up_for_retry has not ended: the failure may still turn into a success.
            (
                "one success, one up_for_retry",
                &[S::Success, S::UpForRetry],
                [Wait, Wait, Wait, Run, Wait, Wait, Wait, Run],
            ),
            (
                "all upstream_failed",
                &[S::UpstreamFailed, S::UpstreamFailed],
                [UpF, Run, Run, UpF, Run, UpF, UpF, Run],
            ),
            (
                "success and upstream_failed",
                &[S::Success, S::UpstreamFailed],
                [UpF, Skip, Run, Run, Run, UpF, UpF, Run],
            ),
            (
                "upstream_failed and skipped",
                &[S::UpstreamFailed, S::Skipped],
                [UpF, Skip, Run, UpF, Run, UpF, UpF, Run],
            ),
            (
                "one upstream_failed, one running",
                &[S::UpstreamFailed, S::Running],
                [Wait, Wait, Wait, Wait, Run, Wait, Wait, Run],
            ),
            (
                "a single success",
                &[S::Success],
                [Run, Skip, Run, Run, Skip, Run, Run, Run],
            ),
        ];
        let mut wrong = Vec::new();
        for (label, states, expected) in table {
            let u = upstream(states);
            for ((rule, name), want) in TriggerRule::ALL.iter().zip(expected) {
                let got = evaluate(*rule, u);
                if got != *want {
                    wrong.push(format!("{name} with {label}: got {got:?}, want {want:?}"));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// The rules beyond the contract's eight (Airflow's `one_done`, `none_skipped`,
    /// `all_skipped`), on the same upstream states.
    #[test]
    fn evaluate_follows_airflow_for_the_rules_beyond_the_contract() {
        use Readiness::{Run, Skip, Wait};
        // Columns: one_done, none_skipped, all_skipped.
        let table: &[(&str, &[S], [Readiness; 3])] = &[
            ("no upstreams", &[], [Run; 3]),
            ("all success", &[S::Success, S::Success], [Run, Run, Skip]),
            ("all failed", &[S::Failed, S::Failed], [Run, Run, Skip]),
            ("all skipped", &[S::Skipped, S::Skipped], [Skip, Skip, Run]),
            (
                "success and failed",
                &[S::Success, S::Failed],
                [Run, Run, Skip],
            ),
            (
                "success and skipped",
                &[S::Success, S::Skipped],
                [Run, Skip, Skip],
            ),
            (
                "upstream_failed and skipped",
                &[S::UpstreamFailed, S::Skipped],
                [Run, Skip, Skip],
            ),
            (
                "one success, one running",
                &[S::Success, S::Running],
                [Run, Wait, Skip],
            ),
            (
                "one skipped, one running",
                &[S::Skipped, S::Running],
                [Wait, Skip, Wait],
            ),
            (
                "one failed, one up_for_retry",
                &[S::Failed, S::UpForRetry],
                [Run, Wait, Skip],
            ),
            (
                "nothing ended yet",
                &[S::Scheduled, S::Queued],
                [Wait, Wait, Wait],
            ),
        ];
        let rules = [
            TriggerRule::OneDone,
            TriggerRule::NoneSkipped,
            TriggerRule::AllSkipped,
        ];
        let mut wrong = Vec::new();
        for (label, states, expected) in table {
            for (rule, want) in rules.iter().zip(expected) {
                let got = evaluate(*rule, upstream(states));
                if got != *want {
                    wrong.push(format!(
                        "{} with {label}: got {got:?}, want {want:?}",
                        rule.as_str()
                    ));
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        for rule in rules {
            assert_eq!(TriggerRule::parse(rule.as_str()), Some(rule));
        }
    }

    #[test]
    fn upstream_failed_is_indistinguishable_from_failed() {
        let pairs: &[(&[S], &[S])] = &[
            (&[S::Failed], &[S::UpstreamFailed]),
            (&[S::Failed, S::Success], &[S::UpstreamFailed, S::Success]),
            (&[S::Failed, S::Skipped], &[S::UpstreamFailed, S::Skipped]),
            (&[S::Failed, S::Running], &[S::UpstreamFailed, S::Running]),
        ];
        for (failed, upstream_failed) in pairs {
            for (rule, name) in TriggerRule::ALL {
                assert_eq!(
                    evaluate(rule, upstream(failed)),
                    evaluate(rule, upstream(upstream_failed)),
                    "{name}: {failed:?} vs {upstream_failed:?}"
                );
            }
        }
    }

    // ---- plan: transitions of small runs ----

    fn chain() -> Dag {
        dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &["a"], ""),
            ("c", &["b"], ""),
            ("d", &["c"], ""),
        ]))
    }

    #[test]
    fn a_fresh_chain_queues_only_its_root() {
        let d = chain();
        let r = run(["a", "b", "c", "d"].map(|t| ti(t, S::Scheduled)).to_vec());
        assert_eq!(
            plan_at(&d, &r, t0()),
            Plan {
                decisions: vec![queue("a")],
                wake_at: None,
            }
        );
    }

    #[test]
    fn a_succeeded_root_queues_the_next_task_only() {
        let d = chain();
        let r = run(vec![
            ti("a", S::Success),
            ti("b", S::Scheduled),
            ti("c", S::Scheduled),
            ti("d", S::Scheduled),
        ]);
        assert_eq!(decide(&d, &r), vec![queue("b")]);
    }

    #[test]
    fn tasks_already_under_way_get_no_decision() {
        let d = chain();
        for state in [S::Queued, S::Running] {
            let r = run(vec![
                ti("a", state),
                ti("b", S::Scheduled),
                ti("c", S::Scheduled),
                ti("d", S::Scheduled),
            ]);
            assert_eq!(plan_at(&d, &r, t0()), Plan::default(), "{state}");
        }
    }

    #[test]
    fn a_failure_cascades_upstream_failed_down_a_chain_in_one_call() {
        let d = chain();
        let r = run(vec![
            ti("a", S::Failed),
            ti("b", S::Scheduled),
            ti("c", S::Scheduled),
            ti("d", S::Scheduled),
        ]);
        assert_eq!(
            decide(&d, &r),
            vec![
                upstream_failed("b"),
                upstream_failed("c"),
                upstream_failed("d"),
                Decision::FinishRun(RunState::Failed),
            ]
        );
    }

    #[test]
    fn all_done_runs_after_a_failure_even_behind_an_upstream_failed_task() {
        let d = dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &["a"], ""),
            ("report", &["b"], "trigger_rule: all_done"),
        ]));
        let r = run(vec![
            ti("a", S::Failed),
            ti("b", S::Scheduled),
            ti("report", S::Scheduled),
        ]);
        assert_eq!(decide(&d, &r), vec![upstream_failed("b"), queue("report")]);

        let direct = dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("report", &["a"], "trigger_rule: all_done"),
        ]));
        let r = run(vec![ti("a", S::Failed), ti("report", S::Scheduled)]);
        assert_eq!(decide(&direct, &r), vec![queue("report")]);
    }

    #[test]
    fn a_skipped_upstream_skips_an_all_success_downstream_and_the_run_succeeds() {
        let d = chain();
        let r = run(vec![
            ti("a", S::Skipped),
            ti("b", S::Scheduled),
            ti("c", S::Scheduled),
            ti("d", S::Scheduled),
        ]);
        assert_eq!(
            decide(&d, &r),
            vec![
                skip("b"),
                skip("c"),
                skip("d"),
                Decision::FinishRun(RunState::Success),
            ]
        );
    }

    #[test]
    fn one_success_fires_without_waiting_for_the_other_upstream() {
        let d = dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &[], ""),
            ("first", &["a", "b"], "trigger_rule: one_success"),
        ]));
        let r = run(vec![
            ti("a", S::Success),
            ti("b", S::Running),
            ti("first", S::Scheduled),
        ]);
        assert_eq!(decide(&d, &r), vec![queue("first")]);
    }

    fn when_dag(retries: u32) -> Dag {
        dag(&format!(
            "id: test\nparams:\n  go: \"true\"\ntasks:\n  a:\n    operator: shell\n    command: echo a\n    when: \"{{{{ params.go }}}}\"\n    retries: {retries}\n    retry_delay: 30s\n"
        ))
    }

    #[test]
    fn when_false_skips_and_true_queues_trimmed_and_case_insensitively() {
        let d = when_dag(0);
        let skipped = || vec![skip("a"), Decision::FinishRun(RunState::Success)];
        let cases = [
            ("false", skipped()),
            (" FALSE\n", skipped()),
            ("true", vec![queue("a")]),
            ("  True ", vec![queue("a")]),
        ];
        for (go, want) in cases {
            let r = run_with(json!({ "go": go }), vec![ti("a", S::Scheduled)]);
            assert_eq!(decide(&d, &r), want, "when rendered {go:?}");
        }
    }

    #[test]
    fn a_plain_boolean_when_is_honoured() {
        let d = dag(&tasks_yaml(&[
            ("a", &[], "when: false"),
            ("b", &[], "when: true"),
        ]));
        let r = run(vec![ti("a", S::Scheduled), ti("b", S::Scheduled)]);
        // Independent tasks come in no promised order.
        let got = decide(&d, &r);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&skip("a")), "{got:?}");
        assert!(got.contains(&queue("b")), "{got:?}");
    }

    #[test]
    fn when_rendering_neither_true_nor_false_fails_the_try() {
        let r = run_with(json!({ "go": "maybe" }), vec![ti("a", S::Scheduled)]);

        let p = plan_at(&when_dag(2), &r, t0());
        let retry_at = t0() + chrono::Duration::seconds(30);
        match p.decisions.as_slice() {
            [
                Decision::FailTry {
                    task_id,
                    map_index: UNMAPPED,
                    message,
                    outcome: Failure::Retry { at },
                },
            ] => {
                assert_eq!(task_id, "a");
                assert!(message.contains("'maybe'"), "{message}");
                assert_eq!(*at, retry_at);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.wake_at, Some(retry_at));

        // A final failure ends the only task, so the run ends in the same call.
        let p = plan_at(&when_dag(0), &r, t0());
        assert!(
            matches!(
                p.decisions.as_slice(),
                [
                    Decision::FailTry {
                        outcome: Failure::Final,
                        ..
                    },
                    Decision::FinishRun(RunState::Failed)
                ]
            ),
            "{p:?}"
        );
        assert_eq!(p.wake_at, None);
    }

    #[test]
    fn a_failing_when_counts_tries_since_the_last_clear() {
        let d = when_dag(2);
        let outcome = |try_number: i64, try_base: i64| {
            let mut t = ti("a", S::Scheduled);
            t.try_number = try_number;
            t.try_base = try_base;
            let r = run_with(json!({ "go": "maybe" }), vec![t]);
            match decide(&d, &r).first() {
                Some(Decision::FailTry { outcome, .. }) => *outcome,
                other => panic!("{other:?}"),
            }
        };
        // Tries 1 and 2 leave a retry; the third try is the last of 1 + 2 retries.
        assert!(matches!(outcome(0, 0), Failure::Retry { .. }));
        assert!(matches!(outcome(1, 0), Failure::Retry { .. }));
        assert_eq!(outcome(2, 0), Failure::Final);
        assert!(matches!(outcome(2, 2), Failure::Retry { .. }));
    }

    #[test]
    fn when_that_does_not_render_fails_the_try() {
        let d = dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &["a"], "when: \"{{ tasks.a.output.ready }}\""),
        ]));
        // a published no output, so the name is undefined at run time.
        let r = run(vec![ti("a", S::Success), ti("b", S::Scheduled)]);
        match decide(&d, &r).as_slice() {
            [
                Decision::FailTry {
                    task_id, message, ..
                },
                Decision::FinishRun(RunState::Failed),
            ] => {
                assert_eq!(task_id, "b");
                assert!(message.starts_with("'when' did not render"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn for_each_with_a_literal_list_expands_into_its_items() {
        let d = dag(&tasks_yaml(&[("a", &[], "for_each: [eu, us, 3]")]));
        let r = run(vec![ti("a", S::Scheduled)]);
        assert_eq!(
            decide(&d, &r),
            vec![expand("a", vec![json!("eu"), json!("us"), json!(3)])]
        );
    }

    #[test]
    fn for_each_waits_for_its_upstreams_before_expanding() {
        let d = dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &["a"], "for_each: [1, 2]"),
        ]));
        let r = run(vec![ti("a", S::Running), ti("b", S::Scheduled)]);
        assert_eq!(decide(&d, &r), vec![]);
    }

    fn fan_out() -> Dag {
        dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &["a"], "for_each: \"{{ tasks.a.output }}\""),
            ("c", &["b"], ""),
        ]))
    }

    #[test]
    fn for_each_template_reading_an_upstream_output_expands() {
        let d = fan_out();
        let r = run(vec![
            with_output(ti("a", S::Success), json!(["x", {"k": 1}, 2.5])),
            ti("b", S::Scheduled),
            ti("c", S::Scheduled),
        ]);
        assert_eq!(
            decide(&d, &r),
            vec![expand("b", vec![json!("x"), json!({"k": 1}), json!(2.5)])]
        );
    }

    #[test]
    fn for_each_over_an_empty_list_skips_the_task_and_then_its_downstream() {
        let d = fan_out();
        let r = run(vec![
            with_output(ti("a", S::Success), json!([])),
            ti("b", S::Scheduled),
            ti("c", S::Scheduled),
        ]);
        // The working copy sees b skipped at once, so c follows in the same call.
        assert_eq!(
            decide(&d, &r),
            vec![
                expand("b", vec![]),
                skip("c"),
                Decision::FinishRun(RunState::Success),
            ]
        );

        // Once the store has applied the expansion (the placeholder is skipped), the next call
        // skips c from the stored states alone.
        let r = run(vec![
            with_output(ti("a", S::Success), json!([])),
            ti("b", S::Skipped),
            ti("c", S::Scheduled),
        ]);
        assert_eq!(
            decide(&d, &r),
            vec![skip("c"), Decision::FinishRun(RunState::Success),]
        );
    }

    #[test]
    fn for_each_rendering_to_anything_but_a_list_fails_the_try() {
        let d = fan_out();
        for output in [json!({"k": 1}), json!("not json"), json!(7), json!(null)] {
            let r = run(vec![
                with_output(ti("a", S::Success), output.clone()),
                ti("b", S::Scheduled),
                ti("c", S::Scheduled),
            ]);
            // The final failure cascades to c and ends the run in the same call.
            match decide(&d, &r).as_slice() {
                [
                    Decision::FailTry {
                        task_id,
                        map_index: UNMAPPED,
                        message,
                        outcome: Failure::Final,
                    },
                    c,
                    Decision::FinishRun(RunState::Failed),
                ] => {
                    assert_eq!(task_id, "b");
                    assert!(message.contains("must render to a JSON list"), "{message}");
                    assert_eq!(c, &upstream_failed("c"));
                }
                other => panic!("output {output}: {other:?}"),
            }
        }
    }

    #[test]
    fn ten_thousand_items_expand_in_one_decision() {
        let items: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
        let d = dag(&tasks_yaml(&[(
            "a",
            &[],
            &format!("for_each: [{}]", items.join(", ")),
        )]));
        let r = run(vec![ti("a", S::Scheduled)]);
        let decisions = decide(&d, &r);
        assert_eq!(decisions.len(), 1);
        match &decisions[0] {
            Decision::Expand { task_id, items } => {
                assert_eq!(task_id, "a");
                assert_eq!(items.len(), 10_000);
                assert_eq!(items[9_999], json!(9_999));
            }
            other => panic!("{other:?}"),
        }

        let d = fan_out();
        let r = run(vec![
            with_output(
                ti("a", S::Success),
                Json::Array((0..10_000).map(Json::from).collect()),
            ),
            ti("b", S::Scheduled),
            ti("c", S::Scheduled),
        ]);
        match decide(&d, &r).as_slice() {
            [Decision::Expand { items, .. }] => assert_eq!(items.len(), 10_000),
            other => panic!("{} decisions", other.len()),
        }
    }

    #[test]
    fn more_items_than_the_limit_fail_the_try() {
        let d = fan_out();
        let too_many = Json::Array((0..=MAX_MAP_ITEMS as i64).map(Json::from).collect());
        let r = run(vec![
            with_output(ti("a", S::Success), too_many),
            ti("b", S::Scheduled),
            ti("c", S::Scheduled),
        ]);
        match decide(&d, &r).as_slice() {
            [Decision::FailTry { message, .. }, _, _] => {
                assert!(message.contains(&MAX_MAP_ITEMS.to_string()), "{message}");
            }
            other => panic!("{} decisions", other.len()),
        }
    }

    #[test]
    fn mapped_instances_count_one_by_one_for_the_downstream_rule() {
        let d = fan_out();
        let a = with_output(ti("a", S::Success), json!([1, 2]));
        let r = run(vec![
            a.clone(),
            mapped("b", 0, S::Success),
            mapped("b", 1, S::Running),
            ti("c", S::Scheduled),
        ]);
        assert_eq!(decide(&d, &r), vec![]);

        let r = run(vec![
            a.clone(),
            mapped("b", 0, S::Success),
            mapped("b", 1, S::Failed),
            ti("c", S::Scheduled),
        ]);
        assert_eq!(
            decide(&d, &r),
            vec![upstream_failed("c"), Decision::FinishRun(RunState::Failed),]
        );

        let r = run(vec![
            a,
            mapped("b", 0, S::Success),
            mapped("b", 1, S::Success),
            ti("c", S::Scheduled),
        ]);
        assert_eq!(decide(&d, &r), vec![queue("c")]);
    }

    #[test]
    fn up_for_retry_waits_for_its_time_then_queues() {
        let d = dag(&tasks_yaml(&[("a", &[], "retries: 3"), ("b", &["a"], "")]));
        let at = t0() + chrono::Duration::seconds(90);
        let mut waiting = ti("a", S::UpForRetry);
        waiting.next_try_at = Some(at);
        let r = run(vec![waiting, ti("b", S::Scheduled)]);

        let before = plan_at(&d, &r, at - chrono::Duration::microseconds(1));
        assert_eq!(
            before,
            Plan {
                decisions: vec![],
                wake_at: Some(at),
            }
        );
        for now in [at, at + chrono::Duration::seconds(1)] {
            let p = plan_at(&d, &r, now);
            assert_eq!(p.decisions, vec![queue("a")], "at {now}");
            assert_eq!(p.wake_at, None);
        }
    }

    #[test]
    fn wake_at_is_the_earliest_pending_retry() {
        let d = dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &[], ""),
            ("c", &[], ""),
        ]));
        let mut a = ti("a", S::UpForRetry);
        a.next_try_at = Some(t0() + chrono::Duration::seconds(50));
        let mut b = ti("b", S::UpForRetry);
        b.next_try_at = Some(t0() + chrono::Duration::seconds(20));
        let r = run(vec![a, b, ti("c", S::Running)]);
        assert_eq!(
            plan_at(&d, &r, t0()).wake_at,
            Some(t0() + chrono::Duration::seconds(20))
        );
    }

    #[test]
    fn the_run_finishes_only_when_every_task_has_ended() {
        let d = dag(&tasks_yaml(&[
            ("a", &[], ""),
            ("b", &[], ""),
            ("c", &[], ""),
        ]));
        let finish = |states: [S; 3]| {
            let r = run(vec![
                ti("a", states[0]),
                ti("b", states[1]),
                ti("c", states[2]),
            ]);
            decide(&d, &r)
                .into_iter()
                .filter_map(|d| match d {
                    Decision::FinishRun(s) => Some(s),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        let cases = [
            (
                [S::Success, S::Success, S::Success],
                Some(RunState::Success),
            ),
            (
                [S::Success, S::Skipped, S::Skipped],
                Some(RunState::Success),
            ),
            (
                [S::Skipped, S::Skipped, S::Skipped],
                Some(RunState::Success),
            ),
            ([S::Success, S::Failed, S::Skipped], Some(RunState::Failed)),
            (
                [S::Success, S::UpstreamFailed, S::Success],
                Some(RunState::Failed),
            ),
            ([S::Failed, S::Running, S::Success], None),
            ([S::Success, S::Queued, S::Success], None),
            ([S::Success, S::UpForRetry, S::Success], None),
            ([S::Failed, S::Failed, S::Running], None),
        ];
        for (states, want) in cases {
            let got = finish(states);
            assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "{states:?}");
        }
    }

    #[test]
    fn a_run_that_is_not_running_gets_no_decisions() {
        let d = chain();
        let mut waiting = ti("b", S::UpForRetry);
        waiting.next_try_at = Some(t0() + chrono::Duration::seconds(5));
        for state in [RunState::Queued, RunState::Success, RunState::Failed] {
            let mut r = run(vec![
                ti("a", S::Failed),
                waiting.clone(),
                ti("c", S::Scheduled),
                ti("d", S::Scheduled),
            ]);
            r.state = state;
            assert_eq!(plan_at(&d, &r, t0()), Plan::default(), "{state}");
            // Not even a finish: the run already ended or has not started.
            let mut r = run(vec![ti("a", S::Success)]);
            r.state = state;
            assert_eq!(plan_at(&d, &r, t0()), Plan::default(), "{state}");
        }
    }

    // ---- after_failure and the retry delay ----

    fn policy(retries: u32, delay_s: u64, backoff: Backoff, max_s: Option<u64>) -> RetryPolicy {
        RetryPolicy {
            retries,
            delay: Duration::from_secs(delay_s),
            backoff,
            max_delay: max_s.map(Duration::from_secs),
        }
    }

    #[test]
    fn fixed_delay_stays_the_same_and_is_capped_too() {
        let p = policy(5, 30, Backoff::Fixed, None);
        for next_try in 2..8 {
            assert_eq!(p.delay_before(next_try), Duration::from_secs(30));
        }
        let capped = policy(5, 30, Backoff::Fixed, Some(10));
        assert_eq!(capped.delay_before(2), Duration::from_secs(10));
    }

    #[test]
    fn exponential_delay_doubles_each_try_up_to_the_cap() {
        let p = policy(10, 10, Backoff::Exponential, Some(60));
        let delays: Vec<u64> = (2..=7).map(|n| p.delay_before(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 60, 60, 60]);

        let uncapped = policy(10, 10, Backoff::Exponential, None);
        let delays: Vec<u64> = (2..=6)
            .map(|n| uncapped.delay_before(n).as_secs())
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160]);
        // Absurd try numbers saturate instead of overflowing.
        assert!(uncapped.delay_before(u32::MAX) >= uncapped.delay_before(40));
    }

    #[test]
    fn after_failure_retries_until_the_retries_are_used_up() {
        let p = policy(2, 10, Backoff::Exponential, Some(600));
        let now = t0();
        assert_eq!(
            after_failure(&p, 1, true, now),
            Failure::Retry {
                at: now + chrono::Duration::seconds(10),
            }
        );
        assert_eq!(
            after_failure(&p, 2, true, now),
            Failure::Retry {
                at: now + chrono::Duration::seconds(20),
            }
        );
        assert_eq!(after_failure(&p, 3, true, now), Failure::Final);
        assert_eq!(after_failure(&p, 4, true, now), Failure::Final);

        let none = policy(0, 10, Backoff::Fixed, None);
        assert_eq!(after_failure(&none, 1, true, now), Failure::Final);
    }

    #[test]
    fn a_non_retryable_failure_is_final_at_once() {
        let p = policy(5, 10, Backoff::Fixed, None);
        assert_eq!(after_failure(&p, 1, false, t0()), Failure::Final);
    }

    #[test]
    fn an_enormous_delay_saturates_instead_of_panicking() {
        let p = RetryPolicy {
            retries: 1000,
            delay: Duration::from_secs(u64::MAX / 4),
            backoff: Backoff::Exponential,
            max_delay: None,
        };
        match after_failure(&p, 999, true, t0()) {
            Failure::Retry { at } => assert!(at > t0()),
            Failure::Final => panic!("retries were left"),
        }
    }

    #[test]
    fn failure_outcomes_map_to_task_states() {
        let at = t0();
        assert_eq!(Failure::Retry { at }.state(), S::UpForRetry);
        assert_eq!(Failure::Retry { at }.retry_at(), Some(at));
        assert_eq!(Failure::Final.state(), S::Failed);
        assert_eq!(Failure::Final.retry_at(), None);
    }

    fn with_counts(mut run: RunSnapshot, counts: &[(&str, S, usize)]) -> RunSnapshot {
        run.counts = counts
            .iter()
            .map(|(t, s, n)| InstanceCount {
                task_id: t.to_string(),
                state: *s,
                count: *n,
            })
            .collect();
        run
    }

    #[test]
    fn counted_instances_count_as_upstreams_and_toward_the_end_of_the_run() {
        let d = dag(&tasks_yaml(&[
            ("src", &[], ""),
            ("fan", &["src"], "for_each: [1, 2, 3, 4]"),
            ("join", &["fan"], ""),
        ]));
        // Two mapped instances still running: join waits, the run goes on.
        let r = with_counts(
            run(vec![ti("src", S::Success), ti("join", S::Scheduled)]),
            &[("fan", S::Success, 2), ("fan", S::Running, 2)],
        );
        assert_eq!(decide(&d, &r), vec![]);
        // All four succeeded: join is queued.
        let r = with_counts(
            run(vec![ti("src", S::Success), ti("join", S::Scheduled)]),
            &[("fan", S::Success, 4)],
        );
        assert_eq!(decide(&d, &r), vec![queue("join")]);
        // One failed: join is upstream_failed and the run fails, in one plan.
        let r = with_counts(
            run(vec![ti("src", S::Success), ti("join", S::Scheduled)]),
            &[("fan", S::Success, 3), ("fan", S::Failed, 1)],
        );
        assert_eq!(
            decide(&d, &r),
            vec![
                upstream_failed("join"),
                Decision::FinishRun(RunState::Failed)
            ]
        );
        // Everything ended well: the run succeeds even though most instances were only counted.
        let r = with_counts(
            run(vec![ti("src", S::Success), ti("join", S::Success)]),
            &[("fan", S::Success, 4)],
        );
        assert_eq!(decide(&d, &r), vec![Decision::FinishRun(RunState::Success)]);
        // A counted instance still queued keeps the run open.
        let r = with_counts(
            run(vec![ti("src", S::Success), ti("join", S::Success)]),
            &[("fan", S::Success, 3), ("fan", S::Queued, 1)],
        );
        assert_eq!(decide(&d, &r), vec![]);
    }
}
