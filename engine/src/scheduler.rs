//! The scheduler loop: load DAGs, create due runs, plan, claim and launch tries.
//!
//! The loop is event-driven: a finished try wakes it through a channel and only that run is
//! planned again; a DAG file change wakes it through a file watcher. A one-second tick covers what
//! other processes do to the database (a `flow trigger`, a clear, a pause) and due times. Every
//! decision is committed before it is acted on, and every try runs under a lease that a heartbeat
//! extends, so a scheduler killed at any moment loses nothing: its successor finds the expired
//! leases and retries those tries per their policy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dag::load::{Loaded, load_folder};
use crate::dag::{DEFAULT_POOL, Dag, ParseOptions, parse_dag};
use crate::executor::{RunningTries, TryEnv, TryKey, orphan_end, run_try, try_key};
use crate::notify::{self, RunEnded};
use crate::operator::Registry;
use crate::plan::{Decision, plan};
use crate::schedule::{DataInterval, NextRun};
use crate::secrets::Secrets;
use crate::state::{RunState, RunType, TaskState};
use crate::store::group_commit::{Claimed, Handover};
use crate::store::{
    Claim, ClaimBatch, ClaimRequest, DagRecord, NewRun, NewTaskInstance, RunRow, Store, StoreError,
};
use crate::time::now;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub home: PathBuf,
    pub dags_folder: PathBuf,
    /// Tries running at once in this process.
    pub parallelism: usize,
    /// Pool name -> slots; `default` is added with `parallelism` slots when missing.
    pub pools: BTreeMap<String, usize>,
    /// How long a try's lease lasts without a heartbeat.
    pub lease_timeout: Duration,
    /// Base URL of the web UI, for links in notifications.
    pub base_url: String,
    /// The webhook of `[notifications]`, used when a DAG has no `on_failure` of its own.
    pub default_webhook: Option<String>,
}

impl EngineConfig {
    pub fn pool_size(&self, pool: &str) -> Option<usize> {
        self.pools
            .get(pool)
            .copied()
            .or((pool == DEFAULT_POOL).then_some(self.parallelism))
    }

    /// The slots a claim must count in the database for `pool`: a configured pool's size. The
    /// default pool, unless sized in flow.toml, is as large as this scheduler's parallelism,
    /// which the loop enforces itself, so its claims count nothing; nor do an unknown pool's,
    /// whose tries are claimed only to fail.
    pub fn counted_slots(&self, pool: &str) -> Option<i64> {
        self.pools.get(pool).map(|&n| n as i64)
    }
}

pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        * 4
}

/// A try ended. `can_wait`: its end cannot by itself make another task runnable (a mapped
/// instance succeeded, or a task succeeded whose downstream tasks all wait for other upstreams
/// too), so planning its run may be put off for a few milliseconds and shared with its siblings.
#[derive(Debug)]
struct TryDone {
    run_id: String,
    can_wait: bool,
}

/// See [`TryDone::can_wait`].
fn can_wait(dag: &Dag, task_id: &str, mapped: bool, state: Option<TaskState>) -> bool {
    if state != Some(TaskState::Success) {
        return false;
    }
    if mapped {
        return true;
    }
    let downstream: Vec<&crate::dag::Task> = dag.downstream(task_id).collect();
    !downstream.is_empty()
        && downstream.iter().all(|d| {
            d.depends_on.len() > 1 && d.trigger_rule != crate::dag::TriggerRule::OneSuccess
        })
}

const MAPPED_PLAN_INTERVAL: Duration = Duration::from_millis(50);

/// How long a run whose news can wait (see [`TryDone::can_wait`]) goes unplanned: at least
/// MAPPED_PLAN_INTERVAL, and long enough that planning it takes at most a twentieth of the time
/// (planning a 10,000-item map reads 10,000 index entries), but never more than a second.
fn plan_interval(cost: Duration) -> Duration {
    (cost * 20).clamp(MAPPED_PLAN_INTERVAL, Duration::from_secs(1))
}

/// What launching a try needs besides the engine: where tries run and how they report back.
#[derive(Clone, Copy)]
struct Slots<'a> {
    env: &'a Arc<TryEnv>,
    tries: &'a tokio_util::task::TaskTracker,
    cancel: &'a CancellationToken,
    done_tx: &'a mpsc::UnboundedSender<TryDone>,
    claimed_tx: &'a mpsc::UnboundedSender<Claimed>,
}

/// What the loop is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: every DAG, scheduled runs, until shutdown.
    Daemon,
    /// `flow run`: one run, in this process, until it ends.
    Single(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the DAGs folder {0}: {1}")]
    DagsFolder(PathBuf, std::io::Error),
    #[error("{0}")]
    Input(String),
    #[error("cannot write to the database: {0}")]
    Write(String),
}

pub struct Engine {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub config: EngineConfig,
    pub secrets: Secrets,
    owner: String,
    hostname: String,
    running: Arc<AtomicUsize>,
    /// Slots held by claims not yet answered.
    reserved: usize,
    /// dag_id -> the DAG as its file says now.
    current: HashMap<String, Arc<Dag>>,
    /// (dag_id, version) -> parsed DAG, for runs that started on an older version.
    versions: HashMap<(String, String), Arc<Dag>>,
    /// The rows of runs this process started tries of: what a try reads of its run (ids, dates,
    /// params, DAG version) never changes. Forgotten when the run is no longer active.
    run_rows: HashMap<String, Arc<RunRow>>,
    /// dag_id -> when it next needs a look for a due run.
    next_due: HashMap<String, DateTime<Utc>>,
    /// Webhook posts in flight: awaited before the loop returns, so `flow run` does not exit
    /// before its notification is sent.
    notifications: Vec<tokio::task::JoinHandle<()>>,
}

