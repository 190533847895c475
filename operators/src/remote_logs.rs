//! `[logs] remote = "s3://BUCKET/PREFIX"`: the S3 side of the engine's remote logs
//! ([`flow_engine::log::LogArchive`]), on the same `object_store` client as the data steps.

use std::sync::Arc;

use flow_engine::log::{ArchiveError, Archived, LogArchive};
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::connections::Aws;
use crate::storage::s3_store;

/// Logs under one S3 prefix.
pub struct S3Logs {
    store: Arc<dyn ObjectStore>,
    /// The prefix, without slashes at either end; may be empty.
    prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteUrlError {
    #[error("[logs] remote = \"{0}\": expected s3://BUCKET or s3://BUCKET/PREFIX")]
    NotS3(String),
    #[error("[logs] remote = \"{url}\": {source}")]
    Client {
        url: String,
        #[source]
        source: flow_engine::operator::OperatorError,
    },
}

impl S3Logs {
    /// The store of `url` (`s3://BUCKET/PREFIX`), reached with `aws` (a connection of
    /// flow.toml, or the standard AWS environment when it is the default).
    pub fn new(url: &str, aws: &Aws) -> Result<S3Logs, RemoteUrlError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| RemoteUrlError::NotS3(url.to_string()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        {
            return Err(RemoteUrlError::NotS3(url.to_string()));
        }
        let store = s3_store(bucket, aws).map_err(|source| RemoteUrlError::Client {
            url: url.to_string(),
            source,
        })?;
        Ok(S3Logs {
            store,
            prefix: prefix.trim_matches('/').to_string(),
        })
    }

    fn path(&self, action: &'static str, key: &str) -> Result<StorePath, ArchiveError> {
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        // Parsing refuses `..`, empty segments and control characters: a run id cannot reach
        // another key than its own.
        StorePath::parse(&full).map_err(|e| failed(action, key, e))
    }
}

fn failed(
    action: &'static str,
    key: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ArchiveError {
    ArchiveError {
        action,
        key: key.to_string(),
        source: Box::new(e),
    }
}

#[async_trait::async_trait]
impl LogArchive for S3Logs {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        let path = self.path("write", key)?;
        self.store
            .put(&path, bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| failed("write", key, e))
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        let path = self.path("read", key)?;
        let got = match self.store.get(&path).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(failed("read", key, e)),
        };
        let bytes = got.bytes().await.map_err(|e| failed("read", key, e))?;
        Ok(Some(bytes.to_vec()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Archived>, ArchiveError> {
        let path = self.path("list", prefix)?;
        let strip = match self.prefix.is_empty() {
            true => 0,
            false => self.prefix.len() + 1,
        };
        self.store
            .list(Some(&path))
            .map_ok(|m| Archived {
                key: m
                    .location
                    .as_ref()
                    .get(strip..)
                    .unwrap_or_default()
                    .to_string(),
                size: m.size,
            })
            .try_collect()
            .await
            .or_else(|e| match e {
                object_store::Error::NotFound { .. } => Ok(Vec::new()),
                e => Err(failed("list", prefix, e)),
            })
    }

    async fn delete(&self, key: &str) -> Result<(), ArchiveError> {
        let path = self.path("delete", key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(failed("delete", key, e)),
        }
    }
}
