//! The template rules of a DAG file: every name a template reads exists and is reachable, and
//! no outside value reaches code (SQL), a shell, a program's arguments or a URL's host unquoted
//! (the rules themselves are in `crate::dag::quoting`).

use std::collections::BTreeSet;

use serde_json::Value as Json;

use super::{Cx, did_you_mean};
use crate::dag::{Dag, Task};
use crate::keys::{Catalog, OperatorKeys};
use crate::template;
use crate::yaml::{Node, Pos, Value};

/// What the rules of one task's templates need to know.
struct TaskRules<'a> {
    dag: &'a Dag,
    task: &'a Task,
    task_ids: &'a BTreeSet<&'a str>,
    params: &'a BTreeSet<&'a str>,
    ancestors: BTreeSet<&'a str>,
    keys: Option<OperatorKeys>,
    /// The task lists its allowed hosts in the file's own text (not a template): its URL keys
    /// may then take run-time values anywhere.
    hosts_listed: bool,
}

impl<'a> TaskRules<'a> {
    fn keys_of(
        &self,
        pick: fn(&OperatorKeys) -> &'static [&'static str],
    ) -> &'static [&'static str] {
        self.keys.as_ref().map_or(&[][..], pick)
    }
}

/// A templated string of a task: the key it is under, its text and where it is.
struct Found {
    key: String,
    text: String,
    pos: Pos,
}

impl Cx {
    pub(super) fn check_templates(&mut self, dag: &Dag, root: &Node, catalog: &dyn Catalog) {
        let Some(tasks_node) = root.get("tasks") else {
            return;
        };
        // Every name the file declares, valid or not: a broken task or param is reported where
        // it is written, not again as "unknown" wherever it is read.
        let params = declared(root.get("params"));
        let params: BTreeSet<&str> = params.iter().map(String::as_str).collect();
        let task_ids = declared(Some(tasks_node));
        let task_ids: BTreeSet<&str> = task_ids.iter().map(String::as_str).collect();
        for task in &dag.tasks {
            let Some(tnode) = tasks_node.get(&task.id) else {
                continue;
            };
            let rules = TaskRules {
                dag,
                task,
                task_ids: &task_ids,
                params: &params,
                ancestors: dag.ancestors(&task.id),
                keys: catalog.keys(&task.operator),
                hosts_listed: hosts_listed(task),
            };
            for found in templated_strings(task, tnode) {
                self.check_template(&rules, found);
            }
        }
    }

    fn check_template(&mut self, rules: &TaskRules<'_>, found: Found) {
        let Found { key, text, pos } = found;
        let task = rules.task;
        let refs = match template::references(&text) {
            Ok(r) => r,
            Err(e) => {
                self.problem(
                    pos,
                    format!("template error in '{key}' of task '{}': {e}", task.id),
                );
                return;
            }
        };
        let item_allowed = task.for_each.is_some() && key != "for_each" && key != "when";
        let top = key.split(['.', '[']).next().unwrap_or_default();
        let before = self.problems.len();
        if rules.keys_of(|k| k.code).contains(&top) {
            for r in &refs {
                if let Some(msg) = spliced_into_code(r) {
                    self.problem(pos, format!("in '{key}' of task '{}': {msg}", task.id));
                }
            }
        }
        if (key == "when" || key == "for_each")
            && refs.iter().any(|r| r.starts_with("triggering_events"))
        {
            self.problem(
                pos,
                format!(
                    "in '{key}' of task '{}': 'triggering_events' is available in the operator's \
                     keys, not in '{key}'",
                    task.id
                ),
            );
        }
        for r in &refs {
            let found = check_reference(
                r,
                rules.task_ids,
                &task.id,
                rules.params,
                &rules.ancestors,
                item_allowed,
            );
            if let Some(msg) = found {
                self.problem(pos, format!("in '{key}' of task '{}': {msg}", task.id));
            }
        }
        // A name already reported (unknown param, task not upstream) is not reported again as
        // unquoted.
        if self.problems.len() != before {
            return;
        }
        let dag = rules.dag;
        // The first rule that finds something speaks; the next ones would repeat it.
        let mut quoting = Vec::new();
        if rules.keys_of(|k| k.shell).contains(&top) {
            quoting = crate::dag::quoting::problems(dag, task, &key, &text);
        }
        if quoting.is_empty() && rules.keys_of(|k| k.program).contains(&top) {
            quoting = crate::dag::quoting::program_problems(dag, task, &key, &refs);
        }
        if quoting.is_empty() && rules.keys_of(|k| k.url).contains(&top) && !rules.hosts_listed {
            quoting = crate::dag::quoting::url_problems(dag, task, &key, &text);
        }
        for msg in quoting {
            self.problem(pos, msg);
        }
    }
}

fn declared(node: Option<&Node>) -> BTreeSet<String> {
    match node.map(|n| &n.value) {
        Some(Value::Map(entries)) => entries.iter().map(|(k, _)| k.name.clone()).collect(),
        _ => BTreeSet::new(),
    }
}

/// A list of hosts counts only when it is the file's own text, not a template.
fn hosts_listed(task: &Task) -> bool {
    match task.config.get("allowed_hosts") {
        Some(Json::Array(hosts)) => hosts
            .iter()
            .all(|h| h.as_str().is_some_and(|h| !template::is_template(h))),
        _ => false,
    }
}

/// The templates among a task's operator keys, `when` and `for_each`.
fn templated_strings(task: &Task, tnode: &Node) -> Vec<Found> {
    let mut strings = Vec::new();
    if let Value::Map(fields) = &tnode.value {
        for (k, v) in fields {
            let is_config = task.config.contains_key(&k.name);
            if is_config || k.name == "when" || k.name == "for_each" {
                collect_strings(v, &k.name, &mut strings);
            }
        }
    }
    strings.retain(|f| template::is_template(&f.text));
    strings
}

/// Why a name may not be spliced into a code key (see [`crate::keys::OperatorKeys::code`]), if it may not.
fn spliced_into_code(r: &str) -> Option<String> {
    let head = r.split('.').next().unwrap_or_default();
    let bind_name = match head {
        "params" | "tasks" => r.rsplit('.').next().unwrap_or(head),
        "item" | "map_index" | "triggering_events" => head,
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

fn collect_strings(node: &Node, key: &str, out: &mut Vec<Found>) {
    match &node.value {
        Value::Str(s) => out.push(Found {
            key: key.to_string(),
            text: s.clone(),
            pos: node.pos,
        }),
        Value::Seq(items) => items.iter().for_each(|n| collect_strings(n, key, out)),
        Value::Map(entries) => entries
            .iter()
            .for_each(|(_, n)| collect_strings(n, key, out)),
        _ => {}
    }
}
