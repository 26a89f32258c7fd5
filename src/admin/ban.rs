//! `posthaste ban list|add|remove`: the guard's bans of client addresses. The CLI runs as
//! root (nftables needs CAP_NET_ADMIN) and edits the ban file in the data directory, which
//! it then gives to the directory's owner (the daemon's user); the running daemon notices
//! the change by the file's inode and mtime (see src/guard/mod.rs).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{Error, Kind, Result};
use crate::config::Config;
use crate::guard::bans::{now_secs, rfc3339, Ban};
use crate::guard::{BanFile, Guard};

/// One active ban, as `ban list --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct BanView {
    pub client: String,
    /// RFC 3339 UTC.
    pub since: String,
    pub until: String,
    pub remaining_seconds: u64,
    pub reason: String,
    /// 1 for a first ban, 2 for a repeat offence within the window, …
    pub offence: u32,
}

impl From<&Ban> for BanView {
    fn from(b: &Ban) -> BanView {
        BanView {
            client: b.client.to_string(),
            since: rfc3339(b.since),
            until: rfc3339(b.until),
            remaining_seconds: b.until.saturating_sub(now_secs()),
            reason: b.reason.clone(),
            offence: b.offence,
        }
    }
}

fn open(config: &Config) -> Result<Guard> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        Error::failed(format!("cannot create data_dir {}", config.data_dir.display())).caused_by(&e)
    })?;
    Guard::open(config).map_err(|e| Error::from_anyhow(Kind::Failed, &e))
}

pub fn list(config: &Config) -> Result<Vec<BanView>> {
    Ok(open(config)?.list().iter().map(BanView::from).collect())
}

#[derive(Debug, Clone, Serialize)]
pub struct Banned {
    #[serde(flatten)]
    pub ban: BanView,
    /// Also in the nftables set (else enforced by the daemon at accept only).
    pub nftables: bool,
}

/// Ban `ip` now, for `duration` (default: the guard's ban time, escalating for repeat
/// offenders). An error when the ban file cannot be written: a ban that is not saved
/// would not reach the daemon.
pub fn add(config: &Config, ip: IpAddr, duration: Option<Duration>, reason: &str) -> Result<Banned> {
    let guard = open(config)?;
    let ban = guard.ban(ip, duration, reason).map_err(|e| {
        let mut out = Error::from_anyhow(Kind::Refused, &e);
        if e.downcast_ref::<std::io::Error>().is_some() {
            out = out.help(format!(
                "run it as root or as the owner of {} (the daemon's user)",
                config.data_dir.display()
            ));
        }
        out
    })?;
    give_to_data_owner(config);
    Ok(Banned { ban: BanView::from(&ban), nftables: guard.nftables() })
}

/// Lift the ban of `ip`.
pub fn remove(config: &Config, ip: IpAddr) -> Result<BanView> {
    let guard = open(config)?;
    let removed =
        guard.unban(ip, "removed by the administrator").map_err(|e| Error::from_anyhow(Kind::Failed, &e))?;
    give_to_data_owner(config);
    match removed {
        Some(b) => Ok(BanView::from(&b)),
        None => {
            Err(Error::not_found(format!("{ip} is not banned")).help("`posthaste ban list` shows the bans"))
        }
    }
}

/// Files the CLI wrote as root must stay writable by the daemon after it dropped root.
fn give_to_data_owner(config: &Config) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(&config.data_dir) else { return };
    let file = BanFile::new(&config.data_dir);
    let lock = format!("{}.lock", file.path().display());
    for p in [file.path(), Path::new(&lock)] {
        let _ = std::os::unix::fs::chown(p, Some(meta.uid()), Some(meta.gid()));
    }
}
