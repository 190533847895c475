//! A scratch flow home per test: a DAGs folder, a database (SQLite file or a fresh PostgreSQL
//! database), and helpers to run the binary.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

pub const FLOW: &str = env!("CARGO_BIN_EXE_flow");
pub const FLOW_BENCH: &str = env!("CARGO_BIN_EXE_flow-bench");
const PG_ADDR: &str = "127.0.0.1:5432";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pg_db: Option<String>,
    pub secrets: Vec<(String, String)>,
}

/// True when PostgreSQL answers; under CI=true a missing server fails the test instead.
pub fn postgres_available() -> bool {
    let up = TcpStream::connect_timeout(&PG_ADDR.parse().unwrap(), Duration::from_secs(2)).is_ok();
    if !up {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL is not answering on {PG_ADDR}, and CI=true requires it"
        );
        eprintln!("note: PostgreSQL is not answering on {PG_ADDR}; skipping the PostgreSQL half");
    }
    up
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The S3 emulator (moto) that `scripts/test.sh` starts, with one fresh bucket for the caller;
/// None outside CI when it is not running (CI=true fails instead).
pub fn s3_bucket(prefix: &str) -> Option<(String, String)> {
    let Ok(endpoint) = std::env::var("FLOW_TEST_S3_ENDPOINT") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "FLOW_TEST_S3_ENDPOINT is not set: the S3 emulator is not running, and CI=true requires \
             it (scripts/test.sh starts it)"
        );
        eprintln!("note: no S3 emulator (run the tests with ./scripts/test.sh); skipping");
        return None;
    };
    let bucket = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
    .replace('_', "-");
    // moto checks no signature, so a plain PUT makes the bucket.
    ureq::put(format!("{endpoint}/{bucket}"))
        .send_empty()
        .unwrap_or_else(|e| panic!("cannot create bucket {bucket} at {endpoint}: {e}"));
    Some((endpoint, bucket))
}

/// Puts one object into the emulator's bucket.
pub fn s3_put(endpoint: &str, bucket: &str, key: &str, body: &[u8]) {
    ureq::put(format!("{endpoint}/{bucket}/{key}"))
        .send(body)
        .unwrap_or_else(|e| panic!("cannot put s3://{bucket}/{key}: {e}"));
}

/// An object of the emulator's bucket. Objects flow wrote belong to its (test) account, which
/// moto tells by the signature's access key alone (it checks no signature).
pub fn s3_get(endpoint: &str, bucket: &str, key: &str) -> Vec<u8> {
    ureq::get(format!("{endpoint}/{bucket}/{key}"))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00",
        )
        .call()
        .unwrap_or_else(|e| panic!("cannot get s3://{bucket}/{key}: {e}"))
        .body_mut()
        .read_to_vec()
        .unwrap()
}

/// The keys under `prefix` in the emulator's bucket, sorted.
pub fn s3_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let xml = ureq::get(format!("{endpoint}/{bucket}?list-type=2&prefix={prefix}"))
        .call()
        .unwrap_or_else(|e| panic!("cannot list s3://{bucket}/{prefix}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap();
    let mut keys: Vec<String> = xml
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .map(str::to_string)
        .collect();
    keys.sort();
    keys
}

/// True when a real Spark is there (`SPARK_HOME`, which `scripts/test.sh` sets up); under
/// CI=true a missing Spark fails the test instead.
pub fn spark_available() -> bool {
    let ok = std::env::var_os("SPARK_HOME")
        .is_some_and(|h| Path::new(&h).join("bin/spark-submit").is_file());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "SPARK_HOME does not hold bin/spark-submit, and CI=true requires Spark (scripts/test.sh \
             installs it)"
        );
        eprintln!("note: no Spark (run the tests with ./scripts/test.sh); skipping");
    }
    ok
}

/// The EMR emulator (`tests/testbed/emr_emulator.py`) that `scripts/test.sh` starts; None
/// outside CI when it is not running (CI=true fails instead).
pub fn emr_endpoint() -> Option<String> {
    match std::env::var("FLOW_TEST_EMR_ENDPOINT") {
        Ok(e) => Some(e),
        Err(_) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "FLOW_TEST_EMR_ENDPOINT is not set: the EMR emulator is not running, and CI=true \
                 requires it (scripts/test.sh starts it)"
            );
            eprintln!("note: no EMR emulator (run the tests with ./scripts/test.sh); skipping");
            None
        }
    }
}

