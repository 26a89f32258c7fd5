//! The message content of DATA and BDAT: where it ends and which line ends it may contain.
//!
//! The rule (SMTP smuggling, CVE-2023-51764 and friends). RFC 5321 §4.1.1.4: the mail data
//! ends with `<CRLF>.<CRLF>` and with nothing else. RFC 5321 §2.3.8 forbids sending a
//! "bare" CR or LF (one without the other), and RFC 5322 §2.3 says CR and LF occur in a
//! message only together. A server that ends the data on some other sequence (`<LF>.<LF>`,
//! `<LF>.<CRLF>`, `<CR>.<CR>` …) while the server before it did not, lets a client hide a
//! second, forged transaction inside the first. So posthaste:
//!
//! - ends DATA only on a line `.` CRLF that follows a CRLF (the DATA command's own, or the
//!   previous line's): `<LF>.<CRLF>` is content, and so is everything after it up to the
//!   real end;
//! - is lenient with a bare LF, as Postfix 3.9's `smtpd_forbid_bare_newline = normal` is:
//!   a line ended by LF alone is stored with CRLF, so nothing we store or relay has one;
//! - refuses (554 5.6.0, after the real end of the data) a message with a bare CR or a NUL
//!   byte: neither may occur in 7bit or 8bit content (RFC 6152 §2 excludes NUL; we offer no
//!   BINARYMIME), a bare CR has no safe meaning to normalise to, and a receiver after us
//!   could read either as part of a line end;
//! - applies the same rules to BDAT content (RFC 3030), whose chunks are joined first so a
//!   CR at the end of one chunk and the LF at the start of the next make one CRLF.
//!
//! Command lines follow the same rule: LF alone ends a command (as in Postfix), a bare CR or
//! NUL inside one is refused with 500 5.5.2.

/// Why a message's content was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    BareCr,
    Nul,
}

impl Malformed {
    /// The reply text (after `554 5.6.0`).
    pub fn reply_text(self) -> &'static str {
        match self {
            Malformed::BareCr => {
                "Message refused: it contains a CR not followed by LF (RFC 5322 §2.3); \
                 send line ends as CR LF"
            }
            Malformed::Nul => "Message refused: it contains a NUL byte (RFC 6152 §2); encode binary data",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Malformed::BareCr => "bare_cr",
            Malformed::Nul => "nul",
        }
    }
}

/// What one line read during DATA means.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The `.` line that ends the data.
    End,
    /// Content, transparency dot removed and without its line end (the caller appends CRLF).
    Content(&'a [u8]),
}

/// The DATA state machine over lines as `read_line_limited` returns them (each through its
/// LF, the last possibly without one at EOF).
#[derive(Debug)]
pub struct DataLines {
    /// The previous line ended with CRLF (true at the start: the DATA command's own).
    after_crlf: bool,
    malformed: Option<Malformed>,
}

impl Default for DataLines {
    fn default() -> Self {
        DataLines { after_crlf: true, malformed: None }
    }
}

impl DataLines {
    pub fn line<'a>(&mut self, line: &'a [u8]) -> Line<'a> {
        let crlf = line.ends_with(b"\r\n");
        // RFC 5321 §4.1.1.4: only CRLF "." CRLF ends the data.
        if crlf && self.after_crlf && line == b".\r\n" {
            return Line::End;
        }
        let text = if crlf { &line[..line.len() - 2] } else { line.strip_suffix(b"\n").unwrap_or(line) };
        self.after_crlf = crlf;
        if self.malformed.is_none() {
            self.malformed = check(text);
        }
        // RFC 5321 §4.5.2: remove the transparency dot of a line that is more than ".".
        if text.len() > 1 && text[0] == b'.' {
            Line::Content(&text[1..])
        } else {
            Line::Content(text)
        }
    }

    /// The first reason to refuse the message, once the data has ended.
    pub fn malformed(&self) -> Option<Malformed> {
        self.malformed
    }
}

/// A bare CR or a NUL in `text` (a line without its line end).
fn check(text: &[u8]) -> Option<Malformed> {
    if memchr::memchr(0, text).is_some() {
        Some(Malformed::Nul)
    } else if memchr::memchr(b'\r', text).is_some() {
        Some(Malformed::BareCr)
    } else {
        None
    }
}

