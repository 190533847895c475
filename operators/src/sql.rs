//! `sql`: one SELECT over named sources, run by Apache DataFusion in the scheduler's machine.
//!
//! Values reach the query only as SQL parameters (`bind:` -> `$name`), typed by where the query
//! uses them, so a param can never change the query's text. Only a query runs: DDL, DML, COPY and
//! session statements are rejected before anything is read.
//!
//! DataFusion runs on a runtime of its own: its operators keep a thread busy for as long as a
//! batch takes, and on the scheduler's runtime that would delay every other task's claims and
//! records by as much.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::CsvOptions;
use datafusion::common::{DataFusionError, ParamValues, ScalarValue};
use datafusion::dataframe::{DataFrame, DataFrameWriteOptions};
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{
    CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionConfig, SessionContext,
};
use flow_engine::log::LogSink;
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use object_store::ObjectStoreExt;
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::connections::Connections;
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
    let handle = cpu_runtime()?.spawn(work);
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
    let job = Job::resolve(cfg, ctx, conns)?;
    let log = ctx.log.clone();
    on_cpu(async move {
        let df = job.dataframe(&log).await?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(|e| run_error(&e, &job.query))?;
        Ok((schema, batches))
    })
    .await
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
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])
        .map_err(|e| fatal(format!("DataFusion: {e}")))?;
    job.tables.push(("result".to_string(), Arc::new(table)));
    let log = ctx.log.clone();
    on_cpu(job.run(log)).await
}

/// A source with its location and format settled.
struct Source {
    name: String,
    given: String,
    location: Location,
    format: Option<Format>,
    extension: String,
}

struct Output {
    given: String,
    location: Location,
    format: Format,
    mode: Mode,
    partition_by: Vec<String>,
    aws: crate::connections::Aws,
}

/// Everything a try needs, resolved from the task's keys before DataFusion starts.
struct Job {
    query: String,
    bind: serde_json::Map<String, Json>,
    sources: Vec<Source>,
    output: Option<Output>,
    memory_limit: Option<usize>,
    buckets: BTreeMap<String, crate::connections::Aws>,
    /// Tables in memory beside the sources (what an operator computed, to be written).
    tables: Vec<(String, Arc<dyn datafusion::catalog::TableProvider>)>,
}

