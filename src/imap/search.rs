//! SEARCH (RFC 3501 §6.4.4) with CONDSTORE's MODSEQ key (RFC 7162 §3.1.5).
//!
//! String keys match case-insensitively as substrings (§6.4.4) against the raw bytes and
//! the decoded text: RFC 2047 header words and the transfer-decoded text parts
//! (mail-parser), decoded only when the raw bytes did not match and could read differently
//! decoded. Dates compare the date part only, internal dates in UTC.
//!
//! Criteria are compiled once ([`Key`]); each message is first judged from the index and
//! the folder's cache alone (flags, dates, sizes, the cached header block), under one lock
//! for the whole run, and only a message that needs more is read from disk.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Read};
use std::ops::ControlFlow;

use chrono::{NaiveDate, TimeZone};
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::{HeaderValue, MessageParser, PartType};

use super::conn::Conn;
use super::fetch::RUN;
use super::mime;
use super::state::Selected;
use crate::store::{Flag, MessageRef, SYSTEM_FLAGS};

fn in_set(set: &SequenceSet, v: u32, max: u32) -> bool {
    let val = |s: &SeqOrUid| match s {
        SeqOrUid::Value(n) => n.get(),
        SeqOrUid::Asterisk => max,
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(a) => val(a) == v,
        Sequence::Range(a, b) => {
            let (a, b) = (val(a), val(b));
            a.min(b) <= v && v <= a.max(b)
        }
    })
}

/// Unicode-lowercase substring test (RFC 3501 §6.4.4: case-insensitive); `needle` is
/// already lowercase.
fn contains_lower(hay: &str, needle: &str) -> bool {
    needle.is_empty() || hay.to_lowercase().contains(needle)
}

