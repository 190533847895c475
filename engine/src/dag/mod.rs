//! The DAG model: what a valid DAG file becomes.
//!
//! A [`Dag`] is valid by construction: [`parse::parse_dag`] either returns one or every problem it
//! found, each with its position. Everything downstream (the planner, the scheduler, the
//! executor) can therefore index tasks and trust ids, edges and policies without checking again.

mod datasets;
pub mod load;
mod param_rules;
pub mod parse;
mod quoting;
pub mod schema;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value as Json;

use crate::schedule::{Schedule, Timetable};
use crate::yaml::Pos;

pub use datasets::{DatasetMode, DatasetRef, DatasetSchedule, unproduced_datasets, uri_problem};
pub use param_rules::ParamRules;
pub use parse::{ParseOptions, parse_dag};

/// One problem found in a DAG file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub pos: Pos,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path, self.pos.line, self.pos.col, self.message
        )
    }
}

/// When a task may run, from its upstreams' states (Airflow's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum TriggerRule {
    /// Every upstream succeeded (the default).
    AllSuccess,
    /// Every upstream failed.
    AllFailed,
    /// Every upstream ended, in any state.
    AllDone,
    /// One upstream succeeded, without waiting for the rest.
    OneSuccess,
    /// One upstream failed, without waiting for the rest.
    OneFailed,
    /// Every upstream ended and none failed (skipped is fine).
    NoneFailed,
    /// Every upstream ended, none failed, and at least one succeeded.
    NoneFailedMinOneSuccess,
    /// At once, whatever the upstreams do.
    Always,
    /// Airflow's: as soon as one upstream succeeded or failed.
    OneDone,
    /// Airflow's: every upstream done and none skipped (failures allowed).
    NoneSkipped,
    /// Airflow's: every upstream skipped.
    AllSkipped,
}

impl TriggerRule {
    pub const ALL: [(TriggerRule, &'static str); 11] = [
        (TriggerRule::AllSuccess, "all_success"),
        (TriggerRule::AllFailed, "all_failed"),
        (TriggerRule::AllDone, "all_done"),
        (TriggerRule::OneSuccess, "one_success"),
        (TriggerRule::OneFailed, "one_failed"),
        (TriggerRule::NoneFailed, "none_failed"),
        (
            TriggerRule::NoneFailedMinOneSuccess,
            "none_failed_min_one_success",
        ),
        (TriggerRule::Always, "always"),
        (TriggerRule::OneDone, "one_done"),
        (TriggerRule::NoneSkipped, "none_skipped"),
        (TriggerRule::AllSkipped, "all_skipped"),
    ];

    pub fn parse(s: &str) -> Option<TriggerRule> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(r, _)| *r)
    }

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map(|(_, n)| *n)
            .unwrap_or("all_success")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename_all = "snake_case")]
pub enum Backoff {
    Fixed,
    Exponential,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub delay: Duration,
    pub backoff: Backoff,
    pub max_delay: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 0,
            delay: Duration::from_secs(10),
            backoff: Backoff::Fixed,
            max_delay: None,
        }
    }
}

