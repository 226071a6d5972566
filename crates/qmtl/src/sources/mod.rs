//! History source specifications and the loaders they open.
//!
//! A spec is `SCHEME:REST`, parsed once here with errors that list what is accepted:
//! - `csv:PATH` — a CSV file (see [`CsvLoader`]), the embedded default that needs no
//!   server.
//! - `questdb:DSN` — a QuestDB table over the PostgreSQL wire (see [`QuestDBLoader`]),
//!   using only what QuestDB supports; `DSN` is `postgresql://USER:PASSWORD@HOST:PORT/DB`.
//! - `postgres:DSN`, or a bare `postgresql://...` / `postgres://...` DSN — a PostgreSQL
//!   (or TimescaleDB) table through the same loader.
//!
//! Database sources read the table `node_data` unless told otherwise
//! ([`SourceOptions::table`], `--backfill-table` on the command line). A spec's
//! `Display` never shows a password.
//!
//! For a strategy with several streams, a spec may be prefixed with a stream name,
//! `NAME=SCHEME:REST`, to feed only that stream; see [`SourceMap`].

mod csv;
pub mod postgres;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use self::csv::CsvLoader;
pub use self::postgres::table::DEFAULT_TABLE;
pub use self::postgres::{Flavor, LoaderOptions, PgSource, PostgresLoader, QuestDBLoader};
use crate::loader::{CacheLoader, LoaderError};

/// The schemes this build understands.
pub const KNOWN_SCHEMES: &[&str] = &["csv", "questdb", "postgres", "postgresql"];

/// A parsed source specification.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SourceSpec {
    /// A CSV file.
    Csv(PathBuf),
    /// A table on a QuestDB or PostgreSQL server.
    Postgres(Box<PgSource>),
}

/// Settings that apply to the sources a run opens.
#[derive(Debug, Clone)]
#[must_use]
pub struct SourceOptions {
    /// The table database sources read (default [`DEFAULT_TABLE`]).
    pub table: String,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            table: DEFAULT_TABLE.to_owned(),
        }
    }
}

/// Why a source spec was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceSpecError {
    /// Nothing was given.
    #[error("the backfill source is empty; give one such as csv:data/eurusd_1h.csv")]
    Empty,
    /// No `scheme:` prefix.
    #[error(
        "backfill source '{input}' has no scheme; write SCHEME:VALUE with SCHEME one of: \
         {known}{hint}"
    )]
    NoScheme {
        /// The text as given.
        input: String,
        /// The known schemes.
        known: String,
        /// A suggestion, if one fits.
        hint: String,
    },
    /// An unknown scheme.
    #[error("unknown backfill source scheme '{scheme}'; known schemes: {known}")]
    UnknownScheme {
        /// The scheme given.
        scheme: String,
        /// The known schemes.
        known: String,
    },
    /// A scheme with nothing after the colon.
    #[error("backfill source '{scheme}:' has no {what}; write {scheme}:{example}")]
    MissingValue {
        /// The scheme.
        scheme: String,
        /// What is missing.
        what: &'static str,
        /// A correct example.
        example: &'static str,
    },
    /// A database DSN that does not parse or lacks a part. Never holds the DSN itself,
    /// which may carry a password.
    #[error("backfill source {scheme}: has a bad DSN: {reason}; write {scheme}:{example}")]
    BadDsn {
        /// The scheme.
        scheme: &'static str,
        /// What is wrong.
        reason: String,
        /// A correct example.
        example: &'static str,
    },
    /// `NAME=` with an empty name or spec.
    #[error(
        "a backfill source of the form NAME=SPEC has an empty {missing}; write e.g. \
         bars=csv:data/eurusd_1h.csv"
    )]
    BadMapping {
        /// Which part is empty: "stream name" or "source".
        missing: &'static str,
    },
    /// Two specs for the same stream (or two without a stream name).
    #[error(
        "--backfill-source is given twice for {target}; give one source per stream \
         (NAME=SPEC for a single stream)"
    )]
    Duplicate {
        /// "every stream" or "stream 'NAME'".
        target: String,
    },
}

