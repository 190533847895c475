//! `flow-bench bench-backfill`: a 10-year daily backfill (3,650 intervals by default) through
//! `flow backfill` against a scheduler daemon, as a user runs it. While it runs, the bench reads
//! the backfill's progress from the database every 100 ms and keeps the most runs it saw
//! created but not ended (queued or running): the sliding window's bound. Beside the default
//! window, the same backfill with a window as large as the backfill (every run created at
//! once, as `flow backfill` did before issue 23) shows what the window costs and saves.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{Duration as Days, NaiveDate};
use flow_engine::store::Store;

use super::bench_e2e::Site;

pub struct BackfillOptions {
    pub postgres_url: Option<String>,
    pub days: u32,
    /// Windows to measure; 0 stands for the default (100, or the DAG's max_active_runs).
    pub windows: Vec<u32>,
    pub parallelism: usize,
}

const DAG: &str = "backfill_daily";

/// One daily shell task, `max_active_runs` at its default (16): the window bounds how many
/// runs exist unfinished, the DAG how many of them run.
fn dag_yaml(first: NaiveDate, end: NaiveDate) -> String {
    format!(
        "id: {DAG}\nschedule: \"@daily\"\nstart_date: {first}\nend_date: {end}\ntasks:\n  t:\n    operator: shell\n    command: \"true\"\n"
    )
}

/// What one backfill measured.
struct Measured {
    wall: Duration,
    create: Duration,
    created_at_once: usize,
    max_unfinished: i64,
    succeeded: i64,
    scheduler_cpu: Duration,
    scheduler_peak_mib: f64,
}

/// User + system CPU of a process, from /proc (in USER_HZ ticks, 100 a second on Linux).
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name and state.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

fn peak_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// `flow backfill`, retried while the scheduler has not yet recorded the DAG; the ids it
/// printed (the runs it created at once).
async fn start_backfill(site: &Site, args: &[String]) -> Result<(Duration, usize)> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let out = site
            .command("home-cli", &args)?
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .await?;
        let took = started.elapsed();
        if out.status.success() {
            return Ok((took, String::from_utf8_lossy(&out.stdout).lines().count()));
        }
        if Instant::now() > deadline {
            bail!(
                "flow backfill exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Follows the backfill until every run it made has ended; the most unfinished runs seen.
async fn follow(store: &dyn Store, pid: u32) -> Result<(i64, i64)> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut max_unfinished = 0;
    loop {
        let backfill = store.list_backfills(Some(DAG)).await?.into_iter().next();
        if let Some(b) = backfill {
            let p = store.backfill_progress(&b.id).await?;
            max_unfinished = max_unfinished.max(p.active());
            if b.state != "running" && p.active() == 0 {
                if p.failed > 0 {
                    bail!("{} run(s) of the backfill failed", p.failed);
                }
                return Ok((max_unfinished, p.success));
            }
        }
        if Instant::now() > deadline {
            bail!("the backfill did not end within an hour");
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            bail!("the scheduler stopped during the backfill");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn measure(opts: &BackfillOptions, dir: &Path, url: &str, window: u32) -> Result<Measured> {
    let first = NaiveDate::from_ymd_opt(2016, 1, 1).expect("a date");
    let last = first + Days::days(i64::from(opts.days) - 1);
    let site = Site {
        dir: dir.to_path_buf(),
        url: url.to_string(),
        parallelism: opts.parallelism,
    };
    std::fs::create_dir_all(site.dir.join("dags"))?;
    std::fs::write(
        site.dir.join("dags").join(format!("{DAG}.yaml")),
        dag_yaml(first, last + Days::days(1)),
    )?;
    // The DAG ends the day after the backfill, so the one run the scheduler makes of its own
    // (catchup is off: the latest interval) is not one of the backfill's.
    let cluster = site.start(0)?;
    let pid = cluster.children[0]
        .id()
        .context("the scheduler has no pid")?;
    let store = flow_engine::store::connect(url).await?;
    let mut args: Vec<String> = ["backfill", DAG, "--from"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend([first.to_string(), "--to".into(), last.to_string()]);
    if window > 0 {
        args.extend(["--max-active-runs".into(), window.to_string()]);
    }
    let cpu_before = process_cpu(pid);
    let started = Instant::now();
    let (create, created_at_once) = start_backfill(&site, &args).await?;
    let (max_unfinished, succeeded) = follow(store.as_ref(), pid).await?;
    let wall = started.elapsed();
    let measured = Measured {
        wall,
        create,
        created_at_once,
        max_unfinished,
        succeeded,
        scheduler_cpu: process_cpu(pid).saturating_sub(cpu_before),
        scheduler_peak_mib: peak_mib(pid),
    };
    drop(cluster);
    Ok(measured)
}

pub async fn bench_backfill(opts: BackfillOptions) -> Result<u8> {
    let scratch = tempfile::tempdir()?;
    let mut backends = vec![("SQLite", None)];
    if let Some(pg) = &opts.postgres_url {
        let base = pg.trim_end_matches('/');
        let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
        backends.push(("PostgreSQL", Some(base.to_string())));
    }
    println!(
        "# flow-bench bench-backfill: {} daily intervals, parallelism {}, `flow backfill` against `flow scheduler`",
        opts.days, opts.parallelism
    );
    println!(
        "| database | window | `flow backfill` (s) | runs created at once | most runs unfinished | runs succeeded | wall (s) | runs/s | scheduler CPU per run (ms) | scheduler peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (backend, pg_base) in &backends {
        for (i, &window) in opts.windows.iter().enumerate() {
            let dir = scratch.path().join(format!("{backend}-{i}"));
            let (url, scratch_db) = match pg_base {
                None => (format!("sqlite://{}/flow.db", dir.display()), None),
                Some(base) => {
                    let url = format!("{base}/flow_bench_backfill_{}_{i}", std::process::id());
                    (url.clone(), Some(url))
                }
            };
            std::fs::create_dir_all(&dir)?;
            let outcome = measure(&opts, &dir, &url, window).await;
            if let Some(db) = scratch_db {
                let _ = flow_engine::store::drop_database(&db).await;
            }
            let m = outcome?;
            let label = if window == 0 {
                "default (100)".to_string()
            } else {
                window.to_string()
            };
            println!(
                "| {backend} | {label} | {:.3} | {} | **{}** | {} | {:.1} | {:.0} | {:.2} | {:.0} |",
                m.create.as_secs_f64(),
                m.created_at_once,
                m.max_unfinished,
                m.succeeded,
                m.wall.as_secs_f64(),
                m.succeeded as f64 / m.wall.as_secs_f64(),
                m.scheduler_cpu.as_secs_f64() * 1000.0 / m.succeeded.max(1) as f64,
                m.scheduler_peak_mib,
            );
        }
    }
    Ok(0)
}
