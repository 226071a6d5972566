//! A throwaway PostgreSQL server for the database tests: one per test binary, started on
//! first use, listening only on 127.0.0.1 on a free port, with its data and unix socket
//! in a temporary directory, and a password-authenticated (SCRAM) superuser for TCP
//! connections.
//!
//! `initdb` and `postgres` refuse to run as root, so as root they run as the `postgres`
//! user through `runuser`. A watchdog process stops the server (`pg_ctl stop -m
//! immediate`) and removes the directory once the test binary exits, however it exits:
//! a `static` is never dropped, so a `Drop` guard alone would leave the server running.
//!
//! The binaries are looked up in `$QMTL_PG_BINDIR`, then `/usr/lib/postgresql/*/bin`
//! (highest version first), then `PATH`. Without them every test that asks for a server
//! fails with the command that installs them.
//!
//! Fault tests that stop and start a server get their own with [`private`], so that the
//! shared one stays up for the other tests of the binary.
//!
//! Include it with `#[path = "support/pg.rs"] mod pg;`.

#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The superuser the tests connect as.
pub const USER: &str = "qmtl";
/// The database the tests use.
pub const DB: &str = "qmtl";

/// A running server.
#[derive(Debug)]
pub struct Server {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The superuser's password.
    pub password: String,
    /// Data, socket and log directory.
    pub dir: PathBuf,
    bin: PathBuf,
    root: bool,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The server for this test binary, started on first call.
///
/// # Panics
/// When PostgreSQL is not installed (the message says how to install it) or does not
/// start (the message holds its log).
pub fn server() -> &'static Server {
    SERVER.get_or_init(start)
}

/// A server of its own for a test that stops, starts or restarts it. It is stopped and
/// removed when the test binary exits, like the shared one.
///
/// # Panics
/// As [`server`].
pub fn private() -> Server {
    start()
}

impl Server {
    /// A DSN for `user:password@127.0.0.1:port/qmtl`.
    pub fn dsn(&self) -> String {
        format!(
            "postgresql://{USER}:{}@127.0.0.1:{}/{DB}",
            self.password, self.port
        )
    }

    /// Runs `sql` with psql over the unix socket and returns its unaligned output.
    ///
    /// # Panics
    /// When psql fails.
    #[track_caller]
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", DB])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed for {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The directory holding psql and the server binaries.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`): open sessions are cut and
    /// the port is closed until [`Server::start`].
    ///
    /// # Panics
    /// When pg_ctl fails.
    #[track_caller]
    pub fn stop(&self) {
        let mut pg_ctl = as_server_user(self.root, &self.bin.join("pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "stop", "-m", "immediate"]);
        run(pg_ctl, "pg_ctl stop");
    }

    /// Starts a stopped server again on the same port.
    ///
    /// # Panics
    /// When it does not start (the message holds its log).
    #[track_caller]
    pub fn start(&self) {
        assert!(
            launch(self.root, &self.bin, &self.dir, self.port),
            "PostgreSQL did not start again: {}",
            fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// Stops and starts the server.
    #[track_caller]
    pub fn restart(&self) {
        self.stop();
        self.start();
    }
}

/// A port nothing listens on (for "unreachable" tests).
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    port
}

fn find_bin() -> PathBuf {
    let missing = || -> ! {
        panic!(
            "PostgreSQL is not installed: the database tests start a throwaway server and \
             need its binaries (initdb, pg_ctl, postgres, psql), looked for in \
             $QMTL_PG_BINDIR, /usr/lib/postgresql/*/bin and PATH. Install them with \
             `apt-get install -y postgresql-15` (or `apt-get install -y postgresql`)"
        )
    };
    if let Some(dir) = std::env::var_os("QMTL_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() {
            dir
        } else {
            missing()
        };
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    });
    on_path.unwrap_or_else(|| missing())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A command that runs `program` as the unprivileged `postgres` user when we are root.
fn as_server_user(root: bool, program: &Path) -> Command {
    if root {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

#[track_caller]
fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn start() -> Server {
    let bin = find_bin();
    let root = is_root();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("qmtl-pg-{}-{nanos:x}", std::process::id()));
    fs::create_dir_all(&dir).expect("create the server directory");
    let password = format!("pw-{:x}", nanos ^ 0x5eed_cafe);
    fs::write(dir.join("pwfile"), &password).expect("write the password file");
    if root {
        let mut chown = Command::new("chown");
        chown.args(["-R", "postgres:postgres"]).arg(&dir);
        run(chown, "chown the server directory to postgres");
    }

    // Create the cluster: trust on the unix socket, SCRAM passwords over TCP.
    let data = dir.join("data");
    let mut initdb = as_server_user(root, &bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-U", USER, "-E", "UTF8", "--no-locale"])
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .arg(format!("--pwfile={}", dir.join("pwfile").display()));
    run(initdb, "initdb");

    // Start on a free port, retrying if another process took it first.
    let mut port = 0;
    for attempt in 0..3 {
        port = closed_port();
        if launch(root, &bin, &dir, port) {
            break;
        }
        let log = fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        assert!(attempt < 2, "PostgreSQL did not start: {log}");
    }
    spawn_watchdog(root, &bin, &data, &dir);

    let server = Server {
        port,
        password,
        dir,
        bin,
        root,
    };
    let mut createdb = Command::new(server.bin.join("psql"));
    createdb
        .arg("-h")
        .arg(&server.dir)
        .args([
            "-p",
            &port.to_string(),
            "-U",
            USER,
            "-d",
            "postgres",
            "-X",
            "-q",
        ])
        .args(["-c", &format!("CREATE DATABASE {DB}")]);
    run(createdb, "create the test database");
    server
}

/// Starts the cluster in `dir` on `port`; false when pg_ctl fails (the log says why).
fn launch(root: bool, bin: &Path, dir: &Path, port: u16) -> bool {
    let mut pg_ctl = as_server_user(root, &bin.join("pg_ctl"));
    pg_ctl
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", "60", "-o"])
        .arg(format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            dir.display()
        ))
        .arg("start")
        .stdin(Stdio::null());
    pg_ctl.output().map(|o| o.status.success()).unwrap_or(false)
}

/// Stops the server and removes its directory once this process has exited.
// The watchdog outlives this process by design, so it is never waited for (and cannot
// become our zombie: it ends only after we have).
#[allow(clippy::zombie_processes)]
fn spawn_watchdog(root: bool, bin: &Path, data: &Path, dir: &Path) {
    let stop = format!(
        "{}'{}' -D '{}' stop -m immediate",
        if root { "runuser -u postgres -- " } else { "" },
        bin.join("pg_ctl").display(),
        data.display()
    );
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stop}; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server watchdog");
}
