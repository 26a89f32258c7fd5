//! `posthaste queue list|flush|delete`. The spool work (under the same per-message lock
//! the daemon uses) is `queue::admin`'s; this adds what the commands need around it: the
//! config's spool, telling the daemon to retry (SIGUSR1), and admin errors.

use serde::Serialize;

use super::Result;
use crate::config::Config;
use crate::queue::admin as spool;
use crate::queue::spool::RcptStatus;
use crate::queue::QueueEntry;

/// Every message in the queue, oldest first (a spool that does not exist yet is empty).
pub fn list(config: &Config) -> Result<Vec<QueueEntry>> {
    Ok(spool::list(&config.queue_dir())?)
}

/// What `queue flush` did.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Flushed {
    /// The queue is empty: nothing to flush.
    Empty,
    /// `count` messages are due now; `daemon_told`: the running daemon was signalled to
    /// retry at once (false: none runs, they are retried when it starts).
    Due { count: usize, daemon_told: bool },
}

/// Make one message (or all) due now and tell the daemon. It would notice at its next
/// spool rescan anyway (at most a minute); SIGUSR1 makes it retry at once (`Queue::wake`).
pub fn flush(config: &Config, id: Option<&str>) -> Result<Flushed> {
    let dir = config.queue_dir();
    if id.is_none() && spool::list(&dir)?.is_empty() {
        return Ok(Flushed::Empty);
    }
    let count = spool::flush(&dir, id)?;
    Ok(Flushed::Due { count, daemon_told: signal_daemon(config) })
}

/// Remove a message from the queue without delivering or bouncing it.
pub fn delete(config: &Config, id: &str) -> Result<()> {
    Ok(spool::delete(&config.queue_dir(), id)?)
}

/// SIGUSR1 to the running daemon: retry the queue now. False if there is none (see
/// [`super::status::daemon_pid`] for how a stale pidfile is told apart).
fn signal_daemon(config: &Config) -> bool {
    let Some(pid) = super::status::daemon_pid(config) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).is_ok()
}

/// As in `--json` (and the log): lowercase.
pub fn status_name(s: RcptStatus) -> &'static str {
    match s {
        RcptStatus::Queued => "queued",
        RcptStatus::Deferred => "deferred",
        RcptStatus::Delivered => "delivered",
        RcptStatus::Failed => "failed",
    }
}
