//! Maildir++ mail storage with a UID index per folder.
//!
//! # Layout (as Dovecot's Maildir++ with the `:UTF-8` option, so its tools, backups and
//! migrations work on it)
//!
//! ```text
//! {root}/{domain}/{localpart}/            INBOX: cur/ new/ tmp/
//!     subscriptions                       subscribed folder names, one a line
//!     posthaste-uidlist(.lock)            INBOX's UID index (see `index`)
//!     posthaste-uidvalidity               the last UIDVALIDITY given to any folder
//!     .Sent/ .Drafts/ .Junk/ .Trash/ .Archive/
//!     .Archive.2024/                      folder "Archive.2024": hierarchy by `.`
//!         cur/ new/ tmp/ maildirfolder posthaste-uidlist(.lock)
//! ```
//!
//! Folder names in this API are the names on disk without the leading dot: `.` separates
//! hierarchy levels (the IMAP delimiter the IMAP layer announces), names are UTF-8 (the IMAP
//! layer converts from modified UTF-7, RFC 3501 §5.1.3). "INBOX" in any case is the INBOX
//! (RFC 3501 §5.1).
//!
//! Everything here is synchronous std::fs; async callers use `spawn_blocking`.

mod index;
mod mailbox;
mod name;
mod retire;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::address::Address;
use crate::durable::{self, fsync_dir, FileLock};

pub use index::{CachedMessage, Changes};
pub use mailbox::{
    is_folder_replaced, CopyResult, FlagOp, FolderReplaced, Mailbox, Message, MessageRef, StoreResult,
    Summary, SYSTEM_FLAGS,
};
pub use retire::ARCHIVE_DIR;

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// The in-memory index of every folder in use, one per folder and process, shared by
    /// deliveries and by every session that has the folder open. A delivery reads only the
    /// index lines appended since the last one instead of parsing the whole file (without
    /// it, delivery cost grew with the mailbox size), a SELECT of a folder in use costs no
    /// parse, and a session holds no copy of the index and no descriptor of its own
    /// (docs/benchmarks.md).
    indexes: std::sync::Arc<IndexCache>,
}

/// A folder's index as the store shares it.
pub(crate) type SharedIndex = std::sync::Arc<std::sync::Mutex<index::Index>>;

/// Folder indexes kept between uses; beyond [`IndexCache::CAPACITY`] the ones nobody holds
/// are dropped.
///
/// An entry belongs to one folder *directory*, not to a path: a folder deleted and created
/// again under the same name (by IMAP DELETE + CREATE, RENAME onto an old name, or another
/// program removing and remaking it) is another folder with other messages, and its
/// predecessor's in-memory state (UIDs, expunge tombstones, MODSEQs, cached message data)
/// must not be taken for its own — that once hid appended mail behind `* 1 EXPUNGE` lines
/// (tests/it/imap.rs, `deleted_and_recreated_folder_shows_its_appends`). So each entry
/// remembers the identity of the folder's `cur/` ([`FolderId`]) it was made for, the store
/// drops entries when it deletes, renames or creates a folder, and `get` replaces an entry
/// whose directory is no longer the one it describes. Sessions that still hold the old
/// entry notice at their next sync (the index file they find has another UIDVALIDITY, or
/// is gone) and end (RFC 3501 §2.3.1.1).
#[derive(Default)]
struct IndexCache {
    map: std::sync::Mutex<std::collections::HashMap<PathBuf, (SharedIndex, FolderId)>>,
    /// Bytes in the message caches of all folders (see `index::MessageCache`).
    cached_bytes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Which directory a folder's `cur/` is: device, inode and birth time (0 where the file
/// system does not record one). The inode alone is not enough: a directory made right after
/// another was removed often gets the freed inode number back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FolderId(u64, u64, i128);

impl FolderId {
    /// The identity of the folder at `dir`, or None if it has no `cur/` (no such folder).
    /// One stat, the one callers need anyway to know the folder exists.
    pub(crate) fn of(dir: &Path) -> io::Result<Option<FolderId>> {
        match std::fs::metadata(dir.join("cur")) {
            Ok(m) if m.is_dir() => {
                let born = m
                    .created()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as i128);
                Ok(Some(FolderId(m.dev(), m.ino(), born)))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache").field("folders", &self.map.lock().map(|m| m.len()).unwrap_or(0)).finish()
    }
}

impl IndexCache {
    /// A few hundred busy folders fit; beyond that the cache starts over (a cold entry
    /// costs one full index read, as before the cache existed).
    const CAPACITY: usize = 256;

