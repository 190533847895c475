//! From YAML text to a valid [`Dag`], or every problem with its position.
//!
//! The walk is hand-written over the positioned tree of [`crate::yaml`] rather than done with
//! serde, because serde stops at the first error and loses positions for semantic checks; the
//! contract asks for every problem, each at its line and column.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;

use super::{
    Backoff, DEFAULT_MAX_ACTIVE_RUNS, DEFAULT_POOL, Dag, Notification, Problem, RetryPolicy, Task,
    TriggerRule,
};
use crate::keys::Catalog;
use crate::schedule::{Schedule, parse_date, parse_duration};
use crate::template;
use crate::yaml::{self, Key, Limits, Node, Pos, Value};

mod checks;
mod datasets;
mod params;
mod tasks;

#[cfg(test)]
pub(crate) use params::PARAM_KEYS;

pub(crate) const DAG_KEYS: &[&str] = &[
    "id",
    "description",
    "schedule",
    "timezone",
    "start_date",
    "end_date",
    "catchup",
    "max_active_runs",
    "paused",
    "tags",
    "params",
    "defaults",
    "on_failure",
    "on_success",
    "sla",
    "tasks",
];

pub(crate) const POLICY_KEYS: &[&str] = &[
    "retries",
    "retry_delay",
    "retry_backoff",
    "max_retry_delay",
    "timeout",
    "pool",
    "queue",
    "priority",
    "trigger_rule",
    "sla",
    "on_failure",
    "on_retry",
];

pub(crate) const TASK_KEYS: &[&str] = &[
    "operator",
    "depends_on",
    "when",
    "for_each",
    "description",
    "produces",
];

#[derive(Debug, Clone, Default)]
pub struct ParseOptions {
    pub limits: Limits,
    /// The connections `flow.toml` defines, when the caller wants every `connection:` that names
    /// one plainly (not through a template) checked against them. `flow dags validate` does; the
    /// scheduler does not, so that a DAG is not hidden by an edit of flow.toml (its tries fail
    /// with the same message instead).
    pub connections: Option<Vec<String>>,
}

/// Parses and validates one DAG file's text.
pub fn parse_dag(
    path: &Path,
    source: &str,
    catalog: &dyn Catalog,
    opts: &ParseOptions,
) -> Result<Dag, Vec<Problem>> {
    let mut cx = Cx {
        path: path.display().to_string(),
        problems: Vec::new(),
        connections: opts.connections.clone(),
    };
    let root = match yaml::parse(source, &opts.limits) {
        Ok(root) => root,
        Err(errors) => {
            for e in errors {
                cx.problem(e.pos, e.message);
            }
            return Err(cx.problems);
        }
    };
    let dag = cx.dag(&root, catalog, path, source);
    match dag {
        Some(dag) if cx.problems.is_empty() => Ok(dag),
        _ => {
            cx.problems.sort_by_key(|p| (p.pos.line, p.pos.col));
            Err(cx.problems)
        }
    }
}

/// The `schedule` key: the parsed cron and its text as written, and the datasets.
#[derive(Default)]
struct ScheduleKey {
    schedule: Option<Schedule>,
    text: Option<String>,
    datasets: Option<super::DatasetSchedule>,
}

struct Dates {
    start: Option<chrono::DateTime<chrono::Utc>>,
    end: Option<chrono::DateTime<chrono::Utc>>,
}

struct DagTasks {
    tasks: Vec<Task>,
    /// False when the tasks form a cycle: `tasks` is then in file order.
    ordered: bool,
}

struct Cx {
    path: String,
    problems: Vec<Problem>,
    connections: Option<Vec<String>>,
}

/// "did you mean" for a misspelt name, when one candidate is close.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    let best = candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < name.len().max(2))
        .min();
    match best {
        Some((_, c)) => format!(" (did you mean '{c}'?)"),
        None => String::new(),
    }
}

