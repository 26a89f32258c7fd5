//! `posthaste status`: is the daemon running? Under systemd the unit says; without it
//! ("direct" mode) the pidfile names the process. It works for any user: the config and
//! the pidfile may be unreadable to them (0640 files of the daemon's user), and the daemon
//! runs as another user, whose process a non-root `kill(pid, 0)` reports as EPERM — that
//! process exists, it is just not ours to signal.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{Error, Result};
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};

/// What `status` looks at on the machine (a seam, so the installer's tests can use their
/// fake host).
pub trait Probe {
    /// `systemctl is-active posthaste`, or None when systemd does not run this machine.
    fn systemd_state(&self) -> Option<String>;
    /// Does process `pid` exist, and is it a posthaste daemon?
    fn is_daemon(&self, pid: i32) -> bool;
    /// The `posthaste … serve` processes started with `config` (from the process list),
    /// for when the pidfile cannot be read.
    fn daemons_of(&self, config: &Path) -> Vec<i32>;
    fn read(&self, path: &Path) -> io::Result<String>;
}

/// This machine.
pub struct System;

impl Probe for System {
    fn systemd_state(&self) -> Option<String> {
        // sd_booted(3): this directory exists only when systemd is PID 1.
        if !Path::new("/run/systemd/system").is_dir() {
            return None;
        }
        let out = std::process::Command::new("systemctl").args(["is-active", "posthaste"]).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn is_daemon(&self, pid: i32) -> bool {
        pid > 0 && process_exists(pid) && cmdline(pid).is_none_or(|args| is_serve(&args))
    }

    fn daemons_of(&self, config: &Path) -> Vec<i32> {
        let Ok(proc) = std::fs::read_dir("/proc") else { return vec![] };
        let wanted = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
        let mut pids: Vec<i32> = proc
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| {
                cmdline(pid)
                    .is_some_and(|args| is_serve(&args) && config_of(&args).is_some_and(|c| c == wanted))
            })
            .collect();
        pids.sort();
        pids
    }

    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// kill(2) with signal 0: ESRCH means no such process; EPERM means it exists but belongs to
/// another user (the daemon, seen by an unprivileged admin).
fn process_exists(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// A process's arguments, if /proc shows them (not with `hidepid`).
fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// `posthaste … serve`: a pidfile left by a crash may name a pid that now belongs to
/// another program.
fn is_serve(args: &[String]) -> bool {
    let name = args.first().and_then(|a| Path::new(a).file_name()).map(|n| n.to_string_lossy().into_owned());
    name.is_some_and(|n| n.contains("posthaste")) && args.iter().skip(1).any(|a| a == "serve")
}

/// The config a `posthaste … serve` command line names (`--config F`, `--config=F`, or
/// the default).
fn config_of(args: &[String]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    let mut config = PathBuf::from(DEFAULT_CONFIG_PATH);
    while let Some(a) = it.next() {
        if a == "--config" {
            config = it.next()?.into();
        } else if let Some(c) = a.strip_prefix("--config=") {
            config = c.into();
        }
    }
    Some(std::fs::canonicalize(&config).unwrap_or(config))
}

/// The running daemon's pid from its pidfile, if it is a live `posthaste … serve`.
pub fn daemon_pid(config: &Config) -> Option<i32> {
    let text = std::fs::read_to_string(config.pidfile()).ok()?;
    let pid = text.trim().parse::<i32>().ok()?;
    System.is_daemon(pid).then_some(pid)
}

/// How the daemon is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Systemd,
    Direct,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub running: bool,
    pub mode: Mode,
    /// systemd: what `systemctl is-active` said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub systemd_state: Option<String>,
    pub pid: Option<i32>,
    /// Direct mode: where the pid is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pidfile: Option<PathBuf>,
    /// What could not be looked at, and how the answer was found instead.
    pub notes: Vec<String>,
    /// Where a direct-mode daemon logs (for the advice when it is not running).
    #[serde(skip)]
    pub log: PathBuf,
}

impl Status {
    /// The line for a running daemon.
    pub fn summary(&self) -> String {
        match (self.mode, self.pid, &self.pidfile) {
            (Mode::Systemd, _, _) => "posthaste is running (systemd unit posthaste.service)".into(),
            (Mode::Direct, Some(pid), Some(pidfile)) => {
                format!("posthaste is running (pid {pid}, direct mode, pidfile {})", pidfile.display())
            }
            (Mode::Direct, Some(pid), None) => format!("posthaste is running (pid {pid}, direct mode)"),
            (Mode::Direct, None, _) => "posthaste is not running".into(),
        }
    }

