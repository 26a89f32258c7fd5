//! Durable file primitives: how posthaste replaces a file, makes directory entries durable
//! and locks a file between tasks and processes. The spool, the store (index, subscriptions),
//! certificates, DKIM keys, the ban list and the installer all use these, so the crash
//! contract is written and tested once.
//!
//! - [`AtomicWrite`] / [`write_atomic`]: write a temporary file in the target's file system,
//!   fsync it, rename it over the target, fsync the target's directory. A reader sees the
//!   old contents or the new, never a part; once it returns, the new contents survive a
//!   crash (POSIX makes the rename durable only with the fsync of the directory).
//! - [`fsync_dir`]: make the creation, rename or removal of directory entries durable.
//! - [`FileLock`]: an exclusive `flock(2)` on an open file, released when dropped or when the
//!   process dies. The one lock idiom of the tree: std's `File::lock`, which is `flock(2)`
//!   on Linux, so the lock belongs to the open file (two descriptors in one process exclude
//!   each other as two processes do) and an older binary that still calls `flock(2)` itself
//!   interlocks with this one during an upgrade.
//!
//! A leaf: it imports nothing of posthaste.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// fsync a directory, so that entries created, renamed or removed in it survive a crash.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace `path` with `data` ([`AtomicWrite`] with its defaults and `mode`).
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    AtomicWrite::new(mode).write(path, data)
}

/// How [`AtomicWrite::write`] replaces a file. Errors name the step and the path and keep
/// the `io::ErrorKind` of the failing call; the temporary is removed on every error.
#[derive(Debug, Clone)]
pub struct AtomicWrite<'a> {
    mode: u32,
    exact_mode: bool,
    owner: Option<(u32, u32)>,
    temp: Temp<'a>,
}

