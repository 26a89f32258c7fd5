//! Spam filtering: rspamd, with Redis/Valkey for Bayes and greylisting. The daemon sends
//! each message to rspamd's scanner on 127.0.0.1:11333 (`[antispam] rspamd` in
//! posthaste.toml) and teaches it through the controller on 127.0.0.1:11334 when users
//! move mail into or out of Junk (`controller`, `controller_password`).
//!
//! Everything goes into files of our own in rspamd's local.d/ and override.d/ (the
//! distro's files stay untouched):
//! - `local.d/redis.conf`: the local Redis, for Bayes, greylisting and rate limits;
//! - `local.d/classifier-bayes.conf`: Bayes in Redis, learned from Junk moves only;
//! - `local.d/greylist.conf`: greylisting on (its `451 4.7.1` comes from posthaste);
//! - `local.d/dkim_signing.conf`: off, posthaste signs;
//! - `override.d/worker-{normal,controller,proxy}.inc`: every worker on 127.0.0.1 (the
//!   distro binds `localhost`, which is also ::1; override.d replaces, local.d would add),
//!   and the controller's password.
//!
//! The controller password: generated once and kept in plain text in
//! /etc/posthaste/rspamd-controller.pass (0600, root) and in posthaste.toml (0640,
//! root:posthaste); rspamd gets it hashed with `rspamadm pw` when that program can run at
//! install time, else in plain text in a file only root can read (rspamd reads its config
//! as root before dropping privileges). A rerun keeps the password and the controller file
//! (so a first install on a host without rspamd keeps the plain-text form until the file
//! is removed; the next run then hashes it).

use std::path::Path;

use super::{file_change, Ctx};
use crate::install::host::Cmd;
use crate::install::plan::{Change, Kind, Owner};

/// The controller password in plain text (for the admin's web UI login, and reruns).
pub const PASSWORD_FILE: &str = "/etc/posthaste/rspamd-controller.pass";
const CONTROLLER_INC: &str = "/etc/rspamd/override.d/worker-controller.inc";
/// The group rspamd runs as (Debian, Ubuntu, EPEL and rspamd's own packages).
const RSPAMD_GROUP: &str = "_rspamd";

pub fn plan(ctx: &Ctx) -> anyhow::Result<Vec<Change>> {
    if !ctx.answers.components.antispam {
        return Ok(vec![]);
    }
    let mut changes = component_files(ctx, "antispam")?;
    let vars = serde_json::json!({});
    for (template, path) in [
        ("rspamd-classifier-bayes.conf", "/etc/rspamd/local.d/classifier-bayes.conf"),
        ("rspamd-greylist.conf", "/etc/rspamd/local.d/greylist.conf"),
        ("rspamd-dkim-signing.conf", "/etc/rspamd/local.d/dkim_signing.conf"),
        ("rspamd-worker-normal.inc", "/etc/rspamd/override.d/worker-normal.inc"),
        ("rspamd-worker-proxy.inc", "/etc/rspamd/override.d/worker-proxy.inc"),
    ] {
        let text = ctx.renderer.render(template, &vars)?;
        changes.push(file_change(ctx, Kind::File, Path::new(path), text.into_bytes(), 0o644, Owner::root()));
    }
    let password = controller_password(ctx);
    changes.push(file_change(
        ctx,
        Kind::File,
        Path::new(PASSWORD_FILE),
        format!("{password}\n").into_bytes(),
        0o600,
        Owner::root(),
    ));
    let controller = match existing_controller(ctx, &password) {
        Some(text) => text,
        None => {
            let secret = hash_password(ctx, &password).unwrap_or(password);
            ctx.renderer.render(
                "rspamd-worker-controller.inc",
                &serde_json::json!({"password": secret, "password_file": PASSWORD_FILE}),
            )?
        }
    };
    changes.push(file_change(
        ctx,
        Kind::File,
        Path::new(CONTROLLER_INC),
        controller.into_bytes(),
        // rspamd reads its config as its own user (the Debian and EL units run it as
        // _rspamd): readable by that group, by nobody else.
        0o640,
        Owner::of("root", RSPAMD_GROUP),
    ));
    Ok(changes)
}

/// The controller password posthaste.toml and rspamd share: the one stored by an earlier
/// install, or a new random one — made once per install (kept in the [`Ctx`], so every step
/// of this run gets the same one and another install, even in the same process, its own:
/// a process-wide cell gave every install in one process one password).
pub fn controller_password(ctx: &Ctx) -> String {
    if let Ok(text) = std::fs::read_to_string(ctx.host.path(PASSWORD_FILE)) {
        let text = text.trim();
        if !text.is_empty() {
            return text.to_owned();
        }
    }
    ctx.secrets
        .rspamd_controller
        .get_or_init(|| {
            use rand::distributions::{Alphanumeric, DistString};
            Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
        })
        .clone()
}

/// An earlier install's controller file for this password (hashed, or in plain text when
/// rspamadm could not run then), kept as it is: a new salt would rewrite it on every run,
/// and a rerun with unchanged answers must plan nothing.
fn existing_controller(ctx: &Ctx, password: &str) -> Option<String> {
    std::fs::metadata(ctx.host.path(PASSWORD_FILE)).ok()?;
    let text = std::fs::read_to_string(ctx.host.path(CONTROLLER_INC)).ok()?;
    let ours = text.contains("posthaste install");
    (ours && (text.contains("\"$2$") || text.contains(&format!("password = \"{password}\";"))))
        .then_some(text)
}

/// `rspamadm pw -p PASSWORD` → `$2$…` (catena hash), when rspamadm can run now.
fn hash_password(ctx: &Ctx, password: &str) -> Option<String> {
    if !ctx.host.commands_allowed() {
        return None;
    }
    let cmd = ctx.host.target_cmd(Cmd::new("rspamadm", &["pw", "-p", password]));
    let out = ctx.host.run(&cmd).ok()?;
    let hash = out.stdout.trim();
    (out.success() && hash.starts_with("$2$") && !hash.contains(['"', '\n'])).then(|| hash.to_owned())
}

/// The distro's extra files for a component, rendered from templates/.
pub fn component_files(ctx: &Ctx, component: &str) -> anyhow::Result<Vec<Change>> {
    let vars = super::distro_vars(ctx);
    let mut changes = Vec::new();
    for f in ctx.distro.files.iter().filter(|f| f.component == component) {
        let text = ctx.renderer.render(&f.template, &vars)?;
        changes.push(file_change(ctx, Kind::File, &f.path, text.into_bytes(), 0o644, Owner::root()));
    }
    Ok(changes)
}
