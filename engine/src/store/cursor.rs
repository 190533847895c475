//! Where this process's next claim of a pool starts reading the queue (ADR 8).
//!
//! PostgreSQL leaves the index entry of a claimed try behind until a vacuum removes it, and the
//! claim takes tries from the head of that index, so every claim walks past every try claimed
//! since the last vacuum (with autovacuum off, since the table was made): 2 ms a claim after a
//! few 10,000-item maps. A claim that starts after the last try this process claimed skips them.
//! Tries can still be queued before that point (a higher priority, a requeue, another scheduler,
//! a row another transaction held locked), so the head is read again when the cursor comes up
//! short, whenever this process queues a try, and at least once every [`CURSOR_TTL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Lane;

/// How long a cursor is trusted without reading the queue from its head: the longest a try
/// queued by another process can be passed over by tries queued after it.
pub const CURSOR_TTL: Duration = Duration::from_secs(1);

/// A queued try's place in claim order: higher priority first, then the longer queued, then by
/// key. The fields compare in the order of the `task_instances_ready` index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueKey {
    pub neg_priority: i64,
    pub queued_at: i64,
    pub run_id: String,
    pub task_id: String,
    pub map_index: i64,
}

#[derive(Debug, Clone)]
struct Cursor {
    after: QueueKey,
    /// When the queue was last read from its head for this pool.
    anchored: Instant,
}

/// The cursors of one store, per lane (pool and queue) and run filter (a `flow run` claims one
/// run's tries).
#[derive(Debug, Default)]
pub struct ClaimCursors {
    map: HashMap<(Lane, Option<String>), Cursor>,
    /// Counts the clears: a claim that read the cursors before one must not settle after it,
    /// or its cursor would pass over what the clear was for.
    epoch: u64,
}

impl ClaimCursors {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Where a claim may start, or None: read from the head.
    pub fn start(&self, lane: &Lane, run: Option<&str>, now: Instant) -> Option<QueueKey> {
        self.map
            .get(&(lane.clone(), run.map(str::to_string)))
            .filter(|c| now.duration_since(c.anchored) < CURSOR_TTL)
            .map(|c| c.after.clone())
    }

    /// Records what a committed claim read. `from_cursor` are the tries claimed after the cursor
    /// [`start`](Self::start) gave; `from_head`, if the head was read, the tries claimed from it;
    /// `epoch`, [`epoch`](Self::epoch) before the claim began.
    pub fn settle(
        &mut self,
        lane: &Lane,
        run: Option<&str>,
        from_cursor: &[QueueKey],
        from_head: Option<&[QueueKey]>,
        epoch: u64,
        now: Instant,
    ) {
        if epoch != self.epoch {
            return;
        }
        let key = (lane.clone(), run.map(str::to_string));
        let prev = self.map.get(&key).cloned();
        if let Some(next) = next_cursor(prev, from_cursor, from_head, now) {
            self.map.insert(key, next);
        }
    }

    /// Something was queued that may sort before a cursor: every claim reads from the head again.
    pub fn clear(&mut self) {
        self.map.clear();
        self.epoch += 1;
    }
}

