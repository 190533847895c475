//! The heartbeat task: keeps this scheduler's leases alive and stops the tries it lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::executor::{PidJournal, RunningTries, TryKey};
use crate::store::Store;
use crate::time::now;

/// Extends this scheduler's leases every third of the lease timeout, and every second stops
/// the tries it no longer owns (a clear reset them, or another scheduler took them over after a
/// lost lease): their results would be dropped anyway, and their processes must not run beside
/// the next try.
pub(super) struct Heartbeat {
    pub store: Arc<dyn Store>,
    /// The lease owner this scheduler writes on its claims.
    pub owner: String,
    pub hostname: String,
    pub lease: Duration,
    pub running: Arc<RunningTries>,
    pub pids: Arc<PidJournal>,
}

impl Heartbeat {
    /// Runs until `shutdown`; the loop also aborts it once its tries have ended.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let every = (self.lease / 3).max(Duration::from_millis(100));
            let mut last_beat: Option<Instant> = None;
            loop {
                if last_beat.is_none_or(|t| t.elapsed() >= every) && self.beat().await {
                    last_beat = Some(Instant::now());
                }
                self.pids.truncate_when_idle(&self.running);
                self.stop_lost().await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every.min(Duration::from_secs(1))) => {}
                }
            }
        })
    }

    /// Extends the leases; false when the database did not take it (tried again next second).
    async fn beat(&self) -> bool {
        let now = now();
        let until = now + chrono::Duration::from_std(self.lease).unwrap_or_default();
        let pid = std::process::id() as i64;
        // Only the tries in hand: one claimed under this name but never started lapses.
        let held = self.running.keys();
        match self
            .store
            .heartbeat(&self.owner, &self.hostname, pid, now, until, &held)
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("heartbeat failed: {e}");
                false
            }
        }
    }

    async fn stop_lost(&self) {
        let mine: Vec<TryKey> = self.running.keys();
        if mine.is_empty() {
            return;
        }
        let owned: HashSet<TryKey> = match self.store.owned_tries(&self.owner).await {
            Ok(owned) => owned.into_iter().collect(),
            Err(e) => {
                tracing::error!("cannot read this scheduler's tries: {e}");
                return;
            }
        };
        for key in mine.into_iter().filter(|k| !owned.contains(k)) {
            if self.running.stop_lost(&key) {
                tracing::warn!(
                    "{key} is no longer this scheduler's (cleared or taken over); stopping it"
                );
            }
        }
    }
}
