//! `s3_put`, `s3_copy`, `s3_delete`: objects in S3 (or an S3-compatible store), through the AWS
//! SDK with the task's `connection`.
//!
//! A URL ending in `/` is a prefix and the operator acts on every object under it; otherwise it
//! is one object. Each operator's output is `{"objects", "bytes"}`: how many objects it wrote (or
//! deleted) and their total size.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tracing::Instrument;

use crate::connections::{Aws, Connections};
use crate::error::fatal;

/// An `s3://bucket/key` URL; `key` ends in `/` for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, OperatorError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| fatal(format!("`{url}` is not an s3:// URL")))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(fatal(format!(
                "`{url}` names no bucket (expected s3://BUCKET/KEY)"
            )));
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    pub fn is_prefix(&self) -> bool {
        self.key.is_empty() || self.key.ends_with('/')
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// The SDK configuration for the connection: its region, endpoint and keys, with the standard
/// AWS chain filling in whatever it leaves out. S3 and EMR clients are built from it.
pub async fn sdk_config(aws: &Aws) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &aws.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &aws.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id,
            secret,
            aws.session_token.clone(),
            None,
            "flow.toml",
        ));
    }
    loader.load().await
}

/// An S3 client for the connection (see [`sdk_config`]), with its path style.
pub async fn client(aws: &Aws) -> Client {
    let shared = sdk_config(aws).await;
    let mut conf =
        aws_sdk_s3::config::Builder::from(&shared).force_path_style(aws.force_path_style);
    if let Some(url) = &aws.s3_endpoint_url {
        conf = conf.endpoint_url(url);
    }
    let conf = conf.build();
    Client::from_conf(conf)
}

/// An SDK error (S3 or EMR), with the service's own message when it gave one. Throttling,
/// timeouts and 5xx answers are worth a retry; an access or a missing-bucket error is not.
pub fn sdk_error<E, R>(what: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> OperatorError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    let retryable = match &e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(s) => {
            let code = s.err().code().unwrap_or_default();
            matches!(
                code,
                "SlowDown"
                    | "InternalError"
                    | "ServiceUnavailable"
                    | "RequestTimeout"
                    | "ThrottlingException"
                    | "InternalServerError"
                    | "InternalServerException"
            )
        }
        _ => false,
    };
    let detail = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            )
        }
        other => aws_sdk_s3::error::DisplayErrorContext(other).to_string(),
    };
    let msg = format!("{what}: {detail}");
    if retryable {
        OperatorError::Retryable(msg)
    } else {
        OperatorError::Fatal(msg)
    }
}

/// The span of one S3 call (`s3.put`, `s3.copy`, `s3.delete`, `s3.head`, `s3.list`): the
/// bucket only, since keys are built from params and data.
pub fn s3_span(call: &'static str, bucket: &str) -> tracing::Span {
    tracing::info_span!("s3", otel.name = call, bucket = bucket)
}

/// Every (key, size) under `url`'s prefix, or the one object it names (none if it is missing).
pub async fn objects(client: &Client, url: &S3Url) -> Result<Vec<(String, u64)>, OperatorError> {
    if !url.is_prefix() {
        return match client
            .head_object()
            .bucket(&url.bucket)
            .key(&url.key)
            .send()
            .instrument(s3_span("s3.head", &url.bucket))
            .await
        {
            Ok(h) => Ok(vec![(
                url.key.clone(),
                h.content_length().unwrap_or(0).max(0) as u64,
            )]),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(Vec::new()),
            Err(e) => Err(sdk_error(&format!("head {url}"), e)),
        };
    }
    let mut out = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(&url.bucket)
        .prefix(&url.key)
        .into_paginator()
        .send();
    let span = s3_span("s3.list", &url.bucket);
    while let Some(page) = pages.next().instrument(span.clone()).await {
        let page = page.map_err(|e| sdk_error(&format!("list {url}"), e))?;
        for o in page.contents() {
            if let Some(key) = o.key() {
                out.push((key.to_string(), o.size().unwrap_or(0).max(0) as u64));
            }
        }
    }
    Ok(out)
}

/// `s3_put`: uploads a local file (or every file under a local folder ending in `/`).
pub struct S3Put {
    connections: Arc<Connections>,
}

/// `s3_copy`: copies an object, or every object under a prefix, inside S3.
pub struct S3Copy {
    connections: Arc<Connections>,
}

/// `s3_delete`: deletes an object, or every object under a prefix. Deleting nothing succeeds.
pub struct S3Delete {
    connections: Arc<Connections>,
}

impl S3Put {
    pub fn new(connections: Arc<Connections>) -> S3Put {
        S3Put { connections }
    }
}

impl S3Copy {
    pub fn new(connections: Arc<Connections>) -> S3Copy {
        S3Copy { connections }
    }
}

