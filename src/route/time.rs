//! Postgres commit timestamps (microseconds since 2000-01-01 UTC) as the RFC 3339 text of the
//! `pg_commit_ts` header, and back. Hand-written (Howard Hinnant's civil-calendar algorithms)
//! because it runs once per Postgres transaction on the hot path and needs no time zone data.

/// Microseconds since 2000-01-01 (Postgres' epoch) as RFC 3339 UTC with microseconds.
pub fn pg_timestamp_rfc3339(micros_since_2000: i64) -> String {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let unix_micros = micros_since_2000 + PG_EPOCH_UNIX_SECS * 1_000_000;
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Parses what [`pg_timestamp_rfc3339`] prints back to microseconds since the Unix epoch.
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[10] != b'T' || b[26] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    let days = days_from_civil(y, m, d);
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

// Howard Hinnant's civil calendar algorithms (also used by decode::message for `created_at`).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let micros = 848_984_400_123_456; // 2026-11-26-ish since 2000
        let text = pg_timestamp_rfc3339(micros);
        let unix = parse_rfc3339_micros(&text).expect("parses");
        assert_eq!(unix, micros + 946_684_800 * 1_000_000);
        assert_eq!(pg_timestamp_rfc3339(-1), "1999-12-31T23:59:59.999999Z");
    }
}
