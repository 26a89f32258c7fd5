//! The index file's format: `posthaste-uidlist`, beside `cur/ new/ tmp/` (parsing and
//! formatting only; `Index` reads and appends, `State` replays).
//!
//! # Format (version 1)
//!
//! A UTF-8 text file, one record per line, fields separated by one space. The first line is
//! the header; the rest is an append-only log of changes, replayed in order:
//!
//! ```text
//! posthaste-uidlist 1 <uidvalidity> <next-uid> <highest-modseq>
//! + <uid> <modseq> <internal-date> <size> <n|c> <nkw> [<keyword> ...] :<file name>
//! = <uid> <modseq> <internal-date> <size> <n|c> <nkw> [<keyword> ...] :<file name>
//! - <uid> <modseq>
//! R <first-recent-uid>
//! D <new/ mtime ns> <cur/ mtime ns>
//! ```
//!
//! - `+` adds a message, `=` replaces what is known about it (new flags, keywords, name or
//!   place). `<n|c>` says whether the file is in new/ or cur/; `<file name>` is the whole
//!   current name, so the base (before `:`) identifies the message for its whole life and the
//!   flag letters after `:2,` are the Maildir flags last seen. `<internal-date>` (Unix
//!   seconds, the file's mtime as Dovecot uses it) and `<size>` are cached so a sync never
//!   stats or reads known messages. Keywords are IMAP atoms (RFC 3501 §9 `flag-keyword`), so
//!   they contain no space; the count in front of them lets the file name hold anything but
//!   a line break.
//! - `-` expunges a UID. Its MODSEQ is a new value, because RFC 7162 §3.2 needs
//!   HIGHESTMODSEQ to grow when messages are expunged.
//! - `R` moves the first UID still \Recent (RFC 3501 §2.3.2): the first session that sees a
//!   message claims it by writing `R <next-uid>`.
//! - `D` records the mtimes of new/ and cur/ at a scan that found the index complete; while
//!   both are unchanged a sync need not read the directories (`0 0` = unknown).
//!
//! The next UID and HIGHESTMODSEQ are the maximum of the header and of every record, so a
//! UID once written is never handed out again, even after the message is expunged.

use std::collections::BTreeSet;

pub(super) use super::state::Record;
use super::state::{Entry, NameInfo, State};
use super::DATE_UNKNOWN;

const MAGIC: &str = "posthaste-uidlist";
const VERSION: &str = "1";

pub(super) fn format_record(rec: &Record, out: &mut String) {
    match rec {
        Record::Add(e) => format_entry('+', e, out),
        Record::Update(e) => format_entry('=', e, out),
        Record::Expunge { uid, modseq } => {
            out.push_str("- ");
            push_int(out, *uid as u64);
            out.push(' ');
            push_int(out, *modseq);
            out.push('\n');
        }
        Record::Recent(uid) => {
            out.push_str("R ");
            push_int(out, *uid as u64);
            out.push('\n');
        }
        Record::Stamp(n, c) => {
            use std::fmt::Write as _;
            let _ = writeln!(out, "D {n} {c}");
        }
    }
}

/// One `+` or `=` line (see the module docs).
pub(super) fn format_entry(op: char, e: &Entry, out: &mut String) {
    out.push(op);
    out.push(' ');
    push_int(out, e.uid as u64);
    out.push(' ');
    push_int(out, e.modseq);
    out.push(' ');
    if e.date == DATE_UNKNOWN {
        out.push('?');
    } else {
        if e.date < 0 {
            out.push('-');
        }
        push_int(out, e.date.unsigned_abs());
    }
    out.push(' ');
    push_int(out, e.size);
    out.push_str(if e.in_new { " n " } else { " c " });
    push_int(out, e.keywords.len() as u64);
    for k in &e.keywords {
        out.push(' ');
        out.push_str(k);
    }
    out.push_str(" :");
    out.push_str(&e.filename);
    out.push('\n');
}

/// Decimal digits of `v` (the index is written 10,000 lines at a time by a rebuild, where
/// `write!` was a visible part of the cost).
fn push_int(out: &mut String, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&buf[i..]).expect("ASCII digits"));
}