#[derive(Debug, Clone)]
enum Temp<'a> {
    /// `.{name}.posthaste-tmp` beside the target.
    Beside,
    /// This path (a fixed name, same protocol as `Beside`).
    At(&'a Path),
    /// A new unique name in this directory.
    UniqueIn(&'a Path),
}

/// Unique temporary names within the process (the pid makes them unique between processes).
static UNIQUE: AtomicU64 = AtomicU64::new(0);

impl<'a> AtomicWrite<'a> {
    /// The new file is created with `mode` (filtered by the umask, as open(2) does) and the
    /// temporary is `.{name}.posthaste-tmp` beside the target (see [`AtomicWrite::temp_at`]).
    pub fn new(mode: u32) -> AtomicWrite<'a> {
        AtomicWrite { mode, exact_mode: false, owner: None, temp: Temp::Beside }
    }

    /// Give the file exactly `mode`, whatever the umask (fchmod before the rename).
    pub fn exact_mode(mut self) -> Self {
        self.exact_mode = true;
        self
    }

    /// Give the file this owner before it is renamed into place (root writing files that an
    /// unprivileged daemon must keep writing).
    pub fn owner(mut self, owner: Option<(u32, u32)>) -> Self {
        self.owner = owner;
        self
    }

    /// Use this fixed path as the temporary (in the target's file system). A fixed name, as
    /// the default one beside the target, means a temporary left by a crash is found and
    /// removed by the next write of the same file, so nothing accumulates; writers of the
    /// same file take turns on an flock of the temporary (see [`AtomicWrite::write`]).
    pub fn temp_at(mut self, temp: &'a Path) -> Self {
        self.temp = Temp::At(temp);
        self
    }

    /// Use a new unique name in `dir` (the target's file system) as the temporary: no lock
    /// and no stale check, so for files written often, in a directory of temporaries whose
    /// owner clears it after a crash (the spool's `tmp/`, emptied by `Spool::recover`).
    pub fn temp_in(mut self, dir: &'a Path) -> Self {
        self.temp = Temp::UniqueIn(dir);
        self
    }

    /// Replace `path` with `data`: temporary created exclusively, written, fsynced, renamed
    /// over `path`, the directory of `path` fsynced.
    ///
    /// With a fixed temporary name, the writer holds an flock on its temporary from creation
    /// to rename. A writer that finds the name taken waits while the holder is alive and
    /// removes it when nobody holds it (a crash left it); each writer checks, once it holds
    /// the lock, that the name still leads to its own file, so a temporary removed as stale
    /// in the instant between its creation and its lock is simply made again.
    pub fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let (tmp, file) = match self.temp {
            Temp::Beside => {
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                let tmp = dir.join(format!(".{name}.posthaste-tmp"));
                let f = self.claim_fixed(&tmp)?;
                (tmp, f)
            }
            Temp::At(tmp) => (tmp.to_path_buf(), self.claim_fixed(tmp)?),
            Temp::UniqueIn(tmp_dir) => self.create_unique(tmp_dir, path)?,
        };
        let result = (|| {
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                    .map_err(|e| context(e, format_args!("cannot chown {}", tmp.display())))?;
            }
            if self.exact_mode {
                file.set_permissions(std::fs::Permissions::from_mode(self.mode))
                    .map_err(|e| context(e, format_args!("cannot chmod {}", tmp.display())))?;
            }
            (&file)
                .write_all(data)
                .map_err(|e| context(e, format_args!("cannot write {}", tmp.display())))?;
            file.sync_all().map_err(|e| context(e, format_args!("cannot fsync {}", tmp.display())))?;
            std::fs::rename(&tmp, path)
                .map_err(|e| context(e, format_args!("cannot replace {}", path.display())))
        })();
        if result.is_err() {
            // Not renamed, so still ours: we hold its lock (fixed name) or it has a name
            // nobody else uses. (After the rename the name may already be another writer's.)
            let _ = std::fs::remove_file(&tmp);
        }
        // The lock of a fixed temporary is released once its name is free again.
        drop(file);
        result?;
        fsync_dir(dir).map_err(|e| context(e, format_args!("cannot fsync the directory {}", dir.display())))
    }

    fn open_new(&self, tmp: &Path) -> io::Result<File> {
        OpenOptions::new().write(true).create_new(true).mode(self.mode).open(tmp)
    }

    fn create_unique(&self, tmp_dir: &Path, path: &Path) -> io::Result<(PathBuf, File)> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        for _ in 0..100 {
            let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
            let tmp = tmp_dir.join(format!("{name}.{:x}-{n:x}", std::process::id()));
            match self.open_new(&tmp) {
                Ok(f) => return Ok((tmp, f)),
                // Left by an earlier process with our pid: take the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(context(e, format_args!("cannot create {}", tmp.display()))),
            }
        }
        Err(io::Error::other(format!("cannot find a free temporary name in {}", tmp_dir.display())))
    }

    /// Create the fixed temporary `tmp` and hold its lock (see [`AtomicWrite::write`]).
    fn claim_fixed(&self, tmp: &Path) -> io::Result<File> {
        let cannot = |e: io::Error| context(e, format_args!("cannot create {}", tmp.display()));
        for _ in 0..100 {
            match self.open_new(tmp) {
                Ok(f) => {
                    // Only a writer checking whether the name is stale can hold it now.
                    f.lock().map_err(cannot)?;
                    if same_file(&f, tmp).map_err(cannot)? {
                        return Ok(f);
                    }
                    // Removed as stale before we locked it: make it again.
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Never follow a link planted at the name: open what is there itself.
                    let other = match OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(tmp) {
                        Ok(f) => f,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                            remove_if_exists(tmp).map_err(cannot)?;
                            continue;
                        }
                        // Another user's temporary (root's, found by the daemon): we cannot
                        // ask its lock, so its age tells. A live writer holds one for the
                        // moment of a write and an fsync.
                        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                            let age = std::fs::symlink_metadata(tmp)
                                .and_then(|m| m.modified())
                                .map(|t| t.elapsed());
                            match age {
                                Ok(Ok(age)) if age > FOREIGN_TEMP_STALE => {
                                    remove_if_exists(tmp).map_err(cannot)?
                                }
                                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                                _ => std::thread::sleep(std::time::Duration::from_millis(10)),
                            }
                            continue;
                        }
                        Err(e) => return Err(cannot(e)),
                    };
                    match other.try_lock() {
                        // Nobody writes it: a crash left it (or its writer has not locked it
                        // yet, and will see that it is gone).
                        Ok(()) => {
                            if same_file(&other, tmp).map_err(cannot)? {
                                remove_if_exists(tmp).map_err(cannot)?;
                            }
                        }
                        // A live writer of the same file: wait until it is done.
                        Err(TryLockError::WouldBlock) => other.lock().map_err(cannot)?,
                        Err(TryLockError::Error(e)) => return Err(cannot(e)),
                    }
                }
                Err(e) => return Err(cannot(e)),
            }
        }
        Err(io::Error::other(format!(
            "{} is held by another writer; try again\nhelp: if no posthaste process is running, remove it",
            tmp.display()
        )))
    }
}