impl RetryPolicy {
    /// The wait before try `next_try` (2 for the first retry).
    pub fn delay_before(&self, next_try: u32) -> Duration {
        let d = match self.backoff {
            Backoff::Fixed => self.delay,
            Backoff::Exponential => {
                let factor = 2u32.saturating_pow(next_try.saturating_sub(2).min(30));
                self.delay.saturating_mul(factor)
            }
        };
        match self.max_delay {
            Some(max) => d.min(max),
            None => d,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ForEach {
    Items(Vec<Json>),
    Template(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, schemars::JsonSchema)]
#[schemars(rename_all = "lowercase")]
pub enum ParamType {
    String,
    Number,
    Integer,
    Boolean,
    Array,
    Object,
}

impl ParamType {
    pub fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "string" => ParamType::String,
            "number" => ParamType::Number,
            "integer" => ParamType::Integer,
            "boolean" => ParamType::Boolean,
            "array" => ParamType::Array,
            "object" => ParamType::Object,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Number => "number",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::Array => "array",
            ParamType::Object => "object",
        }
    }

    pub fn accepts(self, v: &Json) -> bool {
        match self {
            ParamType::String => v.is_string(),
            ParamType::Number => v.is_number(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Boolean => v.is_boolean(),
            ParamType::Array => v.is_array(),
            ParamType::Object => v.is_object(),
        }
    }

    /// Reads a value given on a command line (`--param K=V`).
    pub fn parse_cli(self, text: &str) -> Result<Json, String> {
        let bad = || format!("expected {} {}", article(self.as_str()), self.as_str());
        match self {
            ParamType::String => Ok(Json::String(text.to_string())),
            ParamType::Integer => text
                .trim()
                .parse::<i64>()
                .map(Json::from)
                .map_err(|_| bad()),
            ParamType::Number => {
                if let Ok(i) = text.trim().parse::<i64>() {
                    return Ok(Json::from(i));
                }
                text.trim()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number)
                    .ok_or_else(bad)
            }
            ParamType::Boolean => match text.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(Json::Bool(true)),
                "false" => Ok(Json::Bool(false)),
                _ => Err(bad()),
            },
            ParamType::Array | ParamType::Object => serde_json::from_str::<Json>(text)
                .ok()
                .filter(|v| self.accepts(v))
                .ok_or_else(|| format!("{} as JSON", bad())),
        }
    }
}

fn article(word: &str) -> &'static str {
    if word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    pub kind: ParamType,
    pub default: Option<Json>,
    pub description: Option<String>,
    pub rules: ParamRules,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub operator: String,
    /// The operator's own keys, unrendered.
    pub config: serde_json::Map<String, Json>,
    pub depends_on: Vec<String>,
    pub trigger_rule: TriggerRule,
    pub when: Option<String>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    pub pool: String,
    /// Only a process serving this queue claims the task's tries (`flow worker --queue`).
    pub queue: String,
    pub priority: i32,
    pub for_each: Option<ForEach>,
    /// Which upstream outputs the operator's keys read, so that a try reads only those.
    pub output_reads: OutputReads,
    /// The secrets the operator's keys name (`secrets.NAME`): the task's process gets
    /// `FLOW_SECRET_NAME` for these and for no other secret.
    pub secret_reads: BTreeSet<String>,
    /// `sla:`: how long after the run's data interval ends the task should be done.
    pub sla: Option<Duration>,
    /// Posted when a try of the task fails with no retry left.
    pub on_failure: Option<Notification>,
    /// Posted when a try of the task fails and another will follow.
    pub on_retry: Option<Notification>,
    /// `produces:` the dataset URIs a successful try of the task updates (one event each).
    pub produces: Vec<String>,
    /// A key of the task reads `triggering_events`, so a try fetches its run's events.
    pub reads_triggering_events: bool,
}

/// Calls `f` with every templated string inside `value`, at any depth (object keys aside).
pub(crate) fn each_template<'a>(value: &'a Json, f: &mut impl FnMut(&'a str)) {
    match value {
        Json::String(text) if crate::template::is_template(text) => f(text),
        Json::Array(items) => items.iter().for_each(|i| each_template(i, f)),
        Json::Object(map) => map.values().for_each(|i| each_template(i, f)),
        _ => {}
    }
}

/// The names of the secrets that the templated strings in `config` read.
pub fn secret_reads(config: &serde_json::Map<String, Json>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for v in config.values() {
        each_template(v, &mut |text| {
            let refs = crate::template::references(text).unwrap_or_default();
            out.extend(refs.iter().filter_map(|r| {
                let mut parts = r.split('.');
                (parts.next() == Some("secrets"))
                    .then(|| parts.next())
                    .flatten()
                    .map(str::to_string)
            }));
        });
    }
    out
}

