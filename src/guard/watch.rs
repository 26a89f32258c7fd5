//! Notice when the ban file is replaced or changed, without polling it: inotify(7) on its
//! directory, read through the runtime's reactor (never blocks a worker).
//!
//! The directory is watched rather than the file because `posthaste ban` (and editors)
//! replace the file by a rename, which a watch on the old inode would not report. Only
//! events that name the ban file count: the directory also holds the account database and
//! the ban file's own lock file and temporary file.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Written, renamed into place, renamed away or deleted: every way the file's contents can
/// change.
const MASK: u32 = libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_MOVED_FROM | libc::IN_DELETE;

/// `struct inotify_event` without its name: wd, mask, cookie, len (inotify(7)).
const HEADER: usize = 16;

pub struct FileWatch {
    fd: AsyncFd<OwnedFd>,
    name: OsString,
}

impl FileWatch {
    /// Watch `path` (its directory must exist). Must be called inside a tokio runtime.
    pub fn new(path: &Path) -> io::Result<FileWatch> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| io::Error::other("the ban file has no name"))?;
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let cdir = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
        // SAFETY: a valid descriptor and a NUL-terminated path that outlives the call.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), cdir.as_ptr(), MASK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, the same descriptor,
        // until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(FileWatch { fd, name: name.to_owned() })
    }

    /// Wait until the file may have changed: an event that names it, or a queue overflow
    /// (events were lost, so anything may have happened).
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut ready = self.fd.readable().await?;
            let read = ready.try_io(|fd| {
                // SAFETY: reads at most `buf.len()` bytes into `buf`.
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(n)) => {
                    if names(&buf[..n], self.name.as_bytes()) {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => return Err(e),
                // Not readable after all: wait again.
                Err(_) => continue,
            }
        }
    }
}

/// Does one of the events in `buf` name `file` (or report lost events)?
fn names(mut buf: &[u8], file: &[u8]) -> bool {
    let mut hit = false;
    while buf.len() >= HEADER {
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
        let (mask, len) = (word(4), word(12) as usize);
        let Some(raw_name) = buf.get(HEADER..HEADER + len) else { break };
        // The name is padded with NULs to an alignment boundary.
        let name = raw_name.split(|&b| b == 0).next().unwrap_or_default();
        if mask & libc::IN_Q_OVERFLOW != 0 || name == file {
            hit = true;
        }
        buf = &buf[HEADER + len..];
    }
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        if !padded.is_empty() {
            padded.resize(name.len().div_ceil(16) * 16 + 16, 0);
        }
        let mut v = Vec::new();
        for w in [1u32, mask, 0, padded.len() as u32] {
            v.extend_from_slice(&w.to_ne_bytes());
        }
        v.extend_from_slice(&padded);
        v
    }

    #[test]
    fn only_events_that_name_the_file_count() {
        let file = b"guard-bans.json";
        let mut buf = event(libc::IN_CLOSE_WRITE, "guard-bans.json.lock");
        buf.extend(event(libc::IN_MOVED_FROM, "guard-bans.json.tmp"));
        assert!(!names(&buf, file));
        buf.extend(event(libc::IN_MOVED_TO, "guard-bans.json"));
        assert!(names(&buf, file));
        assert!(names(&event(libc::IN_Q_OVERFLOW, ""), file));
        assert!(!names(&event(libc::IN_DELETE, "directory.db-journal"), file));
    }

    #[tokio::test]
    async fn a_rename_over_the_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guard-bans.json");
        std::fs::write(&path, "{}").unwrap();
        let mut w = FileWatch::new(&path).unwrap();
        // Changes to other files of the directory are not reported.
        std::fs::write(dir.path().join("other"), "x").unwrap();
        let quiet = tokio::time::timeout(std::time::Duration::from_millis(200), w.changed()).await;
        assert!(quiet.is_err(), "an unrelated file woke the watch");
        let tmp = dir.path().join("guard-bans.json.tmp");
        std::fs::write(&tmp, "{\"bans\":[]}").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.changed()).await.unwrap().unwrap();
    }
}
