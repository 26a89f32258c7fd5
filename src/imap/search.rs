//! SEARCH (RFC 3501 §6.4.4) with CONDSTORE's MODSEQ key (RFC 7162 §3.1.5).
//!
//! String keys match case-insensitively as substrings (§6.4.4) against decoded text: RFC
//! 2047 header words and the transfer-decoded text parts (mail-parser), and the raw bytes
//! as a fallback. Dates compare the date part only, internal dates in UTC.

use std::collections::BTreeSet;
use std::io::{self, Read};

use chrono::{NaiveDate, TimeZone};
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use mail_parser::{HeaderValue, MessageParser, PartType};

use super::mime;
use super::session::Session;
use crate::store::{CachedMessage, Flag, Mailbox, Message};

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

fn contains(hay: &str, needle: &str) -> bool {
    needle.is_empty() || hay.to_lowercase().contains(&needle.to_lowercase())
}

struct Candidate<'a> {
    seq: u32,
    m: Message,
    max_seq: u32,
    max_uid: u32,
    mb: &'a mut Mailbox,
    /// The folder's shared cache entry (size, header block), if any.
    cached: Option<CachedMessage>,
    data: Option<Vec<u8>>,
}

impl Candidate<'_> {
    fn data(&mut self) -> &[u8] {
        if self.data.is_none() {
            let mut raw = Vec::new();
            let ok = self.mb.open_message(self.m.uid).and_then(|mut f| f.read_to_end(&mut raw)).is_ok();
            let data = if ok { mime::crlf(raw) } else { Vec::new() };
            if ok {
                // What later SEARCHes and FETCHes of header fields need, in the shared cache.
                let root = mime::parse(&data);
                let header: std::sync::Arc<[u8]> = data[root.header.clone()].into();
                let size = data.len() as u64;
                self.cached.get_or_insert_with(Default::default).header = Some(header.clone());
                self.mb.cache_update(self.m.uid, |e| {
                    e.size = Some(size);
                    e.header.get_or_insert(header);
                });
            }
            self.data = Some(data);
        }
        self.data.as_deref().unwrap_or_default()
    }

    /// The top-level header block: from the cache, else read (and cached).
    fn header_block(&mut self) -> std::sync::Arc<[u8]> {
        if let Some(h) = self.cached.as_ref().and_then(|c| c.header.clone()) {
            return h;
        }
        self.data();
        self.cached.as_ref().and_then(|c| c.header.clone()).unwrap_or_else(|| Vec::new().into())
    }

    /// The size LARGER/SMALLER compare: RFC822.SIZE when known (or the message is read
    /// anyway), else the stored size, which equals it for CRLF-stored mail (all we write).
    fn size(&self) -> u64 {
        if let Some(d) = &self.data {
            return d.len() as u64;
        }
        self.cached.as_ref().and_then(|c| c.size).unwrap_or(self.m.size)
    }

    fn has(&self, f: &Flag) -> bool {
        self.m.flags.contains(f)
    }

    fn has_keyword(&self, k: &str) -> bool {
        self.m.flags.iter().any(|f| matches!(f, Flag::Keyword(x) if x.eq_ignore_ascii_case(k)))
            || Flag::parse(k).is_some_and(|f| !matches!(f, Flag::Keyword(_)) && self.has(&f))
    }

    fn internal_day(&self) -> NaiveDate {
        chrono::Utc.timestamp_opt(self.m.internal_date, 0).single().unwrap_or_default().date_naive()
    }

    fn sent_day(&mut self) -> Option<NaiveDate> {
        let header = self.header_block();
        let msg = MessageParser::default().parse_headers(&header[..])?;
        let d = msg.date()?;
        NaiveDate::from_ymd_opt(d.year as i32, d.month as u32, d.day as u32)
    }

    /// Header values of `name`, decoded and raw.
    fn header(&mut self, name: &str) -> Vec<String> {
        let header = self.header_block();
        let mut out = Vec::new();
        let mut present = false;
        for (k, v) in mime::fields(&header) {
            if k.eq_ignore_ascii_case(name) {
                present = true;
                out.push(v);
            }
        }
        // The decoded forms (RFC 2047 words, addresses) only when the field is there: the
        // full parse is the expensive part of a header SEARCH.
        if !present {
            return out;
        }
        if let Some(msg) = MessageParser::default().parse_headers(&header[..]) {
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
        }
        out
    }

    fn body_matches(&mut self, needle: &str) -> bool {
        let data = self.data().to_vec();
        if let Some(msg) = MessageParser::default().parse(&data) {
            for p in &msg.parts {
                let hit = match &p.body {
                    PartType::Text(t) | PartType::Html(t) => contains(t, needle),
                    _ => false,
                };
                if hit {
                    return true;
                }
            }
        }
        let root = mime::parse(&data);
        contains(&String::from_utf8_lossy(&data[root.body.clone()]), needle)
    }

    fn matches(&mut self, key: &SearchKey<'_>) -> bool {
        use SearchKey as K;
        let s =
            |a: &imap_codec::imap_types::core::AString<'_>| String::from_utf8_lossy(a.as_ref()).into_owned();
        match key {
            K::And(keys) => keys.as_ref().iter().all(|k| self.matches(k)),
            K::SequenceSet(set) => in_set(set, self.seq, self.max_seq),
            K::Uid(set) => in_set(set, self.m.uid, self.max_uid),
            K::All => true,
            K::Answered => self.has(&Flag::Answered),
            K::Deleted => self.has(&Flag::Deleted),
            K::Draft => self.has(&Flag::Draft),
            K::Flagged => self.has(&Flag::Flagged),
            K::Seen => self.has(&Flag::Seen),
            K::Unanswered => !self.has(&Flag::Answered),
            K::Undeleted => !self.has(&Flag::Deleted),
            K::Undraft => !self.has(&Flag::Draft),
            K::Unflagged => !self.has(&Flag::Flagged),
            K::Unseen => !self.has(&Flag::Seen),
            K::Recent => self.m.recent,
            K::New => self.m.recent && !self.has(&Flag::Seen),
            K::Old => !self.m.recent,
            K::Keyword(k) => self.has_keyword(k.as_ref()),
            K::Unkeyword(k) => !self.has_keyword(k.as_ref()),
            K::Larger(n) => self.size() > *n as u64,
            K::Smaller(n) => self.size() < *n as u64,
            K::Before(d) => self.internal_day() < *d.as_ref(),
            K::On(d) => self.internal_day() == *d.as_ref(),
            K::Since(d) => self.internal_day() >= *d.as_ref(),
            K::SentBefore(d) => self.sent_day().is_some_and(|x| x < *d.as_ref()),
            K::SentOn(d) => self.sent_day().is_some_and(|x| x == *d.as_ref()),
            K::SentSince(d) => self.sent_day().is_some_and(|x| x >= *d.as_ref()),
            K::Not(k) => !self.matches(k),
            K::Or(a, b) => self.matches(a) || self.matches(b),
            K::From(v) => self.header_has("From", &s(v)),
            K::To(v) => self.header_has("To", &s(v)),
            K::Cc(v) => self.header_has("Cc", &s(v)),
            K::Bcc(v) => self.header_has("Bcc", &s(v)),
            K::Subject(v) => self.header_has("Subject", &s(v)),
            K::Header(name, v) => self.header_has(&s(name), &s(v)),
            K::Body(v) => self.body_matches(&s(v)),
            K::Text(v) => {
                let v = s(v);
                let data = self.data().to_vec();
                let root = mime::parse(&data);
                contains(&String::from_utf8_lossy(&data[root.header.clone()]), &v) || self.body_matches(&v)
            }
            K::ModSequence { modseq, .. } => self.m.modseq >= *modseq,
        }
    }

    fn header_has(&mut self, name: &str, needle: &str) -> bool {
        let values = self.header(name);
        // RFC 3501 §6.4.4: HEADER with an empty string matches every message with the field.
        !values.is_empty() && values.iter().any(|v| contains(v, needle))
    }
}

