//! Test harness shared by every integration test (`mod support;` in `tests/*.rs`).
//!
//! Everything here drives real programs — dnsmasq, smtp-sink, Postfix, swaks, Python's
//! smtplib and the `posthaste` binary itself — never mocks. A component that is missing makes
//! the test fail with the name of the Debian package to install; `bash tests/run.sh` installs
//! them all. See docs/testing.md for a tour.
//!
//! Each test binary uses a different subset of these helpers (and of the re-exports
//! below), so unused ones are expected rather than warnings.
#![allow(dead_code, unused_imports)]

pub mod clamd;
pub mod client;
pub mod dkimpy;
pub mod dns;
pub mod pebble;
pub mod postfix;
pub mod postgres;
pub mod posthaste;
pub mod rawpeer;
pub mod rspamd;
pub mod sink;
pub mod tls;

pub use client::{python, swaks, SmtpClient, SmtpReply, SmtpTranscript, TlsMode};
pub use dns::{DnsRecord, Dnsmasq};
pub use postfix::{PeerMessage, PostfixPeer, PostfixPeerBuilder};
pub use posthaste::{Posthaste, PosthasteBuilder};
pub use rawpeer::{RawPeer, RawSession};
pub use sink::{SinkMessage, SmtpSink, SmtpSinkBuilder};

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The repository root, for files the tests ship (tests/py/…).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------
// Test directories
// ---------------------------------------------------------------------------------------

