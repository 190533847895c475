//! Schedules and timetables: when a DAG's runs happen and which data interval
//! each run covers.
//!
//! Everything here is pure: no I/O and no clock reads, so the caller passes
//! `now` and the results are reproducible in tests.
//!
//! A run's logical date is the START of its data interval and the run becomes
//! due once that interval has ended (the Airflow 2 convention).

use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};

const NANOS_PER_SEC: i128 = 1_000_000_000;

const EXPECTED_SCHEDULE: &str = "expected a cron expression of 5 fields (minute first) or 6 fields \
     (seconds first), a preset (@hourly, @daily, @weekly, @monthly, @yearly) \
     or an interval like 'every 15m'";

const EXPECTED_INTERVAL: &str =
    "expected 'every N<unit>' with N a positive integer and unit ms, s, m, h or d (e.g. every 15m)";

/// Why a schedule could not be parsed or expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("bad schedule '{input}': {reason}")]
    BadSchedule { input: String, reason: String },
    #[error("bad cron expression '{input}': {reason}")]
    BadCron { input: String, reason: String },
    #[error(
        "more than {limit} intervals between {from} and {to}; narrow the range or raise the limit"
    )]
    TooManyIntervals {
        limit: usize,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

/// When a DAG fires.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per DAG, so the size is irrelevant, and the variant's shape is the agreed API"
)]
pub enum Schedule {
    /// Evaluated on the wall clock of the DAG's time zone. `expr` is the text
    /// the user wrote (a preset stays a preset) so it can be shown back as is.
    Cron { expr: String, cron: Cron },
    /// Fires at `anchor + k * interval` for k >= 0: absolute time, so it
    /// ignores the time zone and DST.
    Every(Duration),
}

impl Schedule {
    /// Parses a cron expression (5 or 6 fields), a preset or `every N<unit>`.
    pub fn parse(s: &str) -> Result<Schedule, ScheduleError> {
        let input = s.trim();
        let bad = |reason: &str| ScheduleError::BadSchedule {
            input: s.to_string(),
            reason: reason.to_string(),
        };

        if let Some(rest) = input.strip_prefix("every") {
            // Without the separator check `everyday` would be read as an interval.
            if !rest.starts_with(char::is_whitespace) {
                return Err(bad(EXPECTED_INTERVAL));
            }
            let amount = rest.trim();
            // Intervals are documented as N<unit>: a bare number means seconds to
            // `parse_duration` but reads as minutes to anyone used to cron, so
            // it is refused here.
            if !amount.ends_with(|c: char| c.is_ascii_alphabetic()) {
                return Err(bad(EXPECTED_INTERVAL));
            }
            let interval = parse_duration(amount).map_err(|_| bad(EXPECTED_INTERVAL))?;
            if interval.is_zero() {
                return Err(bad("the interval must be positive"));
            }
            return Ok(Schedule::Every(interval));
        }

        let pattern = if input.starts_with('@') {
            // Mapped here rather than left to croner, which also knows
            // `@annually` and would accept presets we do not document.
            match input {
                "@hourly" => "0 * * * *",
                "@daily" => "0 0 * * *",
                "@weekly" => "0 0 * * 0",
                "@monthly" => "0 0 1 * *",
                "@yearly" => "0 0 1 1 *",
                _ => return Err(bad(EXPECTED_SCHEDULE)),
            }
        } else {
            // croner would also take a 7th (year) field, which we do not offer.
            let fields = input.split_whitespace().count();
            if fields != 5 && fields != 6 {
                return Err(bad(EXPECTED_SCHEDULE));
            }
            input
        };

        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| ScheduleError::BadCron {
                input: s.to_string(),
                reason: e.to_string(),
            })?;
        // A pattern like `0 0 30 2 *` parses but never fires; saying so now
        // beats a DAG that silently never runs. Without a year field anything
        // that fires at all does so within eight years of any date, so one
        // fixed reference date settles it.
        let reference = DateTime::UNIX_EPOCH.naive_utc();
        if cron.find_next_occurrence(&reference, true).is_err() {
            return Err(ScheduleError::BadCron {
                input: s.to_string(),
                reason: "it never fires".to_string(),
            });
        }
        Ok(Schedule::Cron {
            expr: input.to_string(),
            cron,
        })
    }

    /// Human words for the schedule.
    pub fn describe(&self) -> String {
        match self {
            Schedule::Cron { cron, .. } => cron.describe(),
            Schedule::Every(d) => describe_interval(*d),
        }
    }

    /// The first fire time >= t (anchor is start_date, used by `Every`).
    ///
    /// Nothing fires before `anchor`, for either variant, so that all four
    /// queries agree on one set of fire times.
    pub(crate) fn first_at_or_after(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let t = t.max(anchor);
        match self {
            Schedule::Cron { cron, .. } => {
                // croner works in whole seconds and drops the fraction, which
                // would let an inclusive search return a time just before `t`.
                let from = ceil_to_second(t)?.with_timezone(&tz);
                let found = cron.find_next_occurrence(&from, true).ok()?;
                Some(found.with_timezone(&Utc))
            }
            Schedule::Every(d) => {
                let step = step_nanos(*d)?;
                let since = nanos_between(anchor, t);
                let k = (since + step - 1) / step;
                add_nanos(anchor, k.checked_mul(step)?)
            }
        }
    }

    /// The first fire time strictly after t.
    pub(crate) fn next_after(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if t < anchor {
            return self.first_at_or_after(anchor, tz, anchor);
        }
        match self {
            Schedule::Cron { cron, .. } => {
                // Fire times are whole seconds, so "after t" equals "after t's
                // second" and flooring keeps croner away from fractions.
                let from = floor_to_second(t).with_timezone(&tz);
                let found = cron.find_next_occurrence(&from, false).ok()?;
                Some(found.with_timezone(&Utc))
            }
            Schedule::Every(d) => {
                let step = step_nanos(*d)?;
                let k = nanos_between(anchor, t) / step + 1;
                add_nanos(anchor, k.checked_mul(step)?)
            }
        }
    }

    /// The latest fire time <= t (None if none at/after anchor).
    pub(crate) fn latest_at_or_before(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if t < anchor {
            return None;
        }
        match self {
            Schedule::Cron { cron, .. } => {
                let from = floor_to_second(t).with_timezone(&tz);
                let found = cron.find_previous_occurrence(&from, true).ok()?;
                let found = found.with_timezone(&Utc);
                (found >= anchor).then_some(found)
            }
            Schedule::Every(d) => {
                let step = step_nanos(*d)?;
                let k = nanos_between(anchor, t) / step;
                add_nanos(anchor, k.checked_mul(step)?)
            }
        }
    }

    /// The latest fire time strictly before t (None if none at/after anchor).
    pub(crate) fn latest_before(
        &self,
        t: DateTime<Utc>,
        tz: Tz,
        anchor: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if t <= anchor {
            return None;
        }
        match self {
            Schedule::Cron { cron, .. } => {
                // With a fraction, t's own second is already before t and must
                // stay a candidate; without one it must not.
                let floor = floor_to_second(t);
                let inclusive = floor < t;
                let found = cron
                    .find_previous_occurrence(&floor.with_timezone(&tz), inclusive)
                    .ok()?;
                let found = found.with_timezone(&Utc);
                (found >= anchor).then_some(found)
            }
            Schedule::Every(d) => {
                let step = step_nanos(*d)?;
                let k = (nanos_between(anchor, t) - 1) / step;
                add_nanos(anchor, k.checked_mul(step)?)
            }
        }
    }
}

