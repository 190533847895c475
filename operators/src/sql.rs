//! `sql`: one SELECT over named sources, run by Apache DataFusion in the scheduler's machine.
//!
//! Values reach the query only as SQL parameters (`bind:` -> `$name`), typed by where the query
//! uses them, so a param can never change the query's text. Only a query runs: DDL, DML, COPY and
//! session statements are rejected before anything is read.
//!
//! DataFusion runs on a runtime of its own: its operators keep a thread busy for as long as a
//! batch takes, and on the scheduler's runtime that would delay every other task's claims and
//! records by as much.

mod bind;
mod error;
mod output;
mod source;
mod stream;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use flow_engine::log::LogSink;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use serde::Deserialize;
use serde_json::Value as Json;
use tracing::Instrument;

use self::bind::bind_values;
use self::error::run_error;
pub use self::error::sql_error;
use self::output::{Output, batches_to_json, write_output};
use self::source::{Source, bucket_of, register};
pub use self::stream::{Batches, IN_FLIGHT, Reading, read_stream, write_stream};
use crate::connections::{Aws, Connections};
use crate::error::fatal;
use crate::storage::{self, Format, Location};

/// The most rows a query without `output:` may return as the task's output.
pub const MAX_OUTPUT_ROWS: usize = 1000;

pub struct Sql {
    connections: Arc<Connections>,
}

impl Sql {
    pub fn new(connections: Arc<Connections>) -> Sql {
        Sql { connections }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    query: String,
    #[serde(default)]
    sources: BTreeMap<String, SourceSpec>,
    #[serde(default)]
    bind: serde_json::Map<String, Json>,
    output: Option<OutputSpec>,
    memory_limit: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceSpec {
    path: String,
    format: Option<Format>,
    connection: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputSpec {
    path: String,
    format: Option<Format>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    partition_by: Vec<String>,
    connection: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Overwrite,
    Append,
}

/// The runtime DataFusion's work runs on, one worker per core (see the module's note).
fn cpu_runtime() -> Result<&'static tokio::runtime::Runtime, OperatorError> {
    static RT: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
            .thread_name("flow-datafusion")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| OperatorError::Retryable(format!("cannot start DataFusion's runtime: {e}")))
}

/// Stops the query when the try's future is dropped (timeout, shutdown).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl Operator for Sql {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["query"],
            optional: &["sources", "bind", "output", "memory_limit"],
            code: &["query"],
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
        let cfg: Config =
            serde_json::from_value(config.clone()).map_err(|e| fatal(format!("sql: {e}")))?;
        let job = Job::resolve(cfg, ctx, &self.connections)?;
        let log = ctx.log.clone();
        on_cpu(job.run(log)).await.map(Some)
    }
}

/// Runs DataFusion work on its own runtime (see the module's note), stopped when the caller's
/// future is dropped.
async fn on_cpu<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, OperatorError>> + Send + 'static,
) -> Result<T, OperatorError> {
    // The work's spans stay children of the try's, across the runtimes.
    let handle = cpu_runtime()?.spawn(work.in_current_span());
    let _abort = AbortOnDrop(handle.abort_handle());
    match handle.await {
        Ok(result) => result,
        Err(e) => Err(OperatorError::Retryable(format!("the query stopped: {e}"))),
    }
}

