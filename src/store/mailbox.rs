//! An open folder: the view IMAP and POP3 sessions work on.
//!
//! Every `Mailbox` of a folder shares the one in-memory index the `Store` keeps for it
//! (`Store::indexes`), so a session costs a few integers, not a copy of the index and an
//! open file. `sync` brings the shared index up to date: it reads what other writers
//! appended to the index file, and reads the directories only when their mtimes say
//! something changed (`Index::dirs_unchanged`). A session remembers the UIDNEXT and
//! HIGHESTMODSEQ it last reported, and `sync` hands out everything that changed since —
//! its own changes and others' — from the index's MODSEQ order and expunge tombstones, so
//! the IMAP layer can send EXISTS, EXPUNGE and FETCH FLAGS at the moments RFC 3501 §7
//! allows.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::MutexGuard;

use super::index::{
    CachedMessage, Changes, DovecotKeywords, Entry, Index, MessageCache, NewMessage, DATE_UNKNOWN,
};
use super::{name, Flag, SharedIndex, Store};
use crate::address::Address;
use crate::durable;

/// A message as a session sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub uid: u32,
    /// RFC 7162 MODSEQ of the last change of the message's flags.
    pub modseq: u64,
    /// System flags and keywords, sorted.
    pub flags: Vec<Flag>,
    /// RFC 822 size in bytes (the file size: messages are stored with CRLF or LF as
    /// received; the IMAP layer reports what it sends).
    pub size: u64,
    /// Internal date as the index knows it (`index::DATE_UNKNOWN` if not yet): see
    /// [`Message::internal_date`].
    date: i64,
    /// Where the message is now. Another client may rename it at any time; read it with
    /// `Mailbox::open_message`, which follows such renames.
    pub path: PathBuf,
    /// \Recent for this session (RFC 3501 §2.3.2).
    pub recent: bool,
    /// The Maildir base name: stable for the life of the message, even across index rebuilds.
    pub base: String,
}

impl Message {
    /// Internal date (RFC 3501 §2.3.3), Unix seconds: from the index, else the file's mtime
    /// (a stat now, outside the index lock; 0 if the file is gone).
    pub fn internal_date(&self) -> i64 {
        if self.date != DATE_UNKNOWN {
            return self.date;
        }
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.path).map_or(0, |m| m.mtime())
    }

    /// A POP3 UIDL (RFC 1939 §7: 1–70 characters 0x21–0x7E, unique and stable). The base
    /// name survives a rebuild of our index (a UID-based UIDL would not, and every POP3
    /// client would download everything again); base names that do not fit become a hash.
    pub fn uidl(&self) -> String {
        if !self.base.is_empty()
            && self.base.len() <= 70
            && self.base.bytes().all(|b| (0x21..0x7f).contains(&b))
        {
            self.base.clone()
        } else {
            // FNV-1a, 128 bits: stable across versions of Rust (unlike std's hasher).
            let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
            for b in self.base.bytes() {
                h ^= b as u128;
                h = h.wrapping_mul(0x0000000001000000000000000000013B);
            }
            format!("{h:032x}")
        }
    }
}

/// See [`Mailbox::summary`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub uids: Vec<u32>,
    pub keywords: BTreeSet<String>,
    pub first_unseen: Option<usize>,
    pub recent: usize,
}

/// How STORE changes flags (RFC 3501 §6.4.6: FLAGS, +FLAGS, -FLAGS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagOp {
    Replace,
    Add,
    Remove,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreResult {
    /// UIDs whose flags changed (each got a new MODSEQ).
    pub updated: Vec<u32>,
    /// UIDs not changed because their MODSEQ was above UNCHANGEDSINCE (RFC 7162 §3.1.3:
    /// the MODIFIED response code).
    pub modified: Vec<u32>,
}

/// The outcome of COPY/MOVE, for the COPYUID response code (RFC 4315 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    pub uidvalidity: u32,
    /// (source UID, destination UID), in source UID order. Messages expunged meanwhile are
    /// missing.
    pub mapping: Vec<(u32, u32)>,
}

pub struct Mailbox {
    store: Store,
    account: Address,
    folder: String,
    dir: PathBuf,
    pub(super) shared: SharedIndex,
    claim_recent: bool,
    recent: BTreeSet<u32>,
    /// What this session last reported: UIDVALIDITY (0 before the first sync), UIDNEXT
    /// and HIGHESTMODSEQ.
    seen_uidvalidity: u32,
    seen_next_uid: u32,
    seen_modseq: u64,
}

