//! `[logs] remote`: copies of try logs in an object store (S3), so that a server on another
//! host than the worker that ran a try shows its log, live and finished.
//!
//! The local file stays the try's log; this module copies it. While a try runs, every
//! [`RemoteLogs::every`] the lines written since the last copy go up as one *part*, named by
//! the offset it starts at (`KEY.parts/00000000000000000000`); when the try ends, the whole file
//! goes up under the log's own key and the parts are deleted. A reader takes the whole object
//! when there is one, else the parts in offset order, so offsets mean the same bytes everywhere
//! (the local file's) and the API's `next_offset` works across hosts.
//!
//! A copy that fails never fails the try: it is retried a few times, then logged; the local file
//! still has every line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;

use super::{Chunk, ReadError, whole_lines};

/// An object store that holds logs under string keys (`/`-separated, relative to the
/// configured prefix).
#[async_trait::async_trait]
pub trait LogArchive: Send + Sync {
    /// Stores `bytes` under `key`, replacing what was there.
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), ArchiveError>;
    /// The object under `key`; None when there is none.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ArchiveError>;
    /// The objects under the folder `prefix`, in any order.
    async fn list(&self, prefix: &str) -> Result<Vec<Archived>, ArchiveError>;
    /// Deletes `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), ArchiveError>;
}

/// One object of a listing: its key (relative to the archive's prefix) and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    pub key: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {key} in the remote log store")]
pub struct ArchiveError {
    pub action: &'static str,
    pub key: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The remote log store of `[logs] remote` and how often running tries' lines are copied.
#[derive(Clone)]
pub struct RemoteLogs {
    pub archive: Arc<dyn LogArchive>,
    pub every: Duration,
}

impl std::fmt::Debug for RemoteLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteLogs")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

fn parts_folder(key: &str) -> String {
    format!("{key}.parts")
}

fn part_key(key: &str, offset: u64) -> String {
    format!("{key}.parts/{offset:020}")
}

/// Reads up to `limit` bytes of the remote copy of the log `key` from `offset`, cut like a local
/// read (see [`super::read_chunk`]); None when nothing of it was copied (yet).
pub async fn read_remote(
    archive: &dyn LogArchive,
    key: &str,
    offset: u64,
    limit: u64,
    ended: bool,
) -> Result<Option<Chunk>, ReadError> {
    let (bytes, len) = match archive.get(key).await? {
        Some(whole) => {
            let len = whole.len() as u64;
            if offset > len {
                return Err(ReadError::PastEnd { offset, len });
            }
            let end = offset.saturating_add(limit).min(len);
            (whole[offset as usize..end as usize].to_vec(), len)
        }
        None => match from_parts(archive, key, offset, limit).await? {
            Some(read) => read,
            None => return Ok(None),
        },
    };
    Ok(Some(whole_lines(bytes, offset, len, limit, ended)))
}

/// The bytes `offset..offset + limit` of a log copied in parts, and the length of its parts
/// from 0 without a gap; None when it has no parts.
async fn from_parts(
    archive: &dyn LogArchive,
    key: &str,
    offset: u64,
    limit: u64,
) -> Result<Option<(Vec<u8>, u64)>, ReadError> {
    let mut parts: Vec<(u64, Archived)> = archive
        .list(&parts_folder(key))
        .await?
        .into_iter()
        .filter_map(|a| Some((a.key.rsplit('/').next()?.parse().ok()?, a)))
        .collect();
    if parts.is_empty() {
        return Ok(None);
    }
    parts.sort_by_key(|(at, _)| *at);
    // Parts are written in order, each from where the last ended; a gap (a part that failed to
    // go up) ends what can be read.
    let mut len = 0;
    let mut wanted = Vec::new();
    for (at, part) in parts {
        if at != len {
            break;
        }
        len += part.size;
        if len > offset && at < offset.saturating_add(limit) {
            wanted.push((at, part));
        }
    }
    if offset > len {
        return Err(ReadError::PastEnd { offset, len });
    }
    let mut bytes = Vec::new();
    for (at, part) in wanted {
        // A part deleted since the listing: the whole log is up by now; the next read gets it.
        let Some(data) = archive.get(&part.key).await? else {
            break;
        };
        let from = offset.saturating_sub(at) as usize;
        bytes.extend_from_slice(data.get(from..).unwrap_or_default());
    }
    bytes.truncate(limit as usize);
    Ok(Some((bytes, len)))
}

/// The copying of one running try's log: started with the try, finished when it has written
/// its last line (before its end is recorded, so a reader that sees the try ended finds the
/// whole log).
pub(crate) struct Shipping {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Shipper>,
}

struct Shipper {
    archive: Arc<dyn LogArchive>,
    key: String,
    path: PathBuf,
    /// Bytes of the file copied so far, as parts.
    shipped: u64,
}

impl Shipping {
    pub(crate) fn start(remote: &RemoteLogs, key: String, path: PathBuf) -> Shipping {
        let stop = CancellationToken::new();
        let mut shipper = Shipper {
            archive: remote.archive.clone(),
            key,
            path,
            shipped: 0,
        };
        let every = remote.every;
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => break,
                    _ = tick.tick() => shipper.ship_new().await,
                }
            }
            shipper
        });
        Shipping { stop, task }
    }

    /// Copies the whole log when the try `written` one, then deletes its parts.
    pub(crate) async fn finish(self, written: bool) {
        self.stop.cancel();
        let Ok(shipper) = self.task.await else {
            return;
        };
        if written {
            shipper.ship_whole().await;
        }
    }
}

impl Shipper {
    /// Copies the whole lines written since the last part as a new part.
    async fn ship_new(&mut self) {
        let Some(bytes) = read_from(&self.path, self.shipped) else {
            return;
        };
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let mut bytes = bytes;
        bytes.truncate(end + 1);
        let n = bytes.len() as u64;
        let key = part_key(&self.key, self.shipped);
        if put_with_retries(self.archive.as_ref(), &key, bytes).await {
            self.shipped += n;
        }
    }

    async fn ship_whole(&self) {
        let Some(bytes) = read_from(&self.path, 0) else {
            return;
        };
        if !put_with_retries(self.archive.as_ref(), &self.key, bytes).await || self.shipped == 0 {
            return;
        }
        let parts = match self.archive.list(&parts_folder(&self.key)).await {
            Ok(p) => p,
            Err(e) => return tracing::warn!(error = %e, "remote log parts stay behind"),
        };
        for part in parts {
            if let Err(e) = self.archive.delete(&part.key).await {
                tracing::warn!(error = %e, "a remote log part stays behind");
            }
        }
    }
}

/// The file's bytes from `offset`; None when there is no file or nothing new.
fn read_from(path: &std::path::Path, offset: u64) -> Option<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(path).ok()?;
    file.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    (!bytes.is_empty()).then_some(bytes)
}

/// Puts with a few retries (an S3 hiccup should not cost a part); false, logged, when it
/// could not.
async fn put_with_retries(archive: &dyn LogArchive, key: &str, bytes: Vec<u8>) -> bool {
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(4);
    let result = (|| archive.put(key, bytes.clone())).retry(backoff).await;
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "a try's log was not copied to the remote log store");
            false
        }
    }
}

#[cfg(test)]
mod tests;
