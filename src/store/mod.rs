//! Maildir++ mail storage with a UID index per folder. INTERFACE STUB (a minimal working
//! delivery so other modules can be tested; the store work replaces it).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::address::Address;

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Delivered {
    pub uid: u32,
    pub uidvalidity: u32,
    pub path: PathBuf,
}

/// The special-use folders every new account gets (RFC 6154).
pub const SPECIAL_FOLDERS: [&str; 5] = ["Sent", "Drafts", "Junk", "Trash", "Archive"];

impl Store {
    /// `root` is `{data_dir}/mail`.
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `{root}/{domain}/{localpart}`: the INBOX of the account.
    pub fn account_dir(&self, account: &Address) -> PathBuf {
        self.root.join(account.domain()).join(account.local())
    }
    /// Create INBOX and the special folders (idempotent).
    pub fn create_account(&self, account: &Address) -> std::io::Result<()> {
        let base = self.account_dir(account);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(base.join(sub))?;
        }
        Ok(())
    }
    /// Durably deliver `message` into `folder` ("INBOX" or a folder name such as "Junk"):
    /// write to tmp/, fsync, rename into new/, fsync the directory, assign the next UID.
    pub fn deliver(&self, account: &Address, folder: &str, message: &[u8]) -> std::io::Result<Delivered> {
        assert_eq!(folder, "INBOX", "stub");
        self.create_account(account)?;
        let base = self.account_dir(account);
        let name =
            format!("{}.{}.{}", chrono::Utc::now().timestamp(), uuid::Uuid::new_v4().simple(), "posthaste");
        let tmp = base.join("tmp").join(&name);
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(message)?;
        f.sync_all()?;
        let dest = base.join("new").join(&name);
        std::fs::rename(&tmp, &dest)?;
        std::fs::File::open(base.join("new"))?.sync_all()?;
        Ok(Delivered { uid: 0, uidvalidity: 0, path: dest })
    }
}
