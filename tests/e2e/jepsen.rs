//! Proof, Jepsen style (issue 21, point 6). PostgreSQL, 2 planning schedulers, 3 workers and 1
//! server run as separate processes with homes of their own, as on separate hosts; 50 runs of a
//! DAG whose tries append to an outside ledger; a scheduler killed -9, a worker killed -9 with
//! its tasks (as a container or host that dies), both restarted, and PostgreSQL restarted, at
//! random moments. Then the ledger is checked against what the database recorded: no try ran
//! twice, nothing ran that the database does not know of, every successful try ran exactly once
//! and to its end, every run ended, and the cluster-wide pool was never exceeded.
//!
//! The longer version is `scripts/chaos.sh` (RELIABILITY.md).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::api_server::{Server, token, trigger};
use crate::harness::*;
use crate::private_pg::PrivatePg;

const POOL: usize = 2;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A process of the cluster with a home of its own (a "host"), its stderr kept in the test's
/// folder.
fn spawn_in(env: &Env, home: &str, args: &[&str]) -> Child {
    let dir = env.path(home);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(env.home().join("flow.toml"), dir.join("flow.toml")).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(env.path(&format!("{home}.err")))
        .unwrap();
    env.command(args)
        .env("FLOW_HOME", &dir)
        .env("FLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The pids whose parent is `pid` (a worker's tries run as its children, each in a process
/// group of its own).
fn children_of(pid: u32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so read after its last `)`.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid)
            && let Ok(child) = entry.file_name().to_string_lossy().parse()
        {
            out.push(child);
        }
    }
    out
}

/// Kills a worker as a dying container kills it: the worker and every task it started, at
/// once (stopped first, so that it starts nothing meanwhile).
fn kill_host(worker: &mut Child) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(worker.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    let groups = children_of(worker.id());
    kill(pid, Signal::SIGKILL).unwrap();
    let _ = worker.wait();
    for g in groups {
        let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
    }
}

fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-AtXq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// One line of the ledger: `RUN TASK MAP_INDEX TRY start|end NS WORKER_PID`.
#[derive(Debug)]
struct Entry {
    try_id: String,
    what: String,
    at: u128,
    worker: u32,
}

fn read_ledger(path: &Path) -> Vec<Entry> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(f.len(), 7, "a torn ledger line: {line:?}");
            Entry {
                try_id: f[..4].join(" "),
                what: f[4].to_string(),
                at: f[5].parse().unwrap(),
                worker: f[6].parse().unwrap(),
            }
        })
        .collect()
}

/// The most tries that ran at once, from their spans; a try without an end ran until its
/// worker was killed.
fn most_at_once(
    spans: &BTreeMap<String, (u128, Option<u128>, u32)>,
    kills: &[(u32, u128)],
) -> usize {
    let mut edges: Vec<(u128, i32)> = Vec::new();
    for (start, end, worker) in spans.values() {
        let end = end.unwrap_or_else(|| {
            kills
                .iter()
                .find(|(pid, _)| pid == worker)
                .map(|(_, at)| *at)
                .unwrap_or_else(|| {
                    panic!("a try of worker {worker} never ended, and it was not killed")
                })
        });
        edges.push((*start, 1));
        edges.push((end, -1));
    }
    // Ends before starts at the same instant.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        most = most.max(now);
    }
    most as usize
}

/// How hard a chaos run is: `rounds` times a scheduler killed, a worker's host killed, both
/// restarted, and PostgreSQL stopped for `outage`.
struct Chaos {
    runs: usize,
    rounds: usize,
    outage: Duration,
}

/// What a chaos run saw, for RELIABILITY.md.
struct Seen {
    tries: usize,
    orphaned: usize,
    elapsed: Duration,
}

#[test]
fn kills_and_a_database_restart_lose_nothing_and_run_nothing_twice() {
    let chaos = Chaos {
        runs: 50,
        rounds: 1,
        outage: Duration::from_secs(5),
    };
    chaos_run(&chaos);
}

