//! The daemon's config, /etc/posthaste/posthaste.toml: rendered whole from the answers and
//! parsed by the daemon's own loader before it is planned — alone, and with the site's
//! `conf.d/*.toml` merged over it as the daemon reads it — so the installer never writes a
//! config that `posthaste serve` would refuse. The site's own settings belong in conf.d:
//! the installer never writes there, so they survive every rerun and upgrade.

use anyhow::Context as _;

use super::{file_change, Ctx};
use crate::config::{Config, Layer};
use crate::install::plan::{Change, Kind, Owner};

pub fn plan(ctx: &Ctx, tls: &super::tls::TlsPlan, warnings: &mut Vec<String>) -> anyhow::Result<Vec<Change>> {
    let c = &ctx.answers.components;
    // Never banned: loopback, and the administrator's own address (the SSH client this
    // install runs under), so the guard cannot lock them out.
    let mut allow = vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()];
    if let Some(ip) = ctx.host.probe.admin_ip().filter(|ip| !ip.is_loopback()) {
        allow.push(ipnet::IpNet::from(ip).to_string());
    }
    let acme = tls.acme.as_ref().map(|a| {
        serde_json::json!({
            "directory": a.directory,
            "email": a.email,
            "http_listen": a.http_listen.to_string(),
            "directory_ca": a.directory_ca.as_ref().map(|p| p.display().to_string()),
            "account": a.account.display().to_string(),
        })
    });
    let vars = serde_json::json!({
        "guard_allow": allow,
        "hostname": ctx.answers.hostname,
        "data_dir": ctx.layout.data_dir.display().to_string(),
        "tls_cert": tls.cert,
        "tls_key": tls.key,
        "acme": acme,
        "antispam": c.antispam,
        "antivirus": c.antivirus,
        "guard": c.guard,
        "clamd_socket": ctx.distro.clamd_socket,
        "rspamd_password": if c.antispam { super::antispam::controller_password(ctx) } else { String::new() },
    });
    let text = ctx.renderer.render("posthaste.toml", &vars)?;
    // The answers are validated before this, so the file alone is always right (or this is
    // our bug) …
    Config::parse(&text, &ctx.layout.config)
        .context("BUG: the installer rendered a config the daemon refuses\nhelp: please report this with your answers file")?;
    // … but the daemon reads it with the site's conf.d over it: that must fit too, and if it
    // does not, the administrator's file is named.
    let site = Config::site_layers(&ctx.host.path(&ctx.layout.config)).map_err(|e| anyhow::anyhow!("{e}"))?;
    for layer in &site {
        if let Some(w) = unreadable_for_the_daemon(ctx, &layer.path) {
            warnings.push(w);
        }
    }
    if !site.is_empty() {
        let mut layers = vec![Layer { path: ctx.layout.config.clone(), text: text.clone() }];
        layers.extend(site);
        Config::from_layers(&layers).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nhelp: these are your settings in {}: fix them (or move the file out) and run the install again; nothing was changed",
                ctx.layout.conf_d().display()
            )
        })?;
    }
    let owner = Owner::of("root", super::system_user::USER);
    Ok(vec![file_change(ctx, Kind::File, &ctx.layout.config, text.into_bytes(), 0o640, owner)])
}

/// The installer reads conf.d as root; the daemon reads it as its own user, and refuses to
/// start on a file it cannot read. Said before, not found out at the start.
fn unreadable_for_the_daemon(ctx: &Ctx, file: &std::path::Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(file).ok()?;
    let ids = super::resolve_owner(ctx.host, &Owner::of(super::system_user::USER, super::system_user::USER));
    let mode = meta.mode();
    let readable = match ids {
        Some((uid, _)) if meta.uid() == uid => mode & 0o400 != 0,
        Some((_, gid)) if meta.gid() == gid => mode & 0o040 != 0,
        _ => mode & 0o004 != 0,
    };
    (!readable).then(|| {
        format!(
            "the daemon (user {user}) cannot read {} (mode {:04o}) and will not start: chgrp {user} it and chmod 640 it",
            file.display(),
            mode & 0o7777,
            user = super::system_user::USER
        )
    })
}
