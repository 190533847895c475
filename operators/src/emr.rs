//! `spark` with `target: emr`: the script runs as a step of an EMR cluster, an existing one
//! (`cluster_id`) or a transient one created for the step and terminated when it ends
//! (`cluster:`).
//!
//! No step is ever submitted twice for one task instance:
//! - the step (or the transient cluster, before its step is known) is committed to the database
//!   before the operator polls ([`TaskContext::record_external`]); a try after a crash or a clean
//!   shutdown finds it in [`TaskContext::external`] and re-attaches to it;
//! - before a step is submitted to an existing cluster, its name (the instance and a nonce) is
//!   committed: a try that died between the submission and the commit of the step's id leaves the
//!   name, and the next try finds the step by it (or, finding none, submits it).
//!
//! A task timeout cancels the step (and terminates a transient cluster) before the try fails; so
//! does a clear, from the dropped try. A clean shutdown leaves the step running for the next try.

mod trace;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_sdk_emr::Client as Emr;
use aws_sdk_emr::types::{
    ActionOnFailure, Application, HadoopJarStepConfig, JobFlowInstancesConfig, StepConfig,
    StepState,
};
use aws_sdk_s3::primitives::ByteStream;
use backon::{BackoffBuilder, ExponentialBuilder};
use flow_engine::operator::{OperatorError, TaskContext};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use tracing::Instrument;

use self::trace::{step_span, trace_confs};
use crate::connections::Connections;
use crate::error::fatal;
use crate::s3::{S3Url, sdk_config, sdk_error};

/// `cluster:`, a transient cluster made for one step.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    name: Option<String>,
    release_label: String,
    #[serde(default = "default_instance_type")]
    instance_type: String,
    #[serde(default = "default_instance_count")]
    instance_count: i32,
    log_uri: Option<String>,
    #[serde(default = "default_job_flow_role")]
    job_flow_role: String,
    #[serde(default = "default_service_role")]
    service_role: String,
}

fn default_instance_type() -> String {
    "m5.xlarge".to_string()
}
fn default_instance_count() -> i32 {
    1
}
fn default_job_flow_role() -> String {
    "EMR_EC2_DefaultRole".to_string()
}
fn default_service_role() -> String {
    "EMR_DefaultRole".to_string()
}

/// Where a submission stands, as committed to the database (`external_ref`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRef {
    pub cluster_id: String,
    /// None only between creating a transient cluster and learning its step's id.
    pub step_id: Option<String>,
    /// The cluster was made for this step and is terminated when it ends.
    #[serde(default)]
    pub transient: bool,
    /// The step's name, committed before it was submitted.
    #[serde(default)]
    pub name: Option<String>,
}

pub struct Submission<'a> {
    pub script: &'a str,
    pub args: Vec<String>,
    pub spark_args: Vec<String>,
    pub connection: Option<&'a str>,
    pub cluster_id: Option<String>,
    pub cluster: Option<ClusterSpec>,
    pub staging: Option<&'a str>,
}

/// A new submission's step name: the task instance, and a nonce that tells this submission from
/// any other of the same instance (a cleared try's step may still be running). The name is
/// committed before the step is submitted, so that a try that died before committing the step's
/// id is found by it.
fn step_name(ctx: &TaskContext) -> String {
    let map = ctx.map_index.map(|i| format!("[{i}]")).unwrap_or_default();
    let nonce: u32 = rand::random();
    let name = format!(
        "flow {}.{}{map} {} #{nonce:08x}",
        ctx.dag_id, ctx.task_id, ctx.run_id
    );
    // EMR caps step names at 256 characters; the nonce stays.
    let tail = format!(" #{nonce:08x}");
    if name.chars().count() > 256 {
        let head: String = name.chars().take(256 - tail.len()).collect();
        head + &tail
    } else {
        name
    }
}

