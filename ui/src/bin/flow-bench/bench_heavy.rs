//! `flow-bench bench-heavy`: the same training-set query (join, filter on a time window, aggregate per
//! user) on the `sql` operator (DataFusion, in the flow process) and on the `spark` operator in
//! local mode (spark-submit, in child processes), in one run of one DAG, on the same parquet files
//! written by `flow-bench demo-data`.
//!
//! The run is a real `flow run` child process. A sampler reads the RSS of that process and of all
//! its descendants from /proc every 50 ms; each task's peak is the largest sample within its
//! start and end: the flow process's RSS for `sql` (DataFusion runs inside it), the sum over
//! spark-submit's process tree for `spark` (the JVM and its Python workers). The two outputs are
//! read back and compared, so that the times are for the same answer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::Value as Json;

pub struct HeavyOptions {
    pub data: PathBuf,
    pub users: usize,
    pub events: usize,
    pub memory_limit: Option<String>,
}

const SPARK_JOB: &str = r#"
import sys
from pyspark.sql import SparkSession, functions as F
events, profiles, start, end, out = sys.argv[1:6]
spark = SparkSession.builder.appName("training_set").getOrCreate()
e = spark.read.parquet(events)
p = spark.read.parquet(profiles)
w = e.where((F.col("ts") >= F.to_timestamp(F.lit(start))) & (F.col("ts") < F.to_timestamp(F.lit(end))))
(w.join(p, "user_id")
  .groupBy("user_id", "age", "country", "plan")
  .agg(F.count(F.lit(1)).alias("events_30d"),
       F.sum(F.when(F.col("event_type") == "purchase", 1).otherwise(0)).alias("purchases_30d"),
       F.sum("amount").alias("revenue_30d"),
       F.sum(F.when(F.col("event_type") == "email_open", 1).otherwise(0)).alias("opens_30d"))
  .write.mode("overwrite").parquet(out))
spark.stop()
"#;

const QUERY: &str = "SELECT p.user_id, p.age, p.country, p.plan, COUNT(*) AS events_30d, \
     SUM(CASE WHEN e.event_type = 'purchase' THEN 1 ELSE 0 END) AS purchases_30d, \
     SUM(e.amount) AS revenue_30d, \
     SUM(CASE WHEN e.event_type = 'email_open' THEN 1 ELSE 0 END) AS opens_30d \
     FROM events e JOIN profiles p ON e.user_id = p.user_id \
     WHERE e.ts >= $start AND e.ts < $end \
     GROUP BY p.user_id, p.age, p.country, p.plan";

fn dag(data: &Path, out: &Path, memory_limit: Option<&str>) -> String {
    let (d, o) = (data.display(), out.display());
    let limit = memory_limit
        .map(|m| format!("    memory_limit: {m}\n"))
        .unwrap_or_default();
    format!(
        r#"id: training_set_bench
params:
  start: {{ type: string, default: "2026-01-17T00:00:00Z" }}
  end: {{ type: string, default: "2026-02-16T00:00:00Z" }}
tasks:
  sql:
    operator: sql
    sources:
      events: {{ path: "{d}/events/", format: parquet }}
      profiles: {{ path: "{d}/profiles.parquet" }}
    query: "{QUERY}"
    bind: {{ start: "{{{{ params.start }}}}", end: "{{{{ params.end }}}}" }}
    output: {{ path: "{o}/sql/", format: parquet }}
{limit}  spark:
    operator: spark
    target: local
    depends_on: [sql]
    script: training_set.py
    args: ["{d}/events/", "{d}/profiles.parquet", "{{{{ params.start }}}}", "{{{{ params.end }}}}", "{o}/spark/"]
"#
    )
}

/// RSS in KiB of every process whose parent chain reaches `root` (itself included), by pid.
fn tree_rss(root: u32) -> HashMap<u32, u64> {
    let mut parent = HashMap::new();
    let mut rss = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return rss;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let Some(pp) = field("PPid:") {
            parent.insert(pid, pp as u32);
        }
        rss.insert(pid, field("VmRSS:").unwrap_or(0));
    }
    let mut inside: HashSet<u32> = HashSet::from([root]);
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, pp) in &parent {
            if !inside.contains(pid) && inside.contains(pp) {
                inside.insert(*pid);
                grew = true;
            }
        }
    }
    rss.retain(|pid, _| inside.contains(pid));
    rss
}

struct Sample {
    at: DateTime<Utc>,
    own_kib: u64,
    children_kib: u64,
}

fn peak_mib(samples: &[Sample], from: DateTime<Utc>, to: DateTime<Utc>, own: bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at <= to)
        .map(|s| if own { s.own_kib } else { s.children_kib })
        .max()
        .unwrap_or(0) as f64
        / 1024.0
}

fn when(t: &Json, key: &str) -> Result<DateTime<Utc>> {
    let s = t[key]
        .as_str()
        .with_context(|| format!("task {} has no {key}", t["task_id"]))?;
    Ok(DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc))
}

/// Rows and column totals of a parquet folder, through DataFusion, to compare the two answers.
async fn digest(path: &Path) -> Result<Json> {
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_parquet(
        "t",
        &path.display().to_string(),
        datafusion::prelude::ParquetReadOptions::default(),
    )
    .await?;
    let df = ctx
        .sql(
            "SELECT COUNT(*) AS users, SUM(events_30d) AS events, SUM(purchases_30d) AS purchases, \
             ROUND(SUM(revenue_30d), 2) AS revenue, SUM(opens_30d) AS opens FROM t",
        )
        .await?;
    let batches = df.collect().await?;
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::ArrayWriter::new(&mut buf);
        for b in &batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    let rows: Json = serde_json::from_slice(&buf)?;
    Ok(rows[0].clone())
}