/// The upstream outputs a task's keys read, found by a static look at their templates.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum OutputReads {
    /// No template names `tasks` (most tasks): a try reads no outputs at all.
    #[default]
    Nothing,
    /// Only `tasks.NAME...` with these names.
    Tasks(BTreeSet<String>),
    /// A template reads `tasks` as a whole (`tasks[name]`, a loop) or could not be parsed.
    AllUpstream,
}

impl OutputReads {
    /// What the templated strings in `config` read.
    pub fn of(config: &serde_json::Map<String, Json>) -> OutputReads {
        let mut out = OutputReads::Nothing;
        let mut read = |text: &str| {
            let Ok(refs) = crate::template::references(text) else {
                out = OutputReads::AllUpstream;
                return;
            };
            for r in refs {
                let mut parts = r.split('.');
                if parts.next() != Some("tasks") {
                    continue;
                }
                match (parts.next(), &mut out) {
                    (_, OutputReads::AllUpstream) => {}
                    (None, o) => *o = OutputReads::AllUpstream,
                    (Some(name), OutputReads::Tasks(set)) => {
                        set.insert(name.to_string());
                    }
                    (Some(name), o) => *o = OutputReads::Tasks(BTreeSet::from([name.to_string()])),
                }
            }
        };
        for v in config.values() {
            each_template(v, &mut read);
        }
        out
    }

    /// The tasks whose outputs to read, among `upstream` (a task reads only its ancestors').
    pub fn among<'a>(&self, upstream: &BTreeSet<&'a str>) -> BTreeSet<&'a str> {
        match self {
            OutputReads::Nothing => BTreeSet::new(),
            OutputReads::Tasks(names) => upstream
                .iter()
                .filter(|u| names.contains(**u))
                .copied()
                .collect(),
            OutputReads::AllUpstream => upstream.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub webhook: String,
}

#[derive(Debug, Clone)]
pub struct Dag {
    pub id: String,
    /// Where the id is written, for problems that involve other files (duplicate ids).
    pub id_pos: Pos,
    pub description: Option<String>,
    pub schedule: Option<Schedule>,
    pub schedule_text: Option<String>,
    /// `schedule: { datasets: [...] }`: runs when the datasets are updated.
    pub datasets: Option<DatasetSchedule>,
    pub timezone: Tz,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
    pub max_active_runs: u32,
    pub paused: bool,
    pub tags: Vec<String>,
    pub params: Vec<Param>,
    pub on_failure: Option<Notification>,
    pub on_success: Option<Notification>,
    /// `sla:`: how long after its data interval ends a run should have succeeded.
    pub sla: Option<Duration>,
    /// In topological order: every task comes after its upstreams.
    pub tasks: Vec<Task>,
    pub path: PathBuf,
    /// A hash of the source: a run keeps the version it started with.
    pub version: String,
    pub source: Arc<str>,
    index: HashMap<String, usize>,
}

pub const DEFAULT_MAX_ACTIVE_RUNS: u32 = 16;
pub const DEFAULT_POOL: &str = "default";
/// The queue of a task that names none, and the one `flow worker` serves unless told others.
pub const DEFAULT_QUEUE: &str = "default";

