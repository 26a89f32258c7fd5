//! SASL pieces shared by SMTP AUTH, IMAP AUTHENTICATE and POP3 AUTH.

use base64::Engine;

/// Base64 as SASL exchanges use it (RFC 4648 §4, padding required).
pub fn decode_b64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

pub fn encode_b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// RFC 4616 §2 PLAIN: `[authzid] NUL authcid NUL passwd` → (authcid, passwd). We only let
/// users act as themselves, so a non-empty authzid must equal the authcid.
pub fn parse_plain(raw: &[u8]) -> Option<(String, String)> {
    let mut parts = raw.split(|&b| b == 0);
    let authzid = parts.next()?;
    let authcid = std::str::from_utf8(parts.next()?).ok()?;
    let passwd = std::str::from_utf8(parts.next()?).ok()?;
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    if !authzid.is_empty() && !authzid.eq_ignore_ascii_case(authcid.as_bytes()) {
        return None;
    }
    Some((authcid.to_owned(), passwd.to_owned()))
}

/// Client-supplied text made safe for a log line or a header: no control characters, at
/// most 200 characters.
pub fn sanitize(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_parsing() {
        assert_eq!(parse_plain(b"\0alice@x.test\0pw"), Some(("alice@x.test".into(), "pw".into())));
        assert_eq!(
            parse_plain(b"alice@x.test\0alice@x.test\0pw"),
            Some(("alice@x.test".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"bob@x.test\0alice@x.test\0pw"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
        assert_eq!(parse_plain(b"nonul"), None);
        assert_eq!(decode_b64(&encode_b64(b"\0a\0b")).unwrap(), b"\0a\0b");
    }
}
