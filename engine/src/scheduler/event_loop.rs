//! The loop's state and one method per event; see the module map in [`super`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::heartbeat::Heartbeat;
use super::launch::{Slots, TryDone, requeue};
use super::{Duties, Engine, EngineError, Mode, mode_accepts, watch};
use crate::executor::{PidJournal, RunningTries, TryEnv};
use crate::state::RunState;
use crate::store::group_commit::{Claimed, Recorder};
use crate::store::{Wake, Wakeups};
use crate::time::now;

const MAPPED_PLAN_INTERVAL: Duration = Duration::from_millis(50);

/// How long a run whose news can wait (see [`TryDone::can_wait`]) goes unplanned: at least
/// MAPPED_PLAN_INTERVAL, and long enough that planning it takes at most a twentieth of the time
/// (planning a 10,000-item map reads 10,000 index entries), but never more than a second.
fn plan_interval(cost: Duration) -> Duration {
    (cost * 20).clamp(MAPPED_PLAN_INTERVAL, Duration::from_secs(1))
}

/// When a run was last planned and what that cost.
#[derive(Debug, Clone, Copy)]
struct LastPlan {
    at: Instant,
    cost: Duration,
}

impl LastPlan {
    fn next_due(&self) -> Instant {
        self.at + plan_interval(self.cost)
    }
}

/// A database that fails for a moment (a deadlock, a restart, a full disk being cleaned) must
/// not stop the scheduler: the pass logs the error, goes on with what it can, and the loop
/// tries again shortly. Nothing is lost because nothing was acted on before it was committed.
#[derive(Default)]
struct Trouble {
    this_pass: Option<EngineError>,
    /// Passes in a row that met an error.
    passes: u32,
    /// When a pass first went through after failing ones: the database came back then.
    healthy_since: Option<Instant>,
}

impl Trouble {
    fn catch<T>(&mut self, r: Result<T, impl Into<EngineError>>) -> Option<T> {
        match r.map_err(Into::into) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!("scheduler: {e}; trying again shortly");
                self.this_pass = Some(e);
                None
            }
        }
    }

    /// Whether the database has answered for `quiet` since it last failed. After an outage
    /// every process's heartbeats failed too, so every lease looks expired: orphans are
    /// recovered only once the live processes have had a lease's time to renew theirs.
    fn quiet_for(&self, quiet: Duration) -> bool {
        self.passes == 0 && self.healthy_since.is_none_or(|at| at.elapsed() >= quiet)
    }
}

/// What woke the loop.
enum Event {
    Shutdown,
    TriesDone(Vec<TryDone>),
    Answers(Vec<Claimed>),
    DagChange,
    Wake(Vec<Wake>),
    Tick,
}

/// The receiving ends of the loop's channels.
struct Inbox {
    done: mpsc::UnboundedReceiver<TryDone>,
    claimed: mpsc::UnboundedReceiver<Claimed>,
    reload: mpsc::UnboundedReceiver<()>,
    /// Other processes' news (daemons only; `flow run` is alone with its run).
    wakeups: Option<Wakeups>,
}

pub(super) struct Loop {
    engine: Engine,
    mode: Mode,
    duties: Duties,
    shutdown: CancellationToken,
    slots: Slots,
    inbox: Inbox,
    /// Kept alive for the loop's life; None when not watching (single mode, or no inotify).
    _watcher: Option<::notify::RecommendedWatcher>,
    heartbeat: tokio::task::JoinHandle<()>,
    pids: Arc<PidJournal>,
    /// Runs to plan on this pass.
    dirty: HashSet<String>,
    /// Runs whose only news is tries that cannot unblock anything by themselves (see
    /// [`TryDone::can_wait`]): planned at most every `plan_interval`, not after every try.
    deferred: HashMap<String, Instant>,
    last_planned: HashMap<String, LastPlan>,
    /// Claim answers not yet started.
    answers: Vec<Claimed>,
    /// Whether this pass reads the database for what other processes did (runs, pauses, due
    /// times): after a tick or a DAG change, not after every try's end.
    full_pass: bool,
    /// Whether a claim could find work: a claim that finds none is a write transaction, so the
    /// loop claims only after something that can make a try claimable or a slot free.
    want_claim: bool,
    last_recovery: DateTime<Utc>,
    /// The end state of `flow run`'s run, once it has one.
    result: Option<RunState>,
    trouble: Trouble,
}