impl std::str::FromStr for SourceSpec {
    type Err = SourceSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.is_empty() {
            return Err(SourceSpecError::Empty);
        }
        let known = KNOWN_SCHEMES.join(", ");
        let Some((scheme, rest)) = text.split_once(':') else {
            let hint = if text.to_ascii_lowercase().ends_with(".csv") {
                format!(" (did you mean csv:{text}?)")
            } else {
                String::new()
            };
            return Err(SourceSpecError::NoScheme {
                input: crate::secret::redact_dsn(text),
                known,
                hint,
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "csv" => {
                if rest.trim().is_empty() {
                    return Err(SourceSpecError::MissingValue {
                        scheme: "csv".into(),
                        what: "path",
                        example: "data/eurusd_1h.csv",
                    });
                }
                Ok(SourceSpec::Csv(PathBuf::from(rest.trim())))
            }
            "questdb" | "postgres" if rest.trim().is_empty() => {
                Err(SourceSpecError::MissingValue {
                    scheme: scheme.to_ascii_lowercase(),
                    what: "DSN",
                    example: "postgresql://USER:PASSWORD@HOST:PORT/DB",
                })
            }
            "questdb" => database(Flavor::QuestDb, rest),
            "postgres" | "postgresql" if rest.starts_with("//") => database(Flavor::Postgres, text),
            "postgres" => database(Flavor::Postgres, rest),
            other => Err(SourceSpecError::UnknownScheme {
                scheme: other.to_owned(),
                known,
            }),
        }
    }
}

fn database(flavor: Flavor, dsn: &str) -> Result<SourceSpec, SourceSpecError> {
    Ok(SourceSpec::Postgres(Box::new(PgSource::parse(
        flavor, dsn,
    )?)))
}

impl fmt::Display for SourceSpec {
    /// The spec as it may be shown to people (never with a password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceSpec::Csv(p) => {
                let shown = crate::secret::redact_dsn(&p.display().to_string());
                write!(f, "csv:{shown}")
            }
            SourceSpec::Postgres(source) => write!(f, "{source}"),
        }
    }
}

impl SourceSpec {
    /// Opens the loader the spec describes, with default [`SourceOptions`].
    ///
    /// # Errors
    /// As [`SourceSpec::open_with`].
    pub async fn open(&self) -> Result<Arc<dyn CacheLoader>, LoaderError> {
        self.open_with(&SourceOptions::default()).await
    }

    /// Opens the loader the spec describes. A database source connects now and checks
    /// its table, so an unreachable server or a missing table is reported before any
    /// backfill starts.
    ///
    /// # Errors
    /// The loader's [`LoaderError`] (for a file: unreadable or malformed content; for a
    /// database: see [`QuestDBLoader::open`]).
    pub async fn open_with(
        &self,
        options: &SourceOptions,
    ) -> Result<Arc<dyn CacheLoader>, LoaderError> {
        match self {
            SourceSpec::Postgres(source) => {
                let options = postgres::LoaderOptions {
                    table: options.table.clone(),
                    ..postgres::LoaderOptions::default()
                };
                Ok(Arc::new(QuestDBLoader::open(source, &options).await?))
            }
            SourceSpec::Csv(path) => {
                let path = path.clone();
                let loader = tokio::task::spawn_blocking(move || CsvLoader::open(path))
                    .await
                    .map_err(LoaderError::permanent)??;
                Ok(Arc::new(loader))
            }
        }
    }
}

/// Specs by stream: an optional default and per-stream overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceMap {
    /// The spec for streams without their own.
    pub default: Option<SourceSpec>,
    /// `(stream name, spec)` pairs.
    pub by_stream: Vec<(String, SourceSpec)>,
}

impl SourceMap {
    /// Parses `SPEC` and `NAME=SPEC` arguments. A `NAME=` prefix is recognised only
    /// before the first `:`, so `=` inside a DSN or path is left alone.
    ///
    /// # Errors
    /// The first [`SourceSpecError`].
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<SourceMap, SourceSpecError> {
        let mut map = SourceMap::default();
        for arg in args {
            let arg = arg.as_ref();
            let colon = arg.find(':').unwrap_or(arg.len());
            match arg[..colon].split_once('=') {
                Some((name, rest)) => {
                    let name = name.trim();
                    let spec_text = format!("{rest}{}", &arg[colon..]);
                    if name.is_empty() || spec_text.trim().is_empty() {
                        let missing = if name.is_empty() {
                            "stream name"
                        } else {
                            "source"
                        };
                        return Err(SourceSpecError::BadMapping { missing });
                    }
                    if map.by_stream.iter().any(|(n, _)| n == name) {
                        let target = format!("stream '{name}'");
                        return Err(SourceSpecError::Duplicate { target });
                    }
                    map.by_stream.push((name.to_owned(), spec_text.parse()?));
                }
                None if map.default.is_some() => {
                    let target = "every stream".to_owned();
                    return Err(SourceSpecError::Duplicate { target });
                }
                None => map.default = Some(arg.parse()?),
            }
        }
        Ok(map)
    }

