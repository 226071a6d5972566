//! Intervals: the positive bucket width, in seconds, at which a node produces values.
//!
//! Parsing accepts plain seconds (`60`) and a number with one unit suffix (`60s`, `5m`,
//! `1h`, `1d`). Zero, negative and malformed values are rejected with an error that
//! says what form is expected. This module also owns bucketing: a timestamp belongs to
//! the bucket `ts - ts mod interval` (euclidean, so negative timestamps bucket downwards).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A positive number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Interval(u64);

/// Why an interval was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntervalError {
    /// The value was zero (`0`, `0s`, `0h`, ...).
    #[error("interval '{input}' is zero; an interval must be a positive number of seconds")]
    Zero {
        /// The text as given.
        input: String,
    },
    /// The value was negative.
    #[error("interval '{input}' is negative; an interval must be a positive number of seconds")]
    Negative {
        /// The text as given.
        input: String,
    },
    /// The text is not a number with an optional `s`, `m`, `h` or `d` suffix.
    #[error(
        "interval '{input}' is not understood; write seconds (60) or a number with a \
         unit: 60s, 5m, 1h, 1d"
    )]
    Malformed {
        /// The text as given.
        input: String,
    },
    /// The value does not fit in 64-bit seconds.
    #[error("interval '{input}' is too large")]
    TooLarge {
        /// The text as given.
        input: String,
    },
}

impl Interval {
    /// One second.
    pub const SECOND: Interval = Interval(1);
    /// One minute.
    pub const MINUTE: Interval = Interval(60);
    /// One hour.
    pub const HOUR: Interval = Interval(3600);
    /// One day.
    pub const DAY: Interval = Interval(86_400);

    /// An interval of `secs` seconds.
    ///
    /// # Errors
    /// [`IntervalError::Zero`] when `secs` is 0.
    pub fn from_secs(secs: u64) -> Result<Self, IntervalError> {
        if secs == 0 {
            return Err(IntervalError::Zero {
                input: secs.to_string(),
            });
        }
        if secs > i64::MAX as u64 {
            return Err(IntervalError::TooLarge {
                input: secs.to_string(),
            });
        }
        Ok(Interval(secs))
    }

    /// The width in seconds.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// The width in seconds as a signed timestamp delta.
    pub fn secs_i64(self) -> i64 {
        self.0 as i64
    }

    /// The bucket `ts` falls in: `ts - ts mod interval`. A bucket that would start
    /// before the earliest representable timestamp (`i64::MIN`) starts there instead.
    pub fn bucket(self, ts: i64) -> i64 {
        ts.saturating_sub(ts.rem_euclid(self.secs_i64()))
    }

    /// The first bucket at or after `ts`.
    pub fn bucket_ceil(self, ts: i64) -> i64 {
        let b = self.bucket(ts);
        if b == ts {
            b
        } else {
            b.saturating_add(self.secs_i64())
        }
    }

    /// A short human form: `1h`, `5m`, `90s`.
    pub fn human(self) -> String {
        let s = self.0;
        if s.is_multiple_of(86_400) {
            format!("{}d", s / 86_400)
        } else if s.is_multiple_of(3600) {
            format!("{}h", s / 3600)
        } else if s.is_multiple_of(60) {
            format!("{}m", s / 60)
        } else {
            format!("{s}s")
        }
    }
}

/// Displays as plain seconds, the form used in metric labels and JSON.
impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Interval {
    type Err = IntervalError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        let (digits, unit) = match text.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], Some(c)),
            Some(_) => (text, None),
            None => {
                return Err(IntervalError::Malformed {
                    input: input.to_owned(),
                })
            }
        };
        let multiplier: u64 = match unit.map(|c| c.to_ascii_lowercase()) {
            None | Some('s') => 1,
            Some('m') => 60,
            Some('h') => 3600,
            Some('d') => 86_400,
            Some(_) => {
                return Err(IntervalError::Malformed {
                    input: input.to_owned(),
                })
            }
        };
        let digits = digits.trim();
        if let Some(rest) = digits.strip_prefix('-') {
            if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
                return Err(IntervalError::Negative {
                    input: input.to_owned(),
                });
            }
        }
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IntervalError::Malformed {
                input: input.to_owned(),
            });
        }
        let n: u64 = digits.parse().map_err(|_| IntervalError::TooLarge {
            input: input.to_owned(),
        })?;
        let secs = n
            .checked_mul(multiplier)
            .ok_or_else(|| IntervalError::TooLarge {
                input: input.to_owned(),
            })?;
        if secs == 0 {
            return Err(IntervalError::Zero {
                input: input.to_owned(),
            });
        }
        Interval::from_secs(secs).map_err(|_| IntervalError::TooLarge {
            input: input.to_owned(),
        })
    }
}

