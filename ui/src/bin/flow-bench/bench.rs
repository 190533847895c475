//! `flow-bench bench`: scheduling overhead on the workloads Airflow was measured on
//! (`../shared/bench/airflow`), on SQLite and PostgreSQL, with durable commits.
//!
//! Each workload runs in-process through the same engine as `flow run` (claims, leases, logs,
//! every state change committed), so the figures are the engine's own overhead plus the cost of
//! starting `true` as a child process per task.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use flow_engine::scheduler::{Engine, EngineConfig, Mode, default_parallelism, trigger};
use flow_engine::secrets::Secrets;
use flow_engine::state::RunState;
use tokio_util::sync::CancellationToken;

pub struct BenchOptions {
    pub parallelism: usize,
    pub postgres_url: Option<String>,
    pub workloads: Vec<String>,
    pub repeats: usize,
}

pub const WORKLOADS: &[&str] = &["chain40", "fan500", "map10k", "dags1000"];

fn chain40() -> String {
    let mut y = String::from("id: chain40\ntasks:\n");
    for i in 0..40 {
        y.push_str(&format!(
            "  t{i:02}:\n    operator: shell\n    command: \"true\"\n"
        ));
        if i > 0 {
            y.push_str(&format!("    depends_on: [t{:02}]\n", i - 1));
        }
    }
    y
}

fn fan500() -> String {
    let mut y =
        String::from("id: fan500\ntasks:\n  start: { operator: shell, command: \"true\" }\n");
    for i in 0..500 {
        y.push_str(&format!(
            "  f{i:03}: {{ operator: shell, command: \"true\", depends_on: [start] }}\n"
        ));
    }
    y.push_str("  join:\n    operator: shell\n    command: \"true\"\n    depends_on: [");
    y.push_str(
        &(0..500)
            .map(|i| format!("f{i:03}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    y.push_str("]\n");
    y
}

fn map10k() -> String {
    "id: map10k\ntasks:\n  items:\n    operator: shell\n    command: |\n      echo '{\"n\": 10000}' > \"$FLOW_OUTPUT\"\n  each:\n    operator: shell\n    depends_on: [items]\n    for_each: \"{{ range(tasks.items.output.n) | list }}\"\n    command: \"true\"\n".to_string()
}

/// The DAG of a workload measured by running it (every one but dags1000, which loads).
pub(crate) fn run_dag(workload: &str) -> Option<(&'static str, String)> {
    Some(match workload {
        "chain40" => ("chain40", chain40()),
        "fan500" => ("fan500", fan500()),
        "map10k" => ("map10k", map10k()),
        _ => return None,
    })
}

/// A realistic small DAG, numbered, for the 1,000-files load.
fn generated(i: usize) -> String {
    format!(
        "id: generated_{i:04}\ndescription: generated DAG {i}\nschedule: \"{m} {h} * * *\"\nstart_date: 2026-01-01\ntimezone: Europe/Amsterdam\nparams:\n  region: {{ type: string, default: eu }}\ndefaults:\n  retries: 2\n  retry_delay: 30s\ntasks:\n  extract:\n    operator: shell\n    command: echo extract {{{{ ds }}}} {{{{ params.region | shell_quote }}}}\n  transform:\n    operator: shell\n    depends_on: [extract]\n    command: echo transform {{{{ ds }}}}\n  load:\n    operator: shell\n    depends_on: [transform]\n    command: echo load\n",
        m = i % 60,
        h = i % 24
    )
}

struct Measured {
    workload: &'static str,
    backend: String,
    tasks: usize,
    wall: Vec<Duration>,
    /// This process's CPU per run (see [`own_cpu`]).
    cpu: Vec<Duration>,
    latency_ms: Option<(f64, f64)>,
}

/// User + system CPU this process has used, its children's not: the engine's own cost, apart
/// from the tasks' processes and a PostgreSQL server (SQLite runs in the process, so it counts).
/// Less sensitive than wall time to what a machine charges for starting a process.
fn own_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = u.user_time() + u.system_time();
            Duration::from_secs(t.tv_sec().max(0) as u64)
                + Duration::from_micros(t.tv_usec().max(0) as u64)
        })
        .unwrap_or_default()
}

