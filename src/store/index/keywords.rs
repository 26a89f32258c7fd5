//! Dovecot's keyword letters of one folder (`dovecot-keywords`), read and written as Dovecot
//! does, so keywords set by either server show in the other.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::mtime_ns;
use crate::durable;

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

pub(super) const DOVECOT_KEYWORDS: &str = "dovecot-keywords";
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
            if i >= 26 || name.is_empty() || !crate::store::is_keyword(name) {
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
    pub(super) fn refresh(&mut self, dir: &Path) -> io::Result<()> {
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
    /// (all 26 taken, or the lock busy for long) stay in our index. Called under the index
    /// lock, through `Tx::assign_keywords`.
    pub(super) fn assign(&mut self, dir: &Path, wanted: &[&str]) -> io::Result<()> {
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
            durable::fsync_dir(dir)?;
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