/// Builds a run id: `DAG__LOGICALDATE__TYPE[_suffix]`, URL-safe as the contract requires.
pub fn run_id(dag_id: &str, logical: DateTime<Utc>, run_type: RunType) -> String {
    let ts = logical.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    match run_type {
        RunType::Manual => format!("{dag_id}__{ts}__manual_{:08x}", rand::random::<u32>()),
        other => format!("{dag_id}__{ts}__{}", other.as_str()),
    }
}

/// The run a trigger creates: params resolved against the DAG's declarations, logical date
/// the trigger time unless given, data interval from the schedule when the date is a fire time.
pub fn new_run(
    dag: &Dag,
    run_type: RunType,
    logical_date: DateTime<Utc>,
    interval: Option<DataInterval>,
    params: serde_json::Map<String, Json>,
    queued_at: DateTime<Utc>,
) -> NewRun {
    let interval = interval.unwrap_or(DataInterval {
        start: logical_date,
        end: logical_date,
    });
    NewRun {
        run_id: run_id(&dag.id, logical_date, run_type),
        dag_id: dag.id.clone(),
        dag_version: dag.version.clone(),
        run_type,
        logical_date,
        data_interval_start: interval.start,
        data_interval_end: interval.end,
        params: Json::Object(params),
        tasks: dag
            .tasks
            .iter()
            .map(|t| NewTaskInstance {
                task_id: t.id.clone(),
                priority: t.priority,
                pool: t.pool.clone(),
            })
            .collect(),
        queued_at,
    }
}

/// The manual run a trigger asks for, not yet stored: params checked against the declarations.
pub fn manual_run(
    dag: &Dag,
    given: &serde_json::Map<String, Json>,
    logical_date: Option<DateTime<Utc>>,
) -> Result<NewRun, EngineError> {
    let params = dag.resolve_params(given).map_err(EngineError::Input)?;
    let queued_at = now();
    let logical = logical_date.unwrap_or(queued_at);
    // A manual run whose logical date falls on the schedule covers that interval; any other
    // covers the instant itself, as Airflow does.
    let interval = dag.timetable().and_then(|tt| tt.interval_for(logical));
    Ok(new_run(
        dag,
        RunType::Manual,
        logical,
        interval,
        params,
        queued_at,
    ))
}

/// Creates a manual run (`flow trigger`, `flow run`, the API).
pub async fn trigger(
    store: &dyn Store,
    dag: &Dag,
    given: &serde_json::Map<String, Json>,
    logical_date: Option<DateTime<Utc>>,
) -> Result<RunRow, EngineError> {
    let run = manual_run(dag, given, logical_date)?;
    store.create_run(&run).await?;
    store
        .get_run(&run.run_id)
        .await?
        .ok_or_else(|| EngineError::Input(format!("run {} vanished", run.run_id)))
}

