//! The `params` map: each param's type, default, description and rules (`enum`, `minimum`,
//! `maximum`, `pattern`), every problem reported where it is written.

use serde_json::Value as Json;

use super::{Cx, is_extension, is_id};
use crate::dag::{Param, ParamRules, ParamType};
use crate::yaml::{Key, Node, Value};

pub(crate) const PARAM_KEYS: &[&str] = &[
    "type",
    "default",
    "description",
    "enum",
    "minimum",
    "maximum",
    "pattern",
];

impl Cx {
    /// `scheduled`: the DAG has a schedule, so a param without a default could never be given
    /// to its scheduled runs.
    pub(super) fn params(&mut self, node: &Node, scheduled: bool) -> Vec<Param> {
        let Some(entries) = self.map(node, "'params'") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, n) in entries.iter().filter(|(k, _)| !is_extension(&k.name)) {
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
            let Some(param) = self.param(k, n) else {
                continue;
            };
            if scheduled && param.default.is_none() {
                self.problem(
                    k.pos,
                    format!(
                        "param '{}' has no default, but the DAG has a schedule: its scheduled runs \
                         could never be given one",
                        k.name
                    ),
                );
            }
            out.push(param);
        }
        out
    }

    fn param(&mut self, k: &Key, n: &Node) -> Option<Param> {
        let Value::Map(fields) = &n.value else {
            // `name: value` is shorthand for a param with that default and its type.
            let v = n.to_json();
            return Some(Param {
                name: k.name.clone(),
                kind: infer_type(&v),
                default: Some(v),
                description: None,
                rules: ParamRules::default(),
            });
        };
        self.unknown_keys(fields, &[PARAM_KEYS], &format!("param '{}'", k.name));
        let default = n.get("default").map(Node::to_json);
        let kind = match n.get("type") {
            Some(t) => self.param_type(t)?,
            None => default
                .as_ref()
                .map(infer_type)
                .unwrap_or(ParamType::String),
        };
        let description = n
            .get("description")
            .and_then(|d| self.string(d, "description"));
        let rules = self.rules(k, n, kind);
        if let Some(d) = &default {
            let pos = n.get("default").map_or(n.pos, |d| d.pos);
            if !kind.accepts(d) {
                self.problem(
                    pos,
                    format!(
                        "default of param '{}' must be of type {}, found {d}",
                        k.name,
                        kind.as_str(),
                    ),
                );
            } else if let Some(why) = rules.check(d) {
                self.problem(pos, format!("default of param '{}' {why}", k.name));
            }
        }
        Some(Param {
            name: k.name.clone(),
            kind,
            default,
            description,
            rules,
        })
    }

    fn param_type(&mut self, t: &Node) -> Option<ParamType> {
        let s = self.string(t, "type")?;
        let kind = ParamType::parse(&s);
        if kind.is_none() {
            self.problem(
                t.pos,
                format!(
                    "unknown param type '{s}' (expected string, number, integer, boolean, array \
                     or object)"
                ),
            );
        }
        kind
    }

    /// The param's rules; each must suit its type (`minimum` on a number, `pattern` on a string).
    fn rules(&mut self, k: &Key, n: &Node, kind: ParamType) -> ParamRules {
        let numeric = matches!(kind, ParamType::Number | ParamType::Integer);
        let mut rules = ParamRules::default();
        for key in ["minimum", "maximum"] {
            let Some(v) = n.get(key) else { continue };
            let Some(x) = v.as_f64() else {
                self.problem(
                    v.pos,
                    format!("'{key}' must be a number, found {}", v.type_name()),
                );
                continue;
            };
            if !numeric {
                self.problem(v.pos, self.misplaced(key, k, kind, "number and integer"));
            }
            *(if key == "minimum" {
                &mut rules.minimum
            } else {
                &mut rules.maximum
            }) = Some(x);
        }
        if let (Some(min), Some(max)) = (rules.minimum, rules.maximum)
            && min > max
        {
            let pos = n.get("maximum").map_or(n.pos, |m| m.pos);
            self.problem(
                pos,
                format!(
                    "param '{}' has maximum {max} below its minimum {min}",
                    k.name
                ),
            );
        }
        if let Some(p) = n.get("pattern") {
            rules.pattern = self.pattern(p, k, kind);
        }
        if let Some(e) = n.get("enum") {
            rules.one_of = self.one_of(e, k, kind);
        }
        rules
    }

    fn misplaced(&self, key: &str, k: &Key, kind: ParamType, suits: &str) -> String {
        format!(
            "'{key}' applies to {suits} params, but param '{}' is of type {}",
            k.name,
            kind.as_str()
        )
    }

    fn pattern(&mut self, p: &Node, k: &Key, kind: ParamType) -> Option<String> {
        let text = self.string(p, "pattern")?;
        if kind != ParamType::String {
            let message = self.misplaced("pattern", k, kind, "string");
            self.problem(p.pos, message);
        }
        match regex::Regex::new(&text) {
            Ok(_) => Some(text),
            Err(e) => {
                // regex draws the error under the pattern over several lines; a problem is one.
                let text = e.to_string();
                let why = text.lines().last().unwrap_or_default();
                let why = why.trim_start_matches("error: ");
                self.problem(
                    p.pos,
                    format!(
                        "'pattern' of param '{}' is not a valid regular expression: {why}",
                        k.name
                    ),
                );
                None
            }
        }
    }

    fn one_of(&mut self, e: &Node, k: &Key, kind: ParamType) -> Option<Vec<Json>> {
        let Value::Seq(items) = &e.value else {
            self.problem(
                e.pos,
                format!("'enum' must be a list, found {}", e.type_name()),
            );
            return None;
        };
        if items.is_empty() {
            self.problem(e.pos, format!("'enum' of param '{}' is empty", k.name));
            return None;
        }
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            let v = item.to_json();
            if !kind.accepts(&v) {
                self.problem(
                    item.pos,
                    format!(
                        "'enum' of param '{}' lists {v}, which is not of type {}",
                        k.name,
                        kind.as_str()
                    ),
                );
            }
            values.push(v);
        }
        Some(values)
    }
}

pub(super) fn infer_type(v: &Json) -> ParamType {
    match v {
        Json::Bool(_) => ParamType::Boolean,
        Json::Number(n) if n.is_i64() || n.is_u64() => ParamType::Integer,
        Json::Number(_) => ParamType::Number,
        Json::Array(_) => ParamType::Array,
        Json::Object(_) => ParamType::Object,
        _ => ParamType::String,
    }
}
