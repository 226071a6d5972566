//! Bearer-token authentication.
//!
//! The gateway keeps only the SHA-256 digest of its token. A request's token is hashed
//! the same way and the two digests are compared in constant time, so neither the
//! position of the first differing byte nor the token's length shows in the response
//! time. This is a dozen lines instead of a dependency: hashing first makes the inputs
//! fixed-length, and [`std::hint::black_box`] keeps the compiler from turning the
//! accumulate-then-test loop back into an early exit. The token is never logged and its
//! `Debug` form is redacted.

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

    /// Whether an `Authorization` header value is `Bearer <this token>`.
    pub fn accepts(&self, header: Option<&[u8]>) -> bool {
        let Some(value) = header else {
            return false;
        };
        let presented = match value.strip_prefix(b"Bearer ") {
            Some(rest) => rest,
            None => return false,
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
    fn accepts_only_the_exact_bearer_token() {
        let t = Token::new("s3cret").unwrap();
        let cases: &[(Option<&[u8]>, bool)] = &[
            (Some(b"Bearer s3cret"), true),
            (Some(b"Bearer s3cre"), false),
            (Some(b"Bearer s3cret "), false),
            (Some(b"bearer s3cret"), false),
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