/// The span of data a run covers: `[start, end)`. `start` is the run's
/// logical date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// A schedule bound to a DAG's zone, date range and catch-up policy.
#[derive(Debug, Clone)]
pub struct Timetable {
    pub schedule: Schedule,
    pub tz: Tz,
    pub start_date: DateTime<Utc>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
}

/// What the scheduler should do next for a DAG.
#[derive(Debug, PartialEq)]
pub enum NextRun {
    /// This interval has ended and has no run yet.
    Due(DataInterval),
    /// Nothing is due; the next interval becomes due at this time.
    NotBefore(DateTime<Utc>),
    /// No further scheduled run will ever be due.
    Never,
}

impl Timetable {
    /// The interval whose logical date (start) is `logical` (end = next fire after it).
    ///
    /// `logical` need not be a fire time and end_date is not applied, so that
    /// manual runs can get an interval too.
    pub(crate) fn interval_for(&self, logical: DateTime<Utc>) -> Option<DataInterval> {
        let end = self.next_after(logical)?;
        Some(DataInterval {
            start: logical,
            end,
        })
    }

    /// What to create next, given the logical date of the latest scheduled
    /// (non-manual) run, if any.
    pub fn next_run(&self, last_logical: Option<DateTime<Utc>>, now: DateTime<Utc>) -> NextRun {
        if !self.catchup
            && let Some(start) = self.latest_due_start(now)
            && last_logical.is_none_or(|last| start > last)
            && let Some(interval) = self.interval_for(start)
        {
            return NextRun::Due(interval);
        }

        // With catch-up this is simply the next interval. Without it, the latest
        // due interval is already covered, so the one after the last run has
        // not ended yet and this yields the time it will.
        let start = match last_logical {
            Some(last) => self.next_after(last),
            None => self.first(),
        };
        let Some(start) = start.filter(|s| !self.past_end(*s)) else {
            return NextRun::Never;
        };
        // An interval that never closes can never become due.
        let Some(interval) = self.interval_for(start) else {
            return NextRun::Never;
        };
        if interval.end <= now {
            NextRun::Due(interval)
        } else {
            NextRun::NotBefore(interval.end)
        }
    }

    /// Every interval whose logical date falls within [from, to] (both
    /// inclusive), oldest first, within start/end dates — for backfill.
    ///
    /// Fails rather than truncating when more than `limit` would be produced,
    /// so a backfill never silently covers less than was asked for.
    pub(crate) fn intervals_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<DataInterval>, ScheduleError> {
        let out = self.first_intervals(from, to, limit + 1);
        if out.len() > limit {
            return Err(ScheduleError::TooManyIntervals { limit, from, to });
        }
        Ok(out)
    }

    /// The first `n` (at most) of those intervals: what a backfill's next window needs, without
    /// walking every interval after it on each scheduler pass.
    pub(crate) fn first_intervals(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        n: usize,
    ) -> Vec<DataInterval> {
        let mut out = Vec::new();
        let mut next = self
            .schedule
            .first_at_or_after(from, self.tz, self.start_date);
        while let Some(start) = next {
            if out.len() == n || start > to || self.past_end(start) {
                break;
            }
            let Some(interval) = self.interval_for(start) else {
                break;
            };
            out.push(interval);
            next = Some(interval.end);
        }
        out
    }

    fn first(&self) -> Option<DateTime<Utc>> {
        self.schedule
            .first_at_or_after(self.start_date, self.tz, self.start_date)
    }

    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule.next_after(t, self.tz, self.start_date)
    }

    fn past_end(&self, start: DateTime<Utc>) -> bool {
        self.end_date.is_some_and(|end| start > end)
    }

    /// The start of the latest interval that has ended by `now` and does not
    /// start after end_date.
    fn latest_due_start(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (tz, anchor) = (self.tz, self.start_date);
        // The latest fire at or before now closes the interval that starts at
        // the fire before it; its own interval is still open.
        let closing = self.schedule.latest_at_or_before(now, tz, anchor)?;
        let start = self.schedule.latest_before(closing, tz, anchor)?;
        match self.end_date {
            // Any interval starting by end_date also ends by `start`, so it
            // has ended as well.
            Some(end) if start > end => self.schedule.latest_at_or_before(end, tz, anchor),
            _ => Some(start),
        }
    }
}

/// Parses a date (`2026-01-01`, meaning midnight in tz) or an RFC 3339 timestamp into UTC.
///
/// Where midnight does not exist in tz the first valid time after it is used,
/// as cron does for skipped times; where it repeats, the earlier one.
pub fn parse_date(s: &str, tz: Tz) -> Result<DateTime<Utc>, String> {
    let input = s.trim();
    if let Ok(date) = NaiveDate::parse_from_str(input, "%Y-%m-%d") {
        return local_to_utc(date.and_time(NaiveTime::MIN), tz).ok_or_else(|| {
            format!("bad date '{s}': midnight of that day cannot be placed in {tz}")
        });
    }
    DateTime::parse_from_rfc3339(input)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            format!(
                "bad date '{s}': expected a date like 2026-01-01 or an RFC 3339 timestamp like 2026-01-01T00:00:00Z"
            )
        })
}

