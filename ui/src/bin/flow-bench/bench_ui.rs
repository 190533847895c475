//! `flow-bench bench-ui`: the web server on years of history. Seeds one DAG with 100 runs, measures,
//! seeds it up to `--runs` (default 100,000) runs of 10 tasks, measures again, on SQLite and on
//! PostgreSQL. The load comes from `wrk` (Debian's package; `scripts/bench-setup.sh` installs
//! it) against a real `flow server` process, so the figures include HTTP, auth, the rate
//! limiter and the database, and the server's RSS is its own.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use flow_engine::scheduler::Engine;
use flow_engine::secrets::Secrets;
use flow_engine::state::{RunState, RunType, TaskState};
use flow_engine::store::{HistoryRun, HistoryTask, Role, RunRow, Store, TryRow};
use serde_json::json;

pub struct UiBenchOptions {
    pub postgres_url: Option<String>,
    pub runs: usize,
    pub seconds: u64,
    pub connections: usize,
}

const DAG_ID: &str = "ui_bench";
const TASKS: usize = 10;

/// Ten tasks in two layers of a daily DAG with one typed param, as a real pipeline would have.
fn dag_yaml() -> String {
    let mut y = format!(
        "id: {DAG_ID}\ndescription: history for the UI benchmark\nschedule: \"@daily\"\nstart_date: 2000-01-01\ncatchup: false\nparams:\n  region: {{ type: string, default: eu }}\ntasks:\n"
    );
    for i in 0..TASKS {
        y.push_str(&format!(
            "  t{i}:\n    operator: shell\n    command: \"true\"\n"
        ));
        if i > 0 {
            y.push_str(&format!("    depends_on: [t{}]\n", (i - 1) / 2));
        }
    }
    y
}

/// Run `n` of the history: one a day going back from `newest`; one run in 20 failed, and in those
/// one task failed once before succeeding on its retry, so the pages have retries to draw.
fn history_run(n: usize, version: &str, newest: DateTime<Utc>) -> HistoryRun {
    let logical = newest - chrono::Duration::days(n as i64);
    let queued = logical + chrono::Duration::days(1);
    let failed = n % 20 == 7;
    let mut tasks = Vec::with_capacity(TASKS);
    let mut t = queued + chrono::Duration::seconds(1);
    for i in 0..TASKS {
        let mut tries = Vec::new();
        let retried = failed && i == 3;
        if retried {
            tries.push(TryRow {
                try_number: 1,
                state: TaskState::Failed,
                started_at: t,
                ended_at: Some(t + chrono::Duration::seconds(20)),
                error: Some("command exited with code 1".into()),
            });
            t += chrono::Duration::seconds(80);
        }
        let state = if failed && i == 9 {
            TaskState::Failed
        } else {
            TaskState::Success
        };
        tries.push(TryRow {
            try_number: tries.len() as i64 + 1,
            state,
            started_at: t,
            ended_at: Some(t + chrono::Duration::seconds(30 + (n % 7) as i64 * 5)),
            error: (state == TaskState::Failed).then(|| "command exited with code 2".into()),
        });
        t += chrono::Duration::seconds(45);
        tasks.push(HistoryTask {
            task_id: format!("t{i}"),
            map_index: -1,
            state,
            output: (i == 0).then(|| json!({"rows": 1000 + n})),
            tries,
        });
    }
    HistoryRun {
        run: RunRow {
            run_id: format!("scheduled__{}", logical.format("%Y-%m-%dT%H:%M:%S%:z")),
            dag_id: DAG_ID.into(),
            dag_version: version.into(),
            run_type: RunType::Scheduled,
            state: if failed {
                RunState::Failed
            } else {
                RunState::Success
            },
            logical_date: logical,
            data_interval_start: logical,
            data_interval_end: queued,
            params: json!({"region": "eu"}),
            queued_at: queued,
            started_at: Some(queued),
            ended_at: Some(t),
        },
        tasks,
    }
}

