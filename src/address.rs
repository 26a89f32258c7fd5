//! Mail addresses as posthaste stores and compares them.
//!
//! Domains are compared case-insensitively (RFC 5321 §2.4); local parts are case-sensitive
//! in theory, but every mail system users meet treats them case-insensitively, so we store
//! and look them up lowercased. Local parts are limited to the dot-atom form: quoted local
//! parts are refused at the SMTP layer because they are the classic way to hide an `@`, `%`
//! or `!` from a relay check.

use std::fmt;

use crate::hostname::Hostname;

/// A syntactically valid `local@domain`, lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Address {
    local: String,
    domain: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a valid mail address: {reason}")]
pub struct AddressError {
    pub input: String,
    pub reason: &'static str,
}

impl Address {
    pub fn parse(input: &str) -> Result<Address, AddressError> {
        let err = |reason| AddressError { input: input.to_owned(), reason };
        let (local, domain) = input.rsplit_once('@').ok_or_else(|| err("it has no @domain part"))?;
        if local.is_empty() {
            return Err(err("the part before @ is empty"));
        }
        // RFC 5321 §4.5.3.1.1: local part at most 64 octets; §4.5.3.1.2: domain at most 255.
        if local.len() > 64 {
            return Err(err("the part before @ is longer than 64 characters"));
        }
        if !is_dot_atom(local) {
            return Err(err("the part before @ may only hold letters, digits, and ! # $ % & ' * + - / = ? ^ _ ` { | } ~ . (no spaces, quotes, @ or leading/trailing/double dots)"));
        }
        if !is_domain(domain) {
            return Err(err("the domain is not a valid host name like example.org"));
        }
        Ok(Address { local: local.to_lowercase(), domain: domain.trim_end_matches('.').to_ascii_lowercase() })
    }

    pub fn local(&self) -> &str {
        &self.local
    }
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The address without a `+tag` (plus-addressing): `alice+news@x` → `alice@x`.
    pub fn without_tag(&self) -> Option<Address> {
        let (base, _) = self.local.split_once('+')?;
        if base.is_empty() {
            return None;
        }
        Some(Address { local: base.to_owned(), domain: self.domain.clone() })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl TryFrom<String> for Address {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Address::parse(&s)
    }
}

impl From<Address> for String {
    fn from(a: Address) -> String {
        a.to_string()
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

/// RFC 5322 §3.2.3 atext, plus UTF-8 (RFC 6531 §3.3 extends atext with non-ASCII).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// RFC 5322 §3.2.3 dot-atom-text.
pub fn is_dot_atom(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A domain name (RFC 5321 §4.1.2 `Domain`) by the one host name rule of
/// [`crate::hostname`]; address literals are not accepted for mailboxes.
pub fn is_domain(s: &str) -> bool {
    crate::hostname::is_fqdn(s)
}

/// Normalise a domain name for storage and comparison: surrounding white space and the
/// final dot dropped, lowercased.
pub fn normalize_domain(s: &str) -> Option<String> {
    Hostname::parse(s.trim()).ok().map(Hostname::into_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_lowercases() {
        let a = Address::parse("Alice.B@Example.TEST").unwrap();
        assert_eq!(a.to_string(), "alice.b@example.test");
        assert_eq!(a.domain(), "example.test");
    }

    #[test]
    fn rejects_bad_forms() {
        for bad in [
            "alice",
            "@example.test",
            "a..b@example.test",
            ".a@example.test",
            "a b@example.test",
            "\"a@b\"@example.test",
            "alice@localhost",
            "alice@-bad.test",
            "alice@",
            "alice@example.test..",
            "alice@192.0.2.1",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn domains_follow_the_hostname_rule() {
        assert_eq!(Address::parse("a@Example.TEST.").unwrap().domain(), "example.test");
        assert_eq!(Address::parse("a@xn--bcher-kva.example").unwrap().domain(), "xn--bcher-kva.example");
        assert_eq!(normalize_domain(" Example.ORG. ").as_deref(), Some("example.org"));
        assert_eq!(normalize_domain("localhost"), None);
        assert_eq!(normalize_domain("bücher.example"), None);
    }

    #[test]
    fn plus_tag() {
        let a = Address::parse("alice+news@example.test").unwrap();
        assert_eq!(a.without_tag().unwrap().to_string(), "alice@example.test");
        assert!(Address::parse("+x@example.test").unwrap().without_tag().is_none());
        assert!(Address::parse("alice@example.test").unwrap().without_tag().is_none());
    }
}