/// A temporary of another user that we cannot lock-check is taken as left by a crash once
/// it is this old.
const FOREIGN_TEMP_STALE: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether `path` (not followed) is the file open as `f`.
fn same_file(f: &File, path: &Path) -> io::Result<bool> {
    let open = f.metadata()?;
    match std::fs::symlink_metadata(path) {
        Ok(m) => Ok(m.dev() == open.dev() && m.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The error `e` with what we were doing in front, same kind.
fn context(e: io::Error, what: std::fmt::Arguments<'_>) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// An exclusive lock on an open file (`flock(2)` through std's `File::lock`), held until
/// this is dropped or the process ends. The file is never replaced while it serves as a
/// lock: replacing it would hand later lockers a different file.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Open `path` (created if missing, never truncated) and wait for its lock.
    pub fn acquire(path: &Path) -> io::Result<FileLock> {
        FileLock::wait_on(open_lock_file(path)?)
    }

    /// Open `path` (created if missing, never truncated) and take its lock if it is free;
    /// `Ok(None)` when another holder has it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        let file = open_lock_file(path)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// Wait for the lock of a file opened by the caller (one that must exist already, say).
    pub fn wait_on(file: File) -> io::Result<FileLock> {
        file.lock()?;
        Ok(FileLock { file })
    }

    /// The locked file (a lock file may hold a little data of its own).
    pub fn file(&self) -> &File {
        &self.file
    }
}

fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn write_atomic_replaces_with_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "old").unwrap();
        write_atomic(&p, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(names(dir.path()), ["f"]);
        // Exact mode ignores the umask; the owner is set before the rename.
        let (uid, gid) = {
            let m = std::fs::metadata(dir.path()).unwrap();
            (m.uid(), m.gid())
        };
        AtomicWrite::new(0o640).exact_mode().owner(Some((uid, gid))).write(&p, b"newer").unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.permissions().mode() & 0o777, m.uid()), (0o640, uid));
        assert_eq!(std::fs::read(&p).unwrap(), b"newer");
    }

    /// A temporary a killed writer left (fixed name) is removed by the next write of the
    /// same file, so reruns leave nothing behind (the installer's kill test relies on it).
    #[test]
    fn a_crashed_writers_temporary_is_replaced_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("posthaste.toml");
        let stale = dir.path().join(".posthaste.toml.posthaste-tmp");
        std::fs::write(&stale, "half").unwrap();
        write_atomic(&p, b"whole", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
        assert_eq!(names(dir.path()), ["posthaste.toml"]);
        // A symbolic link planted at the temporary name is removed, never written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, &stale).unwrap();
        write_atomic(&p, b"again", 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(&p).unwrap(), b"again");
        assert_eq!(names(dir.path()), ["posthaste.toml", "victim"]);
        // A fixed temporary path of the caller's choosing works the same way.
        let tmp = dir.path().join("posthaste.toml.tmp");
        std::fs::write(&tmp, "stale").unwrap();
        AtomicWrite::new(0o600).temp_at(&tmp).write(&p, b"third").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"third");
        assert!(!tmp.exists());
    }

    /// Writers of one file in several threads (the daemon's ACME renewal and an installer
    /// rerun, say) each replace it whole: the file is always one of the contents written.
    #[test]
    fn concurrent_writers_of_one_file_never_mix_their_contents() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cert.pem");
        write_atomic(&p, &[b'0'; 4096], 0o644).unwrap();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(p, &[b'a' + t; 4096], 0o644).unwrap();
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..200 {
                    let got = std::fs::read(&p).unwrap();
                    assert_eq!(got.len(), 4096);
                    assert!(got.iter().all(|b| *b == got[0]), "mixed contents");
                }
            });
        });
        assert_eq!(names(dir.path()), ["cert.pem"]);
    }

    /// The daemon (not root) renewing a certificate finds a temporary that a killed root
    /// installer left, which it can neither open nor lock: taken as stale once it is old,
    /// waited for while it is young.
    #[test]
    fn another_users_temporary_is_judged_by_its_age() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = dir.path().join("fullchain.pem");
        let stale = dir.path().join(".fullchain.pem.posthaste-tmp");
        let plant = |age: u64| {
            let _ = std::fs::remove_file(&stale);
            // Unreadable for the writer below: mode 0 (and, as root, another fsuid).
            let f = OpenOptions::new().write(true).create_new(true).mode(0).open(&stale).unwrap();
            f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age)).unwrap();
        };
        // As another user: a thread with its own file-system uid (as root, the change also
        // drops the thread's right to override file modes), or simply ourselves if not root.
        let as_other_user = |f: &(dyn Fn() -> io::Result<()> + Sync)| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    // SAFETY: setfsuid changes this thread's file-system uid only.
                    unsafe { libc::setfsuid(65534) };
                    f()
                })
                .join()
                .unwrap()
            })
        };
        plant(3600);
        as_other_user(&|| write_atomic(&p, b"renewed", 0o644)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"renewed");
        assert!(!stale.exists());
        plant(0);
        let err = as_other_user(&|| write_atomic(&p, b"again", 0o644)).unwrap_err();
        assert!(err.to_string().contains("held by another writer"), "{err}");
        assert!(stale.exists(), "a young temporary is left to its writer");
        assert_eq!(std::fs::read(&p).unwrap(), b"renewed");
    }

    #[test]
    fn unique_temporaries_go_to_the_given_directory() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        let env = dir.path().join("env");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::create_dir(&env).unwrap();
        let p = env.join("id.json");
        AtomicWrite::new(0o600).temp_in(&tmp).write(&p, b"{}").unwrap();
        AtomicWrite::new(0o600).temp_in(&tmp).write(&p, b"{1}").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{1}");
        assert!(names(&tmp).is_empty());
        // A failed write removes its temporary and says what failed.
        let missing = dir.path().join("nowhere").join("x");
        let err = AtomicWrite::new(0o600).temp_in(&tmp).write(&missing, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().starts_with("cannot replace"), "{err}");
        assert!(names(&tmp).is_empty());
    }

    #[test]
    fn file_lock_excludes_other_holders_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let held = FileLock::acquire(&p).unwrap();
        // A second open file of the same path, as another process would have.
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let p = p.clone();
            std::thread::spawn(move || {
                let l = FileLock::acquire(&p).unwrap();
                tx.send(()).unwrap();
                drop(l);
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(100)).is_err(), "waits while held");
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        waiter.join().unwrap();
        assert!(FileLock::try_acquire(&p).unwrap().is_some());
        // Locking an existing file opened elsewhere, read-only.
        let l = FileLock::wait_on(File::open(&p).unwrap()).unwrap();
        assert!(FileLock::try_acquire(&p).unwrap().is_none());
        drop(l);
    }
}
