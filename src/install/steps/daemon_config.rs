//! The daemon's config, /etc/posthaste/posthaste.toml: rendered whole from the answers and
//! parsed by the daemon's own loader before it is planned, so the installer can never
//! write a config that `posthaste serve` would refuse.

use anyhow::Context as _;

use super::{file_change, Ctx};
use crate::config::Config;
use crate::install::plan::{Change, Kind, Owner};

pub fn plan(ctx: &Ctx, tls: &super::tls::TlsPlan) -> anyhow::Result<Vec<Change>> {
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
    Config::parse(&text, &ctx.layout.config)
        .context("BUG: the installer rendered a config the daemon refuses\nhelp: please report this with your answers file")?;
    let owner = Owner::of("root", super::system_user::USER);
    Ok(vec![file_change(ctx, Kind::File, &ctx.layout.config, text.into_bytes(), 0o640, owner)])
}