    /// Ok for a running daemon; otherwise the error that says why and what to do.
    pub fn require_running(&self) -> Result<()> {
        if self.running {
            return Ok(());
        }
        Err(match self.mode {
            Mode::Systemd => Error::failed(format!(
                "posthaste is not running (systemd says: {})",
                self.systemd_state.as_deref().unwrap_or("")
            ))
            .help("journalctl -u posthaste shows why; start it with systemctl start posthaste"),
            Mode::Direct => {
                let place = match &self.pidfile {
                    Some(p) => format!("no live pid in {}", p.display()),
                    None => "no posthaste serve process for this config".into(),
                };
                Error::failed(format!("posthaste is not running ({place})")).help(format!(
                    "start it with `posthaste serve` (rerunning the install also starts it); its log is in {}",
                    self.log.display()
                ))
            }
        })
    }
}

/// The daemon's state. `log`: where a direct-mode daemon writes its log (the installer's
/// layout), for the advice. Only a missing or invalid config is an error here; a stopped
/// daemon is a [`Status`] with `running: false` (see [`Status::require_running`]).
pub fn status(probe: &dyn Probe, config_path: &Path, log: &Path) -> Result<Status> {
    let mut st = Status {
        running: false,
        mode: Mode::Direct,
        systemd_state: None,
        pid: None,
        pidfile: None,
        notes: vec![],
        log: log.to_owned(),
    };
    if let Some(state) = probe.systemd_state() {
        st.mode = Mode::Systemd;
        st.running = state == "active";
        st.systemd_state = Some(state);
        return Ok(st);
    }
    let pidfile = match Config::load(config_path) {
        Ok(config) => Some(config.pidfile()),
        Err(ConfigError::Read { source, .. }) if source.kind() == io::ErrorKind::PermissionDenied => {
            st.notes.push(format!(
                "cannot read {} (permission denied): looked for its daemon in the process list",
                config_path.display()
            ));
            None
        }
        Err(e) => return Err(Error::failed("posthaste does not seem to be installed").caused_by(&e)),
    };
    let mut from_pidfile = None;
    if let Some(path) = &pidfile {
        match probe.read(path) {
            Ok(text) => from_pidfile = Some(text.trim().parse::<i32>().ok()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => st.notes.push(format!(
                "cannot read {} (permission denied): looked for the daemon in the process list",
                path.display()
            )),
            Err(_) => from_pidfile = Some(None),
        }
    }
    st.pid = match from_pidfile {
        Some(pid) => pid.filter(|&p| probe.is_daemon(p)),
        None => probe.daemons_of(config_path).first().copied(),
    };
    st.running = st.pid.is_some();
    st.pidfile = pidfile;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_command_lines_and_their_configs() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(is_serve(&args("/usr/local/sbin/posthaste serve")));
        assert!(is_serve(&args("posthaste --config /x.toml serve")));
        assert!(!is_serve(&args("posthaste status")));
        assert!(!is_serve(&args("/usr/bin/sleep serve")));
        assert_eq!(
            config_of(&args("posthaste --config /nonexistent/x.toml serve")),
            Some("/nonexistent/x.toml".into())
        );
        assert_eq!(
            config_of(&args("posthaste --config=/nonexistent/y.toml serve")),
            Some("/nonexistent/y.toml".into())
        );
    }

    #[test]
    fn our_own_process_exists_and_a_free_pid_does_not() {
        assert!(process_exists(std::process::id() as i32));
        // PID 1 belongs to root: for a non-root test run it is EPERM, and still exists.
        assert!(process_exists(1));
        assert!(!process_exists(i32::MAX));
    }
}