/// The long version, for `scripts/chaos.sh`: `FLOW_CHAOS_RUNS`, `FLOW_CHAOS_ROUNDS` and
/// `FLOW_CHAOS_OUTAGE_S` (seconds).
#[test]
#[ignore = "minutes long; run by scripts/chaos.sh"]
fn chaos_long() {
    let var = |name: &str, default: u64| -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let chaos = Chaos {
        runs: var("FLOW_CHAOS_RUNS", 500) as usize,
        rounds: var("FLOW_CHAOS_ROUNDS", 5) as usize,
        outage: Duration::from_secs(var("FLOW_CHAOS_OUTAGE_S", 60)),
    };
    let seen = chaos_run(&chaos);
    println!(
        "chaos: {} runs, {} rounds of faults, {} s outages: {} tries recorded, {} orphaned by kills, \
         every check passed, {:.0} s",
        chaos.runs,
        chaos.rounds,
        chaos.outage.as_secs(),
        seen.tries,
        seen.orphaned,
        seen.elapsed.as_secs_f64()
    );
}

/// The cluster of the module's comment, the faults of `chaos`, and the checks.
fn chaos_run(chaos: &Chaos) -> Seen {
    let Some(pg) = PrivatePg::start() else {
        return Seen {
            tries: 0,
            orphaned: 0,
            elapsed: Duration::ZERO,
        };
    };
    let began = Instant::now();
    let env = Env::new(Db::Sqlite).unwrap().with_database_url(&pg.url());
    // Triggers come faster than the API's default budget lets one token make them.
    env.config(&format!(
        "lease_timeout = \"3s\"\n\n[api]\nrate_limit_burst = 100000\n\n[pools]\nledger = {POOL}\n"
    ));
    let ledger = env.path("ledger");
    chaos_dag(&env, &ledger, chaos.runs);
    let seed = now_ns() as u64;
    let mut rng = seed;
    // xorshift: random enough for fault timing, and the seed printed reproduces a failure's plan.
    let mut pick = move |lo: u64, hi: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        lo + rng % (hi - lo)
    };
    eprintln!("jepsen: seed {seed}");

    let admin = token(&env, "chaos", "admin");
    let mut schedulers = vec![
        spawn_in(&env, "scheduler-1", &["scheduler", "--no-tasks"]),
        spawn_in(&env, "scheduler-2", &["scheduler", "--no-tasks"]),
    ];
    let mut workers: Vec<Child> = (1..=3)
        .map(|i| spawn_in(&env, &format!("worker-{i}"), &["worker"]))
        .collect();
    let server = Server::start(&env, "server");
    let mut run_ids = Vec::new();
    for _ in 0..chaos.runs {
        let created = trigger(&server, &admin, "chaos", json!({}));
        assert_eq!(created.status, 201, "{:#}", created.body);
        run_ids.push(created.body["run_id"].as_str().unwrap().to_string());
    }

    // The faults, each at a random moment, while tries run.
    let mut kills: Vec<(u32, u128)> = Vec::new();
    for _ in 0..chaos.rounds {
        std::thread::sleep(Duration::from_millis(pick(500, 3000)));
        let s = pick(0, 2) as usize;
        kill_9(&mut schedulers[s]);
        let _ = schedulers[s].wait();
        std::thread::sleep(Duration::from_millis(pick(200, 1500)));
        let victim = pick(0, 3) as usize;
        let victim_pid = workers[victim].id();
        kill_host(&mut workers[victim]);
        // After every process of the "host" is gone: the latest a try of it can have ended.
        kills.push((victim_pid, now_ns()));
        schedulers[s] = spawn_in(
            &env,
            &format!("scheduler-{}", s + 1),
            &["scheduler", "--no-tasks"],
        );
        std::thread::sleep(Duration::from_millis(pick(500, 2000)));
        workers[victim] = spawn_in(&env, &format!("worker-{}", victim + 1), &["worker"]);
        std::thread::sleep(Duration::from_millis(pick(200, 2000)));
        pg.stop();
        std::thread::sleep(chaos.outage);
        pg.start_again();
    }

    let url = pg.url();
    wait_all_ended(&url, Duration::from_secs(300 + chaos.runs as u64), seed);
    server.stop();
    for (i, w) in workers.into_iter().enumerate() {
        stop_gracefully(w, &format!("worker {}", i + 1));
    }
    for (i, s) in schedulers.into_iter().enumerate() {
        stop_gracefully(s, &format!("scheduler {}", i + 1));
    }
    let tries = check(&url, &ledger, &run_ids, &kills, seed);
    Seen {
        tries,
        orphaned: tries - run_ids.len() * 4,
        elapsed: began.elapsed(),
    }
}

