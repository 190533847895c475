//! `flow-bench bench-e2e`: the workloads as a user sees them. A scheduler daemon (and, with
//! `--workers N`, a task-less scheduler and N workers, each in a home of its own) runs on the
//! database, and each run is `flow trigger WORKLOAD --wait` timed around the command: process
//! start, the trigger reaching the scheduler, the run, and its end reaching the waiting CLI.
//! Beside it, the same workload in-process (as `flow-bench bench`), so the difference is what
//! the trip between processes costs.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use super::bench::{percentile, run_dag, run_workload};
use super::flow_exe;

pub struct E2eOptions {
    pub postgres_url: Option<String>,
    pub workloads: Vec<String>,
    pub repeats: usize,
    pub workers: usize,
    pub parallelism: usize,
}

pub const WORKLOADS: &[&str] = &["chain40", "fan500", "map10k"];

/// The daemons of one measurement, stopped (SIGTERM, then waited for) when dropped.
pub(crate) struct Cluster {
    pub(crate) children: Vec<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for c in &mut self.children {
            // Drain so that the next measurement does not share the machine with them.
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Where a measurement's processes live and what they are told.
pub(crate) struct Site {
    pub(crate) dir: PathBuf,
    pub(crate) url: String,
    pub(crate) parallelism: usize,
}

impl Site {
    /// A process's home with its flow.toml, made before anything is timed.
    fn make_home(&self, home: &str) -> Result<()> {
        let home = self.dir.join(home);
        std::fs::create_dir_all(&home)?;
        std::fs::write(
            home.join("flow.toml"),
            format!("parallelism = {}\n", self.parallelism),
        )?;
        Ok(())
    }

    pub(crate) fn command(&self, home: &str, args: &[&str]) -> Result<Command> {
        let home = self.dir.join(home);
        let mut cmd = Command::new(flow_exe()?);
        cmd.args(args)
            .env("FLOW_HOME", &home)
            .env("FLOW_DAGS_FOLDER", self.dir.join("dags"))
            .env("FLOW_DATABASE_URL", &self.url)
            .env("FLOW_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Ok(cmd)
    }

    pub(crate) fn start(&self, workers: usize) -> Result<Cluster> {
        let log = |name: &str| -> Result<std::fs::File> {
            Ok(std::fs::File::create(self.dir.join(format!("{name}.log")))?)
        };
        self.make_home("home-cli")?;
        self.make_home("home-scheduler")?;
        let mut children = Vec::new();
        let scheduler: &[&str] = if workers == 0 {
            &["scheduler"]
        } else {
            &["scheduler", "--no-tasks"]
        };
        children.push(
            self.command("home-scheduler", scheduler)?
                .stderr(log("scheduler")?)
                .spawn()
                .context("cannot start flow scheduler")?,
        );
        for i in 0..workers {
            let name = format!("worker{i}");
            self.make_home(&format!("home-{name}"))?;
            children.push(
                self.command(&format!("home-{name}"), &["worker"])?
                    .stderr(log(&name)?)
                    .spawn()
                    .context("cannot start flow worker")?,
            );
        }
        Ok(Cluster { children })
    }

    /// `flow trigger WORKLOAD --wait`, timed around the command.
    async fn trigger(&self, workload: &str) -> Result<Duration> {
        let started = Instant::now();
        let out = self
            .command("home-cli", &["trigger", workload, "--wait"])?
            .stderr(Stdio::piped())
            .output()
            .await?;
        let wall = started.elapsed();
        if !out.status.success() {
            bail!(
                "flow trigger {workload} --wait exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(wall)
    }
}

fn median_secs(mut d: Vec<Duration>) -> (f64, f64, f64) {
    d.sort();
    let secs: Vec<f64> = d.iter().map(Duration::as_secs_f64).collect();
    (secs[0], percentile(&secs, 0.5), secs[secs.len() - 1])
}

/// One workload on one database: the in-process figure and the daemons', measured in turns.
async fn measure(
    opts: &E2eOptions,
    scratch: &Path,
    backend: &str,
    urls: &Urls,
    workload: &str,
) -> Result<()> {
    let (name, yaml) = run_dag(workload).with_context(|| {
        format!(
            "unknown workload '{workload}' (known: {})",
            WORKLOADS.join(", ")
        )
    })?;
    let inproc_dir = scratch.join(format!("inproc-{backend}-{name}"));
    std::fs::create_dir_all(&inproc_dir)?;
    let site = Site {
        dir: scratch.join(format!("e2e-{backend}-{name}")),
        url: urls.daemon.clone(),
        parallelism: opts.parallelism,
    };
    std::fs::create_dir_all(site.dir.join("dags"))?;
    std::fs::write(site.dir.join("dags").join(format!("{name}.yaml")), &yaml)?;
    let cluster = site.start(opts.workers)?;
    // The first run waits for the daemons to load the DAG and start; it is not counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match site.trigger(name).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // In turns, so that a slow minute of the machine weighs on both figures alike.
    let (mut inproc, mut e2e) = (Vec::new(), Vec::new());
    for _ in 0..opts.repeats {
        let (wall, ..) =
            run_workload(opts.parallelism, &inproc_dir, &urls.inproc, name, &yaml).await?;
        inproc.push(wall);
        e2e.push(site.trigger(name).await?);
    }
    drop(cluster);
    let (imin, imed, imax) = median_secs(inproc);
    let (emin, emed, emax) = median_secs(e2e);
    let topology = match opts.workers {
        0 => "scheduler".to_string(),
        n => format!("scheduler --no-tasks + {n} workers"),
    };
    println!(
        "| {name} | {backend} | {topology} | {imin:.3} / **{imed:.3}** / {imax:.3} | {emin:.3} / **{emed:.3}** / {emax:.3} | {:+.0} |",
        (emed - imed) * 1000.0
    );
    Ok(())
}

/// The databases of one backend: the in-process bench's and the daemons', kept apart so that
/// neither sees the other's runs.
struct Urls {
    inproc: String,
    daemon: String,
}

pub async fn bench_e2e(opts: E2eOptions) -> Result<u8> {
    let scratch = tempfile::tempdir()?;
    let mut backends = vec![(
        "sqlite",
        Urls {
            inproc: format!("sqlite://{}/inproc.db", scratch.path().display()),
            daemon: format!("sqlite://{}/e2e.db", scratch.path().display()),
        },
    )];
    let mut scratch_pg = Vec::new();
    if let Some(pg) = &opts.postgres_url {
        let base = pg.trim_end_matches('/');
        let base = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let tag = std::process::id();
        let urls = Urls {
            inproc: format!("{base}/flow_bench_inproc_{tag}"),
            daemon: format!("{base}/flow_bench_e2e_{tag}"),
        };
        scratch_pg.extend([urls.inproc.clone(), urls.daemon.clone()]);
        backends.push(("postgres", urls));
    }
    println!(
        "# flow-bench bench-e2e: {} repeat(s), parallelism {}, `flow trigger W --wait` timed around the command",
        opts.repeats, opts.parallelism
    );
    println!(
        "| workload | database | processes | in-process min / median / max (s) | CLI min / median / max (s) | CLI - in-process (ms) |"
    );
    println!("|---|---|---|---|---|---|");
    let mut outcome = Ok(());
    'all: for (backend, urls) in &backends {
        for w in &opts.workloads {
            outcome = measure(&opts, scratch.path(), backend, urls, w).await;
            if outcome.is_err() {
                break 'all;
            }
        }
    }
    for url in scratch_pg {
        let _ = flow_engine::store::drop_database(&url).await;
    }
    outcome.map(|()| 0)
}
