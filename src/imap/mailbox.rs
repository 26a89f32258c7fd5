//! Mailbox commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE, LIST/LSUB, STATUS
//! (RFC 3501 §6.3), APPEND, COPY/MOVE (RFC 6851), EXPUNGE, QUOTA (RFC 9208).
//!
//! Names: `/` separates levels on the wire, `.` on disk (Maildir++); wire names are
//! modified UTF-7 (RFC 3501 §5.1.3), disk names UTF-8. A wire name holding `.` cannot be
//! stored in Maildir++ and is refused.

use std::collections::BTreeSet;
use std::io;
use std::time::SystemTime;

use imap_codec::imap_types::flag::Flag as WireFlag;
use imap_codec::imap_types::mailbox::Mailbox as WireMailbox;
use imap_codec::imap_types::sequence::SequenceSet;
use imap_codec::imap_types::status::StatusDataItemName;

use super::conn::Conn;
use super::state::{flags_lines, Account, Selected, Selection};
use super::wire::{compact, io_no};
use super::{utf7, wire};
use crate::store::{self, Flag};

/// The disk name of a wire mailbox name, or why it is refused.
pub fn disk_name(m: &WireMailbox<'_>) -> Result<String, String> {
    let raw: &[u8] = match m {
        WireMailbox::Inbox => return Ok("INBOX".into()),
        WireMailbox::Other(o) => o.as_ref(),
    };
    wire_to_disk(raw)
}

pub fn wire_to_disk(raw: &[u8]) -> Result<String, String> {
    let name = utf7::decode(raw).ok_or("Mailbox name is not valid modified UTF-7")?;
    if name.contains('.') {
        return Err("Mailbox names cannot contain \".\" here".into());
    }
    let name = name.trim_end_matches('/');
    if name.starts_with('/') || name.contains("//") {
        return Err("Invalid hierarchy in mailbox name".into());
    }
    let disk = name.replace('/', ".");
    store::validate_folder(&disk).map_err(|e| wire::text(&e.to_string()))
}

pub fn disk_to_wire(name: &str) -> String {
    utf7::encode(&name.replace('.', "/"))
}

/// LIST pattern matching (RFC 3501 §6.3.8): `*` matches anything, `%` anything but `/`.
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.first() {
        None => name.is_empty(),
        Some(b'*') => (0..=name.len()).any(|i| matches(&pattern[1..], &name[i..])),
        Some(b'%') => {
            for i in 0..=name.len() {
                if matches(&pattern[1..], &name[i..]) {
                    return true;
                }
                if i < name.len() && name[i] == b'/' {
                    return false;
                }
            }
            false
        }
        Some(&c) => !name.is_empty() && c == name[0] && matches(&pattern[1..], &name[1..]),
    }
}