pub async fn run(
    sub: Submission<'_>,
    conns: &Connections,
    ctx: &TaskContext,
) -> Result<Option<Json>, OperatorError> {
    if sub.cluster_id.is_some() == sub.cluster.is_some() {
        return Err(fatal(
            "spark: target emr needs exactly one of `cluster_id` (an existing cluster) and `cluster` (a transient one)",
        ));
    }
    let aws = conns.aws(sub.connection, &ctx.secrets)?;
    let shared = sdk_config(&aws).await;
    let mut emr_conf = aws_sdk_emr::config::Builder::from(&shared);
    if let Some(url) = &aws.emr_endpoint_url {
        emr_conf = emr_conf.endpoint_url(url);
    }
    let emr = Emr::from_conf(emr_conf.build());
    let s3 = crate::s3::client(&aws).await;

    let started = Instant::now();
    let mut guard = CancelGuard {
        emr: emr.clone(),
        step: None,
        shutdown: ctx.shutdown.clone(),
    };
    let work = async {
        let attached = match ctx.external.as_ref() {
            Some(previous) => reattach(previous, &emr, ctx, &mut guard).await?,
            None => None,
        };
        let step = match attached {
            Some(step) => step,
            None => {
                let span = step_span("emr.submit");
                let step = submit(&sub, &emr, &s3, ctx, &mut guard)
                    .instrument(span.clone())
                    .await?;
                step.record_on(&span);
                step
            }
        };
        let span = step_span("emr.step");
        step.record_on(&span);
        watch(&emr, &s3, step, ctx, &mut guard)
            .instrument(span)
            .await
    };
    let result = match ctx.timeout {
        Some(limit) => {
            let left = limit.saturating_sub(started.elapsed());
            let outcome = tokio::time::timeout(left, work).await;
            match outcome {
                Ok(r) => r,
                Err(_) => {
                    ctx.log
                        .line("emr: the task timed out; cancelling the step")
                        .await;
                    guard.cancel_now().await;
                    Err(OperatorError::Retryable(format!(
                        "timed out after {}",
                        flow_engine::time::as_written(limit)
                    )))
                }
            }
        }
        None => work.await,
    };
    guard.step = None;
    result
}

/// Re-attaches to what an earlier try of this instance started; None when it turns out that
/// nothing was started.
async fn reattach(
    previous: &Json,
    emr: &Emr,
    ctx: &TaskContext,
    guard: &mut CancelGuard,
) -> Result<Option<StepRef>, OperatorError> {
    let mut step: StepRef = serde_json::from_value(previous.clone())
        .map_err(|e| fatal(format!("spark: the recorded EMR step is unreadable: {e}")))?;
    if step.step_id.is_none() {
        let name = step.name.clone().unwrap_or_default();
        step.step_id = find_step(emr, &step.cluster_id, &name).await?;
        if step.step_id.is_none() {
            if step.transient {
                guard.step = Some(step.clone());
                return Err(OperatorError::Retryable(format!(
                    "spark: transient cluster {} has no step named `{name}`",
                    step.cluster_id
                )));
            }
            // The earlier try died before its submission reached EMR: submit now.
            return Ok(None);
        }
        guard.step = Some(step.clone());
        record(ctx, &step).await?;
    }
    ctx.log
        .line(&format!(
            "emr: re-attached to step {} on cluster {} (submitted by an earlier try)",
            step.step_id.as_deref().unwrap_or("?"),
            step.cluster_id
        ))
        .await;
    guard.step = Some(step.clone());
    Ok(Some(step))
}

async fn record(ctx: &TaskContext, step: &StepRef) -> Result<(), OperatorError> {
    let value = serde_json::to_value(step).map_err(|e| fatal(e.to_string()))?;
    if ctx.record_external(value).await {
        Ok(())
    } else {
        // The lease is gone (cleared or taken over): the guard cancels what was started.
        Err(OperatorError::Retryable(
            "spark: cannot record the EMR step (the try lost its lease)".to_string(),
        ))
    }
}

