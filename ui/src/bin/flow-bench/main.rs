//! `flow-bench`: the benchmarks, load generators and the demo-data generator, kept out of the
//! product binary. Figures go to BENCHMARKS.md; `flow-bench --help` lists the workloads.
//!
//! The measured processes are the real `flow` binary, found beside this one (`cargo build`
//! builds both into the same folder).

mod bench;
mod bench_backfill;
mod bench_e2e;
mod bench_heavy;
mod bench_ml;
mod bench_ui;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "flow-bench",
    version,
    about = "Benchmarks and test data for the flow orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Keep metrics in this process, as `flow standalone` does for `/metrics`; traces go out
    /// too when OTEL_EXPORTER_OTLP_ENDPOINT is set (for the telemetry cost bench)
    #[arg(long, global = true)]
    telemetry: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure scheduling overhead (chain40, fan500, map10k, dags1000) on SQLite and PostgreSQL
    Bench(BenchArgs),
    /// Measure chain40, fan500 and map10k as a user runs them: `flow trigger W --wait` against a
    /// scheduler daemon (or a task-less scheduler and --workers workers), beside in-process
    BenchE2e(E2eArgs),
    /// Run a 10-year daily backfill through `flow backfill` against a scheduler daemon: the
    /// most runs it has unfinished at once (the sliding window), its time and the scheduler's
    /// CPU and memory
    BenchBackfill(BackfillArgs),
    /// Measure the web server on a long history (100 runs, then --runs) with wrk
    BenchUi(UiArgs),
    /// Load, validate and record a DAGs folder in a fresh process (dags1000's inner step)
    #[command(hide = true)]
    BenchLoad { dags: PathBuf, database_url: String },
    /// Measure the training-set query on `sql` (DataFusion) against `spark` local (needs
    /// SPARK_HOME), on data from `demo-data` (generated into --data when missing)
    BenchHeavy(HeavyArgs),
    /// Measure `train` (1,000,000 rows x 20 features) and `predict` (10,000,000 rows) in one run
    BenchMl(MlArgs),
    /// Write synthetic events, profiles, labels and an A/B experiment (parquet) with a known
    /// signal, for the example pipelines and the heavy-step benchmark
    DemoData(DemoArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Also measure on this PostgreSQL database (created if missing)
    #[arg(long)]
    postgres: Option<String>,
    /// Workloads to run (default: all)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Tries at once (default: 4 x cores, as the scheduler's default)
    #[arg(long)]
    parallelism: Option<usize>,
}

impl From<BenchArgs> for bench::BenchOptions {
    fn from(a: BenchArgs) -> Self {
        let workloads = if a.only.is_empty() {
            bench::WORKLOADS.iter().map(|s| s.to_string()).collect()
        } else {
            a.only
        };
        let parallelism = a
            .parallelism
            .unwrap_or_else(flow_engine::scheduler::default_parallelism);
        bench::BenchOptions {
            parallelism: parallelism.max(1),
            postgres_url: a.postgres,
            workloads,
            repeats: a.repeats.max(1),
        }
    }
}

