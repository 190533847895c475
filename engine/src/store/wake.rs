//! Wake-ups between the processes of one database: a trigger reaches the schedulers, a queued
//! try the workers, a try's end the planners and a run's end whoever waits for it, without
//! waiting for anyone's next poll.
//!
//! A wake-up says only that something happened, never what the database holds: a receiver
//! reads the database to learn the rest. So a lost wake-up costs time, never correctness, and
//! every receiver keeps a slow poll for the wake-ups it can miss (a listener reconnecting after
//! an outage, a process started after the news). PostgreSQL carries them by LISTEN/NOTIFY on
//! one channel; SQLite by datagrams to a Unix socket per listening process (see
//! `sql/wake.rs`).

use tokio::sync::broadcast;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// Runs were created, cleared, marked or a DAG (un)paused: planners read the database.
    Runs,
    /// Tries were queued: processes that run tasks claim.
    Ready,
    /// A try of this run ended on a process that does not plan: planners plan the run.
    Tried(String),
    /// Tries of this run ended on a process that does not plan, and none of those ends can by
    /// itself make another task runnable (mapped instances, or tasks whose downstream tasks
    /// wait for other upstreams too): planners may put planning the run off for a moment and
    /// share one plan among many such ends, as they do for their own tries.
    Settled(String),
    /// This run ended.
    Ended(String),
    /// Wake-ups may have been lost (the receiver fell behind, or its listener reconnected):
    /// look at everything.
    Missed,
}

impl Wake {
    /// The wire form: a kind, then the run id after a colon where there is one.
    pub(crate) fn encode(&self) -> String {
        match self {
            Wake::Runs => "runs".into(),
            Wake::Ready => "ready".into(),
            Wake::Tried(run) => format!("tried:{run}"),
            Wake::Settled(run) => format!("settled:{run}"),
            Wake::Ended(run) => format!("ended:{run}"),
            Wake::Missed => "missed".into(),
        }
    }

    /// None for what this build does not know (a newer process on the same database).
    pub(crate) fn decode(text: &str) -> Option<Wake> {
        let (kind, run) = match text.split_once(':') {
            Some((kind, run)) => (kind, Some(run.to_string())),
            None => (text, None),
        };
        match (kind, run) {
            ("runs", None) => Some(Wake::Runs),
            ("ready", None) => Some(Wake::Ready),
            ("missed", None) => Some(Wake::Missed),
            ("tried", Some(run)) => Some(Wake::Tried(run)),
            ("settled", Some(run)) => Some(Wake::Settled(run)),
            ("ended", Some(run)) => Some(Wake::Ended(run)),
            _ => None,
        }
    }
}

/// One receiver of every wake-up of the database (this process's own included).
pub struct Wakeups(pub(crate) broadcast::Receiver<Wake>);

impl Wakeups {
    /// The next wake-up; waits forever once the store is gone.
    pub async fn recv(&mut self) -> Wake {
        match self.0.recv().await {
            Ok(w) => w,
            Err(broadcast::error::RecvError::Lagged(_)) => Wake::Missed,
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// Returns when one of `run_ids` has ended, wake-ups were lost, or `poll` has passed: the
    /// caller reads the runs again either way, and `poll` covers a wake-up the database could
    /// not send.
    pub async fn run_ended(&mut self, run_ids: &[String], poll: std::time::Duration) {
        let poll = tokio::time::sleep(poll);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                _ = &mut poll => return,
                w = self.recv() => match w {
                    Wake::Ended(id) if run_ids.contains(&id) => return,
                    Wake::Missed => return,
                    _ => {}
                },
            }
        }
    }

    /// The wake-ups already here, without waiting.
    pub fn drain(&mut self) -> Vec<Wake> {
        let mut got = Vec::new();
        loop {
            match self.0.try_recv() {
                Ok(w) => got.push(w),
                Err(broadcast::error::TryRecvError::Lagged(_)) => got.push(Wake::Missed),
                Err(_) => return got,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wake_survives_its_wire_form() {
        for w in [
            Wake::Runs,
            Wake::Ready,
            Wake::Missed,
            Wake::Tried("manual__2026-01-01T00:00:00+00:00".into()),
            Wake::Settled("scheduled__x".into()),
            Wake::Ended("a:b".into()),
        ] {
            assert_eq!(Wake::decode(&w.encode()), Some(w));
        }
        assert_eq!(Wake::decode("later"), None);
        assert_eq!(Wake::decode("runs:x"), None);
        assert_eq!(Wake::decode("ended"), None);
    }
}
