//! Task templates: a Jinja-compatible language (minijinja), strict about unknown names.
//!
//! Values render as a user of YAML and JSON expects: integral numbers without a decimal point,
//! booleans as `true`/`false`, null as `null`, lists and objects as JSON. Rendering is pure: the
//! caller builds the context (see [`RunContext`]) and gets a string or a message.

use std::collections::BTreeSet;
use std::sync::OnceLock;

pub use minijinja::Value;
use minijinja::value::ValueKind;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value as Json;

pub mod shell;
pub mod splice;
pub mod url;

/// The names a template may use at the top level.
pub(crate) const CONTEXT_NAMES: &[&str] = &[
    "ds",
    "ds_nodash",
    "ts",
    "ts_nodash",
    "logical_date",
    "data_interval_start",
    "data_interval_end",
    "dag_id",
    "run_id",
    "task_id",
    "try_number",
    "params",
    "tasks",
    "secrets",
    "item",
    "map_index",
    "triggering_events",
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.add_filter(shell::SHELL_QUOTE, shell_quote);
        env.add_filter(url::URL_QUOTE, urlencode);
        env.set_formatter(|out, state, value| {
            if let Some(text) = plain_text(value) {
                out.write_str(&text).map_err(minijinja::Error::from)
            } else {
                minijinja::escape_formatter(out, state, value)
            }
        });
        env
    })
}

/// How a non-string value is written into the rendered text.
fn plain_text(value: &Value) -> Option<String> {
    match value.kind() {
        ValueKind::Number => {
            if let Some(f) = f64::try_from(value.clone())
                .ok()
                .filter(|_| !value.is_integer())
                && f.is_finite()
                && f.fract() == 0.0
                && f.abs() < 1e15
            {
                // An integral float (say 0.5 * 8) prints as an integer, as users expect.
                return Some(format!("{}", f as i64));
            }
            None
        }
        ValueKind::None => Some("null".to_string()),
        ValueKind::Bool => Some(value.is_true().to_string()),
        ValueKind::Seq | ValueKind::Map => serde_json::to_string(value).ok(),
        _ => None,
    }
}

/// `{{ value | shell_quote }}`: the value as one shell word, written as it would render; a list
/// becomes one word per item, separated by spaces, for `for x in {{ list | shell_quote }}`.
fn shell_quote(value: &Value) -> String {
    let word = |v: &Value| shell::quote(&plain_text(v).unwrap_or_else(|| v.to_string()));
    match value.kind() {
        ValueKind::Seq | ValueKind::Iterable => match value.try_iter() {
            Ok(items) => items.map(|v| word(&v)).collect::<Vec<_>>().join(" "),
            Err(_) => word(value),
        },
        _ => word(value),
    }
}

/// `{{ value | urlencode }}`: percent-encodes everything but RFC 3986's unreserved characters,
/// `/` included (Jinja keeps `/`), so that a value is one path segment or one query value and
/// cannot climb the path with `../`. A map becomes `k=v&k2=v2`.
fn urlencode(value: &Value) -> Result<String, minijinja::Error> {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const SET: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let text = |v: &Value| plain_text(v).unwrap_or_else(|| v.to_string());
    let enc = |s: &str| utf8_percent_encode(s, SET).to_string();
    match value.kind() {
        ValueKind::None | ValueKind::Undefined => Ok(String::new()),
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for k in value.try_iter()? {
                let v = value.get_item(&k)?;
                if !v.is_none() && !v.is_undefined() {
                    pairs.push(format!("{}={}", enc(&text(&k)), enc(&text(&v))));
                }
            }
            Ok(pairs.join("&"))
        }
        _ => Ok(enc(&text(value))),
    }
}

/// A function the template language itself provides (`range`, `dict`, ...).
pub(crate) fn is_builtin(name: &str) -> bool {
    env().globals().any(|(n, _)| n == name)
}

/// Renders one template string.
pub fn render(source: &str, ctx: &Value) -> Result<String, String> {
    env().render_str(source, ctx).map_err(describe_error)
}

/// Renders a task's keys. A shell key's text is also checked as rendered, where every value is
/// known (see [`shell::verify`]).
pub(crate) fn render_task_config(
    config: &serde_json::Map<String, Json>,
    ctx: &Value,
    shell_keys: &[&str],
) -> Result<Json, String> {
    let mut out = serde_json::Map::with_capacity(config.len());
    for (key, value) in config {
        let rendered = match value {
            Json::String(s) if shell_keys.contains(&key.as_str()) && is_template(s) => {
                Json::String(render_shell(s, ctx).map_err(|e| format!("in '{key}': {e}"))?)
            }
            other => render_json(other, ctx)?,
        };
        out.insert(key.clone(), rendered);
    }
    Ok(Json::Object(out))
}

/// Renders the text of a shell key and checks that every value `shell_quote` made stands as
/// a word of its own, read on the text as it came out.
pub(crate) fn render_shell(source: &str, ctx: &Value) -> Result<String, String> {
    let tmpl = env().template_from_str(source).map_err(describe_error)?;
    let (out, spans) = tmpl.render_with_spans(ctx).map_err(describe_error)?;
    shell::verify(source, &out, &spans)?;
    Ok(out)
}

