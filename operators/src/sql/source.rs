//! The query's sources: each settled from its `sources:` entry, then registered as a table.

use std::collections::HashSet;

use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};
use flow_engine::operator::{OperatorError, TaskContext};

use super::{Buckets, SourceSpec};
use crate::connections::Aws;
use crate::error::fatal;
use crate::storage::{self, Format, Location};

/// A source with its location and format settled.
pub(super) struct Source {
    pub(super) name: String,
    pub(super) given: String,
    pub(super) location: Location,
    pub(super) format: Option<Format>,
    extension: String,
}

impl Source {
    /// Settles `sources.NAME`: its name checked as a table name, its location parsed (and its
    /// bucket's connection noted), its format and file extension from the path or `format:`.
    pub(super) fn resolve(
        name: String,
        spec: SourceSpec,
        ctx: &TaskContext,
        buckets: &mut Buckets,
    ) -> Result<Source, OperatorError> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(fatal(format!(
                "source name `{name}`: a table name takes letters, digits and _ only"
            )));
        }
        let location = Location::parse(&spec.path, &ctx.dag_folder)?;
        buckets.note(&location, spec.connection.as_deref())?;
        let named = location.format_from_name();
        let extension = match named {
            Some(_) if !location.is_folder() => location.extension().unwrap_or_default(),
            _ if location.is_glob() || !location.is_folder() => String::new(),
            _ => spec
                .format
                .map(|f| f.extension().to_string())
                .unwrap_or_default(),
        };
        Ok(Source {
            name,
            given: spec.path,
            format: spec.format.or(named),
            location,
            extension,
        })
    }
}

/// The bucket of an `s3://` location; "" for a local one.
pub(super) fn bucket_of(loc: &Location) -> &str {
    match loc {
        Location::S3 { bucket, .. } => bucket,
        Location::Local(_) => "",
    }
}

/// Registers the source as a table of `ctx`, its format from its files when not given.
pub(super) async fn register(
    ctx: &SessionContext,
    s: &Source,
    aws: Option<Aws>,
) -> Result<(), OperatorError> {
    let format = match s.format {
        Some(f) => f,
        None => infer_format(s, &aws.unwrap_or_default()).await?,
    };
    let extension = if s.extension.is_empty() && s.location.is_folder() {
        format.extension().to_string()
    } else {
        s.extension.clone()
    };
    let url = s.location.url();
    let done = match format {
        Format::Parquet => {
            ctx.register_parquet(
                &s.name,
                &url,
                ParquetReadOptions::default().file_extension(&extension),
            )
            .await
        }
        Format::Csv => {
            ctx.register_csv(
                &s.name,
                &url,
                CsvReadOptions::new()
                    .has_header(true)
                    .file_extension(&extension),
            )
            .await
        }
        Format::Json => {
            ctx.register_json(
                &s.name,
                &url,
                JsonReadOptions::default().file_extension(&extension),
            )
            .await
        }
    };
    done.map_err(|e| {
        let msg = e.strip_backtrace();
        let err = format!("source {} ({}): {msg}", s.name, s.given);
        // A file that is not there yet may appear (an upstream still writing, S3 lag); a
        // malformed one will not mend itself.
        if msg.contains("not found")
            || msg.contains("No files found")
            || msg.contains("No such file")
        {
            OperatorError::Retryable(err)
        } else {
            fatal(err)
        }
    })
}

/// The format of a folder source given without `format:`: the one its files share.
async fn infer_format(s: &Source, aws: &Aws) -> Result<Format, OperatorError> {
    let (store, prefix) = s.location.store(aws)?;
    let objects = storage::list(store.as_ref(), &prefix).await?;
    let formats: HashSet<Format> = objects
        .iter()
        .filter_map(|o| {
            let name = o.path.filename()?;
            if name.starts_with('_') || name.starts_with('.') {
                return None;
            }
            Format::from_name(name)
        })
        .collect();
    match formats.len() {
        1 => Ok(formats.into_iter().next().unwrap_or(Format::Parquet)),
        0 => Err(OperatorError::Retryable(format!(
            "source {} ({}): no parquet, csv or json files there yet",
            s.name, s.given
        ))),
        _ => Err(fatal(format!(
            "source {} ({}): the folder holds files of several formats; give `format:`",
            s.name, s.given
        ))),
    }
}
