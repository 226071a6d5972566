//! Timestamps: epoch seconds everywhere in the public API, parsed once at the edge.
//!
//! Accepted text forms are integer epoch seconds, `YYYY-MM-DD`,
//! `YYYY-MM-DD HH:MM:SS[.fff]`, ISO-8601 with `T`, and any of these with `Z` or an
//! explicit UTC offset. A time without an offset is UTC. Integers too large to be
//! seconds are rejected with a message naming the unit they look like.
//! [`parse_timestamp`] truncates fractions of a second; [`parse_whole_timestamp`], for
//! sources that must not lose them silently, refuses epoch seconds with a fraction.

use chrono::{DateTime, NaiveDate, NaiveDateTime};

/// Epoch seconds, UTC.
pub type Timestamp = i64;

/// Integers at or above this magnitude are not plausible epoch seconds (year 5138).
const SECONDS_LIMIT: i64 = 100_000_000_000;

/// Why a timestamp was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not a recognised time format.
    #[error(
        "timestamp '{input}' is not understood; use epoch seconds or ISO-8601 \
         (2024-01-31, 2024-01-31 09:00:00, 2024-01-31T09:00:00Z)"
    )]
    Malformed {
        /// The text as given.
        input: String,
    },
    /// An integer whose magnitude says it is not in seconds.
    #[error(
        "timestamp {value} looks like {unit}, but epoch seconds are expected; divide by {div}"
    )]
    WrongUnit {
        /// The value as given.
        value: i64,
        /// The unit it looks like.
        unit: &'static str,
        /// What to divide by.
        div: i64,
    },
    /// Epoch seconds with a fraction, where only whole seconds are accepted.
    #[error(
        "timestamp '{input}' is not whole epoch seconds; ts must be whole epoch seconds or \
         ISO-8601 (2024-01-31T09:00:00Z)"
    )]
    Fractional {
        /// The text as given.
        input: String,
    },
}

/// Checks that an integer is plausibly epoch seconds.
///
/// # Errors
/// [`TimeError::WrongUnit`] for values that look like milli-, micro- or nanoseconds.
pub fn check_seconds(value: i64) -> Result<Timestamp, TimeError> {
    let magnitude = value.unsigned_abs();
    let (unit, div) = if magnitude < SECONDS_LIMIT as u64 {
        return Ok(value);
    } else if magnitude < SECONDS_LIMIT as u64 * 1000 {
        ("milliseconds", 1000)
    } else if magnitude < SECONDS_LIMIT as u64 * 1_000_000 {
        ("microseconds", 1_000_000)
    } else {
        ("nanoseconds", 1_000_000_000)
    };
    Err(TimeError::WrongUnit { value, unit, div })
}

/// Parses one timestamp in any accepted form into epoch seconds (fractions truncated).
///
/// # Errors
/// [`TimeError`] naming the text and the accepted forms.
pub fn parse_timestamp(input: &str) -> Result<Timestamp, TimeError> {
    let text = input.trim();
    let malformed = || TimeError::Malformed {
        input: input.to_owned(),
    };
    if text.is_empty() {
        return Err(malformed());
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let value: i64 = text.parse().map_err(|_| malformed())?;
        return check_seconds(value);
    }
    if let Some((whole, fraction)) = text.split_once('.') {
        let digits = whole.strip_prefix('-').unwrap_or(whole);
        let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if numeric(digits) && numeric(fraction) {
            let value: i64 = whole.parse().map_err(|_| malformed())?;
            return check_seconds(value);
        }
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
        return Ok(dt.timestamp());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%z",
        "%Y-%m-%dT%H:%M:%S%.f%z",
    ] {
        if let Ok(dt) = DateTime::parse_from_str(text, fmt) {
            return Ok(dt.timestamp());
        }
    }
    let naive = text.strip_suffix('Z').unwrap_or(text);
    for fmt in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(naive, fmt) {
            return Ok(dt.and_utc().timestamp());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(naive, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp())
            .ok_or_else(malformed);
    }
    Err(malformed())
}

/// Parses one timestamp as [`parse_timestamp`] does, but refuses epoch seconds with a
/// non-zero fraction (`1600000000.5`) instead of truncating them. A zero fraction
/// (`1600000000.0`) is whole seconds and accepted; ISO-8601 text keeps its truncation.
///
/// # Errors
/// [`TimeError::Fractional`] for a fraction of a second, else as [`parse_timestamp`].
pub fn parse_whole_timestamp(input: &str) -> Result<Timestamp, TimeError> {
    let text = input.trim();
    if let Some((whole, fraction)) = text.split_once('.') {
        let digits = whole.strip_prefix('-').unwrap_or(whole);
        let numeric = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if numeric(digits) && numeric(fraction) && fraction.bytes().any(|b| b != b'0') {
            return Err(TimeError::Fractional {
                input: input.to_owned(),
            });
        }
    }
    parse_timestamp(input)
}

/// Formats epoch seconds as `YYYY-MM-DDTHH:MM:SSZ` for humans.
pub fn format_timestamp(ts: Timestamp) -> String {
    match DateTime::from_timestamp(ts, 0) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => ts.to_string(),
    }
}

/// The current time in epoch seconds.
pub fn now() -> Timestamp {
    chrono::Utc::now().timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form() {
        let cases = [
            ("1492592400", 1_492_592_400),
            ("2017-04-19 09:00:00", 1_492_592_400),
            ("2017-04-19T09:00:00", 1_492_592_400),
            ("2017-04-19T09:00:00Z", 1_492_592_400),
            ("2017-04-19T09:00:00.750Z", 1_492_592_400),
            ("2017-04-19T11:00:00+02:00", 1_492_592_400),
            ("2017-04-19 11:00:00+02:00", 1_492_592_400),
            ("2017-04-19 09:00", 1_492_592_400),
            ("2017-04-19", 1_492_560_000),
            ("-60", -60),
            ("1492592400.75", 1_492_592_400),
        ];
        for (text, want) in cases {
            assert_eq!(parse_timestamp(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_and_names_wrong_units() {
        assert!(matches!(
            parse_timestamp("yesterday"),
            Err(TimeError::Malformed { .. })
        ));
        assert!(matches!(
            parse_timestamp(""),
            Err(TimeError::Malformed { .. })
        ));
        let cases = [
            ("1492592400000", "milliseconds"),
            ("1492592400000000", "microseconds"),
            ("1492592400000000000", "nanoseconds"),
        ];
        for (text, unit) in cases {
            let err = parse_timestamp(text).unwrap_err();
            assert!(err.to_string().contains(unit), "{err}");
        }
    }

    #[test]
    fn whole_seconds_refuse_a_fraction_but_take_a_zero_one() {
        let cases = [
            ("1492592400", Ok(1_492_592_400)),
            ("1492592400.0", Ok(1_492_592_400)),
            ("1492592400.000", Ok(1_492_592_400)),
            ("-60.00", Ok(-60)),
            ("2017-04-19T09:00:00.750Z", Ok(1_492_592_400)),
            ("1492592400000.0", Err("milliseconds")),
            ("1492592400.5", Err("is not whole epoch seconds")),
            ("-1.001", Err("is not whole epoch seconds")),
            (" 7.25 ", Err("ts must be whole epoch seconds or ISO-8601")),
            ("1.5.5", Err("is not understood")),
        ];
        for (text, want) in cases {
            match (parse_whole_timestamp(text), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
                (Err(err), Err(want)) => assert!(err.to_string().contains(want), "{text}: {err}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn formats_as_utc() {
        assert_eq!(format_timestamp(1_492_592_400), "2017-04-19T09:00:00Z");
    }
}
