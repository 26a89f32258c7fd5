//! Carrying out a plan, with a journal: every change is recorded as it is made (files are
//! backed up before they are replaced), and if any change fails everything done so far is
//! undone in reverse order — like rustup's `Transaction`, the journal rolls back when it is
//! dropped without `commit`. The person is told what failed, what was put back, and how to
//! retry.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};

use super::host::{Cmd, Host};
use super::plan::{Change, Op, Owner, Plan};
use super::state::{State, STATE_FILE};
use super::steps::{resolve_owner, Layout};
use crate::address::Address;
use crate::directory::Directory;
use crate::store::Store;

/// One undoable thing that was done.
#[derive(Debug)]
enum Entry {
    /// We created this file: remove it.
    Created(PathBuf),
    /// We created this (empty) directory: remove it.
    CreatedDir(PathBuf),
    /// We created this tree (a Maildir): remove it all.
    CreatedTree(PathBuf),
    /// We replaced or removed this file: put the backup back.
    Replaced { path: PathBuf, backup: PathBuf },
    /// We changed mode or owner.
    Meta { path: PathBuf, mode: u32, uid: u32, gid: u32 },
    /// We ran a command; this undoes it.
    Ran { undo: Cmd },
}

/// The record of an install in progress (host paths).
pub struct Journal<'h> {
    host: &'h Host,
    entries: Vec<Entry>,
    backup_dir: Option<PathBuf>,
    /// Directories made to hold the backups (removed with them).
    backup_parents: Vec<PathBuf>,
    committed: bool,
    /// A restore failed: the backups must not be deleted.
    keep_backups: bool,
    /// What rollback did, for the report.
    pub rolled_back: Vec<String>,
}

impl<'h> Journal<'h> {
    pub fn new(host: &'h Host) -> Journal<'h> {
        Journal {
            host,
            entries: Vec::new(),
            backup_dir: None,
            backup_parents: Vec::new(),
            committed: false,
            keep_backups: false,
            rolled_back: Vec::new(),
        }
    }

    fn backup(&mut self, path: &Path) -> anyhow::Result<PathBuf> {
        let dir = match &self.backup_dir {
            Some(d) => d.clone(),
            None => {
                let d = self.host.path(format!("/var/backups/posthaste-install.{}", std::process::id()));
                let mut p = d.parent();
                while let Some(dir) = p.filter(|p| !p.exists()) {
                    self.backup_parents.push(dir.to_owned());
                    p = dir.parent();
                }
                std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))?;
                self.backup_dir = Some(d.clone());
                d
            }
        };
        let backup = dir.join(format!(
            "{}-{}",
            self.entries.len(),
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let meta = std::fs::metadata(path)?;
        std::fs::copy(path, &backup).with_context(|| format!("cannot back up {}", path.display()))?;
        let _ = std::os::unix::fs::chown(&backup, Some(meta.uid()), Some(meta.gid()));
        std::fs::set_permissions(&backup, meta.permissions())?;
        Ok(backup)
    }

    /// Back up `path` (if it exists) before it is replaced; else remember it as new.
    fn will_write(&mut self, path: &Path) -> anyhow::Result<()> {
        if path.exists() {
            let backup = self.backup(path)?;
            self.entries.push(Entry::Replaced { path: path.to_owned(), backup });
        } else {
            self.entries.push(Entry::Created(path.to_owned()));
        }
        Ok(())
    }

    /// Create missing parent directories (each journaled).
    fn make_parents(&mut self, path: &Path) -> anyhow::Result<()> {
        let mut missing = Vec::new();
        let mut p = path.parent();
        while let Some(dir) = p {
            if dir.exists() {
                break;
            }
            missing.push(dir.to_owned());
            p = dir.parent();
        }
        for dir in missing.into_iter().rev() {
            std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            self.entries.push(Entry::CreatedDir(dir));
        }
        Ok(())
    }

    /// Undo everything, newest first.
    pub fn rollback(&mut self) {
        // Directories that still held backups when their turn came: removed after those.
        let mut retry = Vec::new();
        while let Some(e) = self.entries.pop() {
            if let Entry::CreatedDir(p) = &e {
                if std::fs::remove_dir(p).is_err() && p.exists() {
                    retry.push(p.clone());
                    continue;
                }
            }
            let what = match &e {
                Entry::Created(p) => {
                    let _ = std::fs::remove_file(p);
                    format!("removed {}", self.show(p))
                }
                Entry::CreatedDir(p) => format!("removed {}/", self.show(p)),
                Entry::CreatedTree(p) => {
                    let _ = std::fs::remove_dir_all(p);
                    format!("removed {}/", self.show(p))
                }
                Entry::Replaced { path, backup } => match restore(backup, path) {
                    Ok(()) => format!("restored {}", self.show(path)),
                    Err(err) => {
                        // The backup is then the only copy of the original: it stays.
                        self.keep_backups = true;
                        format!(
                            "COULD NOT restore {} ({err}): its original is kept in {} (copy it back by hand)",
                            self.show(path),
                            self.show(backup)
                        )
                    }
                },
                Entry::Meta { path, mode, uid, gid } => {
                    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(*mode));
                    let _ = std::os::unix::fs::lchown(path, Some(*uid), Some(*gid));
                    format!("restored mode and owner of {}", self.show(path))
                }
                Entry::Ran { undo } => match self.host.run(undo) {
                    Ok(o) if o.success() => format!("ran `{undo}`"),
                    Ok(o) => format!("`{undo}` failed: {}", o.stderr.trim()),
                    Err(err) => format!("`{undo}` failed: {err}"),
                },
            };
            self.rolled_back.push(what);
        }
        if self.keep_backups {
            // Restored backups were moved back; what is left here is what could not be.
            if let Some(d) = self.backup_dir.take() {
                self.rolled_back
                    .push(format!("kept {}/ (the originals that could not be restored)", self.show(&d)));
            }
            self.backup_parents.clear();
        } else {
            self.remove_backups();
        }
        for p in retry {
            let what = match std::fs::remove_dir(&p) {
                Ok(()) => format!("removed {}/", self.show(&p)),
                Err(err) => format!("could not remove {}/: {err}", self.show(&p)),
            };
            self.rolled_back.push(what);
        }
    }

