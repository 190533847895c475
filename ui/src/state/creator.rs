//! Group commit for triggers: the runs that concurrent requests create while one transaction
//! commits go together into the next. On SQLite every write transaction waits for the one
//! before it and for its own fsync, so fifty clients triggering at once would otherwise queue
//! for fifty commits.

use std::sync::Arc;

use backon::Retryable;
use flow_engine::store::group_commit::transient_backoff;
use flow_engine::store::{Created, RunCreate, Store};
use tokio::sync::{mpsc, oneshot};

type Job = (RunCreate, oneshot::Sender<Result<Created, String>>);

/// At most this many runs go into one transaction, so that one burst cannot hold the
/// database's write lock for long.
const MAX_BATCH: usize = 256;

#[derive(Clone)]
pub struct RunCreator {
    tx: mpsc::UnboundedSender<Job>,
}

impl RunCreator {
    /// Starts the writer task; it ends when the last `RunCreator` is dropped.
    pub fn start(store: Arc<dyn Store>) -> RunCreator {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let (batch, replies): (Vec<RunCreate>, Vec<_>) = jobs.into_iter().unzip();
                // A deadlock or serialization failure aborts the whole batch, which is then
                // safe to apply again.
                let result = (|| async { store.create_runs(&batch).await })
                    .retry(transient_backoff())
                    .when(|e| e.is_transient())
                    .await;
                match result {
                    Ok(created) => {
                        for (reply, c) in replies.into_iter().zip(created) {
                            let _ = reply.send(Ok(c));
                        }
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(msg.clone()));
                        }
                    }
                }
            }
        });
        RunCreator { tx }
    }

    pub async fn create(&self, c: RunCreate) -> Result<Created, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((c, reply))
            .map_err(|_| "the run writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the run writer has stopped".to_string())?
    }
}