pub(super) fn parse_record(line: &str) -> Option<Record> {
    let mut rest = line;
    let mut tok = || -> Option<&str> {
        let (t, r) = rest.split_once(' ').unwrap_or((rest, ""));
        rest = r;
        Some(t).filter(|t| !t.is_empty())
    };
    let op = tok()?;
    match op {
        "+" | "=" => {
            let uid: u32 = tok()?.parse().ok().filter(|u| *u > 0)?;
            let modseq = tok()?.parse().ok()?;
            let date = match tok()? {
                "?" => DATE_UNKNOWN,
                d => d.parse().ok().filter(|d| *d != DATE_UNKNOWN)?,
            };
            let size = tok()?.parse().ok()?;
            let in_new = match tok()? {
                "n" => true,
                "c" => false,
                _ => return None,
            };
            let nkw: usize = tok()?.parse().ok()?;
            let mut keywords = BTreeSet::new();
            for _ in 0..nkw {
                keywords.insert(tok()?.to_owned());
            }
            let filename = rest.strip_prefix(':').filter(|f| !f.is_empty())?.to_owned();
            let e = Entry { uid, modseq, date, size, in_new, keywords, filename, info: NameInfo::default() };
            Some(if op == "+" { Record::Add(e) } else { Record::Update(e) })
        }
        "-" => {
            let uid = tok()?.parse().ok()?;
            let modseq = tok()?.parse().ok()?;
            Some(Record::Expunge { uid, modseq })
        }
        "R" => Some(Record::Recent(tok()?.parse().ok()?)),
        "D" => Some(Record::Stamp(tok()?.parse().ok()?, tok()?.parse().ok()?)),
        _ => None,
    }
}

pub(super) fn parse_header(line: &str) -> Option<State> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() != 5 || f[0] != MAGIC || f[1] != VERSION {
        return None;
    }
    let uv: u32 = f[2].parse().ok().filter(|v| *v > 0)?;
    Some(State::new(uv, f[3].parse().ok()?, f[4].parse().ok()?))
}

/// The header line of a compacted file (see the format above), for the state `s`.
pub(super) fn format_header(s: &State, out: &mut String) {
    out.push_str(MAGIC);
    out.push(' ');
    out.push_str(VERSION);
    for v in [s.uidvalidity as u64, s.next_uid as u64, s.highest_modseq] {
        out.push(' ');
        push_int(out, v);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let e = Entry {
            uid: 7,
            modseq: 12,
            date: 1_700_000_000,
            size: 42,
            in_new: false,
            keywords: ["$Junk".to_owned(), "work".to_owned()].into(),
            filename: "1.M2P3Q4.host name,S=42:2,FS".to_owned(),
            info: NameInfo::default(),
        };
        let mut s = String::new();
        format_record(&Record::Update(e.clone()), &mut s);
        assert_eq!(s, "= 7 12 1700000000 42 c 2 $Junk work :1.M2P3Q4.host name,S=42:2,FS\n");
        match parse_record(s.trim_end()) {
            Some(Record::Update(p)) => assert_eq!(p, e),
            other => panic!("{other:?}"),
        }
        let mut s = String::new();
        let old = Entry { date: -86_400, keywords: BTreeSet::new(), in_new: true, ..e.clone() };
        for r in [
            Record::Add(old.clone()),
            Record::Expunge { uid: 3, modseq: 18_446_744_073_709_551_615 },
            Record::Recent(0),
            Record::Stamp(-1, 1_700_000_000_123_456_789),
        ] {
            format_record(&r, &mut s);
        }
        assert_eq!(
            s,
            "+ 7 12 -86400 42 n 0 :1.M2P3Q4.host name,S=42:2,FS\n- 3 18446744073709551615\nR 0\n\
             D -1 1700000000123456789\n"
        );
        match parse_record(s.lines().next().unwrap()) {
            Some(Record::Add(p)) => assert_eq!(p, old),
            other => panic!("{other:?}"),
        }
        assert!(parse_record("+ 0 1 1 1 c 0 :x").is_none(), "uid 0 is invalid");
        assert!(parse_record("+ 1 1 1 1 c 2 a :x").is_none(), "keyword count too big");
        assert!(parse_record("garbage").is_none());
    }
}
