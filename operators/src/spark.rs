//! `spark`: a PySpark (or jar) job. `target: local` runs `spark-submit --master local[*]` on the
//! scheduler's machine, as a child process group like a shell task (killed whole on timeout,
//! recorded for crash recovery), its output in the try's log.
//!
//! `spark-submit` is `$SPARK_HOME/bin/spark-submit` when SPARK_HOME is set, else the one on
//! PATH. A script given as an `s3://` URL is downloaded into the try's temporary folder first.
//!
//! `target: emr` submits the same script and arguments as an EMR step (see [`crate::emr`]).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::connections::Connections;
use crate::error::fatal;
use crate::s3::{S3Url, client, sdk_error};

pub struct Spark {
    connections: Arc<Connections>,
}

impl Spark {
    pub fn new(connections: Arc<Connections>) -> Spark {
        Spark { connections }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    target: Target,
    script: String,
    #[serde(default)]
    args: Vec<Json>,
    #[serde(default)]
    spark_args: Vec<Json>,
    connection: Option<String>,
    cluster_id: Option<String>,
    cluster: Option<crate::emr::ClusterSpec>,
    staging: Option<String>,
}

/// Where a job runs: the `spark` operator's keys besides `script` and `args`, and the ML
/// operators' `spark:` block (see `ml::on_spark`), which adds `scratch`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Placement {
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub spark_args: Vec<Json>,
    pub connection: Option<String>,
    pub cluster_id: Option<String>,
    pub cluster: Option<crate::emr::ClusterSpec>,
    pub staging: Option<String>,
    /// Where an ML job leaves its result for flow to read (see `ml::on_spark`).
    pub scratch: Option<String>,
}

impl Placement {
    /// A key templated from a param that is empty for this run (`cluster_id: "{{
    /// params.cluster }}"` on a local run) is absent, so one DAG serves both targets.
    pub fn without_blanks(mut self) -> Placement {
        for key in [
            &mut self.connection,
            &mut self.cluster_id,
            &mut self.staging,
            &mut self.scratch,
        ] {
            if key.as_deref().is_some_and(|v| v.trim().is_empty()) {
                *key = None;
            }
        }
        self
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Target {
    #[default]
    Local,
    Emr,
}

fn texts(key: &str, values: &[Json]) -> Result<Vec<String>, OperatorError> {
    values
        .iter()
        .map(|v| match v {
            Json::String(s) => Ok(s.clone()),
            Json::Number(_) | Json::Bool(_) => Ok(v.to_string()),
            _ => Err(fatal(format!(
                "spark: `{key}` holds only strings and numbers"
            ))),
        })
        .collect()
}

/// The spark-submit to run (see the module's note).
pub fn spark_submit() -> PathBuf {
    match std::env::var_os("SPARK_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join("bin/spark-submit"),
        _ => PathBuf::from("spark-submit"),
    }
}

/// The script as a local file: itself, or downloaded from S3 into `dir`.
async fn local_script(
    script: &str,
    cfg_conn: Option<&str>,
    conns: &Connections,
    ctx: &TaskContext,
    dir: &std::path::Path,
) -> Result<PathBuf, OperatorError> {
    if !script.starts_with("s3://") {
        let path = ctx.dag_folder.join(script);
        if !path.is_file() {
            return Err(fatal(format!("spark: script `{script}` is not a file")));
        }
        return Ok(path);
    }
    let url = S3Url::parse(script)?;
    let name = url.key.rsplit('/').next().unwrap_or("job.py");
    let s3 = client(&conns.aws(cfg_conn, &ctx.secrets)?).await;
    let obj = s3
        .get_object()
        .bucket(&url.bucket)
        .key(&url.key)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("spark: get {url}"), e))?;
    let bytes = obj
        .body
        .collect()
        .await
        .map_err(|e| OperatorError::Retryable(format!("spark: reading {url}: {e}")))?
        .into_bytes();
    std::fs::create_dir_all(dir).map_err(|e| fatal(format!("spark: {}: {e}", dir.display())))?;
    let path = dir.join(name);
    std::fs::write(&path, &bytes).map_err(|e| fatal(format!("spark: {}: {e}", path.display())))?;
    Ok(path)
}