/// Reads `query` over `sources` (name -> `{path, format?, connection?}`, as `sql` takes them),
/// for the operators that compute on data (`train`, `predict`, `drift`, `experiment`).
pub async fn read(
    sources: &[(&str, &Json)],
    query: &str,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<(datafusion::arrow::datatypes::SchemaRef, Vec<RecordBatch>), OperatorError> {
    let job = read_job(sources, query, ctx, conns)?;
    let log = ctx.log.clone();
    on_cpu(async move {
        let df = job.dataframe(&log).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let span = execute_span();
        let batches = df
            .collect()
            .instrument(span.clone())
            .await
            .map_err(|e| run_error(&e, &job.query))?;
        record_batches(&span, &batches);
        Ok((schema, batches))
    })
    .await
}

/// The job that reads `query` over `sources` (see [`read`]).
fn read_job(
    sources: &[(&str, &Json)],
    query: &str,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Job, OperatorError> {
    let mut specs = BTreeMap::new();
    for (name, spec) in sources {
        let spec: SourceSpec = serde_json::from_value((*spec).clone()).map_err(|e| {
            fatal(format!(
                "`{name}`: {e} (expected {{path, format, connection}})"
            ))
        })?;
        specs.insert(name.to_string(), spec);
    }
    let cfg = Config {
        query: query.to_string(),
        sources: specs,
        bind: Default::default(),
        output: None,
        memory_limit: None,
    };
    Job::resolve(cfg, ctx, conns)
}

/// Writes `batches` to `output` (an `output:` as `sql` takes it: path, format, mode,
/// partition_by, connection); returns what `sql` would: `{"rows", "path", "bytes", "columns"}`.
pub async fn write(
    schema: datafusion::arrow::datatypes::SchemaRef,
    batches: Vec<RecordBatch>,
    output: &Json,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Json, OperatorError> {
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
        .map_err(|e| fatal(format!("DataFusion: {e}")))?;
    write_table(Arc::new(table), output, ctx, conns).await
}

/// Writes the table `result` (what an operator computed) to `output`, as [`write`] does.
async fn write_table(
    table: Arc<dyn datafusion::catalog::TableProvider>,
    output: &Json,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Json, OperatorError> {
    let spec: OutputSpec = serde_json::from_value(output.clone()).map_err(|e| {
        fatal(format!(
            "`output`: {e} (expected {{path, format, mode, partition_by, connection}})"
        ))
    })?;
    let cfg = Config {
        query: "SELECT * FROM result".to_string(),
        sources: BTreeMap::new(),
        bind: Default::default(),
        output: Some(spec),
        memory_limit: None,
    };
    let mut job = Job::resolve(cfg, ctx, conns)?;
    job.tables.push(("result".to_string(), table));
    let log = ctx.log.clone();
    on_cpu(job.run(log)).await
}

/// The connection of every bucket a query names, noted as its sources and output are settled:
/// one bucket takes one connection in a query (DataFusion registers one store per bucket).
struct Buckets<'a> {
    conns: &'a Connections,
    ctx: &'a TaskContext,
    by_name: BTreeMap<String, Aws>,
}

impl Buckets<'_> {
    /// The connection `conn` names (the default when None), noted for the location's bucket.
    fn note(&mut self, loc: &Location, conn: Option<&str>) -> Result<Aws, OperatorError> {
        let aws = self.conns.aws(conn, &self.ctx.secrets)?;
        if let Location::S3 { bucket, .. } = loc {
            match self.by_name.get(bucket) {
                Some(prev) if prev != &aws => {
                    return Err(fatal(format!(
                        "bucket {bucket} is named with two different connections in one query"
                    )));
                }
                _ => {
                    self.by_name.insert(bucket.clone(), aws.clone());
                }
            }
        }
        Ok(aws)
    }
}

/// `memory_limit:` in bytes (`2GB`, say).
fn memory_limit(given: Option<&str>) -> Result<Option<usize>, OperatorError> {
    match given {
        None => Ok(None),
        Some(s) => Ok(Some(
            bytesize::ByteSize::from_str(s.trim())
                .map_err(|e| fatal(format!("memory_limit `{s}`: {e} (for example 2GB)")))?
                .as_u64() as usize,
        )),
    }
}

/// Everything a try needs, resolved from the task's keys before DataFusion starts.
struct Job {
    query: String,
    bind: serde_json::Map<String, Json>,
    sources: Vec<Source>,
    output: Option<Output>,
    memory_limit: Option<usize>,
    buckets: BTreeMap<String, Aws>,
    /// Tables in memory beside the sources (what an operator computed, to be written).
    tables: Vec<(String, Arc<dyn datafusion::catalog::TableProvider>)>,
}

impl Job {
    /// Settles the task's keys before DataFusion starts: the sources, the output, the memory
    /// limit, and the connection of every bucket they name.
    fn resolve(cfg: Config, ctx: &TaskContext, conns: &Connections) -> Result<Job, OperatorError> {
        let mut buckets = Buckets {
            conns,
            ctx,
            by_name: BTreeMap::new(),
        };
        let mut sources = Vec::new();
        for (name, spec) in cfg.sources {
            sources.push(Source::resolve(name, spec, ctx, &mut buckets)?);
        }
        let output = match cfg.output {
            None => None,
            Some(o) => Some(Output::resolve(o, ctx, &mut buckets)?),
        };
        let memory_limit = memory_limit(cfg.memory_limit.as_deref())?;
        Ok(Job {
            query: cfg.query,
            bind: cfg.bind,
            sources,
            output,
            memory_limit,
            buckets: buckets.by_name,
            tables: Vec::new(),
        })
    }

    async fn run(self, log: LogSink) -> Result<Json, OperatorError> {
        let started = Instant::now();
        let df = self.dataframe(&log).await?;
        let columns: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let span = execute_span();
        let result = match &self.output {
            None => {
                let batches = df
                    .limit(0, Some(MAX_OUTPUT_ROWS + 1))
                    .map_err(|e| fatal(sql_error(&e, &self.query)))?
                    .collect()
                    .instrument(span.clone())
                    .await
                    .map_err(|e| run_error(&e, &self.query))?;
                record_batches(&span, &batches);
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                if rows > MAX_OUTPUT_ROWS {
                    return Err(fatal(format!(
                        "the query returned more than {MAX_OUTPUT_ROWS} rows; give the task an \
                         `output:` to write them to a file"
                    )));
                }
                log.line(&format!("sql: {rows} rows in {:.2?}", started.elapsed()))
                    .await;
                batches_to_json(&batches)?
            }
            Some(out) => {
                let written = write_output(df, out, &self.query, columns, &log, started)
                    .instrument(span.clone())
                    .await?;
                span.record("rows", written["rows"].as_i64());
                span.record("bytes", written["bytes"].as_i64());
                written
            }
        };
        Ok(result)
    }

    /// The query, planned with its parameters bound, over the registered sources.
    async fn dataframe(&self, log: &LogSink) -> Result<DataFrame, OperatorError> {
        let span = tracing::info_span!("datafusion.plan", sources = self.sources.len() as i64);
        self.plan(log).instrument(span).await
    }

    async fn plan(&self, log: &LogSink) -> Result<DataFrame, OperatorError> {
        let mut config = SessionConfig::new();
        config.options_mut().sql_parser.collect_spans = true;
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = self.memory_limit {
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let runtime = runtime
            .build_arc()
            .map_err(|e| fatal(format!("DataFusion: {e}")))?;
        let df_ctx = SessionContext::new_with_config_rt(config, runtime);
        for (bucket, aws) in &self.buckets {
            let store = storage::s3_store(bucket, aws)?;
            let url = url::Url::parse(&format!("s3://{bucket}"))
                .map_err(|e| fatal(format!("bucket {bucket}: {e}")))?;
            df_ctx.register_object_store(&url, store);
        }
        for s in &self.sources {
            register(
                &df_ctx,
                s,
                self.buckets.get(bucket_of(&s.location)).cloned(),
            )
            .await?;
            log.line(&format!(
                "sql: source {} = {} ({})",
                s.name,
                s.given,
                s.format
                    .map_or("format from its files".to_string(), |f| f.to_string())
            ))
            .await;
        }
        for (name, table) in &self.tables {
            df_ctx
                .register_table(name.as_str(), table.clone())
                .map_err(|e| fatal(format!("DataFusion: {e}")))?;
        }

        let state = df_ctx.state();
        let plan = state
            .create_logical_plan(&self.query)
            .await
            .map_err(|e| fatal(sql_error(&e, &self.query)))?;
        let only_queries = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        if let Err(e) = only_queries.verify_plan(&plan) {
            return Err(fatal(format!(
                "the query must be one SELECT (DDL, DML, COPY and SET are rejected): {}",
                e.strip_backtrace()
            )));
        }
        let params = bind_values(&plan, &self.bind)?;
        let plan = plan
            .with_param_values(params)
            .map_err(|e| fatal(sql_error(&e, &self.query)))?;
        Ok(DataFrame::new(state, plan))
    }
}

/// What [`read_as_csv`] sends: the columns first, then CSV text (a header row, then rows).
pub enum Chunk {
    Columns(Vec<String>),
    Csv(Vec<u8>),
}

/// Streams a file (local, glob or `s3://`; parquet, csv or json) as CSV, read by DataFusion on
/// its own runtime: a loader (the `warehouse` operator) sends the chunks on as they come, so a
/// large file never sits in memory whole. Dropping the guard stops the read.
pub fn read_as_csv(
    path: &str,
    format: Option<Format>,
    connection: Option<String>,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<
    (
        impl Drop + Send,
        tokio::sync::mpsc::Receiver<Result<Chunk, OperatorError>>,
    ),
    OperatorError,
> {
    let cfg = Config {
        query: "SELECT * FROM load".into(),
        sources: BTreeMap::from([(
            "load".to_string(),
            SourceSpec {
                path: path.to_string(),
                format,
                connection,
            },
        )]),
        bind: serde_json::Map::new(),
        output: None,
        memory_limit: None,
    };
    let job = Job::resolve(cfg, ctx, conns)?;
    let log = ctx.log.clone();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let handle = cpu_runtime()?.spawn(
        async move {
            let sent = async {
                use futures::StreamExt;
                let df = job.dataframe(&log).await?;
                let columns = df
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                if tx.send(Ok(Chunk::Columns(columns))).await.is_err() {
                    return Ok(());
                }
                let mut stream = df
                    .execute_stream()
                    .await
                    .map_err(|e| run_error(&e, &job.query))?;
                let mut header = true;
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(|e| run_error(&e, &job.query))?;
                    let mut buf = Vec::new();
                    {
                        let mut w = arrow_csv::WriterBuilder::new()
                            .with_header(header)
                            .build(&mut buf);
                        w.write(&batch).map_err(|e| {
                            fatal(format!("turning {} into CSV: {e}", path_of(&job)))
                        })?;
                    }
                    header = false;
                    if tx.send(Ok(Chunk::Csv(buf))).await.is_err() {
                        return Ok(());
                    }
                }
                Ok::<(), OperatorError>(())
            }
            .await;
            if let Err(e) = sent {
                let _ = tx.send(Err(e)).await;
            }
        }
        .instrument(tracing::info_span!("datafusion.execute")),
    );
    Ok((AbortOnDrop(handle.abort_handle()), rx))
}

/// The span of a query's execution; its `rows` and `bytes` are recorded when it ends.
fn execute_span() -> tracing::Span {
    tracing::info_span!(
        "datafusion.execute",
        rows = tracing::field::Empty,
        bytes = tracing::field::Empty
    )
}

/// Records what a collected result holds: its rows, and its bytes in memory.
fn record_batches(span: &tracing::Span, batches: &[RecordBatch]) {
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let bytes: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    span.record("rows", rows as i64);
    span.record("bytes", bytes as i64);
}

fn path_of(job: &Job) -> &str {
    job.sources.first().map_or("", |s| s.given.as_str())
}
