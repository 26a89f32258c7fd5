//! Delivery status notifications (bounces) for failed recipients: RFC 3464 inside an RFC 6522
//! multipart/report. Only failures are reported (no "delayed" DSNs).

use std::fmt::Write;

use super::spool::{Envelope, Recipient};
use crate::directory::Target;

/// The enhanced status code (RFC 3463) of a reply: `550 5.1.1 …` or our own `5.4.6 …`;
/// without one, the generic code of the reply class.
pub fn status_code(reply: &str) -> String {
    let words: Vec<&str> = reply.split_whitespace().take(2).collect();
    let is_enhanced = |w: &str| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts.iter().all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(w) = words.iter().find(|w| is_enhanced(w)) {
        return (*w).to_owned();
    }
    match reply.as_bytes().first() {
        Some(b'4') => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

fn rfc2822(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc2822()
}

fn target_address(t: &Target) -> String {
    match t {
        Target::Local(a) | Target::Remote(a) => a.to_string(),
    }
}

/// The bounce for `failed` recipients of `env`, addressed to its sender. `message` is the
/// original; its header goes back as text/rfc822-headers (RFC 6522 §4), not base64.
pub fn build(hostname: &str, env: &Envelope, failed: &[Recipient], message: &[u8]) -> Vec<u8> {
    let sender = env.sender.as_ref().map(|s| s.to_string()).unwrap_or_default();
    let boundary = format!("{}/{}", env.id, hostname);
    let now = chrono::Utc::now();
    let headers = original_headers(message);
    let eight_bit = !headers.is_ascii() || failed.iter().any(|r| !r.rcpt.to_string().is_ascii());
    let cte = if eight_bit { "8bit" } else { "7bit" };

    let mut out = String::new();
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         Content-Transfer-Encoding: {cte}\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\r\n",
        date = now.to_rfc2822(),
        id = env.id,
    );
    human_part(&mut out, hostname, &boundary, cte, failed);
    status_part(&mut out, hostname, &boundary, env, failed);
    let _ = write!(
        out,
        "--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         Content-Transfer-Encoding: {cte}\r\n\
         \r\n\
         {headers}\r\n\
         --{boundary}--\r\n"
    );
    out.into_bytes()
}

fn human_part(out: &mut String, hostname: &str, boundary: &str, cte: &str, failed: &[Recipient]) {
    let _ = write!(
        out,
        "--{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: {cte}\r\n\
         \r\n\
         This is the mail system at host {hostname}.\r\n\r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         It is attached below.\r\n\r\n"
    );
    for r in failed {
        let _ = write!(out, "<{}>: {}\r\n", r.rcpt, r.reply.as_deref().unwrap_or("failed"));
    }
    out.push_str("\r\n");
}

/// RFC 3464 §2.2 (per-message fields) and §2.3 (per-recipient fields).
fn status_part(out: &mut String, hostname: &str, boundary: &str, env: &Envelope, failed: &[Recipient]) {
    let _ = write!(
        out,
        "--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Posthaste-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        id = env.id,
        arrival = rfc2822(env.created),
    );
    for r in failed {
        let reply = r.reply.as_deref().unwrap_or("failed");
        let final_rcpt = target_address(&r.target);
        let _ = write!(out, "\r\nFinal-Recipient: rfc822; {final_rcpt}\r\n");
        // RFC 3464 §2.3.1: Original-Recipient is the address as the sender gave it; we
        // have no ORCPT (RFC 3461), but RCPT TO is exactly that when an alias expanded it.
        if r.rcpt.to_string() != final_rcpt {
            let _ = write!(out, "Original-Recipient: rfc822; {}\r\n", r.rcpt);
        }
        let _ = write!(out, "Action: failed\r\nStatus: {}\r\n", status_code(reply));
        match &r.remote_mta {
            // The reply came from that host: it is an SMTP diagnostic (RFC 3464 §2.3.6).
            Some(mta) => {
                let _ = write!(out, "Remote-MTA: dns; {mta}\r\nDiagnostic-Code: smtp; {reply}\r\n");
            }
            None => {
                let _ = write!(out, "Diagnostic-Code: X-Posthaste; {reply}\r\n");
            }
        }
        let _ = write!(out, "Last-Attempt-Date: {}\r\n", chrono::Utc::now().to_rfc2822());
    }
    out.push_str("\r\n");
}

/// The header section of `message`, with CRLF line ends, without the blank line.
fn original_headers(message: &[u8]) -> String {
    let lines: Vec<_> = crate::header::lines(message).map(String::from_utf8_lossy).collect();
    lines.join("\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_headers_are_the_header_section_with_crlf() {
        assert_eq!(original_headers(b"A: 1\nB: 2\r\n c\n\nbody\n"), "A: 1\r\nB: 2\r\n c");
        assert_eq!(original_headers(b"\r\nbody"), "");
        assert_eq!(original_headers(b"A: \xff\r\n"), "A: \u{fffd}");
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code("550 5.1.1 <x@y>: user unknown"), "5.1.1");
        assert_eq!(status_code("5.4.6 mail loops back"), "5.4.6");
        assert_eq!(status_code("554 no"), "5.0.0");
        assert_eq!(status_code("451 later"), "4.0.0");
        assert_eq!(status_code("5.1.10 null MX"), "5.1.10");
    }
}
