//! Maildir file names: generating them as Dovecot does, and parsing anybody's.
//!
//! A Maildir file name is `<base>[:<info>]`. The base is unique and never changes during the
//! life of a message; the info part `2,<flags>` carries the flags and is changed by renaming.
//! We write Dovecot's form, `<secs>.M<usecs>P<pid>Q<counter>.<host>,S=<size>`, so that
//! Dovecot can use the `S=` size without a stat, and read any writer's form tolerantly
//! (qmail `<secs>.<pid>.<host>`, procmail, Courier `,S=…,W=…`, names with no time at all).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The Maildir flag letters we interpret, in the ASCII order the Maildir specification asks
/// for in the info part. D draft, F flagged, P passed, R replied, S seen, T trashed.
pub const KNOWN_LETTERS: &str = "DFPRST";

/// The bit of a system flag's Maildir letter in a flag bit set (S R F T D: 1 2 4 8 16; 0
/// for any other letter). The one definition of those bits (`index::NameInfo`,
/// `mailbox::SYSTEM_FLAGS`).
pub const fn system_bit(letter: u8) -> u8 {
    match letter {
        b'S' => 1,
        b'R' => 2,
        b'F' => 4,
        b'T' => 8,
        b'D' => 16,
        _ => 0,
    }
}

/// Split a file name into its base and its flag letters (only for the `2,` info form).
pub fn split(filename: &str) -> (&str, &str) {
    match memchr::memchr(b':', filename.as_bytes()) {
        Some(i) => (&filename[..i], filename[i + 1..].strip_prefix("2,").unwrap_or("")),
        None => (filename, ""),
    }
}

/// The base of a file name (the part before `:`).
pub fn base(filename: &str) -> &str {
    split(filename).0
}

/// The `S=<size>` field of a base name, if the writer put one there.
pub fn size_from_base(base: &str) -> Option<u64> {
    info_field(base, "S=")
}

/// The first `,`-separated field after the first comma that starts with `key`, parsed (a
/// scan of 10,000 names calls this per name: byte searches, no iterator of `char`s).
fn info_field(base: &str, key: &str) -> Option<u64> {
    let mut at = memchr::memchr(b',', base.as_bytes())? + 1;
    loop {
        let rest = &base[at..];
        let end = memchr::memchr(b',', rest.as_bytes()).unwrap_or(rest.len());
        if let Some(v) = rest[..end].strip_prefix(key) {
            return v.parse().ok();
        }
        if end == rest.len() {
            return None;
        }
        at += end + 1;
    }
}

/// The `W=<size>` field (Dovecot's "virtual size": the size with every line ending CRLF,
/// i.e. the IMAP RFC822.SIZE), if the writer put one there.
pub fn vsize_from_base(base: &str) -> Option<u64> {
    info_field(base, "W=")
}

/// The size of `data` with every bare LF counted as CRLF (the `W=` of [`new_base`]).
pub fn crlf_size(data: &[u8]) -> u64 {
    let mut bare = 0;
    let mut prev = 0u8;
    for &b in data {
        if b == b'\n' && prev != b'\r' {
            bare += 1;
        }
        prev = b;
    }
    data.len() as u64 + bare
}

/// The delivery time encoded in a base name, as (seconds, microseconds), for ordering UIDs
/// when the index is rebuilt. Dovecot and most writers start with the Unix time; Dovecot
/// adds `M<usecs>` as the first letter group of the second component.
pub fn time_from_base(base: &str) -> Option<(i64, u32)> {
    let dot = memchr::memchr(b'.', base.as_bytes());
    let secs: i64 = base[..dot.unwrap_or(base.len())].parse().ok()?;
    let usecs = dot
        .and_then(|d| {
            let second = &base[d + 1..];
            let second = &second[..memchr::memchr(b'.', second.as_bytes()).unwrap_or(second.len())];
            let digits = second.strip_prefix('M')?;
            let n = digits.bytes().take_while(u8::is_ascii_digit).count();
            digits[..n].parse().ok()
        })
        .unwrap_or(0);
    Some((secs, usecs))
}

/// The file name for `base` in cur/ with the given flag letters, sorted and deduplicated as
/// the Maildir specification requires.
pub fn with_flags(base: &str, letters: &str) -> String {
    format!("{base}:2,{}", sort_letters(letters))
}

pub fn sort_letters(letters: &str) -> String {
    let mut v: Vec<char> = letters.chars().filter(|c| c.is_ascii_alphabetic()).collect();
    v.sort_unstable();
    v.dedup();
    v.into_iter().collect()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new unique base name for a message of `size` bytes.
///
/// Uniqueness: the time to the microsecond, our pid and a per-process counter make it unique
/// on this host; the host name makes it unique among hosts sharing the storage. Callers still
/// create the file with O_EXCL and retry, because a clock step backwards could repeat a name.
pub fn new_base(size: u64, vsize: Option<u64>) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let q = COUNTER.fetch_add(1, Ordering::Relaxed) + 1;
    let mut base = format!(
        "{}.M{}P{}Q{}.{},S={}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        q,
        hostname(),
        size
    );
    if let Some(v) = vsize {
        base.push_str(&format!(",W={v}"));
    }
    base
}

/// The host name as Dovecot puts it in file names: `/` and `:` would break the name (path
/// separator, info separator), so they are written as octal escapes; we also escape `,`
/// because it separates the `S=` field.
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        let mut out = String::new();
        for c in raw.chars() {
            match c {
                '/' => out.push_str("\\057"),
                ':' => out.push_str("\\072"),
                ',' => out.push_str("\\054"),
                c if c.is_control() || c == ' ' => {}
                c => out.push(c),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_names() {
        let b = new_base(1234, None);
        assert!(b.ends_with(",S=1234"), "{b}");
        let (secs, _) = time_from_base(&b).unwrap();
        assert!(secs > 1_600_000_000);
        assert_eq!(size_from_base(&b), Some(1234));
        assert!(b.contains(&format!("P{}Q", std::process::id())));
        assert_ne!(new_base(1, None), new_base(1, None));
        let b = new_base(10, Some(12));
        assert!(b.ends_with(",S=10,W=12"), "{b}");
        assert_eq!((size_from_base(&b), vsize_from_base(&b)), (Some(10), Some(12)));
        assert_eq!(crlf_size(b"a\nb\r\nc\n"), 9);
        assert_eq!(crlf_size(b"\n"), 2);
    }

    #[test]
    fn parses_foreign_names() {
        assert_eq!(split("123.456.host:2,SF"), ("123.456.host", "SF"));
        assert_eq!(split("123.456.host"), ("123.456.host", ""));
        assert_eq!(split("123.456.host:1,xyz"), ("123.456.host", ""));
        assert_eq!(size_from_base("1.M2P3.h,S=99,W=101"), Some(99));
        assert_eq!(size_from_base("1.M2P3.h,W=101"), None);
        assert_eq!(time_from_base("1700000000.M123456P9Q1.h"), Some((1_700_000_000, 123_456)));
        assert_eq!(time_from_base("1700000000.4242_1.h"), Some((1_700_000_000, 0)));
        assert_eq!(time_from_base("msg-without-time"), None);
    }

    #[test]
    fn flags_sorted() {
        assert_eq!(with_flags("b", "SFDS"), "b:2,DFS");
        assert_eq!(with_flags("b", ""), "b:2,");
    }
}
