//! `engine: spark` for the ML operators. The operator's heavy step (reading and aggregating the
//! data, fitting, scoring) runs as a PySpark job that flow ships inside its binary
//! (`flow_ml_job.py`), where the task's `spark:` block says: spark-submit on this machine or an
//! EMR step, with the `spark` operator's keys and its crash safety (a step is submitted once and
//! re-attached after a restart, ADR 7). The light part stays in flow: the statistics, the model
//! registry, the artifact. So both engines give the same answers, and tests compare them.
//!
//! The job leaves its result, one small JSON document, in a folder flow then reads: `scratch` if
//! given, else (local) beside the try's output or (EMR) under `staging`, at a name fixed by the
//! task instance, so that a try that re-attaches to a finished step finds what it wrote.

use std::path::Path;

use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::connections::Connections;
use crate::error::fatal;
use crate::spark::{Placement, Target};
use crate::storage::{Format, Location};
use flow_engine::operator::{OperatorError, TaskContext};

/// The job, built into the binary so that it always matches the operators that read its result.
const JOB: &str = include_str!("flow_ml_job.py");

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// In the flow process (DataFusion, perpetual, linfa).
    #[default]
    Local,
    Spark,
}

impl Engine {
    /// The `engine` key: absent or empty (a param left empty) is local.
    pub fn parse(value: Option<&Json>, op: &str) -> Result<Engine, OperatorError> {
        match value {
            None | Some(Json::Null) => Ok(Engine::Local),
            Some(Json::String(s)) if s.trim().is_empty() => Ok(Engine::Local),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|_| fatal(format!("{op}: engine must be `local` or `spark`, not {v}"))),
        }
    }
}

/// A data location as the cluster reads it: `{"path", "format"}` with the path made absolute
/// (local) or left as the `s3://` URL, and the format settled (a folder is parquet).
pub fn data(spec: &Json, key: &str, dag_folder: &Path) -> Result<Json, OperatorError> {
    let path = spec
        .get("path")
        .and_then(Json::as_str)
        .ok_or_else(|| fatal(format!("`{key}` needs a `path`")))?;
    let location = Location::parse(path, dag_folder)?;
    let format = match spec.get("format") {
        Some(f) if !f.is_null() => serde_json::from_value::<Format>(f.clone())
            .map_err(|e| fatal(format!("`{key}`: format: {e}")))?,
        _ => location.format_from_name().unwrap_or(Format::Parquet),
    };
    let format = format.extension().trim_start_matches('.');
    Ok(json!({ "path": location.url(), "format": format }))
}

/// Runs `job` (its `op` and keys) as the ML job on Spark; returns the job's result.
pub async fn run(
    op: &str,
    spark: Option<&Json>,
    mut job: Json,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Json, OperatorError> {
    let placement: Placement = match spark {
        None | Some(Json::Null) => Placement::default(),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| fatal(format!("{op}: `spark`: {e}")))?
        }
    };
    let placement = placement.without_blanks();
    let folder = ctx.output_path.with_extension("ml.d");
    std::fs::create_dir_all(&folder)
        .map_err(|e| fatal(format!("{op}: {}: {e}", folder.display())))?;
    let script = folder.join("flow_ml_job.py");
    std::fs::write(&script, JOB).map_err(|e| fatal(format!("{op}: {}: {e}", script.display())))?;

    let result = match (placement.scratch.as_deref(), placement.target) {
        (Some(scratch), _) => join(scratch, &instance(ctx)),
        (None, Target::Local) => format!("{}/", folder.join("result").display()),
        (None, Target::Emr) => match placement.staging.as_deref() {
            Some(staging) => join(staging, &format!("results/{}", instance(ctx))),
            None => {
                return Err(fatal(format!(
                    "{op}: engine spark on target emr needs `staging` (or `scratch`): an s3:// prefix the job can write its result to"
                )));
            }
        },
    };
    let result_location = Location::parse(&result, &ctx.dag_folder)?;
    job["op"] = json!(op);
    job["result"] = json!(result_location.url());
    let connection = placement.connection.clone();
    ctx.log
        .line(&format!(
            "{op}: on Spark ({}), result in {}",
            match placement.target {
                Target::Local => "local",
                Target::Emr => "EMR",
            },
            result_location.url()
        ))
        .await;
    let outcome = crate::spark::submit(
        &script.display().to_string(),
        vec![job.to_string()],
        placement,
        conns,
        ctx,
    )
    .await;
    let read = match outcome {
        Ok(_) => read_result(op, &result_location, connection, ctx, conns).await,
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&folder);
    read
}

/// A folder name for this task instance (the same for each of its tries).
fn instance(ctx: &TaskContext) -> String {
    let key = format!(
        "{}\n{}\n{}\n{:?}",
        ctx.dag_id, ctx.run_id, ctx.task_id, ctx.map_index
    );
    crate::storage::content_hash(key.as_bytes())
}

fn join(prefix: &str, name: &str) -> String {
    format!("{}/{name}/", prefix.trim_end_matches('/'))
}

async fn read_result(
    op: &str,
    location: &Location,
    connection: Option<String>,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Json, OperatorError> {
    // Only the part files: Spark also leaves `_SUCCESS` and, on a local disk, `.crc` files.
    let parts = format!("{}/part-*.json", location.url().trim_end_matches('/'));
    let source = json!({ "path": parts, "format": "json", "connection": connection });
    let (_, batches) = crate::sql::read(
        &[("result", &source)],
        "SELECT result FROM result",
        ctx,
        conns,
    )
    .await?;
    let text = super::column_text(&batches, "result", op)?
        .into_iter()
        .flatten()
        .next()
        .ok_or_else(|| {
            OperatorError::Retryable(format!(
                "{op}: the Spark job left no result in {}",
                location.url()
            ))
        })?;
    serde_json::from_str(&text)
        .map_err(|e| fatal(format!("{op}: the Spark job's result is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_given_to_the_cluster_as_an_absolute_path_or_url_with_its_format() {
        let dags = Path::new("/srv/dags");
        assert_eq!(
            data(&json!({"path": "data/events.csv"}), "input", dags).unwrap(),
            json!({"path": "/srv/dags/data/events.csv", "format": "csv"})
        );
        assert_eq!(
            data(&json!({"path": "s3://lake/sets/"}), "input", dags).unwrap(),
            json!({"path": "s3://lake/sets/", "format": "parquet"})
        );
        assert_eq!(
            data(
                &json!({"path": "out/x.txt", "format": "json"}),
                "input",
                dags
            )
            .unwrap(),
            json!({"path": "/srv/dags/out/x.txt", "format": "json"})
        );
        let err = data(&json!({"format": "csv"}), "outcomes", dags).unwrap_err();
        assert!(
            err.to_string().contains("`outcomes` needs a `path`"),
            "{err}"
        );
    }

    #[test]
    fn engine_is_local_unless_it_says_spark() {
        assert_eq!(Engine::parse(None, "t").unwrap(), Engine::Local);
        assert_eq!(Engine::parse(Some(&json!("")), "t").unwrap(), Engine::Local);
        assert_eq!(
            Engine::parse(Some(&json!("spark")), "t").unwrap(),
            Engine::Spark
        );
        let err = Engine::parse(Some(&json!("emr")), "train").unwrap_err();
        assert!(err.to_string().contains("train: engine must be"), "{err}");
    }
}
