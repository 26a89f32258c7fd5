//! The UID index of one Maildir folder: `posthaste-uidlist`, beside `cur/ new/ tmp/`.
//!
//! Split by concern, each part private to the index:
//! - `log`: the file format (header and records: parse, format).
//! - `state`: what the replayed log says ([`Entry`], lookups by UID, base and MODSEQ, the
//!   expunge tombstones, [`Changes`] for sessions).
//! - `keywords`: Dovecot's keyword letters of the folder ([`DovecotKeywords`]).
//! - `cache`: what protocol layers derived from message files ([`MessageCache`]).
//! - `scan`: comparing new/ and cur/ with the index, and rebuilding it from them.
//! - `tx`: the one way to change an index, [`Index::write`] with its [`Tx`].
//!
//! This file holds [`Index`] (the state, the open log, the stamps that say whether the
//! directories need reading), reading the log and appending to it.
//!
//! # Concurrency and crash safety
//!
//! Writers (delivery, IMAP, POP3, in any task or process) hold an exclusive `flock` on
//! `posthaste-uidlist.lock`, a file that is never replaced (locking the index itself would
//! not work, because compaction replaces it). Under the lock a writer first reads the log to
//! its end, then appends its records in one write and fdatasyncs. Readers take no lock: they
//! only consume complete lines, and a line without its newline (a writer that crashed
//! mid-append) is ignored and cut off by the next writer. When the log holds many more
//! records than messages it is compacted: the state is written to `posthaste-uidlist.tmp`,
//! fsynced, renamed over the index and the directory fsynced (`durable::AtomicWrite`), so a
//! reader sees the old or the new file, never a mix. A reader notices the replacement because the path no longer
//! names the inode it holds open (which, being open, cannot have been reused).
//!
//! The index always describes files that already exist durably: a message is written and
//! renamed into the Maildir before its `+` record, a flag rename happens before its `=`
//! record, an unlink before its `-`. A crash in between only means the next scan sees a
//! difference between the directories and the index and records it then.
//!
//! If the index is missing or unreadable it is rebuilt from the directories with a new
//! UIDVALIDITY (RFC 3501 §2.3.1.1), UIDs given in order of delivery time. The last
//! UIDVALIDITY is also kept in the lock file, so a rebuild within the same second as the
//! previous one still gets a different value.
//!
//! # Changing an index
//!
//! Every change goes through [`Index::write`], which runs the write protocol in one place:
//! the caller holds the folder's in-process mutex (the only way to get `&mut Index` from the
//! `Store`), `write` takes the index lock, reads the log to its end (rebuilding a missing
//! or unreadable index), notes whether the index was complete (`dirs_unchanged`), runs the
//! caller's closure — which changes files and stages what it did on the [`Tx`], getting
//! UIDs and MODSEQs from it — then appends the staged records in one durable write and
//! records the directories' new mtimes as its own change. A closure that fails, or a
//! commit that fails, leaves the index as it was: nothing staged is applied, in memory or
//! in the file.

mod cache;
mod keywords;
mod log;
mod scan;
mod state;
mod tx;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::durable::{self, FileLock};

pub use cache::{CachedMessage, MessageCache};
pub use keywords::DovecotKeywords;
use log::{format_entry, format_header, format_record, parse_header, parse_record, Record};
use state::{carry_tombstones, merge, State};
pub use state::{Changes, Entry};
pub use tx::NewMessage;

pub const INDEX_FILE: &str = "posthaste-uidlist";
/// [`Entry::date`] not known yet (written `?` in the index file).
pub const DATE_UNKNOWN: i64 = i64::MIN;
pub const LOCK_FILE: &str = "posthaste-uidlist.lock";
/// In the account directory: the last UIDVALIDITY given to any folder of the account, and
/// the lock under which the next is chosen (see [`Index::rebuild`]).
pub const UIDVALIDITY_FILE: &str = "posthaste-uidvalidity";
const TMP_FILE: &str = "posthaste-uidlist.tmp";
const CORRUPT_FILE: &str = "posthaste-uidlist.corrupt";

/// A directory mtime must be this much older than the moment we look at it before we trust
/// "unchanged mtime" to mean "unchanged directory": file times come from a coarse kernel
/// clock, so a change in the same tick as our stat would otherwise go unnoticed.
const STAMP_QUIET_NS: i128 = 2_000_000_000;

/// The exclusive index lock of one folder; released when dropped (the fd is closed).
/// Taken only by [`Index::write`] (and tests).
struct IndexLock {
    lock: FileLock,
}

