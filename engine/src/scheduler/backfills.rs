//! Backfills as objects (issue 23): a backfill names a DAG's intervals in [from, to], and runs
//! are created for them in a sliding window of at most `max_active_runs` queued or running at
//! once, the first window when the backfill is made and the next ones by the schedulers as
//! runs end. An interval that already has a run keeps it, or runs it again (`rerun`).

use chrono::{DateTime, Utc};
use serde_json::Value as Json;

use super::runs::new_run;
use super::{Engine, EngineError};
use crate::dag::Dag;
use crate::schedule::{DataInterval, Timetable};
use crate::state::RunType;
use crate::store::{Backfill, BackfillStep, Rerun, StepDone, Store};
use crate::time::now;

/// Most intervals one backfill may name.
pub const MAX_INTERVALS: usize = 100_000;

/// The default window: a backfill of up to this many intervals has all its runs at once, as
/// `flow backfill` always did (the contract's "creates the runs"); a longer one never holds more
/// created-but-unfinished runs. The DAG's `max_active_runs` still bounds how many run.
pub const DEFAULT_WINDOW: u32 = 100;

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillRequest {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub params: serde_json::Map<String, Json>,
    pub rerun: Rerun,
    pub reverse: bool,
    /// The window: most of its runs queued or running at once. Default: [`DEFAULT_WINDOW`],
    /// or the DAG's `max_active_runs` when larger.
    pub max_active_runs: Option<u32>,
    /// List the intervals; create nothing.
    pub dry_run: bool,
}

/// What making a backfill did.
#[derive(Debug, Clone)]
pub struct BackfillMade {
    /// None for a dry run, or when no interval falls in the range.
    pub backfill: Option<Backfill>,
    /// Every interval it covers, oldest first.
    pub intervals: Vec<DataInterval>,
    /// The first window, created at once.
    pub first: StepDone,
}

fn timetable(dag: &Dag) -> Result<Timetable, EngineError> {
    dag.timetable().ok_or_else(|| {
        EngineError::Input(format!(
            "DAG '{}' has no schedule, so it has no intervals to backfill; use flow trigger",
            dag.id
        ))
    })
}

/// Makes a backfill and creates its first window of runs.
pub async fn create_backfill(
    store: &dyn Store,
    dag: &Dag,
    req: &BackfillRequest,
) -> Result<BackfillMade, EngineError> {
    let tt = timetable(dag)?;
    let intervals = tt.intervals_between(req.from, req.to, MAX_INTERVALS)?;
    let params = dag
        .resolve_params(&req.params)
        .map_err(EngineError::Input)?;
    let cursor = if req.reverse {
        intervals.last()
    } else {
        intervals.first()
    };
    let (Some(cursor), false) = (cursor.map(|iv| iv.start), req.dry_run) else {
        return Ok(BackfillMade {
            backfill: None,
            intervals,
            first: StepDone::default(),
        });
    };
    let made = now();
    let backfill = Backfill {
        id: format!(
            "bf_{}_{:08x}",
            made.format("%Y%m%dT%H%M%S"),
            rand::random::<u32>()
        ),
        dag_id: dag.id.clone(),
        from: req.from,
        to: req.to,
        params: Json::Object(params),
        rerun: req.rerun,
        reverse: req.reverse,
        max_active_runs: req
            .max_active_runs
            .unwrap_or(DEFAULT_WINDOW.max(dag.max_active_runs))
            .max(1),
        state: "running".to_string(),
        cursor: Some(cursor),
        created: 0,
        existing: 0,
        created_at: made,
        ended_at: None,
    };
    store.insert_backfill(&backfill).await?;
    let first = advance(store, dag, &backfill).await?;
    Ok(BackfillMade {
        backfill: Some(backfill),
        intervals,
        first,
    })
}

