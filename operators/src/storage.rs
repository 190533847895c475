//! Where a task's data is: a local path (relative to the DAG file's folder), a glob, or an
//! `s3://` URL, and the file format it holds.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use flow_engine::operator::OperatorError;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;

use crate::connections::Aws;

/// A short name made of `bytes`' content (the first 8 bytes of its SHA-256, in hex), for
/// artifacts and staged files that a new version must never overwrite.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Parquet,
    Csv,
    Json,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Parquet => ".parquet",
            Format::Csv => ".csv",
            Format::Json => ".json",
        }
    }

    /// The format a file name's extension names, if any.
    pub fn from_name(name: &str) -> Option<Format> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "json" | "jsonl" | "ndjson" => Some(Format::Json),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.extension()[1..])
    }
}

/// A parsed `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An absolute local path (a file, a folder or a glob).
    Local(PathBuf),
    S3 {
        bucket: String,
        key: String,
    },
}

impl Location {
    pub fn parse(path: &str, dag_folder: &Path) -> Result<Location, OperatorError> {
        if let Some(rest) = path.strip_prefix("s3://") {
            let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(OperatorError::Fatal(format!(
                    "`{path}` names no bucket (expected s3://BUCKET/KEY)"
                )));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if path.contains("://") {
            return Err(OperatorError::Fatal(format!(
                "`{path}`: only local paths and s3:// URLs are supported"
            )));
        }
        if path.is_empty() {
            return Err(OperatorError::Fatal("a path is empty".into()));
        }
        let mut full = dag_folder.join(path).display().to_string();
        // `join` drops a trailing slash, and the slash is what says "folder".
        if path.ends_with('/') && !full.ends_with('/') {
            full.push('/');
        }
        Ok(Location::Local(PathBuf::from(full)))
    }

    pub fn is_folder(&self) -> bool {
        match self {
            Location::Local(p) => p.to_string_lossy().ends_with('/'),
            Location::S3 { key, .. } => key.is_empty() || key.ends_with('/'),
        }
    }

    pub fn is_glob(&self) -> bool {
        let s = match self {
            Location::Local(p) => p.to_string_lossy().into_owned(),
            Location::S3 { key, .. } => key.clone(),
        };
        s.contains(['*', '?', '['])
    }

    /// The URL DataFusion reads and writes it by.
    pub fn url(&self) -> String {
        match self {
            Location::Local(p) => p.display().to_string(),
            Location::S3 { bucket, key } => format!("s3://{bucket}/{key}"),
        }
    }

    /// The format named by the path's extension, if it has one.
    pub fn format_from_name(&self) -> Option<Format> {
        Format::from_name(&self.last_part())
    }

    /// The extension of the path's last part (`.csv`), if it has one.
    pub fn extension(&self) -> Option<String> {
        let last = self.last_part();
        last.rsplit_once('.').map(|(_, e)| format!(".{e}"))
    }

    fn last_part(&self) -> String {
        let s = self.url();
        s.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// The object store holding this location, and the location's path inside it.
    pub fn store(&self, aws: &Aws) -> Result<(Arc<dyn ObjectStore>, StorePath), OperatorError> {
        match self {
            Location::Local(p) => {
                let path = StorePath::from_filesystem_path(p.as_path())
                    .or_else(|_| StorePath::parse(p.to_string_lossy().trim_start_matches('/')))
                    .map_err(|e| OperatorError::Fatal(format!("`{}`: {e}", p.display())))?;
                Ok((Arc::new(LocalFileSystem::new()), path))
            }
            Location::S3 { bucket, key } => {
                let store = s3_store(bucket, aws)?;
                let path = StorePath::parse(key.trim_end_matches('/'))
                    .map_err(|e| OperatorError::Fatal(format!("`{}`: {e}", self.url())))?;
                Ok((store, path))
            }
        }
    }
}

/// An S3 client of `object_store` (the one DataFusion reads through) for one bucket.
pub fn s3_store(bucket: &str, aws: &Aws) -> Result<Arc<dyn ObjectStore>, OperatorError> {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(region) = &aws.region {
        b = b.with_region(region);
    }
    if let Some(endpoint) = aws.s3_endpoint_url.as_ref().or(aws.endpoint_url.as_ref()) {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    } else if env_endpoint().is_some_and(|e| e.starts_with("http://")) {
        // The standard AWS variables name an emulator (as docker-compose.yml does): plain
        // HTTP is what it speaks, and the variable is the operator's own choice.
        b = b.with_allow_http(true);
    }
    if aws.force_path_style {
        b = b.with_virtual_hosted_style_request(false);
    }
    if let (Some(id), Some(secret)) = (&aws.access_key_id, &aws.secret_access_key) {
        b = b.with_access_key_id(id).with_secret_access_key(secret);
        if let Some(token) = &aws.session_token {
            b = b.with_token(token);
        }
    }
    b.build()
        .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
        .map_err(|e| OperatorError::Fatal(format!("S3 bucket {bucket}: {e}")))
}

/// The S3 endpoint the standard AWS environment names, if any.
fn env_endpoint() -> Option<String> {
    std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok()
}

/// One object of a listing: its path in the store and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub path: StorePath,
    pub size: u64,
}

/// Every object under `prefix`; a missing local folder lists as empty.
pub async fn list(
    store: &dyn ObjectStore,
    prefix: &StorePath,
) -> Result<Vec<Object>, OperatorError> {
    let mut out: Vec<Object> = store
        .list(Some(prefix))
        .map_ok(|m| Object {
            path: m.location,
            size: m.size,
        })
        .try_collect()
        .await
        .or_else(|e| match e {
            object_store::Error::NotFound { .. } => Ok(Vec::new()),
            e => Err(OperatorError::Retryable(format!("listing {prefix}: {e}"))),
        })?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Deletes every object under `prefix` (for an output's `overwrite`).
pub async fn delete_all(
    store: &dyn ObjectStore,
    prefix: &StorePath,
) -> Result<usize, OperatorError> {
    let objects = list(store, prefix).await?;
    for o in &objects {
        store.delete(&o.path).await.or_else(|e| match e {
            object_store::Error::NotFound { .. } => Ok(()),
            e => Err(OperatorError::Retryable(format!(
                "deleting {}: {e}",
                o.path
            ))),
        })?;
    }
    Ok(objects.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_local_paths_globs_and_s3_urls() {
        let dag = Path::new("/dags/x");
        assert_eq!(
            Location::parse("data/e.parquet", dag).unwrap(),
            Location::Local("/dags/x/data/e.parquet".into())
        );
        let folder = Location::parse("out/ds=2026-01-01/", dag).unwrap();
        assert!(folder.is_folder());
        assert_eq!(folder.url(), "/dags/x/out/ds=2026-01-01/");
        assert!(Location::parse("data/*.csv", dag).unwrap().is_glob());
        let s3 = Location::parse("s3://lake/profiles/", dag).unwrap();
        assert_eq!(
            s3,
            Location::S3 {
                bucket: "lake".into(),
                key: "profiles/".into()
            }
        );
        assert!(s3.is_folder());
        assert!(Location::parse("s3:///x", dag).is_err());
        assert!(Location::parse("gs://b/x", dag).is_err());
        assert_eq!(
            Location::parse("data/*.csv", dag)
                .unwrap()
                .format_from_name(),
            Some(Format::Csv)
        );
        assert_eq!(
            Location::parse("data/", dag).unwrap().format_from_name(),
            None
        );
    }
}