#[async_trait]
impl Operator for Spark {
    fn name(&self) -> &'static str {
        "spark"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["script"],
            optional: &[
                "target",
                "args",
                "spark_args",
                "connection",
                "cluster_id",
                "cluster",
                "staging",
            ],
            code: &[],
            shell: &[],
            url: &[],
            program: &["script", "spark_args"],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: Config =
            serde_json::from_value(config.clone()).map_err(|e| fatal(format!("spark: {e}")))?;
        let args = texts("args", &cfg.args)?;
        let placement = Placement {
            target: cfg.target,
            spark_args: cfg.spark_args,
            connection: cfg.connection,
            cluster_id: cfg.cluster_id,
            cluster: cfg.cluster,
            staging: cfg.staging,
            scratch: None,
        };
        submit(&cfg.script, args, placement, &self.connections, ctx).await
    }

    /// EMR steps must be cancelled when a try times out, which takes a request, not just a
    /// dropped future: the operator applies the timeout itself, on both targets.
    fn own_timeout(&self) -> bool {
        true
    }
}

/// Runs `script` with `args` where `placement` says, under the task's timeout; the `spark`
/// operator's output. The ML operators' `engine: spark` comes through here too.
pub(crate) async fn submit(
    script: &str,
    args: Vec<String>,
    p: Placement,
    conns: &Connections,
    ctx: &TaskContext,
) -> Result<Option<Json>, OperatorError> {
    let p = p.without_blanks();
    let spark_args = texts("spark_args", &p.spark_args)?;
    if p.target == Target::Emr {
        let sub = crate::emr::Submission {
            script,
            args,
            spark_args,
            connection: p.connection.as_deref(),
            cluster_id: p.cluster_id,
            cluster: p.cluster,
            staging: p.staging.as_deref(),
        };
        return crate::emr::run(sub, conns, ctx).await;
    }
    let conn = p.connection.as_deref();
    match ctx.timeout {
        Some(limit) => {
            tokio::time::timeout(limit, local(script, conn, args, spark_args, conns, ctx))
                .await
                .unwrap_or_else(|_| {
                    Err(OperatorError::Retryable(format!(
                        "timed out after {}",
                        flow_engine::time::as_written(limit)
                    )))
                })
        }
        None => local(script, conn, args, spark_args, conns, ctx).await,
    }
}

async fn local(
    script: &str,
    connection: Option<&str>,
    args: Vec<String>,
    spark_args: Vec<String>,
    conns: &Connections,
    ctx: &TaskContext,
) -> Result<Option<Json>, OperatorError> {
    // Beside the try's output file, whose name is already unique to this try.
    let scratch = ctx.output_path.with_extension("spark.d");
    let script = local_script(script, connection, conns, ctx, &scratch).await?;
    let mut argv = vec![
        spark_submit().display().to_string(),
        "--master".to_string(),
        "local[*]".to_string(),
        "--conf".to_string(),
        "spark.ui.enabled=false".to_string(),
    ];
    argv.extend(spark_args);
    argv.push(script.display().to_string());
    argv.extend(args);
    ctx.log
        .line(&format!("spark: {}", ctx.masker.mask(&argv.join(" "))))
        .await;
    let result = crate::shell::run_gated(
        "exec \"$@\"",
        &argv,
        &ctx.dag_folder,
        ctx.env(),
        "spark-submit",
        ctx,
    )
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    Ok(Some(json!({ "exit_code": 0 })))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use flow_engine::dag::parse::{ParseOptions, parse_dag};

    fn problems(script: &str, spark_args: &str) -> Vec<String> {
        let text = format!(
            "id: s\nparams:\n  job: {{ type: string, default: a }}\n  n: {{ type: integer, default: 1 }}\n\
             tasks:\n  t:\n    operator: spark\n    script: \"{script}\"\n    spark_args: [{spark_args}]\n    \
             args: [\"{{{{ params.job }}}}\", \"{{{{ ds }}}}\"]\n"
        );
        let registry = crate::registry(crate::Connections::default());
        match parse_dag(
            Path::new("s.yaml"),
            &text,
            &registry,
            &ParseOptions::default(),
        ) {
            Ok(_) => Vec::new(),
            Err(found) => found.iter().map(ToString::to_string).collect(),
        }
    }

    /// A trigger chooses values, never the program: the script and spark-submit's options (which
    /// can load code: `--py-files`, `--conf spark.driver.extraJavaOptions`) take no outside value.
    #[test]
    fn outside_values_never_choose_the_spark_program() {
        assert_eq!(
            problems("jobs/a.py", "\"--conf\", \"x={{ ds }}\""),
            Vec::<String>::new()
        );
        assert_eq!(problems("jobs/{{ params.n }}.py", ""), Vec::<String>::new());
        let found = problems("jobs/{{ params.job }}.py", "");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("s.yaml:8:13")
                && found[0].contains("params.job would choose the program")
                && found[0].contains("args:"),
            "{found:?}"
        );
        let found = problems(
            "jobs/a.py",
            "\"--py-files\", \"{{ params.job | shell_quote }}\"",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("in 'spark_args' of task 't': params.job"),
            "{found:?}"
        );
    }
}