/// The folder a session opened was deleted or replaced (another folder now has its name)
/// since: the UIDs it holds name nothing, or other messages (RFC 3501 §2.3.1.1). Returned by
/// the methods that act on UIDs instead of acting on the wrong messages; the session must
/// open the folder again. Test for it with [`is_folder_replaced`].
#[derive(Debug)]
pub struct FolderReplaced;

impl std::fmt::Display for FolderReplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the mailbox was deleted or replaced since it was selected; select it again")
    }
}

impl std::error::Error for FolderReplaced {}

/// Whether `e` is [`FolderReplaced`].
pub fn is_folder_replaced(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<FolderReplaced>())
}

/// Err([`FolderReplaced`]) unless the index is still of the UIDVALIDITY the session saw
/// (`seen`, 0 before its first sync).
fn same_folder(seen: u32, idx: &Index) -> io::Result<()> {
    if seen != 0 && idx.uidvalidity() != seen {
        return Err(io::Error::other(FolderReplaced));
    }
    Ok(())
}

/// A message of the index as a session sees it.
fn view(e: &Entry, dir: &Path, recent: bool, kw: &DovecotKeywords) -> Message {
    Message {
        uid: e.uid(),
        modseq: e.modseq(),
        flags: flags_of(e, kw),
        size: e.size(),
        date: e.date(),
        path: e.path(dir),
        recent,
        base: e.base().to_owned(),
    }
}

/// A message of the index seen without copying it (see [`Mailbox::visit`]): what SEARCH
/// and FETCH need for thousands of messages under one lock, with no allocation per message
/// unless it has keywords.
pub struct MessageRef<'a> {
    entry: &'a Entry,
    kw: &'a DovecotKeywords,
    recent: bool,
    cache: &'a MessageCache,
}

/// Bits of [`MessageRef::system_flags`], in the order IMAP lists them.
pub const SYSTEM_FLAGS: [(Flag, u8); 5] = [
    (Flag::Seen, name::system_bit(b'S')),
    (Flag::Answered, name::system_bit(b'R')),
    (Flag::Flagged, name::system_bit(b'F')),
    (Flag::Deleted, name::system_bit(b'T')),
    (Flag::Draft, name::system_bit(b'D')),
];

impl<'a> MessageRef<'a> {
    pub fn uid(&self) -> u32 {
        self.entry.uid()
    }
    pub fn modseq(&self) -> u64 {
        self.entry.modseq()
    }
    /// The stored size (see [`Message::size`]).
    pub fn size(&self) -> u64 {
        self.entry.size()
    }
    /// None until the index knows it (see `index::Entry::date`; then
    /// [`Mailbox::learn_date`] from the file).
    pub fn internal_date(&self) -> Option<i64> {
        (self.entry.date() != DATE_UNKNOWN).then_some(self.entry.date())
    }
    /// RFC822.SIZE from the file name's `W=` (Dovecot's and ours), when it has one.
    pub fn virtual_size(&self) -> Option<u64> {
        self.entry.info().vsize()
    }
    /// \Recent for this session.
    pub fn recent(&self) -> bool {
        self.recent
    }
    /// What the folder's shared cache holds for the message. A lookup each time: ask only
    /// when needed (a cache probe per message is most of what a flags-only SEARCH costs).
    pub fn cached(&self) -> Option<&'a CachedMessage> {
        self.cache.get(self.entry.uid(), self.entry.base())
    }
    /// The system flags as a bit set ([`SYSTEM_FLAGS`]).
    pub fn system_flags(&self) -> u8 {
        self.entry.info().system
    }
    /// Whether it has keywords (Maildir `P` or a–z letters, or keywords of our index).
    pub fn has_keywords(&self) -> bool {
        self.entry.info().letter_keywords || !self.entry.keywords().is_empty()
    }
    /// All flags, sorted as [`Message::flags`].
    pub fn flags(&self) -> Vec<Flag> {
        flags_of(self.entry, self.kw)
    }
}