    /// The spec for the stream named `name`.
    pub fn for_stream(&self, name: &str) -> Option<&SourceSpec> {
        self.by_stream
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s)
            .or(self.default.as_ref())
    }

    /// Whether no spec was given.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.by_stream.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv_specs() {
        assert_eq!(
            "csv:data/x.csv".parse(),
            Ok(SourceSpec::Csv("data/x.csv".into()))
        );
        assert_eq!(
            "CSV: a b.csv ".parse(),
            Ok(SourceSpec::Csv("a b.csv".into()))
        );
    }

    #[test]
    fn rejects_bad_specs_with_the_accepted_forms() {
        let cases = [
            ("", "is empty"),
            ("   ", "is empty"),
            ("data.csv", "did you mean csv:data.csv"),
            (
                "ftp:x",
                "unknown backfill source scheme 'ftp'; known schemes: csv, questdb, postgres",
            ),
            ("csv:", "has no path"),
            ("questdb:", "has no DSN"),
            ("questdb:postgresql://u:secret1@/db", "names no host"),
            ("postgresql://u:secret2@/db", "names no host"),
            ("postgres:postgresql://:secret3@h/db", "names no user"),
        ];
        for (text, want) in cases {
            let err = text.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("secret"), "{text}: {err}");
        }
    }

    /// Regression: a URL DSN with a port but no host (`@:8812`) was accepted, and the
    /// run then retried connecting to ":8812" and failed as unreachable (exit 1).
    #[test]
    fn a_dsn_with_a_port_but_no_host_names_the_missing_host() {
        for text in [
            "questdb:postgresql://u:secret4@:8812/qdb",
            "postgresql://u:secret5@:5432/db",
            "postgres:postgres://u@%20:5432/db",
        ] {
            let err = text.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(err.contains("names no host"), "{text}: {err}");
            assert!(!err.contains("secret"), "{text}: {err}");
        }
    }

    /// Regression: `sslmode=require` was retried as if the server were down, then failed
    /// with "raise --max-retries" (exit 1), though no retry could ever connect.
    #[test]
    fn a_dsn_requiring_tls_is_refused_with_the_way_around() {
        for text in [
            "questdb:postgresql://u:secret6@db.example:8812/qdb?sslmode=require",
            "postgres:host=localhost user=u password=secret7 sslmode=require",
            "postgres:postgresql://u:secret8@localhost/db?sslmode=verify-full",
            "postgres:postgresql://u:secret9@localhost/db?SSLMODE=verify-ca",
        ] {
            let err = text.parse::<SourceSpec>().unwrap_err().to_string();
            assert!(
                err.contains("sslmode=require asks for TLS"),
                "{text}: {err}"
            );
            assert!(err.contains("SSH tunnel"), "{text}: {err}");
            assert!(!err.contains("secret"), "{text}: {err}");
        }
        let plain = "postgres:postgresql://u@localhost:5432/db?sslmode=disable";
        assert!(plain.parse::<SourceSpec>().is_ok());
    }

    #[test]
    fn parses_database_specs_of_every_form() {
        let cases = [
            (
                "questdb:postgresql://admin:quest@localhost:8812/qdb",
                Flavor::QuestDb,
                "questdb:postgresql://admin:***@localhost:8812/qdb",
            ),
            (
                "postgres:postgresql://u:p@127.0.0.1:5433/db",
                Flavor::Postgres,
                "postgres:postgresql://u:***@127.0.0.1:5433/db",
            ),
            (
                "postgresql://u:p@h/db",
                Flavor::Postgres,
                "postgres:postgresql://u:***@h:5432/db",
            ),
            (
                "postgres://u@h:1/db",
                Flavor::Postgres,
                "postgres:postgresql://u@h:1/db",
            ),
        ];
        for (text, flavor, shown) in cases {
            let Ok(SourceSpec::Postgres(source)) = text.parse::<SourceSpec>() else {
                panic!("{text} did not parse as a database source");
            };
            assert_eq!(source.flavor(), flavor, "{text}");
            assert_eq!(source.to_string(), shown, "{text}");
        }
        let map = SourceMap::parse(&["bars=questdb:postgresql://u:p=q@h/db"]).unwrap();
        assert!(matches!(
            map.for_stream("bars"),
            Some(SourceSpec::Postgres(_))
        ));
    }

    #[test]
    fn specs_never_show_a_password() {
        let kv = "host=127.0.0.1 port=5 user=u password=Zq9xK7mW dbname=q";
        let err = SourceMap::parse(&[kv]).unwrap_err().to_string();
        assert!(!err.contains("Zq9xK7mW"), "{err}");
        let csv: SourceSpec = "csv:postgresql://u:SeKrEt99@h/db".parse().unwrap();
        assert!(!csv.to_string().contains("SeKrEt99"), "{csv}");
    }

    #[test]
    fn maps_streams_by_name() {
        let map = SourceMap::parse(&["csv:all.csv", "gbp=csv:gbp.csv"]).unwrap();
        assert_eq!(
            map.for_stream("gbp"),
            Some(&SourceSpec::Csv("gbp.csv".into()))
        );
        assert_eq!(
            map.for_stream("eur"),
            Some(&SourceSpec::Csv("all.csv".into()))
        );
        let secret = "=questdb:postgresql://u:s3cret@127.0.0.1:1/db";
        let err = SourceMap::parse(&[secret]).unwrap_err().to_string();
        assert!(
            err.contains("empty stream name") && !err.contains("s3cret"),
            "{err}"
        );
        assert!(SourceMap::parse(&["a="]).is_err());
        let twice = SourceMap::parse(&["csv:a.csv", "csv:b.csv"]).unwrap_err();
        assert!(
            twice.to_string().contains("twice for every stream"),
            "{twice}"
        );
        let twice = SourceMap::parse(&["x=csv:a.csv", "x=csv:b.csv"]).unwrap_err();
        assert!(
            twice.to_string().contains("twice for stream 'x'"),
            "{twice}"
        );
        let spaced = SourceMap::parse(&["csv:odd=name.csv"]).unwrap();
        assert_eq!(spaced.default, Some(SourceSpec::Csv("odd=name.csv".into())));
    }
}