impl TryFrom<&str> for Interval {
    type Error = IntervalError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl TryFrom<u64> for Interval {
    type Error = IntervalError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Interval::from_secs(value)
    }
}

impl TryFrom<i64> for Interval {
    type Error = IntervalError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        if value < 0 {
            return Err(IntervalError::Negative {
                input: value.to_string(),
            });
        }
        Interval::from_secs(value as u64)
    }
}

impl TryFrom<i32> for Interval {
    type Error = IntervalError;
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        Interval::try_from(i64::from(value))
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = i64::deserialize(d)?;
        Interval::try_from(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_accepted_forms() {
        let cases = [
            ("60", 60),
            ("60s", 60),
            ("5m", 300),
            ("1h", 3600),
            ("1d", 86_400),
            (" 2H ", 7200),
            ("1", 1),
        ];
        for (text, secs) in cases {
            assert_eq!(text.parse::<Interval>().unwrap().secs(), secs, "{text}");
        }
    }

    #[test]
    fn rejects_zero_negative_and_garbage() {
        type Check = fn(&IntervalError) -> bool;
        let cases: [(&str, Check); 10] = [
            ("0", |e| matches!(e, IntervalError::Zero { .. })),
            ("0s", |e| matches!(e, IntervalError::Zero { .. })),
            ("0h", |e| matches!(e, IntervalError::Zero { .. })),
            ("-5", |e| matches!(e, IntervalError::Negative { .. })),
            ("-1h", |e| matches!(e, IntervalError::Negative { .. })),
            ("", |e| matches!(e, IntervalError::Malformed { .. })),
            ("h", |e| matches!(e, IntervalError::Malformed { .. })),
            ("1.5h", |e| matches!(e, IntervalError::Malformed { .. })),
            ("10x", |e| matches!(e, IntervalError::Malformed { .. })),
            ("99999999999999999999d", |e| {
                matches!(e, IntervalError::TooLarge { .. })
            }),
        ];
        for (text, check) in cases {
            let err = text.parse::<Interval>().unwrap_err();
            assert!(check(&err), "{text}: {err}");
            assert!(err.to_string().contains(text.trim()), "{err}");
        }
    }

    #[test]
    fn buckets_floor_to_the_interval() {
        let h = Interval::HOUR;
        assert_eq!(h.bucket(3600), 3600);
        assert_eq!(h.bucket(3601), 3600);
        assert_eq!(h.bucket(7199), 3600);
        assert_eq!(h.bucket(-1), -3600);
        assert_eq!(h.bucket_ceil(3601), 7200);
        assert_eq!(h.bucket_ceil(3600), 3600);
        assert_eq!(Interval::SECOND.bucket(17), 17);
    }

    /// Regression: bucketing a timestamp near `i64::MIN` overflowed (a panic in debug
    /// builds) when its bucket would start before `i64::MIN`; found by `tests/props.rs`.
    #[test]
    fn bucketing_the_earliest_timestamps_does_not_overflow() {
        let wide = Interval::from_secs(2_305_843_009_213_693_953).unwrap();
        assert_eq!(wide.bucket(-6_917_529_027_641_081_860), i64::MIN);
        assert_eq!(Interval::from_secs(7).unwrap().bucket(i64::MIN), i64::MIN);
    }

    #[test]
    fn human_form_uses_the_largest_whole_unit() {
        assert_eq!(Interval::HOUR.human(), "1h");
        assert_eq!(Interval::from_secs(90).unwrap().human(), "90s");
        assert_eq!(Interval::from_secs(300).unwrap().human(), "5m");
        assert_eq!(Interval::DAY.to_string(), "86400");
    }
}