/// Whether `name` may be a queue's name: what a worker's `--queue` flag can say plainly.
pub fn valid_queue_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Dag {
    pub fn task(&self, id: &str) -> Option<&Task> {
        self.index.get(id).map(|&i| &self.tasks[i])
    }

    pub fn task_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Whether the DAG runs on its own (a cron or datasets), and so again and again.
    pub fn scheduled(&self) -> bool {
        self.schedule.is_some() || self.datasets.is_some()
    }

    /// The folder relative paths in task keys are taken from.
    pub fn folder(&self) -> PathBuf {
        self.path
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."))
    }

    pub fn timetable(&self) -> Option<Timetable> {
        Some(Timetable {
            schedule: self.schedule.clone()?,
            tz: self.timezone,
            start_date: self.start_date?,
            end_date: self.end_date,
            catchup: self.catchup,
        })
    }

    /// Direct downstream tasks of `id`.
    pub fn downstream(&self, id: &str) -> impl Iterator<Item = &Task> {
        self.tasks
            .iter()
            .filter(move |t| t.depends_on.iter().any(|d| d == id))
    }

    /// Every task downstream of `id`, transitively, in topological order.
    pub fn all_downstream(&self, id: &str) -> Vec<&str> {
        let mut reached: BTreeSet<&str> = BTreeSet::new();
        reached.insert(id);
        let mut out = Vec::new();
        for t in &self.tasks {
            if t.depends_on.iter().any(|d| reached.contains(d.as_str())) {
                reached.insert(&t.id);
                out.push(t.id.as_str());
            }
        }
        out
    }

    /// Every task upstream of `id`, transitively.
    pub fn ancestors(&self, id: &str) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        let mut stack = vec![id];
        while let Some(cur) = stack.pop() {
            if let Some(t) = self.task(cur) {
                for d in &t.depends_on {
                    if out.insert(d.as_str()) {
                        stack.push(d);
                    }
                }
            }
        }
        out
    }

    /// Why a run's params no longer fit this version of the DAG, if they do not: validation lets
    /// a shell key emit a number or boolean param unquoted, so a run made when the param was a
    /// string must not render into the new version's commands.
    pub fn params_misfit(&self, run_params: &Json) -> Option<String> {
        self.params.iter().find_map(|p| {
            let v = run_params.get(&p.name)?;
            (!p.kind.accepts(v)).then(|| {
                format!(
                    "param '{}' is {} {} in this version of the DAG, but the run holds {v}",
                    p.name,
                    article(p.kind.as_str()),
                    p.kind.as_str()
                )
            })
        })
    }

    /// The run's params: defaults, overridden by `given`. Every given name must be declared and of
    /// its type; every param without a default must be given.
    pub fn resolve_params(
        &self,
        given: &serde_json::Map<String, Json>,
    ) -> Result<serde_json::Map<String, Json>, String> {
        for (k, v) in given {
            let Some(p) = self.params.iter().find(|p| &p.name == k) else {
                return Err(self.undeclared_param(k));
            };
            if !p.kind.accepts(v) {
                return Err(format!(
                    "param '{k}' must be {} {}, got {v}",
                    article(p.kind.as_str()),
                    p.kind.as_str()
                ));
            }
            if let Some(why) = p.rules.check(v) {
                return Err(format!("param '{k}' {why}"));
            }
        }
        let mut out = serde_json::Map::new();
        for p in &self.params {
            match given.get(&p.name).or(p.default.as_ref()) {
                Some(v) => {
                    out.insert(p.name.clone(), v.clone());
                }
                None => {
                    return Err(format!(
                        "param '{}' has no default and must be given",
                        p.name
                    ));
                }
            }
        }
        Ok(out)
    }

    fn undeclared_param(&self, name: &str) -> String {
        let declared: Vec<_> = self.params.iter().map(|p| p.name.as_str()).collect();
        format!(
            "DAG '{}' declares no param '{name}' (declared: {})",
            self.id,
            if declared.is_empty() {
                "none".to_string()
            } else {
                declared.join(", ")
            }
        )
    }

    /// Reads `--param K=V` pairs using the declared types.
    pub fn params_from_cli(
        &self,
        pairs: &[String],
    ) -> Result<serde_json::Map<String, Json>, String> {
        let mut out = serde_json::Map::new();
        for pair in pairs {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(format!("--param '{pair}' must be written NAME=VALUE"));
            };
            let Some(p) = self.params.iter().find(|p| p.name == k) else {
                return Err(self.undeclared_param(k));
            };
            let value = p
                .kind
                .parse_cli(v)
                .map_err(|e| format!("--param {k}={v}: {e}"))?;
            out.insert(k.to_string(), value);
        }
        Ok(out)
    }
}