/// Everything before the returned key is claimed, or was queued after the anchor. A head read
/// that found tries anchors at its last one: tries after it may still be queued before the
/// ones the cursor read found. Otherwise the cursor read claimed in order from the old cursor.
fn next_cursor(
    prev: Option<Cursor>,
    from_cursor: &[QueueKey],
    from_head: Option<&[QueueKey]>,
    now: Instant,
) -> Option<Cursor> {
    let last = |keys: &[QueueKey]| keys.iter().max().cloned();
    match from_head {
        Some(head) => last(head)
            .or_else(|| last(from_cursor))
            .or(prev.map(|c| c.after))
            .map(|after| Cursor {
                after,
                anchored: now,
            }),
        None => {
            let prev = prev?;
            Some(Cursor {
                after: last(from_cursor).unwrap_or(prev.after),
                anchored: prev.anchored,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(pool: &str) -> Lane {
        Lane {
            pool: pool.into(),
            queue: "default".into(),
        }
    }

    #[test]
    fn each_queue_of_a_pool_has_its_own_cursor() {
        let mut c = ClaimCursors::default();
        let t0 = Instant::now();
        let gpu = Lane {
            pool: "p".into(),
            queue: "gpu".into(),
        };
        c.settle(&lane("p"), None, &[], Some(&[k(0, 1, 3)]), 0, t0);
        assert_eq!(c.start(&lane("p"), None, t0), Some(k(0, 1, 3)));
        assert_eq!(c.start(&gpu, None, t0), None);
    }

    fn k(priority: i64, queued_at: i64, map_index: i64) -> QueueKey {
        QueueKey {
            neg_priority: -priority,
            queued_at,
            run_id: "r".into(),
            task_id: "t".into(),
            map_index,
        }
    }

    #[test]
    fn keys_order_like_the_claim() {
        // Higher priority first, then older, then the key.
        assert!(k(5, 100, 0) < k(0, 1, 0));
        assert!(k(0, 1, 9) < k(0, 2, 0));
        assert!(k(0, 1, 1) < k(0, 1, 2));
    }

    #[test]
    fn no_cursor_until_a_head_read() {
        let mut c = ClaimCursors::default();
        let t0 = Instant::now();
        assert_eq!(c.start(&lane("p"), None, t0), None);
        // A cursor read needs a cursor; without one nothing is recorded.
        c.settle(&lane("p"), None, &[k(0, 1, 0)], None, 0, t0);
        assert_eq!(c.start(&lane("p"), None, t0), None);
        c.settle(
            &lane("p"),
            None,
            &[],
            Some(&[k(0, 1, 0), k(0, 1, 1)]),
            0,
            t0,
        );
        assert_eq!(c.start(&lane("p"), None, t0), Some(k(0, 1, 1)));
    }

    #[test]
    fn a_cursor_read_moves_it_on_and_keeps_the_anchor() {
        let mut c = ClaimCursors::default();
        let t0 = Instant::now();
        c.settle(&lane("p"), None, &[], Some(&[k(0, 1, 0)]), 0, t0);
        let t1 = t0 + CURSOR_TTL / 2;
        c.settle(&lane("p"), None, &[k(0, 1, 2), k(0, 1, 1)], None, 0, t1);
        assert_eq!(c.start(&lane("p"), None, t1), Some(k(0, 1, 2)));
        // Claiming nothing keeps it.
        c.settle(&lane("p"), None, &[], None, 0, t1);
        assert_eq!(c.start(&lane("p"), None, t1), Some(k(0, 1, 2)));
        // The anchor is the head read's: the cursor expires a TTL after it, whatever came since.
        assert_eq!(c.start(&lane("p"), None, t0 + CURSOR_TTL), None);
    }

    #[test]
    fn a_head_read_that_found_tries_sets_it_at_their_last() {
        let mut c = ClaimCursors::default();
        let t0 = Instant::now();
        c.settle(&lane("p"), None, &[], Some(&[k(0, 1, 5)]), 0, t0);
        // The cursor read found one try; the head read found two older ones (say, requeued):
        // tries between them and the first may still be queued.
        let t1 = t0 + CURSOR_TTL / 2;
        c.settle(
            &lane("p"),
            None,
            &[k(0, 1, 9)],
            Some(&[k(0, 1, 0), k(0, 1, 1)]),
            0,
            t1,
        );
        assert_eq!(c.start(&lane("p"), None, t1), Some(k(0, 1, 1)));
        // Re-anchored at the head read.
        assert_eq!(
            c.start(
                &lane("p"),
                None,
                t1 + CURSOR_TTL / 2 + Duration::from_millis(1)
            ),
            Some(k(0, 1, 1))
        );
    }

    #[test]
    fn a_head_read_that_found_nothing_keeps_what_the_cursor_read_found() {
        let mut c = ClaimCursors::default();
        let t0 = Instant::now();
        c.settle(&lane("p"), None, &[], Some(&[k(0, 1, 5)]), 0, t0);
        c.settle(&lane("p"), None, &[k(0, 1, 6)], Some(&[]), 0, t0);
        assert_eq!(c.start(&lane("p"), None, t0), Some(k(0, 1, 6)));
        c.settle(&lane("p"), None, &[], Some(&[]), 0, t0 + CURSOR_TTL);
        assert_eq!(c.start(&lane("p"), None, t0 + CURSOR_TTL), Some(k(0, 1, 6)));
    }

    #[test]
    fn pools_and_run_filters_have_their_own_and_clear_drops_all() {
        let mut c = ClaimCursors::default();
        let t0 = Instant::now();
        c.settle(&lane("a"), None, &[], Some(&[k(0, 1, 1)]), 0, t0);
        c.settle(&lane("a"), Some("r"), &[], Some(&[k(0, 1, 2)]), 0, t0);
        c.settle(&lane("b"), None, &[], Some(&[k(0, 1, 3)]), 0, t0);
        assert_eq!(c.start(&lane("a"), None, t0), Some(k(0, 1, 1)));
        assert_eq!(c.start(&lane("a"), Some("r"), t0), Some(k(0, 1, 2)));
        assert_eq!(c.start(&lane("b"), None, t0), Some(k(0, 1, 3)));
        c.clear();
        assert_eq!(c.start(&lane("a"), None, t0), None);
        assert_eq!(c.start(&lane("b"), None, t0), None);
        // A claim that began before the clear records nothing.
        c.settle(&lane("a"), None, &[], Some(&[k(0, 1, 1)]), 0, t0);
        assert_eq!(c.start(&lane("a"), None, t0), None);
        c.settle(&lane("a"), None, &[], Some(&[k(0, 1, 1)]), c.epoch(), t0);
        assert_eq!(c.start(&lane("a"), None, t0), Some(k(0, 1, 1)));
    }
}
