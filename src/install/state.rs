//! What the installer wrote: the SHA-256 of every rendered file it wrote, kept in
//! `/etc/posthaste/install-state.json` (0600 root), so a rerun can tell a file it wrote
//! from one someone edited since — the edit is shown as a diff and not replaced without
//! `--force` (see `steps::file_change`).
//!
//! A path keeps the hashes of the last few versions written, newest last: the hash of the
//! new version is recorded just *before* the file is replaced, so an install killed between
//! the two leaves a file whose hash is known either way. A file whose hash is in its list
//! is "as the installer wrote it".

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::host::Host;

pub const STATE_FILE: &str = "/etc/posthaste/install-state.json";

/// Versions remembered per file: enough for an interrupted write and the one before it.
const KEEP: usize = 4;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Target path → hex SHA-256 of the versions written, newest last.
    #[serde(default)]
    pub files: BTreeMap<String, Vec<String>>,
}

/// What the file on disk is to the installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// One of the versions it wrote.
    Ours,
    /// It wrote this path, but what is there now is something else: edited by hand.
    Edited,
    /// No record of this path: written by someone else, or by an install (of a version)
    /// that kept no record.
    Unknown,
}

pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

impl State {
    /// The target's state; nothing recorded when there is no file. A file that cannot be
    /// parsed counts as no record (every file then needs `--force` once, which is safe).
    pub fn read(host: &Host) -> State {
        std::fs::read(host.path(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn origin(&self, path: &Path, current: &[u8]) -> Origin {
        match self.files.get(&path.display().to_string()) {
            None => Origin::Unknown,
            Some(hashes) if hashes.contains(&sha256(current)) => Origin::Ours,
            Some(_) => Origin::Edited,
        }
    }

    /// Remember a version written (or about to be) at `path`. False if it was known.
    pub fn note(&mut self, path: &Path, hash: &str) -> bool {
        let list = self.files.entry(path.display().to_string()).or_default();
        if list.last().map(String::as_str) == Some(hash) {
            return false;
        }
        list.retain(|h| h != hash);
        list.push(hash.to_owned());
        let excess = list.len().saturating_sub(KEEP);
        list.drain(..excess);
        true
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("the state serializes");
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ours_edited_or_unknown() {
        let mut s = State::default();
        let p = Path::new("/etc/posthaste/posthaste.toml");
        assert_eq!(s.origin(p, b"a"), Origin::Unknown);
        assert!(s.note(p, &sha256(b"a")));
        assert!(!s.note(p, &sha256(b"a")));
        assert_eq!(s.origin(p, b"a"), Origin::Ours);
        assert_eq!(s.origin(p, b"a, edited"), Origin::Edited);
        // The version before stays known (an install killed between record and write).
        s.note(p, &sha256(b"b"));
        assert_eq!((s.origin(p, b"a"), s.origin(p, b"b")), (Origin::Ours, Origin::Ours));
        for v in ["c", "d", "e", "f"] {
            s.note(p, &sha256(v.as_bytes()));
        }
        assert_eq!(s.files[&p.display().to_string()].len(), KEEP);
        assert_eq!(s.origin(p, b"a"), Origin::Edited);
        let back: State = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(back, s);
    }
}