/// Stages the script and submits its step: to the existing cluster (`cluster_id`), or as the
/// step of a new transient cluster (`cluster:`).
async fn submit(
    sub: &Submission<'_>,
    emr: &Emr,
    s3: &aws_sdk_s3::Client,
    ctx: &TaskContext,
    guard: &mut CancelGuard,
) -> Result<StepRef, OperatorError> {
    let script = stage_script(sub, s3, ctx).await?;
    let mut args = vec!["spark-submit".to_string()];
    args.extend(trace_confs(ctx.traceparent.as_deref()));
    args.extend(sub.spark_args.iter().cloned());
    args.push(script);
    args.extend(sub.args.iter().cloned());
    ctx.log
        .line(&format!(
            "emr: command-runner.jar {}",
            ctx.masker.mask(&args.join(" "))
        ))
        .await;
    let step = NewStep {
        name: step_name(ctx),
        args,
    };
    if let Some(cluster_id) = &sub.cluster_id {
        return add_step(cluster_id, &step, emr, ctx, guard).await;
    }
    let spec = sub
        .cluster
        .as_ref()
        .ok_or_else(|| fatal("spark: no cluster"))?;
    start_transient(spec, &step, emr, ctx, guard).await
}

/// A step about to be submitted: its name (see [`step_name`]) and command-runner.jar's
/// arguments.
struct NewStep {
    name: String,
    args: Vec<String>,
}

impl NewStep {
    /// The step as EMR takes it; `on_failure` is what EMR does to the cluster if it fails.
    fn config(&self, on_failure: ActionOnFailure) -> StepConfig {
        StepConfig::builder()
            .name(&self.name)
            .action_on_failure(on_failure)
            .hadoop_jar_step(
                HadoopJarStepConfig::builder()
                    .jar("command-runner.jar")
                    .set_args(Some(self.args.clone()))
                    .build(),
            )
            .build()
    }
}

/// Submits the step to the existing cluster `cluster_id`, its name committed first.
async fn add_step(
    cluster_id: &str,
    step: &NewStep,
    emr: &Emr,
    ctx: &TaskContext,
    guard: &mut CancelGuard,
) -> Result<StepRef, OperatorError> {
    let name = &step.name;
    // The name first: a try that dies between the submission and the id's commit leaves
    // the name for the next try to find the step by.
    record(
        ctx,
        &StepRef {
            cluster_id: cluster_id.to_string(),
            step_id: None,
            transient: false,
            name: Some(name.clone()),
        },
    )
    .await?;
    let out = emr
        .add_job_flow_steps()
        .job_flow_id(cluster_id)
        .steps(step.config(ActionOnFailure::Continue))
        .send()
        .await
        .map_err(|e| sdk_error(&format!("spark: AddJobFlowSteps on {cluster_id}"), e))?;
    let step_id = out
        .step_ids()
        .first()
        .cloned()
        .ok_or_else(|| OperatorError::Retryable("spark: EMR returned no step id".into()))?;
    let step = StepRef {
        cluster_id: cluster_id.to_string(),
        step_id: Some(step_id.clone()),
        transient: false,
        name: Some(name.clone()),
    };
    guard.step = Some(step.clone());
    record(ctx, &step).await?;
    ctx.log
        .line(&format!(
            "emr: submitted step {step_id} to cluster {cluster_id}"
        ))
        .await;
    Ok(step)
}

