//! What a query's result becomes: its rows as the task's output JSON, or files written to the
//! task's `output:`.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::CsvOptions;
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use flow_engine::log::LogSink;
use flow_engine::operator::{OperatorError, TaskContext};
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value as Json, json};

use super::error::run_error;
use super::{Buckets, Mode, OutputSpec};
use crate::connections::Aws;
use crate::error::fatal;
use crate::storage::{self, Format, Location};

/// The task's `output:`, its location, format and connection settled.
pub(super) struct Output {
    given: String,
    location: Location,
    format: Format,
    mode: Mode,
    partition_by: Vec<String>,
    aws: Aws,
}

impl Output {
    /// Settles `output:`: its location parsed (and its bucket's connection noted), its format
    /// from `format:` or the path (parquet for a folder), and `partition_by` and `append` checked
    /// against a path that names one file.
    pub(super) fn resolve(
        o: OutputSpec,
        ctx: &TaskContext,
        buckets: &mut Buckets,
    ) -> Result<Output, OperatorError> {
        let location = Location::parse(&o.path, &ctx.dag_folder)?;
        let aws = buckets.note(&location, o.connection.as_deref())?;
        let folder = location.is_folder();
        let format = match o.format.or(location.format_from_name()) {
            Some(f) => f,
            None if folder => Format::Parquet,
            None => {
                return Err(fatal(format!(
                    "output `{}`: give `format:` (parquet, csv or json) or a file extension",
                    o.path
                )));
            }
        };
        if !folder && !o.partition_by.is_empty() {
            return Err(fatal(format!(
                "output `{}`: partition_by writes folders, so the path must end in /",
                o.path
            )));
        }
        if !folder && o.mode == Mode::Append {
            return Err(fatal(format!(
                "output `{}`: append adds files to a folder, so the path must end in /",
                o.path
            )));
        }
        Ok(Output {
            given: o.path,
            location,
            format,
            mode: o.mode,
            partition_by: o.partition_by,
            aws,
        })
    }
}

/// Writes the query's result to `out`, clearing what `overwrite` replaces first; returns the
/// task's output: `{"rows", "path", "bytes", "columns"}`.
pub(super) async fn write_output(
    df: DataFrame,
    out: &Output,
    query: &str,
    columns: Vec<String>,
    log: &LogSink,
    started: Instant,
) -> Result<Json, OperatorError> {
    let folder = out.location.is_folder();
    let (store, prefix) = out.location.store(&out.aws)?;
    if out.mode == Mode::Overwrite {
        clear(out, store.as_ref(), &prefix, log).await?;
    }
    if let Location::Local(p) = &out.location {
        create_local_folder(p, folder)?;
    }
    let before: HashSet<StorePath> = if folder {
        storage::list(store.as_ref(), &prefix)
            .await?
            .into_iter()
            .map(|o| o.path)
            .collect()
    } else {
        HashSet::new()
    };
    let written = write_files(df, out, query).await?;
    let rows = rows_written(&written);
    let bytes = bytes_written(out, store.as_ref(), &prefix, &before).await?;
    log.line(&format!(
        "sql: wrote {rows} rows ({}) as {} to {} in {:.2?}",
        bytesize::ByteSize::b(bytes),
        out.format,
        out.given,
        started.elapsed()
    ))
    .await;
    Ok(json!({ "rows": rows, "path": out.given, "bytes": bytes, "columns": columns }))
}

/// `overwrite`: removes every file of an output folder, or the one output file.
async fn clear(
    out: &Output,
    store: &dyn ObjectStore,
    prefix: &StorePath,
    log: &LogSink,
) -> Result<(), OperatorError> {
    if out.location.is_folder() {
        let n = storage::delete_all(store, prefix).await?;
        if n > 0 {
            log.line(&format!(
                "sql: overwrite removed {n} files from {}",
                out.given
            ))
            .await;
        }
        return Ok(());
    }
    match store.delete(prefix).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(OperatorError::Retryable(format!(
            "removing the old {}: {e}",
            out.given
        ))),
    }
}

/// Creates the local folder an output is written into (the path itself, or a file's parent).
fn create_local_folder(path: &Path, folder: bool) -> Result<(), OperatorError> {
    let dir = if folder {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    std::fs::create_dir_all(dir).map_err(|e| fatal(format!("cannot create {}: {e}", dir.display())))
}

/// Runs the query into the output's files, in its format; returns DataFusion's count batches.
async fn write_files(
    df: DataFrame,
    out: &Output,
    query: &str,
) -> Result<Vec<RecordBatch>, OperatorError> {
    let options = DataFrameWriteOptions::new()
        .with_single_file_output(!out.location.is_folder())
        .with_partition_by(out.partition_by.clone());
    let url = out.location.url();
    match out.format {
        Format::Parquet => df.write_parquet(&url, options, None).await,
        Format::Csv => {
            df.write_csv(
                &url,
                options,
                Some(CsvOptions::default().with_has_header(true)),
            )
            .await
        }
        Format::Json => df.write_json(&url, options, None).await,
    }
    .map_err(|e| run_error(&e, query))
}

/// The rows a write reports in its `count` column.
fn rows_written(written: &[RecordBatch]) -> u64 {
    written
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
        .map(|a| a.iter().flatten().sum::<u64>())
        .sum()
}

/// The bytes the write added: the files of a folder that were not there `before`, or the size of
/// the one output file.
async fn bytes_written(
    out: &Output,
    store: &dyn ObjectStore,
    prefix: &StorePath,
    before: &HashSet<StorePath>,
) -> Result<u64, OperatorError> {
    if out.location.is_folder() {
        return Ok(storage::list(store, prefix)
            .await?
            .into_iter()
            .filter(|o| !before.contains(&o.path))
            .map(|o| o.size)
            .sum());
    }
    store
        .head(prefix)
        .await
        .map(|m| m.size)
        .map_err(|e| OperatorError::Retryable(format!("reading back {}: {e}", out.given)))
}

/// The query's rows as a JSON array of objects (the task's output when there is no `output:`).
pub(super) fn batches_to_json(batches: &[RecordBatch]) -> Result<Json, OperatorError> {
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .and_then(|()| writer.finish())
        .map_err(|e| fatal(format!("the result could not be turned into JSON: {e}")))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Json::Array(Vec::new()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| fatal(format!("the result could not be turned into JSON: {e}")))
}
