//! RFC 8601 §5: an `Authentication-Results` header that names our host as its authserv-id
//! but arrives from outside was not written by us; readers would trust it, so it is removed
//! before ours is added.

use crate::header;

/// The authserv-id of an `Authentication-Results` value (RFC 8601 §2.2: `[CFWS]
/// authserv-id [CFWS authres-version] ";" …`), without comments, lowercased.
pub fn authserv_id(value: &str) -> Option<String> {
    let mut plain = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if depth > 0 => escaped = true,
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            ';' => break,
            c => plain.push(c),
        }
    }
    let id = plain.split_whitespace().next()?;
    Some(id.trim_matches('"').trim_end_matches('.').to_ascii_lowercase())
}

/// The message without the `Authentication-Results` fields whose authserv-id is
/// `hostname` (any case, with or without a final dot). Unchanged when there are none.
pub fn strip_own_results(message: Vec<u8>, hostname: &str) -> Vec<u8> {
    let ours = hostname.trim_end_matches('.').to_ascii_lowercase();
    strip_fields(message, |name, value| {
        name.eq_ignore_ascii_case(b"Authentication-Results")
            && authserv_id(value).is_some_and(|id| id == ours)
    })
}

/// Remove the header fields (with their continuation lines) for which `drop(name, value)`
/// is true; the body is untouched. Returns the message itself when nothing matches. The
/// walk is [`crate::header`]'s: continuation lines at the very start count as a field by
/// their trimmed name here, so a forged header cannot hide behind a leading space.
pub fn strip_fields(message: Vec<u8>, drop: impl Fn(&[u8], &str) -> bool) -> Vec<u8> {
    header::remove(message, |f| f.name().is_some_and(|name| drop(name, &String::from_utf8_lossy(f.value()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authserv_ids() {
        assert_eq!(authserv_id(" mail.example.test; spf=pass").as_deref(), Some("mail.example.test"));
        assert_eq!(
            authserv_id(" (comment; here) Mail.Example.Test 1 ; none").as_deref(),
            Some("mail.example.test")
        );
        assert_eq!(authserv_id("\r\n\tmx.other.org;\r\n\tdkim=pass").as_deref(), Some("mx.other.org"));
        assert_eq!(authserv_id(" ; none"), None);
    }

    #[test]
    fn only_our_results_are_removed() {
        let msg = b"Received: from x\r\n\tby y\r\n\
Authentication-Results: MAIL.example.test;\r\n\tdkim=pass header.d=bank.test\r\n\
Authentication-Results: mx.other.org; spf=fail\r\n\
Subject: Authentication-Results: mail.example.test; fake\r\n\
authentication-results: mail.example.test. 1; dmarc=pass\r\n\
\r\n\
Authentication-Results: mail.example.test; in the body\r\n"
            .to_vec();
        let out = String::from_utf8(strip_own_results(msg, "mail.example.test")).unwrap();
        assert_eq!(
            out,
            "Received: from x\r\n\tby y\r\n\
Authentication-Results: mx.other.org; spf=fail\r\n\
Subject: Authentication-Results: mail.example.test; fake\r\n\
\r\n\
Authentication-Results: mail.example.test; in the body\r\n"
        );
        // A leading space does not hide one (it would fold into the header we prepend).
        let hidden =
            b" Authentication-Results: mail.example.test; dkim=pass\r\nFrom: a@b.test\r\n\r\n".to_vec();
        assert_eq!(strip_own_results(hidden, "mail.example.test"), b"From: a@b.test\r\n\r\n");
        let untouched = b"From: a@b.test\r\n\r\nbody".to_vec();
        assert_eq!(strip_own_results(untouched.clone(), "mail.example.test"), untouched);
    }
}
