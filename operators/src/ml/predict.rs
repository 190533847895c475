//! `predict`: scores a dataset with a registered model version (the production one, or a pinned
//! number) and writes one row per input row: the `id_column`, `prediction` (the probability of
//! the positive class, or the value) and `model_version`. The input is read, scored and written
//! as a stream of DataFusion batches (8,192 rows), each encoded as the model was trained (see
//! [`super::model`]): a few batches are in memory at once, whatever the input's size.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use flow_engine::operator::{Operator, OperatorError, OperatorKeys, TaskContext};
use flow_engine::store::{ModelRegistry, ModelVersion, PredictionUse};
use object_store::ObjectStoreExt;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::model::{Column, Encoding, Feature, Model, Scorer, encode};
use super::on_spark::{self, Engine};
use super::{column_f64, column_text, ident};
use crate::connections::Connections;
use crate::error::fatal;
use crate::sql::{Batches, Reading};
use crate::storage::Location;

pub struct Predict {
    connections: Arc<Connections>,
}

impl Predict {
    pub fn new(connections: Arc<Connections>) -> Predict {
        Predict { connections }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    model: String,
    #[serde(default = "default_version")]
    version: Json,
    input: Json,
    id_column: String,
    output: Json,
    /// For an `s3://` artifact.
    connection: Option<String>,
    engine: Option<Json>,
    spark: Option<Json>,
}

fn default_version() -> Json {
    Json::String("production".into())
}

/// The registry's version for `wanted` (`production`, or a number as a number or text).
pub async fn resolve_version(
    registry: &dyn flow_engine::store::ModelRegistry,
    model: &str,
    wanted: &Json,
    op: &str,
) -> Result<flow_engine::store::ModelVersion, OperatorError> {
    let store_err = |e: flow_engine::store::StoreError| {
        OperatorError::Retryable(format!("{op}: reading the model registry: {e}"))
    };
    let number = match wanted {
        Json::Number(n) => n.as_i64(),
        Json::String(s) if s == "production" => None,
        Json::String(s) => Some(s.trim().parse::<i64>().map_err(|_| {
            fatal(format!(
                "{op}: version `{s}` is neither `production` nor a version number"
            ))
        })?),
        other => {
            return Err(fatal(format!(
                "{op}: version must be `production` or a number, not {other}"
            )));
        }
    };
    match number {
        Some(v) => registry
            .model_version(model, v)
            .await
            .map_err(store_err)?
            .ok_or_else(|| fatal(format!("{op}: model `{model}` has no version {v}"))),
        None => registry
            .model_versions(model)
            .await
            .map_err(store_err)?
            .into_iter()
            .find(|v| v.stage == flow_engine::store::ModelStage::Production)
            // Retryable: a first training run may not have promoted one yet.
            .ok_or_else(|| {
                OperatorError::Retryable(format!(
                    "{op}: model `{model}` has no production version yet (promote one, or pin `version:`)"
                ))
            }),
    }
}

/// Reads a model artifact (a local path or an `s3://` URL).
pub async fn load_model(
    url: &str,
    ctx: &TaskContext,
    conns: &Connections,
    connection: Option<&str>,
) -> Result<Model, OperatorError> {
    let location = Location::parse(url, &ctx.dag_folder)?;
    let aws = conns.aws(connection, &ctx.secrets)?;
    let (store, path) = location.store(&aws)?;
    let bytes = store
        .get(&path)
        .await
        .map_err(|e| OperatorError::Retryable(format!("reading the model {url}: {e}")))?
        .bytes()
        .await
        .map_err(|e| OperatorError::Retryable(format!("reading the model {url}: {e}")))?;
    Model::from_json(&bytes).map_err(|e| fatal(format!("the model {url}: {e}")))
}

/// The query that reads the input: the id column, and each feature cast as the model reads it.
fn input_query(id_column: &str, features: &[Feature]) -> String {
    let mut select = vec![format!("{} AS {}", ident(id_column), ident(id_column))];
    for f in features {
        let n = ident(f.name());
        select.push(match f {
            Feature::Numeric { .. } => format!("CAST({n} AS DOUBLE) AS {n}"),
            Feature::Categorical { .. } => format!("CAST({n} AS VARCHAR) AS {n}"),
        });
    }
    format!("SELECT {} FROM input", select.join(", "))
}

/// The output's columns: the input's id column as it is, `prediction` and `model_version`.
fn output_schema(input: &Schema, id_column: &str) -> Result<SchemaRef, OperatorError> {
    let id_field = input
        .field_with_name(id_column)
        .map_err(|_| fatal(format!("predict: the input has no column `{id_column}`")))?
        .clone();
    Ok(Arc::new(Schema::new(vec![
        Field::new(
            id_column,
            id_field.data_type().clone(),
            id_field.is_nullable(),
        ),
        Field::new("prediction", DataType::Float64, true),
        Field::new("model_version", DataType::Int64, false),
    ])))
}

/// What scoring a batch takes besides the model: the features and how to encode them, and the
/// output's shape.
struct Scoring {
    features: Vec<Feature>,
    encoding: Encoding,
    id_column: String,
    schema: SchemaRef,
    model_version: i64,
}

impl Scoring {
    /// One input batch as output rows: its ids, their predictions and the model's version.
    fn batch(&self, scorer: &Scorer, b: &RecordBatch) -> Result<RecordBatch, OperatorError> {
        let n = b.num_rows();
        let one = std::slice::from_ref(b);
        let mut columns = Vec::with_capacity(self.features.len());
        for f in &self.features {
            columns.push(match f {
                Feature::Numeric { name, .. } => Column::Numbers(column_f64(one, name, "predict")?),
                Feature::Categorical { name, .. } => {
                    Column::Text(column_text(one, name, "predict")?)
                }
            });
        }
        let (buf, width) = encode(&self.features, &columns, self.encoding)
            .map_err(|e| fatal(format!("predict: {e}")))?;
        let predicted = scorer
            .predict(&buf, n, width)
            .map_err(|e| fatal(format!("predict: {e}")))?;
        let ids = b
            .column_by_name(&self.id_column)
            .cloned()
            .ok_or_else(|| fatal("predict: the id column vanished"))?;
        let cols: Vec<ArrayRef> = vec![
            ids,
            Arc::new(Float64Array::from(predicted)),
            Arc::new(Int64Array::from(vec![self.model_version; n])),
        ];
        RecordBatch::try_new(self.schema.clone(), cols).map_err(|e| fatal(format!("predict: {e}")))
    }
}

/// Scores the batches of `input` with `model` on a blocking thread as they come, a few at a
/// time (one per core: batches are independent, and a large booster scores only a few thousand
/// rows a second on one core), and sends them on in order; answers the rows scored. An error
/// is sent on as well, so that the writer stops.
async fn score(
    model: Model,
    mut input: Batches,
    output: mpsc::Sender<Result<RecordBatch, OperatorError>>,
    scoring: Scoring,
) -> Result<usize, OperatorError> {
    tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        let scorer = model.scorer().map_err(|e| fatal(format!("predict: {e}")))?;
        let per_group = rayon::current_num_threads().max(1);
        let mut rows = 0;
        let mut ended = false;
        while !ended {
            let mut group = Vec::with_capacity(per_group);
            while group.len() < per_group {
                match input.blocking_recv() {
                    Some(Ok(b)) if b.num_rows() == 0 => {}
                    Some(Ok(b)) => group.push(b),
                    Some(Err(e)) => return Err(e),
                    None => {
                        ended = true;
                        break;
                    }
                }
            }
            let scored = group
                .par_iter()
                .map(|b| scoring.batch(&scorer, b))
                .collect::<Result<Vec<_>, _>>();
            for batch in scored? {
                rows += batch.num_rows();
                if output.blocking_send(Ok(batch)).is_err() {
                    // The writer stopped; its error is the answer.
                    return Ok(rows);
                }
            }
        }
        Ok(rows)
    })
    .await
    .map_err(|e| OperatorError::Retryable(format!("predict: scoring stopped: {e}")))?
    .inspect(|rows| {
        tracing::Span::current().record("rows", *rows as i64);
    })
}