/// Creates a transient cluster whose one step is `step`, and learns the step's id; the cluster,
/// then the step, is committed as soon as it is known.
async fn start_transient(
    spec: &ClusterSpec,
    step: &NewStep,
    emr: &Emr,
    ctx: &TaskContext,
    guard: &mut CancelGuard,
) -> Result<StepRef, OperatorError> {
    let name = &step.name;
    let mut run = emr
        .run_job_flow()
        .name(
            spec.name
                .clone()
                .unwrap_or_else(|| format!("flow {}.{}", ctx.dag_id, ctx.task_id)),
        )
        .release_label(&spec.release_label)
        .applications(Application::builder().name("Spark").build())
        .instances(
            JobFlowInstancesConfig::builder()
                .master_instance_type(&spec.instance_type)
                .slave_instance_type(&spec.instance_type)
                .instance_count(spec.instance_count)
                // Transient: the cluster ends with its step.
                .keep_job_flow_alive_when_no_steps(false)
                .build(),
        )
        .steps(step.config(ActionOnFailure::TerminateCluster))
        .job_flow_role(&spec.job_flow_role)
        .service_role(&spec.service_role)
        .visible_to_all_users(true);
    if let Some(uri) = &spec.log_uri {
        run = run.log_uri(uri);
    }
    let out = run
        .send()
        .await
        .map_err(|e| sdk_error("spark: RunJobFlow", e))?;
    let cluster_id = out
        .job_flow_id()
        .ok_or_else(|| OperatorError::Retryable("spark: EMR returned no cluster id".into()))?
        .to_string();
    let mut step = StepRef {
        cluster_id: cluster_id.clone(),
        step_id: None,
        transient: true,
        name: Some(name.clone()),
    };
    guard.step = Some(step.clone());
    record(ctx, &step).await?;
    ctx.log
        .line(&format!("emr: created transient cluster {cluster_id}"))
        .await;
    step.step_id = find_step(emr, &cluster_id, name).await?;
    let Some(step_id) = step.step_id.clone() else {
        return Err(OperatorError::Retryable(format!(
            "spark: transient cluster {cluster_id} lists no step named `{name}`"
        )));
    };
    guard.step = Some(step.clone());
    record(ctx, &step).await?;
    ctx.log.line(&format!("emr: its step is {step_id}")).await;
    Ok(step)
}

/// The script as EMR reads it: an `s3://` URL as given, or a local file uploaded under `staging`
/// at a name made of its content's hash (the same file is uploaded once, and a re-run never
/// overwrites a script a running step reads).
async fn stage_script(
    sub: &Submission<'_>,
    s3: &aws_sdk_s3::Client,
    ctx: &TaskContext,
) -> Result<String, OperatorError> {
    if sub.script.starts_with("s3://") {
        return Ok(sub.script.to_string());
    }
    let Some(staging) = sub.staging else {
        return Err(fatal(format!(
            "spark: the local script `{}` needs `staging:` (an s3:// prefix to upload it to) on target emr",
            sub.script
        )));
    };
    let path = ctx.dag_folder.join(sub.script);
    let bytes =
        std::fs::read(&path).map_err(|e| fatal(format!("spark: script `{}`: {e}", sub.script)))?;
    let hash = crate::storage::content_hash(&bytes);
    let file = Path::new(sub.script)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| "job.py".to_string());
    let mut prefix = S3Url::parse(staging)?;
    if !prefix.is_prefix() {
        prefix.key.push('/');
    }
    let url = S3Url {
        bucket: prefix.bucket.clone(),
        key: format!("{}{hash}/{file}", prefix.key),
    };
    s3.put_object()
        .bucket(&url.bucket)
        .key(&url.key)
        .body(ByteStream::from(bytes))
        .send()
        .await
        .map_err(|e| sdk_error(&format!("spark: uploading the script to {url}"), e))?;
    ctx.log
        .line(&format!("emr: uploaded {} to {url}", sub.script))
        .await;
    Ok(url.to_string())
}

/// The newest step of `cluster_id` named `name`.
async fn find_step(
    emr: &Emr,
    cluster_id: &str,
    name: &str,
) -> Result<Option<String>, OperatorError> {
    let out = emr
        .list_steps()
        .cluster_id(cluster_id)
        .send()
        .await
        .map_err(|e| sdk_error(&format!("spark: ListSteps on {cluster_id}"), e))?;
    Ok(out
        .steps()
        .iter()
        .find(|s| s.name() == Some(name))
        .and_then(|s| s.id().map(str::to_string)))
}