    /// Keep everything; drop the backups.
    pub fn commit(mut self) {
        self.committed = true;
        self.entries.clear();
        self.remove_backups();
    }

    fn remove_backups(&mut self) {
        if let Some(d) = self.backup_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
        // Deepest first (they were found walking up).
        for dir in std::mem::take(&mut self.backup_parents) {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// A host path as the target path the person knows.
    pub fn show(&self, p: &Path) -> String {
        match p.strip_prefix(&self.host.root) {
            Ok(rel) if self.host.root != Path::new("/") => {
                format!("{}/{}", self.host.root.display(), rel.display())
            }
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => p.display().to_string(),
        }
    }
}

impl Drop for Journal<'_> {
    fn drop(&mut self) {
        if !self.committed && !self.entries.is_empty() {
            self.rollback();
        }
    }
}

/// Put a backup back: rename when on the same filesystem, else copy and rename. The temp
/// copy never outlives a failure.
fn restore(backup: &Path, path: &Path) -> std::io::Result<()> {
    if std::fs::rename(backup, path).is_ok() {
        return Ok(());
    }
    let tmp = tmp_name(path);
    let result = std::fs::copy(backup, &tmp).and_then(|_| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.posthaste-tmp"))
}

/// Write a whole file atomically ([`crate::durable::AtomicWrite`]): a temp file beside it
/// with the final mode (exactly, whatever the umask) and owner, fsynced, renamed over the
/// target, and the directory fsynced. Its fixed name means a temporary left by a killed run
/// is removed by the rerun.
pub(super) fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    crate::durable::AtomicWrite::new(mode).exact_mode().owner(owner).write(path, contents)?;
    Ok(())
}

/// The directory database, opened on the first directory change.
struct DirHandle {
    rt: tokio::runtime::Runtime,
    dir: Directory,
}

/// `FILE.bak-YYYYMMDD-HHMMSS` beside `path` (a suffix no program reading the directory's
/// `*.conf`, `*.repo` or `*.toml` picks up), not yet taken.
fn dated_copy(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
    let mut copy = path.with_file_name(format!("{name}.bak-{stamp}"));
    let mut n = 1;
    while copy.exists() {
        copy = path.with_file_name(format!("{name}.bak-{stamp}.{n}"));
        n += 1;
    }
    copy
}

/// State while applying one plan.
struct Applier<'h, 'j> {
    host: &'h Host,
    layout: &'h Layout,
    journal: &'j mut Journal<'h>,
    directory: Option<DirHandle>,
    warned_owner: bool,
    pub warnings: Vec<String>,
    /// The install state as this run changes it (read at the first file it records).
    state: Option<State>,
    /// Hand-edited files kept beside themselves (`--force`), for the report.
    kept: Vec<String>,
}

impl<'h> Applier<'h, '_> {
    /// Record a version of a rendered file in the install state, and write the state (its
    /// original journaled the first time, so a rollback puts it back too).
    fn record(&mut self, path: &Path, hash: &str) -> anyhow::Result<()> {
        let first = self.state.is_none();
        let state = self.state.get_or_insert_with(|| State::read(self.host));
        if !state.note(path, hash) && !first {
            return Ok(());
        }
        let json = state.to_json();
        let real = self.host.path(STATE_FILE);
        if first {
            self.journal.make_parents(&real)?;
            self.journal.will_write(&real)?;
        }
        write_atomic(&real, &json, 0o600, Some((0, 0)).filter(|_| nix::unistd::geteuid().is_root()))
    }

