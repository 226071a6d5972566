//! How much of what a client sent the gateway's error answers repeat back: an id, key,
//! name or value from a request is shown up to [`MAX_ECHO_CHARS`] characters, then `…`,
//! so that a request carrying a huge path segment or field does not get it back in
//! full (nor fill the log). Whole `detail` texts are bounded too, by
//! [`MAX_DETAIL_CHARS`], for causes (a JSON parser's words) that quote input.

use std::fmt;

/// The most characters of one client-sent value an error answer repeats.
pub const MAX_ECHO_CHARS: usize = qmtl::quote::QUOTE_CHARS;

/// The most characters of an error answer's `detail`.
pub const MAX_DETAIL_CHARS: usize = 500;

/// `text` as an error message shows it: its first [`MAX_ECHO_CHARS`] characters, with
/// `…` when it was longer, control characters escaped ([`qmtl::quote::quote`]).
pub fn echo(text: &str) -> Echo<'_> {
    Echo(text)
}

/// A client-sent value, displayed shortened (see [`echo`]).
#[derive(Debug, Clone, Copy)]
pub struct Echo<'a>(&'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&qmtl::quote::quote(self.0))
    }
}

/// The first `max` characters of `text`, with `…` appended when it was longer.
pub fn capped(text: &str, max: usize) -> String {
    qmtl::quote::quote_up_to(text, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_up_to_the_limit_are_shown_whole_and_longer_ones_cut_with_an_ellipsis() {
        let at_limit = "x".repeat(MAX_ECHO_CHARS);
        let cases: [(&str, String); 5] = [
            ("", String::new()),
            ("abc", "abc".to_owned()),
            (&at_limit, at_limit.clone()),
            (
                &"y".repeat(10_000),
                format!("{}…", "y".repeat(MAX_ECHO_CHARS)),
            ),
            // Characters, not bytes: a multi-byte character is never split.
            (&"é".repeat(81), format!("{}…", "é".repeat(MAX_ECHO_CHARS))),
        ];
        for (text, want) in cases {
            assert_eq!(
                echo(text).to_string(),
                want,
                "{} chars",
                text.chars().count()
            );
        }
    }
}
