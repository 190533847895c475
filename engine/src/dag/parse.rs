//! From YAML text to a valid [`Dag`], or every problem with its position.
//!
//! The walk is hand-written over the positioned tree of [`crate::yaml`] rather than done with
//! serde, because serde stops at the first error and loses positions for semantic checks; the
//! contract asks for every problem, each at its line and column.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use serde_json::Value as Json;

use super::{
    Backoff, DEFAULT_MAX_ACTIVE_RUNS, DEFAULT_POOL, Dag, ForEach, Notification, Param, ParamType,
    Problem, RetryPolicy, Task, TriggerRule,
};
use crate::operator::Catalog;
use crate::schedule::{Schedule, parse_date, parse_duration};
use crate::template;
use crate::yaml::{self, Key, Limits, Node, Pos, Value};

const DAG_KEYS: &[&str] = &[
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
    "tasks",
];

const POLICY_KEYS: &[&str] = &[
    "retries",
    "retry_delay",
    "retry_backoff",
    "max_retry_delay",
    "timeout",
    "pool",
    "priority",
    "trigger_rule",
];

const TASK_KEYS: &[&str] = &["operator", "depends_on", "when", "for_each", "description"];

const PARAM_KEYS: &[&str] = &["type", "default", "description"];

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
            if !allowed.iter().any(|set| set.contains(&k.name.as_str())) {
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

        let id = match get("id") {
            None => {
                self.problem(root.pos, "missing required key 'id'");
                None
            }
            Some(n) => self.string(n, "id").and_then(|s| {
                if is_id(&s) {
                    Some(s)
                } else {
                    self.problem(
                        n.pos,
                        format!("DAG id '{s}' may only hold lowercase letters, digits and '_'"),
                    );
                    None
                }
            }),
        };
        let description = get("description").and_then(|n| self.string(n, "description"));

        let timezone = match get("timezone") {
            None => Some(Tz::UTC),
            Some(n) => self.string(n, "timezone").and_then(|s| match s.parse::<Tz>() {
                Ok(tz) => Some(tz),
                Err(_) => {
                    let hint = did_you_mean(&s, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                    self.problem(
                        n.pos,
                        format!("unknown timezone '{s}'{hint}: use an IANA name such as Europe/Amsterdam"),
                    );
                    None
                }
            }),
        };
        let tz = timezone.unwrap_or(Tz::UTC);

        let (schedule, schedule_text) = match get("schedule") {
            None => (None, None),
            Some(n) if matches!(n.value, Value::Null) => (None, None),
            Some(n) => match self.string(n, "schedule") {
                Some(s) => match Schedule::parse(&s) {
                    Ok(sch) => (Some(sch), Some(s)),
                    Err(e) => {
                        self.problem(n.pos, e.to_string());
                        (None, None)
                    }
                },
                None => (None, None),
            },
        };

        let date = |cx: &mut Self, key: &str| -> Option<chrono::DateTime<chrono::Utc>> {
            let n = get(key)?;
            let text = match &n.value {
                Value::Str(s) => s.clone(),
                _ => {
                    cx.problem(
                        n.pos,
                        format!("'{key}' must be a date (2026-01-01) or an RFC 3339 timestamp, found {}", describe_value(n)),
                    );
                    return None;
                }
            };
            match parse_date(&text, tz) {
                Ok(d) => Some(d),
                Err(e) => {
                    cx.problem(n.pos, e);
                    None
                }
            }
        };
        let start_date = date(self, "start_date");
        let end_date = date(self, "end_date");
        if schedule_text.is_some() && get("start_date").is_none() {
            let pos = get("schedule").map(|n| n.pos).unwrap_or(root.pos);
            self.problem(pos, "a DAG with a schedule needs a 'start_date'");
        }
        if let (Some(s), Some(e), Some(n)) = (start_date, end_date, get("end_date"))
            && e < s
        {
            self.problem(n.pos, "'end_date' is before 'start_date'");
        }

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
        let params = get("params").map(|n| self.params(n)).unwrap_or_default();
        let on_failure = get("on_failure").and_then(|n| self.notification(n, "on_failure"));
        let on_success = get("on_success").and_then(|n| self.notification(n, "on_success"));

        let defaults = match get("defaults") {
            Some(n) => {
                if let Some(entries) = self.map(n, "'defaults'") {
                    self.unknown_keys(entries, &[POLICY_KEYS], "'defaults'");
                }
                self.policy(n, &Policy::default())
            }
            None => Policy::default(),
        };

        let tasks = match get("tasks") {
            None => {
                self.problem(root.pos, "missing required key 'tasks'");
                Vec::new()
            }
            Some(n) => self.tasks(n, catalog, &defaults),
        };
        let tasks_pos: HashMap<String, Pos> = match get("tasks").map(|n| &n.value) {
            Some(Value::Map(entries)) => entries
                .iter()
                .map(|(k, _)| (k.name.clone(), k.pos))
                .collect(),
            _ => HashMap::new(),
        };
        // Kept so that templates are still checked when the tasks form a cycle.
        let unordered: Vec<Task> = tasks.iter().map(|(t, _)| t.clone()).collect();
        let ordered = self.order(tasks, &tasks_pos);
        // A missing id or a cycle must not hide the problems in templates.
        let complete = id.is_some() && ordered.is_some();
        let mut dag = Dag {
            id: id.unwrap_or_default(),
            id_pos: get("id").map(|n| n.pos).unwrap_or_default(),
            description,
            schedule,
            schedule_text,
            timezone: tz,
            start_date,
            end_date,
            catchup,
            max_active_runs,
            paused,
            tags,
            params,
            on_failure,
            on_success,
            index: HashMap::new(),
            tasks: ordered.unwrap_or(unordered),
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

    fn params(&mut self, node: &Node) -> Vec<Param> {
        let Some(entries) = self.map(node, "'params'") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, n) in entries {
            if !is_id(&k.name) {
                self.problem(
                    k.pos,
                    format!(
                        "param name '{}' may only hold lowercase letters, digits and '_'",
                        k.name
                    ),
                );
                continue;
            }
            let (kind, default, description) = match &n.value {
                Value::Map(fields) => {
                    self.unknown_keys(fields, &[PARAM_KEYS], &format!("param '{}'", k.name));
                    let default = n.get("default").map(Node::to_json);
                    let kind = match n.get("type") {
                        Some(t) => match self.string(t, "type") {
                            Some(s) => match ParamType::parse(&s) {
                                Some(kind) => Some(kind),
                                None => {
                                    self.problem(
                                        t.pos,
                                        format!("unknown param type '{s}' (expected string, number, integer, boolean, array or object)"),
                                    );
                                    None
                                }
                            },
                            None => None,
                        },
                        None => Some(
                            default
                                .as_ref()
                                .map(infer_type)
                                .unwrap_or(ParamType::String),
                        ),
                    };
                    let description = n
                        .get("description")
                        .and_then(|d| self.string(d, "description"));
                    (kind, default, description)
                }
                // `name: value` is shorthand for a param with that default and its type.
                _ => {
                    let v = n.to_json();
                    (Some(infer_type(&v)), Some(v), None)
                }
            };
            let Some(kind) = kind else { continue };
            if let Some(d) = &default
                && !kind.accepts(d)
            {
                let pos = n.get("default").map(|d| d.pos).unwrap_or(n.pos);
                self.problem(
                    pos,
                    format!(
                        "default of param '{}' must be of type {}, found {}",
                        k.name,
                        kind.as_str(),
                        d
                    ),
                );
            }
            out.push(Param {
                name: k.name.clone(),
                kind,
                default,
                description,
            });
        }
        out
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
        p
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

    fn tasks(&mut self, node: &Node, catalog: &dyn Catalog, defaults: &Policy) -> Vec<(Task, Pos)> {
        let Some(entries) = self.map(node, "'tasks'") else {
            return Vec::new();
        };
        if entries.is_empty() {
            self.problem(node.pos, "'tasks' is empty: a DAG needs at least one task");
        }
        let mut out = Vec::new();
        for (k, n) in entries {
            if !is_id(&k.name) {
                self.problem(
                    k.pos,
                    format!(
                        "task id '{}' may only hold lowercase letters, digits and '_'",
                        k.name
                    ),
                );
            }
            let Some(fields) = self.map(n, &format!("task '{}'", k.name)) else {
                continue;
            };
            let operator = match n.get("operator") {
                None => {
                    self.problem(
                        k.pos,
                        format!("task '{}' is missing required key 'operator'", k.name),
                    );
                    None
                }
                Some(o) => self.string(o, "operator").and_then(|name| {
                    if catalog.keys(&name).is_some() {
                        Some(name)
                    } else {
                        let hint = did_you_mean(&name, catalog.names());
                        self.problem(o.pos, format!("unknown operator '{name}'{hint}"));
                        None
                    }
                }),
            };
            let op_keys = operator.as_deref().and_then(|o| catalog.keys(o));
            let mut config = serde_json::Map::new();
            if let Some(keys) = &op_keys {
                self.unknown_keys(
                    fields,
                    &[TASK_KEYS, POLICY_KEYS, keys.required, keys.optional],
                    &format!("task '{}'", k.name),
                );
                for req in keys.required {
                    if n.get(req).is_none() {
                        self.problem(
                            k.pos,
                            format!(
                                "task '{}' (operator {}) is missing required key '{req}'",
                                k.name,
                                operator.as_deref().unwrap_or("")
                            ),
                        );
                    }
                }
                for (fk, fv) in fields {
                    if keys.required.contains(&fk.name.as_str())
                        || keys.optional.contains(&fk.name.as_str())
                    {
                        config.insert(fk.name.clone(), fv.to_json());
                        self.check_connections(&fk.name, fv);
                    }
                }
            }
            let policy = self.policy(n, defaults);
            let depends_on: Vec<(String, Pos)> = n
                .get("depends_on")
                .map(|d| self.string_list(d, "depends_on"))
                .unwrap_or_default();
            let when = n.get("when").and_then(|w| match &w.value {
                // `when: false` written plainly is as clear as the template form.
                Value::Bool(b) => Some(b.to_string()),
                _ => self.string(w, "when"),
            });
            let for_each = n.get("for_each").and_then(|f| match &f.value {
                Value::Seq(_) => match f.to_json() {
                    Json::Array(items) => Some(ForEach::Items(items)),
                    _ => None,
                },
                Value::Str(s) => Some(ForEach::Template(s.clone())),
                _ => {
                    self.problem(
                        f.pos,
                        format!("'for_each' must be a list or a template that renders to a JSON list, found {}", f.type_name()),
                    );
                    None
                }
            });
            let mut seen = BTreeSet::new();
            for (d, pos) in &depends_on {
                if !seen.insert(d.clone()) {
                    self.problem(
                        *pos,
                        format!("task '{}' lists '{d}' twice in depends_on", k.name),
                    );
                }
                if d == &k.name {
                    self.problem(*pos, format!("task '{}' depends on itself", k.name));
                } else if !entries.iter().any(|(other, _)| &other.name == d) {
                    let hint = did_you_mean(d, entries.iter().map(|(o, _)| o.name.as_str()));
                    self.problem(
                        *pos,
                        format!("task '{}' depends on unknown task '{d}'{hint}", k.name),
                    );
                }
            }
            let Some(operator) = operator else { continue };
            out.push((
                Task {
                    id: k.name.clone(),
                    operator,
                    output_reads: super::OutputReads::of(&config),
                    secret_reads: super::secret_reads(&config),
                    config,
                    depends_on: depends_on.into_iter().map(|(d, _)| d).collect(),
                    trigger_rule: policy.trigger_rule,
                    when,
                    retry: policy.retry,
                    timeout: policy.timeout,
                    pool: policy.pool,
                    priority: policy.priority,
                    for_each,
                },
                k.pos,
            ));
        }
        out
    }

    /// Orders tasks so that upstreams come first; reports each cycle in full.
    fn order(
        &mut self,
        tasks: Vec<(Task, Pos)>,
        positions: &HashMap<String, Pos>,
    ) -> Option<Vec<Task>> {
        use petgraph::graphmap::DiGraphMap;
        let ids: Vec<&str> = tasks.iter().map(|(t, _)| t.id.as_str()).collect();
        let mut g: DiGraphMap<&str, ()> = DiGraphMap::new();
        for id in &ids {
            g.add_node(id);
        }
        for (t, _) in &tasks {
            for d in &t.depends_on {
                if ids.contains(&d.as_str()) {
                    g.add_edge(d.as_str(), t.id.as_str(), ());
                }
            }
        }
        match petgraph::algo::toposort(&g, None) {
            Ok(order) => {
                let mut by_id: BTreeMap<String, Task> = tasks
                    .iter()
                    .map(|(t, _)| (t.id.clone(), t.clone()))
                    .collect();
                Some(order.iter().filter_map(|id| by_id.remove(*id)).collect())
            }
            Err(_) => {
                for scc in petgraph::algo::kosaraju_scc(&g) {
                    if scc.len() < 2 {
                        continue;
                    }
                    let cycle = cycle_path(&g, &scc);
                    let pos = positions.get(cycle[0]).copied().unwrap_or_default();
                    self.problem(pos, format!("dependency cycle: {}", cycle.join(" -> ")));
                }
                None
            }
        }
    }

    fn check_templates(&mut self, dag: &Dag, root: &Node, catalog: &dyn Catalog) {
        let Some(tasks_node) = root.get("tasks") else {
            return;
        };
        // Every name the file declares, valid or not: a broken task or param is reported where
        // it is written, not again as "unknown" wherever it is read.
        let declared = |node: Option<&Node>| -> BTreeSet<String> {
            match node.map(|n| &n.value) {
                Some(Value::Map(entries)) => entries.iter().map(|(k, _)| k.name.clone()).collect(),
                _ => BTreeSet::new(),
            }
        };
        let params = declared(root.get("params"));
        let params: BTreeSet<&str> = params.iter().map(String::as_str).collect();
        let task_ids = declared(Some(tasks_node));
        let task_ids: BTreeSet<&str> = task_ids.iter().map(String::as_str).collect();
        for task in &dag.tasks {
            let Some(tnode) = tasks_node.get(&task.id) else {
                continue;
            };
            let ancestors = dag.ancestors(&task.id);
            let mapped = task.for_each.is_some();
            let keys = catalog.keys(&task.operator);
            let code_keys = keys.map_or(&[][..], |k| k.code);
            let shell_keys = keys.map_or(&[][..], |k| k.shell);
            let url_keys = keys.map_or(&[][..], |k| k.url);
            let program_keys = keys.map_or(&[][..], |k| k.program);
            // A list of hosts counts only when it is the file's own text, not a template.
            let hosts_listed = match task.config.get("allowed_hosts") {
                Some(Json::Array(hosts)) => hosts
                    .iter()
                    .all(|h| h.as_str().is_some_and(|h| !template::is_template(h))),
                _ => false,
            };
            let mut strings = Vec::new();
            if let Value::Map(fields) = &tnode.value {
                for (k, v) in fields {
                    let is_config = task.config.contains_key(&k.name);
                    if is_config || k.name == "when" || k.name == "for_each" {
                        collect_strings(v, &k.name, &mut strings);
                    }
                }
            }
            for (key, text, pos) in strings {
                if !template::is_template(&text) {
                    continue;
                }
                let refs = match template::references(&text) {
                    Ok(r) => r,
                    Err(e) => {
                        self.problem(
                            pos,
                            format!("template error in '{key}' of task '{}': {e}", task.id),
                        );
                        continue;
                    }
                };
                let item_allowed = mapped && key != "for_each" && key != "when";
                let top = key.split(['.', '[']).next().unwrap_or_default();
                let before = self.problems.len();
                if code_keys.contains(&top) {
                    for r in &refs {
                        if let Some(msg) = spliced_into_code(r) {
                            self.problem(pos, format!("in '{key}' of task '{}': {msg}", task.id));
                        }
                    }
                }
                for r in &refs {
                    if let Some(msg) =
                        check_reference(r, &task_ids, &task.id, &params, &ancestors, item_allowed)
                    {
                        self.problem(pos, format!("in '{key}' of task '{}': {msg}", task.id));
                    }
                }
                // A name already reported (unknown param, task not upstream) is not reported
                // again as unquoted.
                if shell_keys.contains(&top) && self.problems.len() == before {
                    for msg in super::quoting::problems(dag, task, &key, &text) {
                        self.problem(pos, msg);
                    }
                }
                if program_keys.contains(&top) && self.problems.len() == before {
                    for msg in super::quoting::program_problems(dag, task, &key, &refs) {
                        self.problem(pos, msg);
                    }
                }
                if url_keys.contains(&top) && !hosts_listed && self.problems.len() == before {
                    for msg in super::quoting::url_problems(dag, task, &key, &text) {
                        self.problem(pos, msg);
                    }
                }
            }
        }
    }
}

/// Why a name may not be spliced into a code key (see [`crate::operator::OperatorKeys::code`]), if it may not.
fn spliced_into_code(r: &str) -> Option<String> {
    let head = r.split('.').next().unwrap_or_default();
    let bind_name = match head {
        "params" | "tasks" => r.rsplit('.').next().unwrap_or(head),
        "item" | "map_index" => head,
        _ => return None,
    };
    Some(format!(
        "'{r}' would be spliced into the query's text; bind it as a parameter instead: \
         `bind: {{ {bind_name}: \"{{{{ {r} }}}}\" }}` and write ${bind_name} in the query"
    ))
}

/// Why a name a template reads cannot be there, if it cannot.
fn check_reference(
    r: &str,
    task_ids: &BTreeSet<&str>,
    task_id: &str,
    params: &BTreeSet<&str>,
    ancestors: &BTreeSet<&str>,
    item_allowed: bool,
) -> Option<String> {
    let mut parts = r.split('.');
    let head = parts.next().unwrap_or_default();
    match head {
        "params" => {
            let name = parts.next()?;
            (!params.contains(name)).then(|| {
                let hint = did_you_mean(name, params.iter().copied());
                format!("unknown param '{name}'{hint}")
            })
        }
        "tasks" => {
            let other = parts.next()?;
            if !task_ids.contains(other) {
                let hint = did_you_mean(other, task_ids.iter().copied());
                return Some(format!("unknown task '{other}'{hint}"));
            }
            if !ancestors.contains(other) {
                return Some(format!(
                    "reads the output of task '{other}', which is not upstream of '{task_id}' (add it to depends_on)"
                ));
            }
            match parts.next() {
                None | Some("output") => None,
                Some(attr) => Some(format!(
                    "'tasks.{other}.{attr}': a task exposes only 'output'"
                )),
            }
        }
        "item" | "map_index" if !item_allowed => Some(format!(
            "'{head}' is only defined in the keys of a task with 'for_each'"
        )),
        _ if template::CONTEXT_NAMES.contains(&head) || template::is_builtin(head) => None,
        // Names bound inside the template (loop variables, `set`) are not reported by minijinja,
        // so anything else is truly unknown.
        _ => {
            let hint = did_you_mean(head, template::CONTEXT_NAMES.iter().copied());
            Some(format!("unknown name '{head}'{hint}"))
        }
    }
}

fn collect_strings(node: &Node, key: &str, out: &mut Vec<(String, String, Pos)>) {
    match &node.value {
        Value::Str(s) => out.push((key.to_string(), s.clone(), node.pos)),
        Value::Seq(items) => items.iter().for_each(|n| collect_strings(n, key, out)),
        Value::Map(entries) => entries
            .iter()
            .for_each(|(_, n)| collect_strings(n, key, out)),
        _ => {}
    }
}

fn cycle_path<'a>(
    g: &petgraph::graphmap::DiGraphMap<&'a str, ()>,
    scc: &[&'a str],
) -> Vec<&'a str> {
    // Walk from the alphabetically first member along edges that stay inside the component;
    // every node in a strongly connected component lies on a cycle, so the walk closes.
    let members: BTreeSet<&str> = scc.iter().copied().collect();
    let start = *members.iter().next().unwrap_or(&scc[0]);
    let mut path = vec![start];
    let mut seen: BTreeSet<&str> = BTreeSet::from([start]);
    let mut cur = start;
    loop {
        let mut next: Vec<&str> = g.neighbors(cur).filter(|n| members.contains(n)).collect();
        next.sort();
        if next.contains(&start) && path.len() > 1 {
            path.push(start);
            return path;
        }
        match next.into_iter().find(|n| !seen.contains(n)) {
            Some(n) => {
                seen.insert(n);
                path.push(n);
                cur = n;
            }
            None => {
                path.push(start);
                return path;
            }
        }
    }
}

fn infer_type(v: &Json) -> ParamType {
    match v {
        Json::Bool(_) => ParamType::Boolean,
        Json::Number(n) if n.is_i64() || n.is_u64() => ParamType::Integer,
        Json::Number(_) => ParamType::Number,
        Json::Array(_) => ParamType::Array,
        Json::Object(_) => ParamType::Object,
        _ => ParamType::String,
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
pub fn version_of(source: &str) -> String {
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
    priority: i32,
    trigger_rule: TriggerRule,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retry: RetryPolicy::default(),
            timeout: None,
            pool: DEFAULT_POOL.to_string(),
            priority: 0,
            trigger_rule: TriggerRule::AllSuccess,
        }
    }
}
