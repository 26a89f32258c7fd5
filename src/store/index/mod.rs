//! The UID index of one Maildir folder: `posthaste-uidlist`, beside `cur/ new/ tmp/`.
//!
//! # Format (version 1)
//!
//! A UTF-8 text file, one record per line, fields separated by one space. The first line is
//! the header; the rest is an append-only log of changes, replayed in order:
//!
//! ```text
//! posthaste-uidlist 1 <uidvalidity> <next-uid> <highest-modseq>
//! + <uid> <modseq> <internal-date> <size> <n|c> <nkw> [<keyword> ...] :<file name>
//! = <uid> <modseq> <internal-date> <size> <n|c> <nkw> [<keyword> ...] :<file name>
//! - <uid> <modseq>
//! R <first-recent-uid>
//! D <new/ mtime ns> <cur/ mtime ns>
//! ```
//!
//! - `+` adds a message, `=` replaces what is known about it (new flags, keywords, name or
//!   place). `<n|c>` says whether the file is in new/ or cur/; `<file name>` is the whole
//!   current name, so the base (before `:`) identifies the message for its whole life and the
//!   flag letters after `:2,` are the Maildir flags last seen. `<internal-date>` (Unix
//!   seconds, the file's mtime as Dovecot uses it) and `<size>` are cached so a sync never
//!   stats or reads known messages. Keywords are IMAP atoms (RFC 3501 §9 `flag-keyword`), so
//!   they contain no space; the count in front of them lets the file name hold anything but
//!   a line break.
//! - `-` expunges a UID. Its MODSEQ is a new value, because RFC 7162 §3.2 needs
//!   HIGHESTMODSEQ to grow when messages are expunged.
//! - `R` moves the first UID still \Recent (RFC 3501 §2.3.2): the first session that sees a
//!   message claims it by writing `R <next-uid>`.
//! - `D` records the mtimes of new/ and cur/ at a scan that found the index complete; while
//!   both are unchanged a sync need not read the directories (`0 0` = unknown).
//!
//! The next UID and HIGHESTMODSEQ are the maximum of the header and of every record, so a
//! UID once written is never handed out again, even after the message is expunged.
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
//! fsynced, renamed over the index and the directory fsynced, so a reader sees the old or
//! the new file, never a mix. A reader notices the replacement because the path no longer
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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::AtFlags;

use super::name;

pub const INDEX_FILE: &str = "posthaste-uidlist";
/// [`Entry::date`] not known yet (written `?` in the index file).
pub const DATE_UNKNOWN: i64 = i64::MIN;
pub const LOCK_FILE: &str = "posthaste-uidlist.lock";
const TMP_FILE: &str = "posthaste-uidlist.tmp";
const CORRUPT_FILE: &str = "posthaste-uidlist.corrupt";
const MAGIC: &str = "posthaste-uidlist";
const VERSION: &str = "1";

/// A directory mtime must be this much older than the moment we look at it before we trust
/// "unchanged mtime" to mean "unchanged directory": file times come from a coarse kernel
/// clock, so a change in the same tick as our stat would otherwise go unnoticed.
const STAMP_QUIET_NS: i128 = 2_000_000_000;

/// What the index knows about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    pub modseq: u64,
    /// Internal date (RFC 3501 §2.3.3), Unix seconds: the file's mtime. [`DATE_UNKNOWN`]
    /// until someone asks: a scan does not stat files whose name gives the delivery time
    /// and size (as Dovecot does not), readers stat them when they need the date
    /// (`Mailbox::learn_date`), and the index file keeps what was learnt at its next
    /// compaction.
    pub date: i64,
    pub size: u64,
    pub in_new: bool,
    pub keywords: BTreeSet<String>,
    /// The whole current file name (base plus `:2,<letters>` in cur/).
    pub filename: String,
    /// What `filename` says, parsed when the entry enters the state (`State::apply`).
    pub info: NameInfo,
}

/// What readers need of a file name for every message (system flags, whether there are
/// keywords, the `W=` size), parsed once when an entry enters the state rather than on
/// every FETCH or SEARCH: a flags-only SEARCH over 10,000 messages otherwise spends most of
/// its time fetching and scanning the file name strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NameInfo {
    /// System flags as bits (`name::system_bit`).
    pub system: u8,
    /// Letters beyond the system flags (`P`, Dovecot's a–z).
    pub letter_keywords: bool,
    /// `W=` of the base; `u64::MAX` when absent.
    vsize: u64,
}

impl NameInfo {
    pub fn of(filename: &str) -> NameInfo {
        let (base, letters) = name::split(filename);
        let mut info =
            NameInfo { vsize: name::vsize_from_base(base).unwrap_or(u64::MAX), ..Default::default() };
        for c in letters.bytes() {
            info.system |= name::system_bit(c);
            info.letter_keywords |= c == b'P' || c.is_ascii_lowercase();
        }
        info
    }
    pub fn vsize(&self) -> Option<u64> {
        (self.vsize != u64::MAX).then_some(self.vsize)
    }
}

impl Entry {
    pub fn base(&self) -> &str {
        name::base(&self.filename)
    }
    pub fn letters(&self) -> &str {
        name::split(&self.filename).1
    }
    pub fn path(&self, folder_dir: &Path) -> PathBuf {
        folder_dir.join(if self.in_new { "new" } else { "cur" }).join(&self.filename)
    }
}

#[derive(Debug, Clone)]
pub enum Record {
    Add(Entry),
    Update(Entry),
    Expunge { uid: u32, modseq: u64 },
    Recent(u32),
    Stamp(i128, i128),
}

/// What changed in the state since the caller last drained it, for IMAP untagged responses
/// (EXISTS, EXPUNGE, FETCH FLAGS).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// The index was replaced with a different UIDVALIDITY: every UID the client holds is
    /// void, the IMAP session must end (RFC 3501 §2.3.1.1).
    pub uidvalidity_changed: bool,
    pub added: BTreeSet<u32>,
    /// Flags or keywords changed (a new MODSEQ).
    pub changed: BTreeSet<u32>,
    pub expunged: BTreeSet<u32>,
    /// Too much happened since the last look to list the expunges: every UID the caller
    /// holds that is no longer in the folder was expunged.
    pub resync: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.uidvalidity_changed
            && self.added.is_empty()
            && self.changed.is_empty()
            && self.expunged.is_empty()
            && !self.resync
    }
    fn expunge(&mut self, uid: u32) {
        self.added.remove(&uid);
        self.changed.remove(&uid);
        self.expunged.insert(uid);
    }
}

#[derive(Debug, Clone)]
pub struct State {
    pub uidvalidity: u32,
    pub next_uid: u32,
    pub highest_modseq: u64,
    pub first_recent: u32,
    pub stamp: Option<(i128, i128)>,
    pub entries: BTreeMap<u32, Entry>,
    pub by_base: HashMap<String, u32, BaseHash>,
    /// (MODSEQ, UID) of every message: what changed since a MODSEQ, without a full walk
    /// (sessions sharing this state each remember the HIGHESTMODSEQ they last reported).
    by_modseq: BTreeSet<(u64, u32)>,
    /// (MODSEQ, UID) of recent expunges, for the same purpose; at most [`TOMBSTONES`].
    tombstones: BTreeSet<(u64, u32)>,
    /// Tombstones at or below this MODSEQ were dropped: a session that last synced before it
    /// must compare its whole view (`Changes::resync`).
    tomb_floor: u64,
    /// Lines in the log, to decide when to compact.
    records: usize,
}

