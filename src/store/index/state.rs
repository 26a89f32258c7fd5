//! The in-memory state of one folder's index: what the log says once replayed (see
//! `log`), with the lookups readers need (by UID, by file base, by MODSEQ) and the expunge
//! tombstones sessions catch up from. Pure data: no file I/O here.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::store::name;

/// One change to an index's state, as one line of its log (`log.rs` reads and writes the
/// lines; this file applies them). Built only inside the index (the store changes an
/// index through `Tx`, which makes the records).
#[derive(Debug, Clone)]
pub(super) enum Record {
    Add(Entry),
    Update(Entry),
    Expunge { uid: u32, modseq: u64 },
    Recent(u32),
    Stamp(i128, i128),
}

/// What the index knows about one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub(super) uid: u32,
    pub(super) modseq: u64,
    /// Internal date (RFC 3501 §2.3.3), Unix seconds: the file's mtime. [`DATE_UNKNOWN`](super::DATE_UNKNOWN)
    /// until someone asks: a scan does not stat files whose name gives the delivery time
    /// and size (as Dovecot does not), readers stat them when they need the date
    /// (`Index::learn_date`), and the index file keeps what was learnt at its next
    /// compaction.
    pub(super) date: i64,
    pub(super) size: u64,
    pub(super) in_new: bool,
    pub(super) keywords: BTreeSet<String>,
    /// The whole current file name (base plus `:2,<letters>` in cur/).
    pub(super) filename: String,
    /// What `filename` says, parsed when the entry enters the state (`State::apply`).
    pub(super) info: NameInfo,
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
    #[inline]
    pub fn vsize(&self) -> Option<u64> {
        (self.vsize != u64::MAX).then_some(self.vsize)
    }
}

impl Entry {
    #[inline]
    pub fn uid(&self) -> u32 {
        self.uid
    }
    /// RFC 7162 MODSEQ of the message's last change.
    #[inline]
    pub fn modseq(&self) -> u64 {
        self.modseq
    }
    /// See the field: [`DATE_UNKNOWN`](super::DATE_UNKNOWN) until learnt.
    #[inline]
    pub fn date(&self) -> i64 {
        self.date
    }
    /// The file size.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }
    #[inline]
    pub fn in_new(&self) -> bool {
        self.in_new
    }
    /// Keywords that live in our index only (those without a Dovecot letter).
    #[inline]
    pub fn keywords(&self) -> &BTreeSet<String> {
        &self.keywords
    }
    #[inline]
    pub fn info(&self) -> &NameInfo {
        &self.info
    }
    #[inline]
    pub fn base(&self) -> &str {
        name::base(&self.filename)
    }
    #[inline]
    pub fn letters(&self) -> &str {
        name::split(&self.filename).1
    }
    pub fn path(&self, folder_dir: &Path) -> PathBuf {
        folder_dir.join(if self.in_new { "new" } else { "cur" }).join(&self.filename)
    }
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
pub(super) struct State {
    pub(super) uidvalidity: u32,
    pub(super) next_uid: u32,
    pub(super) highest_modseq: u64,
    pub(super) first_recent: u32,
    pub(super) stamp: Option<(i128, i128)>,
    pub(super) entries: BTreeMap<u32, Entry>,
    pub(super) by_base: HashMap<String, u32, BaseHash>,
    /// (MODSEQ, UID) of every message: what changed since a MODSEQ, without a full walk
    /// (sessions sharing this state each remember the HIGHESTMODSEQ they last reported).
    pub(super) by_modseq: BTreeSet<(u64, u32)>,
    /// (MODSEQ, UID) of recent expunges, for the same purpose; at most [`TOMBSTONES`].
    tombstones: BTreeSet<(u64, u32)>,
    /// Tombstones at or below this MODSEQ were dropped: a session that last synced before it
    /// must compare its whole view (`Changes::resync`).
    tomb_floor: u64,
    /// Lines in the log, to decide when to compact.
    pub(super) records: usize,
}

/// Expunges remembered for sessions that have not synced since (see `State::tombstones`).
const TOMBSTONES: usize = 20_000;

impl State {
    /// `highest_modseq` is at least 1: RFC 7162 §3.1.1 — an empty mailbox reports
    /// HIGHESTMODSEQ 1 (mod-sequence-value is positive), and every change must get a MODSEQ
    /// above any a client has seen, so the first message is 2, never 1. Index files written
    /// before this rule (header `… 0`) get the same floor when read.
    pub(super) fn new(uidvalidity: u32, next_uid: u32, highest_modseq: u64) -> State {
        State {
            uidvalidity,
            next_uid: next_uid.max(1),
            highest_modseq: highest_modseq.max(1),
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

    pub(super) fn apply(&mut self, rec: Record, ch: &mut Changes) {
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
    pub(super) fn load_scan(&mut self, recs: Vec<Record>, ch: &mut Changes) {
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
    pub(super) fn diff(old: &State, new: &State, ch: &mut Changes) {
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

/// A replaced index file (compaction) holds no `-` records: remember the expunges the
/// comparison found, so sessions that look later still hear of them. Only within one
/// UIDVALIDITY: a file of another UIDVALIDITY (a rebuild, or another folder now under this
/// name) voids every UID sessions hold (RFC 3501 §2.3.1.1), and tombstones of the old UIDs
/// would expunge the new messages that reuse them (issue bug 1).
pub(super) fn carry_tombstones(old: &State, new: &mut State, diff: &Changes) {
    if old.uidvalidity != new.uidvalidity {
        return;
    }
    new.tombstones = old.tombstones.clone();
    new.tomb_floor = old.tomb_floor;
    let at = new.highest_modseq.max(old.highest_modseq);
    for &uid in &diff.expunged {
        new.tombstone(at, uid);
    }
}

pub(super) fn merge(into: &mut Changes, from: Changes) {
    into.uidvalidity_changed |= from.uidvalidity_changed;
    into.resync |= from.resync;
    for u in from.expunged {
        into.expunge(u);
    }
    into.added.extend(from.added);
    into.changed.extend(from.changed);
}

/// A hasher for file bases (keys we read from our own directories, so no defence against
/// chosen collisions is needed): a multiply-rotate over 8-byte words, several times cheaper
/// than std's SipHash on 60-byte names.
#[derive(Clone, Copy, Default)]
pub(super) struct BaseHash;

impl std::hash::BuildHasher for BaseHash {
    type Hasher = BaseHasher;
    fn build_hasher(&self) -> BaseHasher {
        BaseHasher(0)
    }
}

pub(super) struct BaseHasher(u64);

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
