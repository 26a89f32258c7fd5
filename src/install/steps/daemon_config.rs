//! The daemon's config, /etc/posthaste/posthaste.toml: rendered whole from the answers and
//! parsed by the daemon's own loader before it is planned, so the installer can never
//! write a config that `posthaste serve` would refuse.

use anyhow::Context as _;

use super::{file_change, Ctx};
use crate::config::Config;
use crate::install::plan::{Change, Kind, Owner};

pub fn plan(ctx: &Ctx, cert: &str, key: &str) -> anyhow::Result<Vec<Change>> {
    let c = &ctx.answers.components;
    let vars = serde_json::json!({
        "hostname": ctx.answers.hostname,
        "data_dir": ctx.layout.data_dir.display().to_string(),
        "tls_cert": cert,
        "tls_key": key,
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