/// Keys that begin with `x-` are the user's own (as in docker-compose files): they hold YAML
/// anchors for `<<` merges, or notes, and flow ignores them wherever it names the keys.
pub(crate) fn is_extension(key: &str) -> bool {
    key.starts_with("x-")
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Cx {
    fn problem(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem {
            path: self.path.clone(),
            pos,
            message: message.into(),
        });
    }

    fn map<'n>(&mut self, node: &'n Node, what: &str) -> Option<&'n [(Key, Node)]> {
        match &node.value {
            Value::Map(entries) => Some(entries),
            _ => {
                self.problem(
                    node.pos,
                    format!("{what} must be a mapping, found {}", node.type_name()),
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, entries: &[(Key, Node)], allowed: &[&[&str]], what: &str) {
        for (k, _) in entries {
            if !is_extension(&k.name) && !allowed.iter().any(|set| set.contains(&k.name.as_str())) {
                let hint = did_you_mean(&k.name, allowed.iter().flat_map(|s| s.iter().copied()));
                self.problem(k.pos, format!("unknown key '{}' in {what}{hint}", k.name));
            }
        }
    }

    fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.clone()),
            _ => {
                self.problem(
                    node.pos,
                    format!("'{key}' must be a string, found {}", node.type_name()),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.problem(
                    node.pos,
                    format!(
                        "'{key}' must be true or false, found {}",
                        describe_value(node)
                    ),
                );
                None
            }
        }
    }

    fn integer(&mut self, node: &Node, key: &str, min: i64, max: i64) -> Option<i64> {
        match node.value {
            Value::Int(i) if (min..=max).contains(&i) => Some(i),
            Value::Int(i) => {
                self.problem(
                    node.pos,
                    format!("'{key}' must be between {min} and {max}, found {i}"),
                );
                None
            }
            _ => {
                self.problem(
                    node.pos,
                    format!("'{key}' must be an integer, found {}", describe_value(node)),
                );
                None
            }
        }
    }

    fn duration(&mut self, node: &Node, key: &str) -> Option<Duration> {
        let text = match &node.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) if *i >= 0 => i.to_string(),
            _ => {
                self.problem(
                    node.pos,
                    format!(
                        "'{key}' must be a duration such as 30s, 5m or 2h, found {}",
                        describe_value(node)
                    ),
                );
                return None;
            }
        };
        match parse_duration(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(node.pos, e);
                None
            }
        }
    }

    fn string_list(&mut self, node: &Node, key: &str) -> Vec<(String, Pos)> {
        match &node.value {
            Value::Seq(items) => items
                .iter()
                .filter_map(|n| self.string(n, key).map(|s| (s, n.pos)))
                .collect(),
            // A single id is a natural shorthand for a one-element list.
            Value::Str(s) => vec![(s.clone(), node.pos)],
            _ => {
                self.problem(
                    node.pos,
                    format!("'{key}' must be a list, found {}", node.type_name()),
                );
                Vec::new()
            }
        }
    }

    fn dag(
        &mut self,
        root: &Node,
        catalog: &dyn Catalog,
        path: &Path,
        source: &str,
    ) -> Option<Dag> {
        let entries = self.map(root, "a DAG file")?;
        self.unknown_keys(entries, &[DAG_KEYS], "the DAG");
        let get = |k: &str| root.get(k);
        let id = self.dag_id(root);
        let description = get("description").and_then(|n| self.string(n, "description"));
        let timezone = self.timezone(root);
        let tz = timezone.unwrap_or(Tz::UTC);
        let schedule = self.schedule(root);
        let dates = self.dates(root, tz, schedule.text.is_some());
        let catchup = get("catchup")
            .and_then(|n| self.boolean(n, "catchup"))
            .unwrap_or(false);
        let paused = get("paused")
            .and_then(|n| self.boolean(n, "paused"))
            .unwrap_or(false);
        let max_active_runs = get("max_active_runs")
            .and_then(|n| self.integer(n, "max_active_runs", 1, 100_000))
            .map(|i| i as u32)
            .unwrap_or(DEFAULT_MAX_ACTIVE_RUNS);
        let tags = get("tags")
            .map(|n| {
                self.string_list(n, "tags")
                    .into_iter()
                    .map(|(s, _)| s)
                    .collect()
            })
            .unwrap_or_default();
        let scheduled = schedule.text.is_some() || schedule.datasets.is_some();
        let params = get("params")
            .map(|n| self.params(n, scheduled))
            .unwrap_or_default();
        let on_failure = get("on_failure").and_then(|n| self.notification(n, "on_failure"));
        let on_success = get("on_success").and_then(|n| self.notification(n, "on_success"));
        let sla = get("sla").and_then(|n| self.sla(n));
        let defaults = self.defaults(root);
        let tasks = self.dag_tasks(root, catalog, &defaults);
        // A missing id or a cycle must not hide the problems in templates.
        let complete = id.is_some() && tasks.ordered;
        let mut dag = Dag {
            id: id.unwrap_or_default(),
            id_pos: get("id").map(|n| n.pos).unwrap_or_default(),
            description,
            schedule: schedule.schedule,
            schedule_text: schedule.text,
            datasets: schedule.datasets,
            timezone: tz,
            start_date: dates.start,
            end_date: dates.end,
            catchup,
            max_active_runs,
            paused,
            tags,
            params,
            on_failure,
            on_success,
            sla,
            index: HashMap::new(),
            tasks: tasks.tasks,
            path: path.to_path_buf(),
            version: version_of(source),
            source: Arc::from(source),
        };
        dag.index = dag
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        self.check_templates(&dag, root, catalog);
        timezone?;
        complete.then_some(dag)
    }

    fn dag_id(&mut self, root: &Node) -> Option<String> {
        let Some(n) = root.get("id") else {
            self.problem(root.pos, "missing required key 'id'");
            return None;
        };
        let s = self.string(n, "id")?;
        if is_id(&s) {
            return Some(s);
        }
        self.problem(
            n.pos,
            format!("DAG id '{s}' may only hold lowercase letters, digits and '_'"),
        );
        None
    }

    /// The DAG's timezone (UTC when absent); None after a problem.
    fn timezone(&mut self, root: &Node) -> Option<Tz> {
        let Some(n) = root.get("timezone") else {
            return Some(Tz::UTC);
        };
        let s = self.string(n, "timezone")?;
        match s.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let hint = did_you_mean(&s, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                self.problem(
                    n.pos,
                    format!(
                        "unknown timezone '{s}'{hint}: use an IANA name such as Europe/Amsterdam"
                    ),
                );
                None
            }
        }
    }

    fn schedule(&mut self, root: &Node) -> ScheduleKey {
        match root.get("schedule") {
            None => ScheduleKey::default(),
            Some(n) if matches!(n.value, Value::Null) => ScheduleKey::default(),
            Some(n) if matches!(n.value, Value::Map(_)) => self.schedule_map(n),
            Some(n) => self.cron(n, "schedule"),
        }
    }

    /// A cron expression, preset or interval, and its text.
    fn cron(&mut self, n: &Node, key: &str) -> ScheduleKey {
        let Some(s) = self.string(n, key) else {
            return ScheduleKey::default();
        };
        match Schedule::parse(&s) {
            Ok(sch) => ScheduleKey {
                schedule: Some(sch),
                text: Some(s),
                datasets: None,
            },
            Err(e) => {
                self.problem(n.pos, e.to_string());
                ScheduleKey::default()
            }
        }
    }

    /// `start_date` and `end_date`, read in the DAG's timezone and checked against each other
    /// and the schedule.
    fn dates(&mut self, root: &Node, tz: Tz, scheduled: bool) -> Dates {
        let start = self.date(root, "start_date", tz);
        let end = self.date(root, "end_date", tz);
        if scheduled && root.get("start_date").is_none() {
            let pos = root.get("schedule").map(|n| n.pos).unwrap_or(root.pos);
            self.problem(pos, "a DAG with a schedule needs a 'start_date'");
        }
        if let (Some(s), Some(e), Some(n)) = (start, end, root.get("end_date"))
            && e < s
        {
            self.problem(n.pos, "'end_date' is before 'start_date'");
        }
        Dates { start, end }
    }

    fn date(&mut self, root: &Node, key: &str, tz: Tz) -> Option<chrono::DateTime<chrono::Utc>> {
        let n = root.get(key)?;
        let Value::Str(text) = &n.value else {
            self.problem(
                n.pos,
                format!(
                    "'{key}' must be a date (2026-01-01) or an RFC 3339 timestamp, found {}",
                    describe_value(n)
                ),
            );
            return None;
        };
        match parse_date(text, tz) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(n.pos, e);
                None
            }
        }
    }

    /// The policy every task starts from.
    fn defaults(&mut self, root: &Node) -> Policy {
        let Some(n) = root.get("defaults") else {
            return Policy::default();
        };
        if let Some(entries) = self.map(n, "'defaults'") {
            self.unknown_keys(entries, &[POLICY_KEYS], "'defaults'");
        }
        self.policy(n, &Policy::default())
    }

    /// The tasks in dependency order, or as written when they form a cycle (so that their
    /// templates are still checked).
    fn dag_tasks(&mut self, root: &Node, catalog: &dyn Catalog, defaults: &Policy) -> DagTasks {
        let tasks = match root.get("tasks") {
            None => {
                self.problem(root.pos, "missing required key 'tasks'");
                Vec::new()
            }
            Some(n) => self.tasks(n, catalog, defaults),
        };
        let tasks_pos: HashMap<String, Pos> = match root.get("tasks").map(|n| &n.value) {
            Some(Value::Map(entries)) => entries
                .iter()
                .map(|(k, _)| (k.name.clone(), k.pos))
                .collect(),
            _ => HashMap::new(),
        };
        let unordered: Vec<Task> = tasks.iter().map(|(t, _)| t.clone()).collect();
        match self.order(tasks, &tasks_pos) {
            Some(tasks) => DagTasks {
                tasks,
                ordered: true,
            },
            None => DagTasks {
                tasks: unordered,
                ordered: false,
            },
        }
    }

    fn notification(&mut self, node: &Node, key: &str) -> Option<Notification> {
        let entries = self.map(node, &format!("'{key}'"))?;
        self.unknown_keys(entries, &[&["webhook"]], &format!("'{key}'"));
        let webhook = node.get("webhook").and_then(|n| self.string(n, "webhook"));
        if webhook.is_none() && node.get("webhook").is_none() {
            self.problem(node.pos, format!("'{key}' needs a 'webhook'"));
        }
        if let (Some(w), Some(n)) = (&webhook, node.get("webhook"))
            && let Err(e) = template::references(w)
        {
            self.problem(n.pos, format!("template error in 'webhook': {e}"));
        }
        webhook.map(|webhook| Notification { webhook })
    }

    fn policy(&mut self, node: &Node, base: &Policy) -> Policy {
        let mut p = base.clone();
        if let Some(n) = node.get("retries")
            && let Some(i) = self.integer(n, "retries", 0, 1000)
        {
            p.retry.retries = i as u32;
        }
        if let Some(n) = node.get("retry_delay")
            && let Some(d) = self.duration(n, "retry_delay")
        {
            p.retry.delay = d;
        }
        if let Some(n) = node.get("max_retry_delay")
            && let Some(d) = self.duration(n, "max_retry_delay")
        {
            p.retry.max_delay = Some(d);
        }
        if let Some(n) = node.get("retry_backoff")
            && let Some(s) = self.string(n, "retry_backoff")
        {
            match s.as_str() {
                "fixed" => p.retry.backoff = Backoff::Fixed,
                "exponential" => p.retry.backoff = Backoff::Exponential,
                _ => self.problem(
                    n.pos,
                    format!("unknown retry_backoff '{s}' (expected fixed or exponential)"),
                ),
            }
        }
        if let Some(n) = node.get("timeout")
            && let Some(d) = self.duration(n, "timeout")
        {
            if d.is_zero() {
                self.problem(n.pos, "'timeout' must be positive");
            }
            p.timeout = Some(d);
        }
        if let Some(n) = node.get("pool")
            && let Some(s) = self.string(n, "pool")
        {
            p.pool = s;
        }
        if let Some(n) = node.get("queue")
            && let Some(s) = self.string(n, "queue")
        {
            if crate::dag::valid_queue_name(&s) {
                p.queue = s;
            } else {
                self.problem(
                    n.pos,
                    format!(
                        "queue '{s}' is not a valid name (1 to 64 letters, digits, '_', '-' or '.')"
                    ),
                );
            }
        }
        if let Some(n) = node.get("priority")
            && let Some(i) = self.integer(n, "priority", i32::MIN as i64, i32::MAX as i64)
        {
            p.priority = i as i32;
        }
        if let Some(n) = node.get("trigger_rule")
            && let Some(s) = self.string(n, "trigger_rule")
        {
            match TriggerRule::parse(&s) {
                Some(r) => p.trigger_rule = r,
                None => {
                    let hint = did_you_mean(&s, TriggerRule::ALL.iter().map(|(_, n)| *n));
                    self.problem(n.pos, format!("unknown trigger rule '{s}'{hint}"));
                }
            }
        }
        self.alert_policy(node, &mut p);
        p
    }

    /// A task's alert keys: `sla`, `on_failure`, `on_retry`.
    fn alert_policy(&mut self, node: &Node, p: &mut Policy) {
        if let Some(n) = node.get("sla") {
            p.sla = self.sla(n).or(p.sla);
        }
        if let Some(n) = node.get("on_failure") {
            p.on_failure = self.notification(n, "on_failure").or(p.on_failure.take());
        }
        if let Some(n) = node.get("on_retry") {
            p.on_retry = self.notification(n, "on_retry").or(p.on_retry.take());
        }
    }

    /// An `sla:`: a positive duration.
    fn sla(&mut self, n: &Node) -> Option<Duration> {
        let d = self.duration(n, "sla")?;
        if d.is_zero() {
            self.problem(n.pos, "'sla' must be positive");
            return None;
        }
        Some(d)
    }

    /// Reports a `connection:` (at any depth of an operator key, as in a `sql` source) that
    /// names a connection flow.toml does not define.
    fn check_connections(&mut self, key: &str, node: &Node) {
        let Some(known) = &self.connections else {
            return;
        };
        match &node.value {
            Value::Str(name)
                if key == "connection"
                    && !template::is_template(name)
                    && !known.iter().any(|k| k == name) =>
            {
                let msg = if known.is_empty() {
                    format!("connection '{name}' is not defined: flow.toml has no [connections]")
                } else {
                    format!(
                        "connection '{name}' is not defined in flow.toml{}",
                        match did_you_mean(name, known.iter().map(String::as_str)) {
                            h if h.is_empty() => format!(" (defined: {})", known.join(", ")),
                            h => h,
                        }
                    )
                };
                self.problem(node.pos, msg);
            }
            Value::Map(entries) => {
                for (k, v) in entries {
                    self.check_connections(&k.name, v);
                }
            }
            Value::Seq(items) => {
                for v in items {
                    self.check_connections("", v);
                }
            }
            _ => {}
        }
    }
}

fn describe_value(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => format!("'{s}'"),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => node.type_name().to_string(),
    }
}

/// A stable, short hash of the file text.
pub(crate) fn version_of(source: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike std's DefaultHasher.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in source.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

#[derive(Debug, Clone)]
struct Policy {
    retry: RetryPolicy,
    timeout: Option<Duration>,
    pool: String,
    queue: String,
    priority: i32,
    trigger_rule: TriggerRule,
    sla: Option<Duration>,
    on_failure: Option<Notification>,
    on_retry: Option<Notification>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retry: RetryPolicy::default(),
            timeout: None,
            pool: DEFAULT_POOL.to_string(),
            queue: crate::dag::DEFAULT_QUEUE.to_string(),
            priority: 0,
            trigger_rule: TriggerRule::AllSuccess,
            sla: None,
            on_failure: None,
            on_retry: None,
        }
    }
}
