//! Services: the components' daemons, then posthaste itself.
//!
//! With systemd, posthaste gets a hardened unit (User=posthaste, only CAP_NET_BIND_SERVICE,
//! read-only system except its data directory) and is enabled and started; it is restarted
//! when its config, certificate, binary or unit changed. Without systemd ("direct" mode:
//! containers, development machines) the installer starts it in the background; it writes
//! its pidfile in the data directory, and `posthaste status` reads it.

use super::{file_change, Ctx, Mode};
use crate::install::host::Cmd;
use crate::install::plan::{Action, Change, Kind, Op, Owner};

/// The unit file (systemd mode only).
pub fn unit(ctx: &Ctx) -> anyhow::Result<Vec<Change>> {
    if ctx.mode != Mode::Systemd {
        return Ok(vec![]);
    }
    let after: Vec<&String> =
        ctx.distro.services.enabled(&ctx.answers.components).into_iter().flatten().collect();
    let vars = serde_json::json!({
        "binary": ctx.layout.binary.display().to_string(),
        "config": ctx.layout.config.display().to_string(),
        "data_dir": ctx.layout.data_dir.display().to_string(),
        // ACME renewal replaces the certificate files in the TLS directory.
        "acme_tls_dir": matches!(ctx.answers.tls, crate::install::answers::Tls::Acme { .. })
            .then(|| ctx.layout.tls_dir.display().to_string()),
        "after": after,
        // The guard adds bans to an nftables set: that needs CAP_NET_ADMIN and netlink.
        "net_admin": ctx.answers.components.guard,
    });
    let text = ctx.renderer.render("posthaste.service", &vars)?;
    Ok(vec![file_change(ctx, Kind::File, &ctx.layout.unit, text.into_bytes(), 0o644, Owner::root())])
}

fn systemctl(ctx: &Ctx, args: &[&str]) -> Cmd {
    let mut c = Cmd::new("systemctl", &[]);
    if ctx.host.under_root {
        c = c.arg(format!("--root={}", ctx.host.root.display()));
    }
    c.args(args.iter().copied())
}

/// `systemctl is-enabled` and `is-active` (read-only, so asked even in a dry run).
fn systemd_state(ctx: &Ctx, unit: &str) -> (bool, bool) {
    let ok = |args: &[&str]| ctx.host.run(&systemctl(ctx, args)).map(|o| o.success()).unwrap_or(false);
    let enabled = ok(&["is-enabled", "--quiet", unit]);
    // Nothing runs in a --root target.
    // A unit still starting (rspamd compiles its rules for seconds) counts as running.
    let active = !ctx.host.under_root
        && ctx
            .host
            .run(&systemctl(ctx, &["is-active", unit]))
            .is_ok_and(|o| matches!(o.stdout.trim(), "active" | "activating" | "reloading"));
    (enabled, active)
}

/// The components' services: enabled and started when they are not; restarted when a file
/// of their component changed (`changed`: the component names, e.g. "antispam").
pub fn components(ctx: &Ctx, changed: &[String]) -> Vec<Change> {
    let mut changes = Vec::new();
    let s = &ctx.distro.services;
    let c = &ctx.answers.components;
    let per_component = [
        ("antispam", c.antispam, &s.antispam),
        ("antivirus", c.antivirus, &s.antivirus),
        ("guard", c.guard, &s.guard),
    ];
    for (component, svc) in
        per_component.into_iter().filter(|(_, on, _)| *on).flat_map(|(n, _, l)| l.iter().map(move |s| (n, s)))
    {
        let restart = changed.iter().any(|c| c == component);
        if ctx.host.under_root {
            changes.extend(enable_in_root(ctx, svc));
            continue;
        }
        let change = match ctx.mode {
            Mode::Systemd => {
                let (enabled, active) = systemd_state(ctx, svc);
                if enabled && active && restart {
                    let op = Op::Run { cmd: Cmd::new("systemctl", &["restart", svc]), undo: None };
                    Change::new(Kind::Service, svc, Action::Update, ctx.command_op(op))
                        .note("restart: its config changed")
                } else if enabled && active {
                    Change::none(Kind::Service, svc)
                } else {
                    let op = Op::Run {
                        cmd: Cmd::new("systemctl", &["enable", "--now", svc]),
                        undo: Some(Cmd::new("systemctl", &["disable", "--now", svc])),
                    };
                    Change::new(Kind::Service, svc, Action::Create, ctx.command_op(op))
                        .note("enable and start")
                }
            }
            Mode::Direct if !ctx.host.path(format!("/etc/init.d/{svc}")).exists() => {
                let reason = "no systemd and no init script: start it yourself".to_owned();
                Change::new(Kind::Service, svc, Action::Create, Op::Skip { reason })
            }
            Mode::Direct => {
                let running = ctx
                    .host
                    .run(&Cmd::new("service", &[svc, "status"]))
                    .map(|o| o.success())
                    .unwrap_or(false);
                if running && restart {
                    let op = Op::Run { cmd: Cmd::new("service", &[svc, "restart"]), undo: None };
                    Change::new(Kind::Service, svc, Action::Update, ctx.command_op(op))
                        .note("restart: its config changed")
                } else if running {
                    Change::none(Kind::Service, svc)
                } else {
                    let op = Op::Run {
                        cmd: Cmd::new("service", &[svc, "start"]),
                        undo: Some(Cmd::new("service", &[svc, "stop"])),
                    };
                    Change::new(Kind::Service, svc, Action::Create, ctx.command_op(op))
                        .note("start (no systemd: not started at boot)")
                }
            }
        };
        changes.push(change);
    }
    changes
}

