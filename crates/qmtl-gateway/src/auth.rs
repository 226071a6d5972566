//! Bearer-token authentication.
//!
//! The gateway keeps only the SHA-256 digest of its token. A request's token is hashed
//! the same way and the two digests are compared in constant time, so neither the
//! position of the first differing byte nor the token's length shows in the response
//! time. This is a dozen lines instead of a dependency: hashing first makes the inputs
//! fixed-length, and [`std::hint::black_box`] keeps the compiler from turning the
//! accumulate-then-test loop back into an early exit. The token is never logged and its
//! `Debug` form is redacted.
//!
//! The header is `Authorization: Bearer TOKEN`; the scheme name is case-insensitive
//! (RFC 7235 section 2.1), so `bearer` and `BEARER` are accepted too, and one or more
//! spaces may separate it from the token.

use std::fmt;

use sha2::{Digest, Sha256};

/// A bearer token, held as its digest.
#[derive(Clone)]
pub struct Token {
    digest: [u8; 32],
}

impl Token {
    /// The token `secret`; `None` when it is empty (an empty token would protect
    /// nothing).
    pub fn new(secret: &str) -> Option<Token> {
        if secret.is_empty() {
            return None;
        }
        Some(Token {
            digest: Sha256::digest(secret.as_bytes()).into(),
        })
    }

    /// Whether an `Authorization` header value is `Bearer <this token>`, the scheme in
    /// any case.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else {
            return false;
        };
        let Some(presented) = bearer_credentials(value) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        constant_time_eq(&digest, &self.digest)
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// The credentials after a `Bearer` scheme (any case) and at least one space.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let rest = &value[SCHEME.len()..];
    let spaces = rest.iter().take_while(|&&b| b == b' ').count();
    (spaces > 0).then_some(&rest[spaces..])
}

/// Compares two equal-length byte arrays without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= std::hint::black_box(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_token_after_a_bearer_scheme_in_any_case() {
        let t = Token::new("s3cret").unwrap();
        let cases: &[(Option<&[u8]>, bool)] = &[
            (Some(b"Bearer s3cret"), true),
            (Some(b"Bearer s3cre"), false),
            (Some(b"Bearer s3cret "), false),
            (Some(b"bearer s3cret"), true),
            (Some(b"BEARER s3cret"), true),
            (Some(b"bEaReR s3cret"), true),
            (Some(b"Bearer  s3cret"), true),
            (Some(b"Bearers3cret"), false),
            (Some(b"Bearer\ts3cret"), false),
            (Some(b"Bearer"), false),
            (Some(b"Basic s3cret"), false),
            (Some(b"s3cret"), false),
            (Some(b"Bearer "), false),
            (Some(b"Bearer \xff\xfe"), false),
            (None, false),
        ];
        for (header, want) in cases {
            assert_eq!(t.accepts(*header), *want, "{header:?}");
        }
    }

    #[test]
    fn empty_token_is_refused_and_debug_is_redacted() {
        assert!(Token::new("").is_none());
        let shown = format!("{:?}", Token::new("s3cret").unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
