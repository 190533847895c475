//! Run and task states, and which of them are final.

use std::fmt;
use std::str::FromStr;

/// `map_index` of a task instance that is not mapped (the JSON shows `null`).
pub const UNMAPPED: i64 = -1;

/// The state of one task instance (one map index of one task in one run).
///
/// `scheduled` means "part of the run, waiting for its upstreams"; `queued` means "ready,
/// waiting for a slot"; an executor's claim moves it to `running`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskState {
    Scheduled,
    Queued,
    Running,
    Success,
    Failed,
    UpForRetry,
    Skipped,
    UpstreamFailed,
}

impl TaskState {
    pub(crate) const ALL: [TaskState; 8] = [
        TaskState::Scheduled,
        TaskState::Queued,
        TaskState::Running,
        TaskState::Success,
        TaskState::Failed,
        TaskState::UpForRetry,
        TaskState::Skipped,
        TaskState::UpstreamFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Scheduled => "scheduled",
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Success => "success",
            TaskState::Failed => "failed",
            TaskState::UpForRetry => "up_for_retry",
            TaskState::Skipped => "skipped",
            TaskState::UpstreamFailed => "upstream_failed",
        }
    }

    /// Ended for good (until a clear): trigger rules count only these as "done".
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Success | TaskState::Failed | TaskState::Skipped | TaskState::UpstreamFailed
        )
    }

    /// Counts as failed for trigger rules and for the run's outcome.
    pub fn is_failure(self) -> bool {
        matches!(self, TaskState::Failed | TaskState::UpstreamFailed)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| format!("unknown task state '{s}'"))
    }
}

/// The state of a DAG run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    Queued,
    Running,
    Success,
    Failed,
}

impl RunState {
    pub(crate) const ALL: [RunState; 4] = [
        RunState::Queued,
        RunState::Running,
        RunState::Success,
        RunState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Success => "success",
            RunState::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Success | RunState::Failed)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                format!("unknown run state '{s}' (expected queued, running, success or failed)")
            })
    }
}

/// Why a run exists; scheduled and backfill runs are unique per logical date, manual ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunType {
    Scheduled,
    Manual,
    Backfill,
    /// Started by dataset events (`schedule: { datasets: [...] }`).
    DatasetTriggered,
}

impl RunType {
    pub fn as_str(self) -> &'static str {
        match self {
            RunType::Scheduled => "scheduled",
            RunType::Manual => "manual",
            RunType::Backfill => "backfill",
            RunType::DatasetTriggered => "dataset_triggered",
        }
    }
}

impl FromStr for RunType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scheduled" => Ok(RunType::Scheduled),
            "manual" => Ok(RunType::Manual),
            "backfill" => Ok(RunType::Backfill),
            "dataset_triggered" => Ok(RunType::DatasetTriggered),
            _ => Err(format!("unknown run type '{s}'")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>().unwrap(), s);
        }
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>().unwrap(), s);
        }
        assert!("done".parse::<RunState>().is_err());
    }

    #[test]
    fn terminal_and_failure_sets() {
        let terminal: Vec<_> = TaskState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [
                TaskState::Success,
                TaskState::Failed,
                TaskState::Skipped,
                TaskState::UpstreamFailed
            ]
        );
        assert!(!TaskState::UpForRetry.is_terminal());
        assert!(TaskState::UpstreamFailed.is_failure());
        assert!(!TaskState::Skipped.is_failure());
    }
}
