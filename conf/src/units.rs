//! Human units in config values: sizes ("10GiB") and durations ("4s", "1d").

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;
use std::time::Duration;

/// A byte count written as an integer or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

/// A duration written as an integer number of seconds or a string with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

const SIZE_HELP: &str = "expected a size such as 512MiB, 10GiB, 64KB or a number of bytes";
const DURATION_HELP: &str =
    "expected a duration such as 500ms, 4s, 5m, 2h, 7d or a number of seconds";

/// Parses "10GiB", "256 MiB", "64KB", "1024". Binary (KiB) and decimal (KB)
/// units are both accepted, as operators write both.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?}; {SIZE_HELP}")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size; {SIZE_HELP}"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range; {SIZE_HELP}"));
    }
    Ok(bytes as u64)
}

/// Parses "500ms", "4s", "5m", "2h", "7d", "30".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let secs_per_unit = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        other => return Err(format!("unknown duration unit {other:?}; {DURATION_HELP}")),
    };
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; {DURATION_HELP}"))?;
    Duration::try_from_secs_f64(value * secs_per_unit)
        .map_err(|_| format!("{text:?} is out of range; {DURATION_HELP}"))
}

struct UnitVisitor<F> {
    parse: F,
    help: &'static str,
}

impl<T, F: Fn(&str) -> Result<T, String>> Visitor<'_> for UnitVisitor<F> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.help)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative; {}", self.help)));
        }
        (self.parse)(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            parse: |s: &str| parse_byte_size(s).map(ByteSize),
            help: SIZE_HELP,
        })
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UnitVisitor {
            parse: |s: &str| parse_duration(s).map(Seconds),
            help: DURATION_HELP,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_byte_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_byte_size("256 MiB"), Ok(256 << 20));
        assert_eq!(parse_byte_size("64KB"), Ok(64_000));
        assert_eq!(parse_byte_size("1024"), Ok(1024));
        assert!(parse_byte_size("10XB")
            .unwrap_err()
            .contains("unknown size unit"));
        assert!(parse_byte_size("GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("4s"), Ok(Duration::from_secs(4)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert!(parse_duration("4 weeks").is_err());
    }
}
