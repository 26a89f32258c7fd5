//! The MIME structure of a message for FETCH: part numbering and sections (RFC 3501
//! §6.4.5), BODY/BODYSTRUCTURE (§7.4.2) and ENVELOPE.
//!
//! Our own small splitter works on byte offsets into the CRLF-normalised message, so
//! BODY[1.2.MIME] and friends are exact slices of what RFC822.SIZE counts.

use std::ops::Range;

use super::wire::{nstring, string};
use crate::header;

/// Bare LF → CRLF (messages may be stored either way; IMAP sizes count CRLF lines).
pub fn crlf(raw: Vec<u8>) -> Vec<u8> {
    let bare = raw.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || raw[i - 1] != b'\r'));
    if !bare {
        return raw;
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[derive(Debug, Clone)]
pub struct ContentType {
    pub main: String,
    pub sub: String,
    pub params: Vec<(String, String)>,
}

impl ContentType {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn is(&self, main: &str, sub: &str) -> bool {
        self.main.eq_ignore_ascii_case(main) && self.sub.eq_ignore_ascii_case(sub)
    }
}

#[derive(Debug)]
pub struct Part {
    /// The header block including the blank line that ends it.
    pub header: Range<usize>,
    pub body: Range<usize>,
    pub ctype: ContentType,
    /// Sub-parts of a multipart.
    pub children: Vec<Part>,
    /// The encapsulated message of a message/rfc822 part.
    pub message: Option<Box<Part>>,
}

/// Header fields of a block: (name, unfolded raw value), for the MIME parser, BODYSTRUCTURE
/// and ENVELOPE, over the walker in [`crate::header`]. Two readings of its own, kept from
/// before the walker was shared (they decide what BODYSTRUCTURE and ENVELOPE show):
/// the continuation lines of a broken line (no colon) join the last field before it, and
/// a stray CR inside a line stays in the value.
pub fn fields(block: &[u8]) -> Vec<(String, String)> {
    let lossy = String::from_utf8_lossy;
    let mut out: Vec<(String, String)> = Vec::new();
    for f in header::fields(block) {
        if f.is_continuation() {
            continue;
        }
        let continuation = header::lines(f.raw()).skip(1);
        let value = match f.name() {
            Some(name) => {
                // The value's first line (value() already ends before the last line end).
                let v = f.value();
                let first = match memchr::memchr(b'\n', v) {
                    Some(i) => v[..i].strip_suffix(b"\r").unwrap_or(&v[..i]),
                    None => v,
                };
                out.push((lossy(name).trim().to_owned(), lossy(first).trim_start().to_owned()));
                &mut out.last_mut().expect("just pushed").1
            }
            None => match out.last_mut() {
                Some(last) => &mut last.1,
                None => continue,
            },
        };
        for line in continuation {
            value.push_str(&lossy(line));
        }
    }
    for f in &mut out {
        f.1 = f.1.trim_end().to_owned();
    }
    out
}

/// The fields of a header block as (name, raw value) slices, without copying: the value
/// runs from after the colon to the end of the field's last continuation line (its CRLF
/// excluded), folding kept. Ends at the empty line. Broken lines are skipped; continuation
/// lines at the very start count by their trimmed name (as SEARCH always read them).
pub fn raw_fields(block: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    header::fields(block).filter_map(|f| Some((f.name()?, f.value())))
}

/// A raw field value unfolded and trimmed ([`header::unfold`]).
pub use crate::header::unfold;

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// `type/subtype; a=b; c="d"` (RFC 2045 §5.1), parameters in order.
fn parse_params(s: &str) -> (String, Vec<(String, String)>) {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escape = false;
    for c in s.chars() {
        if escape {
            cur.push(c);
            escape = false;
        } else if quoted && c == '\\' {
            escape = true;
        } else if c == '"' {
            quoted = !quoted;
            cur.push(c);
        } else if c == ';' && !quoted {
            items.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    let first = items.remove(0).trim().to_owned();
    let params = items
        .into_iter()
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect();
    (first, params)
}

fn content_type(fields: &[(String, String)], default_digest: bool) -> ContentType {
    let default = || ContentType {
        main: if default_digest { "message" } else { "text" }.into(),
        sub: if default_digest { "rfc822" } else { "plain" }.into(),
        params: if default_digest { vec![] } else { vec![("charset".into(), "us-ascii".into())] },
    };
    let Some(v) = field(fields, "Content-Type") else { return default() };
    let (t, mut params) = parse_params(v);
    match t.split_once('/') {
        Some((m, s)) if !m.trim().is_empty() && !s.trim().is_empty() => {
            let main = m.trim().to_ascii_lowercase();
            // RFC 2045 §5.2 / RFC 2046 §4.1.2: text without a charset is US-ASCII; say so,
            // as for a message without Content-Type.
            if main == "text" && !params.iter().any(|(k, _)| k.eq_ignore_ascii_case("charset")) {
                params.push(("charset".into(), "us-ascii".into()));
            }
            ContentType { main, sub: s.trim().to_ascii_lowercase(), params }
        }
        _ => default(),
    }
}

/// Parse the message `data` (CRLF-normalised).
pub fn parse(data: &[u8]) -> Part {
    parse_part(data, 0..data.len(), false, 0)
}

fn parse_part(data: &[u8], range: Range<usize>, digest: bool, depth: usize) -> Part {
    // The header range includes the empty line that ends it (BODY[1.MIME] is exactly that).
    let header_len = header::body_start(&data[range.clone()]);
    let header = range.start..range.start + header_len;
    let body = range.start + header_len..range.end;
    let f = fields(&data[header.clone()]);
    let ctype = content_type(&f, digest);
    let mut part = Part { header, body: body.clone(), ctype, children: Vec::new(), message: None };
    if depth > 20 {
        return part;
    }
    if part.ctype.main == "multipart" {
        if let Some(boundary) = part.ctype.param("boundary").map(str::to_owned) {
            let sub_digest = part.ctype.sub == "digest";
            for r in split_multipart(data, body, boundary.as_bytes()) {
                part.children.push(parse_part(data, r, sub_digest, depth + 1));
            }
        }
    } else if part.ctype.is("message", "rfc822") {
        part.message = Some(Box::new(parse_part(data, body, false, depth + 1)));
    }
    part
}

/// The byte ranges of the body parts between `--boundary` lines (RFC 2046 §5.1.1): the CRLF
/// before a delimiter belongs to the delimiter.
fn split_multipart(data: &[u8], body: Range<usize>, boundary: &[u8]) -> Vec<Range<usize>> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = body.start;
    while pos < body.end {
        let line_end = data[pos..body.end].iter().position(|&b| b == b'\n').map_or(body.end, |i| pos + i + 1);
        let line = &data[pos..line_end];
        if line.starts_with(&delim) {
            let rest = &line[delim.len()..];
            let close = rest.starts_with(b"--");
            let rest = if close { &rest[2..] } else { rest };
            if rest.iter().all(|b| b.is_ascii_whitespace()) {
                if let Some(s) = start {
                    let end = if pos >= s + 2 && &data[pos - 2..pos] == b"\r\n" { pos - 2 } else { pos };
                    parts.push(s..end.max(s));
                }
                if close {
                    return parts;
                }
                start = Some(line_end);
            }
        }
        pos = line_end;
    }
    if let Some(s) = start {
        parts.push(s..body.end);
    }
    parts
}

impl Part {
    /// The part a section path names (RFC 3501 §6.4.5).
    pub fn find(&self, path: &[u32]) -> Option<&Part> {
        let mut cur = self;
        for (i, &n) in path.iter().enumerate() {
            let container = match (&cur.message, i) {
                (Some(m), _) if i > 0 || !std::ptr::eq(cur, self) => m.as_ref(),
                _ => cur,
            };
            cur = if !container.children.is_empty() {
                container.children.get(n.checked_sub(1)? as usize)?
            } else if n == 1 {
                container
            } else {
                return None;
            };
        }
        Some(cur)
    }

    /// The message whose HEADER/TEXT a section path names: the top level for an empty
    /// path, else a message/rfc822 part.
    pub fn message_at(&self, path: &[u32]) -> Option<&Part> {
        if path.is_empty() {
            return Some(self);
        }
        self.find(path)?.message.as_deref()
    }
}

/// body-fld-lines (RFC 3501 §7.4.2): the line breaks in the body. A part's last line has
/// none of its own — its CRLF belongs to the boundary after it (RFC 2046 §5.1.1) — and is
/// not counted, as Dovecot counts.
fn lines(data: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', data).count()
}

fn params_list(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        string(out, k.as_bytes());
        out.push(b' ');
        string(out, v.as_bytes());
    }
    out.push(b')');
}

fn opt(out: &mut Vec<u8>, v: Option<&str>) {
    nstring(out, v.map(str::as_bytes));
}

/// BODY (`extended` false) or BODYSTRUCTURE (`extended` true) of `part` (RFC 3501 §7.4.2).
pub fn body_structure(out: &mut Vec<u8>, data: &[u8], part: &Part, extended: bool) {
    let f = fields(&data[part.header.clone()]);
    out.push(b'(');
    if !part.children.is_empty() {
        for c in &part.children {
            body_structure(out, data, c, extended);
        }
        out.push(b' ');
        string(out, part.ctype.sub.to_ascii_uppercase().as_bytes());
        if extended {
            out.push(b' ');
            let params: Vec<_> = part.ctype.params.clone();
            params_list(out, &params);
            out.push(b' ');
            disposition(out, &f);
            out.push(b' ');
            opt(out, field(&f, "Content-Language"));
            out.push(b' ');
            opt(out, field(&f, "Content-Location"));
        }
        out.push(b')');
        return;
    }
    let (main, sub) = if part.ctype.main == "multipart" {
        // A multipart without parts is shown as text/plain (nothing to number in it).
        ("TEXT".to_owned(), "PLAIN".to_owned())
    } else {
        (part.ctype.main.to_ascii_uppercase(), part.ctype.sub.to_ascii_uppercase())
    };
    string(out, main.as_bytes());
    out.push(b' ');
    string(out, sub.as_bytes());
    out.push(b' ');
    params_list(out, &part.ctype.params);
    out.push(b' ');
    opt(out, field(&f, "Content-ID"));
    out.push(b' ');
    opt(out, field(&f, "Content-Description"));
    out.push(b' ');
    let enc = field(&f, "Content-Transfer-Encoding").map(|e| e.trim().to_ascii_uppercase());
    string(out, enc.as_deref().unwrap_or("7BIT").as_bytes());
    let body = &data[part.body.clone()];
    out.extend_from_slice(format!(" {}", body.len()).as_bytes());
    if let Some(m) = &part.message {
        out.push(b' ');
        envelope(out, &data[m.header.clone()]);
        out.push(b' ');
        body_structure(out, data, m, extended);
        out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
    } else if main == "TEXT" {
        out.extend_from_slice(format!(" {}", lines(body)).as_bytes());
    }
    if extended {
        out.push(b' ');
        opt(out, field(&f, "Content-MD5"));
        out.push(b' ');
        disposition(out, &f);
        out.push(b' ');
        opt(out, field(&f, "Content-Language"));
        out.push(b' ');
        opt(out, field(&f, "Content-Location"));
    }
    out.push(b')');
}

fn disposition(out: &mut Vec<u8>, f: &[(String, String)]) {
    match field(f, "Content-Disposition") {
        Some(v) => {
            let (kind, params) = parse_params(v);
            out.push(b'(');
            string(out, kind.to_ascii_uppercase().as_bytes());
            out.push(b' ');
            params_list(out, &params);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
}

/// Header text for ENVELOPE: as sent, except 8-bit text becomes an RFC 2047 encoded word so
/// it can travel in a quoted string.
fn header_text(s: &str) -> Vec<u8> {
    if s.is_ascii() {
        s.as_bytes().to_vec()
    } else {
        format!("=?utf-8?b?{}?=", crate::sasl::encode_b64(s.as_bytes())).into_bytes()
    }
}

/// ENVELOPE (RFC 3501 §7.4.2) of the header block `header`.
pub fn envelope(out: &mut Vec<u8>, header: &[u8]) {
    let f = fields(header);
    let parsed = mail_parser::MessageParser::default().parse_headers(header);
    let text = |name: &str| field(&f, name).map(header_text);
    out.push(b'(');
    nstring(out, text("Date").as_deref());
    out.push(b' ');
    nstring(out, text("Subject").as_deref());
    let addr = |m: &mail_parser::Message| -> [Option<mail_parser::Address<'static>>; 6] {
        [
            m.from().map(|a| a.clone().into_owned()),
            m.sender().map(|a| a.clone().into_owned()),
            m.reply_to().map(|a| a.clone().into_owned()),
            m.to().map(|a| a.clone().into_owned()),
            m.cc().map(|a| a.clone().into_owned()),
            m.bcc().map(|a| a.clone().into_owned()),
        ]
    };
    let mut lists = parsed.as_ref().map(addr).unwrap_or_default();
    // RFC 3501 §7.4.2: sender and reply-to default to from.
    if lists[1].is_none() {
        lists[1] = lists[0].clone();
    }
    if lists[2].is_none() {
        lists[2] = lists[0].clone();
    }
    for l in &lists {
        out.push(b' ');
        address_list(out, l.as_ref());
    }
    out.push(b' ');
    nstring(out, text("In-Reply-To").as_deref());
    out.push(b' ');
    nstring(out, text("Message-ID").as_deref());
    out.push(b')');
}

fn one_address(out: &mut Vec<u8>, a: &mail_parser::Addr) {
    let Some(addr) = a.address.as_deref() else { return };
    let (local, host) = match addr.rsplit_once('@') {
        Some((l, h)) => (l, Some(h)),
        None => (addr, None),
    };
    // RFC 3501 §7.4.2: the source route (RFC 5322 §4.4 obs-route, `<@a,@b:user@host>`) is
    // the second field, the at-domain-list; the mailbox name is what follows its colon.
    let (adl, local) = match local.split_once(':') {
        Some((route, rest)) if route.starts_with('@') => (Some(route), rest),
        _ => (None, local),
    };
    out.push(b'(');
    nstring(out, a.name.as_deref().map(header_text).as_deref());
    out.push(b' ');
    nstring(out, adl.map(header_text).as_deref());
    out.push(b' ');
    string(out, &header_text(local));
    out.push(b' ');
    nstring(out, host.map(header_text).as_deref());
    out.push(b')');
}

fn address_list(out: &mut Vec<u8>, list: Option<&mail_parser::Address>) {
    let mut body = Vec::new();
    match list {
        Some(mail_parser::Address::List(addrs)) => {
            for a in addrs {
                one_address(&mut body, a);
            }
        }
        Some(mail_parser::Address::Group(groups)) => {
            for g in groups {
                match &g.name {
                    // RFC 3501 §7.4.2: a group is a NIL-host start and end marker.
                    Some(name) => {
                        body.extend_from_slice(b"(NIL NIL ");
                        string(&mut body, &header_text(name));
                        body.extend_from_slice(b" NIL)");
                        for a in &g.addresses {
                            one_address(&mut body, a);
                        }
                        body.extend_from_slice(b"(NIL NIL NIL NIL)");
                    }
                    None => {
                        for a in &g.addresses {
                            one_address(&mut body, a);
                        }
                    }
                }
            }
        }
        None => {}
    }
    if body.is_empty() {
        out.extend_from_slice(b"NIL");
    } else {
        out.push(b'(');
        out.extend_from_slice(&body);
        out.push(b')');
    }
}

/// The header block reduced to (or without, `not`) the named fields (HEADER.FIELDS, RFC
/// 3501 §6.4.5), ending with the blank line. A broken line (no colon) is no listed field,
/// so only `.NOT` keeps it; continuation lines at the very start are never kept.
pub fn header_fields<N: AsRef<[u8]>>(header: &[u8], names: &[N], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for f in header::fields(header) {
        if f.is_continuation() {
            continue;
        }
        let name = f.name().unwrap_or_default();
        let listed = names.iter().any(|n| n.as_ref().eq_ignore_ascii_case(name));
        if listed != not {
            out.extend_from_slice(f.raw());
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_fields_and_unfold() {
        let h = b"Subject: a\r\n b\r\nX:y\r\nbroken line\r\nFrom :  c\r\n\r\nBody: no\r\n";
        let f: Vec<(&[u8], Vec<u8>)> = raw_fields(h).map(|(n, v)| (n, unfold(v).into_owned())).collect();
        assert_eq!(
            f,
            vec![
                (&b"Subject"[..], b"a b".to_vec()),
                (&b"X"[..], b"y".to_vec()),
                (&b"From"[..], b"c".to_vec())
            ]
        );
        assert_eq!(raw_fields(b"A: 1\nB: 2").count(), 2);
        assert_eq!(raw_fields(b"").count(), 0);
    }

    /// The readings of `fields` that differ from the shared walker's, and HEADER.FIELDS at
    /// the same edges: what BODYSTRUCTURE, ENVELOPE and FETCH showed before the walker was
    /// shared.
    #[test]
    fn broken_lines_in_fields_and_header_fields() {
        let h = b" Lead: x\r\nSubject: a\r\n b\r\nbroken\r\n c\r\nX: 1\rz\r\n\r\nBody: no\r\n";
        let f = fields(h);
        assert_eq!(f, vec![("Subject".to_owned(), "a b c".to_owned()), ("X".to_owned(), "1\rz".to_owned())]);
        assert_eq!(header_fields(h, &["subject"], false), b"Subject: a\r\n b\r\n\r\n");
        assert_eq!(header_fields(h, &["subject", "lead"], true), b"broken\r\n c\r\nX: 1\rz\r\n\r\n");
        assert_eq!(header_fields(h, &["lead"], false), b"\r\n");
        // SEARCH reads the leading line by its trimmed name, and skips the broken line.
        let names: Vec<&[u8]> = raw_fields(h).map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Lead"[..], b"Subject", b"X"]);
        // Only the first line's white space is trimmed at the front (a value folded right
        // after the colon keeps its indentation; ENVELOPE shows it so).
        assert_eq!(fields(b"A:\r\n  v\r\n"), vec![("A".to_owned(), "  v".to_owned())]);
        assert_eq!(
            fields(b"A: 1\nB: 2"),
            vec![("A".to_owned(), "1".to_owned()), ("B".to_owned(), "2".to_owned())]
        );
    }

    const MIXED: &[u8] = b"From: A <a@x.test>\r\nSubject: hi\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--b1--\r\n";

    #[test]
    fn sections() {
        let p = parse(MIXED);
        assert_eq!(p.children.len(), 2);
        let one = p.find(&[1]).unwrap();
        assert_eq!(&MIXED[one.body.clone()], b"hello");
        assert_eq!(&MIXED[one.header.clone()], b"Content-Type: text/plain\r\n\r\n");
        let two = p.message_at(&[2]).unwrap();
        assert_eq!(&MIXED[two.header.clone()], b"Subject: inner\r\n\r\n");
        assert_eq!(&MIXED[two.body.clone()], b"inner body");
        assert_eq!(&MIXED[p.find(&[2, 1]).unwrap().body.clone()], b"inner body");
        assert!(p.find(&[3]).is_none());
        let single = parse(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(single.find(&[1]).unwrap().body, 14..20);
        let mut out = Vec::new();
        body_structure(&mut out, MIXED, &p, false);
        let s = String::from_utf8(out).unwrap();
        assert!(
            // The charset US-ASCII of text without one (RFC 2045 §5.2); no line break in
            // "hello" (its CRLF is the boundary's), so 0 lines, as Dovecot counts.
            s.starts_with("((\"TEXT\" \"PLAIN\" (\"charset\" \"us-ascii\") NIL NIL \"7BIT\" 5 0)(\"MESSAGE\" \"RFC822\""),
            "{s}"
        );
        assert!(s.ends_with(" \"MIXED\")"), "{s}");
    }

    #[test]
    fn envelope_and_fields() {
        let h = b"Date: Mon, 7 Feb 1994 21:52:25 -0800\r\nFrom: Fred Foobar <foobar@Blurdybloop.example>\r\nSubject: afternoon meeting\r\nTo: mooch@owatagu.example\r\nMessage-Id: <B27397-0100000@Blurdybloop.example>\r\n\r\n";
        let mut out = Vec::new();
        envelope(&mut out, h);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "(\"Mon, 7 Feb 1994 21:52:25 -0800\" \"afternoon meeting\" ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) ((\"Fred Foobar\" NIL \"foobar\" \"Blurdybloop.example\")) ((NIL NIL \"mooch\" \"owatagu.example\")) NIL NIL NIL \"<B27397-0100000@Blurdybloop.example>\")"
        );
        assert_eq!(header_fields(h, &["subject"], false), b"Subject: afternoon meeting\r\n\r\n");
        assert_eq!(crlf(b"a\nb\r\n".to_vec()), b"a\r\nb\r\n");
    }
}