impl Loop {
    pub(super) fn new(engine: Engine, mode: Mode, shutdown: CancellationToken) -> Loop {
        let (done_tx, done) = mpsc::unbounded_channel();
        let (claimed_tx, claimed) = mpsc::unbounded_channel();
        let (reload_tx, reload) = mpsc::unbounded_channel();
        let duties = match mode {
            Mode::Daemon => engine.duties,
            Mode::Single(_) => Duties::ALL,
        };
        // Only a loop that plans follows the DAGs folder: a worker runs the versions the
        // database names, whatever its own folder holds.
        let watcher = (mode == Mode::Daemon && duties.plan)
            .then(|| watch(&engine.config.dags_folder, reload_tx))
            .flatten();
        let running: Arc<RunningTries> = Default::default();
        let pids = Arc::new(PidJournal::new(&engine.config.home, &engine.owner));
        let heartbeat = Heartbeat {
            store: engine.store.clone(),
            owner: engine.owner.clone(),
            hostname: engine.hostname.clone(),
            lease: engine.config.lease_timeout,
            running: running.clone(),
            pids: pids.clone(),
        }
        .spawn(shutdown.clone());
        let cancel = CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let env = Arc::new(TryEnv {
            shutdown: cancel.clone(),
            running,
            pids: pids.clone(),
            recorder: Recorder::start(engine.store.clone()),
            store: engine.store.clone(),
            registry: engine.registry.clone(),
            secrets: engine.secrets.clone(),
            home: engine.config.home.clone(),
            remote_logs: engine.config.remote_logs.clone(),
            base_url: engine.config.base_url.clone(),
            tracker: tracker.clone(),
            runs: Arc::new(super::launcher::Launcher {
                store: engine.store.clone(),
                registry: engine.registry.clone(),
            }),
        });
        let slots = Slots {
            env,
            tries: tracker,
            cancel,
            done_tx,
            claimed_tx,
        };
        Loop {
            engine,
            mode,
            duties,
            shutdown,
            slots,
            inbox: Inbox {
                done,
                claimed,
                reload,
                wakeups: None,
            },
            _watcher: watcher,
            heartbeat,
            pids,
            dirty: HashSet::new(),
            deferred: HashMap::new(),
            last_planned: HashMap::new(),
            answers: Vec::new(),
            full_pass: true,
            want_claim: true,
            last_recovery: DateTime::<Utc>::MIN_UTC,
            result: None,
            trouble: Trouble::default(),
        }
    }

    /// One pass per event until shutdown (daemon) or the run's end (single).
    pub(super) async fn run(mut self) -> Result<Option<RunState>, EngineError> {
        if self.mode == Mode::Daemon {
            self.inbox.wakeups = Some(self.engine.store.wakeups().await);
        }
        loop {
            let now = now();
            let started = Instant::now();
            let span = self.pass_span();
            let wake_at = self.pass(now).instrument(span).await;
            crate::metrics::metrics().pass(started.elapsed());
            if self.result.is_some() && self.idle() {
                break;
            }
            self.count_trouble()?;
            let sleep_for = self.sleep_for(now, wake_at);
            self.last_planned
                .retain(|_, p| p.at.elapsed() < plan_interval(p.cost));
            self.full_pass = false;
            match self.next_event(sleep_for).await {
                Event::Shutdown => break,
                Event::TriesDone(done) => self.on_tries_done(done).await,
                Event::Answers(answers) => self.answers.extend(answers),
                Event::DagChange => self.on_dag_change().await,
                Event::Wake(wakes) => self.on_wake(wakes),
                Event::Tick => self.full_pass = true,
            }
        }
        self.shut_down().await
    }

