//! English and Russian. The language is the `ph_lang` cookie (set by the switch links,
//! `?lang=ru`), else the first of Accept-Language (RFC 9110 §12.5.4) we have, else
//! English. The strings live in `templates/web/i18n/*.toml`, compiled into the binary; a
//! unit test keeps both files' keys the same.

use std::collections::BTreeMap;
use std::sync::LazyLock;

pub const COOKIE: &str = "ph_lang";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ru,
}

type Strings = BTreeMap<String, String>;

static EN: LazyLock<Strings> = LazyLock::new(|| parse(include_str!("../../templates/web/i18n/en.toml")));
static RU: LazyLock<Strings> = LazyLock::new(|| parse(include_str!("../../templates/web/i18n/ru.toml")));

fn parse(text: &str) -> Strings {
    toml::from_str(text).expect("the web's translation files are valid TOML (tested)")
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Lang::En),
            "ru" => Some(Lang::Ru),
            _ => None,
        }
    }

    /// The cookie's choice, else the best Accept-Language we have (by q), else English.
    pub fn choose(cookie: Option<&str>, accept: Option<&str>) -> Lang {
        if let Some(l) = cookie.and_then(Lang::parse) {
            return l;
        }
        let mut best: Option<(f32, Lang)> = None;
        for item in accept.unwrap_or("").split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            if let Some(l) = Lang::parse(primary) {
                if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                    best = Some((q, l));
                }
            }
        }
        best.map_or(Lang::En, |(_, l)| l)
    }

    pub fn strings(self) -> &'static Strings {
        match self {
            Lang::En => &EN,
            Lang::Ru => &RU,
        }
    }

    /// One string; the key itself if it is missing (visible, never a panic).
    pub fn t(self, key: &str) -> String {
        self.strings().get(key).cloned().unwrap_or_else(|| key.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_languages_have_the_same_keys() {
        let en: Vec<&String> = EN.keys().collect();
        let ru: Vec<&String> = RU.keys().collect();
        assert_eq!(en, ru);
        assert!(en.len() > 50);
    }

    #[test]
    fn cookie_then_accept_language() {
        assert_eq!(Lang::choose(None, Some("ru-RU,ru;q=0.9,en-US;q=0.8")), Lang::Ru);
        assert_eq!(Lang::choose(None, Some("de-DE, en;q=0.5, ru;q=0.4")), Lang::En);
        assert_eq!(Lang::choose(Some("ru"), Some("en")), Lang::Ru);
        assert_eq!(Lang::choose(Some("xx"), None), Lang::En);
        assert_eq!(Lang::choose(None, Some("ru;q=0")), Lang::En);
    }
}