/// Expunges remembered for sessions that have not synced since (see `State::tombstones`).
const TOMBSTONES: usize = 20_000;

impl State {
    fn new(uidvalidity: u32, next_uid: u32, highest_modseq: u64) -> State {
        State {
            uidvalidity,
            next_uid: next_uid.max(1),
            highest_modseq,
            first_recent: 1,
            stamp: None,
            entries: BTreeMap::new(),
            by_base: HashMap::default(),
            by_modseq: BTreeSet::new(),
            tombstones: BTreeSet::new(),
            tomb_floor: 0,
            records: 0,
        }
    }

    fn apply(&mut self, rec: Record, ch: &mut Changes) {
        self.records += 1;
        match rec {
            Record::Add(mut e) | Record::Update(mut e) => {
                e.info = NameInfo::of(&e.filename);
                self.next_uid = self.next_uid.max(e.uid.saturating_add(1));
                self.highest_modseq = self.highest_modseq.max(e.modseq);
                let uid = e.uid;
                let modseq = e.modseq;
                self.by_base.insert(e.base().to_owned(), uid);
                self.by_modseq.insert((modseq, uid));
                match self.entries.insert(uid, e) {
                    Some(old) => {
                        if old.base() != self.entries[&uid].base() {
                            self.by_base.remove(old.base());
                        }
                        if old.modseq != modseq {
                            self.by_modseq.remove(&(old.modseq, uid));
                        }
                        if old.modseq != modseq {
                            ch.changed.insert(uid);
                        }
                    }
                    None => {
                        ch.added.insert(uid);
                    }
                }
            }
            Record::Expunge { uid, modseq } => {
                self.highest_modseq = self.highest_modseq.max(modseq);
                self.next_uid = self.next_uid.max(uid.saturating_add(1));
                if let Some(old) = self.entries.remove(&uid) {
                    self.by_base.remove(old.base());
                    self.by_modseq.remove(&(old.modseq, uid));
                    self.tombstone(modseq, uid);
                    ch.expunge(uid);
                }
            }
            Record::Recent(uid) => self.first_recent = self.first_recent.max(uid),
            Record::Stamp(n, c) => self.stamp = if n == 0 && c == 0 { None } else { Some((n, c)) },
        }
    }

    /// Apply the records of a scan of an empty state (a rebuild): the same result as
    /// [`State::apply`] one by one, but the maps are built in bulk from the UIDs in
    /// ascending order, as the scan hands them out, instead of 10,000 single inserts.
    fn load_scan(&mut self, recs: Vec<Record>, ch: &mut Changes) {
        let ascending = recs
            .iter()
            .filter_map(|r| if let Record::Add(e) = r { Some(e.uid) } else { None })
            .is_sorted_by(|a, b| a < b);
        let only_adds = recs.iter().all(|r| !matches!(r, Record::Update(_) | Record::Expunge { .. }));
        if !(self.entries.is_empty() && ascending && only_adds) {
            for r in recs {
                self.apply(r, ch);
            }
            return;
        }
        let mut entries = Vec::with_capacity(recs.len());
        let mut by_modseq = Vec::with_capacity(recs.len());
        self.by_base.reserve(recs.len());
        for r in recs {
            match r {
                Record::Add(mut e) => {
                    e.info = NameInfo::of(&e.filename);
                    self.records += 1;
                    self.next_uid = self.next_uid.max(e.uid.saturating_add(1));
                    self.highest_modseq = self.highest_modseq.max(e.modseq);
                    self.by_base.insert(e.base().to_owned(), e.uid);
                    by_modseq.push((e.modseq, e.uid));
                    entries.push((e.uid, e));
                }
                r => self.apply(r, ch),
            }
        }
        // Collecting sorted input builds a B-tree in one pass.
        let uids = entries.iter().map(|(u, _)| *u);
        if ch.added.is_empty() {
            ch.added = uids.collect();
        } else {
            ch.added.extend(uids);
        }
        if self.by_modseq.is_empty() {
            self.by_modseq = by_modseq.into_iter().collect();
        } else {
            self.by_modseq.extend(by_modseq);
        }
        self.entries = entries.into_iter().collect();
    }

    fn tombstone(&mut self, modseq: u64, uid: u32) {
        self.tombstones.insert((modseq, uid));
        while self.tombstones.len() > TOMBSTONES {
            if let Some((m, _)) = self.tombstones.pop_first() {
                self.tomb_floor = self.tomb_floor.max(m);
            }
        }
    }

    /// What changed since a session last looked, when it saw HIGHESTMODSEQ `modseq` and
    /// UIDNEXT `next_uid` (RFC 7162 §3.1: every change of a message raises its MODSEQ above
    /// the HIGHESTMODSEQ before it, and so does every expunge, §3.2).
    pub fn changes_since(&self, modseq: u64, next_uid: u32) -> Changes {
        let mut ch = Changes::default();
        ch.added.extend(self.entries.range(next_uid..).map(|(u, _)| *u));
        for &(_, uid) in self.by_modseq.range((modseq.saturating_add(1), 0)..) {
            if uid < next_uid {
                ch.changed.insert(uid);
            }
        }
        if modseq < self.tomb_floor {
            ch.resync = true;
        } else {
            for &(_, uid) in self.tombstones.range((modseq.saturating_add(1), 0)..) {
                if uid < next_uid {
                    ch.expunged.insert(uid);
                }
            }
        }
        ch
    }

    /// The changes between an old and a new state (after the index file was replaced).
    fn diff(old: &State, new: &State, ch: &mut Changes) {
        if old.uidvalidity != new.uidvalidity {
            ch.uidvalidity_changed = true;
        }
        for (uid, e) in &old.entries {
            match new.entries.get(uid) {
                None => ch.expunge(*uid),
                Some(n) if n.modseq != e.modseq => {
                    ch.changed.insert(*uid);
                }
                Some(_) => {}
            }
        }
        for uid in new.entries.keys() {
            if !old.entries.contains_key(uid) {
                ch.added.insert(*uid);
            }
        }
    }
}

/// A replaced index file (compaction, rebuild) holds no `-` records: remember the expunges
/// the comparison found, so sessions that look later still hear of them.
fn carry_tombstones(old: &State, new: &mut State, diff: &Changes) {
    new.tombstones = old.tombstones.clone();
    new.tomb_floor = old.tomb_floor;
    let at = new.highest_modseq.max(old.highest_modseq);
    for &uid in &diff.expunged {
        new.tombstone(at, uid);
    }
}

fn merge(into: &mut Changes, from: Changes) {
    into.uidvalidity_changed |= from.uidvalidity_changed;
    into.resync |= from.resync;
    for u in from.expunged {
        into.expunge(u);
    }
    into.added.extend(from.added);
    into.changed.extend(from.changed);
}

