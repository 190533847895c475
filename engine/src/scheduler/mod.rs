//! The scheduler: load DAGs, create due runs, plan, claim and launch tries.
//!
//! The loop is event-driven: a finished try wakes it through a channel and only that run is
//! planned again; a DAG file change wakes it through a file watcher. A tick (250 ms) covers what
//! other processes do to the database (a `flow trigger`, a clear, a pause) and due times. Every
//! decision is committed before it is acted on, and every try runs under a lease that a heartbeat
//! extends, so a scheduler killed at any moment loses nothing: its successor finds the expired
//! leases and retries those tries per their policy.
//!
//! # Map
//!
//! | file | what |
//! |---|---|
//! | `event_loop.rs` | [`Engine::run`]'s state ([`event_loop::Loop`]) and one method per event |
//! | `runs.rs` | run creation: manual, backfill, scheduled; starting queued runs |
//! | `planning.rs` | planning one run with the pure planner; the run-end webhook |
//! | `launch.rs` | claiming tries and starting each in a task of its own |
//! | `catalog.rs` | the DAG version cache ([`DagCatalog`]), shared with the server |
//! | `heartbeat.rs` | lease extension; stopping tries this process lost |
//! | `recovery.rs` | orphans: tries whose scheduler died |
//!
//! Tasks, and who ends them:
//! - **the loop**, in the caller's task ([`Engine::run`]): the only writer of run state through
//!   the planner; ends at `shutdown` (daemon) or when `flow run`'s run has ended.
//! - **the heartbeat** ([`heartbeat::Heartbeat`]): ends at `shutdown`; aborted by the loop once
//!   every try has ended or been requeued.
//! - **one task per try** (`launch::Start`, in the loop's `TaskTracker`): runs the operator,
//!   records the end through the group commit, then reports on `done`.
//! - **one task per claim** (`Engine::launch`): waits for the group commit that claims, then
//!   answers on `claimed`.
//! - **the group commit** ([`crate::store::group_commit::Recorder`]): batches ends, pids and
//!   claims into one transaction; ends when its last sender is dropped.
//! - **webhook posts** (blocking threads): awaited before [`Engine::run`] returns.
//! - **the file watcher** (the `notify` crate's thread): sends on `reload`.
//!
//! Channels (all unbounded; each message is small and the loop drains a channel at once):
//! - `done` ([`launch::TryDone`]): try tasks -> the loop, which plans that run again.
//! - `claimed` ([`crate::store::group_commit::Claimed`]): claim tasks, and ending tries that hand
//!   their slot to the next queued try in their end's transaction -> the loop, which starts them.
//! - `reload` (`()`): the file watcher -> the loop, which reloads the folder.
//!
//! Cancellation tokens:
//! - `shutdown` (the caller's): stops the loop and the heartbeat.
//! - `Slots::cancel`: cancelled by the loop when it stops. Every try's future is dropped, which
//!   kills its process group, and the try is requeued without using a retry; ending tries stop
//!   handing their slots over. The loop then requeues the claims still in flight, waits for every
//!   try task, removes its pid journal and awaits the webhooks.
//! - one `lost` token per try: cancelled by the heartbeat when the database says the try is no
//!   longer this process's (cleared, or taken over after an expired lease); the process group is
//!   killed and nothing is recorded.

use std::collections::HashMap;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dag::load::Loaded;
use crate::dag::{DEFAULT_POOL, Dag};
use crate::operator::Registry;
use crate::schedule::ScheduleError;
use crate::secrets::Secrets;
use crate::state::RunState;
use crate::store::group_commit::CommitError;
use crate::store::{RunRow, Store, StoreError};

mod alerts;
pub mod backfills;
mod catalog;
mod datasets;
mod event_loop;
mod heartbeat;
mod launch;
mod launcher;
mod planning;
mod recovery;
pub mod retention;
mod runs;
pub mod task_test;

pub use catalog::DagCatalog;
pub use runs::{manual_run, next_run_at, run_id, trigger};

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
    /// How often a daemon reads the database for what no wake-up brought (see
    /// [`crate::store::Wake`]) and for due times.
    pub poll_interval: Duration,
    /// Base URL of the web UI, for links in notifications.
    pub base_url: String,
    /// The webhook of `[notifications]`, used when a DAG has no `on_failure` of its own.
    pub default_webhook: Option<String>,
    /// `[notifications] stuck_queued`: a run queued longer than this is alerted once.
    pub stuck_queued: Option<Duration>,
    /// `[logs] remote`: try logs copied to an object store as they are written.
    pub remote_logs: Option<crate::log::RemoteLogs>,
}

impl EngineConfig {
    pub(crate) fn pool_size(&self, pool: &str) -> Option<usize> {
        self.pools
            .get(pool)
            .copied()
            .or((pool == DEFAULT_POOL).then_some(self.parallelism))
    }

    /// The slots a claim must count in the database for `pool`: a configured pool's size. The
    /// default pool, unless sized in flow.toml, is as large as this scheduler's parallelism,
    /// which the loop enforces itself, so its claims count nothing; nor do an unknown pool's,
    /// whose tries are claimed only to fail.
    pub(crate) fn counted_slots(&self, pool: &str) -> Option<i64> {
        self.pools.get(pool).map(|&n| n as i64)
    }
}

/// flow.toml's default `poll_interval`.
pub const DEFAULT_POLL: Duration = Duration::from_millis(250);

pub fn default_parallelism() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        * 4
}

/// What a daemon's loop does. `flow scheduler` does both; `flow scheduler --no-tasks` only
/// plans (its tasks run on workers); `flow worker` only runs tasks (on any host, against the
/// same database; the schedulers plan the runs its tries end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Duties {
    /// Create due runs, start queued runs, plan running ones, recover orphaned tries, follow
    /// the DAGs folder.
    pub plan: bool,
    /// Claim queued tries and run them.
    pub run_tasks: bool,
}

