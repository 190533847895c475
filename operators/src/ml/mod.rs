//! The machine-learning operators: `train`, `promote`, `predict` (with the model registry in the
//! metadata database), `drift` and `experiment`. They read and write data through the same
//! DataFusion paths as `sql` ([`crate::sql::read`], [`crate::sql::write`]), so every source may be
//! a local path, a glob or an `s3://` URL, in parquet, csv or json.

pub mod drift;
pub mod experiment;
pub mod forest;
pub mod model;
pub mod on_spark;
pub mod predict;
pub mod promote;
pub mod train;

use datafusion::arrow::array::{Array, Float64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use flow_engine::operator::OperatorError;

use crate::error::fatal;

/// An operator's keys, already rendered, as its config type; a key of the wrong shape is named.
pub(crate) fn config<T: serde::de::DeserializeOwned>(
    config: &serde_json::Value,
    op: &str,
) -> Result<T, OperatorError> {
    serde_json::from_value(config.clone()).map_err(|e| fatal(format!("{op}: {e}")))
}

/// The model registry the executor hands the ML operators.
pub(crate) fn registry(
    ctx: &flow_engine::operator::TaskContext,
    op: &str,
) -> Result<std::sync::Arc<dyn flow_engine::store::ModelRegistry>, OperatorError> {
    ctx.models
        .clone()
        .ok_or_else(|| fatal(format!("{op}: no model registry here")))
}

/// The schema of a source (`{path, format, connection}`), read without its rows.
pub(crate) async fn schema(
    name: &str,
    spec: &serde_json::Value,
    ctx: &flow_engine::operator::TaskContext,
    conns: &crate::connections::Connections,
) -> Result<datafusion::arrow::datatypes::SchemaRef, OperatorError> {
    let (schema, _) = crate::sql::read(
        &[(name, spec)],
        &format!("SELECT * FROM {name} LIMIT 0"),
        ctx,
        conns,
    )
    .await?;
    Ok(schema)
}

/// A column of every batch as f64 (nulls as NaN), or an error naming the column.
pub(crate) fn column_f64(
    batches: &[RecordBatch],
    name: &str,
    what: &str,
) -> Result<Vec<f64>, OperatorError> {
    let mut out = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for b in batches {
        let col = b
            .column_by_name(name)
            .ok_or_else(|| fatal(format!("{what}: no column `{name}`")))?;
        let col = cast(col, &DataType::Float64)
            .map_err(|e| fatal(format!("{what}: column `{name}` is not numeric: {e}")))?;
        let col = col
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| fatal(format!("{what}: column `{name}` is not numeric")))?;
        out.extend((0..col.len()).map(|i| {
            if col.is_null(i) {
                f64::NAN
            } else {
                col.value(i)
            }
        }));
    }
    Ok(out)
}

/// A column of every batch as text (nulls as None).
pub(crate) fn column_text(
    batches: &[RecordBatch],
    name: &str,
    what: &str,
) -> Result<Vec<Option<String>>, OperatorError> {
    let mut out = Vec::new();
    for b in batches {
        let col = b
            .column_by_name(name)
            .ok_or_else(|| fatal(format!("{what}: no column `{name}`")))?;
        let col = cast(col, &DataType::Utf8)
            .map_err(|e| fatal(format!("{what}: column `{name}`: {e}")))?;
        let col = col
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .ok_or_else(|| fatal(format!("{what}: column `{name}` is not text")))?;
        out.extend((0..col.len()).map(|i| (!col.is_null(i)).then(|| col.value(i).to_string())));
    }
    Ok(out)
}

/// A column name quoted for DataFusion SQL.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A text value quoted as a SQL string literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A finite number as JSON; NaN and infinities (which JSON cannot hold) as null.
pub(crate) fn num(x: f64) -> serde_json::Value {
    serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// A number given as a number or, since every templated key renders to text, as text
/// (`min_improvement: "{{ params.margin }}"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Num<T>(pub T);

impl<'de, T> serde::Deserialize<'de> for Num<T>
where
    T: serde::Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Value(T),
            Text(String),
        }
        match Raw::<T>::deserialize(d)? {
            Raw::Value(v) => Ok(Num(v)),
            Raw::Text(s) => s
                .trim()
                .parse()
                .map(Num)
                .map_err(|e| serde::de::Error::custom(format!("`{s}` is not a number: {e}"))),
        }
    }
}