fn flags_of(e: &Entry, kw: &DovecotKeywords) -> Vec<Flag> {
    let mut flags: Vec<Flag> = Vec::new();
    for c in e.letters().chars() {
        if let Some(f) = Flag::from_letter(c) {
            flags.push(f);
        } else if let Some(k) = kw.name(c) {
            flags.push(Flag::Keyword(k.to_owned()));
        }
    }
    flags.extend(e.keywords().iter().map(|k| Flag::Keyword(k.clone())));
    flags.sort();
    flags.dedup();
    flags
}

impl Mailbox {
    pub(super) fn open(
        store: Store,
        account: Address,
        folder: String,
        dir: PathBuf,
        id: super::FolderId,
        claim_recent: bool,
    ) -> io::Result<Mailbox> {
        let shared = store.indexes.get(&dir, id);
        let mut mb = Mailbox {
            store,
            account,
            folder,
            dir,
            shared,
            claim_recent,
            recent: BTreeSet::new(),
            seen_uidvalidity: 0,
            seen_next_uid: 0,
            seen_modseq: 0,
        };
        mb.sync()?;
        Ok(mb)
    }

    pub(super) fn index(&self) -> MutexGuard<'_, Index> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn folder(&self) -> &str {
        &self.folder
    }
    /// Whether the folder still exists on disk (after a failed sync: was it deleted?).
    pub fn exists(&self) -> bool {
        self.dir.join("cur").is_dir()
    }
    pub fn account(&self) -> &Address {
        &self.account
    }
    pub fn uidvalidity(&self) -> u32 {
        self.index().uidvalidity()
    }
    /// UIDNEXT (RFC 3501 §2.3.1.1).
    pub fn uid_next(&self) -> u32 {
        self.index().next_uid()
    }
    /// HIGHESTMODSEQ (RFC 7162 §3.1.1).
    pub fn highest_modseq(&self) -> u64 {
        self.index().highest_modseq()
    }
    /// Messages no session has claimed as \Recent yet (IMAP STATUS RECENT).
    pub fn unclaimed_recent(&self) -> usize {
        let idx = self.index();
        idx.entries().range(idx.first_recent()..).count()
    }
    pub fn len(&self) -> usize {
        self.index().entries().len()
    }
    pub fn is_empty(&self) -> bool {
        self.index().entries().is_empty()
    }
    /// All UIDs, ascending (the IMAP sequence order).
    pub fn uids(&self) -> Vec<u32> {
        self.index().entries().keys().copied().collect()
    }

    pub fn messages(&self) -> Vec<Message> {
        let idx = self.index();
        idx.entries()
            .values()
            .map(|e| view(e, &self.dir, self.recent.contains(&e.uid()), idx.keywords()))
            .collect()
    }

    pub fn message(&self, uid: u32) -> Option<Message> {
        let idx = self.index();
        idx.get(uid).map(|e| view(e, &self.dir, self.recent.contains(&e.uid()), idx.keywords()))
    }

    /// Run `f` on each message of `uids` that exists, under one lock of the index (for
    /// loops over many messages: SEARCH, FETCH).
    pub fn with_messages<R>(&self, uids: &[u32], mut f: impl FnMut(&Message) -> R) -> Vec<Option<R>> {
        let idx = self.index();
        uids.iter()
            .map(|u| {
                idx.get(*u).map(|e| f(&view(e, &self.dir, self.recent.contains(&e.uid()), idx.keywords())))
            })
            .collect()
    }

    /// Record the internal date of `uid` read from its file (as [`Mailbox::open_message`]
    /// does), if the index did not know it. In memory for every session
    /// of the folder; written to the index file at its next compaction.
    pub fn learn_date(&self, uid: u32, mtime: i64) {
        self.index().learn_date(uid, mtime);
    }

    /// Call `f` for the messages of `uids` in order, under one lock of the index, with
    /// their position in `uids`; messages no longer there are skipped. `f` returns
    /// `ControlFlow::Break(())` to stop early (e.g. to read a file without holding the
    /// lock); the result is the position to go on from (`uids.len()` when done).
    pub fn visit(
        &self,
        uids: &[u32],
        mut f: impl FnMut(usize, &MessageRef<'_>) -> std::ops::ControlFlow<()>,
    ) -> usize {
        let idx = self.index();
        let entries = idx.entries();
        // The UIDs come ascending (a session's view, a resolved set): walk the index along
        // with them instead of a lookup per UID, seeking only across wide gaps.
        let mut walk = entries.range(uids.first().copied().unwrap_or(0)..).peekable();
        let mut last = 0;
        for (i, &u) in uids.iter().enumerate() {
            let entry = if u > last {
                last = u;
                loop {
                    match walk.peek() {
                        Some((&k, _)) if k < u && u - k > 32 => walk = entries.range(u..).peekable(),
                        Some((&k, _)) if k < u => {
                            walk.next();
                        }
                        Some((&k, e)) if k == u => break Some(*e),
                        _ => break None,
                    }
                }
            } else {
                // Not ascending after all: a lookup, and the walk starts again from here.
                walk = entries.range(u..).peekable();
                last = u;
                entries.get(&u)
            };
            let Some(entry) = entry else { continue };
            let m = MessageRef {
                entry,
                kw: idx.keywords(),
                recent: !self.recent.is_empty() && self.recent.contains(&u),
                cache: idx.cache(),
            };
            if f(i, &m).is_break() {
                return i;
            }
        }
        uids.len()
    }

    /// What SELECT reports, in one pass under one lock (no `Message` per message): the
    /// UIDs, the keywords in use, the 0-based position of the first message without \Seen
    /// and the number of messages \Recent for this session.
    pub fn summary(&self) -> Summary {
        let idx = self.index();
        let mut s = Summary { uids: Vec::with_capacity(idx.entries().len()), ..Default::default() };
        for (i, e) in idx.entries().values().enumerate() {
            s.uids.push(e.uid());
            for k in e.keywords() {
                if !s.keywords.contains(k) {
                    s.keywords.insert(k.clone());
                }
            }
            for c in e.letters().chars() {
                if c == 'P' {
                    s.keywords.insert("$Forwarded".to_owned());
                } else if let Some(k) = idx.keywords().name(c) {
                    if !s.keywords.contains(k) {
                        s.keywords.insert(k.to_owned());
                    }
                }
            }
            if s.first_unseen.is_none() && !e.letters().contains('S') {
                s.first_unseen = Some(i);
            }
        }
        s.recent = self.recent.len();
        s
    }

    /// How many messages are \Recent for this session.
    pub fn recent_count(&self) -> usize {
        self.recent.len()
    }

    /// \Recent for this session (RFC 3501 §2.3.2).
    pub fn is_recent(&self, uid: u32) -> bool {
        self.recent.contains(&uid)
    }

    /// What the folder's shared cache holds for `uid` (see `index::MessageCache`).
    pub fn cached(&self, uid: u32) -> Option<CachedMessage> {
        self.index().cached(uid).cloned()
    }

    /// Add to the shared cache entry of `uid` (ignored if the message is gone).
    pub fn cache_update(&self, uid: u32, f: impl FnOnce(&mut CachedMessage)) {
        self.index().cache_update(uid, f);
    }

    /// Bring the view up to date with the disk and return everything that changed since the
    /// last call (including this session's own changes). Cheap when nothing happened: one
    /// stat of the index, a read of its new bytes, two stats of new/ and cur/.
    pub fn sync(&mut self) -> io::Result<Changes> {
        let shared = self.shared.clone();
        let mut idx = shared.lock().unwrap_or_else(|e| e.into_inner());
        let mut scratch = Changes::default();
        let loaded = idx.refresh(&mut scratch)?;
        let fresh = matches!(loaded, super::index::Loaded::Ok) && idx.dirs_unchanged();
        let claim = self.claim_recent;
        let unclaimed = claim && idx.first_recent() < idx.next_uid();
        if !fresh || unclaimed {
            let recent = &mut self.recent;
            idx.write(|tx| {
                if !tx.index().dirs_unchanged() {
                    tx.scan(true)?;
                }
                if claim {
                    recent.extend(tx.claim_recent());
                }
                Ok(())
            })?;
        }
        if !claim {
            // RFC 3501 §6.3.2: EXAMINE shows \Recent without taking it (no change of
            // per-user state): the messages no session has claimed are \Recent here too.
            let first = idx.first_recent().max(self.recent.last().map_or(0, |u| u + 1));
            self.recent.extend(idx.entries().range(first..).map(|(u, _)| *u));
        }
        let ch = if self.seen_uidvalidity == 0 {
            // The first sync (open): the caller reads the whole state.
            Changes::default()
        } else if idx.uidvalidity() != self.seen_uidvalidity {
            // RFC 3501 §2.3.1.1: every UID the session holds is void (the IMAP layer ends it).
            self.recent.clear();
            Changes { uidvalidity_changed: true, ..Default::default() }
        } else {
            idx.changes_since(self.seen_modseq, self.seen_next_uid)
        };
        self.seen_uidvalidity = idx.uidvalidity();
        self.seen_next_uid = idx.next_uid();
        self.seen_modseq = idx.highest_modseq();
        for uid in &ch.expunged {
            self.recent.remove(uid);
        }
        if ch.resync {
            self.recent.retain(|u| idx.get(*u).is_some());
        }
        Ok(ch)
    }

    /// Open a message's file for reading, following a rename by another client (a flag
    /// change elsewhere) if needed.
    pub fn open_message(&self, uid: u32) -> io::Result<File> {
        let e = self.entry(uid)?;
        let file = match File::open(e.path(&self.dir)) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => match find_file(&self.dir, e.base())? {
                Some(p) => File::open(p),
                None => {
                    Err(io::Error::new(io::ErrorKind::NotFound, format!("message UID {uid} was expunged")))
                }
            },
            other => other,
        }?;
        // The internal date the scan did not stat for (index::Entry::date): the open file's.
        if e.date() == DATE_UNKNOWN {
            use std::os::unix::fs::MetadataExt;
            self.learn_date(uid, file.metadata()?.mtime());
        }
        Ok(file)
    }

    fn entry(&self, uid: u32) -> io::Result<Entry> {
        self.index()
            .get(uid)
            .cloned()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no message with UID {uid}")))
    }

    /// STORE (RFC 3501 §6.4.6, with RFC 7162 §3.1.3 UNCHANGEDSINCE). Maildir letters change
    /// by renaming the file (so other Maildir clients see them), keywords in the index. Each
    /// message that really changes gets a new MODSEQ; UIDs not in the folder are ignored.
    pub fn store_flags(
        &mut self,
        uids: &[u32],
        op: FlagOp,
        flags: &[Flag],
        unchanged_since: Option<u64>,
    ) -> io::Result<StoreResult> {
        let dir = self.dir.clone();
        let seen = self.seen_uidvalidity;
        self.index().write(|tx| {
            same_folder(seen, tx.index())?;
            let mut result = StoreResult::default();
            if op != FlagOp::Remove {
                let names: Vec<&str> =
                    flags.iter().filter(|f| f.letter().is_none()).map(|f| f.as_imap()).collect();
                tx.assign_keywords(&names)?;
            }
            for uid in sorted(uids) {
                let Some(e) = tx.index().get(uid) else { continue };
                if unchanged_since.is_some_and(|us| e.modseq() > us) {
                    result.modified.push(uid);
                    continue;
                }
                let old_letters = e.letters();
                let (mut letters, mut keywords, foreign) = decode(e, tx.index().keywords());
                if op == FlagOp::Replace {
                    letters.clear();
                    keywords.clear();
                }
                for f in flags {
                    match (f.letter(), op) {
                        (Some(l), FlagOp::Remove) => {
                            letters.remove(&l);
                        }
                        (Some(l), _) => {
                            letters.insert(l);
                        }
                        // RFC 3501 §2.3.2: keywords compare case-insensitively.
                        (None, FlagOp::Remove) => keywords.retain(|k| !k.eq_ignore_ascii_case(f.as_imap())),
                        (None, _) => {
                            if !keywords.iter().any(|k| k.eq_ignore_ascii_case(f.as_imap())) {
                                keywords.insert(f.as_imap().to_owned());
                            }
                        }
                    }
                }
                let (kw_letters, keywords) = encode(&keywords, tx.index().keywords());
                let new_letters =
                    name::sort_letters(&(letters.iter().collect::<String>() + &kw_letters + &foreign));
                let letters_changed = e.in_new() || new_letters != name::sort_letters(old_letters);
                if !letters_changed && keywords == *e.keywords() {
                    continue;
                }
                let mut renamed = None;
                if letters_changed {
                    let new_name = name::with_flags(e.base(), &new_letters);
                    if !rename_following(&dir, e, &dir.join("cur").join(&new_name))? {
                        continue; // gone: the next sync reports the expunge
                    }
                    renamed = Some(new_name);
                }
                if tx.update(uid, renamed, Some(keywords)) == Some(true) {
                    result.updated.push(uid);
                }
            }
            Ok(result)
        })
    }

    /// Expunge the given UIDs (UID EXPUNGE, RFC 4315 §2.1; POP3 QUIT). Returns the UIDs that
    /// were removed.
    pub fn expunge(&mut self, uids: &[u32]) -> io::Result<Vec<u32>> {
        let dir = self.dir.clone();
        let seen = self.seen_uidvalidity;
        self.index().write(|tx| {
            same_folder(seen, tx.index())?;
            let mut done = Vec::new();
            for uid in sorted(uids) {
                let Some(e) = tx.index().get(uid) else { continue };
                match std::fs::remove_file(e.path(&dir)) {
                    Ok(()) => {}
                    Err(err) if err.kind() == io::ErrorKind::NotFound => {
                        if let Some(p) = find_file(&dir, e.base())? {
                            remove_if_exists(&p)?;
                        }
                    }
                    Err(err) => return Err(err),
                }
                tx.expunge(uid);
                done.push(uid);
            }
            if !done.is_empty() {
                // The unlinks must be durable before the index says so (see index docs).
                durable::fsync_dir(&dir.join("cur"))?;
                durable::fsync_dir(&dir.join("new"))?;
            }
            Ok(done)
        })
    }

    /// IMAP EXPUNGE/CLOSE (RFC 3501 §6.4.3): remove every message flagged \Deleted.
    pub fn expunge_deleted(&mut self) -> io::Result<Vec<u32>> {
        self.sync_for_write()?;
        let uids: Vec<u32> =
            self.index().entries().values().filter(|e| e.letters().contains('T')).map(|e| e.uid()).collect();
        self.expunge(&uids)
    }

    #[cfg(test)]
    pub(super) fn index_dirs_unchanged_for_test(&self) -> bool {
        self.index().dirs_unchanged()
    }

    /// Make the shared index complete (scan if the directories changed) without reporting
    /// anything: the changes stay for the next `sync`.
    fn sync_for_write(&mut self) -> io::Result<()> {
        self.index().write(|tx| {
            if !tx.index().dirs_unchanged() {
                tx.scan(true)?;
            }
            Ok(())
        })
    }

    /// COPY (RFC 3501 §6.4.7) into `dest` of the same account: the files are hard-linked
    /// under new names (same internal date, no extra space), flags and keywords carried
    /// over, new UIDs assigned in the destination. A missing destination is NotFound (the
    /// IMAP layer answers [TRYCREATE]).
    pub fn copy_to(&mut self, uids: &[u32], dest: &str) -> io::Result<CopyResult> {
        let dest_dir = self.store.folder_dir(&self.account, dest)?;
        let Some(dest_id) = super::FolderId::of(&dest_dir)? else {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("folder {dest:?} does not exist")));
        };
        let src_dir = self.dir.clone();
        // Each message with its system letters and keywords by name: Dovecot's a–z letters
        // index the source folder's keyword list and mean something else in the destination.
        let sources: Vec<(Entry, String, BTreeSet<String>)> = {
            let idx = self.index();
            same_folder(self.seen_uidvalidity, &idx)?;
            sorted(uids)
                .into_iter()
                .filter_map(|u| idx.get(u))
                .map(|e| {
                    let (letters, keywords, _) = decode(e, idx.keywords());
                    (e.clone(), letters.into_iter().collect(), keywords)
                })
                .collect()
        };
        // Only the destination is locked: we read the source files (following renames), and
        // holding one lock at a time keeps two opposite copies from deadlocking.
        let dest_shared = self.store.indexes.get(&dest_dir, dest_id);
        let mut didx = dest_shared.lock().unwrap_or_else(|e| e.into_inner());
        didx.write(|tx| {
            let wanted: BTreeSet<&str> =
                sources.iter().flat_map(|(_, _, k)| k.iter().map(String::as_str)).collect();
            tx.assign_keywords(&wanted.into_iter().collect::<Vec<_>>())?;
            let mut mapping = Vec::new();
            for (e, letters, keywords) in &sources {
                let (kw_letters, keywords) = encode(keywords, tx.index().keywords());
                let letters = format!("{letters}{kw_letters}");
                let Some(filename) = link_or_copy(&src_dir, e, &dest_dir, &letters)? else { continue };
                let new = NewMessage { filename, in_new: false, date: e.date(), size: e.size(), keywords };
                mapping.push((e.uid(), tx.add(new)));
            }
            if !mapping.is_empty() {
                durable::fsync_dir(&dest_dir.join("cur"))?;
            }
            Ok(CopyResult { uidvalidity: tx.index().uidvalidity(), mapping })
        })
    }

    /// MOVE (RFC 6851): copy, then expunge the originals. A crash in between leaves the
    /// message in both folders, never in none.
    pub fn move_to(&mut self, uids: &[u32], dest: &str) -> io::Result<CopyResult> {
        let res = self.copy_to(uids, dest)?;
        let moved: Vec<u32> = res.mapping.iter().map(|(s, _)| *s).collect();
        self.expunge(&moved)?;
        Ok(res)
    }
}

