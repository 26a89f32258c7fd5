//! One file per component step, run in this order. Each step looks at the target, compares
//! it with what the answers ask for, and returns its changes (`none` where all is right);
//! none of them changes anything — `apply` does, from the plan. Rendered files go through
//! [`file_change`], which also tells a file edited by hand from one the installer wrote.
//!
//! 1. `packages`      the distro packages of the enabled components (apt/dnf), after what
//!                    finds them: EPEL, repository files and their keys
//! 2. `system_user`   the unprivileged `posthaste` user the daemon runs as
//! 3. `layout`        directories with their modes (conf.d/ for the site's settings), and
//!                    the binary
//! 4. `tls`           the certificate and key (self-signed, or the given files)
//! 5. `antispam`, `antivirus`  their config files beside the distro's
//! 6. `daemon_config` /etc/posthaste/posthaste.toml, validated by the daemon's own loader
//! 7. `directory`     the domains and the postmaster account
//! 8. `answers_file`  the answers used, for reruns (no plaintext password)
//! 9. `mta`           an existing MTA on our ports: stopped and disabled when allowed
//! 10. `service`      the component services, then posthaste (systemd unit or direct start)

pub mod answers_file;
pub mod antispam;
pub mod antivirus;
pub mod daemon_config;
pub mod directory;
pub mod layout;
pub mod mta;
pub mod packages;
pub mod service;
pub mod system_user;
pub mod tls;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::answers::Answers;
use super::distro::Distro;
use super::host::{Cmd, Host};
use super::plan::{Action, Change, Edited, Kind, Op, Owner};
use super::render::Renderer;
use super::state::{Origin, State};

/// Where everything goes on the target.
#[derive(Debug, Clone)]
pub struct Layout {
    pub config_dir: PathBuf,
    pub config: PathBuf,
    pub answers: PathBuf,
    pub tls_dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub data_dir: PathBuf,
    pub binary: PathBuf,
    pub unit: PathBuf,
    pub log_dir: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            config_dir: "/etc/posthaste".into(),
            config: "/etc/posthaste/posthaste.toml".into(),
            answers: super::answers::SAVED_ANSWERS.into(),
            tls_dir: "/etc/posthaste/tls".into(),
            cert: "/etc/posthaste/tls/fullchain.pem".into(),
            key: "/etc/posthaste/tls/privkey.pem".into(),
            data_dir: "/var/lib/posthaste".into(),
            binary: "/usr/local/sbin/posthaste".into(),
            unit: "/etc/systemd/system/posthaste.service".into(),
            log_dir: "/var/log/posthaste".into(),
        }
    }
}

impl Layout {
    /// The site settings, `conf.d/` beside the config: the administrator's, never written
    /// by the installer (src/config.rs merges them over the config).
    pub fn conf_d(&self) -> PathBuf {
        crate::config::conf_dir(&self.config)
    }
    pub fn db(&self) -> PathBuf {
        self.data_dir.join("directory.db")
    }
    /// The DKIM keys, `{data_dir}/dkim/{domain}/` (src/mailauth/keys.rs).
    pub fn dkim_dir(&self) -> PathBuf {
        self.data_dir.join("dkim")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.data_dir.join("posthaste.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.log_dir.join("posthaste.log")
    }
}

/// How posthaste is started on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A hardened systemd unit.
    Systemd,
    /// No systemd (containers, this kind of development machine): started in the
    /// background by the installer, pidfile in the data directory.
    Direct,
}

/// What the steps read: the target, the answers, the distro, and what was found.
pub struct Ctx<'a> {
    pub host: &'a Host,
    pub distro: &'a Distro,
    pub answers: &'a Answers,
    pub layout: Layout,
    pub mode: Mode,
    pub renderer: Renderer,
    /// Port → process name of what listens there now (empty under `--root`).
    pub port_holders: Vec<(u16, String)>,
    /// What earlier installs wrote (to tell hand edits from our own files).
    pub state: State,
    /// Secrets made during this install, once each.
    pub secrets: Secrets,
}

/// Secrets one install generates: made at first use, the same for every step of that
/// install, never shared with another.
#[derive(Debug, Default)]
pub struct Secrets {
    pub rspamd_controller: std::cell::OnceCell<String>,
}

impl Ctx<'_> {
    /// Commands that change the target, or a `Skip` saying why not.
    /// Under `--root` (with `--run-commands`) they run chrooted into the target.
    pub fn command_op(&self, op: Op) -> Op {
        let t = |c: Cmd| self.host.target_cmd(c);
        if self.host.commands_allowed() {
            match op {
                Op::Run { cmd, undo } => Op::Run { cmd: t(cmd), undo: undo.map(t) },
                Op::RunAll { cmds } => {
                    Op::RunAll { cmds: cmds.into_iter().map(|(c, u)| (t(c), u.map(t))).collect() }
                }
                Op::Packages { install } => Op::Packages { install: install.into_iter().map(t).collect() },
                Op::StartDaemon { stop, cmd, pidfile, log } => {
                    Op::StartDaemon { stop: stop.map(t), cmd: t(cmd), pidfile, log }
                }
                other => other,
            }
        } else {
            Op::Skip { reason: "not run under --root (add --run-commands to run it chrooted)".into() }
        }
    }
}

/// What the distro's templates (repository and component files) are rendered with.
pub fn distro_vars(ctx: &Ctx) -> serde_json::Value {
    let socket = Path::new(&ctx.distro.clamd_socket);
    serde_json::json!({
        "clamd_socket": ctx.distro.clamd_socket,
        "clamd_socket_dir": socket.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        "major": ctx.distro.id.rsplit('-').next().unwrap_or(""),
    })
}