/// A finished `flow run` of a benchmark DAG with the memory samples taken while it ran.
pub struct Measured {
    pub run: Json,
    samples: Vec<Sample>,
}

impl Measured {
    /// A task's wall time in seconds and its peak RSS in MiB: the flow process's (`own`, for
    /// work done inside it) or its child processes' (a spark-submit).
    pub fn task(&self, id: &str, own: bool) -> Result<(f64, f64)> {
        let t = self.run["tasks"]
            .as_array()
            .context("no tasks")?
            .iter()
            .find(|t| t["task_id"] == id)
            .with_context(|| format!("no task {id}"))?;
        let (from, to) = (when(t, "started_at")?, when(t, "ended_at")?);
        let secs = (to - from).num_milliseconds() as f64 / 1000.0;
        Ok((secs, peak_mib(&self.samples, from, to, own)))
    }

    /// The flow process's peak RSS over the whole run, in MiB.
    pub fn peak_mib(&self) -> f64 {
        self.samples.iter().map(|s| s.own_kib).max().unwrap_or(0) as f64 / 1024.0
    }
}

/// Runs `flow run DAG --json` in a child process (home under `work`, DAGs from `dags`) while a
/// sampler reads the RSS of it and its descendants every 50 ms (see the module's note).
pub async fn run_measured(work: &Path, dags: &Path, dag: &str) -> Result<Measured> {
    let home = work.join("home");
    let exe = crate::flow_exe()?;
    let mut child = std::process::Command::new(&exe)
        .args(["run", dag, "--json"])
        .env("FLOW_HOME", &home)
        .env("FLOW_DAGS_FOLDER", dags)
        .env_remove("FLOW_DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("cannot start flow run")?;
    let pid = child.id();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (samples, done) = (samples.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let tree = tree_rss(pid);
                let own = tree.get(&pid).copied().unwrap_or(0);
                let children: u64 = tree
                    .iter()
                    .filter(|(p, _)| **p != pid)
                    .map(|(_, k)| k)
                    .sum();
                if let Ok(mut s) = samples.lock() {
                    s.push(Sample {
                        at: Utc::now(),
                        own_kib: own,
                        children_kib: children,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let output = tokio::task::spawn_blocking(move || {
        let mut stdout = String::new();
        if let Some(mut s) = child.stdout.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut stdout);
        }
        child.wait().map(|status| (status, stdout))
    })
    .await??;
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = sampler.join();
    let (status, stdout) = output;
    let run: Json = serde_json::from_str(&stdout)
        .with_context(|| format!("flow run printed no run JSON (exit {status}): {stdout}"))?;
    if run["state"] != "success" {
        bail!(
            "the benchmark run did not succeed; see {}/logs: {run:#}",
            home.display()
        );
    }
    let samples = std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("sampler"))?);
    Ok(Measured { run, samples })
}

pub async fn bench_heavy(opts: HeavyOptions) -> Result<u8> {
    let spark_home = std::env::var_os("SPARK_HOME")
        .context("SPARK_HOME is not set: source scripts/testbed.sh (testbed_install) first")?;
    if !Path::new(&spark_home).join("bin/spark-submit").is_file() {
        bail!("SPARK_HOME has no bin/spark-submit");
    }
    let data = opts.data.clone();
    let marker = data.join(format!("bench-{}-{}.json", opts.users, opts.events));
    if !marker.is_file() {
        eprintln!(
            "generating {} users and {} events into {} ...",
            opts.users,
            opts.events,
            data.display()
        );
        let started = Instant::now();
        let gen_opts = flow_operators::demo::DemoOptions {
            out: data.clone(),
            users: opts.users,
            events: opts.events,
            seed: 42,
            start: chrono::NaiveDate::from_ymd_opt(2026, 1, 1).context("date")?,
            days: 60,
        };
        let summary =
            tokio::task::spawn_blocking(move || flow_operators::demo::generate(&gen_opts))
                .await??;
        eprintln!("  done in {:.1} s", started.elapsed().as_secs_f64());
        std::fs::write(&marker, serde_json::to_string_pretty(&summary)?)?;
    }

    let work = tempfile::tempdir()?;
    let dags = work.path().join("dags");
    let out = work.path().join("out");
    std::fs::create_dir_all(&dags)?;
    std::fs::write(dags.join("training_set.py"), SPARK_JOB)?;
    std::fs::write(
        dags.join("training_set.yaml"),
        dag(&data, &out, opts.memory_limit.as_deref()),
    )?;
    let measured = run_measured(work.path(), &dags, "training_set_bench").await?;
    let mut rows = Vec::new();
    for (id, own) in [("sql", true), ("spark", false)] {
        let (secs, mib) = measured.task(id, own)?;
        rows.push((id, secs, mib));
    }
    let sql_digest = digest(&out.join("sql")).await?;
    let spark_digest = digest(&out.join("spark")).await?;
    let same = sql_digest == spark_digest;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "training set over {} events x {} profiles (30-day window), {cores} cores:",
        opts.events, opts.users
    );
    println!("| engine | wall time (s) | peak RSS (MiB) |");
    println!("|---|---|---|");
    for (id, secs, mib) in &rows {
        let name = if *id == "sql" {
            "sql (DataFusion, in the flow process)"
        } else {
            "spark target local (spark-submit, local[*])"
        };
        println!("| {name} | {secs:.2} | {mib:.0} |");
    }
    println!(
        "ratio: DataFusion {:.1}x faster, {:.1}x less memory",
        rows[1].1 / rows[0].1.max(1e-9),
        rows[1].2 / rows[0].2.max(1e-9)
    );
    println!("answers: sql {sql_digest}, spark {spark_digest}; equal: {same}");
    if !same {
        bail!("the two engines' answers differ");
    }
    Ok(0)
}