/// Renders every string inside a JSON value (keys are left alone).
pub fn render_json(value: &Json, ctx: &Value) -> Result<Json, String> {
    Ok(match value {
        Json::String(s) if is_template(s) => Json::String(render(s, ctx)?),
        Json::Array(items) => Json::Array(
            items
                .iter()
                .map(|v| render_json(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Json::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_json(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Only strings with template syntax need the engine; the rest are returned as they are.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

fn describe_error(err: minijinja::Error) -> String {
    let mut msg = err.to_string();
    // minijinja adds "(in <string>:1)" which tells a DAG author nothing.
    if let Some(idx) = msg.find(" (in <string>") {
        msg.truncate(idx);
    }
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

/// Parses a template and returns the dotted names it reads (`params.model`,
/// `tasks.extract.output.rows`), for static checks at validation time.
pub(crate) fn references(source: &str) -> Result<BTreeSet<String>, String> {
    let tmpl = env().template_from_str(source).map_err(describe_error)?;
    Ok(tmpl.undeclared_variables(true).into_iter().collect())
}

/// The values a task's templates see in one run. Built by the executor (and by the planner for
/// `when` and `for_each`) from what the store holds.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    pub dag_id: String,
    pub run_id: String,
    pub logical_date: chrono::DateTime<chrono::Utc>,
    pub data_interval_start: chrono::DateTime<chrono::Utc>,
    pub data_interval_end: chrono::DateTime<chrono::Utc>,
    pub params: Json,
    /// task id -> `{"output": ...}` for the upstream tasks that published one.
    pub tasks: serde_json::Map<String, Json>,
    /// The dataset events that started the run (an empty list for any other run), read only
    /// for the tasks that name `triggering_events`.
    pub triggering_events: Vec<Json>,
}

/// What varies per task instance and try.
#[derive(Debug, Clone, Default)]
pub struct TaskPart<'a> {
    pub task_id: &'a str,
    pub try_number: i64,
    pub item: Option<&'a Json>,
    pub map_index: Option<i64>,
}

impl RunContext {
    pub fn to_value(&self, task: &TaskPart<'_>, secrets: &crate::secrets::Secrets) -> Value {
        use crate::time::rfc3339;
        let ld = self.logical_date;
        let mut ctx = serde_json::Map::new();
        ctx.insert("ds".into(), ld.format("%Y-%m-%d").to_string().into());
        ctx.insert("ds_nodash".into(), ld.format("%Y%m%d").to_string().into());
        ctx.insert("ts".into(), rfc3339(ld).into());
        ctx.insert(
            "ts_nodash".into(),
            ld.format("%Y%m%dT%H%M%S").to_string().into(),
        );
        ctx.insert("logical_date".into(), rfc3339(ld).into());
        ctx.insert(
            "data_interval_start".into(),
            rfc3339(self.data_interval_start).into(),
        );
        ctx.insert(
            "data_interval_end".into(),
            rfc3339(self.data_interval_end).into(),
        );
        ctx.insert("dag_id".into(), self.dag_id.clone().into());
        ctx.insert("run_id".into(), self.run_id.clone().into());
        ctx.insert("task_id".into(), task.task_id.into());
        ctx.insert("try_number".into(), task.try_number.into());
        ctx.insert("params".into(), self.params.clone());
        ctx.insert("tasks".into(), Json::Object(self.tasks.clone()));
        ctx.insert(
            "triggering_events".into(),
            Json::Array(self.triggering_events.clone()),
        );
        ctx.insert("secrets".into(), Json::Object(secrets.to_json()));
        if let Some(item) = task.item {
            ctx.insert("item".into(), item.clone());
        }
        if let Some(i) = task.map_index {
            ctx.insert("map_index".into(), i.into());
        }
        context(Json::Object(ctx))
    }
}

/// A JSON object as the values a template sees.
pub fn context(values: Json) -> Value {
    Value::from(minijinja::value::Serde(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Json) -> Value {
        Value::from(minijinja::value::Serde(v))
    }

    #[test]
    fn values_render_as_a_yaml_user_expects() {
        let c = ctx(json!({"i": 4, "f": 0.5, "b": true, "n": null, "l": [1, "a"], "o": {"k": 1}}));
        let cases = [
            ("{{ i }}", "4"),
            ("{{ f * 8 }}", "4"),
            ("{{ i * 2 }}", "8"),
            ("{{ f }}", "0.5"),
            ("{{ b }}", "true"),
            ("{{ n }}", "null"),
            ("{{ l }}", r#"[1,"a"]"#),
            ("{{ o }}", r#"{"k":1}"#),
            ("{{ '<b>' }}", "<b>"),
            (
                "{{ 'a/../b c?&=#%' | urlencode }}",
                "a%2F..%2Fb%20c%3F%26%3D%23%25",
            ),
            ("{{ {'q': 'x y', 'n': 2} | urlencode }}", "q=x%20y&n=2"),
            ("{{ \"it's\" | shell_quote }}", "'it'\\''s'"),
            ("{{ ['a b', 3] | shell_quote }}", "'a b' '3'"),
        ];
        for (src, want) in cases {
            assert_eq!(render(src, &c).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn unknown_names_fail_with_a_clear_message() {
        let err = render("{{ params.nope }}", &ctx(json!({"params": {}}))).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
        let err = render("{{ oops", &ctx(json!({}))).unwrap_err();
        assert!(err.contains("syntax error"), "{err}");
    }

    #[test]
    fn references_are_dotted_paths() {
        let refs = references("{{ params.model }} {{ tasks.a.output.rows }} {{ ds }}").unwrap();
        assert!(refs.contains("params.model"), "{refs:?}");
        assert!(refs.contains("tasks.a.output.rows"), "{refs:?}");
        assert!(refs.contains("ds"), "{refs:?}");
    }

    #[test]
    fn render_json_renders_nested_strings_only() {
        let c = ctx(json!({"ds": "2026-03-01"}));
        let out = render_json(&json!({"a": ["{{ ds }}", 3], "b": "x"}), &c).unwrap();
        assert_eq!(out, json!({"a": ["2026-03-01", 3], "b": "x"}));
    }
}