/// A private directory for one test: configs, logs, spools and mailboxes of every
/// component the test starts live here.
///
/// Removed when the test passes; kept (and its path printed) when the test panics, so the
/// daemon logs can be read after a failure. `POSTHASTE_KEEP_TEST_DIRS=1` keeps every one.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let dir = tempfile::Builder::new()
            .prefix(&format!("posthaste-{safe}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        // Postfix's virtual(8) and Dovecot deliver as unprivileged users; they must be able
        // to traverse into the mail directories we create below this one.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().to_owned();
        // Printed now so a hanging test can be inspected while it hangs (shown with
        // --nocapture, and by libtest for every failed test).
        eprintln!("[harness] test dir for {name}: {}", path.display());
        TestDir { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates (if needed) and returns a subdirectory.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// Writes a file (creating parent directories) and returns its path.
    pub fn write(&self, rel: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("POSTHASTE_KEEP_TEST_DIRS").is_some();
        if let Some(dir) = self.dir.take() {
            if keep {
                let p = dir.keep();
                eprintln!("[harness] kept test dir (logs inside): {}", p.display());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Required programs
// ---------------------------------------------------------------------------------------

/// Finds a program in PATH or the sbin directories (tests may run without sbin in PATH),
/// or panics naming the Debian package that provides it. Missing components fail the test:
/// a skipped interop test looks like a passing one.
pub fn require(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let candidate = d.join(program);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return candidate;
            }
        }
    }
    panic!(
        "required program `{program}` not found: install the Debian package `{package}` \
         (`apt-get install {package}`, or run `bash tests/run.sh`, which installs every test dependency)"
    );
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------------
// Ports and loopback addresses
// ---------------------------------------------------------------------------------------

static HANDED_OUT_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port that was free on 127.0.0.1 a moment ago. The kernel picks it (bind to port
/// 0); a process-wide set makes sure two tests of this binary never get the same one even
/// if the kernel hands a released port out again.
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().unwrap().port();
        let mut guard = HANDED_OUT_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

static NEXT_LOOPBACK: AtomicU32 = AtomicU32::new(0);

/// A loopback address of its own for a "remote" host (its MX, a sender, a sink).
///
/// Linux routes all of 127.0.0.0/8 to `lo`, so every such address is usable without
/// configuration, and a peer can listen on the real port 25 there: posthaste's queue
/// connects to MX hosts on one configured port (`queue.remote_port`), so peers that share
/// that port must differ by address. The start depends on the PID so that test binaries
/// (and other developers' test runs on the same machine) rarely pick the same addresses;
/// 127.0.0.1–127.0.0.255 are left alone because system services use them.
pub fn loopback_ip() -> Ipv4Addr {
    let pid = std::process::id();
    // 65,000 blocks of 200 addresses: 127.0.1.0 … 127.254.x.y.
    let base: u32 = 256 + (pid % 65_000) * 200;
    loop {
        let n = NEXT_LOOPBACK.fetch_add(1, Ordering::Relaxed);
        let host = base + (n % 200_000);
        let ip = Ipv4Addr::from(0x7f00_0000u32 + host);
        let last = ip.octets()[3];
        // .0 and .255 look like network/broadcast addresses to some software.
        if last != 0 && last != 255 && ip.octets()[1] != 255 {
            return ip;
        }
    }
}

/// `<unique loopback ip>:25`: a realistic address for a remote MX.
pub fn remote_mx_addr() -> SocketAddr {
    SocketAddr::from((loopback_ip(), 25))
}

pub fn port_is_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `addr` accepts TCP connections. Fails loudly — with the exit status and the
/// tail of the daemon's log — when the daemon exits first or the timeout passes.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration, daemon: &mut ProcessGuard) {
    let start = Instant::now();
    loop {
        if port_is_open(addr) {
            return;
        }
        if let Some(status) = daemon.try_status() {
            panic!(
                "{} exited ({status}) before listening on {addr}; last lines of {}:\n{}",
                daemon.name,
                daemon.log.display(),
                daemon.log_tail(40)
            );
        }
        if start.elapsed() > timeout {
            panic!(
                "{} not listening on {addr} after {timeout:?}; last lines of {}:\n{}",
                daemon.name,
                daemon.log.display(),
                daemon.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `lines` lines of a file (for failure messages).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let mut text = Vec::new();
    if let Ok(mut f) = File::open(path) {
        // The end is what matters; read at most the last 64 KiB.
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let _ = f.read_to_end(&mut text);
    } else {
        return format!("(no log at {})", path.display());
    }
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

/// A daemon started by a test. It runs in a process group of its own, its stdout and
/// stderr are appended to a log file, and dropping the guard kills the whole group (SIGTERM,
/// then SIGKILL after 3 s), so a panicking test leaves nothing listening behind.
pub struct ProcessGuard {
    pub name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl ProcessGuard {
    /// Spawns `cmd` with stdin from /dev/null and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> ProcessGuard {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
        // A new process group: daemons fork helpers, and killing the group reaches them.
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        ProcessGuard { name: name.to_owned(), child, log: log.to_owned(), status: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// `Some(status)` once the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Sends `sig` to the whole process group.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) with a negative pid targets the group we created in spawn().
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), sig);
        }
    }

    /// Waits for exit, up to `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL to the group (a crash: nothing gets to clean up), then reap.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10)).unwrap_or_else(|| panic!("{} survived SIGKILL", self.name))
    }

    /// SIGTERM (a clean shutdown), SIGKILL if still running after `grace`.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        if let Some(s) = self.try_status() {
            // The leader is gone, but helpers in its group may not be.
            self.signal(libc::SIGKILL);
            return s;
        }
        self.signal(libc::SIGTERM);
        match self.wait_timeout(grace) {
            Some(s) => {
                self.signal(libc::SIGKILL);
                s
            }
            None => {
                eprintln!("[harness] {} ignored SIGTERM for {grace:?}; sending SIGKILL", self.name);
                self.kill9()
            }
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// Output of a finished command, decoded for assertions.
#[derive(Debug, Clone)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn from_output(o: std::process::Output) -> Out {
        Out {
            status: o.status,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with both streams unless the command succeeded; returns self for chaining.
    #[track_caller]
    pub fn assert_success(&self) -> &Out {
        assert!(
            self.success(),
            "command failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_failure(&self) -> &Out {
        assert!(
            !self.success(),
            "command unexpectedly succeeded:\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// stdout and stderr together, for "the message mentions X" assertions.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command to completion with optional stdin, returning its output.
pub fn run(mut cmd: Command, stdin: Option<&[u8]>) -> Out {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_vec();
        // A writer thread: a child that prints a lot before reading would otherwise
        // deadlock against us.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    Out::from_output(child.wait_with_output().unwrap())
}

/// Files directly inside a Maildir's `new/` and `cur/` (the delivered messages), oldest
/// first by name (Maildir names start with the delivery time).
pub fn maildir_files(maildir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        if let Ok(rd) = fs::read_dir(maildir.join(sub)) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}