    /// The shared index of the folder at `dir`, whose `cur/` is `id` (see [`FolderId::of`]).
    fn get(&self, dir: &Path, id: FolderId) -> SharedIndex {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((i, known)) = map.get(dir) {
            if *known == id {
                return i.clone();
            }
            // Another directory under the same name: a new folder, a new index.
        }
        if map.len() >= Self::CAPACITY {
            // Folders an open session holds stay: dropping them would split their state.
            map.retain(|_, (i, _)| std::sync::Arc::strong_count(i) > 1);
        }
        let mut index = index::Index::with_cache_total(dir.to_path_buf(), self.cached_bytes.clone());
        index.set_uidvalidity_file(account_dir_of(dir).join(index::UIDVALIDITY_FILE));
        let i = std::sync::Arc::new(std::sync::Mutex::new(index));
        map.insert(dir.to_path_buf(), (i.clone(), id));
        i
    }

    /// Forget the folders at `dir` and, with `subfolders`, every folder below it in the
    /// Maildir++ tree (`dir` + `.name`): they were deleted, renamed or replaced. Sessions
    /// holding them keep their copy until they notice (see the type's docs).
    fn forget(&self, dir: &Path, subfolders: bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let prefix = format!("{}.", dir.display());
        map.retain(|p, _| p != dir && !(subfolders && p.to_string_lossy().starts_with(&prefix)));
    }

    /// Forget every folder of the account at `account_dir` (its mailbox was removed).
    fn forget_account(&self, account_dir: &Path) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|p, _| !p.starts_with(account_dir));
    }
}

/// The account directory (INBOX) a folder directory belongs to: Maildir++ subfolders are
/// `.name` directories inside it.
fn account_dir_of(dir: &Path) -> &Path {
    match (dir.file_name(), dir.parent()) {
        (Some(n), Some(parent)) if n.to_string_lossy().starts_with('.') => parent,
        _ => dir,
    }
}

#[derive(Debug, Clone)]
pub struct Delivered {
    pub uid: u32,
    pub uidvalidity: u32,
    pub path: PathBuf,
}

/// The special-use folders every new account gets (RFC 6154).
pub const SPECIAL_FOLDERS: [&str; 5] = ["Sent", "Drafts", "Junk", "Trash", "Archive"];

/// The RFC 6154 §2 attribute of a special folder, for LIST.
pub fn special_use(folder: &str) -> Option<&'static str> {
    match folder {
        "Sent" => Some("\\Sent"),
        "Drafts" => Some("\\Drafts"),
        "Junk" => Some("\\Junk"),
        "Trash" => Some("\\Trash"),
        "Archive" => Some("\\Archive"),
        _ => None,
    }
}

/// A message flag: the IMAP system flags that have a Maildir letter, and keywords.
/// `\Recent` is not a flag here: it is session state (`Message::recent`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    Seen,
    Answered,
    Flagged,
    Deleted,
    Draft,
    /// A keyword (RFC 3501 §2.3.2). `$Forwarded` is stored as the Maildir `P` (passed)
    /// letter, so other Maildir clients see it; other keywords are Dovecot's a–z letters
    /// (see `index::DovecotKeywords`), or live in our index when a folder has all 26.
    Keyword(String),
}

