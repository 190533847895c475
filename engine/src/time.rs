//! Timestamps as the store keeps them (microseconds since the Unix epoch) and as the contracts
//! print them (UTC, RFC 3339, `Z`).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub(crate) fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 with `Z`, as precise as the value needs (no trailing zero fractions).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Now, truncated to the microsecond precision the database keeps, so that a value read back
/// equals the value written.
pub fn now() -> DateTime<Utc> {
    from_micros(to_micros(Utc::now()))
}

/// A duration as a DAG file writes one (`250ms`, `90s`, `5m`, `2h`), for messages that name a
/// setting such as a timeout.
pub fn as_written(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 && s < 60 {
        format!("{}ms", d.as_millis())
    } else if s.is_multiple_of(3600) && s >= 3600 {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) && s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// A span as the pages show it: `250 ms`, `12.3 s`, `4 min 05 s`, `2 h 01 min`.
pub fn elapsed(secs: f64) -> String {
    if secs < 1.0 {
        format!("{} ms", (secs * 1000.0).round() as i64)
    } else if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        let s = secs.round() as i64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as i64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_uses_z_and_drops_zero_fractions() {
        let t = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        assert_eq!(rfc3339(t), "2026-03-01T00:00:00Z");
        let t = from_micros(to_micros(t) + 1_102_000);
        assert_eq!(rfc3339(t), "2026-03-01T00:00:01.102Z");
        assert_eq!(from_micros(to_micros(t)), t);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(elapsed(0.25), "250 ms");
        assert_eq!(elapsed(12.34), "12.3 s");
        assert_eq!(elapsed(245.0), "4 min 05 s");
        assert_eq!(elapsed(7260.0), "2 h 01 min");
        assert_eq!(as_written(Duration::from_millis(250)), "250ms");
        assert_eq!(as_written(Duration::from_secs(90)), "90s");
        assert_eq!(as_written(Duration::from_secs(300)), "5m");
        assert_eq!(as_written(Duration::from_secs(7200)), "2h");
    }
}
