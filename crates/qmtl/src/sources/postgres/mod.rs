//! History over the PostgreSQL wire protocol: QuestDB, PostgreSQL and TimescaleDB.
//!
//! This module owns what the loader ([`QuestDBLoader`]) and the recorder
//! ([`crate::recorder::Recorder`]) share: the parsed DSN ([`PgSource`]) and the
//! [`Flavor`] that says which protocol features may be used, connection pools and the
//! classification of connection errors, and the table layout ([`table`]).
//!
//! The `questdb:` flavor stays inside what QuestDB's PostgreSQL wire supports: the
//! extended query protocol with binary results, no TLS, no `COPY`, no `DISCARD ALL` (the
//! pool recycles with [`RecyclingMethod::Fast`], which issues no statement), and no
//! time-zone-aware (`DateTime<Utc>`) parameters. The `postgres:` flavor, and a bare
//! `postgresql://` DSN, may bind `TIMESTAMPTZ` parameters.
//!
//! A password given in a DSN appears nowhere but in the connection itself: every
//! description ([`PgSource`]'s `Display` and `Debug`) replaces it with `***`. In the URL
//! form, special characters in the user or password must be percent-encoded (`@` as
//! `%40`, `:` as `%3A`, `/` as `%2F`, `#` as `%23`, `?` as `%3F`, `%` as `%25`); a DSN
//! that does not parse says so, without repeating the DSN.
//!
//! When the DSN gives no password, the standard `PGPASSWORD` environment variable is
//! used (read when the DSN is parsed), so a password need not appear on a command line:
//! `PGPASSWORD=... qmtl run ... --backfill-source questdb:postgresql://admin@host:8812/qdb`.
//! A server that asks for a password when neither gives one is reported as
//! [`LoaderError::PasswordRequired`], an input error.

pub mod table;

mod loader;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Config, NoTls};

pub use self::loader::{LoaderOptions, PostgresLoader, QuestDBLoader};
use super::SourceSpecError;
use crate::loader::LoaderError;

/// Connect timeout used when the DSN sets none.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Which server dialect and protocol features a source may rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `questdb:` — only what QuestDB's PostgreSQL wire supports.
    QuestDb,
    /// `postgres:` or a bare DSN — PostgreSQL itself (or TimescaleDB).
    Postgres,
}

impl Flavor {
    /// The spec scheme, without the colon.
    pub fn scheme(self) -> &'static str {
        match self {
            Flavor::QuestDb => "questdb",
            Flavor::Postgres => "postgres",
        }
    }
}

/// A parsed PostgreSQL-wire DSN and its flavor.
///
/// `Display` and `Debug` show it with the password replaced by `***`.
#[derive(Clone)]
pub struct PgSource {
    flavor: Flavor,
    text: String,
    config: Config,
}

impl PartialEq for PgSource {
    fn eq(&self, other: &Self) -> bool {
        self.flavor == other.flavor && self.text == other.text
    }
}

impl Eq for PgSource {}

impl Hash for PgSource {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.flavor.hash(state);
        self.text.hash(state);
    }
}

impl fmt::Debug for PgSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgSource({self})")
    }
}

impl fmt::Display for PgSource {
    /// `questdb:postgresql://user:***@host:port/db`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:postgresql://", self.flavor.scheme())?;
        if let Some(user) = self.config.get_user() {
            f.write_str(user)?;
            if self.config.get_password().is_some() {
                f.write_str(":***")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.addrs().join(","))?;
        if let Some(db) = self.config.get_dbname() {
            write!(f, "/{}", crate::secret::redact_dsn(db))?;
        }
        Ok(())
    }
}

const DSN_EXAMPLE: &str = "postgresql://USER:PASSWORD@HOST:PORT/DB";

/// Appended to a URL-form DSN that does not parse: the usual cause is an unencoded
/// character in the password.
const ENCODE_HINT: &str = "; if the user or password holds special characters, \
     percent-encode them (@ as %40, : as %3A, / as %2F, # as %23, ? as %3F, % as %25)";

