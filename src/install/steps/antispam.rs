//! Spam filtering: rspamd, with Redis/Valkey for Bayes and greylisting. rspamd's default
//! worker already listens on 127.0.0.1:11333, where the daemon sends each message
//! (`[antispam] rspamd` in posthaste.toml); we only add its Redis server setting, in a
//! local.d file of our own (the distro's files stay untouched).

use super::{file_change, Ctx};
use crate::install::plan::{Change, Kind, Owner};

pub fn plan(ctx: &Ctx) -> anyhow::Result<Vec<Change>> {
    if !ctx.answers.components.antispam {
        return Ok(vec![]);
    }
    component_files(ctx, "antispam")
}

/// The distro's extra files for a component, rendered from templates/.
pub fn component_files(ctx: &Ctx, component: &str) -> anyhow::Result<Vec<Change>> {
    let socket = std::path::Path::new(&ctx.distro.clamd_socket);
    let vars = serde_json::json!({
        "clamd_socket": ctx.distro.clamd_socket,
        "clamd_socket_dir": socket.parent().map(|p| p.display().to_string()).unwrap_or_default(),
        "major": ctx.distro.id.rsplit('-').next().unwrap_or(""),
    });
    let mut changes = Vec::new();
    for f in ctx.distro.files.iter().filter(|f| f.component == component) {
        let text = ctx.renderer.render(&f.template, &vars)?;
        changes.push(file_change(ctx, Kind::File, &f.path, text.into_bytes(), 0o644, Owner::root()));
    }
    Ok(changes)
}
