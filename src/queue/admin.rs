//! The spool side of `posthaste queue list|flush|delete` (see `admin::queue`). The CLI is a
//! separate process from the daemon: it works on the spool files directly, under the same
//! per-message lock the daemon uses (see [`super::spool::Spool::update`]).

use std::path::Path;

use serde::Serialize;

use super::spool::{now_ms, RcptStatus, Spool, Update};
use super::QueueError;
use crate::directory::Target;

#[derive(Debug, Clone, Serialize)]
pub struct QueueEntry {
    pub id: String,
    /// Empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<EntryRecipient>,
    pub size: u64,
    /// RFC 3339.
    pub created: String,
    pub attempts: u32,
    /// RFC 3339.
    pub next_attempt: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EntryRecipient {
    pub rcpt: String,
    /// Where it is delivered: `local:alice@example.org` or `remote:bob@example.net`.
    pub target: String,
    pub status: RcptStatus,
    pub reply: Option<String>,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339()
}

/// Every message in the queue, oldest first. A spool that does not exist yet is empty.
/// The admin functions never create the spool (they run as root; the daemon does not).
pub fn list(queue_dir: &Path) -> Result<Vec<QueueEntry>, QueueError> {
    let spool = Spool::at(queue_dir);
    if !spool.exists() {
        return Ok(Vec::new());
    }
    let mut entries = Vec::new();
    for id in spool.ids()? {
        // A message may finish between listing and reading: skip it.
        let Some(env) = spool.load_envelope(&id)? else { continue };
        entries.push(QueueEntry {
            id: env.id,
            sender: env.sender.map(|s| s.to_string()).unwrap_or_default(),
            recipients: env
                .recipients
                .into_iter()
                .map(|r| EntryRecipient {
                    rcpt: r.rcpt.to_string(),
                    target: match r.target {
                        Target::Local(a) => format!("local:{a}"),
                        Target::Remote(a) => format!("remote:{a}"),
                    },
                    status: r.status,
                    reply: r.reply,
                })
                .collect(),
            size: env.size,
            created: rfc3339(env.created),
            attempts: env.attempts,
            next_attempt: rfc3339(env.next_attempt),
        });
    }
    Ok(entries)
}

/// Make one message (or all) due now. The daemon notices at its next spool rescan (at most
/// a minute), or at once when signalled (`Queue::wake`). Returns how many were flushed.
pub fn flush(queue_dir: &Path, id: Option<&str>) -> Result<usize, QueueError> {
    let spool = Spool::at(queue_dir);
    let id_given = id.is_some();
    let ids = match id {
        Some(id) => vec![checked(id)?],
        None if !spool.exists() => return Ok(0),
        None => spool.ids()?,
    };
    let now = now_ms();
    let mut flushed = 0;
    for id in &ids {
        let done = spool.update(id, |env| {
            env.next_attempt = now;
            Update::Write
        })?;
        match done {
            Some(_) => flushed += 1,
            None if id_given => return Err(QueueError::UnknownId(id.clone())),
            None => {}
        }
    }
    Ok(flushed)
}

/// Remove a message from the queue without bouncing it.
pub fn delete(queue_dir: &Path, id: &str) -> Result<(), QueueError> {
    let id = checked(id)?;
    if Spool::at(queue_dir).remove(&id)? {
        Ok(())
    } else {
        Err(QueueError::UnknownId(id))
    }
}

fn checked(id: &str) -> Result<String, QueueError> {
    let id = id.trim().to_ascii_lowercase();
    if super::spool::valid_id(&id) {
        Ok(id)
    } else {
        Err(QueueError::UnknownId(id))
    }
}