/// Creates the backfill runs whose logical dates fall in [from, to]; returns (created, existing).
pub async fn backfill(
    store: &dyn Store,
    dag: &Dag,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Vec<String>, usize), EngineError> {
    let Some(tt) = dag.timetable() else {
        return Err(EngineError::Input(format!(
            "DAG '{}' has no schedule, so it has no intervals to backfill; use flow trigger",
            dag.id
        )));
    };
    let intervals = tt
        .intervals_between(from, to, 100_000)
        .map_err(|e| EngineError::Input(e.to_string()))?;
    let params = dag
        .resolve_params(&Default::default())
        .map_err(EngineError::Input)?;
    let mut created = Vec::new();
    let mut existing = 0;
    for iv in intervals {
        let run = new_run(
            dag,
            RunType::Backfill,
            iv.start,
            Some(iv),
            params.clone(),
            now(),
        );
        if store.create_run(&run).await? {
            created.push(run.run_id);
        } else {
            existing += 1;
        }
    }
    Ok((created, existing))
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        config: EngineConfig,
        secrets: Secrets,
    ) -> Engine {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".to_string());
        Engine {
            store,
            registry,
            config,
            secrets,
            owner: format!(
                "{hostname}:{}:{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ),
            hostname,
            running: Arc::new(AtomicUsize::new(0)),
            reserved: 0,
            current: HashMap::new(),
            versions: HashMap::new(),
            next_due: HashMap::new(),
            run_rows: HashMap::new(),
            notifications: Vec::new(),
        }
    }

    pub fn dags(&self) -> impl Iterator<Item = &Arc<Dag>> {
        self.current.values()
    }

    pub fn parse_options() -> ParseOptions {
        ParseOptions::default()
    }

    /// Loads the DAGs folder and records what it found; a broken file is recorded and skipped.
    pub async fn reload_dags(&mut self) -> Result<Loaded, EngineError> {
        let folder = self.config.dags_folder.clone();
        let registry = self.registry.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            if !folder.exists() {
                return Ok(Loaded::default());
            }
            load_folder(&folder, registry.as_ref(), &Engine::parse_options())
                .map_err(|e| EngineError::DagsFolder(folder.clone(), e))
        })
        .await
        .map_err(|e| EngineError::Input(format!("DAG loading panicked: {e}")))??;
        let mut changed = Vec::new();
        let mut current = HashMap::new();
        for dag in &loaded.dags {
            let dag = Arc::new(dag.clone());
            let same = self
                .current
                .get(&dag.id)
                .is_some_and(|old| old.version == dag.version && old.path == dag.path);
            if !same {
                changed.push(record(&dag));
                self.next_due.remove(&dag.id);
            }
            self.versions
                .insert((dag.id.clone(), dag.version.clone()), dag.clone());
            current.insert(dag.id.clone(), dag);
        }
        let present: Vec<String> = current.keys().cloned().collect();
        let errors: BTreeMap<String, Vec<String>> = loaded
            .errors
            .iter()
            .map(|(p, probs)| {
                (
                    p.display().to_string(),
                    probs.iter().map(|p| p.to_string()).collect(),
                )
            })
            .collect();
        for p in errors.values().flatten() {
            tracing::warn!("{p}");
        }
        self.store
            .sync_dags(&changed, &present, &errors, now())
            .await?;
        self.current = current;
        Ok(loaded)
    }

    /// The DAG a run started on: the current file if it is that version, else the stored source.
    pub async fn dag_version(
        &mut self,
        dag_id: &str,
        version: &str,
    ) -> Result<Option<Arc<Dag>>, EngineError> {
        self.dag_for(dag_id, version).await
    }

    async fn dag_for(
        &mut self,
        dag_id: &str,
        version: &str,
    ) -> Result<Option<Arc<Dag>>, EngineError> {
        let key = (dag_id.to_string(), version.to_string());
        if let Some(d) = self.versions.get(&key) {
            return Ok(Some(d.clone()));
        }
        let Some(crate::store::DagSource { fileloc, source }) =
            self.store.dag_source(dag_id, version).await?
        else {
            return Ok(None);
        };
        match parse_dag(
            Path::new(&fileloc),
            &source,
            self.registry.as_ref(),
            &Engine::parse_options(),
        ) {
            Ok(dag) => {
                let dag = Arc::new(dag);
                self.versions.insert(key, dag.clone());
                Ok(Some(dag))
            }
            Err(problems) => {
                tracing::error!(
                    "stored version {version} of DAG {dag_id} no longer parses: {}",
                    problems.first().map(|p| p.message.as_str()).unwrap_or("")
                );
                Ok(None)
            }
        }
    }

    /// Registers a DAG parsed outside the folder scan (`flow run` with a file path).
    pub fn add_dag(&mut self, dag: Arc<Dag>) {
        self.versions
            .insert((dag.id.clone(), dag.version.clone()), dag.clone());
        self.current.insert(dag.id.clone(), dag);
    }

    /// Runs the loop until shutdown (daemon) or until the run ends (single). Returns the run's
    /// final state in single mode.
    pub async fn run(
        mut self,
        mode: Mode,
        shutdown: CancellationToken,
    ) -> Result<Option<RunState>, EngineError> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<TryDone>();
        let (reload_tx, mut reload_rx) = mpsc::unbounded_channel::<()>();
        let _watcher = if mode == Mode::Daemon {
            watch(&self.config.dags_folder, reload_tx)
        } else {
            None
        };
        let running_tries: Arc<RunningTries> = Default::default();
        let pids = Arc::new(crate::executor::PidJournal::new(
            &self.config.home,
            &self.owner,
        ));
        let heartbeat = self.spawn_heartbeat(shutdown.clone(), running_tries.clone(), pids.clone());
        let try_cancel = CancellationToken::new();
        let try_env = Arc::new(TryEnv {
            shutdown: try_cancel.clone(),
            running: running_tries.clone(),
            pids: pids.clone(),
            recorder: crate::store::group_commit::Recorder::start(self.store.clone()),
            store: self.store.clone(),
            registry: self.registry.clone(),
            secrets: self.secrets.clone(),
            home: self.config.home.clone(),
        });
        let tries = tokio_util::task::TaskTracker::new();
        let mut dirty: HashSet<String> = HashSet::new();
        // Runs whose only news is tries that cannot unblock anything by themselves (see
        // `TryDone::can_wait`) are planned at most every `plan_interval`, not after every try.
        let mut deferred: HashMap<String, std::time::Instant> = HashMap::new();
        // run -> (when it was last planned, how long that took).
        let mut last_planned: HashMap<String, (std::time::Instant, Duration)> = HashMap::new();
        let mut full_pass = true;
        let mut last_recovery = DateTime::<Utc>::MIN_UTC;
        let mut result = None;
        let mut failures = 0u32;
        let (claimed_tx, mut claimed_rx) = mpsc::unbounded_channel::<Claimed>();
        let mut answers: Vec<Claimed> = Vec::new();
        // Whether a claim could find work: a claim that finds none is a write transaction, so the
        // loop claims only after something that can make a try claimable or a slot free.
        let mut want_claim = true;

        loop {
            let now = now();
            // A database that fails for a moment (a deadlock, a restart, a full disk being
            // cleaned) must not stop the scheduler: the pass is logged and tried again; nothing
            // is lost because nothing was acted on before it was committed.
            let mut trouble: Option<EngineError> = None;
            macro_rules! attempt {
                ($e:expr) => {
                    match $e {
                        Ok(v) => Some(v),
                        Err(e) => {
                            tracing::error!("scheduler: {e}; trying again shortly");
                            trouble = Some(e.into());
                            None
                        }
                    }
                };
            }
            {
                let slots = Slots {
                    env: &try_env,
                    tries: &tries,
                    cancel: &try_cancel,
                    done_tx: &done_tx,
                    claimed_tx: &claimed_tx,
                };
                for c in std::mem::take(&mut answers) {
                    // A claim that filled every slot it held may have left more behind.
                    if attempt!(self.start_claimed(c, &slots).await) == Some(true) {
                        want_claim = true;
                    }
                }
            }
            if full_pass {
                // Runs changed by other processes (trigger, clear) and due times are found here.
                let mut active = attempt!(self.store.active_runs().await).unwrap_or_default();
                let paused = attempt!(self.store.paused_flags().await).unwrap_or_default();
                if mode == Mode::Daemon
                    && attempt!(self.create_due_runs(now, &active, &paused).await).unwrap_or(0) > 0
                {
                    active = attempt!(self.store.active_runs().await).unwrap_or_default();
                }
                if let Some(started) = attempt!(self.start_runs(&mode, now, &active, &paused).await)
                {
                    dirty.extend(started);
                }
                let live: HashSet<&str> = active.iter().map(|r| r.run_id.as_str()).collect();
                self.run_rows.retain(|id, _| live.contains(id.as_str()));
                for r in active {
                    if r.state == RunState::Running && mode_accepts(&mode, &r.run_id) {
                        dirty.insert(r.run_id);
                    }
                }
            }
            if now - last_recovery > chrono::Duration::seconds(1) {
                last_recovery = now;
                attempt!(self.recover_orphans(now, &mut dirty).await);
            }
            let mut wake_at: Option<DateTime<Utc>> = None;
            let instant = std::time::Instant::now();
            deferred.retain(|run_id, due| {
                if *due <= instant {
                    dirty.insert(run_id.clone());
                    false
                } else {
                    true
                }
            });
            let mut plan_again = Vec::new();
            want_claim |= full_pass || !dirty.is_empty();
            for run_id in std::mem::take(&mut dirty) {
                deferred.remove(&run_id);
                let started = std::time::Instant::now();
                let planned = attempt!(self.plan_run(&run_id, now).await);
                last_planned.insert(run_id.clone(), (started, started.elapsed()));
                let Some((state, wake)) = planned else {
                    plan_again.push(run_id);
                    continue;
                };
                if let Some(w) = wake {
                    wake_at = Some(wake_at.map_or(w, |x| x.min(w)));
                }
                if let Mode::Single(target) = &mode
                    && *target == run_id
                    && let Some(s) = state.filter(|s| s.is_terminal())
                {
                    result = Some(s);
                }
            }
            dirty.extend(plan_again);
            if result.is_some() && self.running.load(Ordering::SeqCst) == 0 && self.reserved == 0 {
                break;
            }
            if !shutdown.is_cancelled() && want_claim {
                // With every slot taken or reserved nothing is claimed now, and the wish stands:
                // a claim still in flight may have been launched before the work it would have
                // found was queued, and comes back empty.
                want_claim = attempt!(self.launch(full_pass, &mode, &try_env, &claimed_tx).await)
                    == Some(false);
            }
            if let Some(e) = trouble.take() {
                failures += 1;
                // `flow run` gives up after about a minute of failures; the daemon never does.
                if matches!(mode, Mode::Single(_)) && failures >= 120 {
                    return Err(e);
                }
            } else {
                failures = 0;
            }

            // How soon work written by other processes (a trigger, a clear) is seen.
            let tick = if mode == Mode::Daemon {
                Duration::from_millis(250)
            } else {
                Duration::from_millis(500)
            };
            let mut sleep_for = tick;
            if let Some(w) = wake_at {
                let until = (w - now).to_std().unwrap_or_default();
                sleep_for = sleep_for.min(until);
            }
            if let Some(due) = deferred.values().min() {
                sleep_for = sleep_for.min(due.saturating_duration_since(std::time::Instant::now()));
            }
            if failures > 0 {
                sleep_for = Duration::from_millis(500);
            }
            last_planned.retain(|_, (t, cost)| t.elapsed() < plan_interval(*cost));
            full_pass = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(first) = done_rx.recv() => {
                    want_claim = true;
                    let mut events = vec![first];
                    while let Ok(ev) = done_rx.try_recv() {
                        events.push(ev);
                    }
                    for ev in events {
                        let due = last_planned
                            .get(&ev.run_id)
                            .map(|(t, cost)| *t + plan_interval(*cost))
                            .filter(|due| *due > std::time::Instant::now());
                        if let Some(due) = due.filter(|_| ev.can_wait && !dirty.contains(&ev.run_id)) {
                            deferred.entry(ev.run_id).or_insert(due);
                        } else {
                            dirty.insert(ev.run_id);
                        }
                    }
                }
                Some(first) = claimed_rx.recv() => {
                    answers.push(first);
                    while let Ok(c) = claimed_rx.try_recv() {
                        answers.push(c);
                    }
                }
                Some(()) = reload_rx.recv() => {
                    // Editors write files in several steps: let them finish before reading.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while reload_rx.try_recv().is_ok() {}
                    if let Err(e) = self.reload_dags().await {
                        tracing::error!("cannot reload DAGs: {e}");
                    }
                    full_pass = true;
                }
                _ = tokio::time::sleep(sleep_for) => { full_pass = true; }
            }
        }

        // Clean shutdown: interrupted tries go back to the queue without using up a retry, and
        // so do those claimed but not started yet.
        try_cancel.cancel();
        while self.reserved > 0 {
            let c = match answers.pop() {
                Some(c) => c,
                None => match claimed_rx.recv().await {
                    Some(c) => c,
                    None => break,
                },
            };
            if !c.handover {
                self.reserved -= c.reserved();
            }
            for claim in c.result.into_iter().flatten().flatten() {
                requeue(&try_env, &claim).await;
            }
        }
        tries.close();
        tries.wait().await;
        // Tries that ended during the shutdown may have handed their slots over before they
        // saw it: their successors were claimed but will not start here.
        while let Ok(c) = claimed_rx.try_recv() {
            for claim in c.result.into_iter().flatten().flatten() {
                requeue(&try_env, &claim).await;
            }
        }
        // Every try of this scheduler has ended or been requeued: none of its notes is needed.
        pids.remove();
        heartbeat.abort();
        for h in std::mem::take(&mut self.notifications) {
            // Each post has its own 10 s timeout.
            let _ = h.await;
        }
        Ok(result)
    }

    /// Extends this scheduler's leases every third of the lease timeout, and every second stops
    /// the tries it no longer owns (a clear reset them, or another scheduler took them over
    /// after a lost lease): their results would be dropped anyway, and their processes must not
    /// run beside the next try.
    fn spawn_heartbeat(
        &self,
        shutdown: CancellationToken,
        running: Arc<RunningTries>,
        pids: Arc<crate::executor::PidJournal>,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let owner = self.owner.clone();
        let hostname = self.hostname.clone();
        let lease = self.config.lease_timeout;
        tokio::spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(100));
            let mut last_beat: Option<std::time::Instant> = None;
            loop {
                if last_beat.is_none_or(|t| t.elapsed() >= every) {
                    let now = now();
                    let until = now + chrono::Duration::from_std(lease).unwrap_or_default();
                    match store
                        .heartbeat(&owner, &hostname, std::process::id() as i64, now, until)
                        .await
                    {
                        Ok(()) => last_beat = Some(std::time::Instant::now()),
                        Err(e) => tracing::error!("heartbeat failed: {e}"),
                    }
                }
                pids.truncate_when_idle(&running);
                let mine: Vec<TryKey> = running.keys();
                if !mine.is_empty() {
                    match store.owned_tries(&owner).await {
                        Ok(owned) => {
                            let owned: HashSet<TryKey> = owned
                                .into_iter()
                                .map(|t| (t.run_id, t.task_id, t.map_index, t.try_number))
                                .collect();
                            for key in mine.into_iter().filter(|k| !owned.contains(k)) {
                                if running.stop_lost(&key) {
                                    tracing::warn!(
                                        "try {} of {}/{}[{}] is no longer this scheduler's (cleared or taken over); stopping it",
                                        key.3,
                                        key.0,
                                        key.1,
                                        key.2
                                    );
                                }
                            }
                        }
                        Err(e) => tracing::error!("cannot read this scheduler's tries: {e}"),
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every.min(Duration::from_secs(1))) => {}
                }
            }
        })
    }

    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.config.lease_timeout).unwrap_or_default()
    }

    /// Creates the scheduled runs that are due; returns how many.
    async fn create_due_runs(
        &mut self,
        now: DateTime<Utc>,
        active: &[RunRow],
        paused: &BTreeMap<String, bool>,
    ) -> Result<usize, EngineError> {
        let mut created = 0;
        let mut active_per_dag: HashMap<&str, u32> = HashMap::new();
        for r in active {
            *active_per_dag.entry(r.dag_id.as_str()).or_default() += 1;
        }
        let dags: Vec<Arc<Dag>> = self.current.values().cloned().collect();
        for dag in dags {
            if paused.get(&dag.id).copied().unwrap_or(dag.paused) {
                continue;
            }
            if self.next_due.get(&dag.id).is_some_and(|t| *t > now) {
                continue;
            }
            let Some(tt) = dag.timetable() else { continue };
            let mut active_count = active_per_dag.get(dag.id.as_str()).copied().unwrap_or(0);
            loop {
                let last = self.store.latest_logical_date(&dag.id).await?;
                match tt.next_run(last, now) {
                    NextRun::Due(iv) => {
                        if active_count >= dag.max_active_runs {
                            // Look again on the next pass; a run ending frees a slot.
                            self.next_due.remove(&dag.id);
                            break;
                        }
                        let params = match dag.resolve_params(&Default::default()) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::error!("DAG {}: cannot schedule: {e}", dag.id);
                                break;
                            }
                        };
                        let run =
                            new_run(&dag, RunType::Scheduled, iv.start, Some(iv), params, now);
                        if self.store.create_run(&run).await? {
                            tracing::info!("created run {}", run.run_id);
                            active_count += 1;
                            created += 1;
                        }
                        if !dag.catchup {
                            // Only the latest interval; the next one is computed from it.
                            continue;
                        }
                    }
                    NextRun::NotBefore(t) => {
                        self.next_due.insert(dag.id.clone(), t);
                        self.store.set_next_run_at(&dag.id, Some(t)).await?;
                        break;
                    }
                    NextRun::Never => {
                        self.next_due
                            .insert(dag.id.clone(), DateTime::<Utc>::MAX_UTC);
                        self.store.set_next_run_at(&dag.id, None).await?;
                        break;
                    }
                }
            }
        }
        Ok(created)
    }

    /// Moves queued runs to running, oldest logical date first, within each DAG's max_active_runs.
    async fn start_runs(
        &mut self,
        mode: &Mode,
        now: DateTime<Utc>,
        active: &[RunRow],
        paused: &BTreeMap<String, bool>,
    ) -> Result<Vec<String>, EngineError> {
        let mut running: HashMap<String, u32> = HashMap::new();
        for r in active {
            if r.state == RunState::Running {
                *running.entry(r.dag_id.clone()).or_default() += 1;
            }
        }
        let mut started = Vec::new();
        for r in active.iter().filter(|r| r.state == RunState::Queued) {
            let single = matches!(mode, Mode::Single(id) if *id == r.run_id);
            if !single && (*mode != Mode::Daemon || paused.get(&r.dag_id).copied().unwrap_or(false))
            {
                continue;
            }
            let Some(dag) = self.dag_for(&r.dag_id, &r.dag_version).await? else {
                continue;
            };
            let max = self
                .current
                .get(&r.dag_id)
                .map(|d| d.max_active_runs)
                .unwrap_or(dag.max_active_runs);
            let count = running.entry(r.dag_id.clone()).or_default();
            if !single && *count >= max {
                continue;
            }
            if self.store.start_run(&r.run_id, now).await? {
                *count += 1;
                started.push(r.run_id.clone());
            }
        }
        Ok(started)
    }

    /// Plans one run and applies the decisions. Returns the run's state after them, and when it
    /// next needs a look by time alone.
    async fn plan_run(
        &mut self,
        run_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(Option<RunState>, Option<DateTime<Utc>>), EngineError> {
        let Some(run) = self.store.get_run(run_id).await? else {
            return Ok((None, None));
        };
        if run.state != RunState::Running {
            return Ok((Some(run.state), None));
        }
        let Some(dag) = self.dag_for(&run.dag_id, &run.dag_version).await? else {
            tracing::error!(
                "run {run_id}: its DAG version {} is not stored",
                run.dag_version
            );
            return Ok((Some(run.state), None));
        };
        // Outputs matter to the planner only where it renders `when` or a templated `for_each`.
        let rendering: Vec<String> = dag
            .tasks
            .iter()
            .filter(|t| {
                t.when.is_some() || matches!(t.for_each, Some(crate::dag::ForEach::Template(_)))
            })
            .flat_map(|t| dag.ancestors(&t.id).into_iter().map(String::from))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let rows = self.store.plan_rows(run_id, &rendering).await?;
        let failed: Vec<String> = rows
            .rows
            .iter()
            .filter(|t| t.state == TaskState::Failed)
            .map(|t| t.task_id.clone())
            .chain(
                rows.counts
                    .iter()
                    .filter(|(_, s, _)| *s == TaskState::Failed)
                    .map(|(t, _, _)| t.clone()),
            )
            .collect();
        let snap = crate::executor::plan_snapshot(&run, rows);
        let p = plan(&dag, &snap, &self.secrets, now);
        self.store.apply(run_id, &p.decisions, now).await?;
        let finished = p.decisions.iter().find_map(|d| match d {
            Decision::FinishRun(s) => Some(*s),
            _ => None,
        });
        if let Some(state) = finished {
            tracing::info!("run {run_id} ended {state}");
            self.notify(&dag, &run, state, failed);
            return Ok((Some(state), None));
        }
        Ok((Some(run.state), p.wake_at))
    }

    fn notify(&mut self, dag: &Dag, run: &RunRow, state: RunState, mut failed_tasks: Vec<String>) {
        let webhook = match state {
            RunState::Failed => dag
                .on_failure
                .as_ref()
                .map(|n| n.webhook.clone())
                .or_else(|| self.config.default_webhook.clone()),
            RunState::Success => dag.on_success.as_ref().map(|n| n.webhook.clone()),
            _ => None,
        };
        let Some(webhook) = webhook else { return };
        failed_tasks.dedup();
        let ev = RunEnded {
            dag_id: dag.id.clone(),
            run_id: run.run_id.clone(),
            state: state.as_str().to_string(),
            failed_tasks,
            url: format!(
                "{}/runs/{}",
                self.config.base_url.trim_end_matches('/'),
                run.run_id
            ),
        };
        let secrets = self.secrets.clone();
        self.notifications.retain(|h| !h.is_finished());
        self.notifications
            .push(tokio::task::spawn_blocking(move || {
                if let Err(e) = notify::post(&webhook, &ev, &secrets) {
                    tracing::warn!("notification for run {}: {e}", ev.run_id);
                }
            }));
    }

    /// Finds tries whose scheduler died (lease expired), stops their processes if they are still
    /// alive on this host, and retries them per their policy.
    async fn recover_orphans(
        &mut self,
        now: DateTime<Utc>,
        dirty: &mut HashSet<String>,
    ) -> Result<(), EngineError> {
        for ti in self.store.expired_tries(now).await? {
            let Some(run) = self.store.get_run(&ti.run_id).await? else {
                continue;
            };
            let dag = self.dag_for(&run.dag_id, &run.dag_version).await?;
            let claim = Claim {
                run_id: ti.run_id.clone(),
                task_id: ti.task_id.clone(),
                map_index: ti.map_index,
                try_number: ti.try_number,
                try_base: ti.try_base,
                item: ti.item.clone(),
                owner: ti.lease_owner.clone().unwrap_or_default(),
                started_at: ti.started_at.unwrap_or(now),
                external: ti.external_ref.clone(),
            };
            // The pid is in the database once its detached write committed, and in the dead
            // scheduler's journal from before the command started.
            let pid = ti.pid.or_else(|| {
                crate::executor::PidJournal::find(
                    &self.config.home,
                    ti.lease_owner.as_deref()?,
                    &try_key(&claim),
                )
            });
            if ti.hostname.as_deref() == Some(self.hostname.as_str())
                && let Some(pid) = pid
                && pid > 1
            {
                // The try ran in its own process group; ESRCH just means it is gone already.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let end = orphan_end(dag.as_ref().and_then(|d| d.task(&ti.task_id)), &ti);
            if self.store.finish_try(&claim, &end).await? {
                tracing::warn!(
                    "try {} of {}/{} was orphaned (its scheduler stopped); now {}",
                    ti.try_number,
                    ti.run_id,
                    ti.task_id,
                    end.state
                );
                dirty.insert(ti.run_id.clone());
            }
        }
        Ok(())
    }

    /// Claims what fits in the free slots. The claim commits with the next group commit and comes
    /// back through `claimed` (see [`Engine::start_claimed`]); until then its slots are reserved,
    /// so the loop goes on planning, and a slot freed meanwhile is claimed with the commit after.
    /// Returns false when no slot is free, so nothing was claimed.
    async fn launch(
        &mut self,
        full_pass: bool,
        mode: &Mode,
        env: &Arc<TryEnv>,
        claimed: &mpsc::UnboundedSender<Claimed>,
    ) -> Result<bool, EngineError> {
        let free = self
            .config
            .parallelism
            .saturating_sub(self.running.load(Ordering::SeqCst) + self.reserved);
        if free == 0 {
            return Ok(false);
        }
        // The configured pools are tried on every pass; finding queued tries in pools nobody
        // configured costs a scan of the queue, so that is done on full passes only.
        let mut pools: Vec<String> = self.config.pools.keys().cloned().collect();
        if !pools.iter().any(|p| p == DEFAULT_POOL) {
            pools.insert(0, DEFAULT_POOL.to_string());
        }
        if full_pass {
            for p in self.store.queued_pools().await? {
                if !pools.contains(&p) {
                    pools.push(p);
                }
            }
        }
        let run_filter = match mode {
            Mode::Single(id) => Some(id.clone()),
            Mode::Daemon => None,
        };
        let now = now();
        // An unknown pool has no size: its tries are claimed only to fail with a clear message
        // instead of waiting forever.
        let batch = ClaimBatch {
            requests: pools
                .into_iter()
                .map(|pool| ClaimRequest {
                    owner: self.owner.clone(),
                    hostname: self.hostname.clone(),
                    pool_slots: self.config.counted_slots(&pool),
                    pool,
                    limit: free as i64,
                    now,
                    lease_until: self.lease_until(now),
                    run_id: run_filter.clone(),
                })
                .collect(),
            limit: free as i64,
        };
        // Through the group commit: the claims share a transaction with the ends (and pids)
        // that other tries are writing at the same moment.
        self.reserved += free;
        let recorder = env.recorder.clone();
        let claimed = claimed.clone();
        tokio::spawn(async move {
            let result = recorder.claim(batch.clone()).await;
            let _ = claimed.send(Claimed {
                asked: batch,
                result,
                handover: false,
            });
        });
        Ok(true)
    }

    /// Starts the tries a claim returned, and frees the slots it reserved but did not fill.
    /// Returns whether the claim filled every slot it reserved.
    async fn start_claimed(&mut self, c: Claimed, slots: &Slots<'_>) -> Result<bool, EngineError> {
        let Slots {
            env,
            tries,
            cancel,
            done_tx,
            claimed_tx,
        } = *slots;
        let reserved = c.reserved();
        if c.handover {
            // The finished tries kept their slots counted as running until now.
            self.running.fetch_sub(reserved, Ordering::SeqCst);
        } else {
            self.reserved -= reserved;
        }
        let claimed = c.result.map_err(EngineError::Write)?;
        // A handover that came back short freed slots another pool may use.
        let filled = c.handover || claimed.iter().map(Vec::len).sum::<usize>() >= reserved;
        for (asked, claims) in c.asked.requests.into_iter().zip(claimed) {
            for claim in claims {
                let run = match self.run_rows.get(&claim.run_id) {
                    Some(r) => r.clone(),
                    None => {
                        let Some(r) = self.store.get_run(&claim.run_id).await? else {
                            continue;
                        };
                        let r = Arc::new(r);
                        self.run_rows.insert(claim.run_id.clone(), r.clone());
                        r
                    }
                };
                let dag = self.dag_for(&run.dag_id, &run.dag_version).await?;
                self.running.fetch_add(1, Ordering::SeqCst);
                let env = env.clone();
                let done = done_tx.clone();
                let running = self.running.clone();
                let cancel = cancel.clone();
                let unknown_pool = self
                    .config
                    .pool_size(&asked.pool)
                    .is_none()
                    .then(|| asked.pool.clone());
                let handover = Handover {
                    request: ClaimRequest {
                        limit: 1,
                        ..asked.clone()
                    },
                    lease: self.config.lease_timeout,
                    answer: claimed_tx.clone(),
                    stop: cancel.clone(),
                };
                let key = try_key(&claim);
                let lost = CancellationToken::new();
                env.running.insert(key.clone(), lost.clone());
                tries.spawn(async move {
                    let run_id = claim.run_id.clone();
                    let mut wait = false;
                    let mut handed_over = false;
                    match (dag, unknown_pool) {
                        (Some(dag), None) => {
                            tokio::select! {
                                (state, handed) = run_try(&env, &claim, &dag, &run, Some(handover)) => {
                                    let mapped = claim.map_index != crate::plan::UNMAPPED;
                                    wait = can_wait(&dag, &claim.task_id, mapped, state);
                                    handed_over = handed;
                                }
                                _ = cancel.cancelled() => {
                                    // Dropping the try's future kills its process group.
                                    requeue(&env, &claim).await;
                                }
                                _ = lost.cancelled() => {
                                    // Not ours any more: dropping the future kills the process
                                    // group; there is nothing to record.
                                }
                            }
                        }
                        (_, unknown_pool) => {
                            let msg = match unknown_pool {
                                Some(p) => format!("pool '{p}' is not configured: add it under [pools] in flow.toml"),
                                None => format!("the DAG version of run {} is not stored", claim.run_id),
                            };
                            fail_now(&env, &claim, msg).await;
                        }
                    }
                    env.running.remove(&key);
                    if !handed_over {
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                    let _ = done.send(TryDone {
                        run_id,
                        can_wait: wait,
                    });
                });
            }
        }
        Ok(filled)
    }
}

async fn requeue(env: &TryEnv, claim: &Claim) {
    let end = crate::store::TryEnd::requeued(
        "interrupted: the scheduler shut down; the try will run again",
        now(),
    );
    if let Err(e) = env.store.finish_try(claim, &end).await {
        tracing::error!("cannot requeue an interrupted try: {e}");
    }
}

async fn fail_now(env: &TryEnv, claim: &Claim, message: String) {
    let end = crate::store::TryEnd {
        state: TaskState::Failed,
        output: None,
        error: Some(message),
        next_try_at: None,
        now: now(),
        requeue: false,
        reschedule: false,
    };
    if let Err(e) = env.store.finish_try(claim, &end).await {
        tracing::error!("cannot record a failed try: {e}");
    }
}

fn mode_accepts(mode: &Mode, run_id: &str) -> bool {
    match mode {
        Mode::Daemon => true,
        Mode::Single(id) => id == run_id,
    }
}

fn record(dag: &Dag) -> DagRecord {
    DagRecord {
        dag_id: dag.id.clone(),
        fileloc: dag.path.display().to_string(),
        version: dag.version.clone(),
        description: dag.description.clone(),
        schedule: dag.schedule_text.clone(),
        timezone: dag.timezone.name().to_string(),
        tags: dag.tags.clone(),
        params: Json::Array(
            dag.params
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "name": p.name,
                        "type": p.kind.as_str(),
                        "default": p.default,
                        "description": p.description,
                    })
                })
                .collect(),
        ),
        paused: dag.paused,
        next_run_at: None,
        source: dag.source.to_string(),
    }
}

