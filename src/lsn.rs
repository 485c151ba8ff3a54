//! The WAL position every stage shares: a Postgres log sequence number (`pg_lsn`).
//!
//! One type for the whole relay (source, tracker, route headers, checkpoint, status) and for the
//! dev harness and the tests, so positions are compared, printed and parsed one way only. Inside
//! the relay an LSN is a plain `u64` ordered as Postgres orders it; outside it is Postgres' text
//! form `X/Y` (two hexadecimal halves, upper case, no leading zeros), which is what operators see in
//! `pg_replication_slots`, the checkpoint topic and the `pg_lsn` header.

use std::fmt;
use std::str::FromStr;

/// A WAL position, ordered as Postgres orders it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: before any WAL (what `START_REPLICATION ... 0/0` asks for: "from the slot").
    pub const ZERO: Lsn = Lsn(0);

    /// The position as a number (for metrics and byte distances).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Bytes of WAL from `earlier` to `self` (0 when `earlier` is not earlier).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(l: Lsn) -> Self {
        l.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Debug prints the Postgres form too: a position is read by people in logs and test failures.
impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Text that is not an `X/Y` LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an LSN (expected Postgres' X/Y form, e.g. 16/B374D848)")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || ParseLsnError(text.to_string());
        let (hi, lo) = text.trim().split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_order() {
        for v in [0u64, 1, 0x16_B374_D848, u64::MAX] {
            assert_eq!(Lsn(v).to_string().parse::<Lsn>(), Ok(Lsn(v)));
        }
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(format!("{:?}", Lsn(0x1_0000_0000)), "1/0");
        assert_eq!("0/0".parse::<Lsn>(), Ok(Lsn::ZERO));
        assert_eq!(" 0/A ".parse::<Lsn>(), Ok(Lsn(10)));
        for bad in ["nope", "1/", "/1", "1/2/3", "G/0", "100000000/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
        assert!(Lsn(0x1_0000_0000) > Lsn(0xFFFF_FFFF));
        assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let json = serde_json::to_string(&Lsn(0x16_B374_D848)).expect("json");
        assert_eq!(json, "\"16/B374D848\"");
        assert_eq!(
            serde_json::from_str::<Lsn>(&json).expect("back"),
            Lsn(0x16_B374_D848)
        );
        assert!(serde_json::from_str::<Lsn>("\"x\"").is_err());
    }
}
