//! Timestamps audit reads and prints, all as microseconds since the Unix epoch (UTC).
//!
//! Three texts meet here: the operator's `--since` (RFC 3339), the `created_at` header (Postgres'
//! ISO output, which the relay pins with `DateStyle=ISO, TimeZone=UTC`: `2026-11-26 05:00:00.123+00`)
//! and the `pg_commit_ts` header (RFC 3339 UTC with microseconds, written by the relay). One lenient
//! parser reads all three, so a record's time and a row's time compare on one scale.

/// Microseconds between 1970-01-01 and 2000-01-01 (Postgres' epoch).
pub const PG_EPOCH_MICROS: i64 = 946_684_800 * 1_000_000;

/// Parses `YYYY-MM-DD(T|t| )HH:MM:SS[.fraction][Z|z|±HH[:MM[:SS]]]` to microseconds since the Unix
/// epoch. Without an offset the text is read as UTC only when `offset_required` is false.
pub fn parse(text: &str, offset_required: bool) -> Option<i64> {
    let b = text.trim().as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let s = b.get(from..from + len)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(s).ok()?.parse().ok()
    };
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = &b[start..i];
        if digits.is_empty() {
            return None;
        }
        for (n, c) in digits.iter().take(6).enumerate() {
            micros += i64::from(c - b'0') * 10i64.pow(5 - n as u32);
        }
    }
    let offset_secs = match b.get(i) {
        None if offset_required => return None,
        None => 0,
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (oh, om, os) = match rest.len() {
                2 => (num(i + 1, 2)?, 0, 0),
                4 => (num(i + 1, 2)?, num(i + 3, 2)?, 0),
                5 if rest[2] == b':' => (num(i + 1, 2)?, num(i + 4, 2)?, 0),
                8 if rest[2] == b':' && rest[5] == b':' => {
                    (num(i + 1, 2)?, num(i + 4, 2)?, num(i + 7, 2)?)
                }
                _ => return None,
            };
            let secs = oh * 3600 + om * 60 + os;
            if sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + h * 3600 + mi * 60 + s.min(59) - offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// RFC 3339 UTC with microseconds, for reports.
pub fn format(unix_micros: i64) -> String {
    crate::route::pg_timestamp_rfc3339(unix_micros - PG_EPOCH_MICROS)
}

/// Now, in microseconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

// Howard Hinnant's days-from-civil.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
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

    const T: i64 = 1_795_669_200_000_000; // 2026-11-26T05:00:00Z

    #[test]
    fn reads_rfc3339_and_postgres_iso() {
        assert_eq!(parse("2026-11-26T05:00:00Z", true), Some(T));
        assert_eq!(parse("2026-11-26t05:00:00z", true), Some(T));
        assert_eq!(parse("2026-11-26T06:30:00+01:30", true), Some(T));
        assert_eq!(parse("2026-11-26T00:00:00-05:00", true), Some(T));
        assert_eq!(
            parse("2026-11-26 05:00:00.123+00", false),
            Some(T + 123_000)
        );
        assert_eq!(
            parse("2026-11-26 05:00:00.1234567+00", false),
            Some(T + 123_456)
        );
        assert_eq!(parse("2026-11-26 05:00:00+00:00:00", false), Some(T));
        assert_eq!(parse("2026-11-26T05:00:00.000001Z", true), Some(T + 1));
        assert_eq!(parse("2026-11-26 05:00:00", false), Some(T));
        assert_eq!(
            parse("1999-12-31T23:59:59.999999Z", true),
            Some(PG_EPOCH_MICROS - 1)
        );
    }

    #[test]
    fn refuses_what_it_cannot_place() {
        assert_eq!(parse("2026-11-26 05:00:00", true), None, "no offset");
        for bad in [
            "",
            "yesterday",
            "2026-11-26",
            "2026-13-26T05:00:00Z",
            "2026-11-26T05:00:00.Z",
            "2026-11-26T05:00:00+1",
            "2026-11-26T05:00:00Zjunk",
            "infinity",
        ] {
            assert_eq!(parse(bad, false), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_what_it_parses() {
        assert_eq!(format(T + 42), "2026-11-26T05:00:00.000042Z");
        assert_eq!(parse(&format(T + 42), true), Some(T + 42));
    }
}
