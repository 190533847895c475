//! `flow bench`: scheduling overhead on the workloads Airflow was measured on
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

/// A realistic small DAG, numbered, for the 1,000-files load.
fn generated(i: usize) -> String {
    format!(
        "id: generated_{i:04}\ndescription: generated DAG {i}\nschedule: \"{m} {h} * * *\"\nstart_date: 2026-01-01\ntimezone: Europe/Amsterdam\nparams:\n  region: {{ type: string, default: eu }}\ndefaults:\n  retries: 2\n  retry_delay: 30s\ntasks:\n  extract:\n    operator: shell\n    command: echo extract {{{{ ds }}}} {{{{ params.region }}}}\n  transform:\n    operator: shell\n    depends_on: [extract]\n    command: echo transform {{{{ ds }}}}\n  load:\n    operator: shell\n    depends_on: [transform]\n    command: echo load\n",
        m = i % 60,
        h = i % 24
    )
}

struct Measured {
    workload: &'static str,
    backend: String,
    tasks: usize,
    wall: Vec<Duration>,
    latency_ms: Option<(f64, f64)>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn run_workload(
    parallelism: usize,
    dir: &Path,
    db_url: &str,
    workload: &'static str,
    yaml: &str,
) -> Result<(Duration, usize, Vec<f64>, String)> {
    let dags = dir.join("dags");
    std::fs::create_dir_all(&dags)?;
    for entry in std::fs::read_dir(&dags)? {
        std::fs::remove_file(entry?.path())?;
    }
    std::fs::write(dags.join(format!("{workload}.yaml")), yaml)?;
    let store = flow_engine::store::connect(db_url).await?;
    let backend = store.backend().to_string();
    let config = EngineConfig {
        home: dir.join("home"),
        dags_folder: dags,
        parallelism,
        pools: Default::default(),
        lease_timeout: Duration::from_secs(30),
        base_url: "http://127.0.0.1:8080".into(),
        default_webhook: None,
    };
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
    let run = trigger(store.as_ref(), &dag, &Default::default(), None).await?;
    let state = engine
        .run(Mode::Single(run.run_id.clone()), CancellationToken::new())
        .await?;
    let wall = started.elapsed();
    if state != Some(RunState::Success) {
        bail!("{workload} on {backend} ended {state:?}");
    }
    let tis = store.task_instances(&run.run_id).await?;
    let latencies = edge_latencies(&dag, &tis);
    Ok((wall, tis.len(), latencies, backend))
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
    let config = EngineConfig {
        home,
        dags_folder: dags,
        parallelism: default_parallelism(),
        pools: Default::default(),
        lease_timeout: Duration::from_secs(30),
        base_url: String::new(),
        default_webhook: None,
    };
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
        "# flow bench: {cores} cores, parallelism {}, {} repeat(s), durable commits",
        opts.parallelism, opts.repeats
    );
    println!(
        "| workload | database | tasks | wall min / median / max (s) | per task (ms) | task-to-task median / p95 (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    for (name, url) in &backends {
        for w in &opts.workloads {
            let (workload, yaml): (&'static str, String) = match w.as_str() {
                "chain40" => ("chain40", chain40()),
                "fan500" => ("fan500", fan500()),
                "map10k" => ("map10k", map10k()),
                "dags1000" => {
                    let (n, secs, kib) = dags1000(scratch.path(), url).await?;
                    println!(
                        "| dags1000 (load + validate + record) | {name} | {n} DAGs | {secs:.3} | - | peak RSS {:.1} MiB |",
                        kib as f64 / 1024.0
                    );
                    continue;
                }
                other => bail!(
                    "unknown workload '{other}' (known: {})",
                    WORKLOADS.join(", ")
                ),
            };
            let mut m = Measured {
                workload,
                backend: name.clone(),
                tasks: 0,
                wall: Vec::new(),
                latency_ms: None,
            };
            let mut all_lat = Vec::new();
            for _ in 0..opts.repeats {
                let (wall, tasks, lat, backend) =
                    run_workload(opts.parallelism, scratch.path(), url, workload, &yaml).await?;
                m.backend = backend;
                m.tasks = tasks;
                m.wall.push(wall);
                all_lat.extend(lat);
            }
            all_lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
            if !all_lat.is_empty() {
                m.latency_ms = Some((percentile(&all_lat, 0.5), percentile(&all_lat, 0.95)));
            }
            m.wall.sort();
            let secs: Vec<f64> = m.wall.iter().map(|d| d.as_secs_f64()).collect();
            let median = percentile(&secs, 0.5);
            println!(
                "| {} | {} | {} | {:.3} / **{:.3}** / {:.3} | {:.2} | {} |",
                m.workload,
                m.backend,
                m.tasks,
                secs[0],
                median,
                secs[secs.len() - 1],
                median * 1000.0 / m.tasks.max(1) as f64,
                m.latency_ms
                    .map(|(p50, p95)| format!("{p50:.2} / {p95:.2}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    Ok(0)
}