    /// After every change: the rendered files the plan left as they were, recorded too (an
    /// earlier install that kept no record, or one killed before it could).
    fn record_unchanged(&mut self, plan: &Plan) -> anyhow::Result<()> {
        for (path, hash) in plan.changes.iter().filter_map(|c| c.track.as_ref()) {
            let on_disk = std::fs::read(self.host.path(path)).map(|c| super::state::sha256(&c));
            if on_disk.as_deref().ok() == Some(hash.as_str()) {
                self.record(path, hash)?;
            }
        }
        Ok(())
    }

    fn owner(&mut self, owner: &Owner) -> Option<(u32, u32)> {
        let found = resolve_owner(self.host, owner);
        if found.is_none() && !self.warned_owner {
            self.warned_owner = true;
            self.warnings.push(format!(
                "user {} does not exist in the target yet, so its files are owned by root for now; rerun the install once it exists",
                owner.user
            ));
        }
        found
    }

    fn set_meta(&mut self, path: &Path, mode: u32, owner: &Owner) -> anyhow::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        self.journal.entries.push(Entry::Meta {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        if let Some((uid, gid)) = self.owner(owner) {
            if meta.uid() != uid || meta.gid() != gid {
                std::os::unix::fs::lchown(path, Some(uid), Some(gid))
                    .with_context(|| format!("cannot chown {}", path.display()))?;
            }
        }
        Ok(())
    }

    fn run(&mut self, cmd: &Cmd, undo: Option<&Cmd>) -> anyhow::Result<()> {
        let out = self.host.run(cmd).with_context(|| format!("cannot run `{cmd}`"))?;
        if !out.success() {
            let detail =
                [out.stderr.trim(), out.stdout.trim()].into_iter().find(|s| !s.is_empty()).unwrap_or("");
            bail!(
                "`{cmd}` exited with status {}{}",
                out.status,
                if detail.is_empty() { String::new() } else { format!(":\n{detail}") }
            );
        }
        if let Some(u) = undo {
            self.journal.entries.push(Entry::Ran { undo: u.clone() });
        }
        Ok(())
    }

    fn directory(&mut self) -> anyhow::Result<&DirHandle> {
        if self.directory.is_none() {
            let db = self.host.path(self.layout.db());
            // The database is changed in place by SQLite, so keep a copy of it (and of its
            // write-ahead log, and of a hot journal SQLite would roll back) to put back.
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let p = db.with_file_name(format!("directory.db{suffix}"));
                self.journal.will_write(&p)?;
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let url = format!("sqlite://{}", db.display());
            let dir = rt.block_on(Directory::open(&url)).context("cannot open the account directory")?;
            self.directory = Some(DirHandle { rt, dir });
        }
        Ok(self.directory.as_ref().expect("opened above"))
    }

    /// Close the database (so SQLite folds its log back in) and give it to the daemon's user.
    fn close_directory(&mut self) -> anyhow::Result<()> {
        let Some(h) = self.directory.take() else { return Ok(()) };
        drop(h.dir);
        drop(h.rt);
        let db = self.host.path(self.layout.db());
        // Connections close on their own threads; wait briefly for the log to be folded in.
        let wal = db.with_file_name("directory.db-wal");
        for _ in 0..50 {
            if !wal.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let owner = Owner::of(super::steps::system_user::USER, super::steps::system_user::USER);
        if let Some((uid, gid)) = self.owner(&owner) {
            for suffix in ["", "-wal", "-shm"] {
                let p = db.with_file_name(format!("directory.db{suffix}"));
                if p.exists() {
                    std::os::unix::fs::lchown(&p, Some(uid), Some(gid))?;
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, change: &Change) -> anyhow::Result<()> {
        let host = self.host;
        match &change.op {
            Op::Nothing | Op::Skip { .. } => Ok(()),
            Op::WriteFile { path, contents, mode, owner, track, keep_copy } => {
                let real = host.path(path);
                self.journal.make_parents(&real)?;
                if *keep_copy && real.is_file() {
                    let copy = dated_copy(&real);
                    std::fs::copy(&real, &copy).with_context(|| {
                        format!("cannot keep a copy of {} as {}", real.display(), copy.display())
                    })?;
                    self.journal.entries.push(Entry::Created(copy.clone()));
                    self.kept.push(format!("{} was kept as {}", path.display(), self.journal.show(&copy)));
                }
                if *track {
                    // Before the file: an install killed in between still knows this version.
                    self.record(path, &super::state::sha256(contents))?;
                }
                self.journal.will_write(&real)?;
                let owner = self.owner(owner);
                write_atomic(&real, contents, *mode, owner)
            }
            Op::CopyFile { from, path, mode, owner } => {
                let contents =
                    std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
                let real = host.path(path);
                self.journal.make_parents(&real)?;
                self.journal.will_write(&real)?;
                let owner = self.owner(owner);
                write_atomic(&real, &contents, *mode, owner)
            }
            Op::Dir { path, mode, owner } => {
                let real = host.path(path);
                if !real.is_dir() {
                    self.journal.make_parents(&real)?;
                    std::fs::create_dir(&real)
                        .with_context(|| format!("cannot create {}", real.display()))?;
                    self.journal.entries.push(Entry::CreatedDir(real.clone()));
                }
                self.set_meta(&real, *mode, owner)
            }
            Op::Meta { path, mode, owner } => self.set_meta(&host.path(path), *mode, owner),
            Op::RemoveFile { path } => {
                let real = host.path(path);
                if real.is_dir() {
                    std::fs::remove_dir(&real)
                        .with_context(|| format!("cannot remove {}", real.display()))?;
                } else if real.exists() {
                    self.journal.will_write(&real)?;
                    std::fs::remove_file(&real)
                        .with_context(|| format!("cannot remove {}", real.display()))?;
                }
                Ok(())
            }
            Op::RemoveTree { path } => {
                let real = host.path(path);
                std::fs::remove_dir_all(&real).with_context(|| format!("cannot remove {}", real.display()))
            }
            Op::Packages { install } => {
                for cmd in install {
                    self.run(cmd, None)?;
                }
                Ok(())
            }
            Op::Run { cmd, undo } => self.run(cmd, undo.as_ref()),
            Op::RunAll { cmds } => {
                for (cmd, undo) in cmds {
                    self.run(cmd, undo.as_ref())?;
                }
                Ok(())
            }
            Op::StartDaemon { stop, cmd, pidfile, log } => {
                if let Some(stop) = stop {
                    self.run(stop, None)?;
                }
                self.start_daemon(cmd, pidfile, log)
            }
            Op::SelfSigned { hostname, cert, key, owner } => {
                let (c, k) = (host.path(cert), host.path(key));
                self.journal.make_parents(&c)?;
                self.journal.make_parents(&k)?;
                // Journaled first: a failure half-way leaves nothing behind either. A lone
                // half of a pair (an install killed between the two files) is backed up and
                // replaced: without its other half it was never in use.
                for p in [&k, &c] {
                    self.journal.will_write(p)?;
                    if p.exists() {
                        std::fs::remove_file(p).with_context(|| format!("cannot replace {}", p.display()))?;
                    }
                }
                crate::tls::generate_self_signed(hostname, &[], &c, &k)?;
                if let Some((uid, gid)) = self.owner(owner) {
                    std::os::unix::fs::lchown(&k, Some(uid), Some(gid))?;
                }
                std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))?;
                std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o644))?;
                Ok(())
            }
            Op::AcmeIssue { settings, http_listen, owner } => {
                let real = crate::tls::acme::Settings {
                    cert: host.path(&settings.cert),
                    key: host.path(&settings.key),
                    account: host.path(&settings.account),
                    ..settings.clone()
                };
                // Existing files are backed up first; new ones are journaled once they exist
                // (even when the issuance fails half-way, e.g. after the account was stored),
                // so the rollback report lists only what was really there.
                let files = [&real.cert, &real.key, &real.account];
                let existed: Vec<bool> = files.iter().map(|p| p.exists()).collect();
                for (p, existed) in files.iter().zip(&existed) {
                    self.journal.make_parents(p)?;
                    if *existed {
                        self.journal.will_write(p)?;
                    }
                }
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let result = rt.block_on(crate::tls::acme::issue_with_listener(&real, *http_listen));
                for (p, existed) in files.iter().zip(&existed) {
                    if !existed && p.exists() {
                        self.journal.entries.push(Entry::Created(p.to_path_buf()));
                    }
                }
                result?;
                if let Some((uid, gid)) = self.owner(owner) {
                    for p in [&real.cert, &real.key, &real.account] {
                        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
                            .with_context(|| format!("cannot chown {}", p.display()))?;
                    }
                }
                Ok(())
            }
            Op::AddDomain { name } => {
                let h = self.directory()?;
                h.rt.block_on(h.dir.add_domain(name)).with_context(|| format!("cannot add domain {name}"))?;
                Ok(())
            }
            Op::DkimKeys { domain, dkim_dir } => {
                let owner = Owner::of(super::steps::system_user::USER, super::steps::system_user::USER);
                let owner = self.owner(&owner);
                let created = crate::mailauth::keys::ensure_domain_keys(&host.path(dkim_dir), domain, owner)?;
                // Directories come first in `created`, so rollback (in reverse) removes the
                // keys before their directories.
                for p in created {
                    let entry = if p.is_dir() { Entry::CreatedDir(p) } else { Entry::Created(p) };
                    self.journal.entries.push(entry);
                }
                Ok(())
            }
            Op::AddAccount { address, hash } => {
                let addr = Address::parse(address).map_err(|e| anyhow!("{e}"))?;
                let h = self.directory()?;
                h.rt.block_on(h.dir.add_account(&addr, hash, 0))
                    .with_context(|| format!("cannot add {address}"))?;
                self.maildir(&addr)
            }
            Op::AddAlias { source, destination } => {
                let dest = Address::parse(destination).map_err(|e| anyhow!("{e}"))?;
                let h = self.directory()?;
                h.rt.block_on(h.dir.add_alias(source, &dest))
                    .with_context(|| format!("cannot add the alias {source} -> {destination}"))?;
                Ok(())
            }
        }
    }

    /// Start the daemon detached and wait (at most 15 s) for its pidfile to name a live
    /// process: it writes it only after binding every listener and dropping root.
    fn start_daemon(&mut self, cmd: &Cmd, pidfile: &Path, log: &Path) -> anyhow::Result<()> {
        let pidfile = self.host.path(pidfile);
        let _ = std::fs::remove_file(&pidfile);
        self.run(cmd, None)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let pid = std::fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| self.host.probe.pid_alive(*p)) {
                let script = format!("kill -TERM {pid}");
                self.journal.entries.push(Entry::Ran { undo: Cmd::new("sh", &["-c", &script]) });
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let text = std::fs::read_to_string(self.host.path(log)).unwrap_or_default();
                let tail: Vec<&str> =
                    text.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
                bail!(
                    "posthaste did not start (no live pid in {} after 15 s); the end of {}:\n{}",
                    pidfile.display(),
                    log.display(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The account's Maildir, journaled from its first missing directory, owned by the daemon.
    fn maildir(&mut self, addr: &Address) -> anyhow::Result<()> {
        let mail = self.host.path(self.layout.data_dir.join("mail"));
        let store = Store::new(&mail);
        let account = store.account_dir(addr);
        let first_missing =
            [mail.clone(), mail.join(addr.domain()), account.clone()].into_iter().find(|p| !p.exists());
        if let Some(p) = &first_missing {
            self.journal.entries.push(Entry::CreatedTree(p.clone()));
        }
        store
            .create_account(addr)
            .with_context(|| format!("cannot create the Maildir {}", account.display()))?;
        let owner = Owner::of(super::steps::system_user::USER, super::steps::system_user::USER);
        if let (Some(top), Some((uid, gid))) = (first_missing, self.owner(&owner)) {
            chown_tree(&top, uid, gid)?;
        }
        Ok(())
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// How an apply went wrong, and what was put back.
#[derive(Debug)]
pub struct ApplyError {
    pub failed: String,
    pub error: anyhow::Error,
    pub done_before: Vec<String>,
    pub rolled_back: Vec<String>,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the install failed at: {}\n  {:#}", self.failed, self.error)?;
        if self.rolled_back.is_empty() {
            write!(f, "\nnothing had been changed yet")?;
        } else {
            write!(f, "\neverything it had changed was put back:")?;
            for r in &self.rolled_back {
                write!(f, "\n  - {r}")?;
            }
        }
        write!(
            f,
            "\nhelp: packages it installed stay installed (harmless); fix the cause above and run the same command again"
        )
    }
}

impl std::error::Error for ApplyError {}

/// Apply every change of the plan; on failure undo all of them. `tick` is called after
/// each change (the progress bar).
pub fn apply(
    host: &Host,
    layout: &Layout,
    plan: &Plan,
    mut tick: impl FnMut(&Change),
) -> Result<Vec<String>, ApplyError> {
    let mut journal = Journal::new(host);
    let mut warnings = Vec::new();
    let mut done = Vec::new();
    let mut failure = None;
    {
        let mut a = Applier {
            host,
            layout,
            journal: &mut journal,
            directory: None,
            warned_owner: false,
            warnings: Vec::new(),
            state: None,
            kept: Vec::new(),
        };
        for change in plan.changes.iter().filter(|c| c.is_change()) {
            // The database is closed as soon as the directory changes are over.
            if !matches!(
                change.op,
                Op::AddDomain { .. } | Op::AddAccount { .. } | Op::AddAlias { .. } | Op::DkimKeys { .. }
            ) {
                if let Err(e) = a.close_directory() {
                    failure = Some(("closing the account directory".to_owned(), e));
                    break;
                }
            }
            if let Err(e) = a.apply(change) {
                failure = Some((
                    format!("{:?} {} ({:?})", change.kind, change.target, change.action).to_lowercase(),
                    e,
                ));
                break;
            }
            done.push(format!("{:?} {}", change.action, change.target).to_lowercase());
            tick(change);
        }
        if failure.is_none() {
            if let Err(e) = a.close_directory() {
                failure = Some(("closing the account directory".to_owned(), e));
            }
        } else {
            let _ = a.close_directory();
        }
        if failure.is_none() {
            if let Err(e) = a.record_unchanged(plan) {
                failure = Some((format!("recording what was written in {STATE_FILE}"), e));
            }
        }
        warnings.append(&mut a.warnings);
        warnings.append(&mut a.kept);
    }
    match failure {
        None => {
            journal.commit();
            Ok(warnings)
        }
        Some((failed, error)) => {
            journal.rollback();
            Err(ApplyError {
                failed,
                error,
                done_before: done,
                rolled_back: std::mem::take(&mut journal.rolled_back),
            })
        }
    }
}
