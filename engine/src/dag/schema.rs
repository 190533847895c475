//! The JSON Schema (2020-12) of the DAG file format, for editors' completion and checks
//! (`flow dags schema`).
//!
//! The types below exist to be described: the parser reads the positioned YAML tree itself (see
//! [`super::parse`]) because it must report every problem at its line and column. Their doc
//! comments are the descriptions an editor shows. A unit test holds their keys equal to the keys
//! the parser accepts, so the two cannot drift apart. The operators' own keys come from the
//! catalog at run time, one `if operator is X then` branch per operator.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Value as Json, json};

use super::{Backoff, ParamType, TriggerRule};
use crate::keys::Catalog;

/// What a key starting with `x-` may hold: anything; flow ignores it (use it for YAML anchors).
const EXTENSION: &str = "^x-";

/// # A flow DAG
/// One DAG per file: its schedule, params, task defaults and tasks.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields, extend("patternProperties" = {"^x-": {"description": "Ignored by flow: a place for YAML anchors to merge with `<<: *name`."}}))]
#[allow(dead_code)]
struct DagFile {
    /// The DAG's id: lowercase letters, digits and `_`, unique across the DAGs folder.
    #[schemars(extend("pattern" = "^[a-z0-9_]+$"))]
    id: String,
    /// What the DAG does, shown in the UI.
    description: Option<String>,
    /// A cron expression (5 fields, or 6 with seconds first), a preset (`@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`) or an interval (`every 15m`); or datasets
    /// (`{ datasets: [...], mode: any|all, cron: ... }`). Omitted or null: manual runs only.
    schedule: Option<ScheduleDoc>,
    /// An IANA time zone name; the cron is evaluated in it. Default UTC.
    timezone: Option<String>,
    /// A date (`2026-01-01`) or an RFC 3339 timestamp; required with a schedule.
    start_date: Option<String>,
    /// A date or an RFC 3339 timestamp after which no run is scheduled.
    end_date: Option<String>,
    /// Run every missed interval since `start_date` (true), or only the latest (false, the
    /// default).
    catchup: Option<bool>,
    /// Most runs of this DAG running at once. Default 16.
    #[schemars(range(min = 1, max = 100000))]
    max_active_runs: Option<u32>,
    /// The pause state a new DAG starts in. Default false.
    paused: Option<bool>,
    /// Labels shown in the UI.
    tags: Option<NamesDoc>,
    /// Typed params with defaults; a trigger may override them.
    params: Option<ParamsDoc>,
    /// Applied to every task unless the task sets its own.
    defaults: Option<DefaultsDoc>,
    /// Posted when a run fails.
    on_failure: Option<NotificationDoc>,
    /// Posted when a run succeeds.
    on_success: Option<NotificationDoc>,
    /// How long after its data interval's end a run may take before an `sla_missed` alert.
    sla: Option<DurationDoc>,
    /// The tasks: task id -> task.
    tasks: TasksDoc,
}

/// When the DAG runs: a cron text, or datasets (optionally with a cron).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ScheduleDoc {
    Cron(String),
    Datasets(DatasetScheduleDoc),
}

/// A run when datasets are updated (and on the cron too, when one is given).
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct DatasetScheduleDoc {
    /// Also run on this cron, as a plain `schedule:` does (needs `start_date`).
    cron: Option<String>,
    /// The dataset URIs; each must be produced by a task somewhere, or be marked external.
    datasets: Vec<DatasetDoc>,
    /// `any` (default): a run when one of them has a new event; `all`: when each has.
    mode: Option<super::DatasetMode>,
}

/// A dataset URI, or one updated from outside flow.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum DatasetDoc {
    Uri(String),
    Spec(DatasetSpecDoc),
}

#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct DatasetSpecDoc {
    uri: String,
    /// Updated from outside flow (`POST /api/v1/datasets/events`): no task need produce it.
    external: Option<bool>,
}

/// A task: its operator, its place in the DAG, its policy and the operator's own keys.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct TaskDoc {
    /// The operator that runs the task.
    operator: String,
    /// Upstream task ids: the task waits for them, as its trigger rule says.
    depends_on: Option<NamesDoc>,
    /// A template rendering to `true` or `false`; `false` skips the task.
    when: Option<WhenDoc>,
    /// A list, or a template rendering to a JSON list: one mapped instance per item
    /// (`{{ item }}`, `{{ map_index }}`).
    for_each: Option<ForEachDoc>,
    /// What the task does, shown in the UI.
    description: Option<String>,
    /// Dataset URIs a successful try updates (one event each, carrying the task's output).
    produces: Option<NamesDoc>,
    #[serde(flatten)]
    policy: PolicyDoc,
}

/// Task defaults: the policy keys a task may set.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct DefaultsDoc {
    #[serde(flatten)]
    policy: PolicyDoc,
}

#[derive(JsonSchema)]
#[allow(dead_code)]
struct PolicyDoc {
    /// Tries after the first when a try fails. Default 0.
    #[schemars(range(min = 0, max = 1000))]
    retries: Option<u32>,
    /// The wait before a retry. Default 10s.
    retry_delay: Option<DurationDoc>,
    /// `fixed`, or `exponential` (the delay doubles each try, capped by `max_retry_delay`).
    retry_backoff: Option<Backoff>,
    /// The longest wait between tries with exponential backoff.
    max_retry_delay: Option<DurationDoc>,
    /// A try still running after this is killed, with every process it started.
    timeout: Option<DurationDoc>,
    /// A concurrency pool from flow.toml. Default `default`.
    pool: Option<String>,
    /// Only a worker serving this queue runs the task (`flow worker --queue`).
    #[schemars(extend("pattern" = "^[A-Za-z0-9_.-]{1,64}$"))]
    queue: Option<String>,
    /// Higher runs first when slots are scarce. Default 0.
    priority: Option<i32>,
    /// When the task may run, from its upstreams' states. Default `all_success`.
    trigger_rule: Option<TriggerRule>,
    /// How long after the run's data interval ends the task may take before an alert.
    sla: Option<DurationDoc>,
    /// Posted when a try fails for good.
    on_failure: Option<NotificationDoc>,
    /// Posted when a try fails and will be retried.
    on_retry: Option<NotificationDoc>,
}

