//! Where an IMAP connection is (RFC 3501 §3), as data: a command handler is given the state
//! its command needs (the account, the selected mailbox) instead of finding it in optional
//! fields, so "no mailbox selected" is decided once, where the command is dispatched.

use std::collections::BTreeSet;

use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};

use crate::address::Address;
use crate::store::{Flag, Mailbox};

/// RFC 3501 §3 (Logout is the end of the session loop, not a state we keep).
pub(super) enum State {
    /// §3.1: before LOGIN or AUTHENTICATE.
    NotAuthenticated,
    /// §3.2 and §3.3: logged in, with or without a selected mailbox.
    Authenticated { account: Account, mailbox: Selection },
}

/// The logged-in user.
pub(super) struct Account {
    pub address: Address,
    /// Bytes; 0 = no quota.
    pub quota: u64,
}

/// Whether a mailbox is selected (RFC 3501 §3.3).
pub(super) enum Selection {
    NotSelected,
    Selected(Box<Selected>),
}

impl Selection {
    /// The selected mailbox if it is the folder `name`.
    pub fn folder(&mut self, name: &str) -> Option<&mut Selected> {
        match self {
            Selection::Selected(sel) if sel.mb.folder() == name => Some(sel),
            _ => None,
        }
    }
}

/// The selected mailbox (RFC 3501 §3.3) and the client's view of it.
pub(super) struct Selected {
    pub mb: Mailbox,
    /// Message sequence number n is `uids[n - 1]`: the view the client has, which lags
    /// behind the store until we tell the client (EXISTS, EXPUNGE).
    pub uids: Vec<u32>,
    pub read_only: bool,
    /// Expunged in the store, not yet announced (RFC 3501 §7.4.1).
    pub pending_expunge: BTreeSet<u32>,
    /// Keywords announced in FLAGS so far.
    pub keywords: BTreeSet<String>,
    /// The \Recent count the client was last told (SELECT, RECENT).
    pub recent_reported: usize,
}

impl Selected {
    /// FLAGS/PERMANENTFLAGS lines if `flags` hold a keyword the client has not been told of.
    pub fn new_keywords<'a>(&mut self, flags: impl IntoIterator<Item = &'a Flag>) -> Vec<String> {
        let mut new = false;
        for f in flags {
            if let Flag::Keyword(k) = f {
                if !self.keywords.iter().any(|x| x.eq_ignore_ascii_case(k)) {
                    self.keywords.insert(k.clone());
                    new = true;
                }
            }
        }
        if new {
            flags_lines(&self.keywords, self.read_only)
        } else {
            Vec::new()
        }
    }

    pub fn seq_of(&self, uid: u32) -> Option<usize> {
        self.uids.binary_search(&uid).ok().map(|i| i + 1)
    }

    /// The UIDs a sequence set names in the client's view (RFC 3501 §9 seq-number, §6.4.8
    /// for UIDs). Sequence numbers beyond EXISTS are an error; UIDs not in the mailbox are
    /// ignored.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<u32>, String> {
        resolve_set(&self.uids, set, uid)
    }
}

/// FLAGS and PERMANENTFLAGS for a mailbox whose messages use `keywords` (RFC 3501 §7.2.6,
/// §7.1: sent at SELECT and again when a new keyword appears).
pub(super) fn flags_lines(keywords: &BTreeSet<String>, read_only: bool) -> Vec<String> {
    let mut flags = "\\Answered \\Flagged \\Deleted \\Seen \\Draft".to_owned();
    for k in keywords {
        flags.push(' ');
        flags.push_str(k);
    }
    vec![
        format!("* FLAGS ({flags})"),
        if read_only {
            "* OK [PERMANENTFLAGS ()] Read-only mailbox".to_owned()
        } else {
            format!("* OK [PERMANENTFLAGS ({flags} \\*)] Flags permitted")
        },
    ]
}

pub(super) fn resolve_set(uids: &[u32], set: &SequenceSet, uid: bool) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    if uid {
        let max = uids.last().copied().unwrap_or(0);
        let val = |s: &SeqOrUid| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => max,
        };
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(s) => (val(s), val(s)),
                Sequence::Range(a, b) => (val(a), val(b)),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            let start = uids.partition_point(|&u| u < lo);
            for &u in &uids[start..] {
                if u > hi {
                    break;
                }
                out.push(u);
            }
        }
    } else {
        let n = uids.len() as u32;
        let val = |s: &SeqOrUid| -> Result<u32, String> {
            match s {
                SeqOrUid::Value(v) if v.get() <= n => Ok(v.get()),
                SeqOrUid::Value(v) => Err(format!("Invalid message sequence number {v} (only {n} messages)")),
                SeqOrUid::Asterisk if n > 0 => Ok(n),
                SeqOrUid::Asterisk => Err("The mailbox is empty".into()),
            }
        };
        for seq in set.0.as_ref() {
            let (a, b) = match seq {
                Sequence::Single(s) => (val(s)?, val(s)?),
                Sequence::Range(a, b) => (val(a)?, val(b)?),
            };
            out.extend_from_slice(&uids[a.min(b) as usize - 1..a.max(b) as usize]);
        }
    }
    // Ascending and without repeats (`1:* ` is already both; `5,1:3,2` is not).
    if !out.is_sorted_by(|a, b| a < b) {
        out.sort_unstable();
        out.dedup();
    }
    Ok(out)
}
