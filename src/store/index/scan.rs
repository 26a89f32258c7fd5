//! The scanner: compares new/ and cur/ of a folder with its index and turns the differences
//! into log records (new files get UIDs in delivery order, renames by other Maildir clients
//! become updates, vanished files expunges), and rebuilds the index from the directories.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use nix::fcntl::AtFlags;

use super::log::Record;
use super::state::{BaseHash, Entry, NameInfo};
use super::{dir_mtimes, mtime_ns, now_ns, Changes, Index, IndexLock, DATE_UNKNOWN, STAMP_QUIET_NS};
use crate::durable;
use crate::store::name;

impl Index {
    /// Under the lock: compare new/ and cur/ with the index and record the differences.
    /// `move_new`: move files from new/ to cur/, as an IMAP server does when it has seen
    /// them (they stop being "new" for other Maildir readers).
    pub(super) fn scan(&mut self, lock: &IndexLock, move_new: bool, ch: &mut Changes) -> io::Result<()> {
        let (recs, seen) = self.scan_records_at(move_new)?;
        self.commit(lock, recs, ch)?;
        // Complete as of the mtimes the scan read the directories at (or, if it moved
        // files, right after): what changed later shows as a different mtime.
        self.soft_stamp = Some(seen);
        Ok(())
    }

    pub(super) fn scan_records(&self, move_new: bool) -> io::Result<Vec<Record>> {
        Ok(self.scan_records_at(move_new)?.0)
    }

    pub(super) fn scan_records_at(&self, move_new: bool) -> io::Result<(Vec<Record>, (i128, i128))> {
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
                durable::fsync_dir(&self.dir.join("new"))?;
                durable::fsync_dir(&self.dir.join("cur"))?;
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
        let seen = if moved { dir_mtimes(&self.dir).unwrap_or((0, 0)) } else { (m_new, m_cur) };
        Ok(Some((recs, seen)))
    }
}

/// (order key, index in `files`, mtime or [`DATE_UNKNOWN`], size) of each file in `todo`,
/// or None when one vanished. Only files whose name lacks the delivery time or `S=` are
/// stat'ed (the kernel's name lookup is most of a rebuild's time): with many of them the
/// work is split between threads.
#[allow(clippy::type_complexity)]
pub(super) fn stat_fresh(
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

pub(super) const SCAN_FILES_PER_THREAD: usize = 1000;

/// A file found by a scan.
pub(super) struct ScanFile {
    pub(super) name: String,
    /// The length of its base (the name up to `:`).
    pub(super) base_len: usize,
    pub(super) in_new: bool,
    /// An indexed message has this base.
    pub(super) matched: bool,
}

impl ScanFile {
    fn base(&self) -> &str {
        &self.name[..self.base_len]
    }
}

fn fstatat(dir: std::os::fd::RawFd, name: &str, flags: AtFlags) -> nix::Result<nix::sys::stat::FileStat> {
    nix::sys::stat::fstatat(Some(dir), name, flags)
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::store::index::tests::{folder, put};

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
}