fn parse_flags(flags: &[WireFlag<'_>]) -> Result<Vec<Flag>, String> {
    flags
        .iter()
        .map(|f| {
            let s = f.to_string();
            Flag::parse(&s).ok_or_else(|| format!("Flag {s} cannot be set"))
        })
        .collect()
}

impl Conn {
    pub(super) fn select(
        &mut self,
        account: &Account,
        mailbox: &mut Selection,
        tag: &str,
        m: &WireMailbox<'_>,
        read_only: bool,
        condstore: bool,
    ) -> io::Result<()> {
        // RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected. RFC 7162 §3.2.11
        // (and RFC 9051 §7.1): the implicit close of the mailbox selected before is
        // announced, so a client can tell the responses of the two apart.
        if let Selection::Selected(_) = std::mem::replace(mailbox, Selection::NotSelected) {
            self.line("* OK [CLOSED] Previous mailbox closed");
        }
        if condstore {
            self.condstore = true;
        }
        let name = match disk_name(m) {
            Ok(n) => n,
            Err(e) => {
                self.no(tag, &e);
                return Ok(());
            }
        };
        let mb = match self.ctx.store.open_mailbox(&account.address, &name, !read_only) {
            Ok(mb) => mb,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.no(tag, "[NONEXISTENT] No such mailbox");
                return Ok(());
            }
            Err(e) => {
                self.no(tag, &io_no(&e));
                return Ok(());
            }
        };
        let summary = mb.summary();
        let uids = summary.uids;
        let mut keywords = summary.keywords;
        keywords.insert("$Forwarded".into());
        for l in flags_lines(&keywords, read_only) {
            self.line(&l);
        }
        self.line(&format!("* {} EXISTS", uids.len()));
        self.line(&format!("* {} RECENT", summary.recent));
        if let Some(i) = summary.first_unseen {
            self.line(&format!("* OK [UNSEEN {}] First unseen message", i + 1));
        }
        self.line(&format!("* OK [UIDVALIDITY {}] UIDs valid", mb.uidvalidity()));
        self.line(&format!("* OK [UIDNEXT {}] Predicted next UID", mb.uid_next()));
        self.line(&format!("* OK [HIGHESTMODSEQ {}] Highest", mb.highest_modseq().max(1)));
        *mailbox = Selection::Selected(Box::new(Selected {
            mb,
            uids,
            read_only,
            pending_expunge: BTreeSet::new(),
            keywords,
            recent_reported: summary.recent,
        }));
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        let cmd = if read_only { "EXAMINE" } else { "SELECT" };
        self.ok(tag, &format!("[{code}] {cmd} completed"));
        Ok(())
    }

    pub(super) fn create(&mut self, account: &Account, tag: &str, m: &WireMailbox<'_>) {
        let name = match disk_name(m) {
            Ok(n) if n == "INBOX" => return self.no(tag, "[ALREADYEXISTS] INBOX always exists"),
            Ok(n) => n,
            // RFC 5530 §3: a name this server can never hold.
            Err(e) => return self.no(tag, &format!("[CANNOT] {e}")),
        };
        match self.ctx.store.folder_exists(&account.address, &name) {
            Ok(true) => return self.no(tag, "[ALREADYEXISTS] Mailbox already exists"),
            Ok(false) => {}
            Err(e) => return self.no(tag, &io_no(&e)),
        }
        match self.ctx.store.create_folder(&account.address, &name) {
            Ok(()) => self.ok(tag, "CREATE completed"),
            Err(e) => self.no(tag, &io_no(&e)),
        }
    }

    pub(super) fn delete(
        &mut self,
        account: &Account,
        mailbox: &mut Selection,
        tag: &str,
        m: &WireMailbox<'_>,
    ) {
        let name = match disk_name(m) {
            Ok(n) if n == "INBOX" => return self.no(tag, "INBOX cannot be deleted"),
            Ok(n) => n,
            Err(e) => return self.no(tag, &e),
        };
        if mailbox.folder(&name).is_some() {
            *mailbox = Selection::NotSelected;
        }
        match self.ctx.store.delete_folder(&account.address, &name) {
            Ok(()) => self.ok(tag, "DELETE completed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.no(tag, "[NONEXISTENT] No such mailbox"),
            Err(e) => self.no(tag, &io_no(&e)),
        }
    }

    pub(super) fn rename(
        &mut self,
        account: &Account,
        tag: &str,
        from: &WireMailbox<'_>,
        to: &WireMailbox<'_>,
    ) {
        let (from, to) = match (disk_name(from), disk_name(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return self.no(tag, &e),
        };
        if to == "INBOX" {
            return self.no(tag, "[ALREADYEXISTS] INBOX always exists");
        }
        // The source before the target: a missing source is the first thing wrong.
        match self.ctx.store.folder_exists(&account.address, &from) {
            Ok(false) => return self.no(tag, "[NONEXISTENT] No such mailbox"),
            Ok(true) => {}
            Err(e) => return self.no(tag, &io_no(&e)),
        }
        match self.ctx.store.folder_exists(&account.address, &to) {
            Ok(true) => return self.no(tag, "[ALREADYEXISTS] Target mailbox exists"),
            Ok(false) => {}
            Err(e) => return self.no(tag, &io_no(&e)),
        }
        match self.ctx.store.rename_folder(&account.address, &from, &to) {
            Ok(()) => self.ok(tag, "RENAME completed"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.no(tag, "[NONEXISTENT] No such mailbox"),
            Err(e) => self.no(tag, &io_no(&e)),
        }
    }

    pub(super) fn subscribe(&mut self, account: &Account, tag: &str, m: &WireMailbox<'_>, on: bool) {
        let name = match disk_name(m) {
            Ok(n) => n,
            Err(e) => return self.no(tag, &e),
        };
        let r = if on {
            match self.ctx.store.folder_exists(&account.address, &name) {
                Ok(false) => return self.no(tag, "[NONEXISTENT] No such mailbox"),
                Err(e) => return self.no(tag, &io_no(&e)),
                Ok(true) => self.ctx.store.subscribe(&account.address, &name),
            }
        } else {
            self.ctx.store.unsubscribe(&account.address, &name)
        };
        match r {
            Ok(()) => self.ok(tag, if on { "SUBSCRIBE completed" } else { "UNSUBSCRIBE completed" }),
            Err(e) => self.no(tag, &io_no(&e)),
        }
    }

    pub(super) fn list(
        &mut self,
        account: &Account,
        tag: &str,
        reference: &WireMailbox<'_>,
        pattern: &[u8],
        lsub: bool,
    ) {
        let reference: Vec<u8> = match reference {
            WireMailbox::Inbox => b"INBOX".to_vec(),
            WireMailbox::Other(o) => o.as_ref().to_vec(),
        };
        if pattern.is_empty() && !lsub {
            // RFC 3501 §6.3.8: the hierarchy delimiter and root.
            self.line("* LIST (\\Noselect) \"/\" \"\"");
            return self.ok(tag, "LIST completed");
        }
        let mut full = reference.clone();
        full.extend_from_slice(pattern);
        if lsub {
            return self.lsub(account, tag, &full);
        }
        let folders = match self.ctx.store.list_folders(&account.address) {
            Ok(f) => f,
            Err(e) => return self.no(tag, &io_no(&e)),
        };
        // Maildir++ can hold `.a.b` without `.a`: the levels above an existing folder that
        // are no folder themselves are listed with \Noselect (RFC 3501 §6.3.8: "If these
        // levels of hierarchy are not also selectable mailboxes, they are returned with the
        // \Noselect mailbox name attribute"), so clients can show the tree.
        let mut entries: Vec<(String, Option<&store::FolderInfo>)> =
            folders.iter().map(|f| (f.name.clone(), Some(f))).collect();
        let existing: BTreeSet<&str> = folders.iter().map(|f| f.name.as_str()).collect();
        let mut missing = BTreeSet::new();
        for f in &folders {
            for (i, _) in f.name.match_indices('.') {
                let parent = &f.name[..i];
                if !existing.contains(parent) {
                    missing.insert(parent.to_owned());
                }
            }
        }
        entries.extend(missing.into_iter().map(|n| (n, None)));
        // INBOX first, then by name, as before.
        entries[1..].sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<String> = entries.iter().map(|(n, _)| disk_to_wire(n)).collect();
        let mut out = Vec::new();
        let opts = std::mem::take(&mut self.list_opts);
        for ((name, f), wire_name) in entries.iter().zip(&names) {
            let subscribed = f.is_some_and(|f| f.subscribed);
            let special = f.and_then(|f| f.special_use);
            if opts.subscribed_only && !subscribed && name != "INBOX" {
                continue;
            }
            if opts.special_use_only && special.is_none() {
                continue;
            }
            // INBOX matches case-insensitively (RFC 3501 §5.1).
            let hit = matches(&full, wire_name.as_bytes())
                || (name == "INBOX" && full.eq_ignore_ascii_case(b"INBOX"));
            if !hit {
                continue;
            }
            let prefix = format!("{wire_name}/");
            let children = names.iter().any(|n| n.starts_with(&prefix));
            let mut attrs = Vec::new();
            if f.is_none() {
                attrs.push("\\Noselect");
            }
            attrs.push(if children { "\\HasChildren" } else { "\\HasNoChildren" });
            if opts.return_subscribed && (subscribed || name == "INBOX") {
                attrs.push("\\Subscribed");
            }
            if let Some(su) = special {
                attrs.push(su);
            }
            out.extend_from_slice(format!("* LIST ({}) \"/\" ", attrs.join(" ")).as_bytes());
            wire::mailbox(&mut out, wire_name);
            out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(&out);
        self.ok(tag, "LIST completed");
    }

    /// LSUB (RFC 3501 §6.3.9): the subscribed names matching `pattern`, whether or not
    /// the mailbox exists (the subscription outlives it), and — the special case of `%` —
    /// a level above a subscribed name that the pattern stops at but that is not subscribed
    /// itself, flagged \Noselect ("foo/bar" subscribed, "foo" not: `LSUB "" "%"` returns
    /// "foo" as \Noselect). INBOX first, then by name.
    fn lsub(&mut self, account: &Account, tag: &str, pattern: &[u8]) {
        let subs = match self.ctx.store.subscriptions(&account.address) {
            Ok(s) => s,
            Err(e) => return self.no(tag, &io_no(&e)),
        };
        let wire: BTreeSet<String> = subs.iter().filter(|n| *n != "INBOX").map(|n| disk_to_wire(n)).collect();
        let mut out = Vec::new();
        let mut line = |name: &str, noselect: bool| {
            // RFC 6154 §2: the special-use attribute goes with the mailbox in LSUB too.
            let special = if noselect {
                None
            } else {
                wire_to_disk(name.as_bytes()).ok().and_then(|n| store::special_use(&n))
            };
            match (noselect, special) {
                (true, _) => out.extend_from_slice(b"* LSUB (\\Noselect) \"/\" "),
                (false, Some(su)) => out.extend_from_slice(format!("* LSUB ({su}) \"/\" ").as_bytes()),
                (false, None) => out.extend_from_slice(b"* LSUB () \"/\" "),
            }
            wire::mailbox(&mut out, name);
            out.extend_from_slice(b"\r\n");
        };
        // INBOX matches case-insensitively (RFC 3501 §5.1).
        if subs.contains("INBOX") && (matches(pattern, b"INBOX") || pattern.eq_ignore_ascii_case(b"INBOX")) {
            line("INBOX", false);
        }
        let mut parents = BTreeSet::new();
        for name in &wire {
            if matches(pattern, name.as_bytes()) {
                continue;
            }
            for (i, _) in name.match_indices('/') {
                let parent = &name[..i];
                if !wire.contains(parent) && matches(pattern, parent.as_bytes()) {
                    parents.insert(parent.to_owned());
                }
            }
        }
        let all: BTreeSet<(&str, bool)> = wire
            .iter()
            .filter(|n| matches(pattern, n.as_bytes()))
            .map(|n| (n.as_str(), false))
            .chain(parents.iter().map(|p| (p.as_str(), true)))
            .collect();
        for (name, noselect) in all {
            line(name, noselect);
        }
        self.out.extend_from_slice(&out);
        self.ok(tag, "LSUB completed");
    }

    pub(super) fn status(
        &mut self,
        account: &Account,
        selected: &mut Selection,
        tag: &str,
        m: &WireMailbox<'_>,
        items: &[StatusDataItemName],
    ) {
        let name = match disk_name(m) {
            Ok(n) => n,
            Err(e) => return self.no(tag, &e),
        };
        let mb = match self.ctx.store.open_mailbox(&account.address, &name, false) {
            Ok(mb) => mb,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return self.no(tag, "[NONEXISTENT] No such mailbox")
            }
            Err(e) => return self.no(tag, &io_no(&e)),
        };
        let msgs = mb.messages();
        let mut parts = Vec::new();
        for it in items {
            match it {
                StatusDataItemName::Messages => parts.push(format!("MESSAGES {}", msgs.len())),
                // Those no session has claimed, and of the mailbox selected here also those
                // \Recent to this session (RFC 3501 §6.3.10: the messages with \Recent set).
                StatusDataItemName::Recent => {
                    // (EXAMINE's \Recent are the unclaimed ones: not counted twice.)
                    let own = selected
                        .folder(&name)
                        .filter(|sel| !sel.read_only)
                        .map_or(0, |sel| sel.mb.recent_count());
                    parts.push(format!("RECENT {}", own + mb.unclaimed_recent()))
                }
                StatusDataItemName::UidNext => parts.push(format!("UIDNEXT {}", mb.uid_next())),
                StatusDataItemName::UidValidity => parts.push(format!("UIDVALIDITY {}", mb.uidvalidity())),
                StatusDataItemName::Unseen => parts.push(format!(
                    "UNSEEN {}",
                    msgs.iter().filter(|m| !m.flags.contains(&Flag::Seen)).count()
                )),
                StatusDataItemName::HighestModSeq => {
                    parts.push(format!("HIGHESTMODSEQ {}", mb.highest_modseq().max(1)))
                }
                StatusDataItemName::Deleted => parts.push(format!(
                    "DELETED {}",
                    msgs.iter().filter(|m| m.flags.contains(&Flag::Deleted)).count()
                )),
                _ => {}
            }
        }
        let mut out = b"* STATUS ".to_vec();
        wire::mailbox(&mut out, &disk_to_wire(&name));
        out.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        self.out.extend_from_slice(&out);
        self.ok(tag, "STATUS completed");
    }

    fn over_quota(&self, account: &Account, extra: u64) -> io::Result<bool> {
        if account.quota == 0 {
            return Ok(false);
        }
        let used = self.ctx.store.account_usage(&account.address)?.bytes;
        Ok(used + extra > account.quota)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn append(
        &mut self,
        account: &Account,
        mailbox: &mut Selection,
        tag: &str,
        m: &WireMailbox<'_>,
        flags: &[WireFlag<'_>],
        date: Option<chrono::DateTime<chrono::FixedOffset>>,
        data: &[u8],
    ) -> io::Result<()> {
        let name = match disk_name(m) {
            Ok(n) => n,
            Err(e) => {
                self.no(tag, &e);
                return Ok(());
            }
        };
        let flags = match parse_flags(flags) {
            Ok(f) => f,
            Err(e) => {
                self.bad(Some(tag), &e);
                return Ok(());
            }
        };
        if data.is_empty() {
            self.no(tag, "Empty message");
            return Ok(());
        }
        match self.over_quota(account, data.len() as u64) {
            Ok(true) => {
                self.no(tag, "[OVERQUOTA] Mailbox is full");
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => {
                self.no(tag, &io_no(&e));
                return Ok(());
            }
        }
        let time = date
            .map(|d| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(d.timestamp().max(0) as u64));
        match self.ctx.store.append(&account.address, &name, data, &flags, time) {
            Ok(d) => {
                if let Some(sel) = mailbox.folder(&name) {
                    self.updates(sel, true, &BTreeSet::new())?;
                }
                self.ok(tag, &format!("[APPENDUID {} {}] APPEND completed", d.uidvalidity, d.uid));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.no(tag, "[TRYCREATE] No such mailbox"),
            Err(e) => self.no(tag, &io_no(&e)),
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn copy_move(
        &mut self,
        account: &Account,
        sel: &mut Selected,
        tag: &str,
        set: &SequenceSet,
        m: &WireMailbox<'_>,
        uid: bool,
        is_move: bool,
    ) -> io::Result<()> {
        let name = match disk_name(m) {
            Ok(n) => n,
            Err(e) => {
                self.no(tag, &e);
                return Ok(());
            }
        };
        let uids = match sel.resolve(set, uid) {
            Ok(u) => u,
            Err(e) => {
                self.bad(Some(tag), &e);
                return Ok(());
            }
        };
        let cmd = if is_move { "MOVE" } else { "COPY" };
        // Nothing to copy is done at once; then the destination (RFC 3501 §6.4.7:
        // [TRYCREATE] tells the client what to do about it), then whether this mailbox
        // allows the move — the order Dovecot answers in.
        if uids.is_empty() {
            self.ok(tag, &format!("{cmd} completed (no messages)"));
            return Ok(());
        }
        match self.ctx.store.folder_exists(&account.address, &name) {
            Ok(false) => {
                self.no(tag, "[TRYCREATE] No such mailbox");
                return Ok(());
            }
            Err(e) => {
                self.no(tag, &io_no(&e));
                return Ok(());
            }
            Ok(true) => {}
        }
        if is_move && sel.read_only {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return Ok(());
        }
        if !is_move {
            let size: u64 = uids.iter().filter_map(|u| sel.mb.message(*u)).map(|m| m.size).sum();
            if self.over_quota(account, size)? {
                self.no(tag, "[OVERQUOTA] Mailbox is full");
                return Ok(());
            }
        }
        let r = if is_move { sel.mb.move_to(&uids, &name) } else { sel.mb.copy_to(&uids, &name) };
        match r {
            Ok(res) => {
                let (src, dst): (Vec<u32>, Vec<u32>) = res.mapping.iter().copied().unzip();
                // Into Junk = spam, out of Junk = ham, learned by rspamd in the background.
                self.ctx.filter.learn_moved(&self.ctx.store, &account.address, sel.mb.folder(), &name, &dst);
                let code = if src.is_empty() {
                    String::new()
                } else {
                    format!("[COPYUID {} {} {}] ", res.uidvalidity, compact(&src), compact(&dst))
                };
                if is_move {
                    // RFC 6851 §4.3: COPYUID in an untagged OK before the expunges.
                    if !code.is_empty() {
                        self.line(&format!("* OK {}Moved", code));
                    }
                    self.updates(sel, true, &BTreeSet::new())?;
                    self.ok(tag, "MOVE completed");
                } else {
                    // A copy into the selected mailbox shows up at once.
                    self.updates(sel, true, &BTreeSet::new())?;
                    self.ok(tag, &format!("{code}COPY completed"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.no(tag, "[TRYCREATE] No such mailbox"),
            Err(e) => self.no(tag, &io_no(&e)),
        }
        Ok(())
    }

    pub(super) fn expunge(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        set: Option<&SequenceSet>,
    ) -> io::Result<()> {
        if sel.read_only {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return Ok(());
        }
        let r = match set {
            None => sel.mb.expunge_deleted(),
            Some(set) => {
                // UID EXPUNGE (RFC 4315 §2.1): only the listed messages that are \Deleted.
                let uids = match sel.resolve(set, true) {
                    Ok(u) => u,
                    Err(e) => {
                        self.bad(Some(tag), &e);
                        return Ok(());
                    }
                };
                let deleted: Vec<u32> = uids
                    .into_iter()
                    .filter(|u| sel.mb.message(*u).is_some_and(|m| m.flags.contains(&Flag::Deleted)))
                    .collect();
                sel.mb.expunge(&deleted)
            }
        };
        match r {
            Ok(_) => {
                self.updates(sel, true, &BTreeSet::new())?;
                self.ok(tag, "EXPUNGE completed");
            }
            Err(e) => self.no(tag, &io_no(&e)),
        }
        Ok(())
    }

    fn quota_line(&mut self, account: &Account) -> io::Result<()> {
        let used = self.ctx.store.account_usage(&account.address)?.bytes;
        if account.quota > 0 {
            // RFC 9208 §5.1: STORAGE in units of 1024 octets.
            self.line(&format!("* QUOTA \"\" (STORAGE {} {})", used.div_ceil(1024), account.quota / 1024));
        } else {
            self.line("* QUOTA \"\" ()");
        }
        Ok(())
    }

    pub(super) fn get_quota(&mut self, account: &Account, tag: &str, root: &str) {
        if !root.is_empty() {
            return self.no(tag, "[NONEXISTENT] No such quota root");
        }
        match self.quota_line(account) {
            Ok(()) => self.ok(tag, "GETQUOTA completed"),
            Err(e) => self.no(tag, &io_no(&e)),
        }
    }

    pub(super) fn get_quota_root(&mut self, account: &Account, tag: &str, m: &WireMailbox<'_>) {
        let name = match disk_name(m) {
            Ok(n) => n,
            Err(e) => return self.no(tag, &e),
        };
        let mut out = b"* QUOTAROOT ".to_vec();
        wire::mailbox(&mut out, &disk_to_wire(&name));
        out.extend_from_slice(b" \"\"\r\n");
        self.out.extend_from_slice(&out);
        match self.quota_line(account) {
            Ok(()) => self.ok(tag, "GETQUOTAROOT completed"),
            Err(e) => self.no(tag, &io_no(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        assert_eq!(wire_to_disk(b"Archive/2024").unwrap(), "Archive.2024");
        assert_eq!(wire_to_disk(b"Entw&APw-rfe").unwrap(), "Entwürfe");
        assert!(wire_to_disk(b"a.b").is_err());
        assert!(wire_to_disk(b"../x").is_err());
        assert!(wire_to_disk(b"/abs").is_err());
        assert_eq!(disk_to_wire("Archive.2024"), "Archive/2024");
        assert!(matches(b"*", b"a/b"));
        assert!(matches(b"%", b"a"));
        assert!(!matches(b"%", b"a/b"));
        assert!(matches(b"a/%", b"a/b"));
        assert!(matches(b"A*", b"Archive/2024"));
        assert!(!matches(b"B*", b"Archive"));
    }
}