impl S3Delete {
    pub fn new(connections: Arc<Connections>) -> S3Delete {
        S3Delete { connections }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutConfig {
    file: String,
    to: String,
    connection: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyConfig {
    from: String,
    to: String,
    connection: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteConfig {
    url: String,
    connection: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(op: &str, config: &Json) -> Result<T, OperatorError> {
    serde_json::from_value(config.clone()).map_err(|e| fatal(format!("{op}: {e}")))
}

/// The local files to upload, each with the key suffix it goes under.
fn local_files(file: &str, dag_folder: &Path) -> Result<Vec<(PathBuf, String)>, OperatorError> {
    let path = dag_folder.join(file);
    if !file.ends_with('/') {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(vec![(path, name)]),
            Ok(_) => Err(fatal(format!(
                "`{file}` is a folder; end it with / to upload every file in it"
            ))),
            Err(e) => Err(OperatorError::Retryable(format!(
                "cannot read `{file}`: {e}"
            ))),
        };
    }
    let mut out = Vec::new();
    let mut stack = vec![path.clone()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| OperatorError::Retryable(format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| OperatorError::Retryable(e.to_string()))?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(&path)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((p, rel));
            }
        }
    }
    out.sort();
    Ok(out)
}

#[async_trait]
impl Operator for S3Put {
    fn name(&self) -> &'static str {
        "s3_put"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["file", "to"],
            optional: &["connection"],
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: PutConfig = parse("s3_put", config)?;
        let to = S3Url::parse(&cfg.to)?;
        let files = local_files(&cfg.file, &ctx.dag_folder)?;
        if files.len() != 1 && !to.is_prefix() {
            return Err(fatal(format!(
                "s3_put: `{}` holds {} files, so `to` must be a prefix ending in /",
                cfg.file,
                files.len()
            )));
        }
        let client = client(
            &self
                .connections
                .aws(cfg.connection.as_deref(), &ctx.secrets)?,
        )
        .await;
        let mut bytes = 0u64;
        for (path, rel) in &files {
            let key = if to.is_prefix() {
                format!("{}{rel}", to.key)
            } else {
                to.key.clone()
            };
            let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            let body = ByteStream::from_path(path).await.map_err(|e| {
                OperatorError::Retryable(format!("cannot read {}: {e}", path.display()))
            })?;
            client
                .put_object()
                .bucket(&to.bucket)
                .key(&key)
                .body(body)
                .send()
                .instrument(s3_span("s3.put", &to.bucket))
                .await
                .map_err(|e| sdk_error(&format!("put s3://{}/{key}", to.bucket), e))?;
            bytes += size;
            ctx.log
                .line(&format!(
                    "s3_put: {} -> s3://{}/{key} ({size} bytes)",
                    path.display(),
                    to.bucket
                ))
                .await;
        }
        Ok(Some(json!({ "objects": files.len(), "bytes": bytes })))
    }
}

#[async_trait]
impl Operator for S3Copy {
    fn name(&self) -> &'static str {
        "s3_copy"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["from", "to"],
            optional: &["connection"],
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: CopyConfig = parse("s3_copy", config)?;
        let from = S3Url::parse(&cfg.from)?;
        let to = S3Url::parse(&cfg.to)?;
        if from.is_prefix() && !to.is_prefix() {
            return Err(fatal(
                "s3_copy: `from` is a prefix, so `to` must be a prefix ending in / too",
            ));
        }
        let client = client(
            &self
                .connections
                .aws(cfg.connection.as_deref(), &ctx.secrets)?,
        )
        .await;
        let sources = objects(&client, &from).await?;
        if sources.is_empty() {
            return Err(OperatorError::Retryable(format!(
                "s3_copy: nothing at {from}"
            )));
        }
        let mut bytes = 0;
        for (key, size) in &sources {
            let dest = if to.is_prefix() {
                let rel = if from.is_prefix() {
                    &key[from.key.len()..]
                } else {
                    key.rsplit('/').next().unwrap_or(key)
                };
                format!("{}{rel}", to.key)
            } else {
                to.key.clone()
            };
            let source = format!("{}/{}", from.bucket, percent_encode_key(key));
            client
                .copy_object()
                .copy_source(source)
                .bucket(&to.bucket)
                .key(&dest)
                .send()
                .instrument(s3_span("s3.copy", &to.bucket))
                .await
                .map_err(|e| sdk_error(&format!("copy s3://{}/{key}", from.bucket), e))?;
            bytes += size;
        }
        ctx.log
            .line(&format!(
                "s3_copy: {} objects ({bytes} bytes) from {from} to {to}",
                sources.len()
            ))
            .await;
        Ok(Some(json!({ "objects": sources.len(), "bytes": bytes })))
    }
}

/// A key as `x-amz-copy-source` wants it: URL-encoded, with its slashes kept.
fn percent_encode_key(key: &str) -> String {
    key.split('/')
        .map(|part| url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>())
        .collect::<Vec<_>>()
        .join("/")
        .replace('+', "%20")
}

#[async_trait]
impl Operator for S3Delete {
    fn name(&self) -> &'static str {
        "s3_delete"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["url"],
            optional: &["connection"],
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        }
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: DeleteConfig = parse("s3_delete", config)?;
        let url = S3Url::parse(&cfg.url)?;
        let client = client(
            &self
                .connections
                .aws(cfg.connection.as_deref(), &ctx.secrets)?,
        )
        .await;
        let (count, bytes) = delete_under(&client, &url).await?;
        ctx.log
            .line(&format!(
                "s3_delete: {count} objects ({bytes} bytes) under {url}"
            ))
            .await;
        Ok(Some(json!({ "objects": count, "bytes": bytes })))
    }
}

