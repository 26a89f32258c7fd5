//! The one way to change an index: [`Index::write`] runs the write protocol around a
//! closure that stages its changes on a [`Tx`] (see the module docs of `index`).

use std::collections::BTreeSet;
use std::io;

use super::log::Record;
use super::state::{Entry, NameInfo};
use super::{Changes, Index, IndexLock};
use crate::store::name;

/// A message the caller has just put into new/ or cur/ (durably), for [`Tx::add`].
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The whole file name (base plus `:2,<letters>` in cur/).
    pub filename: String,
    pub in_new: bool,
    /// Internal date, Unix seconds (the file's mtime), or `DATE_UNKNOWN`.
    pub date: i64,
    /// The file size.
    pub size: u64,
    /// Keywords without a Dovecot letter (those with one are letters of `filename`).
    pub keywords: BTreeSet<String>,
}

/// An index transaction: the index lock is held, the log has been read to its end. Reads
/// ([`Tx::index`]) see the index as the transaction found it (and as each [`Tx::scan`] left
/// it); what is staged is applied when the closure returns Ok, in one durable append.
pub struct Tx<'a> {
    index: &'a mut Index,
    lock: &'a IndexLock,
    staged: Vec<Record>,
    /// The next UID and the highest MODSEQ handed out so far.
    next_uid: u32,
    modseq: u64,
    /// The index was complete before our own changes (`Index::dirs_unchanged`).
    was_complete: bool,
    /// Messages were added, changed or expunged: our own change of new/ or cur/.
    own_change: bool,
}

impl Index {
    /// Change the index: the write protocol, in one place. The caller holds the folder's
    /// in-process mutex (the `&mut self`: a folder's `Index` lives in the `Store`'s
    /// `Mutex`, so in-process writers take turns there); `write` takes the index lock
    /// (other processes), reads the log to its end (rebuilding a missing or unreadable
    /// index), notes whether the index was complete, runs `f`, appends what `f` staged in
    /// one write (fdatasynced unless only advisory `R`/`D` records) and, if `f` added,
    /// changed or expunged messages, records the directories' new mtimes as our own
    /// change, so the next sync need not rescan (`dirs_unchanged`).
    ///
    /// `f` does the file work first (a message durably in new/ or cur/ before its `+`, a
    /// rename before its `=`, an unlink before its `-`), then stages it. If `f` fails, or
    /// the commit does, nothing staged is applied, in memory or in the file, and the next
    /// sync rescans the folder (whatever `f` changed on disk shows up there).
    pub fn write<T>(&mut self, f: impl FnOnce(&mut Tx<'_>) -> io::Result<T>) -> io::Result<T> {
        let lock = IndexLock::acquire(&self.dir)?;
        let mut scratch = Changes::default();
        self.refresh_locked(&lock, &mut scratch)?;
        let mut tx = Tx {
            next_uid: self.state.next_uid,
            modseq: self.state.highest_modseq,
            was_complete: self.dirs_unchanged(),
            index: self,
            lock: &lock,
            staged: Vec::new(),
            own_change: false,
        };
        let result = f(&mut tx).and_then(|v| tx.commit_staged().map(|()| v));
        match &result {
            Ok(_) if tx.own_change => tx.index.note_own_change(tx.was_complete),
            Ok(_) => {}
            // The directories may hold changes the index does not describe.
            Err(_) => tx.index.soft_stamp = None,
        }
        result
    }
}

impl Tx<'_> {
    /// The index as this transaction sees it (without what is staged).
    pub fn index(&self) -> &Index {
        self.index
    }

    /// Give Dovecot letters to `wanted` keywords that have none yet (see
    /// `DovecotKeywords::assign`); [`Tx::index`]`().keywords()` shows them at once.
    pub fn assign_keywords(&mut self, wanted: &[&str]) -> io::Result<()> {
        let Index { dir, keywords, .. } = &mut *self.index;
        keywords.assign(dir, wanted)
    }

    /// Stage a new message; its UID (the next one, so UIDs ascend in the order of `add`).
    pub fn add(&mut self, m: NewMessage) -> u32 {
        let uid = self.next_uid;
        self.next_uid += 1;
        self.modseq += 1;
        self.staged.push(Record::Add(Entry {
            uid,
            modseq: self.modseq,
            date: m.date,
            size: m.size,
            in_new: m.in_new,
            keywords: m.keywords,
            filename: m.filename,
            info: NameInfo::default(),
        }));
        self.own_change = true;
        uid
    }

    /// Stage a change of message `uid`: its file renamed into cur/ as `cur_name`, and/or
    /// its index keywords replaced. None: no such message. Some(true): its flags or
    /// keywords changed, so it gets a new MODSEQ (RFC 7162 §3.1); Some(false): nothing to
    /// report (unchanged, or moved from new/ to cur/ with the same flags). Stage each
    /// message once per transaction: the change is made against the entry as found.
    pub fn update(
        &mut self,
        uid: u32,
        cur_name: Option<String>,
        keywords: Option<BTreeSet<String>>,
    ) -> Option<bool> {
        let e = self.index.state.entries.get(&uid)?;
        let mut n = e.clone();
        if let Some(name) = cur_name {
            n.filename = name;
            n.in_new = false;
        }
        if let Some(k) = keywords {
            n.keywords = k;
        }
        if n.filename == e.filename && n.in_new == e.in_new && n.keywords == e.keywords {
            return Some(false);
        }
        let flags_changed =
            name::sort_letters(n.letters()) != name::sort_letters(e.letters()) || n.keywords != e.keywords;
        if flags_changed {
            self.modseq += 1;
            n.modseq = self.modseq;
        }
        self.staged.push(Record::Update(n));
        self.own_change = true;
        Some(flags_changed)
    }

    /// Stage the expunge of `uid` (its file already unlinked, durably); false if the index
    /// has no such message.
    pub fn expunge(&mut self, uid: u32) -> bool {
        if !self.index.state.entries.contains_key(&uid) {
            return false;
        }
        // RFC 7162 §3.2: expunges raise HIGHESTMODSEQ.
        self.modseq += 1;
        self.staged.push(Record::Expunge { uid, modseq: self.modseq });
        self.own_change = true;
        true
    }

    /// Compare new/ and cur/ with the index and commit the differences now (what was
    /// staged before is committed first). `move_new`: move files from new/ to cur/, as an
    /// IMAP server does when it has seen them.
    pub fn scan(&mut self, move_new: bool) -> io::Result<()> {
        self.commit_staged()?;
        self.index.scan(self.lock, move_new, &mut Changes::default())?;
        self.next_uid = self.index.state.next_uid;
        self.modseq = self.index.state.highest_modseq;
        // Complete as of the scan: own changes staged after it keep it so.
        self.was_complete = self.index.dirs_unchanged();
        Ok(())
    }

    /// Claim \Recent (RFC 3501 §2.3.2) for the messages no session has claimed yet: stages
    /// the `R` record and returns their UIDs.
    pub fn claim_recent(&mut self) -> impl Iterator<Item = u32> + '_ {
        let (first, next) = (self.index.state.first_recent, self.index.state.next_uid);
        if first < next {
            self.staged.push(Record::Recent(next));
        }
        self.index.state.entries.range(first..).map(|(u, _)| *u)
    }

    fn commit_staged(&mut self) -> io::Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let recs = std::mem::take(&mut self.staged);
        self.index.commit(self.lock, recs, &mut Changes::default())
    }
}
