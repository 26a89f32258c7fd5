//! The plan: every change the install would make, computed before anything is touched.
//!
//! `--dry-run` prints it; otherwise `apply` carries it out. Each change says what kind of
//! thing it is about, which one, and whether it is created, updated, removed or already
//! right (`none`). A rerun with the same answers plans only `none`.

use std::path::PathBuf;

use serde::Serialize;

use super::host::Cmd;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Package,
    File,
    User,
    Service,
    Command,
    Key,
    Domain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Remove,
    None,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Remove => "remove",
            Action::None => "ok",
        }
    }
}

/// Who owns a file: user and group names, resolved in the target's /etc/passwd and
/// /etc/group when the change is applied (the user may be created by an earlier change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub group: String,
}

impl Owner {
    pub fn root() -> Owner {
        Owner { user: "root".into(), group: "root".into() }
    }
    pub fn of(user: &str, group: &str) -> Owner {
        Owner { user: user.into(), group: group.into() }
    }
}

/// How a change is carried out. Paths are target paths (`/etc/…`), even under `--root`.
#[derive(Debug, Clone)]
pub enum Op {
    /// Already as it should be.
    Nothing,
    /// Write the whole file atomically (temp file, fsync, rename); the original is backed up.
    /// `track`: a rendered file, its hash recorded in the install state (src/install/state.rs)
    /// so a later run can tell an edit. `keep_copy`: the file there was edited by hand (and
    /// `--force` given): it is kept beside itself as `FILE.bak-YYYYMMDD-HHMMSS` first.
    WriteFile { path: PathBuf, contents: Vec<u8>, mode: u32, owner: Owner, track: bool, keep_copy: bool },
    /// Copy a file from this machine (the posthaste binary).
    CopyFile { from: PathBuf, path: PathBuf, mode: u32, owner: Owner },
    /// Create a directory, or fix its mode and owner.
    Dir { path: PathBuf, mode: u32, owner: Owner },
    /// Fix a file's mode and owner (its contents stay).
    Meta { path: PathBuf, mode: u32, owner: Owner },
    /// Remove a file or an empty directory (backed up first).
    RemoveFile { path: PathBuf },
    /// Remove a directory tree (`uninstall --purge`; not undoable, so planned last).
    RemoveTree { path: PathBuf },
    /// Install packages (one batch per plan: the first `Packages` change carries them all).
    Packages { install: Vec<Cmd> },
    /// Run a command; `undo` reverses it on rollback.
    Run { cmd: Cmd, undo: Option<Cmd> },
    /// Run several commands in order (all undone in reverse on rollback).
    RunAll { cmds: Vec<(Cmd, Option<Cmd>)> },
    /// Start the daemon in the background (direct mode) and wait until its pidfile names a
    /// live process (stopping the running one first); if it does not come up, the change fails (and is rolled back).
    StartDaemon { stop: Option<Cmd>, cmd: Cmd, pidfile: PathBuf, log: PathBuf },
    /// Make a self-signed certificate and its key.
    SelfSigned { hostname: String, cert: PathBuf, key: PathBuf, owner: Owner },
    /// Obtain a certificate from an ACME CA (HTTP-01 answered on `http_listen` for the
    /// duration), written to the settings' cert/key; account, cert and key get `owner`.
    AcmeIssue { settings: crate::tls::acme::Settings, http_listen: std::net::SocketAddr, owner: Owner },
    /// Add a domain to the account directory.
    AddDomain { name: String },
    /// Make the domain's missing DKIM keys (src/mailauth/keys.rs), owned by the daemon's user.
    DkimKeys { domain: String, dkim_dir: PathBuf },
    /// Add an account with its password hash, and create its Maildir.
    AddAccount { address: String, hash: String },
    /// Add an alias (`postmaster@DOMAIN` to an account of another name).
    AddAlias { source: String, destination: String },
    /// Skipped: the reason is shown (e.g. commands under `--root`).
    Skip { reason: String },
}

/// A file the plan replaces although it is not as the installer wrote it.
#[derive(Debug, Clone)]
pub struct Edited {
    pub origin: super::state::Origin,
    /// On disk (`-`) against what the install writes (`+`).
    pub diff: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub kind: Kind,
    pub target: String,
    pub action: Action,
    /// Why, or what exactly (shown by the human plan, not in JSON).
    #[serde(skip)]
    pub note: String,
    #[serde(skip)]
    pub op: Op,
    /// Set when this change would replace a hand edit: applied only with `--force`.
    #[serde(skip)]
    pub edited: Option<Edited>,
    /// A rendered file this plan leaves (or makes) as the installer writes it: target path
    /// and the hash of those contents, recorded in the install state after the run.
    #[serde(skip)]
    pub track: Option<(PathBuf, String)>,
}

impl Change {
    pub fn new(kind: Kind, target: impl Into<String>, action: Action, op: Op) -> Change {
        Change { kind, target: target.into(), action, note: String::new(), op, edited: None, track: None }
    }
    pub fn none(kind: Kind, target: impl Into<String>) -> Change {
        Change::new(kind, target, Action::None, Op::Nothing)
    }
    pub fn note(mut self, note: impl Into<String>) -> Change {
        self.note = note.into();
        self
    }
    pub fn is_change(&self) -> bool {
        self.action != Action::None
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub distro: String,
    pub changes: Vec<Change>,
    /// Things the person should know before applying (not part of the JSON contract).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn pending(&self) -> usize {
        self.changes.iter().filter(|c| c.is_change()).count()
    }

    /// The changes that would replace a file edited by hand.
    pub fn edited(&self) -> Vec<&Change> {
        self.changes.iter().filter(|c| c.edited.is_some()).collect()
    }

    /// `{"distro":…, "changes":[{"kind","target","action"}…]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the plan serializes")
    }

    /// The plan for a person: one line per change, then the warnings.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for c in &self.changes {
            let kind = serde_json::to_value(c.kind).ok().and_then(|v| v.as_str().map(str::to_owned));
            let line = format!("  {:<7} {:<8} {}", c.action.verb(), kind.unwrap_or_default(), c.target);
            s += line.trim_end();
            let mut notes: Vec<&str> = vec![];
            if !c.note.is_empty() {
                notes.push(&c.note);
            }
            if let Op::Skip { reason } = &c.op {
                notes.push(reason);
            }
            if !notes.is_empty() {
                s += &format!("  ({})", notes.join("; "));
            }
            s.push('\n');
            if let Some(e) = &c.edited {
                for l in e.diff.lines() {
                    s += &format!("      {l}\n");
                }
            }
        }
        for w in &self.warnings {
            s += &format!("warning: {w}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_exactly_the_contract_fields() {
        let plan = Plan {
            distro: "debian-12".into(),
            changes: vec![Change::new(Kind::Package, "rspamd", Action::Create, Op::Nothing).note("x")],
            warnings: vec!["w".into()],
        };
        let v: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"distro": "debian-12", "changes": [{"kind": "package", "target": "rspamd", "action": "create"}]})
        );
    }
}