fn format_record(rec: &Record, out: &mut String) {
    match rec {
        Record::Add(e) => format_entry('+', e, out),
        Record::Update(e) => format_entry('=', e, out),
        Record::Expunge { uid, modseq } => {
            out.push_str("- ");
            push_int(out, *uid as u64);
            out.push(' ');
            push_int(out, *modseq);
            out.push('\n');
        }
        Record::Recent(uid) => {
            out.push_str("R ");
            push_int(out, *uid as u64);
            out.push('\n');
        }
        Record::Stamp(n, c) => {
            use std::fmt::Write as _;
            let _ = writeln!(out, "D {n} {c}");
        }
    }
}

/// One `+` or `=` line (see the module docs).
fn format_entry(op: char, e: &Entry, out: &mut String) {
    out.push(op);
    out.push(' ');
    push_int(out, e.uid as u64);
    out.push(' ');
    push_int(out, e.modseq);
    out.push(' ');
    if e.date == DATE_UNKNOWN {
        out.push('?');
    } else {
        if e.date < 0 {
            out.push('-');
        }
        push_int(out, e.date.unsigned_abs());
    }
    out.push(' ');
    push_int(out, e.size);
    out.push_str(if e.in_new { " n " } else { " c " });
    push_int(out, e.keywords.len() as u64);
    for k in &e.keywords {
        out.push(' ');
        out.push_str(k);
    }
    out.push_str(" :");
    out.push_str(&e.filename);
    out.push('\n');
}

/// Decimal digits of `v` (the index is written 10,000 lines at a time by a rebuild, where
/// `write!` was a visible part of the cost).
fn push_int(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

fn parse_record(line: &str) -> Option<Record> {
    let mut rest = line;
    let mut tok = || -> Option<&str> {
        let (t, r) = rest.split_once(' ').unwrap_or((rest, ""));
        rest = r;
        Some(t).filter(|t| !t.is_empty())
    };
    let op = tok()?;
    match op {
        "+" | "=" => {
            let uid: u32 = tok()?.parse().ok().filter(|u| *u > 0)?;
            let modseq = tok()?.parse().ok()?;
            let date = match tok()? {
                "?" => DATE_UNKNOWN,
                d => d.parse().ok().filter(|d| *d != DATE_UNKNOWN)?,
            };
            let size = tok()?.parse().ok()?;
            let in_new = match tok()? {
                "n" => true,
                "c" => false,
                _ => return None,
            };
            let nkw: usize = tok()?.parse().ok()?;
            let mut keywords = BTreeSet::new();
            for _ in 0..nkw {
                keywords.insert(tok()?.to_owned());
            }
            let filename = rest.strip_prefix(':').filter(|f| !f.is_empty())?.to_owned();
            let e = Entry { uid, modseq, date, size, in_new, keywords, filename, info: NameInfo::default() };
            Some(if op == "+" { Record::Add(e) } else { Record::Update(e) })
        }
        "-" => {
            let uid = tok()?.parse().ok()?;
            let modseq = tok()?.parse().ok()?;
            Some(Record::Expunge { uid, modseq })
        }
        "R" => Some(Record::Recent(tok()?.parse().ok()?)),
        "D" => Some(Record::Stamp(tok()?.parse().ok()?, tok()?.parse().ok()?)),
        _ => None,
    }
}

fn parse_header(line: &str) -> Option<State> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 5 || f[0] != MAGIC || f[1] != VERSION {
        return None;
    }
    let uv: u32 = f[2].parse().ok().filter(|v| *v > 0)?;
    Some(State::new(uv, f[3].parse().ok()?, f[4].parse().ok()?))
}

/// The exclusive index lock of one folder; released when dropped (the fd is closed).
pub struct IndexLock {
    file: File,
}

impl IndexLock {
    pub fn acquire(folder_dir: &Path) -> io::Result<IndexLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(folder_dir.join(LOCK_FILE))?;
        file.lock()?;
        Ok(IndexLock { file })
    }

    /// The last UIDVALIDITY given in this folder, kept in the lock file (see module docs).
    fn last_uidvalidity(&self) -> u32 {
        let mut s = String::new();
        let _ = (&self.file).read_to_string(&mut s);
        s.trim().parse().unwrap_or(0)
    }

    fn set_last_uidvalidity(&self, uv: u32) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.write_all_at(format!("{uv}\n").as_bytes(), 0)
    }
}

struct LogHandle {
    file: File,
    dev: u64,
    ino: u64,
    /// Bytes consumed: the end of the last complete line.
    offset: u64,
}

/// The in-memory state of one folder's index plus the open log it was read from.
pub struct Index {
    dir: PathBuf,
    pub state: State,
    log: Option<LogHandle>,
    /// mtimes of new/ and cur/ right after a change we made ourselves under the lock, when
    /// the index was complete before it: the index is complete as of these mtimes too. Kept
    /// in memory only and trusted until the directories have been quiet for
    /// [`STAMP_QUIET_NS`]; then one scan checks it and records a real `D` stamp (see
    /// [`Index::dirs_unchanged`]).
    soft_stamp: Option<(i128, i128)>,
    /// Per-message data the protocol layers derived from the files (see [`MessageCache`]).
    pub cache: MessageCache,
    /// Dovecot's keyword letters of this folder (see [`DovecotKeywords`]).
    pub keywords: DovecotKeywords,
}

/// Dovecot keeps keywords in Maildir file names as the letters `a`–`z` after the system
/// flags, the letter `a + i` standing for line `i <name>` of the folder's `dovecot-keywords`
/// file. We read and write the same, so keywords set by either server show in the other:
/// a keyword with a letter lives in the file name only, one without (the 27th keyword of a
/// folder) in our index only. The file is replaced as Dovecot does it: written as the
/// dot-lock file `dovecot-keywords.lock` (created exclusively, which is also Dovecot's lock)
/// and renamed over the original.
#[derive(Default)]
pub struct DovecotKeywords {
    names: Vec<Option<String>>,
    /// (inode, size, mtime ns) of the file when read; None = missing.
    seen: Option<(u64, u64, i128)>,
}

pub const DOVECOT_KEYWORDS: &str = "dovecot-keywords";
const DOVECOT_KEYWORDS_LOCK: &str = "dovecot-keywords.lock";
/// Dovecot's default dot-lock stale timeout for this file is 2 minutes; a lock that old was
/// left by a crashed writer.
const KEYWORDS_LOCK_STALE: std::time::Duration = std::time::Duration::from_secs(120);

impl DovecotKeywords {
    /// The keyword of a Dovecot letter.
    pub fn name(&self, letter: char) -> Option<&str> {
        let i = (letter as u32).checked_sub('a' as u32)? as usize;
        if !letter.is_ascii_lowercase() {
            return None;
        }
        self.names.get(i)?.as_deref()
    }

