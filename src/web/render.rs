//! The pages' templates (tera, `templates/web/`, compiled into the binary so the installed
//! program needs no template files). Autoescaping is on (every name ends in `.html`).

use std::sync::LazyLock;

use super::i18n::Lang;

const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/web/base.html")),
    ("login.html", include_str!("../../templates/web/login.html")),
    ("second_factor.html", include_str!("../../templates/web/second_factor.html")),
    ("message.html", include_str!("../../templates/web/message.html")),
    ("dashboard.html", include_str!("../../templates/web/dashboard.html")),
    ("domains.html", include_str!("../../templates/web/domains.html")),
    ("domain.html", include_str!("../../templates/web/domain.html")),
    ("accounts.html", include_str!("../../templates/web/accounts.html")),
    ("account_admin.html", include_str!("../../templates/web/account_admin.html")),
    ("aliases.html", include_str!("../../templates/web/aliases.html")),
    ("queue.html", include_str!("../../templates/web/queue.html")),
    ("bans.html", include_str!("../../templates/web/bans.html")),
    ("audit.html", include_str!("../../templates/web/audit.html")),
    ("self.html", include_str!("../../templates/web/self.html")),
    ("setup.html", include_str!("../../templates/web/setup.html")),
];

pub const STYLE: &str = include_str!("../../templates/web/style.css");

static TERA: LazyLock<tera::Tera> = LazyLock::new(|| {
    let mut t = tera::Tera::default();
    // tera's own urlencode comes with its "builtins" feature (and its dependencies); this
    // one filter is all the pages need.
    t.register_filter("urlencode", |v: &tera::Value, _: &std::collections::HashMap<String, tera::Value>| {
        let s = tera::try_get_value!("urlencode", "value", String, v);
        Ok(tera::Value::String(super::http::encode(&s)))
    });
    t.add_raw_templates(TEMPLATES.to_vec()).expect("the web templates compile (tested)");
    t
});

/// A page's variables, with the language's strings (`t`) and its code (`lang`) in.
pub fn context(lang: Lang) -> tera::Context {
    let mut c = tera::Context::new();
    c.insert("t", lang.strings());
    c.insert("lang", lang.code());
    c
}

pub fn render(name: &str, ctx: &tera::Context) -> Result<String, String> {
    TERA.render(name, ctx).map_err(|e| {
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        msg
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn templates_compile() {
        assert!(super::TERA.get_template_names().count() >= super::TEMPLATES.len());
    }
}