/// Parses `500ms`, `30s`, `5m`, `2h`, `1d` or a plain non-negative number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || {
        format!("bad duration '{s}': expected e.g. 500ms, 30s, 5m, 2h, 1d or a number of seconds")
    };
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits_end);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs_per = |mult: u64| n.checked_mul(mult).map(Duration::from_secs);
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => secs_per(60),
        "h" => secs_per(3_600),
        "d" => secs_per(86_400),
        _ => None,
    };
    duration.ok_or_else(bad)
}

fn describe_interval(d: Duration) -> String {
    const UNITS: [(&str, u128); 5] = [
        ("day", 86_400_000_000_000),
        ("hour", 3_600_000_000_000),
        ("minute", 60_000_000_000),
        ("second", 1_000_000_000),
        ("millisecond", 1_000_000),
    ];
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "never (zero interval)".to_string();
    }
    // The largest unit that divides evenly reads best: 90m is "90 minutes",
    // 120m is "2 hours".
    match UNITS.iter().find(|(_, size)| nanos.is_multiple_of(*size)) {
        Some((unit, size)) if nanos / size == 1 => format!("every {unit}"),
        Some((unit, size)) => format!("every {} {unit}s", nanos / size),
        None => format!("every {d:?}"),
    }
}

/// A wall clock time in tz as an instant, moving a skipped time to the first
/// valid one after the gap.
fn local_to_utc(naive: chrono::NaiveDateTime, tz: Tz) -> Option<DateTime<Utc>> {
    // Gaps are normally an hour, but a zone has skipped a whole day
    // (Pacific/Apia, 2011-12-30), so look up to two days ahead.
    const MAX_GAP_MINUTES: i64 = 2 * 24 * 60;
    (0..=MAX_GAP_MINUTES).find_map(|minute| {
        let candidate = naive.checked_add_signed(TimeDelta::minutes(minute))?;
        match tz.from_local_datetime(&candidate) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Some(t.with_timezone(&Utc)),
            LocalResult::None => None,
        }
    })
}

fn floor_to_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t - TimeDelta::nanoseconds(i64::from(t.timestamp_subsec_nanos()))
}

fn ceil_to_second(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let floor = floor_to_second(t);
    if floor == t {
        Some(t)
    } else {
        floor.checked_add_signed(TimeDelta::seconds(1))
    }
}

/// The interval in nanoseconds; None for a zero interval, which never fires
/// (and would otherwise divide by zero).
fn step_nanos(d: Duration) -> Option<i128> {
    let step = i128::try_from(d.as_nanos()).ok()?;
    (step > 0).then_some(step)
}

/// `to - from` in nanoseconds. i128 because `TimeDelta` nanoseconds overflow
/// after about 292 years.
fn nanos_between(from: DateTime<Utc>, to: DateTime<Utc>) -> i128 {
    (i128::from(to.timestamp()) - i128::from(from.timestamp())) * NANOS_PER_SEC
        + i128::from(to.timestamp_subsec_nanos())
        - i128::from(from.timestamp_subsec_nanos())
}

