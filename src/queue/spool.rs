//! The on-disk spool: one immutable message file and one JSON envelope per queued message.
//! See the module documentation of [`crate::queue`] for the layout and the crash-safety
//! argument. Everything here is synchronous file I/O: async callers use `spawn_blocking`,
//! the admin CLI calls it directly.

use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::directory::Target;
use crate::durable::{self, fsync_dir, FileLock};

/// Where one recipient (one resolved target) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptStatus {
    /// Not tried yet.
    Queued,
    /// Tried, temporary failure; tried again at `next_attempt`.
    Deferred,
    Delivered,
    /// Permanent failure (or expired); a DSN has been queued if the sender allows it.
    Failed,
}

impl RcptStatus {
    pub fn is_pending(self) -> bool {
        matches!(self, RcptStatus::Queued | RcptStatus::Deferred)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Recipient {
    /// The address given in RCPT TO.
    pub rcpt: Address,
    /// Where the directory resolved it to.
    pub target: Target,
    pub status: RcptStatus,
    /// The last reply (remote SMTP reply, or our own diagnostic with an enhanced status code).
    #[serde(default)]
    pub reply: Option<String>,
    /// The host that gave `reply`, when it came from a remote server.
    #[serde(default)]
    pub remote_mta: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// None: the null reverse-path `<>`.
    pub sender: Option<Address>,
    #[serde(default)]
    pub message_id: Option<String>,
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
    #[serde(default)]
    pub helo: Option<String>,
    #[serde(default)]
    pub auth_user: Option<String>,
    /// Local copies go to this folder instead of INBOX (Junk, chosen by the content checks).
    #[serde(default)]
    pub folder: Option<String>,
    pub size: u64,
    /// Unix time in milliseconds when the message was accepted.
    pub created: i64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// Unix time in milliseconds of the next attempt.
    pub next_attempt: i64,
    pub recipients: Vec<Recipient>,
}

impl Envelope {
    pub fn is_done(&self) -> bool {
        self.recipients.iter().all(|r| !r.status.is_pending())
    }
}

/// What an [`Spool::update`] closure wants done with the envelope.
pub enum Update {
    Write,
    Remove,
    Keep,
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A new queue id: 13 hex digits of milliseconds (sortable by arrival) + 8 random hex digits.
pub fn new_id() -> String {
    format!("{:013x}{:08x}", now_ms(), rand::thread_rng().gen::<u32>())
}

/// Queue ids are what [`new_id`] makes; anything else (e.g. `../x` from the CLI) is refused.
pub fn valid_id(id: &str) -> bool {
    id.len() == 21 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

impl Spool {
    /// The spool at `root` without creating anything (for the admin CLI, which runs as root
    /// and must not create a root-owned spool the daemon cannot write).
    pub fn at(root: &Path) -> Spool {
        Spool { root: root.to_owned() }
    }

    pub fn exists(&self) -> bool {
        self.env_dir().is_dir()
    }

    /// Create the spool directories (mode 0700) if needed.
    pub fn open(root: &Path) -> io::Result<Spool> {
        let spool = Spool { root: root.to_owned() };
        for dir in [spool.root.clone(), spool.tmp_dir(), spool.msg_dir(), spool.env_dir()] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        }
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    fn msg_dir(&self) -> PathBuf {
        self.root.join("msg")
    }
    fn env_dir(&self) -> PathBuf {
        self.root.join("env")
    }
    fn msg_path(&self, id: &str) -> PathBuf {
        self.msg_dir().join(id)
    }
    fn env_path(&self, id: &str) -> PathBuf {
        self.env_dir().join(format!("{id}.json"))
    }

    /// Remove what a crash left behind: everything in `tmp/` (half-written files) and message
    /// files whose envelope was never committed (the client was never told 250). Call once at
    /// daemon start, before anything is accepted. Returns the number of files removed.
    pub fn recover(&self) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            // A temporary of a process still running (`posthaste queue flush` started just
            // before the daemon) is that writer's, about to be renamed: leave it. The name
            // is `NAME.PID-N` in hex (`durable::AtomicWrite::temp_in`).
            if writer_alive(&entry.file_name().to_string_lossy()) {
                continue;
            }
            fs::remove_file(entry.path())?;
            removed += 1;
        }
        for entry in fs::read_dir(self.msg_dir())? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !self.env_path(&name).exists() {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            fsync_dir(&self.tmp_dir())?;
            fsync_dir(&self.msg_dir())?;
        }
        Ok(removed)
    }

    /// Durably store a new message: message file first, envelope last (the commit point).
    pub fn store(&self, env: &Envelope, message: &[u8]) -> io::Result<()> {
        self.write_atomic(&self.msg_path(&env.id), message)?;
        self.write_envelope(env)
    }

    /// Ids of all committed messages, oldest first.
    pub fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(self.env_dir())? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                if valid_id(id) {
                    ids.push(id.to_owned());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// The envelope, or None when the message is not (or no longer) in the spool.
    pub fn load_envelope(&self, id: &str) -> io::Result<Option<Envelope>> {
        match fs::read(self.env_path(id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io::Error::other),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn load_message(&self, id: &str) -> io::Result<Vec<u8>> {
        fs::read(self.msg_path(id))
    }

    /// Read-modify-write of one envelope under its lock (shared with the admin CLI, another
    /// process). Returns None without calling `f` when the message is gone (deleted by an
    /// admin or finished), so a delivery ending late never resurrects it.
    pub fn update<F>(&self, id: &str, f: F) -> io::Result<Option<Envelope>>
    where
        F: FnOnce(&mut Envelope) -> Update,
    {
        let Some(_lock) = self.lock(id)? else { return Ok(None) };
        let Some(mut env) = self.load_envelope(id)? else { return Ok(None) };
        match f(&mut env) {
            Update::Write => self.write_envelope(&env)?,
            Update::Remove => self.remove_locked(id)?,
            Update::Keep => {}
        }
        Ok(Some(env))
    }

    /// Remove a message; false if it was not there.
    pub fn remove(&self, id: &str) -> io::Result<bool> {
        let Some(_lock) = self.lock(id)? else { return Ok(false) };
        if !self.env_path(id).exists() {
            return Ok(false);
        }
        self.remove_locked(id)?;
        Ok(true)
    }

    /// Unlink the envelope first: from that moment the message no longer exists for anyone.
    fn remove_locked(&self, id: &str) -> io::Result<()> {
        fs::remove_file(self.env_path(id))?;
        fsync_dir(&self.env_dir())?;
        match fs::remove_file(self.msg_path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        fsync_dir(&self.msg_dir())
    }

    /// An exclusive flock on the message file, which is never replaced while the message
    /// exists (the envelope is, by rename, so it cannot carry the lock).
    fn lock(&self, id: &str) -> io::Result<Option<FileLock>> {
        let file = match File::open(self.msg_path(id)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        FileLock::wait_on(file).map(Some)
    }

    fn write_envelope(&self, env: &Envelope) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(env).map_err(io::Error::other)?;
        self.write_atomic(&self.env_path(&env.id), &json)
    }

    /// Files written by root (the admin CLI) get the owner of the spool (the daemon's user),
    /// or the daemon could no longer read the envelopes the CLI rewrote.
    fn owner(&self) -> io::Result<Option<(u32, u32)>> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(None);
        }
        let meta = fs::metadata(&self.root)?;
        Ok(Some((meta.uid(), meta.gid())))
    }

    /// Write to `tmp/`, fsync, rename over `dest`, fsync the directory of `dest`. A unique
    /// temporary name, no lock: `recover` empties `tmp/` after a crash.
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.tmp_dir();
        durable::AtomicWrite::new(0o600).owner(self.owner()?).temp_in(&tmp).write(dest, bytes)
    }
}

/// Whether the temporary `name` (`NAME.PID-N`, hex) belongs to another process that is
/// still running. A name of another shape, or of our own pid (a dead process that had it
/// before us: recovery runs before this process writes), is not protected.
fn writer_alive(name: &str) -> bool {
    let Some(pid) = name
        .rsplit_once('.')
        .and_then(|(_, tail)| tail.split_once('-'))
        .and_then(|(pid, _)| i32::from_str_radix(pid, 16).ok())
    else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // kill(pid, 0): 0 or EPERM means the process exists.
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: the daemon's start-up recovery removed the temporary of a `posthaste queue
    /// flush` running at that moment, whose rename then failed (ENOENT).
    #[test]
    fn recovery_keeps_the_temporaries_of_running_writers() {
        let tmp = tempfile::tempdir().unwrap();
        let spool = Spool::open(tmp.path()).unwrap();
        let mut live = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        let name = |pid: u32| format!("0001.json.{pid:x}-1");
        let (live_f, dead_f, own_f, odd_f) = (
            spool.tmp_dir().join(name(live.id())),
            spool.tmp_dir().join(name(dead.id())),
            spool.tmp_dir().join(name(std::process::id())),
            spool.tmp_dir().join("stray"),
        );
        for f in [&live_f, &dead_f, &own_f, &odd_f] {
            std::fs::write(f, b"{}").unwrap();
        }
        assert_eq!(spool.recover().unwrap(), 3);
        assert!(live_f.exists(), "a running writer's temporary was removed");
        assert!(!dead_f.exists() && !own_f.exists() && !odd_f.exists());
        live.kill().unwrap();
        live.wait().unwrap();
    }
}
