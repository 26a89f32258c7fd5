//! Preflight: what must be true of the machine before anything is changed. Every finding
//! says what to do about it (`help:`). Errors stop the install before the plan is applied;
//! warnings are shown with the plan.
//!
//! Under `--root` the target is not the running machine, so only the checks about the
//! target directory apply (its disk space); ports, memory, root and name resolution are
//! about the machine that will run the server.

use super::answers::Answers;
use super::host::{Host, OutboundSmtp};
use super::steps::{mta, Layout};

/// The ports posthaste listens on.
pub const PORTS: &[u16] = &[25, 465, 587, 143, 993, 110, 995];
/// ClamAV needs about 2 GB; a "2 GB" VM reports a little less as MemTotal.
pub const CLAMAV_MIN_RAM: u64 = 1900 << 20;
/// Room for the queue, some mail and ClamAV's signatures.
pub const MIN_DISK: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// Which check a finding comes from: what code decides on (the wording is for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    DiskSpace,
    Root,
    HostnameAddress,
    Port,
    ClamavMemory,
    OutboundSmtp,
    Systemd,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub check: Check,
    pub severity: Severity,
    pub message: String,
    pub help: String,
}

impl Finding {
    fn error(check: Check, message: String, help: String) -> Finding {
        Finding { check, severity: Severity::Error, message, help }
    }
    fn warning(check: Check, message: String, help: String) -> Finding {
        Finding { check, severity: Severity::Warning, message, help }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n  help: {}", self.message, self.help)
    }
}

/// What listens on our ports now: (port, process name). Empty under `--root`.
pub fn port_holders(host: &Host) -> Vec<(u16, String)> {
    if host.under_root {
        return vec![];
    }
    PORTS.iter().filter_map(|p| host.probe.port_holder(*p).map(|who| (*p, who))).collect()
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GB", bytes as f64 / (1u64 << 30) as f64)
}

/// Every check, all at once.
pub fn check(host: &Host, answers: &Answers, layout: &Layout, holders: &[(u16, String)]) -> Vec<Finding> {
    let mut f = Vec::new();
    let probe = &host.probe;

    if let Some(free) = probe.disk_free_bytes(&host.path(&layout.data_dir)) {
        if free < MIN_DISK {
            f.push(Finding::error(
                Check::DiskSpace,
                format!("only {} free for {}", gib(free), layout.data_dir.display()),
                format!(
                    "posthaste needs at least {} there (queue, mail, ClamAV signatures); free some space",
                    gib(MIN_DISK)
                ),
            ));
        }
    }
    if host.under_root {
        return f;
    }

    if !probe.is_root() {
        f.push(Finding::error(
            Check::Root,
            "the install must run as root".into(),
            "run it with sudo, or as root (or use --root DIR to prepare a directory)".into(),
        ));
    }

    let addrs = probe.resolve(&answers.hostname);
    if addrs.is_empty() {
        f.push(Finding::warning(
            Check::HostnameAddress,
            format!("{} does not resolve to an address yet", answers.hostname),
            "publish an A (and AAAA) record for it pointing at this server; mail from other servers needs it"
                .into(),
        ));
    } else if let Some(lo) = addrs.iter().find(|a| a.is_loopback()) {
        f.push(Finding::warning(
            Check::HostnameAddress,
            format!("{} resolves to {lo} on this machine", answers.hostname),
            "an /etc/hosts line maps it to loopback: point it at the server's public address instead, so the name this server gives itself is the one others reach".into(),
        ));
    }

    for (port, who) in holders {
        if who == "posthaste" {
            continue;
        }
        match mta::known(who) {
            // Planned: the mta step stops and disables it.
            Some(_) if answers.replace_existing_mta => {}
            Some((name, svc)) => f.push(Finding::error(
                Check::Port,
                format!("port {port} is in use by {name} ({who})"),
                format!("set replace_existing_mta: true to have the installer stop and disable it, or stop it yourself (systemctl disable --now {svc})"),
            )),
            None => f.push(Finding::error(
                Check::Port,
                format!("port {port} is in use by {who}"),
                format!("stop that program, or find it with `ss -ltnp 'sport = :{port}'`"),
            )),
        }
    }

    if answers.components.antivirus {
        if let Some(mem) = probe.mem_total_bytes() {
            if mem < CLAMAV_MIN_RAM {
                f.push(Finding::error(
                    Check::ClamavMemory,
                    format!("ClamAV needs about 2 GB of RAM and this machine has {}", gib(mem)),
                    "set components: {antivirus: false} (spam filtering still works), or add memory".into(),
                ));
            }
        }
    }

    // Only a warning: mail still comes in, and a relay can be configured later.
    match probe.outbound_smtp() {
        OutboundSmtp::Open => {}
        OutboundSmtp::Blocked(detail) => f.push(Finding::warning(
            Check::OutboundSmtp,
            format!("outgoing connections to port 25 of other mail servers fail ({detail})"),
            "many hosting providers block port 25: ask yours to open it, or mail to other servers stays in the queue (`posthaste queue list`)".into(),
        )),
        OutboundSmtp::Unknown(detail) => f.push(Finding::warning(
            Check::OutboundSmtp,
            format!("could not test outgoing port 25 ({detail}; offline?)"),
            "nothing to do if this machine is offline on purpose; otherwise check its DNS resolver".into(),
        )),
    }

    if !probe.systemd_running() {
        f.push(Finding::warning(
            Check::Systemd,
            "systemd is not running here: posthaste will be started directly (direct mode), and not again after a reboot".into(),
            "on a server, install on a system booted with systemd; in a container, start `posthaste serve` from its entry point".into(),
        ));
    }
    f
}