/// Whether the component the distro data names (`antispam`, `antivirus`, `guard`) is on.
pub fn component_enabled(c: &super::answers::Components, name: &str) -> bool {
    match name {
        "antispam" => c.antispam,
        "antivirus" => c.antivirus,
        "guard" => c.guard,
        _ => false,
    }
}

/// uid and gid of a user and group in the target's /etc/passwd and /etc/group.
pub fn resolve_owner(host: &Host, owner: &Owner) -> Option<(u32, u32)> {
    let uid = if owner.user == "root" { Some(0) } else { lookup(host, "/etc/passwd", &owner.user) };
    let gid = if owner.group == "root" { Some(0) } else { lookup(host, "/etc/group", &owner.group) };
    Some((uid?, gid?))
}

fn lookup(host: &Host, file: &str, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(host.path(file)).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok()).flatten()
    })
}

/// Whether an existing path has the mode and (when it can be resolved) the owner wanted.
fn meta_matches(host: &Host, meta: &std::fs::Metadata, mode: u32, owner: &Owner) -> bool {
    if meta.mode() & 0o7777 != mode {
        return false;
    }
    match resolve_owner(host, owner) {
        Some((uid, gid)) => meta.uid() == uid && meta.gid() == gid,
        // The owner does not exist (yet): nothing we could fix now.
        None => true,
    }
}

/// The change for a whole rendered file with these contents, mode and owner. When the file
/// there must be replaced but is not as the installer wrote it (edited by hand, or never
/// written by it), the change carries the diff and is applied only with `--force`, which
/// keeps the old file beside it first.
pub fn file_change(ctx: &Ctx, kind: Kind, path: &Path, contents: Vec<u8>, mode: u32, owner: Owner) -> Change {
    write_change(ctx, kind, path, contents, mode, owner, true)
}

/// A file that is the installer's own record, rewritten from the answers on every run
/// (`answers.yaml`): nobody's edits live there, so it is not checked for them.
pub fn record_change(
    ctx: &Ctx,
    kind: Kind,
    path: &Path,
    contents: Vec<u8>,
    mode: u32,
    owner: Owner,
) -> Change {
    write_change(ctx, kind, path, contents, mode, owner, false)
}

fn write_change(
    ctx: &Ctx,
    kind: Kind,
    path: &Path,
    contents: Vec<u8>,
    mode: u32,
    owner: Owner,
    track: bool,
) -> Change {
    let real = ctx.host.path(path);
    let target = path.display().to_string();
    let hash = super::state::sha256(&contents);
    let mut op = Op::WriteFile {
        path: path.to_owned(),
        contents: contents.clone(),
        mode,
        owner: owner.clone(),
        track,
        keep_copy: false,
    };
    let mut change = match std::fs::symlink_metadata(&real) {
        Err(_) => Change::new(kind, target, Action::Create, op),
        Ok(meta) => {
            let current = if meta.is_file() { std::fs::read(&real).ok() } else { None };
            let same_contents = current.as_deref() == Some(contents.as_slice());
            if same_contents && meta_matches(ctx.host, &meta, mode, &owner) {
                Change::none(kind, target)
            } else {
                let edited = match (&current, track && !same_contents) {
                    (Some(cur), true) => edited(ctx, path, cur, &contents),
                    _ => None,
                };
                if edited.is_some() {
                    if let Op::WriteFile { keep_copy, .. } = &mut op {
                        *keep_copy = true;
                    }
                }
                let note = match edited.as_ref().map(|e| e.origin) {
                    Some(Origin::Edited) => "EDITED by hand since the install wrote it: replacing it loses the lines marked -",
                    Some(_) => "NOT written by this installer (or by an install that kept no record): replacing it loses the lines marked -",
                    None => "",
                };
                let mut c = Change::new(kind, target, Action::Update, op).note(note);
                c.edited = edited;
                c
            }
        }
    };
    if track {
        change.track = Some((path.to_owned(), hash));
    }
    change
}

/// The diff of a file that must be replaced, when it is not one of the versions we wrote.
fn edited(ctx: &Ctx, path: &Path, current: &[u8], wanted: &[u8]) -> Option<Edited> {
    let origin = ctx.state.origin(path, current);
    if origin == Origin::Ours {
        return None;
    }
    let shown = path.display();
    let diff = super::diff::unified(
        &String::from_utf8_lossy(current),
        &String::from_utf8_lossy(wanted),
        &format!("{shown} (on disk)"),
        &format!("{shown} (what the install writes)"),
    );
    Some(Edited { origin, diff })
}

/// The change for a directory with this mode and owner.
pub fn dir_change(ctx: &Ctx, path: &Path, mode: u32, owner: Owner) -> Change {
    let real = ctx.host.path(path);
    let target = format!("{}/", path.display());
    let op = Op::Dir { path: path.to_owned(), mode, owner: owner.clone() };
    match std::fs::metadata(&real) {
        Err(_) => Change::new(Kind::File, target, Action::Create, op),
        Ok(meta) if meta.is_dir() && meta_matches(ctx.host, &meta, mode, &owner) => {
            Change::none(Kind::File, target)
        }
        Ok(_) => Change::new(Kind::File, target, Action::Update, op)
            .note(format!("mode {mode:o}, owner {}", owner.user)),
    }
}