impl Job {
    fn resolve(cfg: Config, ctx: &TaskContext, conns: &Connections) -> Result<Job, OperatorError> {
        let mut buckets = BTreeMap::new();
        let mut note_bucket = |loc: &Location,
                               conn: Option<&str>|
         -> Result<crate::connections::Aws, OperatorError> {
            let aws = conns.aws(conn, &ctx.secrets)?;
            if let Location::S3 { bucket, .. } = loc {
                match buckets.get(bucket) {
                    Some(prev) if prev != &aws => {
                        return Err(fatal(format!(
                            "bucket {bucket} is named with two different connections in one query"
                        )));
                    }
                    _ => {
                        buckets.insert(bucket.clone(), aws.clone());
                    }
                }
            }
            Ok(aws)
        };
        let mut sources = Vec::new();
        for (name, spec) in cfg.sources {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(fatal(format!(
                    "source name `{name}`: a table name takes letters, digits and _ only"
                )));
            }
            let location = Location::parse(&spec.path, &ctx.dag_folder)?;
            note_bucket(&location, spec.connection.as_deref())?;
            let named = location.format_from_name();
            let extension = match named {
                Some(_) if !location.is_folder() => location.extension().unwrap_or_default(),
                _ if location.is_glob() || !location.is_folder() => String::new(),
                _ => spec
                    .format
                    .map(|f| f.extension().to_string())
                    .unwrap_or_default(),
            };
            sources.push(Source {
                name,
                given: spec.path,
                format: spec.format.or(named),
                location,
                extension,
            });
        }
        let output = match cfg.output {
            None => None,
            Some(o) => {
                let location = Location::parse(&o.path, &ctx.dag_folder)?;
                let aws = note_bucket(&location, o.connection.as_deref())?;
                let folder = location.is_folder();
                let format = match o.format.or(location.format_from_name()) {
                    Some(f) => f,
                    None if folder => Format::Parquet,
                    None => {
                        return Err(fatal(format!(
                            "output `{}`: give `format:` (parquet, csv or json) or a file extension",
                            o.path
                        )));
                    }
                };
                if !folder && !o.partition_by.is_empty() {
                    return Err(fatal(format!(
                        "output `{}`: partition_by writes folders, so the path must end in /",
                        o.path
                    )));
                }
                if !folder && o.mode == Mode::Append {
                    return Err(fatal(format!(
                        "output `{}`: append adds files to a folder, so the path must end in /",
                        o.path
                    )));
                }
                Some(Output {
                    given: o.path,
                    location,
                    format,
                    mode: o.mode,
                    partition_by: o.partition_by,
                    aws,
                })
            }
        };
        let memory_limit = match &cfg.memory_limit {
            None => None,
            Some(s) => Some(
                bytesize::ByteSize::from_str(s.trim())
                    .map_err(|e| fatal(format!("memory_limit `{s}`: {e} (for example 2GB)")))?
                    .as_u64() as usize,
            ),
        };
        Ok(Job {
            query: cfg.query,
            bind: cfg.bind,
            sources,
            output,
            memory_limit,
            buckets,
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
        let result = match &self.output {
            None => {
                let batches = df
                    .limit(0, Some(MAX_OUTPUT_ROWS + 1))
                    .map_err(|e| fatal(sql_error(&e, &self.query)))?
                    .collect()
                    .await
                    .map_err(|e| run_error(&e, &self.query))?;
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
            Some(out) => write_output(df, out, &self.query, columns, &log, started).await?,
        };
        Ok(result)
    }

    /// The query, planned with its parameters bound, over the registered sources.
    async fn dataframe(&self, log: &LogSink) -> Result<DataFrame, OperatorError> {
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
    let handle = cpu_runtime()?.spawn(async move {
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
                    w.write(&batch)
                        .map_err(|e| fatal(format!("turning {} into CSV: {e}", path_of(&job))))?;
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
    });
    Ok((AbortOnDrop(handle.abort_handle()), rx))
}

fn path_of(job: &Job) -> &str {
    job.sources.first().map_or("", |s| s.given.as_str())
}

fn bucket_of(loc: &Location) -> &str {
    match loc {
        Location::S3 { bucket, .. } => bucket,
        Location::Local(_) => "",
    }
}

async fn register(
    ctx: &SessionContext,
    s: &Source,
    aws: Option<crate::connections::Aws>,
) -> Result<(), OperatorError> {
    let format = match s.format {
        Some(f) => f,
        None => infer_format(s, &aws.unwrap_or_default()).await?,
    };
    let extension = if s.extension.is_empty() && s.location.is_folder() {
        format.extension().to_string()
    } else {
        s.extension.clone()
    };
    let url = s.location.url();
    let done = match format {
        Format::Parquet => {
            ctx.register_parquet(
                &s.name,
                &url,
                ParquetReadOptions::default().file_extension(&extension),
            )
            .await
        }
        Format::Csv => {
            ctx.register_csv(
                &s.name,
                &url,
                CsvReadOptions::new()
                    .has_header(true)
                    .file_extension(&extension),
            )
            .await
        }
        Format::Json => {
            ctx.register_json(
                &s.name,
                &url,
                JsonReadOptions::default().file_extension(&extension),
            )
            .await
        }
    };
    done.map_err(|e| {
        let msg = e.strip_backtrace();
        let err = format!("source {} ({}): {msg}", s.name, s.given);
        // A file that is not there yet may appear (an upstream still writing, S3 lag); a
        // malformed one will not mend itself.
        if msg.contains("not found")
            || msg.contains("No files found")
            || msg.contains("No such file")
        {
            OperatorError::Retryable(err)
        } else {
            fatal(err)
        }
    })
}

/// The format of a folder source given without `format:`: the one its files share.
async fn infer_format(s: &Source, aws: &crate::connections::Aws) -> Result<Format, OperatorError> {
    let (store, prefix) = s.location.store(aws)?;
    let objects = storage::list(store.as_ref(), &prefix).await?;
    let formats: HashSet<Format> = objects
        .iter()
        .filter_map(|o| {
            let name = o.path.filename()?;
            if name.starts_with('_') || name.starts_with('.') {
                return None;
            }
            Format::from_name(name)
        })
        .collect();
    match formats.len() {
        1 => Ok(formats.into_iter().next().unwrap_or(Format::Parquet)),
        0 => Err(OperatorError::Retryable(format!(
            "source {} ({}): no parquet, csv or json files there yet",
            s.name, s.given
        ))),
        _ => Err(fatal(format!(
            "source {} ({}): the folder holds files of several formats; give `format:`",
            s.name, s.given
        ))),
    }
}

/// The `bind:` values as typed SQL parameters: each is cast to the type the query gives its
/// placeholder (a timestamp compared with a column of timestamps, say), so `"2026-01-01"` binds
/// as a timestamp there and as text where the query wants text.
fn bind_values(
    plan: &datafusion::logical_expr::LogicalPlan,
    bind: &serde_json::Map<String, Json>,
) -> Result<ParamValues, OperatorError> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| fatal(format!("query parameters: {}", e.strip_backtrace())))?;
    let mut wanted: Vec<&String> = types.keys().collect();
    wanted.sort();
    let mut values: HashMap<String, ScalarValue> = HashMap::new();
    for id in &wanted {
        let Some(name) = id.strip_prefix('$') else {
            continue;
        };
        if name.chars().all(|c| c.is_ascii_digit()) {
            return Err(fatal(format!(
                "the query uses the positional parameter {id}; name it ($start, $end, ...) and give \
                 its value in `bind:`"
            )));
        }
        let value = bind
            .get(name)
            .ok_or_else(|| fatal(format!("the query uses {id}, but `bind:` has no `{name}`")))?;
        let ty = types.get(*id).and_then(Option::as_ref);
        values.insert(name.to_string(), scalar(name, value, ty)?);
    }
    let used: HashSet<&str> = wanted
        .iter()
        .filter_map(|id| id.strip_prefix('$'))
        .collect();
    if let Some(extra) = bind.keys().find(|k| !used.contains(k.as_str())) {
        return Err(fatal(format!(
            "`bind:` gives `{extra}`, but the query has no ${extra}"
        )));
    }
    Ok(ParamValues::from(values))
}

fn scalar(name: &str, value: &Json, ty: Option<&DataType>) -> Result<ScalarValue, OperatorError> {
    let raw = match value {
        Json::Null => match ty {
            Some(t) => {
                ScalarValue::try_from(t).map_err(|e| fatal(format!("bind `{name}`: {e}")))?
            }
            None => ScalarValue::Null,
        },
        Json::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int64(Some(i)),
            None => ScalarValue::Float64(n.as_f64()),
        },
        Json::String(s) => ScalarValue::Utf8(Some(s.clone())),
        Json::Array(_) | Json::Object(_) => {
            return Err(fatal(format!(
                "bind `{name}`: a parameter is one value (text, number, true/false or null)"
            )));
        }
    };
    match ty {
        Some(t) if &raw.data_type() != t => raw.cast_to(t).map_err(|e| {
            fatal(format!(
                "bind `{name}`: {value} is not a valid {t} for where the query uses ${name}: {}",
                e.strip_backtrace()
            ))
        }),
        _ => Ok(raw),
    }
}

