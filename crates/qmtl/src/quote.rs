//! How error messages quote text that came from outside (a cell of a file, a value of
//! a JSON line): at most [`QUOTE_CHARS`] characters, then `…` when there were more, with
//! control characters escaped, so that a message stays one short line whatever the input
//! held (a 10 MB cell, a newline, a terminal escape sequence).

/// The most characters of one outside value a message repeats.
pub const QUOTE_CHARS: usize = 80;

/// `text` as a message quotes it; see the module docs.
pub fn quote(text: &str) -> String {
    quote_up_to(text, QUOTE_CHARS)
}

/// [`quote`] with another length: for longer texts that are still from outside, such as
/// a server's error detail.
pub fn quote_up_to(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_control_laden_text_is_quoted_on_one_short_line() {
        assert_eq!(quote("abc"), "abc");
        assert_eq!(quote("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = "é".repeat(QUOTE_CHARS + 1);
        assert_eq!(quote(&long), format!("{}…", "é".repeat(QUOTE_CHARS)));
    }
}