impl Flag {
    /// Parse an IMAP flag (`\Seen`, system flags case-insensitively, or a keyword atom).
    /// `\Recent` and unknown `\` flags are refused: clients cannot set them (RFC 3501 §2.3.2).
    pub fn parse(s: &str) -> Option<Flag> {
        if let Some(sys) = s.strip_prefix('\\') {
            return match sys.to_ascii_lowercase().as_str() {
                "seen" => Some(Flag::Seen),
                "answered" => Some(Flag::Answered),
                "flagged" => Some(Flag::Flagged),
                "deleted" => Some(Flag::Deleted),
                "draft" => Some(Flag::Draft),
                _ => None,
            };
        }
        is_keyword(s).then(|| Flag::Keyword(s.to_owned()))
    }

    /// The IMAP spelling.
    pub fn as_imap(&self) -> &str {
        match self {
            Flag::Seen => "\\Seen",
            Flag::Answered => "\\Answered",
            Flag::Flagged => "\\Flagged",
            Flag::Deleted => "\\Deleted",
            Flag::Draft => "\\Draft",
            Flag::Keyword(k) => k,
        }
    }

    /// The Maildir letter of this flag, if it has one.
    fn letter(&self) -> Option<char> {
        match self {
            Flag::Seen => Some('S'),
            Flag::Answered => Some('R'),
            Flag::Flagged => Some('F'),
            Flag::Deleted => Some('T'),
            Flag::Draft => Some('D'),
            Flag::Keyword(k) if k.eq_ignore_ascii_case("$Forwarded") => Some('P'),
            Flag::Keyword(_) => None,
        }
    }

    fn from_letter(c: char) -> Option<Flag> {
        Some(match c {
            'S' => Flag::Seen,
            'R' => Flag::Answered,
            'F' => Flag::Flagged,
            'T' => Flag::Deleted,
            'D' => Flag::Draft,
            'P' => Flag::Keyword("$Forwarded".to_owned()),
            _ => return None,
        })
    }
}

/// RFC 3501 §9: `flag-keyword = atom`; an atom is 1*ATOM-CHAR, i.e. printable ASCII except
/// `( ) { SP % * " \ ]`. This also keeps keywords safe for the index format.
pub fn is_keyword(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| (0x21..0x7f).contains(&b) && !b"(){%*\"\\]".contains(&b))
}

/// One folder of an account, for LIST/LSUB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub name: String,
    pub subscribed: bool,
    /// RFC 6154 attribute (`\Sent`, …).
    pub special_use: Option<&'static str>,
}

/// Disk use of an account (quota).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub messages: u64,
}

const SUBSCRIPTIONS: &str = "subscriptions";
const FOLDERS_LOCK: &str = "posthaste-folders.lock";

fn not_found(folder: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("folder {folder:?} does not exist"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Check a folder name and return its canonical form ("INBOX" for any case of it).
pub fn validate_folder(name: &str) -> io::Result<String> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok("INBOX".to_owned());
    }
    let bad = |why: &str| Err(invalid(format!("folder name {name:?} is not allowed: {why}")));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return bad("'.' separates levels, so a name cannot start or end with it or hold \"..\"");
    }
    if name.contains('/') {
        return bad("it contains '/'");
    }
    if name.chars().any(char::is_control) {
        return bad("it contains control characters");
    }
    // NAME_MAX is 255 bytes for the directory `.<name>`; keep room for our temporary names.
    if name.len() > 200 {
        return bad("it is longer than 200 bytes");
    }
    Ok(name.to_owned())
}

/// Create `dir` and its missing parents, fsyncing each parent that got a new entry, so a
/// delivery that follows survives a crash together with its directories.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// Where a new message goes: new/ (deliveries: unseen by any client yet) or cur/ with flags
/// (APPEND, COPY).
#[derive(Clone, Copy)]
enum Target<'a> {
    New,
    Cur(&'a str),
}

