//! Keeping secrets out of output: passwords in DSNs and URLs are replaced by `***`
//! before any text that holds them is logged, shown in an error or written to a report.

/// `dsn` with every password replaced by `***`: the password of a URL's user info and
/// the value of any `password=` setting (key-value form or URL query).
pub fn redact_dsn(dsn: &str) -> String {
    let mut out = dsn.to_owned();

    // URL user info, of every URL in the text (a list of DSNs, a message quoting one):
    // scheme://user:password@host
    let mut from = 0;
    while let Some(found) = out[from..].find("://") {
        let rest = from + found + 3;
        let authority_end = out[rest..]
            .find(['/', '?', '#', ',', ' '])
            .map_or(out.len(), |i| rest + i);
        from = authority_end;
        if let Some(at) = out[rest..authority_end].rfind('@') {
            if let Some(colon) = out[rest..rest + at].find(':') {
                let password = rest + colon + 1..rest + at;
                from = authority_end - password.len() + 3;
                out.replace_range(password, "***");
            }
        }
    }

    // password=VALUE anywhere (key-value DSNs and URL query strings).
    let mut from = 0;
    loop {
        let lower = out.to_ascii_lowercase();
        let Some(found) = lower[from..].find("password") else {
            break;
        };
        let mut i = from + found + "password".len();
        let bytes = out.as_bytes();
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            from = i;
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let end = if i < bytes.len() && bytes[i] == b'\'' {
            // A quoted value ends at the next unescaped quote.
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'\'' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(bytes.len())
        } else {
            out[i..]
                .find(|c: char| c.is_whitespace() || c == '&' || c == '#')
                .map_or(out.len(), |e| i + e)
        };
        out.replace_range(i..end, "***");
        from = i + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_form_of_password() {
        let cases = [
            (
                "postgresql://u:hunter2@h:5432/db",
                "postgresql://u:***@h:5432/db",
            ),
            (
                "http://admin:s3cret@localhost:8000",
                "http://admin:***@localhost:8000",
            ),
            ("http://localhost:8000/x@y", "http://localhost:8000/x@y"),
            // Regression: only the first of several DSNs lost its password.
            (
                "postgresql://u:pw1@h:1/db,postgresql://u:secret2@h:2/db",
                "postgresql://u:***@h:1/db,postgresql://u:***@h:2/db",
            ),
            (
                "cannot read postgresql://u:secret3@h/db: No such file",
                "cannot read postgresql://u:***@h/db: No such file",
            ),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            (
                "host=h password=hunter2 user=u",
                "host=h password=*** user=u",
            ),
            (
                "host=h password = 'a b' user=u",
                "host=h password = *** user=u",
            ),
            (
                "postgresql://h/db?user=u&password=pw&x=1",
                "postgresql://h/db?user=u&password=***&x=1",
            ),
        ];
        for (given, want) in cases {
            assert_eq!(redact_dsn(given), want, "{given}");
        }
    }
}
