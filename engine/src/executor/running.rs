//! The tries this process runs, each with the token that stops it.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;

use crate::store::Claim;

/// Which try: what the heartbeat compares with the database's view of this process's leases.
pub(crate) use crate::store::TryId as TryKey;

pub(crate) fn try_key(claim: &Claim) -> TryKey {
    TryKey {
        run_id: claim.run_id.clone(),
        task_id: claim.task_id.clone(),
        map_index: claim.map_index,
        try_number: claim.try_number,
    }
}

/// The tries this process runs, each with the token that stops it.
#[derive(Default)]
pub(crate) struct RunningTries {
    tries: std::sync::Mutex<HashMap<TryKey, Running>>,
}

struct Running {
    stop: CancellationToken,
    /// Its end is being written: that write releases the lease, so a heartbeat that finds the
    /// lease gone must not take the try for one that was cleared or taken over.
    ending: bool,
}

impl RunningTries {
    pub fn insert(&self, key: TryKey, stop: CancellationToken) {
        if let Ok(mut m) = self.tries.lock() {
            m.insert(
                key,
                Running {
                    stop,
                    ending: false,
                },
            );
        }
    }

    pub fn remove(&self, key: &TryKey) {
        if let Ok(mut m) = self.tries.lock() {
            m.remove(key);
        }
    }

    pub fn keys(&self) -> Vec<TryKey> {
        self.tries
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.tries.lock().map(|m| m.is_empty()).unwrap_or(false)
    }

    pub(super) fn ending(&self, key: &TryKey) {
        if let Ok(mut m) = self.tries.lock()
            && let Some(r) = m.get_mut(key)
        {
            r.ending = true;
        }
    }

    /// Stops a try whose lease this process no longer holds, unless it is writing its own end.
    /// Returns whether it was stopped.
    pub(crate) fn stop_lost(&self, key: &TryKey) -> bool {
        let Ok(m) = self.tries.lock() else {
            return false;
        };
        match m.get(key) {
            Some(r) if !r.ending => {
                r.stop.cancel();
                true
            }
            _ => false,
        }
    }
}
