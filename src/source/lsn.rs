//! Log sequence numbers in Postgres' text form (`16/B374D848`), as u64 inside the relay.

/// Formats an LSN as Postgres prints it.
pub fn format(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses Postgres' `X/Y` form.
pub fn parse(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for v in [0u64, 1, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse(&format(v)), Some(v));
        }
        assert_eq!(format(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse("0/0"), Some(0));
        assert_eq!(parse("nope"), None);
        assert_eq!(parse("1/"), None);
    }
}