/// A message's flags as (system letters, keywords by name, letters nobody can name): the
/// keywords of Dovecot's a–z letters (through the folder's `dovecot-keywords`) and those of
/// our index together.
pub(super) fn decode(e: &Entry, kw: &DovecotKeywords) -> (BTreeSet<char>, BTreeSet<String>, String) {
    let mut letters = BTreeSet::new();
    let mut keywords = e.keywords().clone();
    let mut unknown = String::new();
    for c in e.letters().chars() {
        if name::KNOWN_LETTERS.contains(c) {
            letters.insert(c);
        } else if let Some(k) = kw.name(c) {
            if !keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                keywords.insert(k.to_owned());
            }
        } else {
            unknown.push(c);
        }
    }
    (letters, keywords, unknown)
}

/// Keywords as (Dovecot letters, the rest for our index). Call `DovecotKeywords::assign`
/// for them first, so new keywords get letters while there are free ones.
pub(super) fn encode(keywords: &BTreeSet<String>, kw: &DovecotKeywords) -> (String, BTreeSet<String>) {
    let mut letters = String::new();
    let mut rest = BTreeSet::new();
    for k in keywords {
        match kw.letter(k) {
            Some(c) => letters.push(c),
            None => {
                rest.insert(k.clone());
            }
        }
    }
    (letters, rest)
}

