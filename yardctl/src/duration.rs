//! Durations on the command line (`90s`, `10m`, `1h30m`, `500ms`) and for people to read.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration given as one or more `<number><unit>` parts, units `h`, `m`, `s` or `ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CliDuration(pub Duration);

/// A string that is not a duration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidDuration(String);

impl fmt::Display for InvalidDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: expected <number><unit> parts with units h, m, s or ms, like \"90s\", \"10m\" or \"1h30m\"",
            self.0
        )
    }
}

impl std::error::Error for InvalidDuration {}

impl FromStr for CliDuration {
    type Err = InvalidDuration;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidDuration(s.to_string());
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total = Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (Duration::from_millis(1), 2)
            } else if rest.starts_with('h') {
                (Duration::from_secs(3600), 1)
            } else if rest.starts_with('m') {
                (Duration::from_secs(60), 1)
            } else if rest.starts_with('s') {
                (Duration::from_secs(1), 1)
            } else {
                return Err(invalid());
            };
            rest = &rest[len..];
            let part = u32::try_from(n)
                .ok()
                .and_then(|n| unit.checked_mul(n))
                .ok_or_else(invalid)?;
            total = total.checked_add(part).ok_or_else(invalid)?;
        }
        Ok(CliDuration(total))
    }
}

/// `1d2h3m4s` style, largest units first, zero parts left out; below a second, `0s`.
pub fn human(d: time::Duration) -> String {
    let negative = d.is_negative();
    let mut secs = d.whole_seconds().unsigned_abs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if secs >= unit {
            out.push_str(&format!("{}{name}", secs / unit));
            secs %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(s: &str) -> Result<Duration, InvalidDuration> {
        s.parse::<CliDuration>().map(|d| d.0)
    }

    #[test]
    fn parses_units_and_sums_parts() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1m500ms").unwrap(), Duration::from_millis(60_500));
    }

    #[test]
    fn refuses_what_is_not_a_duration() {
        for bad in [
            "",
            "h",
            "10",
            "10d",
            "-1h",
            "1.5h",
            "1h 2m",
            "99999999999999999999s",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(time::Duration::ZERO), "0s");
        assert_eq!(human(time::Duration::milliseconds(900)), "0s");
        assert_eq!(human(time::Duration::seconds(90)), "1m30s");
        assert_eq!(human(time::Duration::hours(24)), "1d");
        assert_eq!(
            human(time::Duration::seconds(86_400 + 3600 + 61)),
            "1d1h1m1s"
        );
        assert_eq!(human(time::Duration::seconds(-3600)), "-1h");
    }
}
