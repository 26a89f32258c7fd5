//! What happens to a mailbox when its account is removed: archived under a dated name
//! outside the live tree, or deleted. Either way the path `{root}/{domain}/{local}` is
//! free afterwards, so a new account with the same address starts with an empty mailbox
//! instead of its predecessor's mail.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{create_dir_durable, fsync_dir, Store};
use crate::address::Address;

/// The archive directory below the store root. Domain names never start with a dot, so
/// nothing under it can be taken for a live mailbox.
pub const ARCHIVE_DIR: &str = ".removed";

impl Store {
    /// `{root}/.removed`: where [`Store::archive_account`] moves mailboxes.
    pub fn archive_root(&self) -> PathBuf {
        self.root.join(ARCHIVE_DIR)
    }

    /// Is there anything at the account's mailbox path (a Maildir, or whatever was left
    /// there)? A dangling symlink counts too.
    pub fn mailbox_exists(&self, account: &Address) -> bool {
        std::fs::symlink_metadata(self.account_dir(account)).is_ok()
    }

    /// Move the account's mailbox, all folders, to
    /// `{root}/.removed/{domain}/{local}.removed-{YYYY-MM-DDTHHMMSSZ}` (`-2`, `-3`, … if
    /// that exists) and return where it went; None when there was no mailbox. One rename on
    /// the same file system: the mail is either still in place or entirely in the archive.
    pub fn archive_account(&self, account: &Address, at: SystemTime) -> io::Result<Option<PathBuf>> {
        let from = self.account_dir(account);
        if std::fs::symlink_metadata(&from).is_err() {
            return Ok(None);
        }
        let dir = self.archive_root().join(account.domain());
        create_dir_durable(&dir)?;
        let stamp = chrono::DateTime::<chrono::Utc>::from(at).format("%Y-%m-%dT%H%M%SZ");
        let base = format!("{}.removed-{stamp}", account.local());
        let mut n = 1u32;
        loop {
            let to = if n == 1 { dir.join(&base) } else { dir.join(format!("{base}-{n}")) };
            if std::fs::symlink_metadata(&to).is_ok() {
                n += 1;
                continue;
            }
            std::fs::rename(&from, &to)?;
            // A new account of the address starts with new folders, not these in memory.
            self.indexes.forget_account(&from);
            fsync_dir(&dir)?;
            if let Some(parent) = from.parent() {
                fsync_dir(parent)?;
            }
            return Ok(Some(to));
        }
    }

    /// Undo [`Store::archive_account`]: move `archived` back to the account's mailbox path
    /// (refused if something is there by now).
    pub fn restore_archived(&self, account: &Address, archived: &Path) -> io::Result<()> {
        let to = self.account_dir(account);
        if std::fs::symlink_metadata(&to).is_ok() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", to.display())));
        }
        std::fs::rename(archived, &to)?;
        self.indexes.forget_account(&to);
        if let Some(parent) = to.parent() {
            fsync_dir(parent)?;
        }
        Ok(())
    }

    /// Delete an archived mailbox (and the archive directories it leaves empty). Deleting
    /// from the archive rather than in place means an interrupted delete leaves a partial
    /// archive, never a partial mailbox that a new account of the address would find.
    pub fn delete_archived(&self, archived: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(archived)?;
        // remove_dir refuses a directory that still holds something: only empty ones go.
        if let Some(domain_dir) = archived.parent() {
            if std::fs::remove_dir(domain_dir).is_ok() {
                let _ = std::fs::remove_dir(self.archive_root());
            }
        }
        Ok(())
    }
}