fn sorted(uids: &[u32]) -> Vec<u32> {
    let mut v = uids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The current path of the message with this base, looked up in the directories (after
/// another client renamed it).
fn find_file(dir: &Path, base: &str) -> io::Result<Option<PathBuf>> {
    for sub in ["cur", "new"] {
        for de in std::fs::read_dir(dir.join(sub))? {
            let de = de?;
            if let Some(f) = de.file_name().to_str() {
                if name::base(f) == base {
                    return Ok(Some(de.path()));
                }
            }
        }
    }
    Ok(None)
}

/// Rename the message's file to `dest`, looking it up again if another client renamed it.
/// Ok(false): the message is gone.
fn rename_following(dir: &Path, e: &Entry, dest: &Path) -> io::Result<bool> {
    match std::fs::rename(e.path(dir), dest) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => match find_file(dir, e.base())? {
            Some(p) => match std::fs::rename(p, dest) {
                Ok(()) => Ok(true),
                Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(err) => Err(err),
            },
            None => Ok(false),
        },
        Err(err) => Err(err),
    }
}

/// Put a copy of the message into `dest_dir/cur/` under a new unique name; a hard link
/// where possible, else a real copy through tmp/. Ok(None): the source is gone.
fn link_or_copy(src_dir: &Path, e: &Entry, dest_dir: &Path, letters: &str) -> io::Result<Option<String>> {
    for _ in 0..100 {
        let filename = name::with_flags(&name::new_base(e.size(), name::vsize_from_base(e.base())), letters);
        let dest = dest_dir.join("cur").join(&filename);
        let mut src = e.path(src_dir);
        let mut res = std::fs::hard_link(&src, &dest);
        if matches!(&res, Err(err) if err.kind() == io::ErrorKind::NotFound) {
            match find_file(src_dir, e.base())? {
                Some(p) => {
                    src = p;
                    res = std::fs::hard_link(&src, &dest);
                }
                None => return Ok(None),
            }
        }
        match res {
            Ok(()) => return Ok(Some(filename)),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(_) => {
                // No hard links here (another filesystem, a link limit): copy the bytes.
                let tmp = dest_dir.join("tmp").join(name::base(&filename));
                std::fs::copy(&src, &tmp)?;
                let f = std::fs::OpenOptions::new().write(true).open(&tmp)?;
                f.set_modified(std::fs::metadata(&src)?.modified()?)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
                return Ok(Some(filename));
            }
        }
    }
    Err(io::Error::other("could not find a unique Maildir file name"))
}