    /// The span of a pass with news to act on (runs to plan, claims to start): a trace of its
    /// own, so that a slow pass can be found. Idle ticks get none, or a daemon would send a
    /// trace every poll interval.
    fn pass_span(&self) -> tracing::Span {
        if self.dirty.is_empty() && self.answers.is_empty() {
            return tracing::Span::none();
        }
        tracing::debug_span!(
            parent: None,
            "scheduler.pass",
            full = self.full_pass,
            runs = self.dirty.len() as i64,
            claims = self.answers.len() as i64,
        )
    }

    /// Starts what claims brought, reads the database on full passes, recovers orphans, plans
    /// the runs with news and claims. Returns the earliest time a planned run asked to be
    /// looked at again.
    async fn pass(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.start_answers().await;
        if !self.duties.plan {
            // A worker: the runs its tries end are planned by the schedulers.
            self.dirty.clear();
            self.want_claim |= self.full_pass;
            self.claim().await;
            return None;
        }
        if self.full_pass {
            self.read_database(now).await;
        }
        if now - self.last_recovery > chrono::Duration::seconds(1)
            && self.trouble.quiet_for(self.engine.config.lease_timeout)
        {
            self.last_recovery = now;
            let r = self.engine.recover_orphans(now, &mut self.dirty).await;
            self.trouble.catch(r);
        }
        self.release_deferred();
        self.want_claim |= self.full_pass || !self.dirty.is_empty();
        let wake_at = self.plan_dirty(now).await;
        if self.result.is_none() || !self.idle() {
            self.claim().await;
        }
        wake_at
    }

    /// Event: claims came back (the loop's own, or slots handed over by ending tries).
    async fn start_answers(&mut self) {
        for c in std::mem::take(&mut self.answers) {
            // A claim that filled every slot it held may have left more behind.
            let filled = self.engine.start_claimed(c, &self.slots).await;
            if self.trouble.catch(filled) == Some(true) {
                self.want_claim = true;
            }
        }
    }

    /// Runs changed by other processes (trigger, clear, pause) and due times are found here.
    async fn read_database(&mut self, now: DateTime<Utc>) {
        let engine = &mut self.engine;
        let mut active = self
            .trouble
            .catch(engine.store.active_runs().await)
            .unwrap_or_default();
        let paused = self
            .trouble
            .catch(engine.store.paused_flags().await)
            .unwrap_or_default();
        if self.mode == Mode::Daemon {
            let created = engine.create_due_runs(now, &active, &paused).await;
            if self.trouble.catch(created).unwrap_or(0) > 0 {
                active = self
                    .trouble
                    .catch(engine.store.active_runs().await)
                    .unwrap_or_default();
            }
        }
        if self.mode == Mode::Daemon {
            let alerted = engine.post_due_alerts(now, &active).await;
            self.trouble.catch(alerted);
        }
        let started = engine.start_runs(&self.mode, now, &active, &paused).await;
        if let Some(started) = self.trouble.catch(started) {
            self.dirty.extend(started);
        }
        let live: HashSet<&str> = active.iter().map(|r| r.run_id.as_str()).collect();
        engine.run_rows.retain(|id, _| live.contains(id.as_str()));
        for r in active {
            if r.state == RunState::Running && mode_accepts(&self.mode, &r.run_id) {
                self.dirty.insert(r.run_id);
            }
        }
    }

    /// Deferred runs whose time has come join this pass.
    fn release_deferred(&mut self) {
        let instant = Instant::now();
        let dirty = &mut self.dirty;
        self.deferred.retain(|run_id, due| {
            if *due <= instant {
                dirty.insert(run_id.clone());
                false
            } else {
                true
            }
        });
    }

