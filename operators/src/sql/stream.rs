//! A query's rows as a stream of batches, and a stream of batches written to an `output:`: the
//! two ends of an operator that turns rows into rows batch by batch (`predict`), so that it holds
//! a few batches in memory whatever the size of its input. Both run on DataFusion's runtime;
//! the channels between them carry at most [`IN_FLIGHT`] batches each.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use flow_engine::operator::{OperatorError, TaskContext};
use futures::StreamExt;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{AbortOnDrop, cpu_runtime, read_job, run_error, write_table};
use crate::connections::Connections;
use crate::error::fatal;

/// Batches a channel between two stages holds at most.
pub const IN_FLIGHT: usize = 4;

/// Batches as they come, or the error that ended them.
pub type Batches = mpsc::Receiver<Result<RecordBatch, OperatorError>>;

/// A query being read: its schema, and its batches as DataFusion makes them. Dropping it stops
/// the read.
pub struct Reading {
    pub schema: SchemaRef,
    pub batches: Batches,
    _read: AbortOnDrop,
}

/// Starts reading `query` over `sources` (as [`super::read`] takes them) and answers once the
/// query is planned: a bad query or source is an error here, not in the stream.
pub async fn read_stream(
    sources: &[(&str, &Json)],
    query: &str,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Reading, OperatorError> {
    let job = read_job(sources, query, ctx, conns)?;
    let log = ctx.log.clone();
    let (tx, mut rx) = mpsc::channel(IN_FLIGHT);
    let (planned, schema) = tokio::sync::oneshot::channel();
    let work = async move {
        let sent = async {
            let df = job.dataframe(&log).await?;
            let schema = Arc::new(df.schema().as_arrow().clone());
            let mut stream = df
                .execute_stream()
                .await
                .map_err(|e| run_error(&e, &job.query))?;
            if planned.send(schema).is_err() {
                return Ok(());
            }
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| run_error(&e, &job.query))?;
                if tx.send(Ok(batch)).await.is_err() {
                    return Ok(());
                }
            }
            Ok::<(), OperatorError>(())
        }
        .await;
        if let Err(e) = sent {
            let _ = tx.send(Err(e)).await;
        }
    };
    let handle = cpu_runtime()?.spawn(work.in_current_span());
    let read = AbortOnDrop(handle.abort_handle());
    match schema.await {
        Ok(schema) => Ok(Reading {
            schema,
            batches: rx,
            _read: read,
        }),
        // Planning failed: the reason follows on the channel.
        Err(_) => Err(match rx.recv().await {
            Some(Err(e)) => e,
            _ => OperatorError::Retryable("the query stopped before it was planned".into()),
        }),
    }
}

/// Writes `batches` (of `schema`) to `output` as [`super::write`] does, as they come. An error
/// on the channel stops the write and is the answer.
pub async fn write_stream(
    schema: SchemaRef,
    batches: Batches,
    output: &Json,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Json, OperatorError> {
    let failure = Arc::new(Mutex::new(None));
    let source = Arc::new(ChannelPartition {
        schema: schema.clone(),
        batches: Mutex::new(Some(batches)),
        failure: failure.clone(),
    });
    let table = StreamingTable::try_new(schema, vec![source])
        .map_err(|e| fatal(format!("DataFusion: {e}")))?;
    let written = write_table(Arc::new(table), output, ctx, conns).await;
    let failed = failure.lock().ok().and_then(|mut f| f.take());
    match failed {
        Some(e) => Err(e),
        None => written,
    }
}

/// The one partition of the streaming table `result`: the batches of a channel, read once.
#[derive(Debug)]
struct ChannelPartition {
    schema: SchemaRef,
    batches: Mutex<Option<Batches>>,
    /// Why the batches stopped coming, for [`write_stream`] to answer with.
    failure: Arc<Mutex<Option<OperatorError>>>,
}

impl PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _: Arc<datafusion::execution::TaskContext>) -> SendableRecordBatchStream {
        let batches = self.batches.lock().ok().and_then(|mut b| b.take());
        let failure = self.failure.clone();
        let stream = futures::stream::unfold(
            (batches, failure, true),
            |(batches, failure, first)| async move {
                let Some(mut rx) = batches else {
                    // The plan reads its source once; a second read would be empty, not right.
                    return first.then(|| {
                        let e = DataFusionError::Execution("the rows were read already".into());
                        (Err(e), (None, failure, false))
                    });
                };
                match rx.recv().await {
                    None => None,
                    Some(Ok(batch)) => Some((Ok(batch), (Some(rx), failure, false))),
                    Some(Err(e)) => {
                        let said = DataFusionError::Execution(e.to_string());
                        if let Ok(mut f) = failure.lock() {
                            *f = Some(e);
                        }
                        Some((Err(said), (None, failure, false)))
                    }
                }
            },
        );
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}