/// What the machine charges for the two things every task costs whatever the engine does, so
/// that figures from different machines can be set side by side: starting and reaping
/// `/bin/sh -c true` (median of 200, one after another), and a durable 4 KiB write (median of
/// 50 writes + fdatasync in the scratch folder). Milliseconds.
fn machine_costs(dir: &Path) -> Result<(f64, f64)> {
    use std::io::Write;
    let mut starts = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        let status = std::process::Command::new("/bin/sh")
            .args(["-c", "true"])
            .status()
            .context("cannot start /bin/sh")?;
        if !status.success() {
            bail!("/bin/sh -c true exited {status}");
        }
        starts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let mut file = std::fs::File::create(dir.join("fsync-probe"))?;
    let block = [7u8; 4096];
    let mut syncs = Vec::with_capacity(50);
    for _ in 0..50 {
        let t = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        syncs.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop(file);
    std::fs::remove_file(dir.join("fsync-probe"))?;
    starts.sort_by(f64::total_cmp);
    syncs.sort_by(f64::total_cmp);
    Ok((percentile(&starts, 0.5), percentile(&syncs, 0.5)))
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// The engine's settings in every bench: durable commits, no webhook, local logs.
pub(crate) fn bench_config(home: PathBuf, dags: PathBuf, parallelism: usize) -> EngineConfig {
    EngineConfig {
        home,
        dags_folder: dags,
        parallelism,
        pools: Default::default(),
        lease_timeout: Duration::from_secs(30),
        poll_interval: flow_engine::scheduler::DEFAULT_POLL,
        base_url: "http://127.0.0.1:8080".into(),
        default_webhook: None,
        stuck_queued: None,
        remote_logs: None,
    }
}

/// One run of a workload: wall time, this process's CPU, tasks, task-to-task latencies, backend.
pub(crate) async fn run_workload(
    parallelism: usize,
    dir: &Path,
    db_url: &str,
    workload: &'static str,
    yaml: &str,
) -> Result<(Duration, Duration, usize, Vec<f64>, String)> {
    let dags = dir.join("dags");
    std::fs::create_dir_all(&dags)?;
    for entry in std::fs::read_dir(&dags)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::write(dags.join(format!("{workload}.yaml")), yaml)?;
    let store = flow_engine::store::connect(db_url).await?;
    let backend = store.backend().to_string();
    let config = bench_config(dir.join("home"), dags, parallelism);
    let mut engine = Engine::new(
        store.clone(),
        Arc::new(flow_operators::registry(Default::default())),
        config,
        Secrets::default(),
    );
    engine.reload_dags().await?;
    let dag = engine
        .dags()
        .find(|d| d.id == workload)
        .cloned()
        .context("the generated DAG did not load")?;
    let started = Instant::now();
    let cpu_before = own_cpu();
    let run = trigger(store.as_ref(), &dag, &Default::default(), None).await?;
    let state = engine
        .run(Mode::Single(run.run_id.clone()), CancellationToken::new())
        .await?;
    let wall = started.elapsed();
    let cpu = own_cpu().saturating_sub(cpu_before);
    if state != Some(RunState::Success) {
        bail!("{workload} on {backend} ended {state:?}");
    }
    let tis = store.task_instances(&run.run_id).await?;
    let latencies = edge_latencies(&dag, &tis);
    Ok((wall, cpu, tis.len(), latencies, backend))
}

/// Upstream end -> downstream start, in milliseconds, for every edge of the run.
fn edge_latencies(dag: &flow_engine::dag::Dag, tis: &[flow_engine::store::TiRow]) -> Vec<f64> {
    let mut out = Vec::new();
    for t in tis {
        let Some(task) = dag.task(&t.task_id) else {
            continue;
        };
        let Some(start) = t.started_at else { continue };
        // The last upstream to end is the one that released this task.
        let released = tis
            .iter()
            .filter(|u| task.depends_on.contains(&u.task_id))
            .filter_map(|u| u.ended_at)
            .max();
        if let Some(end) = released {
            out.push((start - end).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    out
}

fn rss_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The hidden `bench-load` command: a fresh process that loads, validates and records a folder
/// of DAGs the way the scheduler does at start, then reports time and peak memory.
pub async fn load_only(dags: PathBuf, db_url: String) -> Result<u8> {
    let store = flow_engine::store::connect(&db_url).await?;
    let home = dags.parent().unwrap_or(Path::new(".")).join("home-load");
    let config = bench_config(home, dags, default_parallelism());
    let mut engine = Engine::new(
        store,
        Arc::new(flow_operators::registry(Default::default())),
        config,
        Secrets::default(),
    );
    let started = Instant::now();
    let loaded = engine.reload_dags().await?;
    let elapsed = started.elapsed();
    println!(
        "{} {} {}",
        loaded.dags.len(),
        elapsed.as_secs_f64(),
        rss_kib("VmHWM:").unwrap_or(0)
    );
    Ok(0)
}

async fn dags1000(dir: &Path, db_url: &str) -> Result<(usize, f64, u64)> {
    let dags = dir.join("dags1000");
    std::fs::create_dir_all(&dags)?;
    for i in 0..1000 {
        std::fs::write(dags.join(format!("generated_{i:04}.yaml")), generated(i))?;
    }
    let exe = std::env::current_exe()?;
    let out = tokio::process::Command::new(exe)
        .arg("bench-load")
        .arg(&dags)
        .arg(db_url)
        .env("FLOW_LOG", "error")
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "bench-load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut parts = text.split_whitespace();
    let n: usize = parts.next().context("no count")?.parse()?;
    let secs: f64 = parts.next().context("no time")?.parse()?;
    let kib: u64 = parts.next().context("no rss")?.parse()?;
    if n != 1000 {
        bail!("only {n} of 1000 generated DAGs loaded");
    }
    Ok((n, secs, kib))
}

pub async fn bench(opts: BenchOptions) -> Result<u8> {
    let scratch = tempfile::tempdir()?;
    let mut backends: Vec<(String, String)> = vec![(
        "sqlite".into(),
        format!("sqlite://{}/bench.db", scratch.path().display()),
    )];
    if let Some(pg) = &opts.postgres_url {
        backends.push(("postgres".into(), pg.clone()));
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "# flow-bench bench: {cores} cores, parallelism {}, {} repeat(s), durable commits",
        opts.parallelism, opts.repeats
    );
    let (start_ms, sync_ms) = machine_costs(scratch.path())?;
    println!(
        "# machine: /bin/sh -c true starts and ends in {start_ms:.2} ms, a 4 KiB write + fdatasync takes {sync_ms:.2} ms (medians)"
    );
    println!(
        "| workload | database | tasks | wall min / median / max (s) | per task (ms) | task-to-task median / p95 (ms) | flow's CPU per task (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, url) in &backends {
        for w in &opts.workloads {
            let (workload, yaml): (&'static str, String) = match w.as_str() {
                "dags1000" => {
                    let (n, secs, kib) = dags1000(scratch.path(), url).await?;
                    println!(
                        "| dags1000 (load + validate + record) | {name} | {n} DAGs | {secs:.3} | - | peak RSS {:.1} MiB | - |",
                        kib as f64 / 1024.0
                    );
                    continue;
                }
                other => run_dag(other).with_context(|| {
                    format!(
                        "unknown workload '{other}' (known: {})",
                        WORKLOADS.join(", ")
                    )
                })?,
            };
            let m = repeat(&opts, scratch.path(), url, workload, &yaml).await?;
            m.print();
        }
    }
    Ok(0)
}

/// Runs one workload `opts.repeats` times on one database.
async fn repeat(
    opts: &BenchOptions,
    scratch: &Path,
    url: &str,
    workload: &'static str,
    yaml: &str,
) -> Result<Measured> {
    let mut m = Measured {
        workload,
        backend: String::new(),
        tasks: 0,
        wall: Vec::new(),
        cpu: Vec::new(),
        latency_ms: None,
    };
    let mut all_lat = Vec::new();
    for _ in 0..opts.repeats {
        let (wall, cpu, tasks, lat, backend) =
            run_workload(opts.parallelism, scratch, url, workload, yaml).await?;
        m.backend = backend;
        m.tasks = tasks;
        m.wall.push(wall);
        m.cpu.push(cpu);
        all_lat.extend(lat);
    }
    all_lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if !all_lat.is_empty() {
        m.latency_ms = Some((percentile(&all_lat, 0.5), percentile(&all_lat, 0.95)));
    }
    m.wall.sort();
    Ok(m)
}

impl Measured {
    /// The workload's row of the table.
    fn print(&self) {
        let secs: Vec<f64> = self.wall.iter().map(|d| d.as_secs_f64()).collect();
        let median = percentile(&secs, 0.5);
        let mut cpu: Vec<f64> = self.cpu.iter().map(|d| d.as_secs_f64()).collect();
        cpu.sort_by(f64::total_cmp);
        println!(
            "| {} | {} | {} | {:.3} / **{:.3}** / {:.3} | {:.2} | {} | {:.2} |",
            self.workload,
            self.backend,
            self.tasks,
            secs[0],
            median,
            secs[secs.len() - 1],
            median * 1000.0 / self.tasks.max(1) as f64,
            self.latency_ms
                .map(|(p50, p95)| format!("{p50:.2} / {p95:.2}"))
                .unwrap_or_else(|| "-".into()),
            percentile(&cpu, 0.5) * 1000.0 / self.tasks.max(1) as f64
        );
    }
}