/// `chaos`: a, then b over two items, then c, every try in the pool `ledger`; each appends its
/// start and end (with the worker's pid, its shell's parent) to `ledger`.
fn chaos_dag(env: &Env, ledger: &Path, runs: usize) {
    let step = format!(
        "echo \"$FLOW_RUN_ID $FLOW_TASK_ID $MAP $FLOW_TRY_NUMBER start $(date +%s%N) $PPID\" >> {l}; \
         sleep 0.2; echo \"$FLOW_RUN_ID $FLOW_TASK_ID $MAP $FLOW_TRY_NUMBER end $(date +%s%N) $PPID\" >> {l}",
        l = ledger.display()
    );
    env.dag(
        "chaos.yaml",
        &format!(
            "id: chaos\nmax_active_runs: {runs}\ndefaults: {{ retries: 6, retry_delay: 0s, pool: ledger }}\ntasks:\n  \
             a: {{ operator: shell, env: {{ MAP: '-1' }}, command: '{step}' }}\n  \
             b: {{ operator: shell, depends_on: [a], for_each: [0, 1], env: {{ MAP: '{{{{ item }}}}' }}, command: '{step}' }}\n  \
             c: {{ operator: shell, depends_on: [b], env: {{ MAP: '-1' }}, command: '{step}' }}\n"
        ),
    );
}

fn wait_all_ended(url: &str, limit: Duration, seed: u64) {
    let deadline = Instant::now() + limit;
    loop {
        let open = psql(
            url,
            "SELECT count(*) FROM dag_runs WHERE state NOT IN ('success', 'failed')",
        );
        if open.trim() == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} runs never ended (seed {seed})",
            open.trim()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The checks of the module's comment; returns the tries the database recorded.
fn check(url: &str, ledger: &Path, run_ids: &[String], kills: &[(u32, u128)], seed: u64) -> usize {
    let runs = psql(url, "SELECT run_id, state FROM dag_runs ORDER BY run_id");
    assert_eq!(
        runs.lines().count(),
        run_ids.len(),
        "runs (seed {seed}): {runs}"
    );
    assert!(
        runs.lines().all(|l| l.ends_with("|success")),
        "every run succeeds, its retries covering the kills (seed {seed}): {runs}"
    );
    // Every try the database recorded, by `RUN TASK MAP_INDEX TRY`.
    let recorded: BTreeMap<String, String> = psql(
        url,
        "SELECT run_id || ' ' || task_id || ' ' || map_index || ' ' || try_number, state FROM task_tries",
    )
    .lines()
    .map(|l| {
        let (id, state) = l.rsplit_once('|').unwrap();
        (id.to_string(), state.to_string())
    })
    .collect();

    let mut spans: BTreeMap<String, (u128, Option<u128>, u32)> = BTreeMap::new();
    for e in read_ledger(ledger) {
        assert!(
            recorded.contains_key(&e.try_id),
            "try {} ran but the database has no record of it (seed {seed})",
            e.try_id
        );
        match e.what.as_str() {
            "start" => {
                let earlier = spans.insert(e.try_id.clone(), (e.at, None, e.worker));
                assert!(
                    earlier.is_none(),
                    "try {} started twice (seed {seed})",
                    e.try_id
                );
            }
            _ => {
                let span = spans.get_mut(&e.try_id).expect("an end without a start");
                assert!(
                    span.1.is_none(),
                    "try {} ended twice (seed {seed})",
                    e.try_id
                );
                span.1 = Some(e.at);
            }
        }
    }
    for (id, state) in &recorded {
        if state == "success" {
            let span = spans.get(id);
            assert!(
                span.is_some_and(|s| s.1.is_some()),
                "try {id} is recorded a success but did not run to its end exactly once (seed {seed})"
            );
        }
    }
    // Each run has 4 task instances (a, b[0], b[1], c); each succeeded once.
    let successes = recorded.values().filter(|s| *s == "success").count();
    assert_eq!(
        successes,
        run_ids.len() * 4,
        "successful tries (seed {seed})"
    );
    let most = most_at_once(&spans, kills);
    assert!(
        most <= POOL,
        "{most} tries ran at once in a pool of {POOL} (seed {seed})"
    );
    eprintln!(
        "jepsen: {} tries recorded, {} in the ledger, at most {most} at once (seed {seed})",
        recorded.len(),
        spans.len()
    );
    recorded.len()
}
