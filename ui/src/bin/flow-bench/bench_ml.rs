//! `flow-bench bench-ml`: the `train` operator on 1,000,000 rows x 20 features (wall time, peak RSS)
//! and the `predict` operator on 10,000,000 rows (rows per second, peak RSS), as two `flow run`s
//! (so that the scoring run's peak is its own, not what training left in the allocator), measured
//! like `flow-bench bench-heavy` (a `flow run` child process, /proc sampled every 50 ms). For a
//! gradient-boosted model it also scores `--compare-rows` rows on one core with perpetual's own
//! predict and with flow's flat scorer (`operators/src/ml/forest.rs`), and checks they agree bit
//! for bit.
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
    pub score_format: ScoreFormat,
    pub compare_rows: usize,
    /// Only compare the two scorers on this model artifact (no runs).
    pub compare_only: Option<PathBuf>,
}

/// The format of the rows to score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScoreFormat {
    Parquet,
    Csv,
}

impl ScoreFormat {
    fn as_str(self) -> &'static str {
        match self {
            ScoreFormat::Parquet => "parquet",
            ScoreFormat::Csv => "csv",
        }
    }
}

const ROWS_PER_FILE: usize = 1_000_000;

fn weight(i: usize) -> f64 {
    // A few strong features, some weak ones, some noise.
    [0.9, -0.7, 0.5, -0.3, 0.2, 0.1, 0.0, 0.0][i % 8]
}

/// Writes `rows` rows (id, f0.., and the label when `label`) as parquet (or CSV) files under
/// `dir`.
fn write_set(
    dir: &Path,
    rows: usize,
    features: usize,
    label: bool,
    seed: u64,
    format: ScoreFormat,
) -> Result<()> {
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
        let name = format!("part-{part:04}.{}", format.as_str());
        let file = std::fs::File::create(dir.join(name))?;
        match format {
            ScoreFormat::Parquet => {
                let mut w = ArrowWriter::try_new(file, schema.clone(), None)?;
                w.write(&batch)?;
                w.close()?;
            }
            ScoreFormat::Csv => {
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(std::io::BufWriter::new(file));
                w.write(&batch)?;
            }
        }
        done += n;
        part += 1;
    }
    Ok(())
}

pub async fn bench_ml(opts: MlOptions) -> Result<u8> {
    if let Some(artifact) = &opts.compare_only {
        compare_scorers(artifact, opts.compare_rows, opts.features)?;
        return Ok(0);
    }
    generate(&opts).await?;
    let work = tempfile::tempdir()?;
    let dags = work.path().join("dags");
    std::fs::create_dir_all(&dags)?;
    std::fs::write(dags.join("ml_train.yaml"), train_yaml(&opts, work.path()))?;
    let trained = crate::bench_heavy::run_measured(work.path(), &dags, "ml_train").await?;
    let (train_s, train_mib) = trained.task("train", true)?;
    let train_out = output_of(&trained.run, "train")?;
    let version = train_out["version"]
        .as_i64()
        .context("train gave no version")?;
    std::fs::write(
        dags.join("ml_predict.yaml"),
        predict_yaml(&opts, work.path(), version),
    )?;
    let scored = crate::bench_heavy::run_measured(work.path(), &dags, "ml_predict").await?;
    let (predict_s, predict_mib) = scored.task("predict", true)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "{}{} on {} rows x {} features, scoring {} rows from {}, {cores} cores:",
        opts.algorithm,
        opts.budget
            .map(|b| format!(" (budget {b})"))
            .unwrap_or_default(),
        opts.train_rows,
        opts.features,
        opts.score_rows,
        opts.score_format.as_str()
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
    println!(
        "| the whole scoring `flow run` (start to exit) | - | {:.0} | - |",
        scored.peak_mib()
    );
    println!("held-out metrics: {}", train_out["metrics"]);
    if opts.algorithm == "gradient_boosting" && opts.compare_rows > 0 {
        let artifact = train_out["artifact"].as_str().context("no artifact")?;
        // Kept beside the data, for `--compare-only` later (the run's folder goes away).
        let kept = opts.data.join("gradient_boosting_model.json");
        std::fs::copy(artifact, &kept)?;
        println!("the model: {}", kept.display());
        compare_scorers(&kept, opts.compare_rows, opts.features)?;
    }
    Ok(0)
}