/// Why a DSN demanding TLS (`sslmode=require`, `verify-ca`, `verify-full`) is refused.
const NO_TLS: &str = "sslmode=require asks for TLS (as do verify-ca and verify-full), which \
     qmtl does not speak to databases; drop sslmode (or set sslmode=disable) and reach a \
     remote server through an SSH tunnel or a TLS proxy on localhost";

/// The environment variable read for a password the DSN does not give.
const PASSWORD_ENV: &str = "PGPASSWORD";

impl PgSource {
    /// Parses a DSN (`postgresql://...`, `postgres://...` or `key=value` pairs). When
    /// the DSN gives no password, `PGPASSWORD` (if set and not empty) supplies it.
    ///
    /// # Errors
    /// [`SourceSpecError::BadDsn`] when the text does not parse or names no host or user.
    /// The error never repeats the DSN (it may hold a password).
    pub fn parse(flavor: Flavor, dsn: &str) -> Result<PgSource, SourceSpecError> {
        PgSource::parse_with_password(flavor, dsn, std::env::var(PASSWORD_ENV).ok())
    }

    /// [`PgSource::parse`] with `fallback` in place of `PGPASSWORD`.
    fn parse_with_password(
        flavor: Flavor,
        dsn: &str,
        fallback: Option<String>,
    ) -> Result<PgSource, SourceSpecError> {
        let scheme = flavor.scheme();
        let text = dsn.trim();
        let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
        let bad = |reason: String| SourceSpecError::BadDsn {
            scheme,
            reason: if is_url {
                format!("{reason}{ENCODE_HINT}")
            } else {
                reason
            },
            example: DSN_EXAMPLE,
        };
        let lower = text.to_ascii_lowercase();
        let demands_tls = [
            "sslmode=require",
            "sslmode=verify-ca",
            "sslmode=verify-full",
        ]
        .iter()
        .any(|mode| lower.contains(mode));
        if demands_tls {
            return Err(SourceSpecError::BadDsn {
                scheme,
                reason: NO_TLS.into(),
                example: DSN_EXAMPLE,
            });
        }
        let mut config = Config::from_str(text).map_err(|e| bad(error_text(&e)))?;
        // `postgresql://u@:5432/db` parses as one host with an empty name.
        let empty_host = |h: &Host| matches!(h, Host::Tcp(name) if name.trim().is_empty());
        if config.get_hosts().is_empty() || config.get_hosts().iter().any(empty_host) {
            return Err(bad("the DSN names no host".into()));
        }
        // No host name holds '@' or '#': such a "host" is the tail of a password.
        let odd_host = config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Tcp(name) if name.contains(['@', '#'])));
        if odd_host {
            return Err(bad("a host name holds '@' or '#'".into()));
        }
        let (hosts, ports) = (config.get_hosts().len(), config.get_ports().len());
        let hostaddrs = config.get_hostaddrs().len();
        if (ports > 1 && ports != hosts) || (hostaddrs > 0 && hostaddrs != hosts) {
            return Err(bad(format!(
                "the DSN names {hosts} host(s) but {ports} port(s) and {hostaddrs} \
                 hostaddr(s); give one port, or one per host"
            )));
        }
        if config.get_user().is_none_or(str::is_empty) {
            return Err(bad("the DSN names no user".into()));
        }
        // `postgresql://u@h/db,postgresql://u:pw@h2/db` parses as one DSN whose database
        // name holds the second.
        if config.get_dbname().is_some_and(|db| db.contains("://")) {
            return Err(SourceSpecError::BadDsn {
                scheme,
                reason: "the database name holds another DSN; give one DSN (several hosts \
                         go in one: postgresql://USER:PASSWORD@HOST1:PORT1,HOST2:PORT2/DB)"
                    .into(),
                example: DSN_EXAMPLE,
            });
        }
        // Connections are plain TCP: a DSN that demands TLS could never connect.
        if config.get_ssl_mode() == SslMode::Require {
            return Err(SourceSpecError::BadDsn {
                scheme,
                reason: NO_TLS.into(),
                example: DSN_EXAMPLE,
            });
        }
        if config.get_password().is_none() {
            if let Some(password) = fallback.filter(|p| !p.is_empty()) {
                config.password(password);
            }
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("qmtl");
        }
        Ok(PgSource {
            flavor,
            text: text.to_owned(),
            config,
        })
    }

    /// The flavor.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The user named in the DSN.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// `host:port` of every host in the DSN.
    pub fn addrs(&self) -> Vec<String> {
        let ports = self.config.get_ports();
        self.config
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(i, host)| {
                let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
                match host {
                    Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
                    Host::Tcp(name) => format!("{name}:{port}"),
                    #[cfg(unix)]
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect()
    }

    /// `host:port` for messages (all hosts, comma-separated).
    pub fn addr(&self) -> String {
        self.addrs().join(",")
    }

    /// Builds a pool of at most `size` connections and checks out one, so that an
    /// unreachable server or a wrong password is reported now rather than at the first
    /// query.
    ///
    /// Every new connection of the pool, this one and those made later for fetches, must
    /// complete its handshake within [`PgSource::connect_timeout`].
    ///
    /// # Errors
    /// [`LoaderError::Unreachable`], [`LoaderError::ConnectTimeout`],
    /// [`LoaderError::AuthFailed`] or [`LoaderError::Pool`].
    pub(crate) async fn connect(&self, size: usize) -> Result<(Pool, Object), LoaderError> {
        let manager = Manager::from_config(
            self.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // The DSN's connect_timeout bounds only the TCP connect; the pool's create timeout
        // bounds the whole handshake, so a server that accepts and never answers cannot
        // hold a connection attempt forever.
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(self.connect_timeout()))
            .build()
            .expect("a pool with a runtime for its timeouts cannot fail to build");
        let client = self.checkout(&pool).await?;
        tracing::debug!(source = %self, pool_size = size, "postgres.connected");
        Ok((pool, client))
    }

    /// How long one connection attempt (TCP connect, startup and authentication) may
    /// take: the DSN's `connect_timeout`, or 10 s when it sets none.
    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Takes a connection from `pool`.
    ///
    /// # Errors
    /// As [`PgSource::connect`].
    pub(crate) async fn checkout(&self, pool: &Pool) -> Result<Object, LoaderError> {
        pool.get().await.map_err(|e| self.pool_error(e))
    }

    fn pool_error(&self, error: PoolError) -> LoaderError {
        match error {
            PoolError::Backend(source) => self.connect_error(source),
            PoolError::Timeout(TimeoutType::Create) => LoaderError::ConnectTimeout {
                addr: self.addr(),
                after: self.connect_timeout(),
            },
            other => LoaderError::Pool {
                addr: self.addr(),
                source: other,
            },
        }
    }

    /// Classifies an error met while connecting.
    pub(crate) fn connect_error(&self, source: tokio_postgres::Error) -> LoaderError {
        if self.config.get_password().is_none() && is_password_missing(&source) {
            return LoaderError::PasswordRequired {
                addr: self.addr(),
                user: self.user().to_owned(),
                source,
            };
        }
        let code = source.code();
        if code == Some(&SqlState::INVALID_PASSWORD)
            || code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
        {
            return LoaderError::AuthFailed {
                addr: self.addr(),
                user: self.user().to_owned(),
                source,
            };
        }
        if source.as_db_error().is_none() {
            return LoaderError::Unreachable {
                addr: self.addr(),
                source,
            };
        }
        LoaderError::Database {
            addr: self.addr(),
            table: String::new(),
            source,
        }
    }
}

/// A tokio-postgres error with its cause, as one line (its `Display` alone says only
/// "db error").
pub(crate) fn error_text(error: &tokio_postgres::Error) -> String {
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Whether a connection attempt made without a password failed because the server asked
/// for one. tokio-postgres reports that as a configuration error whose kind is not public;
/// what sets it apart is that it is neither the server's (a database error) nor the
/// network's (an I/O cause, a closed connection) nor TLS's. Host and port counts, the
/// other configuration errors, are checked when the DSN is parsed.
fn is_password_missing(error: &tokio_postgres::Error) -> bool {
    let cause = std::error::Error::source(error);
    error.as_db_error().is_none()
        && !error.is_closed()
        && cause.is_some_and(|c| {
            !c.is::<std::io::Error>() && !c.is::<tokio_postgres::tls::NoTlsError>()
        })
}

/// Whether trying again may cure `error`: lost connections, shutdowns, resource limits,
/// serialization failures and deadlocks.
pub(crate) fn is_transient(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        None => error.is_closed() || std::error::Error::source(error).is_some(),
        Some(db) => {
            let code = db.code().code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_without_the_password() {
        let source = PgSource::parse(
            Flavor::QuestDb,
            "postgresql://admin:s3cret@127.0.0.1:8812/qdb",
        )
        .unwrap();
        let shown = source.to_string();
        assert_eq!(shown, "questdb:postgresql://admin:***@127.0.0.1:8812/qdb");
        assert!(!format!("{source:?}").contains("s3cret"));
        let kv = PgSource::parse(
            Flavor::Postgres,
            "host=db port=5433 user=u password=hunter2 dbname=x",
        )
        .unwrap();
        assert_eq!(kv.to_string(), "postgres:postgresql://u:***@db:5433/x");
        let nopass = PgSource::parse(Flavor::Postgres, "postgres://u@h/d").unwrap();
        assert_eq!(nopass.to_string(), "postgres:postgresql://u@h:5432/d");
    }

    #[test]
    fn rejects_dsns_without_host_or_user_and_never_echoes_them() {
        let cases = [
            ("postgresql://u:pw1@/db", "names no host"),
            ("postgresql://:pw2@h/db", "names no user"),
            ("postgresql://u:pw3@h:notaport/db", "invalid"),
            (
                "host=h,i port=1,2,3 user=u password=pw4",
                "2 host(s) but 3 port(s)",
            ),
        ];
        for (dsn, want) in cases {
            let err = PgSource::parse(Flavor::QuestDb, dsn)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{dsn}: {err}");
            assert!(!err.contains("pw"), "{dsn}: {err}");
        }
    }

    #[test]
    fn an_unencoded_password_gets_a_percent_encoding_hint_without_the_dsn() {
        for dsn in [
            "postgresql://qa1:Sec@r:t/p%w#q?z@127.0.0.1:5432/qmtl",
            "postgresql://qa1:Sec@r@127.0.0.1:5432/qmtl",
        ] {
            let err = PgSource::parse(Flavor::QuestDb, dsn)
                .unwrap_err()
                .to_string();
            assert!(err.contains("percent-encode"), "{dsn}: {err}");
            assert!(
                err.contains("@ as %40") && err.contains("# as %23"),
                "{err}"
            );
            assert!(!err.contains("Sec") && !err.contains("qa1"), "{dsn}: {err}");
        }
        let encoded = "postgresql://qa1:Sec%40r%3At%2Fp%25w%23q%3Fz@127.0.0.1:5432/qmtl";
        let source = PgSource::parse(Flavor::QuestDb, encoded).unwrap();
        assert_eq!(source.config.get_password(), Some(&b"Sec@r:t/p%w#q?z"[..]));
    }

    #[test]
    fn pgpassword_fills_in_only_a_password_the_dsn_lacks() {
        let env = || Some("from-env".to_owned());
        let parse = |dsn, fallback| PgSource::parse_with_password(Flavor::QuestDb, dsn, fallback);
        let filled = parse("postgresql://u@h/d", env()).unwrap();
        assert_eq!(filled.config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(filled.to_string(), "questdb:postgresql://u:***@h:5432/d");
        let given = parse("postgresql://u:in-dsn@h/d", env()).unwrap();
        assert_eq!(given.config.get_password(), Some(&b"in-dsn"[..]));
        let empty = parse("postgresql://u@h/d", Some(String::new())).unwrap();
        assert_eq!(empty.config.get_password(), None);
    }
}