    /// The letter of a keyword (IMAP keywords compare case-insensitively, RFC 3501 §2.3.2).
    pub fn letter(&self, keyword: &str) -> Option<char> {
        let i =
            self.names.iter().position(|n| n.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(keyword)))?;
        char::from_u32('a' as u32 + i as u32)
    }

    fn parse(text: &str) -> Vec<Option<String>> {
        let mut names: Vec<Option<String>> = Vec::new();
        for line in text.lines() {
            let Some((i, name)) = line.split_once(' ') else { continue };
            let Ok(i) = i.parse::<usize>() else { continue };
            if i >= 26 || name.is_empty() || !super::is_keyword(name) {
                continue;
            }
            if names.len() <= i {
                names.resize(i + 1, None);
            }
            names[i] = Some(name.to_owned());
        }
        names
    }

    /// Re-read the file if it changed since we last did (one stat when it did not).
    pub fn refresh(&mut self, dir: &Path) -> io::Result<()> {
        let path = dir.join(DOVECOT_KEYWORDS);
        let id = match std::fs::metadata(&path) {
            Ok(m) => Some((m.ino(), m.len(), mtime_ns(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if id == self.seen && (id.is_some() || self.names.is_empty()) {
            return Ok(());
        }
        self.names = match std::fs::read_to_string(&path) {
            Ok(t) => Self::parse(&t),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        self.seen = id;
        Ok(())
    }

    /// Give letters to `wanted` keywords that have none yet, while letters are free: adds
    /// them to `dovecot-keywords` under Dovecot's dot-lock. Keywords left without a letter
    /// (all 26 taken, or the lock busy for long) stay in our index.
    pub fn assign(&mut self, dir: &Path, wanted: &[&str]) -> io::Result<()> {
        if wanted.iter().all(|k| self.letter(k).is_some()) {
            return Ok(());
        }
        let lock_path = dir.join(DOVECOT_KEYWORDS_LOCK);
        let mut lock = None;
        for _ in 0..200 {
            match OpenOptions::new().write(true).create_new(true).open(&lock_path) {
                Ok(f) => {
                    lock = Some(f);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let stale = std::fs::metadata(&lock_path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > KEYWORDS_LOCK_STALE));
                    if stale {
                        let _ = std::fs::remove_file(&lock_path);
                    } else {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        // Busy for two seconds: the keywords stay in our index this time.
        let Some(mut lock) = lock else { return Ok(()) };
        let result = (|| {
            // Another writer may have added names since we read the file.
            self.seen = None;
            self.names.clear();
            self.refresh(dir)?;
            let mut changed = false;
            for k in wanted {
                if self.letter(k).is_some() {
                    continue;
                }
                let free = self
                    .names
                    .iter()
                    .position(Option::is_none)
                    .or((self.names.len() < 26).then_some(self.names.len()));
                let Some(i) = free else { break };
                if i == self.names.len() {
                    self.names.push(None);
                }
                self.names[i] = Some((*k).to_owned());
                changed = true;
            }
            if !changed {
                return Ok(false);
            }
            let mut text = String::new();
            for (i, n) in self.names.iter().enumerate() {
                if let Some(n) = n {
                    text.push_str(&format!("{i} {n}\n"));
                }
            }
            lock.write_all(text.as_bytes())?;
            lock.sync_all()?;
            std::fs::rename(&lock_path, dir.join(DOVECOT_KEYWORDS))?;
            fsync_dir(dir)?;
            Ok(true)
        })();
        match result {
            Ok(true) => {
                self.seen = None;
                self.refresh(dir)
            }
            Ok(false) => {
                let _ = std::fs::remove_file(&lock_path);
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&lock_path);
                Err(e)
            }
        }
    }
}

/// What protocol layers derived from a message file and want to keep, per UID, shared by
/// every session of the folder in this process: a message's content never changes, so an
/// entry stays valid as long as the UID names the same file base (checked on every read,
/// which also covers a rebuild that reuses UIDs). Filled lazily; when it grows beyond
/// [`MessageCache::folder_budget`] bytes, or the caches of all folders together (`total`,
/// shared through the `Store`) pass [`MessageCache::total_budget`], the entries of the
/// lowest UIDs go first.
pub struct MessageCache {
    map: HashMap<u32, CachedMessage>,
    bytes: usize,
    /// This folder's limit ([`MessageCache::folder_budget`]).
    budget: usize,
    pub(super) total: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for MessageCache {
    fn default() -> Self {
        MessageCache {
            map: HashMap::new(),
            bytes: 0,
            budget: MessageCache::folder_budget(),
            total: Default::default(),
        }
    }
}

impl Drop for MessageCache {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Default, Clone)]
pub struct CachedMessage {
    base: Box<str>,
    /// RFC822.SIZE (CRLF-normalised).
    pub size: Option<u64>,
    /// The top-level header block, CRLF-normalised, with the blank line that ends it.
    pub header: Option<std::sync::Arc<[u8]>>,
    /// Rendered protocol items (e.g. IMAP BODYSTRUCTURE, BODY, ENVELOPE), by the caller's key.
    pub items: Vec<(u8, std::sync::Arc<[u8]>)>,
}

impl CachedMessage {
    pub fn item(&self, key: u8) -> Option<std::sync::Arc<[u8]>> {
        self.items.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }
    fn weight(&self) -> usize {
        64 + self.base.len()
            + self.header.as_ref().map_or(0, |h| h.len())
            + self.items.iter().map(|(_, v)| v.len() + 16).sum::<usize>()
    }
}

impl MessageCache {
    /// All folders of the process together: an eighth of the machine's memory, at least
    /// 64 MiB, at most 1 GiB. A folder with headers, BODYSTRUCTURE and ENVELOPE cached
    /// needs about 1 KB per message (more for mail with long trace headers): 10 MB for
    /// 10,000 messages, 100 MB for 100,000.
    pub fn total_budget() -> usize {
        static TOTAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *TOTAL.get_or_init(|| {
            let mem_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
            });
            let mem = mem_kib.map_or(2 << 30, |k| k * 1024);
            (mem / 8).clamp(64 << 20, 1 << 30)
        })
    }

    /// One folder: half of [`MessageCache::total_budget`].
    pub fn folder_budget() -> usize {
        Self::total_budget() / 2
    }

    fn set_bytes(&mut self, bytes: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if bytes >= self.bytes {
            self.total.fetch_add(bytes - self.bytes, Relaxed);
        } else {
            self.total.fetch_sub(self.bytes - bytes, Relaxed);
        }
        self.bytes = bytes;
    }

    pub fn get(&self, uid: u32, base: &str) -> Option<&CachedMessage> {
        self.map.get(&uid).filter(|c| &*c.base == base)
    }

    /// Change (or create) the entry of `uid`, whose file base is `base`.
    pub fn update(&mut self, uid: u32, base: &str, f: impl FnOnce(&mut CachedMessage)) {
        let existed = self.map.contains_key(&uid);
        let e = self.map.entry(uid).or_default();
        let before = if existed { e.weight() } else { 0 };
        if &*e.base != base {
            *e = CachedMessage { base: base.into(), ..Default::default() };
        }
        f(e);
        let after = e.weight();
        let bytes = self.bytes.saturating_sub(before) + after;
        self.set_bytes(bytes);
        let total = self.total.load(std::sync::atomic::Ordering::Relaxed);
        if self.bytes > self.budget {
            self.evict(self.budget / 4 * 3);
        } else if total > Self::total_budget() {
            self.evict(self.bytes / 2);
        }
    }

    /// Drop the entries of the lowest UIDs (the oldest mail, which clients look at least)
    /// until at most `target` bytes remain. Dropping everything instead made a FETCH 1:* of a
    /// folder bigger than the budget miss on every message, sweep after sweep.
    fn evict(&mut self, target: usize) {
        let mut uids: Vec<u32> = self.map.keys().copied().collect();
        uids.sort_unstable();
        let mut bytes = self.bytes;
        for uid in uids {
            if bytes <= target {
                break;
            }
            if let Some(e) = self.map.remove(&uid) {
                bytes = bytes.saturating_sub(e.weight());
            }
        }
        self.set_bytes(bytes);
    }

    fn forget(&mut self, uid: u32) {
        if let Some(e) = self.map.remove(&uid) {
            let bytes = self.bytes.saturating_sub(e.weight());
            self.set_bytes(bytes);
        }
    }
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

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
            if log.dev == meta.dev() && log.ino == meta.ino() && meta.len() >= log.offset {
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
        self.log = Some(LogHandle { file, dev: meta.dev(), ino: meta.ino(), offset: complete as u64 });
        Ok(Loaded::Ok)
    }

    /// Under the lock: bring the state up to date, rebuilding the index if it is missing or
    /// unreadable. After this the state is the truth of the index file.
    pub fn refresh_locked(&mut self, lock: &IndexLock, ch: &mut Changes) -> io::Result<()> {
        if let Loaded::NeedsRebuild = self.refresh(ch)? {
            self.rebuild(lock, ch)?;
        }
        Ok(())
    }

    /// Build a new index from the directories alone, with a new UIDVALIDITY.
    fn rebuild(&mut self, lock: &IndexLock, ch: &mut Changes) -> io::Result<()> {
        let path = self.dir.join(INDEX_FILE);
        if path.exists() {
            // Keep the unreadable file for whoever investigates, out of the way.
            std::fs::rename(&path, self.dir.join(CORRUPT_FILE))?;
        }
        let now = (now_ns() / 1_000_000_000) as u32;
        let uv =
            now.max(lock.last_uidvalidity().saturating_add(1)).max(self.state.uidvalidity.saturating_add(1));
        lock.set_last_uidvalidity(uv)?;
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
            let mut diff = Changes::default();
            State::diff(&old, &self.state, &mut diff);
            carry_tombstones(&old, &mut self.state, &diff);
            merge(ch, diff);
        } else {
            ch.added.extend(self.state.entries.keys());
        }
        Ok(())
    }

    /// Under the lock, after `refresh_locked`: append records durably and apply them.
    pub fn commit(&mut self, _lock: &IndexLock, recs: Vec<Record>, ch: &mut Changes) -> io::Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        let log = self.log.as_mut().expect("commit needs a loaded index");
        let mut text = String::new();
        for r in &recs {
            format_record(r, &mut text);
        }
        // Whatever lies past the last complete line is a torn append of a writer that
        // crashed; it must not be glued to the front of our first line.
        if log.file.metadata()?.len() != log.offset {
            log.file.set_len(log.offset)?;
        }
        log.file.write_all_at(text.as_bytes(), log.offset)?;
        // Only `R` and `D` records: no fdatasync. Losing them in a crash is harmless: without
        // the `R` the messages are \Recent again, which is what RFC 3501 §2.3.2 asks for when
        // the server cannot tell whether a session already saw them ("SHOULD be considered
        // recent"); without the `D` the next sync reads the directories once more. Every
        // other record is synced, and its fdatasync writes these lines too. This spares the
        // first SELECT of a folder with new messages one disk flush (docs/benchmarks.md).
        let advisory = recs.iter().all(|r| matches!(r, Record::Recent(_) | Record::Stamp(..)));
        if !advisory {
            log.file.sync_data()?;
        }
        log.offset += text.len() as u64;
        for r in recs {
            if let Record::Expunge { uid, .. } = r {
                self.cache.forget(uid);
            }
            self.state.apply(r, ch);
        }
        if self.state.records > 2 * self.state.entries.len() + 256 {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrite the index as header + one `+` per message, atomically (tmp, fsync, rename,
    /// fsync of the directory).
    fn compact(&mut self) -> io::Result<()> {
        let s = &self.state;
        let mut text = format!("{MAGIC} {VERSION} {} {} {}\n", s.uidvalidity, s.next_uid, s.highest_modseq);
        let names: usize = s.entries.values().map(|e| e.filename.len()).sum();
        text.reserve(names + 48 * s.entries.len() + 64);
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
        let tmp = self.dir.join(TMP_FILE);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        let path = self.dir.join(INDEX_FILE);
        std::fs::rename(&tmp, &path)?;
        fsync_dir(&self.dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let meta = file.metadata()?;
        self.state.records = n;
        self.log = Some(LogHandle { file, dev: meta.dev(), ino: meta.ino(), offset: text.len() as u64 });
        Ok(())
    }

    fn dir_mtimes(&self) -> Option<(i128, i128)> {
        let m = |d: &str| std::fs::metadata(self.dir.join(d)).map(|m| mtime_ns(&m)).ok();
        Some((m("new")?, m("cur")?))
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
        let Some(now) = self.dir_mtimes() else { return false };
        if self.state.stamp == Some(now) {
            return true;
        }
        self.soft_stamp == Some(now) && now_ns() - now.0.max(now.1) < STAMP_QUIET_NS
    }

    /// Under the lock, after we changed new/ or cur/ ourselves and committed the records
    /// that describe the change: if the index was complete before (`was_complete`, from
    /// [`Index::dirs_unchanged`] before the change), it is complete now.
    pub fn note_own_change(&mut self, was_complete: bool) {
        self.soft_stamp = if was_complete { self.dir_mtimes() } else { None };
    }

    /// Under the lock: compare new/ and cur/ with the index and record the differences.
    /// `move_new`: move files from new/ to cur/, as an IMAP server does when it has seen
    /// them (they stop being "new" for other Maildir readers).
    pub fn scan(&mut self, lock: &IndexLock, move_new: bool, ch: &mut Changes) -> io::Result<()> {
        let (recs, seen) = self.scan_records_at(move_new)?;
        self.commit(lock, recs, ch)?;
        // Complete as of the mtimes the scan read the directories at (or, if it moved
        // files, right after): what changed later shows as a different mtime.
        self.soft_stamp = Some(seen);
        Ok(())
    }

    fn scan_records(&self, move_new: bool) -> io::Result<Vec<Record>> {
        Ok(self.scan_records_at(move_new)?.0)
    }

    fn scan_records_at(&self, move_new: bool) -> io::Result<(Vec<Record>, (i128, i128))> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.scan_once(move_new)? {
                Some(r) => return Ok(r),
                // Another Maildir client renamed a file while we moved it; read again.
                None if attempt < 5 => continue,
                None => return Err(io::Error::other("the Maildir keeps changing under the scan; try again")),
            }
        }
    }

    fn scan_once(&self, move_new: bool) -> io::Result<Option<(Vec<Record>, (i128, i128))>> {
        let t0 = now_ns();
        // Each directory is opened once: its mtime comes from the open descriptor, and every
        // file in it is stat'ed relative to it (fstatat), not by its absolute path, whose
        // walk through every component was most of the cost of a rebuild (docs/benchmarks.md).
        let cur = File::open(self.dir.join("cur"))?;
        let new = File::open(self.dir.join("new"))?;
        let m_new = mtime_ns(&new.metadata()?);
        let m_cur = mtime_ns(&cur.metadata()?);
        let mut dirs = [nix::dir::Dir::from(cur)?, nix::dir::Dir::from(new)?];
        let [cur_fd, new_fd] = [dirs[0].as_raw_fd(), dirs[1].as_raw_fd()];
        // Every usable file name, cur/ first; `base_len` marks its base (before `:`).
        let mut files: Vec<ScanFile> = Vec::with_capacity(self.state.entries.len() + 16);
        for (dir, in_new) in dirs.iter_mut().zip([false, true]) {
            let fd = dir.as_raw_fd();
            for de in dir.iter() {
                let de = de?;
                let Ok(fname) = de.file_name().to_str() else { continue };
                // Hidden files (and `.`, `..`) are other programs' temporaries; a line break
                // cannot be represented in the index (and no sane writer makes one).
                if fname.starts_with('.') || memchr::memchr2(b'\n', b'\r', fname.as_bytes()).is_some() {
                    continue;
                }
                let base_len = memchr::memchr(b':', fname.as_bytes()).unwrap_or(fname.len());
                if base_len == 0 {
                    continue;
                }
                let is_dir = match de.file_type() {
                    Some(t) => t == nix::dir::Type::Directory,
                    // The file system does not fill in the type: ask without following a
                    // symbolic link, as a directory entry's own type would be.
                    None => match fstatat(fd, fname, AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st) => st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                        Err(nix::errno::Errno::ENOENT) => return Ok(None),
                        Err(e) => return Err(e.into()),
                    },
                };
                if is_dir {
                    continue;
                }
                files.push(ScanFile { name: fname.to_owned(), base_len, in_new, matched: false });
            }
        }

        // One file per base: a base in both places (a crashed foreign rename) is taken from
        // cur/, which was read first; `slot[uid order]` is the file of each indexed message.
        let mut winners: Vec<usize> = Vec::with_capacity(files.len());
        let slot: Vec<Option<usize>> = {
            let mut by_base: HashMap<&str, usize, BaseHash> =
                HashMap::with_capacity_and_hasher(files.len(), BaseHash);
            for (i, f) in files.iter().enumerate() {
                if let std::collections::hash_map::Entry::Vacant(v) = by_base.entry(f.base()) {
                    v.insert(i);
                    winners.push(i);
                }
            }
            // Taken out as matched, so that a base the index holds twice (hand edits) is
            // matched once and the other entry expunged.
            self.state.entries.values().map(|e| by_base.remove(e.base())).collect()
        };
        for i in slot.iter().flatten() {
            files[*i].matched = true;
        }

        let mut moved = false;
        if move_new {
            for &i in &winners {
                let f = &mut files[i];
                if !f.in_new {
                    continue;
                }
                let target =
                    if f.name.contains(':') { f.name.clone() } else { name::with_flags(f.base(), "") };
                match std::fs::rename(self.dir.join("new").join(&f.name), self.dir.join("cur").join(&target))
                {
                    Ok(()) => {
                        f.in_new = false;
                        f.name = target;
                        moved = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            if moved {
                fsync_dir(&self.dir.join("new"))?;
                fsync_dir(&self.dir.join("cur"))?;
            }
        }

        let mut recs = Vec::new();
        let mut modseq = self.state.highest_modseq;
        for ((uid, e), slot) in self.state.entries.iter().zip(slot) {
            match slot.map(|i| &mut files[i]) {
                None => {
                    modseq += 1;
                    recs.push(Record::Expunge { uid: *uid, modseq });
                }
                Some(f) if f.in_new != e.in_new || f.name != e.filename => {
                    let mut n = e.clone();
                    if name::sort_letters(name::split(&f.name).1) != name::sort_letters(e.letters()) {
                        // Another Maildir client changed the flags: a new MODSEQ (RFC 7162 §3.1).
                        modseq += 1;
                        n.modseq = modseq;
                    }
                    n.in_new = f.in_new;
                    n.filename = std::mem::take(&mut f.name);
                    recs.push(Record::Update(n));
                }
                Some(_) => {}
            }
        }

        // Files the index does not know: deliveries by other programs, or ours that crashed
        // before the index update. UIDs go in order of delivery time (RFC 3501 §2.3.1.1
        // requires only ascending order of assignment; delivery order is what users expect).
        let todo: Vec<usize> = winners.iter().copied().filter(|&i| !files[i].matched).collect();
        let Some(mut fresh) = stat_fresh(&files, &todo, cur_fd, new_fd)? else { return Ok(None) };
        // Bases are unique, so (key, base) orders completely.
        fresh.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| files[a.1].base().cmp(files[b.1].base())));
        recs.reserve(fresh.len() + 1);
        for (uid, (_, i, date, size)) in (self.state.next_uid..).zip(fresh) {
            modseq += 1;
            let f = &mut files[i];
            recs.push(Record::Add(Entry {
                uid,
                modseq,
                date,
                size,
                in_new: f.in_new,
                keywords: BTreeSet::new(),
                filename: std::mem::take(&mut f.name),
                info: NameInfo::default(),
            }));
        }

        let quiet = |m: i128| t0 - m >= STAMP_QUIET_NS;
        let stamp = (!moved && quiet(m_new) && quiet(m_cur)).then_some((m_new, m_cur));
        if stamp != self.state.stamp {
            let (a, b) = stamp.unwrap_or((0, 0));
            recs.push(Record::Stamp(a, b));
        }
        let seen = if moved { self.dir_mtimes().unwrap_or((0, 0)) } else { (m_new, m_cur) };
        Ok(Some((recs, seen)))
    }
}

/// (order key, index in `files`, mtime or [`DATE_UNKNOWN`], size) of each file in `todo`,
/// or None when one vanished. Only files whose name lacks the delivery time or `S=` are
/// stat'ed (the kernel's name lookup is most of a rebuild's time): with many of them the
/// work is split between threads.
#[allow(clippy::type_complexity)]
fn stat_fresh(
    files: &[ScanFile],
    todo: &[usize],
    cur_fd: std::os::fd::RawFd,
    new_fd: std::os::fd::RawFd,
) -> io::Result<Option<Vec<((i64, u32), usize, i64, u64)>>> {
    let one = |i: usize| -> io::Result<Option<((i64, u32), usize, i64, u64)>> {
        let f = &files[i];
        // A name with the delivery time and S= needs no stat now: the date is learnt when a
        // reader asks (Entry::date).
        let (key, size) = (name::time_from_base(f.base()), name::size_from_base(f.base()));
        if let (Some(key), Some(size)) = (key, size) {
            return Ok(Some((key, i, DATE_UNKNOWN, size)));
        }
        // After a move the file is in cur/ under its new name: the same inode.
        let st = match fstatat(if f.in_new { new_fd } else { cur_fd }, f.name.as_str(), AtFlags::empty()) {
            Ok(st) => st,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let key = key.unwrap_or((st.st_mtime, (st.st_mtime_nsec / 1000) as u32));
        let size = size.unwrap_or(st.st_size as u64);
        Ok(Some((key, i, st.st_mtime, size)))
    };
    let chunk = |part: &[usize]| -> io::Result<Option<Vec<_>>> {
        let mut out = Vec::with_capacity(part.len());
        for &i in part {
            match one(i)? {
                Some(r) => out.push(r),
                None => return Ok(None),
            }
        }
        Ok(Some(out))
    };
    let threads = scan_threads(todo.iter().filter(|&&i| needs_stat(files[i].base())).count());
    if threads <= 1 {
        return chunk(todo);
    }
    let per = todo.len().div_ceil(threads);
    let parts: Vec<io::Result<Option<Vec<_>>>> = std::thread::scope(|sc| {
        let mut parts = todo.chunks(per);
        let first = parts.next().unwrap_or(&[]);
        let handles: Vec<_> = parts.map(|p| sc.spawn(move || chunk(p))).collect();
        let mut out = vec![chunk(first)];
        for h in handles {
            out.push(h.join().unwrap_or_else(|_| Err(io::Error::other("a scan thread panicked"))));
        }
        out
    });
    let mut all = Vec::with_capacity(todo.len());
    for p in parts {
        match p? {
            Some(v) => all.extend(v),
            None => return Ok(None),
        }
    }
    Ok(Some(all))
}

/// Whether a new file must be stat'ed now: its name lacks the delivery time (the UID order)
/// or the size.
fn needs_stat(base: &str) -> bool {
    name::time_from_base(base).is_none() || name::size_from_base(base).is_none()
}

/// How many threads stat `n` files: one below [`SCAN_FILES_PER_THREAD`] files per thread
/// (starting a thread costs about as much as a few dozen stats), at most the CPUs we may use.
fn scan_threads(n: usize) -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cpus = *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()).min(4));
    (n / SCAN_FILES_PER_THREAD).clamp(1, cpus.max(1))
}

const SCAN_FILES_PER_THREAD: usize = 1000;

/// A file found by a scan.
struct ScanFile {
    name: String,
    /// The length of its base (the name up to `:`).
    base_len: usize,
    in_new: bool,
    /// An indexed message has this base.
    matched: bool,
}

impl ScanFile {
    fn base(&self) -> &str {
        &self.name[..self.base_len]
    }
}

fn fstatat(dir: std::os::fd::RawFd, name: &str, flags: AtFlags) -> nix::Result<nix::sys::stat::FileStat> {
    nix::sys::stat::fstatat(Some(dir), name, flags)
}

/// A hasher for file bases (keys we read from our own directories, so no defence against
/// chosen collisions is needed): a multiply-rotate over 8-byte words, several times cheaper
/// than std's SipHash on 60-byte names.
#[derive(Clone, Copy, Default)]
pub struct BaseHash;

impl std::hash::BuildHasher for BaseHash {
    type Hasher = BaseHasher;
    fn build_hasher(&self) -> BaseHasher {
        BaseHasher(0)
    }
}

pub struct BaseHasher(u64);

impl BaseHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(23) ^ w).wrapping_mul(Self::K);
    }
}

