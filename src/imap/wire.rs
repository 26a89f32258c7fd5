//! Writing IMAP response data (RFC 3501 §4 string forms, §9 grammar).
//!
//! Responses are written by hand: the data is simple, and writing it directly keeps message
//! bytes flowing from the file to the socket without building a response tree.

/// A `string`: quoted when that is allowed (RFC 3501 §4.3: 7-bit, no CR/LF/NUL), else a
/// literal.
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    if s.len() < 1024 && s.iter().all(|&b| b != 0 && b != b'\r' && b != b'\n' && b < 0x80) {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// An `nstring`: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// A `mailbox` name already in modified UTF-7: an atom-like name is still quoted, which
/// every client accepts.
pub fn mailbox(out: &mut Vec<u8>, wire_name: &str) {
    string(out, wire_name.as_bytes());
}

/// Text for a status response: no CR/LF can escape into the protocol.
pub fn text(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings() {
        let mut o = Vec::new();
        string(&mut o, b"a \"b\" \\c");
        assert_eq!(o, b"\"a \\\"b\\\" \\\\c\"");
        o.clear();
        string(&mut o, b"x\r\ny");
        assert_eq!(o, b"{4}\r\nx\r\ny");
        o.clear();
        nstring(&mut o, None);
        assert_eq!(o, b"NIL");
    }
}