    /// Plans every dirty run; a run whose planning failed stays dirty for the next pass.
    async fn plan_dirty(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut wake_at: Option<DateTime<Utc>> = None;
        let mut plan_again = Vec::new();
        for run_id in std::mem::take(&mut self.dirty) {
            self.deferred.remove(&run_id);
            let at = Instant::now();
            let planned = self.engine.plan_run(&run_id, now).await;
            let cost = at.elapsed();
            self.last_planned
                .insert(run_id.clone(), LastPlan { at, cost });
            let Some(planned) = self.trouble.catch(planned) else {
                plan_again.push(run_id);
                continue;
            };
            if let Some(w) = planned.wake_at {
                wake_at = Some(wake_at.map_or(w, |x| x.min(w)));
            }
            if let Mode::Single(target) = &self.mode
                && *target == run_id
                && let Some(s) = planned.state.filter(|s| s.is_terminal())
            {
                self.result = Some(s);
            }
        }
        self.dirty.extend(plan_again);
        wake_at
    }

    /// Claims into the free slots when a claim could find work.
    async fn claim(&mut self) {
        if self.shutdown.is_cancelled() || !self.want_claim || !self.duties.run_tasks {
            return;
        }
        // With every slot taken or reserved nothing is claimed now, and the wish stands: a
        // claim still in flight may have been launched before the work it would have found was
        // queued, and comes back empty.
        let launched = self
            .engine
            .launch(self.full_pass, &self.mode, &self.slots)
            .await;
        self.want_claim = self.trouble.catch(launched) == Some(false);
    }

    /// No try of this process runs and no claim is in flight.
    fn idle(&self) -> bool {
        self.engine.running.load(Ordering::SeqCst) == 0 && self.engine.reserved == 0
    }

    /// `flow run` gives up after about a minute of failing passes; the daemon never does.
    fn count_trouble(&mut self) -> Result<(), EngineError> {
        match self.trouble.this_pass.take() {
            Some(e) => {
                self.trouble.passes += 1;
                if matches!(self.mode, Mode::Single(_)) && self.trouble.passes >= 120 {
                    return Err(e);
                }
            }
            None => {
                if self.trouble.passes > 0 {
                    tracing::info!("scheduler: the database answers again");
                    self.trouble.healthy_since = Some(Instant::now());
                }
                self.trouble.passes = 0;
            }
        }
        Ok(())
    }

    /// How long to wait for an event before a tick: soon enough to see what other processes
    /// write (a trigger, a clear), and no later than a planned wake-up or a deferred run.
    fn sleep_for(&self, now: DateTime<Utc>, wake_at: Option<DateTime<Utc>>) -> Duration {
        if self.trouble.passes > 0 {
            return Duration::from_millis(500);
        }
        let mut sleep_for = match self.mode {
            Mode::Daemon => self.engine.config.poll_interval,
            Mode::Single(_) => Duration::from_millis(500),
        };
        if let Some(w) = wake_at {
            sleep_for = sleep_for.min((w - now).to_std().unwrap_or_default());
        }
        if let Some(due) = self.deferred.values().min() {
            sleep_for = sleep_for.min(due.saturating_duration_since(Instant::now()));
        }
        sleep_for
    }

    async fn next_event(&mut self, sleep_for: Duration) -> Event {
        let inbox = &mut self.inbox;
        tokio::select! {
            _ = self.shutdown.cancelled() => Event::Shutdown,
            Some(first) = inbox.done.recv() => {
                let mut done = vec![first];
                while let Ok(d) = inbox.done.try_recv() {
                    done.push(d);
                }
                Event::TriesDone(done)
            }
            Some(first) = inbox.claimed.recv() => {
                let mut answers = vec![first];
                while let Ok(c) = inbox.claimed.try_recv() {
                    answers.push(c);
                }
                Event::Answers(answers)
            }
            Some(()) = inbox.reload.recv() => Event::DagChange,
            first = next_wake(&mut inbox.wakeups) => {
                let mut wakes = vec![first];
                wakes.extend(inbox.wakeups.as_mut().map(Wakeups::drain).unwrap_or_default());
                Event::Wake(wakes)
            }
            _ = tokio::time::sleep(sleep_for) => Event::Tick,
        }
    }

