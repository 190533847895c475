//! A try's log: where it lives under `$FLOW_HOME`, its first and last lines, and the writer
//! that masks every line before it reaches disk. The executor writes logs through [`LogSink`];
//! the readers (the CLI, the API, the pages) find them with [`log_path`] and tell a log that
//! was never written from the try's record with [`from_record`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::secrets::Masker;
use crate::state::UNMAPPED;

mod remote;
pub(crate) use remote::Shipping;
pub use remote::{ArchiveError, Archived, LogArchive, RemoteLogs, read_remote};

/// Where the log of one try lives under `$FLOW_HOME`: `logs/` and its [`log_key`].
pub fn log_path(
    home: &Path,
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
    try_number: i64,
) -> PathBuf {
    home.join("logs")
        .join(log_key(dag_id, run_id, task_id, map_index, try_number))
}

/// The name of one try's log, the same under `$FLOW_HOME/logs` and under `[logs] remote`.
pub fn log_key(
    dag_id: &str,
    run_id: &str,
    task_id: &str,
    map_index: i64,
    try_number: i64,
) -> String {
    let folder = format!("dag_id={dag_id}/run_id={run_id}/task_id={task_id}");
    // Mapped tries share their task's folder: a folder per map index made creating the logs of
    // a 10,000-item map cost more than running its tasks.
    if map_index == UNMAPPED {
        format!("{folder}/attempt={try_number}.log")
    } else {
        format!("{folder}/map_index={map_index}.attempt={try_number}.log")
    }
}

/// The first line of every try's log. The readers of logs build it again from the try's
/// record when a try left no file (see [`LogSink`]), so both must come from here.
pub(crate) fn log_header(
    task_id: &str,
    try_number: i64,
    run_id: &str,
    started_at: chrono::DateTime<chrono::Utc>,
    trace_id: &str,
) -> String {
    format!(
        "flow: task {task_id} try {try_number} of run {run_id} started at {}, trace {trace_id}",
        crate::time::rfc3339(started_at)
    )
}

/// The last line of the log of a try that succeeded.
pub(crate) const LOG_SUCCEEDED: &str = "flow: try succeeded";

/// A try's log file. Every line is masked before it is written, so a secret never reaches disk.
///
/// The file is created with the first line the task writes, headed by [`log_header`]: a try that
/// prints nothing and succeeds leaves no file, and its log (header and [`LOG_SUCCEEDED`]) is
/// told from its record. Creating a file is by far the dearest part of a short try's log on
/// ext4 (an inode, a directory entry), and a 10,000-item map of quiet tasks made 10,000 of them.
///
/// Writes are plain blocking appends: they land in the page cache in microseconds, while handing
/// each one to tokio's blocking pool (as `tokio::fs` does) cost more than the write, several times
/// per try.
#[derive(Clone)]
pub struct LogSink {
    file: Arc<std::sync::Mutex<LazyFile>>,
    masker: Masker,
}

struct LazyFile {
    path: PathBuf,
    header: String,
    file: Option<std::fs::File>,
}

impl LazyFile {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            // Logs hold what tasks print: their owner's alone, like the database.
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)?;
            f.write_all(self.header.as_bytes())?;
            self.file = Some(f);
        }
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Ok(()),
        }
    }
}

impl LogSink {
    /// Makes the log's folder (so that an unwritable home fails the try before it starts) but
    /// not its file.
    pub async fn create(
        path: &std::path::Path,
        header: &str,
        masker: Masker,
    ) -> std::io::Result<LogSink> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut header = masker.mask(header);
        header.push('\n');
        Ok(LogSink {
            file: Arc::new(std::sync::Mutex::new(LazyFile {
                path: path.to_path_buf(),
                header,
                file: None,
            })),
            masker,
        })
    }

    /// Writes one line (a trailing newline is added when missing). The file is unbuffered, so
    /// the line is in the file when this returns.
    pub async fn line(&self, text: &str) {
        let mut masked = self.masker.mask(text);
        if !masked.ends_with('\n') {
            masked.push('\n');
        }
        // A log that cannot be written must not fail the task; the error goes to our own log.
        let result = match self.file.lock() {
            Ok(mut f) => f.write(masked.as_bytes()),
            Err(_) => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!("cannot write task log: {e}");
        }
    }

    /// Whether the file exists: something was written.
    pub fn written(&self) -> bool {
        self.file.lock().map(|f| f.file.is_some()).unwrap_or(true)
    }
}

/// The log of a try that left no file (it printed nothing), told from its record: the header,
/// and the success line once it succeeded.
pub fn from_record(
    task_id: &str,
    try_number: i64,
    run_id: &str,
    started_at: chrono::DateTime<chrono::Utc>,
    trace_id: &str,
    succeeded: bool,
) -> String {
    let mut text = log_header(task_id, try_number, run_id, started_at, trace_id);
    text.push('\n');
    if succeeded {
        text.push_str(LOG_SUCCEEDED);
        text.push('\n');
    }
    text
}

/// Raw bytes of a log file, read from an offset (see [`read_chunk`]).
#[derive(Debug)]
pub struct Chunk {
    pub bytes: Vec<u8>,
    /// The offset after `bytes`.
    pub next_offset: u64,
    /// The file's length when it was read.
    pub len: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("offset {offset} is past the end of the log ({len} bytes so far)")]
    PastEnd { offset: u64, len: u64 },
    #[error(transparent)]
    Remote(#[from] ArchiveError),
}

/// Reads up to `limit` bytes of the log at `path` from `offset`; None when there is no file
/// (yet). Unless the try has `ended` and the read reaches the end, the chunk stops after the
/// last whole line, so that a line still being written is read whole next time; a single line
/// longer than `limit` comes in pieces rather than never.
pub async fn read_chunk(
    path: &Path,
    offset: u64,
    limit: u64,
    ended: bool,
) -> Result<Option<Chunk>, ReadError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let io = |source: std::io::Error| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().await.map_err(io)?.len();
    if offset > len {
        return Err(ReadError::PastEnd { offset, len });
    }
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(io)?;
    let want = (len - offset).min(limit);
    let mut bytes = Vec::with_capacity(want as usize);
    (&mut file)
        .take(want)
        .read_to_end(&mut bytes)
        .await
        .map_err(io)?;
    Ok(Some(whole_lines(bytes, offset, len, limit, ended)))
}

/// The chunk of `bytes` (read from `offset` of a log `len` bytes long, at most `limit` of them)
/// that a reader gets: up to the last whole line, unless the try has `ended` and the read
/// reaches the end.
pub(crate) fn whole_lines(
    mut bytes: Vec<u8>,
    offset: u64,
    len: u64,
    limit: u64,
    ended: bool,
) -> Chunk {
    let at_end = offset + bytes.len() as u64 >= len;
    if !(ended && at_end) {
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => bytes.truncate(i + 1),
            None if bytes.len() as u64 == limit => {}
            None => bytes.clear(),
        }
    }
    Chunk {
        next_offset: offset + bytes.len() as u64,
        bytes,
        len,
    }
}