impl Store {
    /// `root` is `{data_dir}/mail`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into(), indexes: Default::default() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `{root}/{domain}/{localpart}`: the INBOX of the account.
    pub fn account_dir(&self, account: &Address) -> PathBuf {
        self.root.join(account.domain()).join(account.local())
    }

    /// The directory of a folder (validated; it may not exist).
    pub fn folder_dir(&self, account: &Address, folder: &str) -> io::Result<PathBuf> {
        let folder = validate_folder(folder)?;
        let base = self.account_dir(account);
        Ok(if folder == "INBOX" { base } else { base.join(format!(".{folder}")) })
    }

    pub fn folder_exists(&self, account: &Address, folder: &str) -> io::Result<bool> {
        Ok(self.folder_dir(account, folder)?.join("cur").is_dir())
    }

    /// Create INBOX and the special folders, subscribed (idempotent).
    pub fn create_account(&self, account: &Address) -> io::Result<()> {
        let base = self.account_dir(account);
        for sub in ["cur", "new", "tmp"] {
            create_dir_durable(&base.join(sub))?;
        }
        let _lock = FileLock::acquire(&base.join(FOLDERS_LOCK))?;
        for f in SPECIAL_FOLDERS {
            if !self.folder_exists(account, f)? {
                self.make_folder(&base, f)?;
            }
        }
        if !base.join(SUBSCRIPTIONS).exists() {
            let mut subs: BTreeSet<String> = SPECIAL_FOLDERS.iter().map(|s| s.to_string()).collect();
            subs.insert("INBOX".to_owned());
            write_subscriptions(&base, &subs)?;
        }
        Ok(())
    }

