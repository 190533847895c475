//! Timestamps as the store keeps them (microseconds since the Unix epoch) and as the contracts
//! print them (UTC, RFC 3339, `Z`).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub fn to_micros(t: DateTime<Utc>) -> i64 {
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
}