/// Under `--root` nothing runs: with systemd in the target, services are enabled there
/// (`systemctl --root`, which works offline) so they start when it boots; without systemd
/// there is nothing to set up (the install says how to start posthaste).
fn enable_in_root(ctx: &Ctx, unit: &str) -> Option<Change> {
    if ctx.mode != Mode::Systemd {
        return None;
    }
    let (enabled, _) = systemd_state(ctx, unit);
    if enabled {
        return Some(Change::none(Kind::Service, unit));
    }
    let op = if ctx.host.commands_allowed() {
        Op::Run { cmd: systemctl(ctx, &["enable", unit]), undo: Some(systemctl(ctx, &["disable", unit])) }
    } else {
        Op::Skip { reason: "not run under --root (add --run-commands)".into() }
    };
    Some(Change::new(Kind::Service, unit, Action::Create, op).note("enable: starts when the target boots"))
}

/// systemd reports a `Type=simple` unit started as soon as it runs; a daemon that then
/// fails (a port taken, an unreadable key) would pass for installed. Look again after a
/// moment, and fail with its log (so the install rolls back) if it is not running.
fn still_running(unit: &str) -> Cmd {
    let script = format!(
        "sleep 2; s=$(systemctl is-active {unit}); [ \"$s\" = active ] && exit 0; \
         echo \"{unit} is $s after starting; its log:\" >&2; journalctl -u {unit} -n 15 --no-pager >&2; exit 1"
    );
    Cmd::new("sh", &["-c", &script])
}

/// The pid in the daemon's pidfile, if that process lives.
pub fn running_pid(ctx_host: &crate::install::host::Host, pidfile: &std::path::Path) -> Option<i32> {
    let text = std::fs::read_to_string(ctx_host.path(pidfile)).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    (!ctx_host.under_root && ctx_host.probe.pid_alive(pid)).then_some(pid)
}

/// posthaste itself. `restart`: something it reads changed in this plan.
pub fn posthaste(ctx: &Ctx, restart: bool) -> Vec<Change> {
    let l = &ctx.layout;
    let name = "posthaste";
    if ctx.host.under_root {
        return enable_in_root(ctx, name).into_iter().collect();
    }
    match ctx.mode {
        Mode::Systemd => {
            let (enabled, active) = systemd_state(ctx, name);
            let reload = Cmd::new("systemctl", &["daemon-reload"]);
            if !enabled || !active {
                let op = Op::RunAll {
                    cmds: vec![
                        (reload, None),
                        (
                            Cmd::new("systemctl", &["enable", "--now", name]),
                            Some(Cmd::new("systemctl", &["disable", "--now", name])),
                        ),
                        (still_running(name), None),
                    ],
                };
                vec![Change::new(Kind::Service, name, Action::Create, ctx.command_op(op))
                    .note("enable and start")]
            } else if restart {
                let op = Op::RunAll {
                    cmds: vec![
                        (reload, None),
                        (Cmd::new("systemctl", &["restart", name]), None),
                        (still_running(name), None),
                    ],
                };
                vec![Change::new(Kind::Service, name, Action::Update, ctx.command_op(op))
                    .note("restart: its files changed")]
            } else {
                vec![Change::none(Kind::Service, name)]
            }
        }
        Mode::Direct => {
            let start = Cmd {
                program: l.binary.display().to_string(),
                args: vec!["--config".into(), l.config.display().to_string(), "serve".into()],
                detach_log: Some(l.log()),
                ..Cmd::default()
            };
            match running_pid(ctx.host, &l.pidfile()) {
                None => {
                    let op = Op::StartDaemon { stop: None, cmd: start, pidfile: l.pidfile(), log: l.log() };
                    vec![Change::new(Kind::Service, name, Action::Create, ctx.command_op(op))
                        .note(format!("start in the background (no systemd); log {}", l.log().display()))]
                }
                Some(pid) if restart => {
                    // Stop, and wait (at most 10 s) until its ports are free again.
                    let script = format!(
                        "kill -TERM {pid}; for i in $(seq 50); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.2; done; exit 1"
                    );
                    let stop = Cmd::new("sh", &["-c", &script]);
                    let op =
                        Op::StartDaemon { stop: Some(stop), cmd: start, pidfile: l.pidfile(), log: l.log() };
                    vec![Change::new(Kind::Service, name, Action::Update, ctx.command_op(op))
                        .note("restart: its files changed")]
                }
                Some(_) => vec![Change::none(Kind::Service, name)],
            }
        }
    }
}