/// One call of the EMR JSON protocol, as the AWS SDK makes it (the emulator checks no
/// signature).
pub fn emr_call(endpoint: &str, op: &str, body: Json) -> Json {
    ureq::post(format!("{endpoint}/"))
        .header("X-Amz-Target", format!("ElasticMapReduce.{op}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("EMR {op} failed: {e}"))
        .body_mut()
        .read_json()
        .unwrap()
}

/// A long-running cluster on the emulator, logging to `log_uri`.
pub fn emr_cluster(endpoint: &str, log_uri: &str) -> String {
    let out = emr_call(
        endpoint,
        "RunJobFlow",
        serde_json::json!({
            "Name": "flow-test", "ReleaseLabel": "emr-7.5.0", "LogUri": log_uri,
            "Instances": {"MasterInstanceType": "m5.xlarge", "InstanceCount": 1,
                          "KeepJobFlowAliveWhenNoSteps": true},
        }),
    );
    out["JobFlowId"].as_str().unwrap().to_string()
}

/// Every step the emulator was ever given on `cluster_id`, oldest first.
pub fn emr_steps(endpoint: &str, cluster_id: &str) -> Vec<Json> {
    let all: Json = ureq::get(format!("{endpoint}/emr-api/steps"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .filter(|s| s["cluster_id"] == cluster_id)
        .cloned()
        .collect()
}

/// A `[connections.NAME]` table for the emulator.
pub fn s3_connection(name: &str, endpoint: &str) -> String {
    format!(
        "[connections.{name}]\ntype = \"aws\"\nregion = \"us-east-1\"\nendpoint_url = \"{endpoint}\"\n\
         force_path_style = true\naccess_key_id = \"test\"\nsecret_access_key = \"{{{{ secrets.LAKE_KEY }}}}\"\n"
    )
}

impl Env {
    /// A fresh environment, or None when the database is PostgreSQL and it is not available
    /// outside CI.
    pub fn new(db: Db) -> Option<Env> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        let (db_url, pg_db) = match db {
            Db::Sqlite => (
                format!("sqlite://{}/home/flow.db", dir.path().display()),
                None,
            ),
            Db::Postgres => {
                if !postgres_available() {
                    return None;
                }
                let name = format!(
                    "flow_e2e_{}_{}_{:x}",
                    std::process::id(),
                    COUNTER.fetch_add(1, Ordering::SeqCst),
                    rand_suffix()
                );
                (format!("postgres://postgres@{PG_ADDR}/{name}"), Some(name))
            }
        };
        Some(Env {
            dir,
            db_url,
            pg_db,
            secrets: Vec::new(),
        })
    }

    /// This environment on another database (a server of the test's own, say).
    pub fn with_database_url(mut self, url: &str) -> Env {
        self.db_url = url.to_string();
        self.pg_db = None;
        self
    }

    /// Runs one SQL statement on this test's PostgreSQL database with psql (None on SQLite).
    pub fn psql(&self, sql: &str) -> Option<String> {
        let db = self.pg_db.as_ref()?;
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                db,
                "-qAt",
                "-c",
                sql,
            ])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn dags(&self) -> PathBuf {
        self.dir.path().join("dags")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn dag(&self, file: &str, yaml: &str) {
        std::fs::write(self.dags().join(file), yaml).unwrap();
    }

    pub fn config(&self, toml: &str) {
        std::fs::write(self.home().join("flow.toml"), toml).unwrap();
    }

    pub fn command(&self, args: &[&str]) -> Command {
        self.command_of(FLOW, args)
    }

    /// A command of `exe` (`flow` or `flow-bench`) with this environment's home, DAGs and
    /// database.
    pub fn command_of(&self, exe: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(exe);
        cmd.args(args)
            .current_dir(self.dir.path())
            .env_remove("FLOW_BIND")
            .env("FLOW_HOME", self.home())
            .env("FLOW_DAGS_FOLDER", self.dags())
            .env("FLOW_DATABASE_URL", &self.db_url)
            .env("FLOW_LOG", "warn")
            .stdin(Stdio::null());
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOW_SECRET_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.secrets {
            cmd.env(format!("FLOW_SECRET_{k}"), v);
        }
        cmd
    }

    pub fn flow(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs a command that must exit with `code`; returns its stdout.
    pub fn flow_ok(&self, args: &[&str], code: i32) -> String {
        let out = self.flow(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "flow {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn flow_json(&self, args: &[&str], code: i32) -> Json {
        let text = self.flow_ok(args, code);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Starts a long-running command; its stderr goes to a file in the scratch folder (a pipe
    /// nobody reads would block it once full).
    pub fn spawn(&self, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("spawned.log"))
            .unwrap();
        self.command(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Polls `runs show` until the run has ended; panics after `limit`.
    pub fn wait_run(&self, run_id: &str, limit: Duration) -> Json {
        self.wait_run_until(run_id, limit, "end", |run| {
            matches!(run["state"].as_str(), Some("success" | "failed"))
        })
    }

    /// Polls `runs show` until `reached` holds for the run; panics after `limit`, saying the
    /// run did not `what`.
    pub fn wait_run_until(
        &self,
        run_id: &str,
        limit: Duration,
        what: &str,
        reached: impl Fn(&Json) -> bool,
    ) -> Json {
        let start = Instant::now();
        loop {
            let run = self.flow_json(&["runs", "show", run_id, "--json"], 0);
            if reached(&run) {
                return run;
            }
            assert!(
                start.elapsed() < limit,
                "run {run_id} did not {what} within {limit:?}: {run:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `flow runs list` with `filters` until `done` holds for the runs, or `limit` passes;
    /// returns the last list (the caller asserts on it).
    pub fn poll_runs(
        &self,
        filters: &[&str],
        limit: Duration,
        done: impl Fn(&[Json]) -> bool,
    ) -> Vec<Json> {
        let mut args = vec!["runs", "list", "--json"];
        args.extend_from_slice(filters);
        let start = Instant::now();
        loop {
            let runs = self.flow_json(&args, 0).as_array().unwrap().clone();
            if done(&runs) || start.elapsed() > limit {
                return runs;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Every file under the home folder, read as bytes, for "no secret on disk" checks.
    pub fn home_files(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        walk(&self.home(), &mut out);
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else if let Ok(bytes) = std::fs::read(&p) {
            out.push((p, bytes));
        }
    }
}

/// A one-shot HTTP receiver on a free loopback port: it accepts one request, answers 200, and
/// hands back the request line and the body.
/// Accepts one request and answers it 200 "ok"; the thread returns its request line and body.
pub fn one_post_receiver() -> (u16, std::thread::JoinHandle<(String, String)>) {
    let (port, receiver) = http_receiver(vec![(200, "text/plain", "ok")]);
    let first = std::thread::spawn(move || receiver.join().unwrap().remove(0));
    (port, first)
}

/// Answers one request per entry of `responses` (status, content type, body), in order; the
/// thread returns each request's line (with its headers after it) and body.
pub fn http_receiver(
    responses: Vec<(u16, &'static str, &'static str)>,
) -> (u16, std::thread::JoinHandle<Vec<(String, String)>>) {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for (status, content_type, body) in responses {
            let (mut stream, _) = listener.accept().unwrap();
            let (head, got) = read_http_request(&stream).unwrap();
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
            seen.push((head, String::from_utf8(got).unwrap()));
        }
        seen
    });
    (port, receiver)
}

/// Reads one HTTP/1.1 request: its request line with the headers after it, and its body (by
/// Content-Length).
pub fn read_http_request(stream: &std::net::TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut head = String::new();
    reader.read_line(&mut head)?;
    let mut len = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v
                .trim()
                .parse()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        }
        head.push_str(&line);
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((head, body))
}

/// Waits until `path` exists; panics with `what` after `limit`.
pub fn wait_for_file(path: &Path, limit: Duration, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < limit,
            "{what}: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn rand_suffix() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    t.subsec_nanos() ^ (t.as_secs() as u32)
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(log) = std::fs::read_to_string(self.path("spawned.log"))
        {
            eprintln!("--- stderr of the processes this test started ---\n{log}");
        }
        if let Some(db) = &self.pg_db {
            // Best effort: scratch databases should not pile up on a developer's server.
            let _ = Command::new("psql")
                .args([
                    "-h",
                    "127.0.0.1",
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-q",
                    "-c",
                ])
                .arg(format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `body` once per database (the PostgreSQL half only where it is available).
pub fn each_db(body: impl Fn(Env, Db)) {
    for db in [Db::Sqlite, Db::Postgres] {
        if let Some(env) = Env::new(db) {
            body(env, db);
        }
    }
}

pub fn task<'a>(run: &'a Json, id: &str, map_index: Option<i64>) -> &'a Json {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id && t["map_index"].as_i64() == map_index)
        .unwrap_or_else(|| panic!("no task {id}[{map_index:?}] in {run:#}"))
}

/// An unmapped task's error in a run's JSON, or "" when it has none.
pub fn task_error(run: &Json, id: &str) -> String {
    task(run, id, None)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

pub fn pid_alive(pid: i32) -> bool {
    // A zombie still has a /proc entry; its state letter is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Stops a long-running `flow` process with SIGTERM, as a service manager does, and asserts that
/// it exits 0 within 20 s.
pub fn stop_gracefully(mut child: Child, what: &str) {
    use nix::sys::signal::{Signal, kill};
    kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    )
    .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0), "{what} did not shut down cleanly");
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what} ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills a process with SIGKILL (a crash: no handler runs) and reaps it.
pub fn kill_9(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The pid a task wrote to a file.
pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: not a pid: {e}", path.display()))
}