impl IndexLock {
    fn acquire(folder_dir: &Path) -> io::Result<IndexLock> {
        Ok(IndexLock { lock: FileLock::acquire(&folder_dir.join(LOCK_FILE))? })
    }

    /// The last UIDVALIDITY given in this folder, kept in the lock file (see module docs).
    fn last_uidvalidity(&self) -> u32 {
        read_last_uidvalidity(&self.lock)
    }

    fn set_last_uidvalidity(&self, uv: u32) -> io::Result<()> {
        write_last_uidvalidity(&self.lock, uv)
    }
}

fn read_last_uidvalidity(lock: &FileLock) -> u32 {
    let mut s = String::new();
    let _ = lock.file().read_to_string(&mut s);
    s.trim().parse().unwrap_or(0)
}

fn write_last_uidvalidity(lock: &FileLock, uv: u32) -> io::Result<()> {
    lock.file().set_len(0)?;
    lock.file().write_all_at(format!("{uv}\n").as_bytes(), 0)
}

struct LogHandle {
    file: File,
    dev: u64,
    ino: u64,
    /// Bytes consumed: the end of the last complete line.
    offset: u64,
    /// A compaction failed half-way (the file may have been replaced): read the whole file
    /// again before the next append.
    stale: bool,
}

/// The in-memory state of one folder's index plus the open log it was read from. Readers
/// use the accessors; every change of the log goes through [`Index::write`].
pub struct Index {
    dir: PathBuf,
    state: State,
    log: Option<LogHandle>,
    /// mtimes of new/ and cur/ right after a change we made ourselves under the lock, when
    /// the index was complete before it: the index is complete as of these mtimes too. Kept
    /// in memory only and trusted until the directories have been quiet for
    /// [`STAMP_QUIET_NS`]; then one scan checks it and records a real `D` stamp (see
    /// [`Index::dirs_unchanged`]).
    soft_stamp: Option<(i128, i128)>,
    /// Per-message data the protocol layers derived from the files (see [`MessageCache`]).
    cache: MessageCache,
    /// Dovecot's keyword letters of this folder (see [`DovecotKeywords`]).
    keywords: DovecotKeywords,
    /// The account's [`UIDVALIDITY_FILE`], when the index belongs to a store (see
    /// [`Index::rebuild`]).
    uidvalidity_file: Option<PathBuf>,
    /// Test hook: make the next commit fail at this point.
    #[cfg(test)]
    fault: Option<Fault>,
}

/// Where a test makes a commit fail (`Index::fault`).
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// After the records were written, before (instead of) their fdatasync.
    Sync,
    /// While compacting after a commit, before the rename.
    Compact,
    /// While compacting after a commit, after the rename (the new file is in place).
    Reopen,
}

pub enum Loaded {
    Ok,
    /// Missing or unreadable: a writer must rebuild it (under the lock).
    NeedsRebuild,
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128
}

fn now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// The mtimes of new/ and cur/ of the folder at `dir`.
fn dir_mtimes(dir: &Path) -> Option<(i128, i128)> {
    let m = |d: &str| std::fs::metadata(dir.join(d)).map(|m| mtime_ns(&m)).ok();
    Some((m("new")?, m("cur")?))
}

impl Index {
    pub fn new(folder_dir: PathBuf) -> Index {
        Index {
            dir: folder_dir,
            state: State::new(1, 1, 0),
            log: None,
            soft_stamp: None,
            cache: MessageCache::default(),
            keywords: DovecotKeywords::default(),
            uidvalidity_file: None,
            #[cfg(test)]
            fault: None,
        }
    }