    /// Durably deliver `message` into `folder` ("INBOX" or a folder name such as "Junk"):
    /// write to tmp/, fsync, rename into new/, fsync the directory, assign the next UID.
    /// The account and folder are created if missing (a filter may file into "Junk" before
    /// the user ever logged in).
    pub fn deliver(&self, account: &Address, folder: &str, message: &[u8]) -> io::Result<Delivered> {
        let dir = self.folder_dir(account, folder)?;
        let id = match FolderId::of(&dir)? {
            Some(id) => id,
            None => {
                self.create_account(account)?;
                if FolderId::of(&dir)?.is_none() {
                    match self.create_folder(account, folder) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                        _ => {}
                    }
                }
                FolderId::of(&dir)?.ok_or_else(|| not_found(folder))?
            }
        };
        let tmp = write_tmp(&dir, message, None)?;
        self.index_new_message(&dir, id, tmp, None, message.len() as u64)
    }

    /// Put the message written to tmp/ into new/ or cur/ and give it its UID, both under the
    /// folder's index lock, so the index stays complete and our own change does not force
    /// the next session to rescan the folder (`Index::note_own_change`).
    fn index_new_message(
        &self,
        dir: &Path,
        id: FolderId,
        tmp: Tmp,
        cur_flags: Option<&[Flag]>,
        size: u64,
    ) -> io::Result<Delivered> {
        let cached = self.indexes.get(dir, id);
        // In-process deliveries to one folder queue here; other processes on the index lock.
        let mut idx = cached.lock().unwrap_or_else(|e| e.into_inner());
        let date = tmp.mtime;
        let tmp_path = tmp.path.clone();
        let mut tmp = Some(tmp);
        let delivered = idx.write(|tx| {
            // Keywords become Dovecot letters where the folder has (or can give) one.
            let (letters, keywords) = match cur_flags {
                None => (String::new(), BTreeSet::new()),
                Some(flags) => {
                    let names: Vec<&str> =
                        flags.iter().filter(|f| f.letter().is_none()).map(Flag::as_imap).collect();
                    tx.assign_keywords(&names)?;
                    let (kw_letters, rest) = mailbox::encode(
                        &names.iter().map(|k| k.to_string()).collect(),
                        tx.index().keywords(),
                    );
                    let system: String = flags.iter().filter_map(Flag::letter).collect();
                    (system + &kw_letters, rest)
                }
            };
            let target = if cur_flags.is_some() { Target::Cur(&letters) } else { Target::New };
            let (filename, in_new) = link_into(dir, tmp.take().expect("linked once"), target)?;
            let known = tx.index().uid_of_base(name::base(&filename)).and_then(|uid| tx.index().get(uid));
            let (uid, path) = match known.map(|e| (e.uid(), e.path(dir))) {
                // Indexed under this base already (our names are unique, so only the same
                // file found by someone else): keep its UID, add the keywords.
                Some((uid, path)) => {
                    if !keywords.is_empty() {
                        tx.update(uid, None, Some(keywords));
                    }
                    (uid, path)
                }
                None => {
                    let path = dir.join(if in_new { "new" } else { "cur" }).join(&filename);
                    (tx.add(index::NewMessage { filename, in_new, date, size, keywords }), path)
                }
            };
            Ok(Delivered { uid, uidvalidity: tx.index().uidvalidity(), path })
        });
        if delivered.is_err() && tmp.is_some() {
            // Never linked (the lock, the index or the keywords failed): nothing to keep.
            let _ = std::fs::remove_file(&tmp_path);
        }
        delivered
    }

    /// IMAP APPEND (RFC 3501 §6.3.11): store `message` in `folder` with `flags` and the
    /// internal date `date` (now if None). The folder must exist: RFC 3501 wants the client
    /// to be told [TRYCREATE], so the caller maps NotFound to that.
    pub fn append(
        &self,
        account: &Address,
        folder: &str,
        message: &[u8],
        flags: &[Flag],
        date: Option<SystemTime>,
    ) -> io::Result<Delivered> {
        let dir = self.folder_dir(account, folder)?;
        let id = FolderId::of(&dir)?.ok_or_else(|| not_found(folder))?;
        let tmp = write_tmp(&dir, message, date)?;
        self.index_new_message(&dir, id, tmp, Some(flags), message.len() as u64)
    }

    /// Open a folder for reading and changing (IMAP SELECT/EXAMINE, a POP3 session). It is
    /// synced at once. `claim_recent`: this session takes \Recent for the messages no
    /// session has seen yet (RFC 3501 §2.3.2; SELECT and POP3 do, EXAMINE does not).
    pub fn open_mailbox(&self, account: &Address, folder: &str, claim_recent: bool) -> io::Result<Mailbox> {
        let canonical = validate_folder(folder)?;
        let dir = self.folder_dir(account, &canonical)?;
        let id = FolderId::of(&dir)?.ok_or_else(|| not_found(folder))?;
        Mailbox::open(self.clone(), account.clone(), canonical, dir, id, claim_recent)
    }

    /// All folders of the account, INBOX first, with their subscription state.
    pub fn list_folders(&self, account: &Address) -> io::Result<Vec<FolderInfo>> {
        let base = self.account_dir(account);
        let subs = read_subscriptions(&base)?;
        let mut names = Vec::new();
        for de in std::fs::read_dir(&base)? {
            let de = de?;
            if !de.file_type()?.is_dir() {
                continue;
            }
            let Ok(fname) = de.file_name().into_string() else { continue };
            if let Some(n) = fname.strip_prefix('.') {
                if validate_folder(n).is_ok() && n != "INBOX" {
                    names.push(n.to_owned());
                }
            }
        }
        names.sort();
        let mut out = vec![FolderInfo {
            name: "INBOX".to_owned(),
            subscribed: subs.contains("INBOX"),
            special_use: None,
        }];
        out.extend(names.into_iter().map(|n| FolderInfo {
            subscribed: subs.contains(&n),
            special_use: special_use(&n),
            name: n,
        }));
        Ok(out)
    }

    /// The subscribed names (they need not exist: RFC 3501 §6.3.9 LSUB lists them anyway).
    pub fn subscriptions(&self, account: &Address) -> io::Result<BTreeSet<String>> {
        read_subscriptions(&self.account_dir(account))
    }

    pub fn subscribe(&self, account: &Address, folder: &str) -> io::Result<()> {
        self.change_subscription(account, folder, true)
    }

    pub fn unsubscribe(&self, account: &Address, folder: &str) -> io::Result<()> {
        self.change_subscription(account, folder, false)
    }

    fn change_subscription(&self, account: &Address, folder: &str, on: bool) -> io::Result<()> {
        let folder = validate_folder(folder)?;
        let base = self.account_dir(account);
        let _lock = FileLock::acquire(&base.join(FOLDERS_LOCK))?;
        let mut subs = read_subscriptions(&base)?;
        let changed = if on { subs.insert(folder) } else { subs.remove(&folder) };
        if changed {
            write_subscriptions(&base, &subs)?;
        }
        Ok(())
    }

    /// IMAP CREATE. Missing superior levels are created too (RFC 3501 §6.3.3).
    pub fn create_folder(&self, account: &Address, folder: &str) -> io::Result<()> {
        let folder = validate_folder(folder)?;
        if folder == "INBOX" {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "INBOX always exists"));
        }
        let base = self.account_dir(account);
        let _lock = FileLock::acquire(&base.join(FOLDERS_LOCK))?;
        if self.folder_exists(account, &folder)? {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("folder {folder:?} already exists"),
            ));
        }
        for (i, _) in folder.match_indices('.') {
            let parent = &folder[..i];
            if !self.folder_exists(account, parent)? {
                self.make_folder(&base, parent)?;
            }
        }
        self.make_folder(&base, &folder)
    }

    /// Create `.{folder}` complete or not at all: it is built under a name Dovecot ignores
    /// (no leading dot) and renamed into place, so a crash never leaves a folder without
    /// cur/ new/ tmp/.
    fn make_folder(&self, base: &Path, folder: &str) -> io::Result<()> {
        let tmp = base.join(format!("posthaste-new-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&tmp)?;
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir(tmp.join(sub))?;
        }
        // Dovecot marks Maildir++ subfolders with an empty `maildirfolder` file.
        File::create(tmp.join("maildirfolder"))?.sync_all()?;
        fsync_dir(&tmp)?;
        let dest = base.join(format!(".{folder}"));
        // Whatever the store remembers of an earlier folder of this name is not this one's.
        self.indexes.forget(&dest, false);
        if dest.exists() {
            std::fs::remove_dir_all(&tmp)?;
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("folder {folder:?} already exists"),
            ));
        }
        std::fs::rename(&tmp, &dest)?;
        fsync_dir(base)
    }

    /// IMAP DELETE. The folder's messages go with it; its subfolders stay (they are separate
    /// Maildirs in Maildir++, and RFC 3501 §6.3.4 does not remove inferior names). The
    /// subscription is kept, as RFC 3501 §6.3.9 lets LSUB list deleted names.
    pub fn delete_folder(&self, account: &Address, folder: &str) -> io::Result<()> {
        let folder = validate_folder(folder)?;
        if folder == "INBOX" {
            return Err(invalid("INBOX cannot be deleted (RFC 3501 §6.3.4)".to_owned()));
        }
        let base = self.account_dir(account);
        let _lock = FileLock::acquire(&base.join(FOLDERS_LOCK))?;
        let dir = base.join(format!(".{folder}"));
        if !dir.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("folder {folder:?} does not exist")));
        }
        // Rename first so the folder vanishes atomically; then remove at leisure (a crash
        // leaves only a directory no client lists).
        let gone = base.join(format!("posthaste-deleted-{}", uuid::Uuid::new_v4().simple()));
        std::fs::rename(&dir, &gone)?;
        self.indexes.forget(&dir, false);
        fsync_dir(&base)?;
        std::fs::remove_dir_all(&gone)
    }

    /// IMAP RENAME: the folder and all its subfolders move (RFC 3501 §6.3.5); their
    /// messages keep UIDs and UIDVALIDITY. Subscriptions follow the new names. Renaming
    /// INBOX moves its messages into a new folder and leaves INBOX empty, as §6.3.5 asks.
    pub fn rename_folder(&self, account: &Address, from: &str, to: &str) -> io::Result<()> {
        let from = validate_folder(from)?;
        let to = validate_folder(to)?;
        if to == "INBOX" {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "INBOX always exists"));
        }
        if from == "INBOX" {
            self.create_folder(account, &to)?;
            let mut inbox = self.open_mailbox(account, "INBOX", false)?;
            let uids: Vec<u32> = inbox.uids();
            inbox.move_to(&uids, &to)?;
            return Ok(());
        }
        if to.starts_with(&format!("{from}.")) {
            return Err(invalid(format!("cannot rename {from:?} into its own subfolder {to:?}")));
        }
        let base = self.account_dir(account);
        let lock = FileLock::acquire(&base.join(FOLDERS_LOCK))?;
        if !self.folder_exists(account, &from)? {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("folder {from:?} does not exist")));
        }
        let child_prefix = format!(".{from}.");
        let mut moves = vec![(format!(".{from}"), format!(".{to}"))];
        for de in std::fs::read_dir(&base)? {
            let n = de?.file_name().to_string_lossy().into_owned();
            if let Some(rest) = n.strip_prefix(&child_prefix) {
                moves.push((n.clone(), format!(".{to}.{rest}")));
            }
        }
        for (_, dest) in &moves {
            if base.join(dest).exists() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("folder {:?} already exists", &dest[1..]),
                ));
            }
        }
        for (i, _) in to.match_indices('.') {
            let parent = &to[..i];
            if !self.folder_exists(account, parent)? {
                self.make_folder(&base, parent)?;
            }
        }
        for (src, dest) in &moves {
            std::fs::rename(base.join(src), base.join(dest))?;
            // The folder is now at `dest`, and nothing is at `src`: both names' entries go
            // (a session with the folder selected keeps its own until it notices).
            self.indexes.forget(&base.join(src), false);
            self.indexes.forget(&base.join(dest), false);
        }
        fsync_dir(&base)?;
        let subs = read_subscriptions(&base)?;
        let renamed: BTreeSet<String> = subs
            .iter()
            .map(|s| match s.strip_prefix(from.as_str()) {
                Some("") => to.clone(),
                Some(rest) if rest.starts_with('.') => format!("{to}{rest}"),
                _ => s.clone(),
            })
            .collect();
        if renamed != subs {
            write_subscriptions(&base, &renamed)?;
        }
        drop(lock);
        Ok(())
    }

    /// Bytes and messages in all folders of the account (quota). Uses `S=` from the file
    /// names where present, so it stats only messages from writers that leave it out.
    pub fn account_usage(&self, account: &Address) -> io::Result<Usage> {
        let base = self.account_dir(account);
        let mut dirs = vec![base.clone()];
        match std::fs::read_dir(&base) {
            Ok(rd) => {
                for de in rd {
                    let de = de?;
                    if de.file_name().to_string_lossy().starts_with('.') && de.file_type()?.is_dir() {
                        dirs.push(de.path());
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Usage::default()),
            Err(e) => return Err(e),
        }
        let mut usage = Usage::default();
        for dir in dirs {
            for sub in ["cur", "new"] {
                let rd = match std::fs::read_dir(dir.join(sub)) {
                    Ok(rd) => rd,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                for de in rd {
                    let de = de?;
                    let fname = de.file_name().to_string_lossy().into_owned();
                    if fname.starts_with('.') {
                        continue;
                    }
                    let size = match name::size_from_base(name::base(&fname)) {
                        Some(s) => s,
                        None => match de.metadata() {
                            Ok(m) => m.len(),
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => return Err(e),
                        },
                    };
                    usage.bytes += size;
                    usage.messages += 1;
                }
            }
        }
        Ok(usage)
    }

    /// Total bytes of the account (quota).
    pub fn account_size(&self, account: &Address) -> io::Result<u64> {
        Ok(self.account_usage(account)?.bytes)
    }
}

fn read_subscriptions(base: &Path) -> io::Result<BTreeSet<String>> {
    match std::fs::read_to_string(base.join(SUBSCRIPTIONS)) {
        // Dovecot 2.3 may write a `V\t2` header and tab-separated levels; read both forms.
        Ok(s) => Ok(s
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with("V\t"))
            .map(|l| l.replace('\t', "."))
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e),
    }
}

/// One name a line, the form every Dovecot version reads; atomically (tmp + rename). The
/// temporary has no leading dot: in a Maildir++ root a dot starts a folder name.
fn write_subscriptions(base: &Path, subs: &BTreeSet<String>) -> io::Result<()> {
    let mut text = String::new();
    for s in subs {
        text.push_str(s);
        text.push('\n');
    }
    // 0666 less the umask, as File::create made it.
    durable::AtomicWrite::new(0o666)
        .temp_at(&base.join("subscriptions.posthaste-tmp"))
        .write(&base.join(SUBSCRIPTIONS), text.as_bytes())
}

/// A message written and fsynced in tmp/, not yet visible.
struct Tmp {
    path: PathBuf,
    base: String,
    /// The file's mtime: the internal date.
    mtime: i64,
}

/// Write a message durably into tmp/ of the Maildir at `dir` (created exclusively, fsynced).
fn write_tmp(dir: &Path, data: &[u8], date: Option<SystemTime>) -> io::Result<Tmp> {
    for _ in 0..100 {
        let base = name::new_base(data.len() as u64, Some(name::crlf_size(data)));
        let path = dir.join("tmp").join(&base);
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = (|| {
            f.write_all(data)?;
            if let Some(d) = date {
                // The internal date of APPEND is the file's mtime, as Dovecot keeps it.
                f.set_modified(d)?;
            }
            f.sync_all()?;
            f.metadata()
        })();
        return match written {
            Ok(m) => Ok(Tmp { path, base, mtime: m.mtime() }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        };
    }
    Err(io::Error::other("could not find a unique Maildir file name"))
}

/// Move a message from tmp/ into new/ or cur/: a hard link (which, unlike rename, never
/// replaces an existing file; a new base name if one exists), an fsync of that directory,
/// then the unlink from tmp/. Returns (file name, in new/). The tmp file is gone afterwards
/// in every case.
fn link_into(dir: &Path, tmp: Tmp, target: Target) -> io::Result<(String, bool)> {
    let size = name::size_from_base(&tmp.base).unwrap_or(0);
    let vsize = name::vsize_from_base(&tmp.base);
    let mut base = tmp.base.clone();
    let result = (|| {
        for _ in 0..100 {
            let (sub, filename, in_new) = match target {
                Target::New => ("new", base.clone(), true),
                Target::Cur(letters) => ("cur", name::with_flags(&base, letters), false),
            };
            let dest = dir.join(sub).join(&filename);
            match std::fs::hard_link(&tmp.path, &dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    base = name::new_base(size, vsize);
                    continue;
                }
                // Filesystems without hard links: rename (the name is unique enough).
                Err(_) => std::fs::rename(&tmp.path, &dest)?,
            }
            fsync_dir(&dir.join(sub))?;
            return Ok((filename, in_new));
        }
        Err(io::Error::other("could not find a unique Maildir file name"))
    })();
    let _ = std::fs::remove_file(&tmp.path);
    result
}

#[cfg(test)]
mod tests;