/// Deletes every object under `url` (or the one object it names), a thousand per request;
/// answers how many objects and bytes went.
pub async fn delete_under(client: &Client, url: &S3Url) -> Result<(usize, u64), OperatorError> {
    let found = objects(client, url).await?;
    let bytes: u64 = found.iter().map(|(_, s)| s).sum();
    for chunk in found.chunks(1000) {
        let ids = chunk
            .iter()
            .map(|(k, _)| ObjectIdentifier::builder().key(k).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fatal(format!("deleting under {url}: {e}")))?;
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| fatal(format!("deleting under {url}: {e}")))?;
        let out = client
            .delete_objects()
            .bucket(&url.bucket)
            .delete(delete)
            .send()
            .instrument(s3_span("s3.delete", &url.bucket))
            .await
            .map_err(|e| sdk_error(&format!("delete under {url}"), e))?;
        if let Some(err) = out.errors().first() {
            return Err(OperatorError::Retryable(format!(
                "deleting s3://{}/{}: {}",
                url.bucket,
                err.key().unwrap_or_default(),
                err.message().unwrap_or("not deleted")
            )));
        }
    }
    Ok((found.len(), bytes))
}

/// `s3_sensor`: waits until an object (or, for a URL ending in `/`, any object under a
/// prefix) exists. `mode: poke` holds its slot and polls inside one try; `mode: reschedule` polls
/// once per claim and gives the slot back in between. The task's `timeout` (default 7 days, as
/// Airflow's sensors) counts from the first poke, across reschedules, and fails the task without
/// retries when it passes.
pub struct S3Sensor {
    connections: Arc<Connections>,
}

impl S3Sensor {
    pub fn new(connections: Arc<Connections>) -> S3Sensor {
        S3Sensor { connections }
    }
}

/// Airflow's default for a sensor's timeout.
pub const SENSOR_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SensorConfig {
    url: String,
    connection: Option<String>,
    poke_interval: Option<String>,
    #[serde(default)]
    mode: SensorMode,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SensorMode {
    #[default]
    Poke,
    Reschedule,
}

#[async_trait]
impl Operator for S3Sensor {
    fn name(&self) -> &'static str {
        "s3_sensor"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["url"],
            optional: &["connection", "poke_interval", "mode"],
            code: &[],
            shell: &[],
            url: &[],
            program: &[],
        }
    }

    fn own_timeout(&self) -> bool {
        true
    }

    async fn execute(
        &self,
        config: &Json,
        ctx: &TaskContext,
    ) -> Result<Option<Json>, OperatorError> {
        let cfg: SensorConfig = parse("s3_sensor", config)?;
        let url = S3Url::parse(&cfg.url)?;
        let poke = match &cfg.poke_interval {
            None => std::time::Duration::from_secs(60),
            Some(s) => flow_engine::schedule::parse_duration(s)
                .map_err(|e| fatal(format!("s3_sensor: poke_interval: {e}")))?,
        };
        let timeout = ctx.timeout.unwrap_or(SENSOR_TIMEOUT);
        let deadline = ctx.first_started_at
            + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
        let client = client(
            &self
                .connections
                .aws(cfg.connection.as_deref(), &ctx.secrets)?,
        )
        .await;
        loop {
            let found = objects(&client, &url).await?;
            if !found.is_empty() {
                let bytes: u64 = found.iter().map(|(_, s)| s).sum();
                ctx.log
                    .line(&format!(
                        "s3_sensor: {url}: {} objects are there",
                        found.len()
                    ))
                    .await;
                return Ok(Some(json!({ "objects": found.len(), "bytes": bytes })));
            }
            let now = chrono::Utc::now();
            if now >= deadline {
                return Err(fatal(format!(
                    "s3_sensor: timed out after {} waiting for {url}",
                    flow_engine::time::as_written(timeout)
                )));
            }
            let next = (now + chrono::Duration::from_std(poke).unwrap_or(chrono::Duration::MAX))
                .min(deadline);
            ctx.log
                .line(&format!("s3_sensor: {url}: nothing yet"))
                .await;
            match cfg.mode {
                SensorMode::Reschedule => return Err(OperatorError::Reschedule(next)),
                SensorMode::Poke => {
                    let wait = (next - now).to_std().unwrap_or_default();
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_copy_sources() {
        let u = S3Url::parse("s3://lake/a/b.csv").unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str(), u.is_prefix()),
            ("lake", "a/b.csv", false)
        );
        assert!(S3Url::parse("s3://lake/a/").unwrap().is_prefix());
        assert!(S3Url::parse("s3://lake").unwrap().is_prefix());
        assert!(S3Url::parse("/tmp/x").is_err());
        assert!(S3Url::parse("s3:///x").is_err());
        assert_eq!(
            percent_encode_key("ds=2026-01-01/a b+c.csv"),
            "ds%3D2026-01-01/a%20b%2Bc.csv"
        );
    }
}
