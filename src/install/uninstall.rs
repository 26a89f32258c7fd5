//! `posthaste uninstall`: stop and remove the service, its unit, the binary and the config.
//! Mail, keys, the account directory and the `posthaste` user stay unless `--purge`
//! (which asks first, or needs `--yes`). Packages the install added (rspamd, ClamAV, …)
//! stay: other software may use them.

use std::path::PathBuf;

use anyhow::bail;

use super::host::{Cmd, Host};
use super::plan::{Action, Change, Kind, Op, Plan};
use super::steps::{system_user, Layout, Mode};

#[derive(clap::Args, Debug, Default, Clone)]
pub struct UninstallArgs {
    /// Also delete mail, keys, the account directory and the posthaste user.
    #[arg(long)]
    pub purge: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Show the plan; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Uninstall from this directory (a target system's root).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

fn remove_if_exists(host: &Host, kind: Kind, path: &std::path::Path, tree: bool) -> Option<Change> {
    host.path(path).exists().then(|| {
        let op = if tree {
            Op::RemoveTree { path: path.to_owned() }
        } else {
            Op::RemoveFile { path: path.to_owned() }
        };
        Change::new(kind, format!("{}{}", path.display(), if tree { "/" } else { "" }), Action::Remove, op)
    })
}

pub fn plan(host: &Host, purge: bool) -> Plan {
    let l = Layout::default();
    let mode = super::detect_mode(host);
    let mut changes = Vec::new();
    let allowed = host.commands_allowed();
    let skip = || Op::Skip { reason: "not run under --root".into() };
    match mode {
        Mode::Systemd if host.path(&l.unit).exists() => {
            let op = Op::RunAll {
                cmds: vec![(
                    Cmd::new("systemctl", &["disable", "--now", "posthaste"]),
                    Some(Cmd::new("systemctl", &["enable", "--now", "posthaste"])),
                )],
            };
            changes.push(Change::new(
                Kind::Service,
                "posthaste",
                Action::Remove,
                if allowed { op } else { skip() },
            ));
        }
        Mode::Direct => {
            if let Some(pid) = super::steps::service::running_pid(host, &l.pidfile()) {
                let script = format!("kill -TERM {pid}; for i in $(seq 50); do kill -0 {pid} 2>/dev/null || exit 0; sleep 0.2; done; exit 1");
                let op = Op::Run { cmd: Cmd::new("sh", &["-c", &script]), undo: None };
                changes.push(Change::new(
                    Kind::Service,
                    "posthaste",
                    Action::Remove,
                    if allowed { op } else { skip() },
                ));
            }
        }
        _ => {}
    }
    changes.extend(remove_if_exists(host, Kind::File, &l.unit, false));
    if mode == Mode::Systemd && host.path(&l.unit).exists() && allowed {
        changes.push(Change::new(
            Kind::Command,
            "systemctl daemon-reload",
            Action::Update,
            Op::Run { cmd: Cmd::new("systemctl", &["daemon-reload"]), undo: None },
        ));
    }
    changes.extend(remove_if_exists(host, Kind::File, &l.binary, false));
    changes.extend(remove_if_exists(host, Kind::File, &l.config, false));
    changes.extend(remove_if_exists(host, Kind::File, &l.answers, false));
    // The files the install rendered for the components (rspamd's local.d/override.d, …):
    // ours, so they go with us — left behind, a later install would find files it has no
    // record of and refuse to replace them. One edited since is kept, with a warning.
    let mut warnings = Vec::new();
    let state = super::state::State::read(host);
    let listed: Vec<PathBuf> = changes
        .iter()
        .filter_map(|c| match &c.op {
            Op::RemoveFile { path } => Some(path.clone()),
            _ => None,
        })
        .collect();
    for (path, _) in &state.files {
        let path = PathBuf::from(path);
        if path.starts_with(&l.config_dir) || path.starts_with(&l.data_dir) || listed.contains(&path) {
            continue;
        }
        let Ok(current) = std::fs::read(host.path(&path)) else { continue };
        match state.origin(&path, &current) {
            super::state::Origin::Ours => changes.extend(remove_if_exists(host, Kind::File, &path, false)),
            _ => warnings.push(format!(
                "{} was changed since the install wrote it: kept (remove it yourself if it is no longer needed)",
                path.display()
            )),
        }
    }
    if purge {
        // Not undoable: last, after everything that can fail.
        changes.extend(remove_if_exists(host, Kind::Key, &l.tls_dir, true));
        changes.extend(remove_if_exists(host, Kind::File, &l.config_dir, true));
        changes.extend(remove_if_exists(host, Kind::File, &l.log_dir, true));
        changes.extend(remove_if_exists(host, Kind::File, &l.data_dir, true));
        if super::steps::resolve_owner(host, &super::plan::Owner::of(system_user::USER, system_user::USER))
            .is_some()
        {
            let op = Op::Run { cmd: host.target_cmd(Cmd::new("userdel", &[system_user::USER])), undo: None };
            changes.push(Change::new(
                Kind::User,
                system_user::USER,
                Action::Remove,
                if allowed { op } else { skip() },
            ));
        }
    }
    let distro = super::distro::detect_host(host).map(|d| d.id).unwrap_or_else(|_| "unknown".into());
    Plan { distro, changes, warnings }
}

pub fn uninstall(host: &Host, args: &UninstallArgs) -> anyhow::Result<Plan> {
    let plan = plan(host, args.purge);
    if args.dry_run {
        host.say(if args.json { plan.to_json() } else { plan.render() });
        return Ok(plan);
    }
    if !args.json {
        host.say(plan.render());
    }
    if plan.pending() == 0 {
        if !args.json {
            host.say("posthaste is not installed here: nothing to remove.");
        }
        return Ok(plan);
    }
    if !args.yes {
        let question = if args.purge {
            "Remove posthaste AND delete all mail, keys and accounts? This cannot be undone."
        } else {
            "Remove posthaste? (mail, keys and accounts stay)"
        };
        match &host.prompter {
            Some(p) if p.confirm(question, false)? => {}
            Some(_) => bail!("stopped: nothing was changed"),
            None => bail!(
                "not removing anything without confirmation: there is no terminal to ask\nhelp: add --yes"
            ),
        }
    }
    let layout = Layout::default();
    apply_plan(host, &layout, &plan)?;
    if args.json {
        host.say(plan.to_json());
    } else if args.purge {
        host.say("posthaste was removed, with its mail, keys and accounts.");
    } else {
        host.say(format!(
            "posthaste was removed. Mail, keys and accounts stay in {} and {} (uninstall --purge deletes them).",
            layout.data_dir.display(),
            layout.tls_dir.display()
        ));
    }
    Ok(plan)
}

fn apply_plan(host: &Host, layout: &Layout, plan: &Plan) -> anyhow::Result<()> {
    super::apply::apply(host, layout, plan, |_| {}).map(|_| ()).map_err(anyhow::Error::new)
}
