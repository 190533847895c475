//! Orphan recovery: tries whose scheduler died (its lease expired) are stopped if they still
//! run on this host, and retried or failed per their policy.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use super::{Engine, EngineError};
use crate::executor::{PidJournal, orphan_end, try_key};
use crate::store::{Claim, TiRow};

impl Engine {
    /// Ends every try whose lease expired; marks their runs `dirty` so they are planned again.
    pub(super) async fn recover_orphans(
        &mut self,
        now: DateTime<Utc>,
        dirty: &mut HashSet<String>,
    ) -> Result<(), EngineError> {
        for ti in self.store.expired_tries(now).await? {
            let Some(run) = self.store.get_run(&ti.run_id).await? else {
                continue;
            };
            let dag = self.catalog.version(&run.dag_id, &run.dag_version).await?;
            let claim = orphan_claim(&ti, now);
            self.kill_if_here(&ti, &claim);
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
                crate::metrics::metrics().orphan_recovered();
            }
        }
        Ok(())
    }

    /// Kills the orphan's process group when it ran on this host and may still be alive.
    fn kill_if_here(&self, ti: &TiRow, claim: &Claim) {
        if ti.hostname.as_deref() != Some(self.hostname.as_str()) {
            return;
        }
        // The pid is in the database once its detached write committed, and in the dead
        // scheduler's journal from before the command started.
        let pid = ti.pid.or_else(|| {
            PidJournal::find(
                &self.config.home,
                ti.lease_owner.as_deref()?,
                &try_key(claim),
            )
        });
        if let Some(pid) = pid.filter(|&p| p > 1) {
            // The try ran in its own process group; ESRCH just means it is gone already.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The claim the dead scheduler held, rebuilt from the row, so the end is written under it.
fn orphan_claim(ti: &TiRow, now: DateTime<Utc>) -> Claim {
    Claim {
        run_id: ti.run_id.clone(),
        task_id: ti.task_id.clone(),
        map_index: ti.map_index,
        try_number: ti.try_number,
        try_base: ti.try_base,
        item: ti.item.clone(),
        owner: ti.lease_owner.clone().unwrap_or_default(),
        started_at: ti.started_at.unwrap_or(now),
        external: ti.external_ref.clone(),
    }
}