async fn write_output(
    df: DataFrame,
    out: &Output,
    query: &str,
    columns: Vec<String>,
    log: &LogSink,
    started: Instant,
) -> Result<Json, OperatorError> {
    let folder = out.location.is_folder();
    let (store, prefix) = out.location.store(&out.aws)?;
    if out.mode == Mode::Overwrite {
        if folder {
            let n = storage::delete_all(store.as_ref(), &prefix).await?;
            if n > 0 {
                log.line(&format!(
                    "sql: overwrite removed {n} files from {}",
                    out.given
                ))
                .await;
            }
        } else {
            match store.delete(&prefix).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(OperatorError::Retryable(format!(
                        "removing the old {}: {e}",
                        out.given
                    )));
                }
            }
        }
    }
    if let Location::Local(p) = &out.location {
        let dir = if folder {
            p.as_path()
        } else {
            p.parent().unwrap_or(p)
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| fatal(format!("cannot create {}: {e}", dir.display())))?;
    }
    let before: HashSet<_> = if folder {
        storage::list(store.as_ref(), &prefix)
            .await?
            .into_iter()
            .map(|o| o.path)
            .collect()
    } else {
        HashSet::new()
    };
    let options = DataFrameWriteOptions::new()
        .with_single_file_output(!folder)
        .with_partition_by(out.partition_by.clone());
    let url = out.location.url();
    let written = match out.format {
        Format::Parquet => df.write_parquet(&url, options, None).await,
        Format::Csv => {
            df.write_csv(
                &url,
                options,
                Some(CsvOptions::default().with_has_header(true)),
            )
            .await
        }
        Format::Json => df.write_json(&url, options, None).await,
    }
    .map_err(|e| run_error(&e, query))?;
    let rows: u64 = written
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
        .map(|a| a.iter().flatten().sum::<u64>())
        .sum();
    let bytes: u64 = if folder {
        storage::list(store.as_ref(), &prefix)
            .await?
            .into_iter()
            .filter(|o| !before.contains(&o.path))
            .map(|o| o.size)
            .sum()
    } else {
        store
            .head(&prefix)
            .await
            .map(|m| m.size)
            .map_err(|e| OperatorError::Retryable(format!("reading back {}: {e}", out.given)))?
    };
    log.line(&format!(
        "sql: wrote {rows} rows ({}) as {} to {} in {:.2?}",
        bytesize::ByteSize::b(bytes),
        out.format,
        out.given,
        started.elapsed()
    ))
    .await;
    Ok(json!({ "rows": rows, "path": out.given, "bytes": bytes, "columns": columns }))
}