fn add_nanos(t: DateTime<Utc>, nanos: i128) -> Option<DateTime<Utc>> {
    let secs = i64::try_from(nanos.div_euclid(NANOS_PER_SEC)).ok()?;
    let subsec = u32::try_from(nanos.rem_euclid(NANOS_PER_SEC)).ok()?;
    t.checked_add_signed(TimeDelta::new(secs, subsec)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDateTime, Timelike};
    use chrono_tz::America::New_York;
    use chrono_tz::Europe::Amsterdam;

    const UTC: Tz = chrono_tz::UTC;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("test timestamp {s}: {e}"))
            .with_timezone(&Utc)
    }

    /// A wall clock time in tz; the earlier instant if it repeats.
    fn local(tz: Tz, s: &str) -> DateTime<Utc> {
        let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S")
            .unwrap_or_else(|e| panic!("test wall time {s}: {e}"));
        tz.from_local_datetime(&naive)
            .earliest()
            .unwrap_or_else(|| panic!("{s} does not exist in {tz}"))
            .with_timezone(&Utc)
    }

    fn sched(s: &str) -> Schedule {
        Schedule::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fires_after(s: &Schedule, tz: Tz, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let anchor = DateTime::UNIX_EPOCH;
        let mut out = Vec::new();
        let mut t = from;
        for _ in 0..n {
            t = s
                .next_after(t, tz, anchor)
                .expect("schedule ran out of fire times");
            out.push(t);
        }
        out
    }

    fn timetable(expr: &str, tz: Tz, start: &str, end: Option<&str>, catchup: bool) -> Timetable {
        Timetable {
            schedule: sched(expr),
            tz,
            start_date: utc(start),
            end_date: end.map(utc),
            catchup,
        }
    }

    fn iv(start: &str, end: &str) -> DataInterval {
        DataInterval {
            start: utc(start),
            end: utc(end),
        }
    }

    #[test]
    fn parses_cron_forms_by_when_they_fire() {
        // (input, probe time, first fire at or after it); all in UTC.
        let cases = [
            ("0 0 * * *", "2026-03-01T00:00:01Z", "2026-03-02T00:00:00Z"),
            (
                "  15 10 * * *  ",
                "2026-03-01T00:00:00Z",
                "2026-03-01T10:15:00Z",
            ),
            (
                "*/10 * * * * *",
                "2026-03-01T00:00:01Z",
                "2026-03-01T00:00:10Z",
            ),
            (
                "30 15 10 * * *",
                "2026-03-01T00:00:00Z",
                "2026-03-01T10:15:30Z",
            ),
            ("0 0 L 2 *", "2026-01-01T00:00:00Z", "2026-02-28T00:00:00Z"),
            ("0 0 L 2 *", "2028-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            // 2026-03-01 is a Sunday, so the second Friday is the 13th.
            (
                "0 0 * * 5#2",
                "2026-03-01T00:00:00Z",
                "2026-03-13T00:00:00Z",
            ),
            (
                "0 0 * * FRI#2",
                "2026-03-01T00:00:00Z",
                "2026-03-13T00:00:00Z",
            ),
            ("0 0 * * 5L", "2026-03-01T00:00:00Z", "2026-03-27T00:00:00Z"),
            // 2026-08-15 is a Saturday; the nearest weekday is Friday the 14th.
            (
                "0 0 15W * *",
                "2026-08-01T00:00:00Z",
                "2026-08-14T00:00:00Z",
            ),
            (
                "0 9 * * MON-FRI",
                "2026-03-07T00:00:00Z",
                "2026-03-09T09:00:00Z",
            ),
            ("0 0 29 2 *", "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("@hourly", "2026-03-01T10:00:01Z", "2026-03-01T11:00:00Z"),
            ("@daily", "2026-03-01T10:00:00Z", "2026-03-02T00:00:00Z"),
            ("@weekly", "2026-03-02T00:00:00Z", "2026-03-08T00:00:00Z"),
            ("@monthly", "2026-03-01T00:00:01Z", "2026-04-01T00:00:00Z"),
            ("@yearly", "2026-01-01T00:00:01Z", "2027-01-01T00:00:00Z"),
        ];
        for (input, probe, want) in cases {
            let s = sched(input);
            let Schedule::Cron { expr, .. } = &s else {
                panic!("{input}: parsed as {s:?}, expected cron");
            };
            assert_eq!(
                expr,
                input.trim(),
                "{input}: expr keeps what the user wrote"
            );
            let probe = utc(probe);
            assert_eq!(
                s.first_at_or_after(probe, UTC, DateTime::UNIX_EPOCH),
                Some(utc(want)),
                "{input} from {probe}"
            );
        }
    }

    #[test]
    fn presets_equal_their_cron_expansions() {
        let cases = [
            ("@hourly", "0 * * * *"),
            ("@daily", "0 0 * * *"),
            ("@weekly", "0 0 * * 0"),
            ("@monthly", "0 0 1 * *"),
            ("@yearly", "0 0 1 1 *"),
        ];
        let from = utc("2026-02-27T13:17:00Z");
        for (preset, expansion) in cases {
            for tz in [UTC, New_York, Amsterdam] {
                assert_eq!(
                    fires_after(&sched(preset), tz, from, 5),
                    fires_after(&sched(expansion), tz, from, 5),
                    "{preset} in {tz}"
                );
            }
        }
    }

    #[test]
    fn parses_intervals() {
        let cases = [
            ("every 500ms", Duration::from_millis(500)),
            ("every 30s", Duration::from_secs(30)),
            ("every 15m", Duration::from_secs(15 * 60)),
            ("every 2h", Duration::from_secs(2 * 3600)),
            ("every 1d", Duration::from_secs(86_400)),
            ("  every   7m ", Duration::from_secs(7 * 60)),
        ];
        for (input, want) in cases {
            match Schedule::parse(input) {
                Ok(Schedule::Every(d)) => assert_eq!(d, want, "{input}"),
                other => panic!("{input}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_bad_schedules_with_a_message_quoting_the_input() {
        // (input, expected message prefix)
        let cases = [
            (
                "",
                "bad schedule '': expected a cron expression of 5 fields",
            ),
            ("daily", "bad schedule 'daily': expected a cron expression"),
            (
                "* * * *",
                "bad schedule '* * * *': expected a cron expression",
            ),
            (
                "0 0 0 * * * 2026",
                "bad schedule '0 0 0 * * * 2026': expected",
            ),
            ("@annually", "bad schedule '@annually': expected"),
            ("@every 5m", "bad schedule '@every 5m': expected"),
            (
                "every 0m",
                "bad schedule 'every 0m': the interval must be positive",
            ),
            (
                "every 0ms",
                "bad schedule 'every 0ms': the interval must be positive",
            ),
            (
                "every 15",
                "bad schedule 'every 15': expected 'every N<unit>'",
            ),
            (
                "every 15x",
                "bad schedule 'every 15x': expected 'every N<unit>'",
            ),
            (
                "every m",
                "bad schedule 'every m': expected 'every N<unit>'",
            ),
            (
                "every -5m",
                "bad schedule 'every -5m': expected 'every N<unit>'",
            ),
            (
                "every 1.5h",
                "bad schedule 'every 1.5h': expected 'every N<unit>'",
            ),
            ("every", "bad schedule 'every': expected 'every N<unit>'"),
            (
                "everyday",
                "bad schedule 'everyday': expected 'every N<unit>'",
            ),
            (
                "61 * * * *",
                "bad cron expression '61 * * * *': Component error",
            ),
            ("0 24 * * *", "bad cron expression '0 24 * * *': "),
            ("0 0 32 * *", "bad cron expression '0 0 32 * *': "),
            ("0 0 * 13 *", "bad cron expression '0 0 * 13 *': "),
            ("0 0 * * MON-FOO", "bad cron expression '0 0 * * MON-FOO': "),
            ("0 0 1W * 1#6", "bad cron expression '0 0 1W * 1#6': "),
            (
                "0 0 30 2 *",
                "bad cron expression '0 0 30 2 *': it never fires",
            ),
        ];
        for (input, want) in cases {
            match Schedule::parse(input) {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with(want), "{input:?}: got {msg:?}");
                }
                Ok(s) => panic!("{input:?} parsed as {s:?}"),
            }
        }
    }

    #[test]
    fn parses_durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("2h", Duration::from_secs(7200)),
            ("1d", Duration::from_secs(86_400)),
            ("45", Duration::from_secs(45)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
        ];
        for (input, want) in ok {
            assert_eq!(parse_duration(input), Ok(want), "{input}");
        }
        let bad = [
            "",
            "x",
            "ms",
            "-1",
            "+5",
            "1.5h",
            "5 m",
            "5w",
            "5M",
            "5mm",
            "213503982334602d",
        ];
        for input in bad {
            assert_eq!(
                parse_duration(input),
                Err(format!(
                    "bad duration '{input}': expected e.g. 500ms, 30s, 5m, 2h, 1d or a number of seconds"
                )),
                "{input}"
            );
        }
    }

    #[test]
    fn describes_schedules() {
        let cases = [
            ("every 15m", "every 15 minutes"),
            ("every 1m", "every minute"),
            ("every 60m", "every hour"),
            ("every 90m", "every 90 minutes"),
            ("every 2h", "every 2 hours"),
            ("every 1d", "every day"),
            ("every 48h", "every 2 days"),
            ("every 30s", "every 30 seconds"),
            ("every 1500ms", "every 1500 milliseconds"),
            ("30 2 * * *", "At 02:30."),
            ("@weekly", "At 00:00, on Sunday."),
        ];
        for (input, want) in cases {
            assert_eq!(sched(input).describe(), want, "{input}");
        }
        assert_eq!(
            Schedule::Every(Duration::ZERO).describe(),
            "never (zero interval)"
        );
    }

    /// Fire times around the 2026 DST changes. Fixed-time jobs fire once per
    /// day: a skipped time at the first valid time after the gap, a repeated
    /// one only on its first occurrence. Wildcard jobs skip the gap and fire
    /// on both halves of the repeated hour.
    #[test]
    fn fires_correctly_across_dst() {
        let cases: [(Tz, &str, &str, &[&str]); 10] = [
            // New York springs forward 2026-03-08 02:00 EST -> 03:00 EDT.
            (
                New_York,
                "30 2 * * *",
                "2026-03-07T00:00:00",
                &[
                    "2026-03-07T07:30:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-09T06:30:00Z",
                ],
            ),
            (
                New_York,
                "*/30 * * * *",
                "2026-03-08T01:00:00",
                &[
                    "2026-03-08T06:30:00Z",
                    "2026-03-08T07:00:00Z",
                    "2026-03-08T07:30:00Z",
                ],
            ),
            // New York falls back 2026-11-01 02:00 EDT -> 01:00 EST.
            (
                New_York,
                "30 1 * * *",
                "2026-10-31T00:00:00",
                &[
                    "2026-10-31T05:30:00Z",
                    "2026-11-01T05:30:00Z",
                    "2026-11-02T06:30:00Z",
                ],
            ),
            (
                New_York,
                "*/30 * * * *",
                "2026-11-01T00:30:00",
                &[
                    "2026-11-01T05:00:00Z",
                    "2026-11-01T05:30:00Z",
                    "2026-11-01T06:00:00Z",
                    "2026-11-01T06:30:00Z",
                    "2026-11-01T07:00:00Z",
                    "2026-11-01T07:30:00Z",
                ],
            ),
            // Amsterdam springs forward 2026-03-29 02:00 CET -> 03:00 CEST.
            (
                Amsterdam,
                "30 2 * * *",
                "2026-03-28T00:00:00",
                &[
                    "2026-03-28T01:30:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-30T00:30:00Z",
                ],
            ),
            (
                Amsterdam,
                "0 30 2 * * *",
                "2026-03-28T00:00:00",
                &[
                    "2026-03-28T01:30:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-30T00:30:00Z",
                ],
            ),
            // Amsterdam falls back 2026-10-25 03:00 CEST -> 02:00 CET.
            (
                Amsterdam,
                "30 2 * * *",
                "2026-10-24T00:00:00",
                &[
                    "2026-10-24T00:30:00Z",
                    "2026-10-25T00:30:00Z",
                    "2026-10-26T01:30:00Z",
                ],
            ),
            (
                Amsterdam,
                "*/30 * * * *",
                "2026-10-25T01:30:00",
                &[
                    "2026-10-25T00:00:00Z",
                    "2026-10-25T00:30:00Z",
                    "2026-10-25T01:00:00Z",
                    "2026-10-25T01:30:00Z",
                    "2026-10-25T02:00:00Z",
                ],
            ),
            (
                Amsterdam,
                "@hourly",
                "2026-10-25T00:00:00",
                &[
                    "2026-10-24T23:00:00Z",
                    "2026-10-25T00:00:00Z",
                    "2026-10-25T01:00:00Z",
                    "2026-10-25T02:00:00Z",
                    "2026-10-25T03:00:00Z",
                ],
            ),
            (
                Amsterdam,
                "@hourly",
                "2026-03-29T00:00:00",
                &[
                    "2026-03-29T00:00:00Z",
                    "2026-03-29T01:00:00Z",
                    "2026-03-29T02:00:00Z",
                ],
            ),
        ];
        for (tz, expr, from, want) in cases {
            let s = sched(expr);
            let got = fires_after(&s, tz, local(tz, from), want.len());
            let want: Vec<_> = want.iter().map(|w| utc(w)).collect();
            assert_eq!(got, want, "{expr} in {tz} after {from}");
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{expr} in {tz}: not strictly increasing: {got:?}"
            );

            // Walking backwards must find the same fire times, or catchup=false
            // and catchup=true would disagree about which intervals exist.
            for (i, &fire) in got.iter().enumerate() {
                let anchor = DateTime::UNIX_EPOCH;
                assert_eq!(
                    s.latest_at_or_before(fire, tz, anchor),
                    Some(fire),
                    "{expr} in {tz}"
                );
                if i > 0 {
                    assert_eq!(
                        s.latest_before(fire, tz, anchor),
                        Some(got[i - 1]),
                        "{expr} in {tz}"
                    );
                    assert_eq!(
                        s.latest_at_or_before(fire - TimeDelta::seconds(1), tz, anchor),
                        Some(got[i - 1]),
                        "{expr} in {tz} just before {fire}"
                    );
                }
            }
        }
    }

    #[test]
    fn skipped_fixed_time_fires_at_three_local() {
        for (tz, day) in [(New_York, "2026-03-08"), (Amsterdam, "2026-03-29")] {
            let s = sched("30 2 * * *");
            let from = local(tz, &format!("{day}T00:00:00"));
            let fire = s.next_after(from, tz, DateTime::UNIX_EPOCH).expect("fires");
            let wall = fire.with_timezone(&tz);
            assert_eq!(
                wall.format("%F %T").to_string(),
                format!("{day} 03:00:00"),
                "{tz}"
            );
        }
    }

    #[test]
    fn repeated_hour_gives_distinct_utc_hours_for_hourly() {
        let tz = Amsterdam;
        let fires = fires_after(&sched("@hourly"), tz, local(tz, "2026-10-24T23:30:00"), 6);
        let hours: Vec<_> = fires.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(hours.iter().all(|d| *d == TimeDelta::hours(1)), "{fires:?}");
        let walls: Vec<_> = fires.iter().map(|f| f.with_timezone(&tz).hour()).collect();
        assert_eq!(walls, [0, 1, 2, 2, 3, 4]);
    }

    #[test]
    fn daily_interval_length_follows_dst() {
        // (zone, local day, interval length in hours)
        let cases = [
            (New_York, "2026-03-08", 23),
            (New_York, "2026-11-01", 25),
            (New_York, "2026-03-09", 24),
            (Amsterdam, "2026-03-29", 23),
            (Amsterdam, "2026-10-25", 25),
            (Amsterdam, "2026-10-26", 24),
        ];
        for (tz, day, hours) in cases {
            let tt = timetable("@daily", tz, "2026-01-01T00:00:00Z", None, true);
            let start = local(tz, &format!("{day}T00:00:00"));
            let got = tt.interval_for(start).expect("interval");
            assert_eq!(got.end - got.start, TimeDelta::hours(hours), "{tz} {day}");
            let next_day = NaiveDate::parse_from_str(day, "%F")
                .unwrap()
                .succ_opt()
                .unwrap();
            let end_wall = got.end.with_timezone(&tz).naive_local();
            assert_eq!(end_wall, next_day.and_time(NaiveTime::MIN), "{tz} {day}");
            // The run is due once the interval ends, and not a second before.
            let before = got.end - TimeDelta::seconds(1);
            let prev = tt.schedule.latest_before(start, tz, tt.start_date);
            assert_eq!(
                prev.map(|p| p.with_timezone(&tz).time()),
                Some(NaiveTime::MIN),
                "{tz} {day}"
            );
            assert_eq!(tt.next_run(prev, got.end), NextRun::Due(got), "{tz} {day}");
            assert_eq!(
                tt.next_run(prev, before),
                NextRun::NotBefore(got.end),
                "{tz} {day}"
            );
        }
    }

    #[test]
    fn every_is_anchored_at_start_date() {
        let s = sched("every 15m");
        let anchor = utc("2026-03-01T00:07:00Z");
        // (query, first_at_or_after, next_after, latest_at_or_before, latest_before)
        let cases = [
            (
                "2026-02-01T00:00:00Z",
                Some("2026-03-01T00:07:00Z"),
                Some("2026-03-01T00:07:00Z"),
                None,
                None,
            ),
            (
                "2026-03-01T00:07:00Z",
                Some("2026-03-01T00:07:00Z"),
                Some("2026-03-01T00:22:00Z"),
                Some("2026-03-01T00:07:00Z"),
                None,
            ),
            (
                "2026-03-01T00:10:00Z",
                Some("2026-03-01T00:22:00Z"),
                Some("2026-03-01T00:22:00Z"),
                Some("2026-03-01T00:07:00Z"),
                Some("2026-03-01T00:07:00Z"),
            ),
            (
                "2026-03-01T00:22:00Z",
                Some("2026-03-01T00:22:00Z"),
                Some("2026-03-01T00:37:00Z"),
                Some("2026-03-01T00:22:00Z"),
                Some("2026-03-01T00:07:00Z"),
            ),
            (
                "2026-03-01T00:22:00.000001Z",
                Some("2026-03-01T00:37:00Z"),
                Some("2026-03-01T00:37:00Z"),
                Some("2026-03-01T00:22:00Z"),
                Some("2026-03-01T00:22:00Z"),
            ),
            (
                "2026-03-02T00:00:00Z",
                Some("2026-03-02T00:07:00Z"),
                Some("2026-03-02T00:07:00Z"),
                Some("2026-03-01T23:52:00Z"),
                Some("2026-03-01T23:52:00Z"),
            ),
        ];
        for (q, first, next, latest, before) in cases {
            let t = utc(q);
            // The zone must not matter for absolute intervals.
            for tz in [UTC, New_York] {
                assert_eq!(
                    s.first_at_or_after(t, tz, anchor),
                    first.map(utc),
                    "first_at_or_after {q}"
                );
                assert_eq!(s.next_after(t, tz, anchor), next.map(utc), "next_after {q}");
                assert_eq!(
                    s.latest_at_or_before(t, tz, anchor),
                    latest.map(utc),
                    "latest_at_or_before {q}"
                );
                assert_eq!(
                    s.latest_before(t, tz, anchor),
                    before.map(utc),
                    "latest_before {q}"
                );
            }
        }
        // Across a DST change an absolute interval stays absolute.
        let s = sched("every 1d");
        let anchor = local(New_York, "2026-03-08T00:00:00");
        let next = s.next_after(anchor, New_York, anchor).unwrap();
        assert_eq!(next - anchor, TimeDelta::hours(24));
        assert_eq!(next.with_timezone(&New_York).hour(), 1);
    }

    #[test]
    fn cron_queries_respect_anchor_and_fractions() {
        let s = sched("@daily");
        let anchor = utc("2026-03-01T10:00:00Z");
        // (query, first_at_or_after, next_after, latest_at_or_before, latest_before)
        let cases = [
            (
                "2026-02-01T00:00:00Z",
                Some("2026-03-02T00:00:00Z"),
                Some("2026-03-02T00:00:00Z"),
                None,
                None,
            ),
            (
                "2026-03-02T00:00:00Z",
                Some("2026-03-02T00:00:00Z"),
                Some("2026-03-03T00:00:00Z"),
                Some("2026-03-02T00:00:00Z"),
                None,
            ),
            (
                "2026-03-02T00:00:00.5Z",
                Some("2026-03-03T00:00:00Z"),
                Some("2026-03-03T00:00:00Z"),
                Some("2026-03-02T00:00:00Z"),
                Some("2026-03-02T00:00:00Z"),
            ),
            (
                "2026-03-03T00:00:00Z",
                Some("2026-03-03T00:00:00Z"),
                Some("2026-03-04T00:00:00Z"),
                Some("2026-03-03T00:00:00Z"),
                Some("2026-03-02T00:00:00Z"),
            ),
            (
                "2026-03-02T23:59:59.999Z",
                Some("2026-03-03T00:00:00Z"),
                Some("2026-03-03T00:00:00Z"),
                Some("2026-03-02T00:00:00Z"),
                Some("2026-03-02T00:00:00Z"),
            ),
        ];
        for (q, first, next, latest, before) in cases {
            let t = utc(q);
            assert_eq!(
                s.first_at_or_after(t, UTC, anchor),
                first.map(utc),
                "first_at_or_after {q}"
            );
            assert_eq!(
                s.next_after(t, UTC, anchor),
                next.map(utc),
                "next_after {q}"
            );
            assert_eq!(
                s.latest_at_or_before(t, UTC, anchor),
                latest.map(utc),
                "latest_at_or_before {q}"
            );
            assert_eq!(
                s.latest_before(t, UTC, anchor),
                before.map(utc),
                "latest_before {q}"
            );
        }
    }

    #[test]
    fn zero_interval_never_fires() {
        let s = Schedule::Every(Duration::ZERO);
        let t = utc("2026-03-01T00:00:00Z");
        assert_eq!(s.first_at_or_after(t, UTC, t), None);
        assert_eq!(s.next_after(t, UTC, t), None);
        assert_eq!(s.latest_at_or_before(t, UTC, t), None);
        let tt = Timetable {
            schedule: s,
            tz: UTC,
            start_date: t,
            end_date: None,
            catchup: true,
        };
        assert_eq!(tt.next_run(None, t + TimeDelta::days(1)), NextRun::Never);
    }

    #[test]
    fn next_run_follows_catchup_start_and_end_dates() {
        struct Case {
            name: &'static str,
            expr: &'static str,
            tz: Tz,
            start: &'static str,
            end: Option<&'static str>,
            catchup: bool,
            last: Option<&'static str>,
            now: &'static str,
            want: NextRun,
        }
        let due = |s, e| NextRun::Due(iv(s, e));
        let not_before = |t| NextRun::NotBefore(utc(t));
        let d = |n: u32| format!("2026-03-{n:02}T00:00:00Z").leak() as &'static str;
        let base = Case {
            name: "",
            expr: "@daily",
            tz: UTC,
            start: "2026-03-01T00:00:00Z",
            end: None,
            catchup: true,
            last: None,
            now: "2026-03-05T12:00:00Z",
            want: NextRun::Never,
        };
        let cases = [
            Case {
                name: "catchup starts with the first interval",
                want: due(d(1), d(2)),
                ..base
            },
            Case {
                name: "catchup continues after the last run",
                last: Some(d(1)),
                want: due(d(2), d(3)),
                ..base
            },
            Case {
                name: "catchup waits for the open interval",
                last: Some(d(4)),
                want: not_before(d(6)),
                ..base
            },
            Case {
                name: "catchup from an unaligned last run",
                last: Some("2026-03-02T06:00:00Z"),
                want: due(d(3), d(4)),
                ..base
            },
            Case {
                name: "no catchup takes only the latest due",
                catchup: false,
                want: due(d(4), d(5)),
                ..base
            },
            Case {
                name: "no catchup skips missed intervals",
                catchup: false,
                last: Some(d(2)),
                want: due(d(4), d(5)),
                ..base
            },
            Case {
                name: "no catchup never repeats the latest",
                catchup: false,
                last: Some(d(4)),
                want: not_before(d(6)),
                ..base
            },
            Case {
                name: "no catchup never goes back",
                catchup: false,
                last: Some(d(9)),
                want: not_before(d(11)),
                ..base
            },
            Case {
                name: "first interval not ended yet",
                catchup: false,
                now: "2026-03-01T12:00:00Z",
                want: not_before(d(2)),
                ..base
            },
            Case {
                name: "now before start_date, catchup",
                now: "2026-02-20T00:00:00Z",
                want: not_before(d(2)),
                ..base
            },
            Case {
                name: "now before start_date, no catchup",
                catchup: false,
                now: "2026-02-20T00:00:00Z",
                want: not_before(d(2)),
                ..base
            },
            Case {
                name: "due exactly when the interval ends",
                catchup: false,
                now: d(2),
                want: due(d(1), d(2)),
                ..base
            },
            Case {
                name: "not due a moment before",
                catchup: false,
                now: "2026-03-01T23:59:59.999Z",
                want: not_before(d(2)),
                ..base
            },
            Case {
                name: "unaligned start_date begins at the next fire",
                start: "2026-03-01T10:00:00Z",
                now: "2026-03-02T12:00:00Z",
                want: not_before(d(3)),
                ..base
            },
            Case {
                name: "unaligned start_date, no catchup",
                start: "2026-03-01T10:00:00Z",
                catchup: false,
                want: due(d(4), d(5)),
                ..base
            },
            Case {
                name: "interval starting at end_date still runs",
                end: Some(d(3)),
                last: Some(d(2)),
                want: due(d(3), d(4)),
                ..base
            },
            Case {
                name: "nothing starts after end_date",
                end: Some(d(3)),
                last: Some(d(3)),
                want: NextRun::Never,
                ..base
            },
            Case {
                name: "end_date mid-interval",
                end: Some("2026-03-03T12:00:00Z"),
                last: Some(d(3)),
                want: NextRun::Never,
                ..base
            },
            Case {
                name: "no catchup clamps to end_date",
                end: Some(d(3)),
                catchup: false,
                now: d(10),
                want: due(d(3), d(4)),
                ..base
            },
            Case {
                name: "no catchup past end_date is done",
                end: Some(d(3)),
                catchup: false,
                last: Some(d(3)),
                now: d(10),
                want: NextRun::Never,
                ..base
            },
            Case {
                name: "end_date before the first fire",
                start: "2026-03-01T10:00:00Z",
                end: Some("2026-03-01T20:00:00Z"),
                want: NextRun::Never,
                ..base
            },
            Case {
                name: "end_date before the first fire, no catchup",
                start: "2026-03-01T10:00:00Z",
                end: Some("2026-03-01T20:00:00Z"),
                catchup: false,
                want: NextRun::Never,
                ..base
            },
            Case {
                name: "every: catchup from start_date",
                expr: "every 15m",
                start: "2026-03-01T00:07:00Z",
                now: "2026-03-01T01:00:00Z",
                want: due("2026-03-01T00:07:00Z", "2026-03-01T00:22:00Z"),
                ..base
            },
            Case {
                name: "every: latest due",
                expr: "every 15m",
                start: "2026-03-01T00:07:00Z",
                catchup: false,
                now: "2026-03-01T01:00:00Z",
                want: due("2026-03-01T00:37:00Z", "2026-03-01T00:52:00Z"),
                ..base
            },
            Case {
                name: "every: waits for the open interval",
                expr: "every 15m",
                start: "2026-03-01T00:07:00Z",
                catchup: false,
                last: Some("2026-03-01T00:37:00Z"),
                now: "2026-03-01T01:00:00Z",
                want: not_before("2026-03-01T01:07:00Z"),
                ..base
            },
            Case {
                name: "every: first interval open",
                expr: "every 15m",
                start: "2026-03-01T00:07:00Z",
                now: "2026-03-01T00:10:00Z",
                want: not_before("2026-03-01T00:22:00Z"),
                ..base
            },
            Case {
                name: "zone: daily in New York across spring-forward",
                tz: New_York,
                start: "2026-03-01T05:00:00Z",
                last: Some("2026-03-07T05:00:00Z"),
                now: "2026-03-10T00:00:00Z",
                want: due("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z"),
                ..base
            },
            Case {
                name: "zone: no catchup in Amsterdam",
                tz: Amsterdam,
                start: "2026-03-01T00:00:00Z",
                catchup: false,
                now: "2026-03-30T12:00:00Z",
                want: due("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
                ..base
            },
        ];
        for c in cases {
            let tt = timetable(c.expr, c.tz, c.start, c.end, c.catchup);
            assert_eq!(
                tt.next_run(c.last.map(utc), utc(c.now)),
                c.want,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn intervals_between_is_inclusive_and_capped() {
        let tt = timetable(
            "@daily",
            UTC,
            "2026-03-01T00:00:00Z",
            Some("2026-03-20T00:00:00Z"),
            true,
        );
        let days = |from: u32, to: u32| -> Vec<DataInterval> {
            (from..=to)
                .map(|n| {
                    iv(
                        &format!("2026-03-{n:02}T00:00:00Z"),
                        &format!("2026-03-{:02}T00:00:00Z", n + 1),
                    )
                })
                .collect()
        };
        // (from, to, limit, expected)
        let cases = [
            (
                "2026-03-03T00:00:00Z",
                "2026-03-05T00:00:00Z",
                10,
                Ok(days(3, 5)),
            ),
            (
                "2026-03-03T00:00:00Z",
                "2026-03-05T00:00:00Z",
                3,
                Ok(days(3, 5)),
            ),
            (
                "2026-03-02T12:00:00Z",
                "2026-03-05T12:00:00Z",
                10,
                Ok(days(3, 5)),
            ),
            (
                "2026-03-05T00:00:00Z",
                "2026-03-05T00:00:00Z",
                10,
                Ok(days(5, 5)),
            ),
            (
                "2026-03-05T00:00:01Z",
                "2026-03-05T23:59:59Z",
                10,
                Ok(vec![]),
            ),
            (
                "2026-03-05T00:00:00Z",
                "2026-03-03T00:00:00Z",
                10,
                Ok(vec![]),
            ),
            (
                "2026-02-01T00:00:00Z",
                "2026-03-02T00:00:00Z",
                10,
                Ok(days(1, 2)),
            ),
            (
                "2026-03-18T00:00:00Z",
                "2026-04-30T00:00:00Z",
                10,
                Ok(days(18, 20)),
            ),
            ("2026-03-03T00:00:00Z", "2026-03-03T00:00:00Z", 0, Err(0)),
            ("2026-03-03T00:00:00Z", "2026-03-05T00:00:00Z", 2, Err(2)),
        ];
        for (from, to, limit, want) in cases {
            let got = tt.intervals_between(utc(from), utc(to), limit);
            let want = want.map_err(|limit| ScheduleError::TooManyIntervals {
                limit,
                from: utc(from),
                to: utc(to),
            });
            assert_eq!(got, want, "[{from}, {to}] limit {limit}");
        }
        let err = tt
            .intervals_between(utc("2026-03-01T00:00:00Z"), utc("2026-03-10T00:00:00Z"), 5)
            .unwrap_err();
        assert!(
            err.to_string().starts_with("more than 5 intervals between"),
            "{err}"
        );
    }

    #[test]
    fn intervals_between_in_a_zone_spans_dst() {
        let tt = timetable("@daily", Amsterdam, "2026-01-01T00:00:00Z", None, true);
        let got = tt
            .intervals_between(
                local(Amsterdam, "2026-10-24T00:00:00"),
                local(Amsterdam, "2026-10-26T00:00:00"),
                10,
            )
            .expect("within limit");
        let hours: Vec<_> = got.iter().map(|i| (i.end - i.start).num_hours()).collect();
        assert_eq!(hours, [24, 25, 24]);
        assert!(got.windows(2).all(|w| w[0].end == w[1].start), "{got:?}");
    }

    #[test]
    fn interval_for_ends_at_the_next_fire() {
        let tt = timetable(
            "0 */6 * * *",
            UTC,
            "2026-03-01T00:00:00Z",
            Some("2026-03-01T06:00:00Z"),
            true,
        );
        let cases = [
            ("2026-03-01T06:00:00Z", "2026-03-01T12:00:00Z"),
            // Manual runs land between fire times; end_date does not apply.
            ("2026-03-01T07:30:00Z", "2026-03-01T12:00:00Z"),
            ("2026-03-05T18:00:00Z", "2026-03-06T00:00:00Z"),
        ];
        for (logical, end) in cases {
            assert_eq!(
                tt.interval_for(utc(logical)),
                Some(iv(logical, end)),
                "{logical}"
            );
        }
    }

    #[test]
    fn parses_dates_in_a_zone() {
        let cases: [(&str, Tz, Result<&str, &str>); 9] = [
            ("2026-01-01", UTC, Ok("2026-01-01T00:00:00Z")),
            ("2026-01-01", New_York, Ok("2026-01-01T05:00:00Z")),
            ("2026-07-01", New_York, Ok("2026-07-01T04:00:00Z")),
            ("2026-07-01", Amsterdam, Ok("2026-06-30T22:00:00Z")),
            (" 2026-07-01 ", Amsterdam, Ok("2026-06-30T22:00:00Z")),
            // An explicit offset wins over the zone.
            (
                "2026-07-01T00:00:00Z",
                Amsterdam,
                Ok("2026-07-01T00:00:00Z"),
            ),
            (
                "2026-07-01T12:00:00+02:00",
                New_York,
                Ok("2026-07-01T10:00:00Z"),
            ),
            (
                "2026-13-01",
                UTC,
                Err("bad date '2026-13-01': expected a date like 2026-01-01"),
            ),
            (
                "tomorrow",
                UTC,
                Err("bad date 'tomorrow': expected a date like 2026-01-01"),
            ),
        ];
        for (input, tz, want) in cases {
            match (parse_date(input, tz), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, utc(want), "{input} in {tz}"),
                (Err(got), Err(want)) => assert!(got.starts_with(want), "{input}: {got}"),
                (got, want) => panic!("{input} in {tz}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parse_date_moves_a_skipped_midnight_forward() {
        // Havana springs forward at midnight, so 2026-03-08 begins at 01:00
        // local (-04:00).
        let tz = chrono_tz::America::Havana;
        assert_eq!(
            parse_date("2026-03-08", tz),
            Ok(utc("2026-03-08T05:00:00Z"))
        );
        // It falls back from 01:00 to midnight on 2026-11-01, so midnight
        // happens twice; the first one counts.
        assert_eq!(
            parse_date("2026-11-01", tz),
            Ok(utc("2026-11-01T04:00:00Z"))
        );
    }
}