    /// An index whose message cache counts its bytes in `total`, shared by every folder of
    /// the `Store` (see [`MessageCache::total_budget`]).
    pub fn with_cache_total(
        folder_dir: PathBuf,
        total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> Index {
        let mut index = Index::new(folder_dir);
        index.cache.total = total;
        index
    }

    /// Where the account keeps its last UIDVALIDITY ([`UIDVALIDITY_FILE`]).
    pub fn set_uidvalidity_file(&mut self, path: PathBuf) {
        self.uidvalidity_file = Some(path);
    }

    /// UIDVALIDITY (RFC 3501 §2.3.1.1).
    #[inline]
    pub fn uidvalidity(&self) -> u32 {
        self.state.uidvalidity
    }
    /// UIDNEXT (RFC 3501 §2.3.1.1): never lower than any UID ever given in the folder.
    #[inline]
    pub fn next_uid(&self) -> u32 {
        self.state.next_uid
    }
    /// HIGHESTMODSEQ (RFC 7162 §3.1.1).
    #[inline]
    pub fn highest_modseq(&self) -> u64 {
        self.state.highest_modseq
    }
    /// The first UID no session has claimed as \Recent yet.
    #[inline]
    pub fn first_recent(&self) -> u32 {
        self.state.first_recent
    }
    /// Every message, by UID (read-only: changes go through [`Index::write`]).
    #[inline]
    pub fn entries(&self) -> &std::collections::BTreeMap<u32, Entry> {
        &self.state.entries
    }
    #[inline]
    pub fn get(&self, uid: u32) -> Option<&Entry> {
        self.state.entries.get(&uid)
    }
    /// The UID of the message whose file has this base name.
    pub fn uid_of_base(&self, base: &str) -> Option<u32> {
        self.state.by_base.get(base).copied()
    }
    /// See [`State::changes_since`].
    pub fn changes_since(&self, modseq: u64, next_uid: u32) -> Changes {
        self.state.changes_since(modseq, next_uid)
    }
    #[inline]
    pub fn keywords(&self) -> &DovecotKeywords {
        &self.keywords
    }
    /// The folder's message cache, to read (fill it with [`Index::cache_update`]).
    #[inline]
    pub fn cache(&self) -> &MessageCache {
        &self.cache
    }
    /// What the cache holds for `uid`, if it still describes the file the index knows.
    pub fn cached(&self, uid: u32) -> Option<&CachedMessage> {
        self.cache.get(uid, self.state.entries.get(&uid)?.base())
    }

    /// Change (or create) the cache entry of `uid` (ignored if the message is gone). In
    /// memory only: the cache is not part of the log.
    pub fn cache_update(&mut self, uid: u32, f: impl FnOnce(&mut CachedMessage)) {
        let Some(e) = self.state.entries.get(&uid) else { return };
        self.cache.update(uid, e.base(), f);
    }

    /// Record the internal date of `uid` read from its file, if the index did not know it.
    /// In memory for every session of the folder, written to the file at its next
    /// compaction (a date is a fact about the file, not a change a session must hear of).
    pub fn learn_date(&mut self, uid: u32, mtime: i64) {
        if let Some(e) = self.state.entries.get_mut(&uid) {
            if e.date == DATE_UNKNOWN {
                e.date = mtime;
            }
        }
    }

    /// Catch up with the index file (no lock needed): read what was appended since last
    /// time, or the whole file if it was replaced.
    pub fn refresh(&mut self, ch: &mut Changes) -> io::Result<Loaded> {
        self.keywords.refresh(&self.dir)?;
        let path = self.dir.join(INDEX_FILE);
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::NeedsRebuild),
            Err(e) => return Err(e),
        };
        if let Some(log) = &mut self.log {
            // Same file, not cut shorter than what we read (a hand edit or a tool that
            // rewrote it in place): read on from where we stopped.
            if !log.stale && log.dev == meta.dev() && log.ino == meta.ino() && meta.len() >= log.offset {
                let mut buf = Vec::new();
                log.file.seek(SeekFrom::Start(log.offset))?;
                (&log.file).read_to_end(&mut buf)?;
                let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
                let Ok(text) = std::str::from_utf8(&buf[..complete]) else { return Ok(Loaded::NeedsRebuild) };
                let mut recs = Vec::new();
                for line in text.lines() {
                    match parse_record(line) {
                        Some(r) => recs.push(r),
                        None => return Ok(Loaded::NeedsRebuild),
                    }
                }
                for r in recs {
                    self.state.apply(r, ch);
                }
                log.offset += complete as u64;
                return Ok(Loaded::Ok);
            }
        }
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::NeedsRebuild),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut buf = Vec::new();
        (&file).read_to_end(&mut buf)?;
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        let Ok(text) = std::str::from_utf8(&buf[..complete]) else { return Ok(Loaded::NeedsRebuild) };
        let mut lines = text.lines();
        let Some(mut state) = lines.next().and_then(parse_header) else { return Ok(Loaded::NeedsRebuild) };
        let mut scratch = Changes::default();
        for line in lines {
            match parse_record(line) {
                Some(r) => state.apply(r, &mut scratch),
                None => return Ok(Loaded::NeedsRebuild),
            }
        }
        if self.log.is_some() {
            let mut diff = Changes::default();
            State::diff(&self.state, &state, &mut diff);
            carry_tombstones(&self.state, &mut state, &diff);
            merge(ch, diff);
        } else {
            ch.added.extend(state.entries.keys());
        }
        self.state = state;
        self.log =
            Some(LogHandle { file, dev: meta.dev(), ino: meta.ino(), offset: complete as u64, stale: false });
        Ok(Loaded::Ok)
    }

    /// Under the lock: bring the state up to date, rebuilding the index if it is missing or
    /// unreadable. After this the state is the truth of the index file.
    fn refresh_locked(&mut self, lock: &IndexLock, ch: &mut Changes) -> io::Result<()> {
        if let Loaded::NeedsRebuild = self.refresh(ch)? {
            self.rebuild(lock, ch)?;
        }
        Ok(())
    }

    /// Build a new index from the directories alone, with a new UIDVALIDITY.
    ///
    /// RFC 3501 §2.3.1.1: a mailbox deleted and created again under the same name must get
    /// a UIDVALIDITY greater than any it had, or a client that cached the old one takes
    /// the new messages for the old. The folder's own lock file and this in-memory index are
    /// gone with a deleted folder, and the clock may not have moved on (DELETE and CREATE
    /// in the same second), so the account keeps the last value given to any of its
    /// folders ([`UIDVALIDITY_FILE`], as Dovecot keeps `dovecot-uidvalidity`) and each new
    /// one is above it. (Under the folder's lock; nothing takes a folder lock while holding
    /// the account's, so the order cannot deadlock.)
    fn rebuild(&mut self, lock: &IndexLock, ch: &mut Changes) -> io::Result<()> {
        let path = self.dir.join(INDEX_FILE);
        if path.exists() {
            // Keep the unreadable file for whoever investigates, out of the way.
            std::fs::rename(&path, self.dir.join(CORRUPT_FILE))?;
        }
        let now = (now_ns() / 1_000_000_000) as u32;
        let mut uv =
            now.max(lock.last_uidvalidity().saturating_add(1)).max(self.state.uidvalidity.saturating_add(1));
        let account = match &self.uidvalidity_file {
            Some(path) => {
                let account = FileLock::acquire(path)?;
                uv = uv.max(read_last_uidvalidity(&account).saturating_add(1));
                Some(account)
            }
            None => None,
        };
        lock.set_last_uidvalidity(uv)?;
        if let Some(account) = &account {
            write_last_uidvalidity(account, uv)?;
        }
        let old = std::mem::replace(&mut self.state, State::new(uv, 1, 0));
        let had_state = self.log.is_some();
        self.log = None;
        self.soft_stamp = None;
        // The scan must not move new/ → cur/ here: a rebuild can happen inside a delivery.
        let mut scratch = Changes::default();
        let recs = self.scan_records(false)?;
        self.state.load_scan(recs, &mut scratch);
        self.compact()?;
        if had_state {
            // A new UIDVALIDITY: no tombstones to carry (see `carry_tombstones`).
            let mut diff = Changes::default();
            State::diff(&old, &self.state, &mut diff);
            merge(ch, diff);
        } else {
            ch.added.extend(self.state.entries.keys());
        }
        Ok(())
    }

    /// Under the lock, after `refresh_locked`: append records durably and apply them. If it
    /// fails, neither the state nor the file has changed (what was appended is cut off
    /// again), so the records can be made again by the next writer.
    fn commit(&mut self, lock: &IndexLock, recs: Vec<Record>, ch: &mut Changes) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        if self.log.as_ref().is_none_or(|l| l.stale) {
            // A compaction failed half-way: read the file (ours, under the lock) again. It
            // holds our state, so the records still apply — unless it had to be rebuilt.
            let uidvalidity = self.state.uidvalidity;
            self.refresh_locked(lock, ch)?;
            if self.state.uidvalidity != uidvalidity {
                return Err(io::Error::other("the index was rebuilt under the change; try again"));
            }
        }
        let log = self.log.as_mut().ok_or_else(|| io::Error::other("the index could not be read"))?;
        let mut text = String::new();
        for r in &recs {
            format_record(r, &mut text);
        }
        // Whatever lies past the last complete line is a torn append of a writer that
        // crashed; it must not be glued to the front of our first line.
        if log.file.metadata()?.len() != log.offset {
            log.file.set_len(log.offset)?;
        }
        // Only `R` and `D` records: no fdatasync. Losing them in a crash is harmless: without
        // the `R` the messages are \Recent again, which is what RFC 3501 §2.3.2 asks for when
        // the server cannot tell whether a session already saw them ("SHOULD be considered
        // recent"); without the `D` the next sync reads the directories once more. Every
        // other record is synced, and its fdatasync writes these lines too. This spares the
        // first SELECT of a folder with new messages one disk flush (docs/benchmarks.md).
        let advisory = recs.iter().all(|r| matches!(r, Record::Recent(_) | Record::Stamp(..)));
        #[cfg(test)]
        let fault = self.fault.take_if(|f| *f == Fault::Sync);
        let written = (|| {
            log.file.write_all_at(text.as_bytes(), log.offset)?;
            #[cfg(test)]
            if fault.is_some() {
                return Err(io::Error::other("injected: fdatasync failed"));
            }
            if !advisory {
                log.file.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            // Other readers must not take lines we do not apply ourselves: cut them off. A
            // reader that read them already finds the file shorter than its offset and reads
            // it whole again. (If even this fails, the next writer cuts them off, see above.)
            let _ = log.file.set_len(log.offset);
            return Err(e);
        }
        log.offset += text.len() as u64;
        for r in recs {
            if let Record::Expunge { uid, .. } = r {
                self.cache.forget(uid);
            }
            self.state.apply(r, ch);
        }
        if self.state.records > 2 * self.state.entries.len() + 256 {
            // The records are durable and applied: a failed compaction (a full disk) only
            // leaves the log long, and must not report the commit as failed (a client told
            // so would deliver or store again). The next commit tries again.
            if let Err(e) = self.compact() {
                tracing::warn!(dir = %self.dir.display(), error = %e, "store: cannot compact the index");
                // Failed after the rename (the directory's fsync, the reopen): the file is
                // the new one, our handle the old one.
                let at_path = std::fs::metadata(self.dir.join(INDEX_FILE)).map(|m| (m.dev(), m.ino())).ok();
                if let Some(log) = &mut self.log {
                    log.stale = at_path != Some((log.dev, log.ino));
                }
            }
        }
        Ok(())
    }

    /// Rewrite the index as header + one `+` per message, atomically (tmp, fsync, rename,
    /// fsync of the directory).
    fn compact(&mut self) -> io::Result<()> {
        let s = &self.state;
        let names: usize = s.entries.values().map(|e| e.filename.len()).sum();
        let mut text = String::with_capacity(names + 48 * s.entries.len() + 128);
        format_header(s, &mut text);
        let mut n = 0;
        for e in s.entries.values() {
            format_entry('+', e, &mut text);
            n += 1;
        }
        if s.first_recent > 1 {
            format_record(&Record::Recent(s.first_recent), &mut text);
            n += 1;
        }
        if let Some((a, b)) = s.stamp {
            format_record(&Record::Stamp(a, b), &mut text);
            n += 1;
        }
        #[cfg(test)]
        if self.fault.take_if(|f| *f == Fault::Compact).is_some() {
            return Err(io::Error::other("injected: no space left to compact"));
        }
        let path = self.dir.join(INDEX_FILE);
        // The mode File::create gave it: 0666 less the umask.
        durable::AtomicWrite::new(0o666).temp_at(&self.dir.join(TMP_FILE)).write(&path, text.as_bytes())?;
        #[cfg(test)]
        if self.fault.take_if(|f| *f == Fault::Reopen).is_some() {
            return Err(io::Error::other("injected: cannot open the compacted index"));
        }
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let meta = file.metadata()?;
        self.state.records = n;
        self.log = Some(LogHandle {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            offset: text.len() as u64,
            stale: false,
        });
        Ok(())
    }

    /// Whether new/ and cur/ are unchanged since the index was last known complete, so a
    /// sync may skip reading them: since a scan that found them quiet (the `D` stamp), or
    /// since our own last change (the soft stamp), as long as they have not been quiet for
    /// long. The soft stamp cannot see a foreign writer that changed a directory within the
    /// same tick of the kernel's file-time clock as we did, so once the folder is quiet one
    /// scan checks (and, finding nothing, records a `D` stamp). Without the soft stamp,
    /// every STORE, APPEND and EXPUNGE made every session's next command rescan the whole
    /// folder (docs/benchmarks.md, "Where posthaste is slower").
    pub fn dirs_unchanged(&self) -> bool {
        let Some(now) = dir_mtimes(&self.dir) else { return false };
        if self.state.stamp == Some(now) {
            return true;
        }
        self.soft_stamp == Some(now) && now_ns() - now.0.max(now.1) < STAMP_QUIET_NS
    }

    /// Under the lock, after we changed new/ or cur/ ourselves and committed the records
    /// that describe the change: if the index was complete before (`was_complete`, from
    /// [`Index::dirs_unchanged`] before the change), it is complete now.
    fn note_own_change(&mut self, was_complete: bool) {
        self.soft_stamp = if was_complete { dir_mtimes(&self.dir) } else { None };
    }
}
