//! `flow-bench bench-ml`: the `train` operator on 1,000,000 rows x 20 features (wall time, peak RSS)
//! and the `predict` operator on 10,000,000 rows (rows per second, peak RSS), as two tasks of one
//! run, measured like `flow-bench bench-heavy` (a `flow run` child process, /proc sampled every 50 ms).
//!
//! The data: 20 standard-normal features; the label is drawn with P = sigmoid(sum of w_i x_i)
//! for fixed weights, so a good model reaches a known AUC. Deterministic (ChaCha8, seed 7).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};

pub struct MlOptions {
    pub data: PathBuf,
    pub train_rows: usize,
    pub score_rows: usize,
    pub features: usize,
    pub algorithm: String,
    pub budget: Option<f32>,
}

const ROWS_PER_FILE: usize = 1_000_000;

fn weight(i: usize) -> f64 {
    // A few strong features, some weak ones, some noise.
    [0.9, -0.7, 0.5, -0.3, 0.2, 0.1, 0.0, 0.0][i % 8]
}

/// Writes `rows` rows (id, f0.., and the label when `label`) as parquet files under `dir`.
fn write_set(dir: &Path, rows: usize, features: usize, label: bool, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut fields = vec![Field::new("id", DataType::Int64, false)];
    fields.extend((0..features).map(|i| Field::new(format!("f{i}"), DataType::Float64, false)));
    if label {
        fields.push(Field::new("label", DataType::Int64, false));
    }
    let schema = Arc::new(Schema::new(fields));
    let mut done = 0;
    let mut part = 0;
    while done < rows {
        let n = (rows - done).min(ROWS_PER_FILE);
        let mut cols: Vec<Vec<f64>> = vec![Vec::with_capacity(n); features];
        let mut labels = Vec::with_capacity(n);
        for _ in 0..n {
            let mut z = 0.0;
            for (i, col) in cols.iter_mut().enumerate() {
                let x: f64 = StandardNormal.sample(&mut rng);
                z += weight(i) * x;
                col.push(x);
            }
            labels.push(i64::from(rng.random::<f64>() < 1.0 / (1.0 + (-z).exp())));
        }
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(
            (done as i64)..((done + n) as i64),
        ))];
        arrays.extend(
            cols.into_iter()
                .map(|c| Arc::new(Float64Array::from(c)) as ArrayRef),
        );
        if label {
            arrays.push(Arc::new(Int64Array::from(labels)));
        }
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        let file = std::fs::File::create(dir.join(format!("part-{part:04}.parquet")))?;
        let mut w = ArrowWriter::try_new(file, schema.clone(), None)?;
        w.write(&batch)?;
        w.close()?;
        done += n;
        part += 1;
    }
    Ok(())
}

pub async fn bench_ml(opts: MlOptions) -> Result<u8> {
    generate(&opts).await?;
    let work = tempfile::tempdir()?;
    let dags = work.path().join("dags");
    std::fs::create_dir_all(&dags)?;
    std::fs::write(dags.join("ml_bench.yaml"), dag_yaml(&opts, work.path()))?;
    let measured = crate::bench_heavy::run_measured(work.path(), &dags, "ml_bench").await?;
    let (train_s, train_mib) = measured.task("train", true)?;
    let (predict_s, predict_mib) = measured.task("predict", true)?;
    let train_out = measured.run["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["task_id"] == "train"))
        .map(|t| t["output"].clone())
        .context("no train output")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}{} on {} rows x {} features, scoring {} rows, {cores} cores:",
        opts.algorithm,
        opts.budget
            .map(|b| format!(" (budget {b})"))
            .unwrap_or_default(),
        opts.train_rows,
        opts.features,
        opts.score_rows
    );
    println!("| step | wall time (s) | peak RSS (MiB) | throughput |");
    println!("|---|---|---|---|");
    println!(
        "| train (fit on 80%, metrics on 20%) | {train_s:.2} | {train_mib:.0} | {:.0} rows/s |",
        opts.train_rows as f64 / train_s
    );
    println!(
        "| predict (read, score, write parquet) | {predict_s:.2} | {predict_mib:.0} | {:.0} rows/s |",
        opts.score_rows as f64 / predict_s
    );
    println!("held-out metrics: {}", train_out["metrics"]);
    Ok(0)
}

/// Writes the training and scoring sets once per shape (a marker file tells they are whole).
async fn generate(opts: &MlOptions) -> Result<()> {
    let marker = opts.data.join(format!(
        "bench-{}-{}-{}.done",
        opts.train_rows, opts.score_rows, opts.features
    ));
    if !marker.is_file() {
        eprintln!(
            "generating {} training rows and {} rows to score ({} features) into {} ...",
            opts.train_rows,
            opts.score_rows,
            opts.features,
            opts.data.display()
        );
        let (data, train, score, features) = (
            opts.data.clone(),
            opts.train_rows,
            opts.score_rows,
            opts.features,
        );
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let _ = std::fs::remove_dir_all(data.join("train"));
            let _ = std::fs::remove_dir_all(data.join("score"));
            write_set(&data.join("train"), train, features, true, 7)?;
            write_set(&data.join("score"), score, features, false, 8)?;
            Ok(())
        })
        .await??;
        eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
        std::fs::write(&marker, "")?;
    }
    Ok(())
}

/// The benchmark's DAG: train, then predict with the version it trained.
fn dag_yaml(opts: &MlOptions, work: &Path) -> String {
    let (d, w) = (opts.data.display(), work.display());
    format!(
        r#"id: ml_bench
tasks:
  train:
    operator: train
    training_set: {{ path: "{d}/train/", format: parquet }}
    label: label
    id_column: id
    algorithm: {algorithm}{budget}
    validation_split: 0.2
    model: bench_model
    artifacts: "{w}/models/"
  predict:
    operator: predict
    depends_on: [train]
    model: bench_model
    version: "{{{{ tasks.train.output.version }}}}"
    input: {{ path: "{d}/score/", format: parquet }}
    id_column: id
    output: {{ path: "{w}/predictions/", format: parquet }}
"#,
        algorithm = opts.algorithm,
        budget = opts
            .budget
            .map(|b| format!("\n    budget: {b}"))
            .unwrap_or_default(),
    )
}
