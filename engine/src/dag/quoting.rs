//! The splicing rules of DAG files: in a key a shell runs, a value from outside the file reaches
//! the shell only through `env:` or `| shell_quote` (see [`crate::template::shell`]); in a URL
//! key, only the path or query, `| urlencode`d (see [`crate::template::url`]).

use super::{Dag, ForEach, ParamType, Task};
use crate::template::{self, shell};

/// The loop attributes a template may emit as they are: numbers and booleans.
const LOOP_VALUES: &[&str] = &[
    "loop.index",
    "loop.index0",
    "loop.revindex",
    "loop.revindex0",
    "loop.first",
    "loop.last",
    "loop.length",
    "loop.depth",
    "loop.depth0",
];

/// True for a name whose value flow itself makes (dates, ids, the try number, secrets from the
/// configured sources), or a param typed as a number or boolean (a trigger's value is checked
/// against the type before the run exists, so it cannot carry shell syntax).
fn trusted(dag: &Dag, task: &Task, name: &str) -> bool {
    let mut parts = name.split('.');
    let head = parts.next().unwrap_or_default();
    match head {
        "params" => {
            let (Some(param), None) = (parts.next(), parts.next()) else {
                return false;
            };
            dag.params.iter().any(|p| {
                p.name == param
                    && matches!(
                        p.kind,
                        ParamType::Integer | ParamType::Number | ParamType::Boolean
                    )
            })
        }
        // Dataset events carry the producing task's output, or an API caller's body.
        "tasks" | "triggering_events" => false,
        // Items written out in the DAG file are the author's own text, not outside values; as
        // they stand, only when each is one plain word (a quote in one would shift the
        // quoting of the text around it).
        "item" => match &task.for_each {
            Some(ForEach::Items(items)) => items.iter().all(plain_word),
            _ => false,
        },
        // One secret at a time (`{{ secrets }}` would print them all).
        "secrets" => parts.next().is_some() && parts.next().is_none(),
        "loop" => LOOP_VALUES.contains(&name),
        // Of the template language's own functions only `range` makes nothing but numbers
        // (`debug()` prints the whole context, every param and secret with it).
        "range" => true,
        _ => template::CONTEXT_NAMES.contains(&head),
    }
}

/// A number, a boolean, or a string of letters, digits and `-_./:=,+@%^` that is no template:
/// text that the shell reads as part of one word, whatever surrounds it.
fn plain_word(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) => true,
        serde_json::Value::String(s) => {
            !s.is_empty()
                && !template::is_template(s)
                && s.chars()
                    .all(|c| c.is_alphanumeric() || "-_./:=,+@%^".contains(c))
        }
        _ => false,
    }
}

/// True for a name known to be a list: an array param. Glued to other text under
/// `shell_quote` (`--files={{ params.files | shell_quote }}`) its items after the first would be
/// words of their own.
fn list(dag: &Dag, name: &str) -> bool {
    let mut parts = name.split('.');
    let (Some("params"), Some(param), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    dag.params
        .iter()
        .any(|p| p.name == param && matches!(p.kind, ParamType::Array))
}

/// `expr` without a trailing `| FILTER`: the value as `env:` would take it, or as a message
/// shows it with the right filter put back.
fn without_filter<'e>(expr: &'e str, filter: &str) -> &'e str {
    expr.strip_suffix(filter)
        .and_then(|e| e.trim_end().strip_suffix('|'))
        .map_or(expr, str::trim_end)
}

/// One message per place where the template `text` of the shell key `key` of `task` emits an
/// outside value unprotected.
pub(super) fn problems(dag: &Dag, task: &Task, key: &str, text: &str) -> Vec<String> {
    let task_id = task.id.as_str();
    let found = match shell::unquoted(text, &|name| trusted(dag, task, name), &|name| {
        list(dag, name)
    }) {
        Ok(found) => found,
        // A template that does not parse is reported by the general template check.
        Err(_) => return Vec::new(),
    };
    found
        .into_iter()
        .map(|u| message(task_id, key, text, &u))
        .collect()
}

