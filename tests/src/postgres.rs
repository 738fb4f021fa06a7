//! A real PostgreSQL server for the tests: a throwaway cluster in a temp
//! directory, listening on a free loopback port, stopped when dropped.
//!
//! The binaries come from `$ARBITER_PG_BIN`, else the newest
//! `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package, which
//! `scripts/test` installs when missing). PostgreSQL refuses to run as
//! root; as root the cluster is made and run by the `postgres` user the
//! package creates. Killing the server (or dropping this) leaves no process
//! behind.
//!
//! With `ARBITER_TEST_STATE=postgres`, every test server
//! ([`crate::Server`]) keeps its state in PostgreSQL instead of the
//! embedded store: a database of its own per state directory
//! ([`database_for`]), in one cluster the test process shares and stops
//! at exit. `scripts/test` runs the approvals, agents and MCP suites so.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL cluster of the test's own.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    server: Option<Child>,
}

/// The directory holding `initdb` and `postgres`.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ARBITER_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (Debian's postgresql; scripts/test installs it)")
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version").1
}

fn as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `program` run as the user that may run PostgreSQL. `setpriv` execs
/// it in place, so the child is the program itself and killing it kills
/// the server.
fn command(program: &Path) -> Command {
    if as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs `command` to completion; its trimmed output, or a panic naming
/// `what` with its error output.
fn succeed(what: &str, command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

impl Postgres {
    /// Makes a cluster (one superuser, `arbiter`, trusted on loopback only)
    /// and starts it; returns once it accepts connections.
    pub fn start() -> Self {
        Self::make(false)
    }

    /// As [`Postgres::start`], but it accepts TLS connections only, with a
    /// certificate for `127.0.0.1` from a CA of its own
    /// ([`Postgres::ca_file`]).
    pub fn start_tls() -> Self {
        Self::make(true)
    }

    /// The PEM of the CA that signed a TLS cluster's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn make(tls: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if as_root() {
            let status = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the cluster directory");
        }
        let bin = bin_dir();
        succeed(
            "initdb",
            command(&bin.join("initdb"))
                .arg("-D")
                .arg(dir.path().join("data"))
                .args(["-U", "arbiter", "--auth=trust", "--no-sync", "-E", "UTF8"]),
        );
        let mut pg = Postgres {
            dir,
            bin,
            port: crate::free_port(),
            server: None,
        };
        if tls {
            pg.only_tls();
        }
        pg.resume();
        pg
    }

    /// A CA, a certificate it signs for `127.0.0.1`, `ssl = on`, and
    /// loopback connections without TLS refused.
    fn only_tls(&self) {
        let (ca, cert, key) = crate::certificate_for("127.0.0.1");
        std::fs::write(self.ca_file(), ca.pem()).expect("ca.pem");
        let data = self.dir.path().join("data");
        let files = [
            ("server.crt", cert.pem()),
            ("server.key", key.serialize_pem()),
            (
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n".to_owned(),
            ),
        ];
        for (name, text) in files {
            let path = data.join(name);
            std::fs::write(&path, text).expect("write");
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            if as_root() {
                succeed(
                    "chown",
                    Command::new("chown").arg("postgres:postgres").arg(&path),
                );
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("postgresql.conf");
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).expect("postgresql.conf");
    }

    /// The connection URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://arbiter@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs `sql` with `psql` as the superuser; its output.
    pub fn psql(&self, sql: &str) -> String {
        succeed(
            "psql",
            command(&self.bin.join("psql"))
                // Its own home: not root's, which it may not read as
                // `postgres` when it looks for client certificates.
                .env("HOME", self.dir.path())
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args([
                    "-U",
                    "arbiter",
                    "-d",
                    "postgres",
                    "-tAq",
                    "-v",
                    "ON_ERROR_STOP=1",
                ])
                .args(["-c", sql]),
        )
    }

    /// Stops the server at once, as a crash would: `SIGKILL` to its whole
    /// process group, so no backend keeps serving a connection.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.server.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: killpg reads only its integer arguments; the group
                // is the server's own (`process_group(0)` at spawn).
                unsafe { libc::killpg(pid, libc::SIGKILL) };
            }
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.server.is_none(), "already running");
        let log = self.dir.path().join("postgres.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let child = self.server.get_or_insert_with(|| {
                command(&self.bin.join("postgres"))
                    .arg("-D")
                    .arg(self.dir.path().join("data"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .arg("-k")
                    .arg(self.dir.path())
                    // A killed server must keep what it acknowledged (the
                    // WAL reaches the OS before a commit returns);
                    // surviving a power cut is not what these tests are
                    // about.
                    .args(["-c", "fsync=off", "-c", "max_connections=300"])
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).expect("log file"))
                    .process_group(0)
                    .spawn()
                    .expect("postgres starts")
            });
            // Just after a kill, the old server's last processes may still
            // hold its shared memory: this one then exits, and is started
            // again.
            if child.try_wait().ok().flatten().is_some() {
                self.server = None;
            }
            let ready = command(&self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready && self.server.is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The variable that moves every test server's state to PostgreSQL.
pub const STATE_ENV: &str = "ARBITER_TEST_STATE";

/// Whether test servers keep their state in PostgreSQL
/// (`ARBITER_TEST_STATE=postgres`); any other value is refused.
pub fn state_on_postgres() -> bool {
    match std::env::var(STATE_ENV).as_deref() {
        Ok("postgres") => true,
        Ok("redb") | Err(std::env::VarError::NotPresent) => false,
        Ok(other) => panic!("{STATE_ENV}={other}: say `postgres` or `redb`"),
        Err(e) => panic!("{STATE_ENV}: {e}"),
    }
}

/// The cluster the test process shares, made at first use.
static SHARED: std::sync::Mutex<Option<Postgres>> = std::sync::Mutex::new(None);

extern "C" fn stop_shared() {
    // At exit: the cluster is killed and its directory removed.
    if let Ok(mut shared) = SHARED.lock() {
        drop(shared.take());
    }
}

/// The URL of a database of its own for the server whose state directory
/// is `dir`, in the cluster this test process shares: the same directory
/// gives the same database, so a restarted server finds its state.
pub fn database_for(dir: &Path) -> String {
    use std::hash::{Hash as _, Hasher as _};
    let mut shared = SHARED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if shared.is_none() {
        *shared = Some(Postgres::start());
        // SAFETY: registers a plain function without arguments, run once
        // by `exit`.
        unsafe { libc::atexit(stop_shared) };
    }
    let pg = shared.as_ref().expect("started");
    let mut hasher = std::hash::DefaultHasher::new();
    dir.hash(&mut hasher);
    let name = format!("s_{:016x}", hasher.finish());
    if pg.psql(&format!(
        "SELECT count(*) FROM pg_database WHERE datname = '{name}'"
    )) == "0"
    {
        pg.psql(&format!("CREATE DATABASE {name}"));
    }
    format!("postgres://arbiter@127.0.0.1:{}/{name}", pg.port)
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}
