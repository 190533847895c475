//! `bind:`: values reach the query only as SQL parameters (`$name`), typed by where the query
//! uses them, so a param can never change the query's text.

use std::collections::{HashMap, HashSet};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use flow_engine::operator::OperatorError;
use serde_json::Value as Json;

use crate::error::fatal;

/// The `bind:` values as typed SQL parameters: each is cast to the type the query gives its
/// placeholder (a timestamp compared with a column of timestamps, say), so `"2026-01-01"` binds
/// as a timestamp there and as text where the query wants text.
pub(super) fn bind_values(
    plan: &datafusion::logical_expr::LogicalPlan,
    bind: &serde_json::Map<String, Json>,
) -> Result<ParamValues, OperatorError> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| fatal(format!("query parameters: {}", e.strip_backtrace())))?;
    let mut wanted: Vec<&String> = types.keys().collect();
    wanted.sort();
    let mut values: HashMap<String, ScalarValue> = HashMap::new();
    for id in &wanted {
        let Some(name) = id.strip_prefix('$') else {
            continue;
        };
        if name.chars().all(|c| c.is_ascii_digit()) {
            return Err(fatal(format!(
                "the query uses the positional parameter {id}; name it ($start, $end, ...) and give \
                 its value in `bind:`"
            )));
        }
        let value = bind
            .get(name)
            .ok_or_else(|| fatal(format!("the query uses {id}, but `bind:` has no `{name}`")))?;
        let ty = types.get(*id).and_then(Option::as_ref);
        values.insert(name.to_string(), scalar(name, value, ty)?);
    }
    let used: HashSet<&str> = wanted
        .iter()
        .filter_map(|id| id.strip_prefix('$'))
        .collect();
    if let Some(extra) = bind.keys().find(|k| !used.contains(k.as_str())) {
        return Err(fatal(format!(
            "`bind:` gives `{extra}`, but the query has no ${extra}"
        )));
    }
    Ok(ParamValues::from(values))
}

/// One `bind:` value as a SQL value, cast to the type the query wants where it has one.
fn scalar(name: &str, value: &Json, ty: Option<&DataType>) -> Result<ScalarValue, OperatorError> {
    let raw = match value {
        Json::Null => match ty {
            Some(t) => {
                ScalarValue::try_from(t).map_err(|e| fatal(format!("bind `{name}`: {e}")))?
            }
            None => ScalarValue::Null,
        },
        Json::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        Json::String(s) => ScalarValue::Utf8(Some(s.clone())),
        Json::Array(_) | Json::Object(_) => {
            return Err(fatal(format!(
                "bind `{name}`: a parameter is one value (text, number, true/false or null)"
            )));
        }
    };
    match ty {
        Some(t) if &raw.data_type() != t => raw.cast_to(t).map_err(|e| {
            fatal(format!(
                "bind `{name}`: {value} is not a valid {t} for where the query uses ${name}: {}",
                e.strip_backtrace()
            ))
        }),
        _ => Ok(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_values_bind_to_the_placeholder_type() {
        let ts = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None);
        let v = scalar("start", &json!("2026-01-01T00:00:00Z"), Some(&ts)).unwrap();
        assert_eq!(v.data_type(), ts);
        let v = scalar("n", &json!("5"), Some(&DataType::Int64)).unwrap();
        assert_eq!(v, ScalarValue::Int64(Some(5)));
        let err = scalar("n", &json!("five"), Some(&DataType::Int64)).unwrap_err();
        assert!(err.to_string().contains("bind `n`"), "{err}");
        assert!(scalar("x", &json!([1]), None).is_err());
    }
}