/// Writes runs `from..to` of the history, in transactions of 1,000 runs.
async fn seed(
    store: &dyn Store,
    version: &str,
    newest: DateTime<Utc>,
    from: usize,
    to: usize,
) -> Result<()> {
    let started = Instant::now();
    let mut n = from;
    while n < to {
        let end = (n + 1000).min(to);
        let batch: Vec<HistoryRun> = (n..end).map(|i| history_run(i, version, newest)).collect();
        store.import_history(&batch).await?;
        n = end;
    }
    // What autovacuum does on its own within a minute or so of a bulk load.
    store.analyze().await?;
    eprintln!(
        "bench-ui: seeded runs {from}..{to} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(home: &Path, dags: &Path, db_url: &str, log: &Path) -> Result<Server> {
        let exe = crate::flow_exe()?;
        let child = Command::new(exe)
            .args(["server", "--bind", "127.0.0.1:0"])
            .env("FLOW_HOME", home)
            .env("FLOW_DAGS_FOLDER", dags)
            .env("FLOW_DATABASE_URL", db_url)
            .env("FLOW_LOG", "warn,flow=info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log)?))
            .spawn()
            .context("cannot start flow server")?;
        let mut server = Server {
            child,
            base: String::new(),
        };
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(rest) = text.split("flow server: listening on http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default();
                server.base = format!("http://{addr}");
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("flow server exited with {status} before listening:\n{text}");
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("flow server did not listen within 60 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// (current, peak) resident set of the server, in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                .map_or(f64::NAN, |kib| kib / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

/// What wrk printed through the script's `done` hook.
#[derive(Debug)]
struct Load {
    requests: u64,
    failures: u64,
    p50: f64,
    p95: f64,
    p99: f64,
}

/// The wrk script: the bearer token, the method and body, and a `done` hook that prints the
/// percentiles wrk's own summary leaves out (p95) on one parseable line.
fn wrk_script(method: &str, body: Option<&str>) -> String {
    let mut s = String::from(
        "wrk.headers[\"Authorization\"] = \"Bearer \" .. os.getenv(\"FLOW_BENCH_TOKEN\")\n",
    );
    s.push_str(&format!("wrk.method = \"{method}\"\n"));
    if let Some(body) = body {
        s.push_str(&format!(
            "wrk.body = '{body}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ));
    }
    s.push_str("shown = false\nresponse = function(status, headers, body)\n if status >= 400 and not shown then shown = true; io.stderr:write(status .. ' ' .. body .. '\\n') end\nend\n");
    s.push_str(
        "done = function(summary, latency, requests)\n\
         local e = summary.errors\n\
         io.write(string.format(\"FLOWBENCH %d %d %.3f %.3f %.3f\\n\", summary.requests, \
         e.connect + e.read + e.write + e.timeout + e.status, \
         latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))\n\
         end\n",
    );
    s
}

fn wrk(
    scratch: &Path,
    token: &str,
    url: &str,
    method: &str,
    body: Option<&str>,
    connections: usize,
    seconds: u64,
) -> Result<Load> {
    let script = scratch.join(format!("wrk-{method}.lua"));
    std::fs::File::create(&script)?.write_all(wrk_script(method, body).as_bytes())?;
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string(), "-d"])
        .arg(format!("{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(url)
        .env("FLOW_BENCH_TOKEN", token)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run wrk ({e}); scripts/bench-setup.sh installs it"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let first_error = String::from_utf8_lossy(&out.stderr);
    if !first_error.trim().is_empty() {
        eprintln!(
            "bench-ui: {method} {url}: first error answer: {}",
            first_error.trim()
        );
    }
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("FLOWBENCH "))
        .with_context(|| format!("wrk printed no summary for {url}:\n{text}"))?;
    let v: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| {
        v.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok(Load {
        requests: num(0) as u64,
        failures: num(1) as u64,
        p50: num(2),
        p95: num(3),
        p99: num(4),
    })
}

/// A run id from the middle of the history, to page from (keyset, not an offset).
async fn middle_run(store: &dyn Store, runs: usize) -> Result<Option<String>> {
    let page = store
        .list_runs(&flow_engine::store::RunFilter {
            dag_id: Some(DAG_ID.into()),
            limit: (runs / 2).clamp(1, 50_000) as i64,
            ..Default::default()
        })
        .await?;
    Ok(page.last().map(|r| r.run_id.clone()))
}

/// One backend's test bed: its scratch folders, database and store.
struct Bed<'a> {
    backend: &'a str,
    scratch: &'a Path,
    home: PathBuf,
    dags: PathBuf,
    db_url: &'a str,
    store: Arc<dyn Store>,
}

/// One URL under load.
struct Target {
    name: String,
    path: String,
    method: &'static str,
    body: Option<&'static str>,
    /// Concurrent clients.
    conns: usize,
}

/// What is measured: the pages and API reads of the newest runs and, when the history has a
/// middle, of 25 runs from it; then the DAG API and the trigger API.
fn targets(before: Option<&str>, connections: usize) -> Vec<Target> {
    let get = |name: &str, path: String| Target {
        name: name.to_string(),
        path,
        method: "GET",
        body: None,
        conns: connections.min(8),
    };
    let mut targets = vec![
        get("DAG page", format!("/dags/{DAG_ID}")),
        get("grid API, newest 25", format!("/api/v1/dags/{DAG_ID}/grid")),
        get(
            "runs API, newest 25",
            format!("/api/v1/runs?dag_id={DAG_ID}&limit=25"),
        ),
    ];
    if let Some(before) = before {
        let cursor =
            percent_encoding::utf8_percent_encode(before, percent_encoding::NON_ALPHANUMERIC);
        targets.push(get(
            "DAG page, 25 from the middle",
            format!("/dags/{DAG_ID}?before={cursor}"),
        ));
        targets.push(get(
            "grid API, 25 from the middle",
            format!("/api/v1/dags/{DAG_ID}/grid?before={cursor}"),
        ));
        targets.push(get(
            "runs API, 25 from the middle",
            format!("/api/v1/runs?dag_id={DAG_ID}&limit=25&before={cursor}"),
        ));
    }
    targets.push(get("DAG API", format!("/api/v1/dags/{DAG_ID}")));
    targets.push(Target {
        name: "trigger API".into(),
        path: format!("/api/v1/dags/{DAG_ID}/runs"),
        method: "POST",
        body: Some("{\"params\":{\"region\":\"us\"}}"),
        conns: connections,
    });
    targets
}

async fn measure(bed: &Bed<'_>, label: &str, runs: usize, opts: &UiBenchOptions) -> Result<()> {
    let (token, hash) = flow_engine::store::new_token();
    bed.store
        .create_token(
            &format!("bench-{label}-{}", std::process::id()),
            Role::Operator,
            &hash,
            Utc::now(),
            None,
        )
        .await?;
    let server = Server::start(
        &bed.home,
        &bed.dags,
        bed.db_url,
        &bed.scratch.join(format!("server-{label}.log")),
    )?;
    let before = middle_run(&*bed.store, runs).await?;
    for Target {
        name,
        path,
        method,
        body,
        conns,
    } in targets(before.as_deref(), opts.connections)
    {
        let load = wrk(
            bed.scratch,
            &token,
            &format!("{}{}", server.base, path),
            method,
            body,
            conns,
            opts.seconds,
        )?;
        println!(
            "| {name} | {} | {runs} | {conns} | {} | {} | {:.2} | {:.2} | {:.2} |",
            bed.backend, load.requests, load.failures, load.p50, load.p95, load.p99
        );
    }
    let (rss, peak) = server.rss_mib();
    println!(
        "| server RSS after the load | {} | {runs} | - | - | - | {rss:.1} MiB | peak {peak:.1} MiB | - |",
        bed.backend
    );
    Ok(())
}

pub async fn bench_ui(opts: UiBenchOptions) -> Result<u8> {
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is not installed; scripts/bench-setup.sh installs it (apt-get install wrk)");
    }
    let scratch = tempfile::tempdir()?;
    let mut backends: Vec<(String, String)> = vec![(
        "sqlite".into(),
        format!("sqlite://{}/ui-bench.db", scratch.path().display()),
    )];
    if let Some(pg) = &opts.postgres_url {
        backends.push(("postgres".into(), scratch_postgres(pg)));
    }
    println!(
        "# flow-bench bench-ui: {} cores, wrk -t2 for {} s per target",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        opts.seconds
    );
    println!(
        "| target | database | runs in history | connections | requests | failures | p50 (ms) | p95 (ms) | p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (i, (name, url)) in backends.iter().enumerate() {
        let dir = scratch.path().join(format!("b{i}"));
        let home: PathBuf = dir.join("home");
        let dags = dir.join("dags");
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&dags)?;
        std::fs::write(
            home.join("flow.toml"),
            // The server is measured, not its limits: the token's rate limit and the cap on
            // queued runs (which the trigger load passes in seconds) are raised out of reach.
            "max_queued_runs_per_dag = 100000000\n\n[api]\nrate_limit_per_minute = 100000000\n\
             rate_limit_burst = 1000000\n",
        )?;
        std::fs::write(dags.join(format!("{DAG_ID}.yaml")), dag_yaml())?;
        let store = flow_engine::store::connect(url).await?;
        let mut engine = Engine::new(
            store.clone(),
            Arc::new(flow_operators::registry(Default::default())),
            super::bench::bench_config(home.clone(), dags.clone(), 1),
            Secrets::default(),
        );
        engine.reload_dags().await?;
        let version = store
            .get_dag(DAG_ID)
            .await?
            .map(|d| d.version)
            .context("the benchmark DAG did not load")?;
        let newest = Utc::now() - chrono::Duration::days(1);
        let small = 100.min(opts.runs);
        let bed = Bed {
            backend: name,
            scratch: scratch.path(),
            home,
            dags,
            db_url: url,
            store: store.clone(),
        };
        seed(&*store, &version, newest, 0, small).await?;
        measure(&bed, "small", small, &opts).await?;
        seed(&*store, &version, newest, small, opts.runs).await?;
        measure(&bed, "large", opts.runs, &opts).await?;
        drop(engine);
        drop(bed);
        drop(store);
        if name == "postgres" {
            flow_engine::store::drop_database(url).await?;
        }
    }
    Ok(0)
}

/// A scratch database beside the one the user named, so that the benchmark neither reads nor
/// touches theirs: `postgres://host/db` -> `postgres://host/db_ui_bench_PID`.
fn scratch_postgres(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    format!("{base}_ui_bench_{}{query}", std::process::id())
}