/// A webhook to post to.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct NotificationDoc {
    /// The URL (may be a template, e.g. `{{ secrets.SLACK_WEBHOOK_URL }}`).
    webhook: String,
}

/// A param: its type, default and the values a trigger may give.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
#[allow(dead_code)]
struct ParamSpec {
    /// Default: the default's type, else `string`.
    #[serde(rename = "type")]
    kind: Option<ParamType>,
    /// The value a run gets when its trigger gives none. A scheduled DAG's params all need one.
    default: Option<Json>,
    /// Shown in the trigger form.
    description: Option<String>,
    /// The only values accepted; the trigger form offers them as a list.
    #[serde(rename = "enum")]
    one_of: Option<Vec<Json>>,
    /// The smallest number accepted (number and integer params).
    minimum: Option<f64>,
    /// The largest number accepted (number and integer params).
    maximum: Option<f64>,
    /// A regular expression a string param must match (anywhere: anchor it with `^...$`).
    #[schemars(extend("format" = "regex"))]
    pattern: Option<String>,
}

/// A param: a mapping of its keys, or its default alone (its type is the default's).
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ParamDoc {
    Spec(ParamSpec),
    Shorthand(DefaultOnly),
}

/// A duration: `500ms`, `30s`, `5m`, `2h`, `1d`, or a whole number of seconds.
struct DurationDoc;

impl JsonSchema for DurationDoc {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A duration: `500ms`, `30s`, `5m`, `2h`, `1d`, or a whole number of seconds.",
            "anyOf": [
                {"type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*(ms|s|m|h|d)\\s*$"},
                {"type": "integer", "minimum": 0}
            ]
        })
    }
}

/// A list of names, or one name alone.
struct NamesDoc;

impl JsonSchema for NamesDoc {
    fn schema_name() -> Cow<'static, str> {
        "Names".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]
        })
    }
}

/// `when:` a template, or a plain boolean.
struct WhenDoc;

impl JsonSchema for WhenDoc {
    fn schema_name() -> Cow<'static, str> {
        "When".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "boolean"]})
    }
}

/// `for_each:` a list of items, or a template rendering to a JSON list.
struct ForEachDoc;

impl JsonSchema for ForEachDoc {
    fn schema_name() -> Cow<'static, str> {
        "ForEach".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["array", "string"]})
    }
}

/// A param written as its default alone: any value but a mapping.
struct DefaultOnly;

impl JsonSchema for DefaultOnly {
    fn schema_name() -> Cow<'static, str> {
        "ParamDefault".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({"type": ["string", "number", "boolean", "array"]})
    }
}

fn named_map(value: Schema, min: u32) -> Schema {
    json_schema!({
        "type": "object",
        "minProperties": min,
        "propertyNames": {"pattern": "^([a-z0-9_]+|x-.*)$"},
        "patternProperties": {EXTENSION: {}},
        "additionalProperties": value,
    })
}

/// The tasks: task id -> task (`x-` keys aside).
struct TasksDoc;

impl JsonSchema for TasksDoc {
    fn schema_name() -> Cow<'static, str> {
        "Tasks".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        named_map(g.subschema_for::<TaskDoc>(), 1)
    }
}

/// The params: param name -> param (`x-` keys aside).
struct ParamsDoc;

impl JsonSchema for ParamsDoc {
    fn schema_name() -> Cow<'static, str> {
        "Params".into()
    }

    fn json_schema(g: &mut SchemaGenerator) -> Schema {
        named_map(g.subschema_for::<ParamDoc>(), 0)
    }
}

/// The schema of a DAG file whose tasks use the catalog's operators.
pub fn dag_schema(catalog: &dyn Catalog) -> Json {
    let mut schema = schemars::schema_for!(DagFile).to_value();
    schema["$id"] = json!("https://flow.dev/schemas/dag.json");
    let mut names = catalog.names();
    names.sort_unstable();
    let branches: Vec<Json> = names
        .iter()
        .filter_map(|name| Some((*name, catalog.keys(name)?)))
        .map(|(name, keys)| {
            let properties: serde_json::Map<String, Json> = keys
                .required
                .iter()
                .chain(keys.optional)
                .map(|k| {
                    let d = format!("A key of the {name} operator (see docs/operators.md).");
                    (k.to_string(), json!({"description": d}))
                })
                .collect();
            json!({
                "if": {"properties": {"operator": {"const": name}}, "required": ["operator"]},
                "then": {"properties": properties, "required": keys.required}
            })
        })
        .collect();
    let task = &mut schema["$defs"]["TaskDoc"];
    task["properties"]["operator"]["enum"] = json!(names);
    task["allOf"] = Json::Array(branches);
    task["patternProperties"] = json!({EXTENSION: {}});
    // Unlike additionalProperties, this sees the keys the matching `then` declares.
    task["unevaluatedProperties"] = json!(false);
    schema
}

#[cfg(test)]
mod tests;