fn batches_to_json(batches: &[RecordBatch]) -> Result<Json, OperatorError> {
    let mut writer = arrow_json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    writer
        .write_batches(&refs)
        .and_then(|()| writer.finish())
        .map_err(|e| fatal(format!("the result could not be turned into JSON: {e}")))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Json::Array(Vec::new()));
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| fatal(format!("the result could not be turned into JSON: {e}")))
}

/// An error met while the query ran. Running out of the memory limit is worth a retry (another
/// query may have finished); the rest are the query's or the data's.
fn run_error(e: &DataFusionError, query: &str) -> OperatorError {
    let text = sql_error(e, query);
    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
        || matches!(e.find_root(), DataFusionError::ObjectStore(_))
        || matches!(e.find_root(), DataFusionError::IoError(_))
    {
        OperatorError::Retryable(text)
    } else {
        OperatorError::Fatal(text)
    }
}

/// The error, with where in the query it is: DataFusion's diagnostic span when it has one, else
/// the parser's "Line: L, Column: C"; the query's line is quoted with a caret under the spot.
pub fn sql_error(e: &DataFusionError, query: &str) -> String {
    let mut message = e.strip_backtrace();
    for prefix in ["SQL error: ", "sql parser error: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            message = rest.to_string();
        }
    }
    if let Some(inner) = message
        .strip_prefix("ParserError(\"")
        .and_then(|m| m.strip_suffix("\")"))
    {
        message = inner.replace("\\\"", "\"");
    }
    let spot = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|s| (s.start.line as usize, s.start.column as usize))
        .filter(|(l, _)| *l > 0)
        .or_else(|| parse_line_col(&message))
        .or_else(|| {
            message
                .ends_with("found: EOF")
                .then(|| end_of(query))
                .flatten()
        });
    match spot {
        Some((line, col)) => {
            let mut out = format!("SQL error at query line {line}, column {col}: {message}");
            if let Some(text) = query.lines().nth(line - 1) {
                out.push_str(&format!(
                    "\n  | {text}\n  | {}^",
                    " ".repeat(col.saturating_sub(1).min(text.len()))
                ));
            }
            out
        }
        None => format!("SQL error: {message}"),
    }
}

/// The spot just after the query's last character (where "found: EOF" is).
fn end_of(query: &str) -> Option<(usize, usize)> {
    let (idx, text) = query
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()?;
    Some((idx + 1, text.trim_end().chars().count() + 1))
}

fn parse_line_col(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?)).filter(|(l, _)| *l > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_parser_position() {
        assert_eq!(
            parse_line_col(
                "sql parser error: Expected: end of statement, found: x at Line: 2, Column: 14"
            ),
            Some((2, 14))
        );
        assert_eq!(parse_line_col("no position"), None);
        assert_eq!(
            end_of("SELECT a\n  FROM t WHERE (a > 1  \n\n"),
            Some((2, 22))
        );
    }

    #[test]
    fn json_values_bind_to_the_placeholder_type() {
        let ts = DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None);
        let v = scalar("start", &json!("2026-01-01T00:00:00Z"), Some(&ts)).unwrap();
        assert_eq!(v.data_type(), ts);
        let v = scalar("n", &json!("5"), Some(&DataType::Int64)).unwrap();
        assert_eq!(v, ScalarValue::Int64(Some(5)));
        let err = scalar("n", &json!("five"), Some(&DataType::Int64)).unwrap_err();
        assert!(err.to_string().contains("bind `n`"), "{err}");
        assert!(scalar("x", &json!([1]), None).is_err());
    }
}