/// Polls the step with a growing interval until it ends; copies its stderr into the task log
/// and stdout when it did not complete; terminates a transient cluster.
async fn watch(
    emr: &Emr,
    s3: &aws_sdk_s3::Client,
    step: StepRef,
    ctx: &TaskContext,
    guard: &mut CancelGuard,
) -> Result<Option<Json>, OperatorError> {
    let step_id = step.step_id.clone().unwrap_or_default();
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_factor(1.3)
        .with_max_delay(Duration::from_secs(30))
        .without_max_times()
        .build();
    let mut last: Option<StepState> = None;
    let (state, failure) = loop {
        let out = emr
            .describe_step()
            .cluster_id(&step.cluster_id)
            .step_id(&step_id)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("spark: DescribeStep {step_id}"), e))?;
        let status = out.step().and_then(|s| s.status());
        let state = status
            .and_then(|s| s.state())
            .cloned()
            .unwrap_or(StepState::Pending);
        if last.as_ref() != Some(&state) {
            tracing::Span::current().record("state", state.as_str());
            ctx.log
                .line(&format!("emr: step {step_id} is {}", state.as_str()))
                .await;
            last = Some(state.clone());
        }
        match state {
            StepState::Pending | StepState::Running | StepState::CancelPending => {}
            _ => {
                let failure = status.and_then(|s| s.failure_details()).map(|f| {
                    [f.reason(), f.message()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(": ")
                });
                break (state, failure);
            }
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(30))).await;
    };
    // The step has ended: nothing is left to cancel, only a transient cluster to end.
    guard.step = None;
    if state != StepState::Completed {
        copy_step_logs(emr, s3, &step, ctx).await;
    }
    if step.transient {
        terminate(emr, &step.cluster_id).await;
        ctx.log
            .line(&format!(
                "emr: terminated transient cluster {}",
                step.cluster_id
            ))
            .await;
    }
    if state == StepState::Completed {
        return Ok(Some(json!({
            "cluster_id": step.cluster_id,
            "step_id": step_id,
            "state": state.as_str(),
        })));
    }
    Err(OperatorError::Retryable(format!(
        "spark: EMR step {step_id} on {} ended {}{}",
        step.cluster_id,
        state.as_str(),
        failure.map(|f| format!(": {f}")).unwrap_or_default()
    )))
}

async fn terminate(emr: &Emr, cluster_id: &str) {
    if let Err(e) = emr
        .terminate_job_flows()
        .job_flow_ids(cluster_id)
        .send()
        .await
    {
        tracing::warn!(
            "cannot terminate EMR cluster {cluster_id}: {}",
            aws_sdk_emr::error::DisplayErrorContext(e)
        );
    }
}

/// How much of each of a failed step's logs goes into the task log (its end, where the error is).
const LOG_TAIL_LINES: usize = 300;

/// Copies the tails of the step's stdout and stderr from the cluster's log URI into the task
/// log: spark-submit's own messages are on stderr, and a PySpark driver's traceback is on stdout.
/// EMR uploads step logs a little after the step ends, so a missing file is looked for again for
/// a few seconds; a cluster with no log URI, or logs that never come, is said in the log.
async fn copy_step_logs(emr: &Emr, s3: &aws_sdk_s3::Client, step: &StepRef, ctx: &TaskContext) {
    let step_id = step.step_id.as_deref().unwrap_or_default();
    let log_uri = match emr
        .describe_cluster()
        .cluster_id(&step.cluster_id)
        .send()
        .await
    {
        Ok(out) => out
            .cluster()
            .and_then(|c| c.log_uri())
            .map(|u| u.replacen("s3n://", "s3://", 1)),
        Err(e) => {
            ctx.log
                .line(&format!(
                    "emr: cannot read the cluster's log URI: {}",
                    aws_sdk_emr::error::DisplayErrorContext(e)
                ))
                .await;
            return;
        }
    };
    let Some(mut log_uri) = log_uri else {
        ctx.log
            .line("emr: the cluster has no log URI; the step's logs are on the cluster only")
            .await;
        return;
    };
    if !log_uri.ends_with('/') {
        log_uri.push('/');
    }
    for file in ["stdout.gz", "stderr.gz"] {
        let Ok(url) = S3Url::parse(&format!(
            "{log_uri}{}/steps/{step_id}/{file}",
            step.cluster_id
        )) else {
            return;
        };
        copy_tail(s3, &url, ctx).await;
    }
}