    /// Event: tries ended. Their runs are planned on this pass, or deferred when the news can
    /// wait and the run was planned a moment ago.
    async fn on_tries_done(&mut self, done: Vec<TryDone>) {
        self.want_claim = true;
        if !self.duties.plan {
            // The planners hear of these ends from the wake-up alone: one per run, urgent if
            // any of its ends may have made a task runnable.
            let mut urgent: HashMap<String, bool> = HashMap::new();
            for d in done {
                *urgent.entry(d.run_id).or_default() |= !d.can_wait;
            }
            for (run_id, urgent) in urgent {
                let wake = match urgent {
                    true => Wake::Tried(run_id),
                    false => Wake::Settled(run_id),
                };
                self.engine.store.wake(&wake).await;
            }
            return;
        }
        for ev in done {
            self.try_ended(ev.run_id, ev.can_wait);
        }
    }

    /// A try of `run_id` ended, here or on a worker: plan the run on this pass, or put it off
    /// when the news can wait and the run was planned a moment ago.
    fn try_ended(&mut self, run_id: String, can_wait: bool) {
        let due = self
            .last_planned
            .get(&run_id)
            .map(LastPlan::next_due)
            .filter(|due| *due > Instant::now());
        match due.filter(|_| can_wait && !self.dirty.contains(&run_id)) {
            Some(due) => {
                self.deferred.entry(run_id).or_insert(due);
            }
            None => {
                self.dirty.insert(run_id);
            }
        }
    }

    /// Event: another process (or this one) rang. Each wake-up only says where to look; a
    /// process that does not plan or run tasks ignores what is not its business.
    fn on_wake(&mut self, wakes: Vec<Wake>) {
        for w in wakes {
            if matches!(w, Wake::Ready | Wake::Missed) && self.duties.run_tasks {
                self.want_claim = true;
            }
            match w {
                Wake::Runs | Wake::Missed if self.duties.plan => self.full_pass = true,
                Wake::Tried(run_id) if self.duties.plan && mode_accepts(&self.mode, &run_id) => {
                    self.want_claim = true;
                    self.try_ended(run_id, false);
                }
                Wake::Settled(run_id) if self.duties.plan && mode_accepts(&self.mode, &run_id) => {
                    self.want_claim = true;
                    self.try_ended(run_id, true);
                }
                _ => {}
            }
        }
    }

    /// Event: a file in the DAGs folder changed.
    async fn on_dag_change(&mut self) {
        // Editors write files in several steps: let them finish before reading.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while self.inbox.reload.try_recv().is_ok() {}
        if let Err(e) = self.engine.reload_dags().await {
            tracing::error!("cannot reload DAGs: {e}");
        }
        self.full_pass = true;
    }

    /// Event: shutdown (or the single run ended). Interrupted tries go back to the queue
    /// without using up a retry, and so do those claimed but not started yet.
    async fn shut_down(mut self) -> Result<Option<RunState>, EngineError> {
        let env = self.slots.env.clone();
        self.slots.cancel.cancel();
        while self.engine.reserved > 0 {
            let c = match self.answers.pop() {
                Some(c) => c,
                None => match self.inbox.claimed.recv().await {
                    Some(c) => c,
                    None => break,
                },
            };
            if !c.handover {
                self.engine.reserved -= c.reserved();
            }
            requeue_all(&env, c).await;
        }
        self.slots.tries.close();
        self.slots.tries.wait().await;
        // Tries that ended during the shutdown may have handed their slots over before they
        // saw it: their successors were claimed but will not start here.
        while let Ok(c) = self.inbox.claimed.try_recv() {
            requeue_all(&env, c).await;
        }
        // Every try of this scheduler has ended or been requeued: none of its notes is needed.
        self.pids.remove();
        self.heartbeat.abort();
        for h in std::mem::take(&mut self.engine.notifications) {
            // Each post has its own 10 s timeout.
            let _ = h.await;
        }
        Ok(self.result)
    }
}

async fn next_wake(wakeups: &mut Option<Wakeups>) -> Wake {
    match wakeups {
        Some(w) => w.recv().await,
        None => std::future::pending().await,
    }
}

async fn requeue_all(env: &TryEnv, c: Claimed) {
    for claim in c.result.into_iter().flatten().flatten() {
        requeue(env, &claim).await;
    }
}
