//! The pid journal: the process groups a scheduler started, noted before they may do any work.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::running::{RunningTries, TryKey};
use crate::store::group_commit::Recorder;
use crate::store::{Claim, TryWrite};

/// Where a scheduler notes each process group it starts, before the command may do any work:
/// one line `PID RUN TASK MAP_INDEX TRY` per spawn, appended to `$FLOW_HOME/run/pids-OWNER.log`.
///
/// The note has to outlive the scheduler's process, not the machine: if the machine goes down,
/// the task's processes go with it. An append that `write` returned from is in the kernel's
/// page cache and survives a `kill -9` of the scheduler, so it needs no fsync, and the command
/// starts without waiting for a database commit (that wait was a third of a short try's time
/// in a group commit). The pid is also written to the database, without waiting, for
/// the pages and for schedulers that recover tries from another home.
pub(crate) struct PidJournal {
    pub(super) path: PathBuf,
    file: std::sync::Mutex<Option<std::fs::File>>,
}

impl PidJournal {
    pub fn path(home: &Path, owner: &str) -> PathBuf {
        let name: String = owner
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        home.join("run").join(format!("pids-{name}.log"))
    }

    pub fn new(home: &Path, owner: &str) -> PidJournal {
        PidJournal {
            path: Self::path(home, owner),
            file: std::sync::Mutex::new(None),
        }
    }

    /// Notes `pid` as the process group of `claim`'s try.
    pub fn note(&self, pid: u32, claim: &Claim) -> std::io::Result<()> {
        use std::io::Write;
        let line = format!(
            "{pid}\t{}\t{}\t{}\t{}\n",
            claim.run_id, claim.task_id, claim.map_index, claim.try_number
        );
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("pid journal lock poisoned"))?;
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            *file = Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        // One write per line: O_APPEND keeps each whole, even if two were in flight.
        match file.as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => Ok(()),
        }
    }

    /// The process group `owner` noted for a try, from its journal in `home`.
    pub fn find(home: &Path, owner: &str, key: &TryKey) -> Option<i64> {
        let text = std::fs::read_to_string(Self::path(home, owner)).ok()?;
        let wanted = format!(
            "{}\t{}\t{}\t{}",
            key.run_id, key.task_id, key.map_index, key.try_number
        );
        text.lines()
            .rev()
            .find_map(|l| l.split_once('\t').filter(|(_, rest)| *rest == wanted))
            .and_then(|(pid, _)| pid.parse().ok())
    }

    /// Empties the journal while no try of this scheduler runs, so that a long-lived scheduler's
    /// journal stays as short as its busiest moment. A try is registered in `running` before it
    /// notes its pid, and the check and the truncation hold the journal's lock, so a note is
    /// never cut away.
    pub(crate) fn truncate_when_idle(&self, running: &RunningTries) {
        if let Ok(mut file) = self.file.lock()
            && let Some(f) = file.as_mut()
            && running.is_empty()
            && let Err(e) = f.set_len(0)
        {
            tracing::warn!("cannot empty {}: {e}", self.path.display());
        }
    }

    /// Removes the journal: on a clean shutdown, when none of its tries can still be running.
    pub fn remove(&self) {
        if let Ok(mut f) = self.file.lock() {
            *f = None;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What an operator sends when it starts a process group: the pid, and where to answer
/// whether it was noted (an operator does not start work it could not have stopped).
pub(super) type PidNote = (u32, tokio::sync::oneshot::Sender<bool>);

/// Notes each pid a try's operator sends in the journal at once, and in the database once the
/// try has run for a second: a short try ends before anyone could look, and its write would only
/// compete with the ends for commits. Ends when the operator's sender is dropped.
pub(super) fn spawn_writer(
    pids: Arc<PidJournal>,
    recorder: Recorder,
    claim: Claim,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<PidNote>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut pending: Option<u32> = None;
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some((pid, reply)) = msg else { break };
                    let ok = match pids.note(pid, &claim) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!("cannot note pid {pid} in {}: {e}", pids.path.display());
                            false
                        }
                    };
                    let _ = reply.send(ok);
                    if ok && let Some(earlier) = pending.replace(pid) {
                        recorder.write_detached(TryWrite::Pid(claim.clone(), earlier as i64));
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(1)), if pending.is_some() => {
                    if let Some(pid) = pending.take() {
                        recorder.write_detached(TryWrite::Pid(claim.clone(), pid as i64));
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::try_key;
    use crate::plan::UNMAPPED;
    use tokio_util::sync::CancellationToken;

    fn claim(task: &str, try_number: i64) -> Claim {
        Claim {
            run_id: "r__2026-01-01T00:00:00+00:00".into(),
            task_id: task.into(),
            map_index: UNMAPPED,
            try_number,
            try_base: 0,
            item: None,
            owner: "host:1:ab".into(),
            external: None,
            started_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn notes_are_found_by_try_and_emptied_only_when_no_try_runs() {
        let home = tempfile::tempdir().unwrap();
        let owner = "host:1:ab";
        let journal = PidJournal::new(home.path(), owner);
        journal.note(101, &claim("a", 1)).unwrap();
        journal.note(102, &claim("b", 1)).unwrap();
        journal.note(103, &claim("a", 2)).unwrap();
        let find = |task: &str, n: i64| {
            let c = claim(task, n);
            PidJournal::find(home.path(), owner, &try_key(&c))
        };
        assert_eq!(find("a", 1), Some(101));
        assert_eq!(find("a", 2), Some(103));
        assert_eq!(find("b", 1), Some(102));
        assert_eq!(find("b", 2), None);
        // "a" must not match a task whose id only starts with it.
        journal.note(104, &claim("ab", 1)).unwrap();
        assert_eq!(find("a", 1), Some(101));
        assert_eq!(
            PidJournal::find(home.path(), "someone-else", &try_key(&claim("a", 1))),
            None
        );

        let running = RunningTries::default();
        running.insert(try_key(&claim("a", 2)), CancellationToken::new());
        journal.truncate_when_idle(&running);
        assert_eq!(find("a", 2), Some(103), "emptied while a try ran");
        running.remove(&try_key(&claim("a", 2)));
        journal.truncate_when_idle(&running);
        assert_eq!(find("a", 2), None);
        // Notes after the truncation land at the start of the emptied file.
        journal.note(105, &claim("c", 1)).unwrap();
        assert_eq!(find("c", 1), Some(105));
        assert_eq!(
            std::fs::read_to_string(PidJournal::path(home.path(), owner))
                .unwrap()
                .lines()
                .count(),
            1
        );
        journal.remove();
        assert!(!PidJournal::path(home.path(), owner).exists());
    }
}
