//! Host names: the one rule for every fully qualified domain name posthaste accepts — its
//! own `hostname`, ACME names, mail domains (of addresses, `domain add`, the installer's
//! answers) and the HELO identity SPF checks.
//!
//! A leaf: it imports nothing of posthaste, so `address`, `config`, `install` and
//! `mailauth` can all use it.
//!
//! The rule, and why each part:
//! - labels of ASCII letters, digits and hyphens, not starting or ending with a hyphen
//!   (RFC 1035 §2.3.1 as relaxed by RFC 1123 §2.1 to allow a leading digit). Mail names
//!   are looked up in DNS, so the stricter host name syntax applies, not DNS's "any octet".
//! - internationalised names only as A-labels (`xn--…`, RFC 5890 §2.3.2.1): those are LDH
//!   labels already; a U-label (`bücher`) is refused with a hint, because SMTP without
//!   SMTPUTF8 and DNS both need the A-label.
//! - 1 to 63 octets per label, at most 253 characters in all (RFC 1035 §2.3.4: 255 octets
//!   on the wire, which is 253 characters written with dots and without the root).
//! - one final dot (the root, "mail.example.org.") is accepted and dropped.
//! - at least two labels: a bare word (`localhost`, `mail`) is not fully qualified.
//! - the last label is not all digits (RFC 1123 §2.1: "a valid host name can never have
//!   the dotted-decimal form #.#.#.#"; no top-level domain is numeric), so an IPv4 address
//!   is never taken for a name.
//! - compared and stored lowercased (RFC 4343 §3: DNS names are case-insensitive).

use std::fmt;

/// RFC 1035 §2.3.4, written form (see the module comment).
pub const MAX_LEN: usize = 253;
/// RFC 1035 §2.3.4.
pub const MAX_LABEL_LEN: usize = 63;

/// A fully qualified domain name by the rule above: lowercased, without the final dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

/// Why a name is not a fully qualified host name; the text completes "… is not a fully
/// qualified domain name: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} characters long; DNS allows at most 253 (RFC 1035 §2.3.4)")]
    TooLong(usize),
    #[error("it has an empty label (two dots in a row, or a dot at the start)")]
    EmptyLabel,
    #[error("label {0:?} is longer than 63 characters (RFC 1035 §2.3.4)")]
    LabelTooLong(String),
    #[error("it contains non-ASCII characters; write an internationalised name as its A-label, e.g. xn--bcher-kva.example for bücher.example")]
    NonAscii,
    #[error("it contains {0:?}; only letters, digits, hyphens and dots are allowed")]
    BadChar(char),
    #[error("label {0:?} starts or ends with a hyphen")]
    Hyphen(String),
    #[error("it has only one label; a fully qualified name has a dot, like mail.example.org")]
    SingleLabel,
    #[error("its last label is all digits; an IP address is not a host name")]
    NumericTop,
}

/// Checks `name` (one final dot allowed) without allocating: the rule of [`Hostname`].
pub fn check(name: &str) -> Result<(), HostnameError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostnameError::Empty);
    }
    if !name.is_ascii() {
        return Err(HostnameError::NonAscii);
    }
    if name.len() > MAX_LEN {
        return Err(HostnameError::TooLong(name.len()));
    }
    let mut labels = 0;
    let mut last = "";
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostnameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostnameError::LabelTooLong(label.to_owned()));
        }
        if let Some(b) = label.bytes().find(|b| !(b.is_ascii_alphanumeric() || *b == b'-')) {
            return Err(HostnameError::BadChar(b as char));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostnameError::Hyphen(label.to_owned()));
        }
        labels += 1;
        last = label;
    }
    if labels < 2 {
        return Err(HostnameError::SingleLabel);
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HostnameError::NumericTop);
    }
    Ok(())
}

/// Whether `name` is a fully qualified host name (see [`check`]).
pub fn is_fqdn(name: &str) -> bool {
    check(name).is_ok()
}

impl Hostname {
    /// `name` checked and normalised: lowercased, the final dot dropped.
    pub fn parse(name: &str) -> Result<Hostname, HostnameError> {
        check(name)?;
        let name = name.strip_suffix('.').unwrap_or(name);
        Ok(Hostname(name.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Hostname {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Hostname {
    type Err = HostnameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hostname::parse(s)
    }
}

impl From<Hostname> for String {
    fn from(h: Hostname) -> String {
        h.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_normalises() {
        assert_eq!(Hostname::parse("Mail.Example.ORG").unwrap().as_str(), "mail.example.org");
        assert_eq!(Hostname::parse("mail.example.org.").unwrap().as_str(), "mail.example.org");
        assert_eq!(Hostname::parse("1mx.example-2.test").unwrap().as_str(), "1mx.example-2.test");
        // The top label may hold digits, just not only digits.
        assert!(is_fqdn("host.x1"));
    }

    #[test]
    fn idn_only_as_a_labels() {
        assert_eq!(Hostname::parse("XN--BCHER-KVA.example").unwrap().as_str(), "xn--bcher-kva.example");
        assert!(is_fqdn("mail.xn--p1ai"));
        let e = Hostname::parse("bücher.example").unwrap_err();
        assert_eq!(e, HostnameError::NonAscii);
        assert!(e.to_string().contains("xn--bcher-kva.example"), "{e}");
    }

    #[test]
    fn trailing_dot_is_the_root_only_once() {
        assert!(is_fqdn("example.org."));
        assert_eq!(check("example.org.."), Err(HostnameError::EmptyLabel));
        assert_eq!(check("."), Err(HostnameError::Empty));
        assert_eq!(check(".example.org"), Err(HostnameError::EmptyLabel));
        // A single label stays unqualified with or without the root dot.
        assert_eq!(check("localhost."), Err(HostnameError::SingleLabel));
        assert_eq!(check("localhost"), Err(HostnameError::SingleLabel));
    }

    #[test]
    fn length_limits_of_rfc_1035() {
        let label63 = "a".repeat(63);
        assert!(is_fqdn(&format!("{label63}.example")));
        let label64 = "a".repeat(64);
        assert_eq!(check(&format!("{label64}.example")), Err(HostnameError::LabelTooLong(label64)));
        // 253 characters in all is the most that fits; the root dot does not count.
        let name253 = format!("{0}.{0}.{0}.{1}", label63, "b".repeat(61));
        assert_eq!(name253.len(), 253);
        assert!(is_fqdn(&name253));
        assert!(is_fqdn(&format!("{name253}.")));
        let name254 = format!("{0}.{0}.{0}.{1}", label63, "b".repeat(62));
        assert_eq!(check(&name254), Err(HostnameError::TooLong(254)));
    }

    #[test]
    fn refuses_what_is_not_a_host_name() {
        assert_eq!(check(""), Err(HostnameError::Empty));
        assert_eq!(check("-a.example"), Err(HostnameError::Hyphen("-a".into())));
        assert_eq!(check("a-.example"), Err(HostnameError::Hyphen("a-".into())));
        assert_eq!(check("a_b.example"), Err(HostnameError::BadChar('_')));
        assert_eq!(check("a b.example"), Err(HostnameError::BadChar(' ')));
        assert_eq!(check("[192.0.2.1]"), Err(HostnameError::BadChar('[')));
        assert_eq!(check("2001:db8::1"), Err(HostnameError::BadChar(':')));
        assert_eq!(check("192.0.2.1"), Err(HostnameError::NumericTop));
        assert_eq!(check("mail.example.123"), Err(HostnameError::NumericTop));
        assert_eq!(check("*.example.org"), Err(HostnameError::BadChar('*')));
    }
}