fn output_of(run: &serde_json::Value, task: &str) -> Result<serde_json::Value> {
    run["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["task_id"] == task))
        .map(|t| t["output"].clone())
        .with_context(|| format!("no {task} output"))
}

/// perpetual's predict against the flat scorer, on one core each, on `rows` fresh rows.
fn compare_scorers(artifact: &Path, rows: usize, features: usize) -> Result<()> {
    use flow_operators::ml::forest::Forest;
    use flow_operators::ml::model::Model;
    let model = Model::from_json(&std::fs::read(artifact)?).map_err(anyhow::Error::msg)?;
    let booster = model.booster().map_err(anyhow::Error::msg)?;
    let forest = Forest::from_json(model.booster_json().map_err(anyhow::Error::msg)?)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let data: Vec<f64> = (0..rows * features)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    // One thread each: the flat scorer splits more than 65,536 rows over every core.
    let one_core = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let (theirs, perpetual_s) = one_core.install(|| {
        let started = std::time::Instant::now();
        let theirs = booster.predict(&perpetual::Matrix::new(&data, rows, features), false);
        (theirs, started.elapsed().as_secs_f64())
    });
    let (ours, flat_s) = one_core.install(|| {
        let started = std::time::Instant::now();
        let ours = forest.predict(&data, rows, features);
        (ours, started.elapsed().as_secs_f64())
    });
    let ours = ours.map_err(anyhow::Error::msg)?;
    let same = ours
        .iter()
        .zip(&theirs)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    println!(
        "scorers on {rows} rows, one core, {} trees: perpetual {:.0} rows/s, flat {:.0} rows/s \
         ({:.1}x); the same bits: {same}",
        booster.get_prediction_trees().len(),
        rows as f64 / perpetual_s,
        rows as f64 / flat_s,
        perpetual_s / flat_s
    );
    anyhow::ensure!(same, "the flat scorer disagrees with perpetual");
    Ok(())
}

/// Writes the training and scoring sets once per shape (a marker file tells they are whole).
async fn generate(opts: &MlOptions) -> Result<()> {
    let format = opts.score_format;
    let marker = opts.data.join(format!(
        "bench-{}-{}-{}-{}.done",
        opts.train_rows,
        opts.score_rows,
        opts.features,
        format.as_str()
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
            let score_dir = data.join(format!("score-{}", format.as_str()));
            let _ = std::fs::remove_dir_all(data.join("train"));
            let _ = std::fs::remove_dir_all(&score_dir);
            write_set(
                &data.join("train"),
                train,
                features,
                true,
                7,
                ScoreFormat::Parquet,
            )?;
            write_set(&score_dir, score, features, false, 8, format)?;
            Ok(())
        })
        .await??;
        eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
        std::fs::write(&marker, "")?;
    }
    Ok(())
}

/// The training run's DAG.
fn train_yaml(opts: &MlOptions, work: &Path) -> String {
    let (d, w) = (opts.data.display(), work.display());
    format!(
        r#"id: ml_train
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
"#,
        algorithm = opts.algorithm,
        budget = opts
            .budget
            .map(|b| format!("\n    budget: {b}"))
            .unwrap_or_default(),
    )
}

/// The scoring run's DAG: predict with the version the training run registered.
fn predict_yaml(opts: &MlOptions, work: &Path, version: i64) -> String {
    let (d, w, f) = (
        opts.data.display(),
        work.display(),
        opts.score_format.as_str(),
    );
    format!(
        r#"id: ml_predict
tasks:
  predict:
    operator: predict
    model: bench_model
    version: {version}
    input: {{ path: "{d}/score-{f}/", format: {f} }}
    id_column: id
    output: {{ path: "{w}/predictions/", format: parquet }}
"#
    )
}
