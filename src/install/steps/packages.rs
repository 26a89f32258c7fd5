//! Packages: what the enabled components need from the distribution (apt or dnf), queried
//! on the target and installed in one batch. Everything a package manager needs to find
//! them comes first, in this order: repository packages (EPEL), then the repository files
//! of the distro data (rspamd's own on Enterprise Linux) as file changes of their own, then
//! their signing keys (`rpm --import`), and only then the packages.

use super::{file_change, Ctx};
use crate::install::distro::PackageManager;
use crate::install::host::{Cmd, Host};
use crate::install::plan::{Action, Change, Kind, Op, Owner};

pub fn plan(ctx: &Ctx) -> anyhow::Result<Vec<Change>> {
    let d = ctx.distro;
    let c = &ctx.answers.components;
    let mut wanted: Vec<String> = Vec::new();
    for list in d.prerequisites.enabled(c).into_iter().chain(d.packages.enabled(c)) {
        for p in list {
            if !wanted.contains(p) {
                wanted.push(p.clone());
            }
        }
    }
    let installed = installed(ctx.host, d.package_manager, &wanted);
    let missing: Vec<&String> = wanted.iter().filter(|p| !installed.contains(p)).collect();
    // Prerequisites (repository packages) first, each in its own transaction: the next
    // install needs the repository they add.
    let prereqs: Vec<&String> = missing
        .iter()
        .copied()
        .filter(|p| d.prerequisites.enabled(c).iter().any(|l| l.contains(p)))
        .collect();
    let rest: Vec<&String> = missing.iter().copied().filter(|p| !prereqs.contains(p)).collect();
    let repositories: Vec<_> =
        d.repositories.iter().filter(|r| super::component_enabled(c, &r.component)).collect();
    let mut cmds = Vec::new();
    if !missing.is_empty() {
        match d.package_manager {
            PackageManager::Apt => {
                cmds.push(Cmd::new("apt-get", &["update"]));
                cmds.push(
                    Cmd::new("apt-get", &["install", "-y", "--no-install-recommends"])
                        .args(rest.iter().map(|s| s.as_str()))
                        .env("DEBIAN_FRONTEND", "noninteractive"),
                );
            }
            PackageManager::Dnf => {
                for p in &prereqs {
                    let source = d.package_sources.get(*p).unwrap_or(p);
                    cmds.push(Cmd::new("dnf", &["install", "-y", source]));
                }
                for r in &repositories {
                    cmds.push(Cmd::new("rpm", &["--import", &r.key]));
                }
                if !rest.is_empty() {
                    cmds.push(Cmd::new("dnf", &["install", "-y"]).args(rest.iter().map(|s| s.as_str())));
                }
            }
        }
    }
    // One change per package says what is missing; the command change after them installs
    // them all in one go (and shows which package manager does it).
    let mut changes: Vec<Change> = wanted
        .iter()
        .map(|p| {
            if installed.contains(p) {
                Change::none(Kind::Package, p)
            } else {
                let from = d.package_sources.get(p).map(String::as_str).unwrap_or("the distribution");
                Change::new(Kind::Package, p, Action::Create, Op::Nothing).note(format!("from {from}"))
            }
        })
        .collect();
    // The repository files before the command that needs them (regression: on EL the plan
    // ran `dnf install -y rspamd …` before writing /etc/yum.repos.d/rspamd.repo).
    let vars = super::distro_vars(ctx);
    for r in &repositories {
        let text = ctx.renderer.render(&r.template, &vars)?;
        changes.push(file_change(ctx, Kind::File, &r.path, text.into_bytes(), 0o644, Owner::root()));
    }
    if !cmds.is_empty() {
        let target = cmds.iter().map(ToString::to_string).collect::<Vec<_>>().join(" && ");
        changes.push(Change::new(
            Kind::Command,
            target,
            Action::Create,
            ctx.command_op(Op::Packages { install: cmds }),
        ));
    }
    Ok(changes)
}

/// Which of `names` are installed on the target (read-only queries, also under --root).
pub fn installed(host: &Host, pm: PackageManager, names: &[String]) -> Vec<String> {
    if names.is_empty() {
        return vec![];
    }
    let root = host.under_root.then(|| host.root.display().to_string());
    let cmd = match pm {
        PackageManager::Apt => {
            let mut c = Cmd::new("dpkg-query", &["-W", "-f=${Package} ${db:Status-Status}\\n"]);
            if let Some(r) = &root {
                c = c.arg(format!("--admindir={r}/var/lib/dpkg"));
            }
            c.args(names.iter().map(String::as_str))
        }
        PackageManager::Dnf => {
            let mut c = Cmd::new("rpm", &["-q", "--qf", "%{NAME} installed\\n"]);
            if let Some(r) = &root {
                c = c.args(["--root", r.as_str()]);
            }
            c.args(names.iter().map(String::as_str))
        }
    };
    // Missing packages make both tools exit 1 while still listing the installed ones;
    // a tool that is not there at all means nothing is installed.
    let Ok(out) = host.run(&cmd) else { return vec![] };
    out.stdout
        .lines()
        .filter_map(|l| {
            let (name, status) = l.split_once(' ')?;
            (status.trim() == "installed" && names.iter().any(|n| n == name)).then(|| name.to_owned())
        })
        .collect()
}