impl std::hash::Hasher for BaseHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_le_bytes(last));
        }
    }
    fn write_u8(&mut self, b: u8) {
        self.word(b as u64 | 0x100);
    }
    fn finish(&self) -> u64 {
        // Fold the high bits (the well-mixed ones) into the low bits hashbrown indexes by.
        self.0 ^ (self.0 >> 29)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over the budget, the lowest UIDs go first and the cache keeps most of what it holds
    /// (clearing it all made every sweep of a big folder miss everything).
    #[test]
    fn message_cache_evicts_the_oldest_uids() {
        let budget = 48 << 20;
        let mut c = MessageCache::default();
        c.budget = budget;
        let mb = 1 << 20;
        let n = (budget / mb + 10) as u32;
        for uid in 1..=n {
            c.update(uid, &format!("b{uid}"), |e| e.header = Some(vec![0u8; mb].into()));
            assert!(c.bytes <= budget, "{uid}: {}", c.bytes);
        }
        assert!(c.get(n, &format!("b{n}")).is_some(), "the newest stays");
        assert!(c.get(1, "b1").is_none(), "the oldest went");
        let kept = c.map.len() * mb;
        assert!(kept >= budget / 2, "most is kept: {kept}");
        let total = MessageCache::total_budget();
        assert!((64 << 20..=1 << 30).contains(&total) && MessageCache::folder_budget() == total / 2);
        let lowest_kept = *c.map.keys().min().unwrap();
        assert!((lowest_kept..=n).all(|u| c.map.contains_key(&u)), "a contiguous run of the newest");
        assert_eq!(c.total.load(std::sync::atomic::Ordering::Relaxed), c.bytes);
    }

    #[test]
    fn record_round_trip() {
        let e = Entry {
            uid: 7,
            modseq: 12,
            date: 1_700_000_000,
            size: 42,
            in_new: false,
            keywords: ["$Junk".to_owned(), "work".to_owned()].into(),
            filename: "1.M2P3Q4.host name,S=42:2,FS".to_owned(),
            info: NameInfo::default(),
        };
        let mut s = String::new();
        format_record(&Record::Update(e.clone()), &mut s);
        assert_eq!(s, "= 7 12 1700000000 42 c 2 $Junk work :1.M2P3Q4.host name,S=42:2,FS\n");
        match parse_record(s.trim_end()) {
            Some(Record::Update(p)) => assert_eq!(p, e),
            other => panic!("{other:?}"),
        }
        let mut s = String::new();
        let old = Entry { date: -86_400, keywords: BTreeSet::new(), in_new: true, ..e.clone() };
        for r in [
            Record::Add(old.clone()),
            Record::Expunge { uid: 3, modseq: 18_446_744_073_709_551_615 },
            Record::Recent(0),
            Record::Stamp(-1, 1_700_000_000_123_456_789),
        ] {
            format_record(&r, &mut s);
        }
        assert_eq!(
            s,
            "+ 7 12 -86400 42 n 0 :1.M2P3Q4.host name,S=42:2,FS\n- 3 18446744073709551615\nR 0\n\
             D -1 1700000000123456789\n"
        );
        match parse_record(s.lines().next().unwrap()) {
            Some(Record::Add(p)) => assert_eq!(p, old),
            other => panic!("{other:?}"),
        }
        assert!(parse_record("+ 0 1 1 1 c 0 :x").is_none(), "uid 0 is invalid");
        assert!(parse_record("+ 1 1 1 1 c 2 a :x").is_none(), "keyword count too big");
        assert!(parse_record("garbage").is_none());
    }

    fn folder() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        for d in ["cur", "new", "tmp"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        (t, dir)
    }

    fn put(dir: &Path, name: &str, body: &str, mtime: u64) {
        let f = File::create(dir.join(name)).unwrap();
        (&f).write_all(body.as_bytes()).unwrap();
        f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(mtime)).unwrap();
    }

    fn rebuilt(dir: &Path) -> Index {
        let mut idx = Index::new(dir.to_path_buf());
        let lock = IndexLock::acquire(dir).unwrap();
        idx.refresh_locked(&lock, &mut Changes::default()).unwrap();
        idx
    }

    #[test]
    fn rebuild_takes_cur_over_new_orders_by_delivery_time_and_skips_odd_names() {
        let (_t, dir) = folder();
        // Delivered last, but its copy in cur/ (a crashed foreign rename) is the one taken.
        put(&dir, "cur/1700000002.M5P1.h,S=99:2,S", "abc", 1_700_000_100);
        put(&dir, "new/1700000002.M5P1.h,S=99", "abc", 1_700_000_200);
        // No S=: the size is the file's; same time as the next, so the base decides.
        put(&dir, "new/1700000001.M9P1.h", "hello", 1_700_000_300);
        put(&dir, "new/1700000001.M9P1.a,W=7", "hi", 1_700_000_400);
        // No time in the name: ordered by mtime, the oldest here.
        put(&dir, "cur/no-time-name:2,", "x", 1_600_000_000);
        // Not messages: hidden, an empty base, a directory, a line break.
        put(&dir, "cur/.hidden", "x", 1);
        put(&dir, "cur/:2,S", "x", 1);
        put(&dir, "new/two\nlines", "x", 1);
        std::fs::create_dir(dir.join("cur/sub")).unwrap();

        let idx = rebuilt(&dir);
        let got: Vec<_> = idx
            .state
            .entries
            .values()
            .map(|e| (e.uid, e.filename.as_str(), e.in_new, e.date, e.size, e.modseq))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "no-time-name:2,", false, 1_600_000_000, 1, 1),
                (2, "1700000001.M9P1.a,W=7", true, 1_700_000_400, 2, 2),
                (3, "1700000001.M9P1.h", true, 1_700_000_300, 5, 3),
                // Time and S= in the name: not stat'ed, the date is learnt when asked.
                (4, "1700000002.M5P1.h,S=99:2,S", false, DATE_UNKNOWN, 99, 4),
            ]
        );
        assert_eq!((idx.state.next_uid, idx.state.highest_modseq), (5, 4));
        assert_eq!(idx.state.by_base.get("1700000001.M9P1.h"), Some(&3));
        assert_eq!(idx.state.by_base.len(), 4);
        // The file it wrote reads back as the same state.
        let mut again = Index::new(dir.clone());
        assert!(matches!(again.refresh(&mut Changes::default()).unwrap(), Loaded::Ok));
        assert_eq!(again.state.entries, idx.state.entries);
        assert_eq!(again.state.by_modseq, idx.state.by_modseq);

        // A later scan: one file gone, one renamed by another client, one new.
        std::fs::remove_file(dir.join("new/1700000001.M9P1.h")).unwrap();
        std::fs::rename(dir.join("cur/no-time-name:2,"), dir.join("cur/no-time-name:2,F")).unwrap();
        put(&dir, "new/1800000000.M1P1.h", "later", 1_800_000_000);
        let (recs, _) = idx.scan_records_at(false).unwrap();
        let kinds: Vec<String> = recs
            .iter()
            .map(|r| match r {
                Record::Add(e) => format!("+{} {} {}", e.uid, e.modseq, e.filename),
                Record::Update(e) => format!("={} {} {}", e.uid, e.modseq, e.filename),
                Record::Expunge { uid, modseq } => format!("-{uid} {modseq}"),
                Record::Recent(u) => format!("R{u}"),
                Record::Stamp(..) => "D".to_owned(),
            })
            .collect();
        assert_eq!(kinds[..3], ["=1 5 no-time-name:2,F", "-3 6", "+5 7 1800000000.M1P1.h"]);
    }

    #[test]
    fn bulk_load_of_a_scan_equals_applying_it_record_by_record() {
        let (_t, dir) = folder();
        for i in 0..2500u64 {
            let sub = if i % 3 == 0 { "new" } else { "cur" };
            let flags = if sub == "cur" { ":2,S" } else { "" };
            put(
                &dir,
                &format!("{sub}/{}.M{i}P7.h,S={i}{flags}", 1_700_000_000 + i % 17),
                "m",
                1_700_000_000 + i,
            );
        }
        let idx = Index::new(dir.clone());
        let recs = idx.scan_records(false).unwrap();
        assert!(recs.len() >= 2500);
        let (mut one, mut bulk) = (State::new(9, 1, 0), State::new(9, 1, 0));
        let (mut ch1, mut ch2) = (Changes::default(), Changes::default());
        for r in recs.clone() {
            one.apply(r, &mut ch1);
        }
        bulk.load_scan(recs, &mut ch2);
        assert_eq!(bulk.entries, one.entries);
        assert_eq!(bulk.by_base, one.by_base);
        assert_eq!(bulk.by_modseq, one.by_modseq);
        assert_eq!(
            (bulk.next_uid, bulk.highest_modseq, bulk.records, bulk.stamp),
            (one.next_uid, one.highest_modseq, one.records, one.stamp)
        );
        assert_eq!(ch2, ch1);
        assert_eq!(bulk.entries.len(), 2500);
        // Not a scan of an empty state: record by record.
        let mut st = State::new(9, 1, 0);
        let e = one.entries[&1].clone();
        st.load_scan(
            vec![Record::Add(e.clone()), Record::Expunge { uid: 1, modseq: 2 }],
            &mut Changes::default(),
        );
        assert!(st.entries.is_empty() && st.by_base.is_empty());
    }

    #[test]
    fn a_file_that_vanishes_before_its_stat_makes_the_scan_read_again() {
        let (_t, dir) = folder();
        put(&dir, "cur/1.M1P1.h", "x", 5);
        let cur = File::open(dir.join("cur")).unwrap();
        let new = File::open(dir.join("new")).unwrap();
        let f = |name: &str| ScanFile {
            name: name.to_owned(),
            base_len: name.len(),
            in_new: false,
            matched: false,
        };
        let files = [f("1.M1P1.h"), f("2.M1P1.h")];
        let (c, n) = (cur.as_raw_fd(), new.as_raw_fd());
        let got = stat_fresh(&files, &[0], c, n).unwrap().unwrap();
        assert_eq!(got, vec![((1, 1), 0, 5, 1)]);
        assert!(stat_fresh(&files, &[0, 1], c, n).unwrap().is_none());
        // Split between threads, the answer is the same.
        let many: Vec<ScanFile> = (0..3 * SCAN_FILES_PER_THREAD).map(|_| f("1.M1P1.h")).collect();
        let todo: Vec<usize> = (0..many.len()).collect();
        let got = stat_fresh(&many, &todo, c, n).unwrap().unwrap();
        assert_eq!(got.iter().map(|r| r.1).collect::<Vec<_>>(), todo);
        let mut gone = many;
        gone[2500] = f("2.M1P1.h");
        assert!(stat_fresh(&gone, &todo, c, n).unwrap().is_none());
    }

    #[test]
    fn base_hash_spreads_similar_names() {
        use std::hash::BuildHasher;
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            let h = BaseHash.hash_one(format!("1700000000.M{i}P42Q{i}.mail.example,S=1234"));
            seen.insert(h & 0xffff);
        }
        // 10,000 names into 65,536 buckets: nearly all distinct if the low bits are mixed.
        assert!(seen.len() > 9_000, "{}", seen.len());
    }
}