/// The next intervals from `cursor` (down from it when reverse), at most `room`, and where the
/// cursor then stands.
fn window(
    tt: &Timetable,
    b: &Backfill,
    cursor: DateTime<Utc>,
    room: usize,
) -> Result<(Vec<DataInterval>, Option<DateTime<Utc>>), EngineError> {
    if b.reverse {
        let all = tt.intervals_between(b.from, cursor, MAX_INTERVALS)?;
        let split = all.len().saturating_sub(room);
        let next = split.checked_sub(1).map(|i| all[i].start);
        let mut taken = all[split..].to_vec();
        taken.reverse();
        return Ok((taken, next));
    }
    let mut taken = tt.first_intervals(cursor, b.to, room + 1);
    let next = (taken.len() > room).then(|| taken.remove(room).start);
    Ok((taken, next))
}

/// Creates the backfill's next window as room allows; finishes it once every interval has a
/// run and none is active.
pub async fn advance(store: &dyn Store, dag: &Dag, b: &Backfill) -> Result<StepDone, EngineError> {
    if b.state != "running" {
        return Ok(StepDone::default());
    }
    let progress = store.backfill_progress(&b.id).await?;
    let Some(cursor) = b.cursor else {
        if progress.active() == 0 {
            store.finish_backfill(&b.id, now()).await?;
        }
        return Ok(StepDone::default());
    };
    let room = (i64::from(b.max_active_runs) - progress.active()).max(0) as usize;
    if room == 0 {
        return Ok(StepDone::default());
    }
    let (intervals, next) = window(&timetable(dag)?, b, cursor, room)?;
    let params = b.params.as_object().cloned().unwrap_or_default();
    let at = now();
    let step = BackfillStep {
        id: b.id.clone(),
        runs: intervals
            .into_iter()
            .map(|iv| {
                new_run(
                    dag,
                    RunType::Backfill,
                    iv.start,
                    Some(iv),
                    params.clone(),
                    at,
                )
            })
            .collect(),
        rerun: b.rerun,
        from_cursor: cursor,
        cursor: next,
    };
    Ok(store.backfill_step(&step, at).await?)
}

impl Engine {
    /// Moves every running backfill's window on; returns how many runs were created.
    pub(super) async fn advance_backfills(&mut self) -> Result<usize, EngineError> {
        let running = self.store.running_backfills().await?;
        let mut created = 0;
        for b in running {
            let Some(dag) = self.catalog.current().find(|d| d.id == b.dag_id).cloned() else {
                continue;
            };
            match advance(self.store.as_ref(), &dag, &b).await {
                Ok(done) => created += done.created.len() + done.rerun.len(),
                // A DAG whose schedule went away cannot go on; its backfill waits for it.
                Err(EngineError::Input(why)) => tracing::warn!("backfill {}: {why}", b.id),
                Err(e) => return Err(e),
            }
        }
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn day(d: u32) -> DateTime<Utc> {
        chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 1, d, 0, 0, 0).unwrap()
    }

    fn backfill(reverse: bool) -> Backfill {
        Backfill {
            id: "bf".into(),
            dag_id: "d".into(),
            from: day(1),
            to: day(5),
            params: Json::Object(Default::default()),
            rerun: Rerun::None,
            reverse,
            max_active_runs: 2,
            state: "running".into(),
            cursor: None,
            created: 0,
            existing: 0,
            created_at: day(1),
            ended_at: None,
        }
    }

    #[test]
    fn windows_walk_the_intervals_forward_or_back_and_end() {
        let tt = Timetable {
            schedule: Schedule::parse("@daily").unwrap(),
            tz: chrono_tz::UTC,
            start_date: day(1),
            end_date: None,
            catchup: false,
        };
        let starts = |w: &[DataInterval]| w.iter().map(|iv| iv.start).collect::<Vec<_>>();
        let fwd = backfill(false);
        let (w, next) = window(&tt, &fwd, day(1), 2).unwrap();
        assert_eq!((starts(&w), next), (vec![day(1), day(2)], Some(day(3))));
        let (w, next) = window(&tt, &fwd, day(5), 2).unwrap();
        assert_eq!((starts(&w), next), (vec![day(5)], None));
        let back = backfill(true);
        let (w, next) = window(&tt, &back, day(5), 2).unwrap();
        assert_eq!((starts(&w), next), (vec![day(5), day(4)], Some(day(3))));
        let (w, next) = window(&tt, &back, day(1), 2).unwrap();
        assert_eq!((starts(&w), next), (vec![day(1)], None));
    }
}
