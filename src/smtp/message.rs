//! Header values the SMTP session reads from a message it received (Date and Message-ID at
//! submission, Message-ID for the log), over the one header walker in [`crate::header`],
//! without parsing the whole message (the MX path must stay cheap).

use crate::header;

/// The unfolded value of the first header called `name` (case-insensitive), trimmed.
pub fn header_value(msg: &[u8], name: &str) -> Option<String> {
    let field = header::find(msg, name)?;
    Some(String::from_utf8_lossy(&field.unfolded()).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_folded_headers() {
        let m = b"Subject: hi\r\nMessage-ID:\r\n <abc@x.test>\r\nfrom: A <a@x.test>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(header_value(m, "message-id").as_deref(), Some("<abc@x.test>"));
        assert_eq!(header_value(m, "From").as_deref(), Some("A <a@x.test>"));
        assert_eq!(header_value(m, "Date"), None);
        assert_eq!(header::block(m).len(), m.len() - b"\r\nMessage-ID: <body@x>\r\n".len());
    }

    #[test]
    fn headerless_message() {
        assert_eq!(header::block(b"\r\nbody"), b"");
        assert_eq!(header_value(b"\r\nX: y", "X"), None);
    }

    /// What the line-based lookup this replaced did at the edges: a leading continuation
    /// line is no field, a broken line's continuation is not one either, and the name may
    /// have white space before its colon (RFC 5322 §4.5).
    #[test]
    fn edges_of_the_lookup() {
        assert_eq!(header_value(b" Message-ID: <lead@x>\r\nA: b\r\n\r\n", "Message-ID"), None);
        assert_eq!(header_value(b"broken\r\n Date: x\r\n\r\n", "Date"), None);
        assert_eq!(header_value(b"Date : Mon\r\n\r\n", "Date").as_deref(), Some("Mon"));
        assert_eq!(header_value(b"Message-ID: <a@x>\n\n", "message-id").as_deref(), Some("<a@x>"));
    }
}
