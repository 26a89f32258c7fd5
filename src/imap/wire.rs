//! Writing IMAP response data (RFC 3501 §4 string forms, §9 grammar).
//!
//! Responses are written by hand: the data is simple, and writing it directly keeps message
//! bytes flowing from the file to the socket without building a response tree.

use crate::store::{self, Flag};

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

/// The text of a NO response for an I/O error.
pub fn io_no(e: &std::io::Error) -> String {
    text(&e.to_string())
}

/// `\Seen \Flagged …` for FETCH FLAGS.
pub fn flag_list(flags: &[Flag], recent: bool) -> String {
    let mut v: Vec<&str> = flags.iter().map(Flag::as_imap).collect();
    if recent {
        v.push("\\Recent");
    }
    v.join(" ")
}

/// The FLAGS of a message as FETCH sends them.
pub fn flags_for(m: &store::Message) -> String {
    flag_list(&m.flags, m.recent)
}

/// A UID set in compact form (`1:3,7`) for COPYUID/APPENDUID.
pub fn compact(uids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { uids[i].to_string() } else { format!("{}:{}", uids[i], uids[j]) });
        i = j + 1;
    }
    parts.join(",")
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
        assert_eq!(compact(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
    }
}