/// Whether `hay` contains `needle` (ASCII, lowercase, not empty) ignoring ASCII case.
fn contains_ascii_ci(hay: &[u8], needle: &[u8]) -> bool {
    if hay.len() < needle.len() {
        return false;
    }
    let last = hay.len() - needle.len();
    memchr::memchr2_iter(needle[0], needle[0].to_ascii_uppercase(), &hay[..=last])
        .any(|i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

/// A search string, lowered once for the whole SEARCH.
struct Needle {
    lower: String,
    ascii: bool,
}

impl Needle {
    fn new(raw: &[u8]) -> Needle {
        let lower = String::from_utf8_lossy(raw).to_lowercase();
        Needle { ascii: lower.is_ascii(), lower }
    }

    /// Whether `hay` (raw bytes, any charset) contains it, ignoring case. An ASCII needle
    /// is looked for in the bytes directly (ASCII letters are the same in every
    /// ASCII-compatible charset); another is compared as lowercase UTF-8.
    fn in_bytes(&self, hay: &[u8]) -> bool {
        let n = self.lower.as_bytes();
        if n.is_empty() {
            return true;
        }
        if !self.ascii {
            return contains_lower(&String::from_utf8_lossy(hay), &self.lower);
        }
        contains_ascii_ci(hay, n)
    }

    fn in_str(&self, hay: &str) -> bool {
        if self.ascii {
            self.in_bytes(hay.as_bytes())
        } else {
            contains_lower(hay, &self.lower)
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum DateCmp {
    Before,
    On,
    Since,
}

/// The SEARCH criteria, with their strings lowered and flags resolved once, not per message.
enum Key<'a> {
    And(Vec<Key<'a>>),
    Or(Box<Key<'a>>, Box<Key<'a>>),
    Not(Box<Key<'a>>),
    All,
    Seq(&'a SequenceSet),
    Uid(&'a SequenceSet),
    /// A system flag (bit of `store::SYSTEM_FLAGS`) set (true) or not set (false).
    System(u8, bool),
    Keyword(String, bool),
    Recent,
    Larger(u64),
    Smaller(u64),
    Internal(DateCmp, NaiveDate),
    Sent(DateCmp, NaiveDate),
    Header(String, Needle),
    Body(Needle),
    Text(Needle),
    ModSeq(u64),
}

fn bit(f: Flag) -> u8 {
    SYSTEM_FLAGS.iter().find(|(s, _)| *s == f).map_or(0, |(_, b)| *b)
}

impl<'a> Key<'a> {
    fn compile(k: &'a SearchKey<'_>) -> Key<'a> {
        use SearchKey as K;
        let text = |a: &imap_codec::imap_types::core::AString<'_>| Needle::new(a.as_ref());
        let header = |name: &str, a| Key::Header(name.to_owned(), text(a));
        match k {
            K::And(keys) => Key::And(keys.as_ref().iter().map(Key::compile).collect()),
            K::Or(a, b) => Key::Or(Box::new(Key::compile(a)), Box::new(Key::compile(b))),
            K::Not(k) => Key::Not(Box::new(Key::compile(k))),
            K::All => Key::All,
            K::SequenceSet(set) => Key::Seq(set),
            K::Uid(set) => Key::Uid(set),
            K::Answered => Key::System(bit(Flag::Answered), true),
            K::Deleted => Key::System(bit(Flag::Deleted), true),
            K::Draft => Key::System(bit(Flag::Draft), true),
            K::Flagged => Key::System(bit(Flag::Flagged), true),
            K::Seen => Key::System(bit(Flag::Seen), true),
            K::Unanswered => Key::System(bit(Flag::Answered), false),
            K::Undeleted => Key::System(bit(Flag::Deleted), false),
            K::Undraft => Key::System(bit(Flag::Draft), false),
            K::Unflagged => Key::System(bit(Flag::Flagged), false),
            K::Unseen => Key::System(bit(Flag::Seen), false),
            K::Recent => Key::Recent,
            // RFC 3501 §6.4.4: NEW is RECENT UNSEEN, OLD is NOT RECENT.
            K::New => Key::And(vec![Key::Recent, Key::System(bit(Flag::Seen), false)]),
            K::Old => Key::Not(Box::new(Key::Recent)),
            K::Keyword(k) => keyword(k.as_ref(), true),
            K::Unkeyword(k) => keyword(k.as_ref(), false),
            K::Larger(n) => Key::Larger(*n as u64),
            K::Smaller(n) => Key::Smaller(*n as u64),
            K::Before(d) => Key::Internal(DateCmp::Before, *d.as_ref()),
            K::On(d) => Key::Internal(DateCmp::On, *d.as_ref()),
            K::Since(d) => Key::Internal(DateCmp::Since, *d.as_ref()),
            K::SentBefore(d) => Key::Sent(DateCmp::Before, *d.as_ref()),
            K::SentOn(d) => Key::Sent(DateCmp::On, *d.as_ref()),
            K::SentSince(d) => Key::Sent(DateCmp::Since, *d.as_ref()),
            K::From(v) => header("From", v),
            K::To(v) => header("To", v),
            K::Cc(v) => header("Cc", v),
            K::Bcc(v) => header("Bcc", v),
            K::Subject(v) => header("Subject", v),
            K::Header(name, v) => Key::Header(String::from_utf8_lossy(name.as_ref()).into_owned(), text(v)),
            K::Body(v) => Key::Body(text(v)),
            K::Text(v) => Key::Text(text(v)),
            K::ModSequence { modseq, .. } => Key::ModSeq(*modseq),
        }
    }
}

impl Key<'_> {
    fn any(&self, f: &dyn Fn(&Key<'_>) -> bool) -> bool {
        match self {
            Key::And(v) => v.iter().any(|k| k.any(f)),
            Key::Or(a, b) => a.any(f) || b.any(f),
            Key::Not(k) => k.any(f),
            k => f(k),
        }
    }
}

/// Kleene "and"/"or" over undecided (None) verdicts.
fn and(a: Option<bool>, b: impl FnOnce() -> Option<bool>) -> Option<bool> {
    match a {
        Some(false) => Some(false),
        Some(true) => b(),
        None => match b() {
            Some(false) => Some(false),
            _ => None,
        },
    }
}

fn or(a: Option<bool>, b: impl FnOnce() -> Option<bool>) -> Option<bool> {
    match a {
        Some(true) => Some(true),
        Some(false) => b(),
        None => match b() {
            Some(true) => Some(true),
            _ => None,
        },
    }
}

fn cmp_day(cmp: DateCmp, day: NaiveDate, key: NaiveDate) -> bool {
    match cmp {
        DateCmp::Before => day < key,
        DateCmp::On => day == key,
        DateCmp::Since => day >= key,
    }
}

/// One message under test: its index data, and the file's bytes once read (`file`). Without
/// the file, keys that need what the cache lacks are undecided.
struct Subject<'m, 'r> {
    seq: u32,
    max_seq: u32,
    max_uid: u32,
    m: &'m MessageRef<'r>,
    header: Option<&'m [u8]>,
    /// The whole message (CRLF) and where its body starts.
    file: Option<(&'m [u8], std::ops::Range<usize>)>,
}

impl Subject<'_, '_> {
    fn eval(&self, key: &Key<'_>) -> Option<bool> {
        let m = self.m;
        match key {
            Key::And(keys) => keys.iter().fold(Some(true), |acc, k| and(acc, || self.eval(k))),
            Key::Or(a, b) => or(self.eval(a), || self.eval(b)),
            Key::Not(k) => self.eval(k).map(|v| !v),
            Key::All => Some(true),
            Key::Seq(set) => Some(in_set(set, self.seq, self.max_seq)),
            Key::Uid(set) => Some(in_set(set, m.uid(), self.max_uid)),
            Key::System(bit, want) => Some((m.system_flags() & bit != 0) == *want),
            Key::Keyword(k, want) => Some(has_keyword(m, k) == *want),
            Key::Recent => Some(m.recent()),
            Key::Larger(n) => Some(self.size() > *n),
            Key::Smaller(n) => Some(self.size() < *n),
            Key::Internal(cmp, d) => {
                let day = chrono::Utc.timestamp_opt(m.internal_date()?, 0).single().unwrap_or_default();
                Some(cmp_day(*cmp, day.date_naive(), *d))
            }
            Key::Sent(cmp, d) => {
                let h = self.header?;
                Some(sent_day(h).is_some_and(|day| cmp_day(*cmp, day, *d)))
            }
            Key::Header(name, needle) => Some(header_has(self.header?, name, needle)),
            Key::Body(needle) => {
                let (data, body) = self.file.clone()?;
                Some(body_matches(data, body, needle))
            }
            Key::Text(needle) => {
                let (data, body) = self.file.clone()?;
                Some(needle.in_bytes(&data[..body.start]) || body_matches(data, body, needle))
            }
            Key::ModSeq(n) => Some(m.modseq() >= *n),
        }
    }

    /// The size LARGER/SMALLER compare: RFC822.SIZE when known (cache, the read file, the
    /// name's `W=`), else the stored size, which equals it for CRLF-stored mail.
    fn size(&self) -> u64 {
        if let Some((d, _)) = &self.file {
            return d.len() as u64;
        }
        self.m.virtual_size().or_else(|| self.m.cached().and_then(|c| c.size)).unwrap_or(self.m.size())
    }
}

/// KEYWORD/UNKEYWORD: a system flag spelled as a keyword is matched as that flag.
fn keyword(k: &str, want: bool) -> Key<'static> {
    match Flag::parse(k) {
        Some(f @ (Flag::Seen | Flag::Answered | Flag::Flagged | Flag::Deleted | Flag::Draft)) => {
            Key::System(bit(f), want)
        }
        _ => Key::Keyword(k.to_owned(), want),
    }
}

fn has_keyword(m: &MessageRef<'_>, k: &str) -> bool {
    m.has_keywords() && m.flags().iter().any(|f| matches!(f, Flag::Keyword(x) if x.eq_ignore_ascii_case(k)))
}

fn sent_day(header: &[u8]) -> Option<NaiveDate> {
    let (_, raw) = mime::raw_fields(header).find(|(n, _)| n.eq_ignore_ascii_case(b"Date"))?;
    let d = mail_parser::DateTime::parse_rfc822(&String::from_utf8_lossy(&mime::unfold(raw)))?;
    NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
}

/// HEADER/FROM/SUBJECT/… (RFC 3501 §6.4.4): whether a field `name` contains the needle, in
/// its raw form or decoded (RFC 2047 words, address display names). A message without the
/// field does not match, even with an empty string. The decoding (a parse of that field
/// alone) happens only when the raw value did not match and could read differently decoded.
fn header_has(header: &[u8], name: &str, needle: &Needle) -> bool {
    let mut present = false;
    for (n, raw) in mime::raw_fields(header) {
        if !n.eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        present = true;
        let value = mime::unfold(raw);
        if needle.in_bytes(&value) {
            return true;
        }
        let plain = value.iter().all(|&b| b.is_ascii() && !matches!(b, b'"' | b'\\' | b'('))
            && memchr::memmem::find(&value, b"=?").is_none();
        if plain {
            continue;
        }
        let mut one = Vec::with_capacity(n.len() + raw.len() + 4);
        one.extend_from_slice(n);
        one.push(b':');
        one.extend_from_slice(raw);
        one.extend_from_slice(b"\r\n");
        if decoded(&one, name).iter().any(|v| needle.in_str(v)) {
            return true;
        }
    }
    present && needle.lower.is_empty()
}

/// The decoded values of field `name` in a header block.
fn decoded(block: &[u8], name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let Some(msg) = MessageParser::default().parse_headers(block) else { return out };
    for h in msg.headers() {
        if !h.name.as_str().eq_ignore_ascii_case(name) {
            continue;
        }
        match &h.value {
            HeaderValue::Text(t) => out.push(t.to_string()),
            HeaderValue::TextList(l) => out.push(l.join(" ")),
            HeaderValue::Address(a) => {
                for addr in a.iter() {
                    out.push(format!(
                        "{} <{}>",
                        addr.name.as_deref().unwrap_or(""),
                        addr.address.as_deref().unwrap_or("")
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// BODY (RFC 3501 §6.4.4): the body's raw bytes, else its text parts decoded (transfer
/// encoding and charset) — parsed only when some part could read differently decoded.
fn body_matches(data: &[u8], body: std::ops::Range<usize>, needle: &Needle) -> bool {
    if needle.in_bytes(&data[body]) {
        return true;
    }
    let encoded = !needle.ascii
        || [b"base64".as_slice(), b"quoted-printable", b"utf-7", b"utf-16", b"utf-32"]
            .iter()
            .any(|w| contains_ascii_ci(data, w));
    if !encoded {
        return false;
    }
    let Some(msg) = MessageParser::default().parse(data) else { return false };
    msg.parts.iter().any(|p| match &p.body {
        PartType::Text(t) | PartType::Html(t) => contains_lower(t, &needle.lower),
        _ => false,
    })
}

fn uses_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(v) => v.as_ref().iter().any(uses_modseq),
        SearchKey::Not(k) => uses_modseq(k),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        _ => false,
    }
}

impl Conn {
    pub(super) fn search(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        charset: Option<&str>,
        criteria: &Vec1<SearchKey<'_>>,
        uid: bool,
    ) -> io::Result<()> {
        if let Some(cs) = charset {
            if !cs.eq_ignore_ascii_case("UTF-8") && !cs.eq_ignore_ascii_case("US-ASCII") {
                self.no(tag, "[BADCHARSET (UTF-8 US-ASCII)] Unsupported charset");
                return Ok(());
            }
        }
        self.updates(sel, false, &BTreeSet::new())?;
        let modseq = criteria.as_ref().iter().any(uses_modseq);
        if modseq {
            self.condstore = true;
        }
        let key = Key::And(criteria.as_ref().iter().map(Key::compile).collect());
        // Only keys on the header look at the cache (probing it per message is not free).
        let header_keys = key.any(&|k| matches!(k, Key::Header(..) | Key::Sent(..)));
        let view = &sel.uids;
        let max_seq = view.len() as u32;
        let max_uid = view.last().copied().unwrap_or(0);
        let mut hits = Vec::new();
        let mut highest = 0;
        // Under one lock of the index, every message the index and the folder's cache can
        // decide; a message that needs its file (or a header the cache lacks) stops the run,
        // is read without the lock, and decided from what was read (which also fills the
        // cache for the next SEARCH or FETCH).
        // The verdict from the index and the cache alone (None: the file is needed).
        let judge = |seq: u32, m: &MessageRef<'_>| {
            let header = if header_keys { m.cached().and_then(|c| c.header.as_deref()) } else { None };
            Subject { seq, max_seq, max_uid, m, header, file: None }.eval(&key)
        };
        let mut pos = 0;
        while pos < view.len() {
            let end = (pos + RUN).min(view.len());
            pos += sel.mb.visit(&view[pos..end], |i, m| {
                let seq = (pos + i) as u32 + 1;
                match judge(seq, m) {
                    Some(true) => {
                        highest = highest.max(m.modseq());
                        hits.push(if uid { m.uid() } else { seq });
                        ControlFlow::Continue(())
                    }
                    Some(false) => ControlFlow::Continue(()),
                    None => ControlFlow::Break(()),
                }
            });
            if pos == end {
                continue;
            }
            let u = view[pos];
            let seq = pos as u32 + 1;
            pos += 1;
            let mut raw = Vec::new();
            // Opening the file teaches the index its date (Mailbox::open_message): was the
            // date all it lacked? Then the content need not be read.
            let read = sel.mb.open_message(u).and_then(|mut f| {
                let mut verdict = None;
                sel.mb.visit(&[u], |_, m| {
                    verdict = judge(seq, m).map(|hit| (hit, m.modseq()));
                    ControlFlow::Continue(())
                });
                if verdict.is_none() {
                    f.read_to_end(&mut raw)?;
                }
                Ok(verdict)
            });
            let data = match read {
                Ok(Some((hit, ms))) => {
                    if hit {
                        highest = highest.max(ms);
                        hits.push(if uid { u } else { seq });
                    }
                    continue;
                }
                Ok(None) => mime::crlf(raw),
                // Expunged meanwhile: an empty message (it cannot match content keys).
                Err(_) => Vec::new(),
            };
            let root = mime::parse(&data);
            if !data.is_empty() {
                let header: std::sync::Arc<[u8]> = data[root.header.clone()].into();
                let size = data.len() as u64;
                sel.mb.cache_update(u, |e| {
                    e.size = Some(size);
                    e.header.get_or_insert(header);
                });
            }
            sel.mb.visit(&[u], |_, m| {
                let s = Subject {
                    seq,
                    max_seq,
                    max_uid,
                    m,
                    header: Some(&data[root.header.clone()]),
                    file: Some((&data, root.body.clone())),
                };
                if s.eval(&key) == Some(true) {
                    highest = highest.max(m.modseq());
                    hits.push(if uid { u } else { seq });
                }
                ControlFlow::Continue(())
            });
        }
        let mut line = String::with_capacity(9 + hits.len() * 6);
        line.push_str("* SEARCH");
        for h in &hits {
            let _ = write!(line, " {h}");
        }
        if modseq && !hits.is_empty() {
            let _ = write!(line, " (MODSEQ {highest})");
        }
        self.line(&line);
        self.ok(tag, if uid { "UID SEARCH completed" } else { "SEARCH completed" });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;

    #[test]
    fn sets() {
        let v = |n| SeqOrUid::Value(NonZeroU32::new(n).unwrap());
        let set = SequenceSet(Vec1::try_from(vec![Sequence::Range(v(2), SeqOrUid::Asterisk)]).unwrap());
        assert!(in_set(&set, 5, 5));
        assert!(!in_set(&set, 1, 5));
        assert!(contains_lower("Hello World", "o w"));
        let n = Needle::new(b"O W");
        assert!(n.in_bytes(b"Hello World") && n.in_str("hello world") && !n.in_bytes(b"Hello_World"));
        assert!(Needle::new(b"").in_bytes(b""));
        let u = Needle::new("GRÜSSE".as_bytes());
        assert!(!u.ascii && u.in_bytes("viele grüsse".as_bytes()));
    }
}