/// Whether a key looks at the message's size, header or body (not only the index).
fn uses_content(k: &SearchKey<'_>) -> bool {
    use SearchKey as K;
    match k {
        K::And(v) => v.as_ref().iter().any(uses_content),
        K::Not(k) => uses_content(k),
        K::Or(a, b) => uses_content(a) || uses_content(b),
        K::Larger(_)
        | K::Smaller(_)
        | K::SentBefore(_)
        | K::SentOn(_)
        | K::SentSince(_)
        | K::From(_)
        | K::To(_)
        | K::Cc(_)
        | K::Bcc(_)
        | K::Subject(_)
        | K::Header(..)
        | K::Body(_)
        | K::Text(_) => true,
        _ => false,
    }
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

impl Session {
    pub(super) fn search(
        &mut self,
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
        self.updates(false, &BTreeSet::new())?;
        let modseq = criteria.as_ref().iter().any(uses_modseq);
        if modseq {
            self.condstore = true;
        }
        let needs_cache = criteria.as_ref().iter().any(uses_content);
        let sel = self.selected.as_mut().expect("selected");
        let view = sel.uids.clone();
        let max_seq = view.len() as u32;
        let max_uid = view.last().copied().unwrap_or(0);
        let mut hits = Vec::new();
        let mut highest = 0;
        for (i, &u) in view.iter().enumerate() {
            let Some(m) = sel.mb.message(u) else { continue };
            let cached = if needs_cache { sel.mb.cached(u) } else { None };
            let mut c =
                Candidate { seq: i as u32 + 1, m, max_seq, max_uid, mb: &mut sel.mb, cached, data: None };
            if criteria.as_ref().iter().all(|k| c.matches(k)) {
                highest = highest.max(c.m.modseq);
                hits.push(if uid { u } else { i as u32 + 1 });
            }
        }
        let mut line = "* SEARCH".to_owned();
        for h in &hits {
            line.push_str(&format!(" {h}"));
        }
        if modseq && !hits.is_empty() {
            line.push_str(&format!(" (MODSEQ {highest})"));
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
        assert!(contains("Hello World", "o w"));
    }
}
