//! The persisted ban list: `{data_dir}/guard-bans.json`, shared by the daemon and the
//! `posthaste ban` CLI (a separate process).
//!
//! Every change is read-modify-write under an exclusive `flock(2)` on
//! `guard-bans.json.lock`, and the new file is written to a temporary name and renamed over
//! the old one (rename is atomic on POSIX), so a reader sees the old list or the new one,
//! never half of one. The daemon notices changes made by the CLI when the file is replaced
//! (inotify, src/guard/watch.rs) and on its periodic sweep, by comparing the file's inode and
//! mtime ([`FileStamp`]); never on the accept path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::durable::{AtomicWrite, FileLock};

pub const BAN_FILE: &str = "guard-bans.json";

/// One ban as stored (and as printed by `posthaste ban list --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub client: IpAddr,
    /// Unix seconds when the ban was made.
    pub since: u64,
    /// Unix seconds when the ban ends.
    pub until: u64,
    pub reason: String,
    /// 1 for a first ban, 2 for the second within the repeat window, … (escalation).
    pub offence: u32,
    /// Set when the ban was lifted before its time (`posthaste ban remove`): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifted: Option<String>,
}

impl Ban {
    pub fn active_at(&self, now: u64) -> bool {
        self.until > now
    }
    pub fn remaining(&self, now: u64) -> Duration {
        Duration::from_secs(self.until.saturating_sub(now))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    bans: Vec<Ban>,
}

/// What identifies one version of the file: a rename gives a new inode, a write a new mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

impl FileStamp {
    fn of(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            ino: m.ino(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            len: m.len(),
        }
    }
}

pub fn now_secs() -> u64 {
    unix_secs(SystemTime::now())
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// RFC 3339 UTC, for logs and the CLI.
pub fn rfc3339(secs: u64) -> String {
    chrono::DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The ban file of one data directory.
#[derive(Debug, Clone)]
pub struct BanFile {
    path: PathBuf,
}

impl BanFile {
    pub fn new(data_dir: &Path) -> BanFile {
        BanFile { path: data_dir.join(BAN_FILE) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stamp(&self) -> Option<FileStamp> {
        std::fs::metadata(&self.path).ok().map(|m| FileStamp::of(&m))
    }

    /// Every ban in the file (expired ones included), keyed by client; a missing file is an
    /// empty list.
    pub fn load(&self) -> std::io::Result<BTreeMap<IpAddr, Ban>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let f: FileFormat = serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", self.path.display()))
        })?;
        Ok(f.bans.into_iter().map(|b| (b.client, b)).collect())
    }

    /// Read, change with `f`, write back (under the lock). Bans that ended more than
    /// `keep_expired` ago are dropped on the way, so the file stays small; recent ones are
    /// kept because they decide whether the next ban is a repeat offence. Also returns the
    /// stamp of the file written, taken under the lock (so it is ours, not a later writer's).
    pub fn update<T>(
        &self,
        keep_expired: Duration,
        f: impl FnOnce(&mut BTreeMap<IpAddr, Ban>) -> T,
    ) -> std::io::Result<(T, FileStamp)> {
        let _lock = self.lock()?;
        let mut bans = self.load()?;
        let out = f(&mut bans);
        let horizon = now_secs().saturating_sub(keep_expired.as_secs());
        bans.retain(|_, b| b.until > horizon);
        let stamp = self.write(&bans)?;
        Ok((out, stamp))
    }

    fn lock(&self) -> std::io::Result<FileLock> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        FileLock::acquire(Path::new(&lock_path))
    }

    /// Replace the file by `bans`; the stamp it will have (rename keeps inode and mtime).
    fn write(&self, bans: &BTreeMap<IpAddr, Ban>) -> std::io::Result<FileStamp> {
        let data = FileFormat { bans: bans.values().cloned().collect() };
        let text = serde_json::to_string_pretty(&data).map_err(std::io::Error::other)?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        // 0666 less the umask, as File::create made it; the temporary's name as before.
        AtomicWrite::new(0o666).temp_at(Path::new(&tmp)).write(&self.path, format!("{text}\n").as_bytes())?;
        // Still under the flock: nobody else replaced it since the rename.
        Ok(FileStamp::of(&std::fs::metadata(&self.path)?))
    }
}