async fn copy_tail(s3: &aws_sdk_s3::Client, url: &S3Url, ctx: &TaskContext) {
    for attempt in 0..10 {
        match s3
            .get_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .send()
            .await
        {
            Ok(obj) => {
                let Ok(body) = obj.body.collect().await else {
                    return;
                };
                let bytes = body.into_bytes();
                let mut text = String::new();
                if flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_string(&mut text)
                    .is_err()
                {
                    text = String::from_utf8_lossy(&bytes).into_owned();
                }
                let lines: Vec<&str> = text.lines().collect();
                let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
                let part = if skip > 0 {
                    format!(", its last {LOG_TAIL_LINES} lines")
                } else {
                    String::new()
                };
                ctx.log.line(&format!("emr: {url}{part}:")).await;
                for line in &lines[skip..] {
                    ctx.log.line(&format!("  {line}")).await;
                }
                return;
            }
            Err(_) if attempt < 9 => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(e) => {
                ctx.log
                    .line(&format!(
                        "emr: no step log at {url}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(e)
                    ))
                    .await;
            }
        }
    }
}

/// Cancels the step (and terminates a transient cluster) when the try ends without seeing the
/// step end: its future was dropped because the task was cleared, or it timed out. Not on a
/// clean shutdown: the next try re-attaches.
struct CancelGuard {
    emr: Emr,
    step: Option<StepRef>,
    shutdown: tokio_util::sync::CancellationToken,
}

impl CancelGuard {
    async fn cancel_now(&mut self) {
        if let Some(step) = self.step.take() {
            cancel(&self.emr, &step).await;
        }
    }
}

async fn cancel(emr: &Emr, step: &StepRef) {
    if let Some(step_id) = &step.step_id {
        let result = emr
            .cancel_steps()
            .cluster_id(&step.cluster_id)
            .step_ids(step_id)
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(
                "cannot cancel EMR step {step_id}: {}",
                aws_sdk_emr::error::DisplayErrorContext(e)
            );
        }
    }
    if step.transient {
        terminate(emr, &step.cluster_id).await;
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(step) = self.step.take() else {
            return;
        };
        if self.shutdown.is_cancelled() {
            return;
        }
        let emr = self.emr.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { cancel(&emr, &step).await });
            }
            Err(_) => tracing::warn!(
                "cannot cancel EMR step {:?} on {}: no runtime",
                step.step_id,
                step.cluster_id
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reference_round_trips_and_reads_without_transient() {
        let step = StepRef {
            cluster_id: "j-1".into(),
            step_id: Some("s-1".into()),
            transient: true,
            name: Some("flow d.t r #0000002a".into()),
        };
        let back: StepRef = serde_json::from_value(serde_json::to_value(&step).unwrap()).unwrap();
        assert_eq!(back, step);
        let old: StepRef =
            serde_json::from_value(json!({"cluster_id": "j-2", "step_id": null})).unwrap();
        assert!(!old.transient && old.step_id.is_none() && old.name.is_none());
    }

    #[test]
    fn a_cluster_spec_fills_defaults_and_rejects_unknown_keys() {
        let spec: ClusterSpec =
            serde_json::from_value(json!({"release_label": "emr-7.5.0"})).unwrap();
        assert_eq!(
            (spec.instance_type.as_str(), spec.instance_count),
            ("m5.xlarge", 1)
        );
        let err = serde_json::from_value::<ClusterSpec>(
            json!({"release_label": "emr-7.5.0", "instance_typ": "x"}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("instance_typ"), "{err}");
    }
}