/// Reads, scores and writes at once, batch by batch: memory holds a few batches whatever the
/// input's size.
async fn score_stream(
    cfg: &Config,
    model: Model,
    model_version: i64,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<(usize, Json), OperatorError> {
    let query = input_query(&cfg.id_column, &model.features);
    let reading = crate::sql::read_stream(&[("input", &cfg.input)], &query, ctx, conns).await?;
    let out_schema = output_schema(&reading.schema, &cfg.id_column)?;
    let scoring = Scoring {
        features: model.features.clone(),
        encoding: model.encoding(),
        id_column: cfg.id_column.clone(),
        schema: out_schema.clone(),
        model_version,
    };
    let (tx, rx) = mpsc::channel(crate::sql::IN_FLIGHT);
    let Reading { batches, .. } = reading;
    let scored = score(model, batches, tx.clone(), scoring).instrument(tracing::info_span!(
        "model.predict",
        model = %cfg.model,
        version = model_version,
        rows = tracing::field::Empty
    ));
    let scored = async move {
        let result = scored.await;
        if let Err(e) = &result {
            let _ = tx.send(Err(fatal(e.to_string()))).await;
        }
        drop(tx);
        result
    };
    let written = crate::sql::write_stream(out_schema, rx, &cfg.output, ctx, conns);
    let (scored, written) = tokio::join!(scored, written);
    let rows = scored?;
    Ok((rows, written?))
}

#[async_trait]
impl Operator for Predict {
    fn name(&self) -> &'static str {
        "predict"
    }

    fn keys(&self) -> OperatorKeys {
        OperatorKeys {
            required: &["model", "input", "id_column", "output"],
            optional: &["version", "connection", "engine", "spark"],
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
        let cfg: Config = super::config(config, "predict")?;
        let registry = super::registry(ctx, "predict")?;
        let conns = &self.connections;
        let version =
            resolve_version(registry.as_ref(), &cfg.model, &cfg.version, "predict").await?;
        ctx.log
            .line(&format!(
                "predict: {} version {} ({}, {}), {}",
                cfg.model,
                version.version,
                version.stage.as_str(),
                version.new.algorithm,
                version.new.artifact
            ))
            .await;
        let out = if Engine::parse(cfg.engine.as_ref(), "predict")? == Engine::Spark {
            on_spark(&cfg, &version, ctx, conns).await?
        } else {
            in_process(&cfg, &version, ctx, conns).await?
        };
        record_use(registry.as_ref(), &cfg.model, &version, &out, ctx).await?;
        Ok(Some(out))
    }
}

async fn in_process(
    cfg: &Config,
    version: &ModelVersion,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Json, OperatorError> {
    let model = load_model(&version.new.artifact, ctx, conns, cfg.connection.as_deref()).await?;
    let started = std::time::Instant::now();
    let (rows, written) = score_stream(cfg, model, version.version, ctx, conns).await?;
    let secs = started.elapsed().as_secs_f64();
    ctx.log
        .line(&format!(
            "predict: read, scored and wrote {rows} rows in {secs:.2} s ({:.0} rows/s)",
            rows as f64 / secs.max(1e-9)
        ))
        .await;
    Ok(json!({
        "rows": rows,
        "path": written["path"],
        "model_version": version.version,
    }))
}

/// Lineage: the registry notes which version this run scored with (docs/ml.md).
async fn record_use(
    registry: &dyn ModelRegistry,
    model: &str,
    version: &ModelVersion,
    out: &Json,
    ctx: &TaskContext,
) -> Result<(), OperatorError> {
    registry
        .record_prediction(&PredictionUse {
            model: model.to_string(),
            version: version.version,
            dag_id: ctx.dag_id.clone(),
            run_id: ctx.run_id.clone(),
            task_id: ctx.task_id.clone(),
            map_index: ctx.map_index.unwrap_or(-1),
            rows_scored: out["rows"].as_i64(),
            created_at: flow_engine::time::now(),
        })
        .await
        .map_err(|e| OperatorError::Retryable(format!("predict: noting the version used: {e}")))
}

/// Scores on Spark: the job reads the artifact, scores every partition with the same encoding
/// and arithmetic as [`Model::scorer`], and writes the output folder itself.
async fn on_spark(
    cfg: &Config,
    version: &ModelVersion,
    ctx: &TaskContext,
    conns: &Connections,
) -> Result<Json, OperatorError> {
    let mut output = on_spark::data(&cfg.output, "output", &ctx.dag_folder)?;
    output["mode"] = match cfg.output.get("mode").and_then(Json::as_str) {
        None | Some("overwrite") => json!("overwrite"),
        Some("append") => json!("append"),
        Some(other) => {
            return Err(fatal(format!(
                "predict: output mode must be overwrite or append, not `{other}`"
            )));
        }
    };
    let job = json!({
        "model": version.new.artifact,
        "version": version.version,
        "input": on_spark::data(&cfg.input, "input", &ctx.dag_folder)?,
        "id_column": cfg.id_column,
        "output": output,
    });
    let result = on_spark::run("predict", cfg.spark.as_ref(), job, ctx, conns).await?;
    ctx.log
        .line(&format!("predict: Spark scored {} rows", result["rows"]))
        .await;
    Ok(json!({
        "rows": result["rows"],
        "path": output["path"],
        "model_version": version.version,
    }))
}
