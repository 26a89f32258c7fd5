//! A throwaway PostgreSQL server for integration tests: real PostgreSQL, no mocks.
//!
//! Include it with `#[path = "support/postgres.rs"] mod postgres;` and call
//! [`postgres_url_for_new_db`] in each test: the first call starts one cluster for the whole
//! test binary, every call creates a fresh database, so tests run in parallel without seeing
//! each other's rows.
//!
//! The server comes from the distribution's packages: the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian/Ubuntu layout), or the directory named by
//! `POSTHASTE_TEST_PG_BIN`. If neither exists the test fails, naming the package to install:
//! a suite that silently skips its PostgreSQL half would let that half rot.
//!
//! Lifetime: a value in a `static` is never dropped, so we cannot stop the server from a
//! destructor. Instead a small watchdog shell starts the server, then blocks reading a pipe
//! whose only writer is this test process. When the process exits — normally, by panic or by
//! SIGKILL — the kernel closes the pipe, `read` returns, and the watchdog stops the server
//! (`pg_ctl stop -m immediate`) and deletes the cluster directory. The watchdog ignores
//! SIGINT/SIGTERM/SIGHUP and runs in its own process group, so a Ctrl-C on `cargo test` kills
//! the tests but not the cleanup. (`atexit` would miss SIGKILL and panics in other threads;
//! PR_SET_PDEATHSIG on the server would skip the directory cleanup.)
//!
//! Access: the server listens only on a unix socket inside its private directory
//! (`listen_addresses=''`), so no TCP port is opened and nothing outside can connect; inside
//! it, authentication is `trust`. When the tests run as root, the cluster runs as the
//! `postgres` system user (initdb refuses to run as root) via `runuser`.

#![allow(dead_code)] // not every test binary that includes this uses every function

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const HELP: &str = "install the PostgreSQL server: `apt-get install postgresql` (Debian/Ubuntu package \
                    `postgresql`, which provides /usr/lib/postgresql/<version>/bin/initdb), or set \
                    POSTHASTE_TEST_PG_BIN to a directory holding initdb, pg_ctl, postgres and psql";

pub struct Cluster {
    /// The server's binaries (initdb, pg_ctl, psql…).
    pub bin: PathBuf,
    /// The cluster directory; also where the server's unix socket lives.
    pub dir: PathBuf,
    /// The write end of the watchdog's pipe. Held, never written: closing it (at process exit)
    /// is the signal to stop the server.
    _lifeline: ChildStdin,
    _watchdog: Child,
}

/// The watchdog, run by `sh -c SCRIPT sh BIN DIR` as the cluster's owner. It reports `ready`
/// (or the failing step's log) on stdout.
const WATCHDOG: &str = r#"
trap '' INT TERM HUP
BIN=$1 DIR=$2
if ! "$BIN/initdb" -D "$DIR/data" -U postgres -A trust -E UTF8 --locale=C -N >"$DIR/initdb.log" 2>&1; then
    echo "initdb failed:"; cat "$DIR/initdb.log"; rm -rf "$DIR"; exit 1
fi
# -F: no fsync (a test cluster need not survive a power cut); the socket goes into DIR.
if ! "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-F -c listen_addresses= -k $DIR -c max_connections=200" start >/dev/null 2>&1; then
    echo "pg_ctl start failed:"; cat "$DIR/server.log"; rm -rf "$DIR"; exit 1
fi
echo ready
# Blocks until the test process exits and the kernel closes the pipe's write end.
read _unused
"$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1
rm -rf "$DIR"
"#;

/// The newest installed PostgreSQL's bin directory, or a panic that says what to install.
fn server_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTHASTE_TEST_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").exists(),
            "POSTHASTE_TEST_PG_BIN={} has no initdb ({HELP})",
            dir.display()
        );
        return dir;
    }
    let root = Path::new("/usr/lib/postgresql");
    // Directory names are major versions ("15", "16"; "9.6" for old ones): compare numerically,
    // so that 10 sorts after 9.6.
    let newest = std::fs::read_dir(root).ok().and_then(|entries| {
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version: Vec<u32> = name.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .max()
    });
    match newest {
        Some((_, bin)) => bin,
        None => panic!("PostgreSQL server not found: no {}/<version>/bin/initdb. These tests need a real PostgreSQL and do not skip (help: {HELP})", root.display()),
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn start() -> Cluster {
    let bin = server_bin();
    let dir = tempfile::Builder::new().prefix("posthaste-pg-").tempdir().expect("create a temp dir").keep();
    let mut command = if is_root() {
        let user = nix::unistd::User::from_name("postgres")
            .expect("look up the postgres user")
            .unwrap_or_else(|| panic!("no `postgres` system user to run the test cluster as (help: {HELP})"));
        std::os::unix::fs::chown(&dir, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
            .expect("chown the cluster directory to postgres");
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh"]);
        c
    } else {
        Command::new("sh")
    };
    command
        .arg("-c")
        .arg(WATCHDOG)
        .arg("sh")
        .arg(&bin)
        .arg(&dir)
        // The test binary's working directory (the crate) may not be readable by postgres.
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Its own process group: a Ctrl-C to the test run must not reach the cleanup.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut watchdog =
        command.spawn().unwrap_or_else(|e| panic!("cannot start the PostgreSQL watchdog: {e}"));
    let lifeline = watchdog.stdin.take().expect("piped stdin");
    let stdout: ChildStdout = watchdog.stdout.take().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut first = String::new();
    reader.read_line(&mut first).expect("read from the PostgreSQL watchdog");
    if first.trim() != "ready" {
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        panic!("could not start the test PostgreSQL from {}: {first}{rest}", bin.display());
    }
    Cluster { bin, dir, _lifeline: lifeline, _watchdog: watchdog }
}

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start)
}

/// Run one SQL statement as the superuser in the `postgres` maintenance database.
pub fn admin_sql(sql: &str) {
    let c = cluster();
    let out = Command::new(c.bin.join("psql"))
        .arg("-h")
        .arg(&c.dir)
        .args(["-U", "postgres", "-d", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(out.status.success(), "psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// A `postgres://` URL of a new, empty database in the test cluster, for sqlx.
///
/// Blocking (it runs `psql`); from async code call it via `tokio::task::spawn_blocking`, or
/// accept the few milliseconds of blocking in a test.
pub fn postgres_url_for_new_db() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!("test_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    admin_sql(&format!("CREATE DATABASE {name}"));
    // `host=` with a path selects the unix socket directory in sqlx (as in libpq).
    format!("postgres://postgres@localhost/{name}?host={}", cluster().dir.display())
}