/// Watches the DAGs folder; every change sends one message. Returns the watcher to keep alive.
fn watch(folder: &Path, tx: mpsc::UnboundedSender<()>) -> Option<::notify::RecommendedWatcher> {
    use ::notify::Watcher;
    let mut watcher =
        match ::notify::recommended_watcher(move |res: ::notify::Result<::notify::Event>| {
            if let Ok(ev) = res
                && !ev.kind.is_access()
            {
                let _ = tx.send(());
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(
                    "cannot watch {}: {e}; DAG changes are read at restart",
                    folder.display()
                );
                return None;
            }
        };
    if let Err(e) = watcher.watch(folder, ::notify::RecursiveMode::Recursive) {
        tracing::warn!(
            "cannot watch {}: {e}; DAG changes are read at restart",
            folder.display()
        );
        return None;
    }
    Some(watcher)
}

/// When the next scheduled run of `dag` will be created (its interval's end), if ever.
pub async fn next_run_at(
    store: &dyn Store,
    dag: &Dag,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, EngineError> {
    let Some(tt) = dag.timetable() else {
        return Ok(None);
    };
    let last = store.latest_logical_date(&dag.id).await?;
    Ok(match tt.next_run(last, now) {
        NextRun::Due(iv) => Some(iv.end),
        NextRun::NotBefore(t) => Some(t),
        NextRun::Never => None,
    })
}
