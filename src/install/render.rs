//! Rendering whole files from `templates/` (tera). Files are never edited in place: what
//! the installer writes depends only on the answers and the distro, so it can be compared
//! with what is on disk, validated before it is written, and written again on a rerun.

use anyhow::Context as _;

/// The templates, compiled into the binary.
const TEMPLATES: &[(&str, &str)] = &[
    ("posthaste.toml", include_str!("../../templates/posthaste.toml.tera")),
    ("posthaste.service", include_str!("../../templates/posthaste.service.tera")),
    ("rspamd-redis.conf", include_str!("../../templates/rspamd-redis.conf.tera")),
    ("rspamd-worker-normal.inc", include_str!("../../templates/rspamd-worker-normal.inc.tera")),
    ("rspamd-worker-controller.inc", include_str!("../../templates/rspamd-worker-controller.inc.tera")),
    ("rspamd-worker-proxy.inc", include_str!("../../templates/rspamd-worker-proxy.inc.tera")),
    ("rspamd-classifier-bayes.conf", include_str!("../../templates/rspamd-classifier-bayes.conf.tera")),
    ("rspamd-greylist.conf", include_str!("../../templates/rspamd-greylist.conf.tera")),
    ("rspamd-dkim-signing.conf", include_str!("../../templates/rspamd-dkim-signing.conf.tera")),
    ("rspamd-el.repo", include_str!("../../templates/rspamd-el.repo.tera")),
    ("clamd-el.conf", include_str!("../../templates/clamd-el.conf.tera")),
    ("clamd-el-tmpfiles.conf", include_str!("../../templates/clamd-el-tmpfiles.conf.tera")),
];

pub struct Renderer {
    tera: tera::Tera,
}

impl Renderer {
    pub fn new() -> Renderer {
        let mut tera = tera::Tera::default();
        // None of our outputs is HTML: never escape.
        tera.autoescape_on(vec![]);
        tera.add_raw_templates(TEMPLATES.iter().copied()).expect("the built-in templates parse");
        Renderer { tera }
    }

    pub fn render(&self, name: &str, ctx: &impl serde::Serialize) -> anyhow::Result<String> {
        let ctx = tera::Context::from_serialize(ctx).context("template context")?;
        self.tera.render(name, &ctx).map_err(|e| {
            // tera's Display is only the outer message; the cause says what went wrong.
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg += &format!(": {s}");
                src = s.source();
            }
            anyhow::anyhow!("cannot render template {name}: {msg}")
        })
    }
}

impl Default for Renderer {
    fn default() -> Self {
        Renderer::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_renders_with_a_full_context() {
        let r = Renderer::new();
        let ctx = serde_json::json!({
            "hostname": "mail.example.test", "data_dir": "/var/lib/posthaste",
            "tls_cert": "/c", "tls_key": "/k", "rspamd_password": "pw", "password": "pw", "password_file": "/p", "antispam": true, "antivirus": true, "guard": false,
            "clamd_socket": "/run/clamd.posthaste/clamd.sock", "clamd_socket_dir": "/run/clamd.posthaste",
            "binary": "/usr/local/sbin/posthaste", "config": "/etc/posthaste/posthaste.toml",
            "after": ["rspamd"], "major": "9",
        });
        for (name, _) in TEMPLATES {
            let out = r.render(name, &ctx).unwrap();
            assert!(!out.contains("{{") && !out.contains("{%"), "{name}: {out}");
        }
        let unit = r.render("posthaste.service", &ctx).unwrap();
        assert!(unit.contains("After=network-online.target rspamd.service\n"), "{unit}");
    }
}