/// BDAT content (all chunks joined): a bare LF becomes CRLF; a bare CR or a NUL refuses it.
/// No dot handling: BDAT has no transparency (RFC 3030 §2).
pub fn normalise_chunks(body: Vec<u8>) -> Result<Vec<u8>, Malformed> {
    if memchr::memchr(0, &body).is_some() {
        return Err(Malformed::Nul);
    }
    let mut bare_lf = false;
    for i in memchr::memchr2_iter(b'\r', b'\n', &body) {
        match body[i] {
            b'\r' if body.get(i + 1) != Some(&b'\n') => return Err(Malformed::BareCr),
            b'\n' if i == 0 || body[i - 1] != b'\r' => bare_lf = true,
            _ => {}
        }
    }
    if !bare_lf {
        return Ok(body);
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 32);
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    Ok(out)
}

/// A command line (its line end already removed) with a bare CR or a NUL in it.
pub fn command_is_malformed(line: &[u8]) -> bool {
    check(line).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` line by line as the session reads it; returns the content stored and
    /// what followed the end (None when the data never ended).
    fn run(data: &[u8]) -> (Vec<u8>, Option<Vec<u8>>, Option<Malformed>) {
        let mut d = DataLines::default();
        let mut body = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let (line, tail) = rest.split_at(n);
            rest = tail;
            match d.line(line) {
                Line::End => return (body, Some(rest.to_vec()), d.malformed()),
                Line::Content(c) => {
                    body.extend_from_slice(c);
                    body.extend_from_slice(b"\r\n");
                }
            }
        }
        (body, None, d.malformed())
    }

    #[test]
    fn only_crlf_dot_crlf_ends_the_data() {
        let (body, rest, bad) = run(b"a\r\n.\r\nQUIT\r\n");
        assert_eq!(body, b"a\r\n");
        assert_eq!(rest.as_deref(), Some(&b"QUIT\r\n"[..]));
        assert_eq!(bad, None);
        // The first line may be the end: the DATA command's CRLF precedes it.
        assert_eq!(run(b".\r\n").1.as_deref(), Some(&b""[..]));
        for fake in [&b"a\n.\r\nX\r\n"[..], b"a\n.\nX\r\n", b"a\r\n.\nX\r\n"] {
            let (body, rest, _) = run(fake);
            assert_eq!(rest, None, "{fake:?} ended the data");
            assert!(body.ends_with(b"X\r\n"), "{body:?}");
        }
    }

    #[test]
    fn bare_lf_is_stored_as_crlf_and_dots_are_unstuffed() {
        let (body, rest, bad) = run(b"a\nb\r\n..c\n.\r\n.\r\n");
        // The "." after a bare LF is content, the next one the end.
        assert_eq!(body, b"a\r\nb\r\n.c\r\n.\r\n");
        assert_eq!(rest.as_deref(), Some(&b""[..]));
        assert_eq!(bad, None);
    }

    #[test]
    fn bare_cr_and_nul_are_refused_after_the_real_end() {
        let (_, rest, bad) = run(b"a\r.\r\nb\r\n.\r\n");
        assert_eq!(rest.as_deref(), Some(&b""[..]));
        assert_eq!(bad, Some(Malformed::BareCr));
        assert_eq!(run(b"a\r\n\0.\r\n.\r\n").2, Some(Malformed::Nul));
    }

    #[test]
    fn chunks_get_crlf_and_refuse_bare_cr_and_nul() {
        assert_eq!(normalise_chunks(b"a\r\nb\r\n".to_vec()), Ok(b"a\r\nb\r\n".to_vec()));
        assert_eq!(normalise_chunks(b"\na\n.\nb".to_vec()), Ok(b"\r\na\r\n.\r\nb".to_vec()));
        assert_eq!(normalise_chunks(b"a\r.\r\n".to_vec()), Err(Malformed::BareCr));
        assert_eq!(normalise_chunks(b"a\r".to_vec()), Err(Malformed::BareCr));
        assert_eq!(normalise_chunks(b"a\0".to_vec()), Err(Malformed::Nul));
    }
}