/// One message per outside value that a key choosing the program (`spark.script`) reads: there
/// no filter makes it safe.
pub(super) fn program_problems(
    dag: &Dag,
    task: &Task,
    key: &str,
    refs: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    refs.iter()
        .filter(|name| !trusted(dag, task, name))
        .map(|name| {
            format!(
                "in '{key}' of task '{}': {name} would choose the program the task runs, and a \
                 value from outside the DAG file could run any code; write it in the DAG file \
                 (flow's own values such as {{{{ ds }}}} may stay) and pass values to the \
                 program in `args:`",
                task.id
            )
        })
        .collect()
}

/// One message per place where the URL template `text` of `key` of `task` lets an outside value
/// set the scheme or host, or reach the URL unencoded.
pub(super) fn url_problems(dag: &Dag, task: &Task, key: &str, text: &str) -> Vec<String> {
    let found = match crate::template::url::unsafe_spots(text, &|name| trusted(dag, task, name)) {
        Ok(found) => found,
        Err(_) => return Vec::new(),
    };
    found
        .into_iter()
        .map(|u| {
            let head = format!("in '{key}' of task '{}'", task.id);
            let expr = without_filter(&u.expr, crate::template::url::URL_QUOTE);
            if u.expr.is_empty() {
                format!("{head}: a URL key cannot use {}", u.name)
            } else if u.in_authority {
                format!(
                    "{head}: {} would set the URL's scheme or host in `{{{{ {} }}}}`, and a value \
                     from outside the DAG file could send the request to any machine; write the \
                     scheme and host in the DAG and the value after them \
                     (`https://api.example.com/path/{{{{ {expr} | urlencode }}}}`), or list the \
                     hosts the task may reach in `allowed_hosts:`",
                    u.name, u.expr
                )
            } else {
                format!(
                    "{head}: {} would reach the URL unencoded in `{{{{ {} }}}}`; write \
                     `{{{{ {expr} | urlencode }}}}`",
                    u.name, u.expr
                )
            }
        })
        .collect()
}

fn message(task_id: &str, key: &str, text: &str, u: &shell::Unquoted) -> String {
    let at = if text.trim_end().contains('\n') {
        format!(" (line {} of the {key})", u.line)
    } else {
        String::new()
    };
    let head = format!("in '{key}' of task '{task_id}'");
    if u.expr.is_empty() {
        return format!("{head}: a shell key cannot use {}{at}", u.name);
    }
    let expr = &u.expr;
    let var = u
        .name
        .rsplit('.')
        .next()
        .filter(|v| !v.is_empty())
        .unwrap_or("value")
        .to_ascii_uppercase();
    // The value as env: would take it: without the quoting a shell no longer needs there.
    let value = without_filter(expr, shell::SHELL_QUOTE);
    let env_hint = format!(
        "did you mean to pass it in env:? `env: {{ {var}: \"{{{{ {value} }}}}\" }}` and \"${var}\" \
         in the {key}"
    );
    if u.glued {
        return format!(
            "{head}: `{{{{ {expr} }}}}` is glued to other text in one word{at}, and if {name} is \
             a list its items after the first become words of their own; put it as a word of \
             its own, or make it one string first (`{{{{ {value} | join(',') | shell_quote }}}}`)",
            name = u.name,
        );
    }
    if u.quoted {
        return format!(
            "{head}: `{{{{ {expr} }}}}` is inside {}{at}, where shell_quote does not protect \
             it; put it outside the quotes, or {env_hint}",
            u.context.describe()
        );
    }
    let (place, word) = match u.context {
        shell::Context::Word => (String::new(), "as a word of its own"),
        other => (
            format!(" inside {}", other.describe()),
            "outside the quotes",
        ),
    };
    format!(
        "{head}: {name} would reach the shell unquoted in `{{{{ {expr} }}}}`{place}{at}, and a \
         value from outside the DAG file could run any command; {env_hint}; or quote it {word}: \
         `{{{{ {expr} | shell_quote }}}}`",
        name = u.name,
    )
}