impl Duties {
    pub const ALL: Duties = Duties {
        plan: true,
        run_tasks: true,
    };
    pub const PLAN_ONLY: Duties = Duties {
        plan: true,
        run_tasks: false,
    };
    pub const TASKS_ONLY: Duties = Duties {
        plan: false,
        run_tasks: true,
    };
}

/// Which queues' tries a process claims (a task names its queue with `queue:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Queues {
    /// Every queue: the all-in-one scheduler, `standalone` and `flow run`, which are the only
    /// process running tasks on their machine (as Airflow's local executor ignores queues).
    All,
    /// Only these: `flow worker` (`default` unless `--queue` says otherwise), or a scheduler
    /// started with `--queue`.
    Only(Vec<String>),
}

impl std::fmt::Display for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Queues::All => f.write_str("every queue"),
            Queues::Only(names) => f.write_str(&names.join(",")),
        }
    }
}

impl Queues {
    pub fn serves(&self, queue: &str) -> bool {
        match self {
            Queues::All => true,
            Queues::Only(names) => names.iter().any(|n| n == queue),
        }
    }
}

/// What the loop is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The daemon: every DAG, scheduled runs, until shutdown.
    Daemon,
    /// `flow run`: one run, in this process, until it ends.
    Single(String),
}

/// The engine's errors, grouped by who must act: the caller ([`EngineError::is_input`]: a
/// param, a date range, a DAG without a schedule), whoever runs flow (the database, the DAGs
/// folder), or flow itself (a run that vanished, a panic).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The caller's request does not fit the DAG; the message says what to change.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot read the DAGs folder {folder}: {source}")]
    DagsFolder {
        folder: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to the database: {0}")]
    Write(#[from] CommitError),
    #[error("run {0} vanished right after it was created")]
    RunVanished(String),
    #[error("a blocking task panicked: {0}")]
    Panicked(#[from] tokio::task::JoinError),
}

impl EngineError {
    /// Whether the caller's input is at fault (a usage error, a 400), not flow or its database.
    pub fn is_input(&self) -> bool {
        matches!(self, EngineError::Input(_) | EngineError::Schedule(_))
    }
}

/// What the scheduler knows between passes; [`Engine::run`] turns it into the event loop.
pub struct Engine {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub config: EngineConfig,
    pub secrets: Secrets,
    catalog: DagCatalog,
    duties: Duties,
    queues: Queues,
    /// With [`Queues::All`]: the queues found holding tries on a full pass, claimed from on
    /// every pass since (`default` is always).
    seen_queues: BTreeSet<String>,
    /// Written on every claim and lease: `host:pid:random`, unique per process start.
    owner: String,
    hostname: String,
    /// Tries running in this process, their slots included while handed over.
    running: Arc<AtomicUsize>,
    /// Slots held by claims not yet answered.
    reserved: usize,
    /// The rows of runs this process started tries of: what a try reads of its run (ids, dates,
    /// params, DAG version) never changes. Forgotten when the run is no longer active.
    run_rows: HashMap<String, Arc<RunRow>>,
    /// dag_id -> when it next needs a look for a due run.
    next_due: HashMap<String, DateTime<Utc>>,
    /// Webhook posts in flight: awaited before the loop returns, so `flow run` does not exit
    /// before its notification is sent.
    notifications: Vec<tokio::task::JoinHandle<()>>,
    alerted: alerts::Alerted,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        config: EngineConfig,
        secrets: Secrets,
    ) -> Engine {
        let hostname = crate::telemetry::host().to_string();
        Engine {
            catalog: DagCatalog::new(store.clone(), registry.clone()),
            duties: Duties::ALL,
            queues: Queues::All,
            seen_queues: BTreeSet::new(),
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
            next_due: HashMap::new(),
            run_rows: HashMap::new(),
            notifications: Vec::new(),
            alerted: alerts::Alerted::default(),
        }
    }

    /// Limits what the daemon's loop does (see [`Duties`]); `flow run` always does both.
    pub fn with_duties(mut self, duties: Duties) -> Engine {
        self.duties = duties;
        self
    }

    /// Limits the queues whose tries this process claims (see [`Queues`]).
    pub fn with_queues(mut self, queues: Queues) -> Engine {
        self.queues = queues;
        self
    }

    /// The DAGs of the folder as last loaded.
    pub fn dags(&self) -> impl Iterator<Item = &Arc<Dag>> {
        self.catalog.current()
    }

    /// The DAG cache alone, for a server that runs no scheduler.
    pub fn into_catalog(self) -> DagCatalog {
        self.catalog
    }

    /// Loads the DAGs folder and records what it found; a broken file is recorded and skipped.
    pub async fn reload_dags(&mut self) -> Result<Loaded, EngineError> {
        let reloaded = self.catalog.reload(&self.config.dags_folder).await?;
        for id in &reloaded.changed {
            self.next_due.remove(id);
        }
        Ok(reloaded.loaded)
    }

    /// Runs the loop until shutdown (daemon) or until the run ends (single). Returns the run's
    /// final state in single mode.
    pub async fn run(
        self,
        mode: Mode,
        shutdown: CancellationToken,
    ) -> Result<Option<RunState>, EngineError> {
        event_loop::Loop::new(self, mode, shutdown).run().await
    }

    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.config.lease_timeout).unwrap_or_default()
    }
}

fn mode_accepts(mode: &Mode, run_id: &str) -> bool {
    match mode {
        Mode::Daemon => true,
        Mode::Single(id) => id == run_id,
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