#[derive(Args, Debug)]
struct E2eArgs {
    /// Also measure on PostgreSQL: two scratch databases on this server, dropped at the end
    #[arg(long)]
    postgres: Option<String>,
    /// Workloads to run (default: chain40, fan500)
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Run tasks on this many `flow worker` processes beside a `flow scheduler --no-tasks`
    /// (default: none, the all-in-one scheduler)
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Tries at once per process (default: 4 x cores, as the scheduler's default)
    #[arg(long)]
    parallelism: Option<usize>,
}

impl From<E2eArgs> for bench_e2e::E2eOptions {
    fn from(a: E2eArgs) -> Self {
        let workloads = if a.only.is_empty() {
            vec!["chain40".into(), "fan500".into()]
        } else {
            a.only
        };
        bench_e2e::E2eOptions {
            postgres_url: a.postgres,
            workloads,
            repeats: a.repeats.max(1),
            workers: a.workers,
            parallelism: a
                .parallelism
                .unwrap_or_else(flow_engine::scheduler::default_parallelism)
                .max(1),
        }
    }
}

#[derive(Args, Debug)]
struct BackfillArgs {
    /// Also measure on PostgreSQL: a scratch database per measurement on this server, dropped
    /// at the end
    #[arg(long)]
    postgres: Option<String>,
    /// Daily intervals in the backfill
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// Windows (`--max-active-runs`) to measure; 0 is the default window
    #[arg(long, value_delimiter = ',', default_values_t = [0, 3650])]
    windows: Vec<u32>,
    /// Tries at once in the scheduler (default: 4 x cores, as the scheduler's default)
    #[arg(long)]
    parallelism: Option<usize>,
}

impl From<BackfillArgs> for bench_backfill::BackfillOptions {
    fn from(a: BackfillArgs) -> Self {
        bench_backfill::BackfillOptions {
            postgres_url: a.postgres,
            days: a.days.max(1),
            windows: a.windows,
            parallelism: a
                .parallelism
                .unwrap_or_else(flow_engine::scheduler::default_parallelism)
                .max(1),
        }
    }
}

#[derive(Args, Debug)]
struct UiArgs {
    /// Also measure on PostgreSQL: a scratch database beside this one, dropped at the end
    #[arg(long)]
    postgres: Option<String>,
    /// Runs of 10 tasks in the large history
    #[arg(long, default_value_t = 100_000)]
    runs: usize,
    /// Seconds of load per target
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients of the trigger load (the GET targets use at most 8)
    #[arg(long, default_value_t = 50)]
    connections: usize,
}

impl From<UiArgs> for bench_ui::UiBenchOptions {
    fn from(a: UiArgs) -> Self {
        bench_ui::UiBenchOptions {
            postgres_url: a.postgres,
            runs: a.runs.max(1),
            seconds: a.seconds.max(1),
            connections: a.connections.max(1),
        }
    }
}

#[derive(Args, Debug)]
struct HeavyArgs {
    #[arg(long, default_value = "bench-data")]
    data: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// The sql task's memory_limit (default: none)
    #[arg(long)]
    memory_limit: Option<String>,
}

impl From<HeavyArgs> for bench_heavy::HeavyOptions {
    fn from(a: HeavyArgs) -> Self {
        bench_heavy::HeavyOptions {
            data: a.data,
            users: a.users,
            events: a.events,
            memory_limit: a.memory_limit,
        }
    }
}

#[derive(Args, Debug)]
struct MlArgs {
    #[arg(long, default_value = "bench-data/ml")]
    data: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    train_rows: usize,
    #[arg(long, default_value_t = 10_000_000)]
    score_rows: usize,
    #[arg(long, default_value_t = 20)]
    features: usize,
    #[arg(long, default_value = "gradient_boosting", value_parser = ["gradient_boosting", "logistic_regression"])]
    algorithm: String,
    /// perpetual's budget for gradient_boosting (default: train's, 0.5)
    #[arg(long)]
    budget: Option<f32>,
    /// The format of the rows to score
    #[arg(long, value_enum, default_value = "parquet")]
    score_format: bench_ml::ScoreFormat,
    /// Rows scored on one core by perpetual and by the flat scorer (gradient_boosting; 0: none)
    #[arg(long, default_value_t = 20_000)]
    compare_rows: usize,
    /// Only compare the two scorers on this model.json (gradient_boosting), without runs
    #[arg(long)]
    compare_only: Option<PathBuf>,
}

impl From<MlArgs> for bench_ml::MlOptions {
    fn from(a: MlArgs) -> Self {
        bench_ml::MlOptions {
            data: a.data,
            train_rows: a.train_rows.max(10),
            score_rows: a.score_rows.max(1),
            features: a.features.max(1),
            algorithm: a.algorithm,
            budget: a.budget,
            score_format: a.score_format,
            compare_rows: a.compare_rows,
            compare_only: a.compare_only,
        }
    }
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// The folder to write into
    #[arg(long, default_value = "dags/data")]
    out: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The first day of events (YYYY-MM-DD)
    #[arg(long, default_value = "2026-01-01")]
    start: chrono::NaiveDate,
    /// Days of events; the last 14 are the label window
    #[arg(long, default_value_t = 60)]
    days: u32,
}

impl From<DemoArgs> for flow_operators::demo::DemoOptions {
    fn from(a: DemoArgs) -> Self {
        flow_operators::demo::DemoOptions {
            out: a.out,
            users: a.users,
            events: a.events,
            seed: a.seed,
            start: a.start,
            days: a.days,
        }
    }
}

/// The `flow` binary beside this one: the measured processes are the product's own.
pub fn flow_exe() -> Result<PathBuf> {
    let exe = std::env::current_exe()?.with_file_name("flow");
    anyhow::ensure!(
        exe.exists(),
        "{} is missing: build it first (cargo build --release builds flow and flow-bench)",
        exe.display()
    );
    Ok(exe)
}

/// Writes the demo tables (parquet) and prints their summary.
async fn demo_data(opts: flow_operators::demo::DemoOptions) -> Result<u8> {
    let summary = tokio::task::spawn_blocking(move || flow_operators::demo::generate(&opts))
        .await
        .context("the generator stopped")??;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(0)
}

async fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::Bench(a) => bench::bench(a.into()).await,
        Command::BenchE2e(a) => bench_e2e::bench_e2e(a.into()).await,
        Command::BenchBackfill(a) => bench_backfill::bench_backfill(a.into()).await,
        Command::BenchUi(a) => bench_ui::bench_ui(a.into()).await,
        Command::BenchLoad { dags, database_url } => bench::load_only(dags, database_url).await,
        Command::BenchHeavy(a) => bench_heavy::bench_heavy(a.into()).await,
        Command::BenchMl(a) => bench_ml::bench_ml(a.into()).await,
        Command::DemoData(a) => demo_data(a.into()).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let reporting = flow_ui::telemetry::Reporting {
        log_format: flow_ui::cli::LogFormat::Text,
        service: "flow-bench".into(),
        prometheus: cli.telemetry,
    };
    flow_ui::context::run_process("flow-bench", &reporting, dispatch(cli.command))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
