//! FETCH (RFC 3501 §6.4.5, §7.4.2) and STORE (§6.4.6), with CONDSTORE (RFC 7162 §3.1).

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::ops::ControlFlow;

use imap_codec::imap_types::command::{FetchModifier, StoreModifier};
use imap_codec::imap_types::fetch::{Macro, MacroOrMessageDataItemNames, MessageDataItemName, Part, Section};
use imap_codec::imap_types::flag::{Flag as WireFlag, StoreResponse, StoreType};
use imap_codec::imap_types::sequence::SequenceSet;

use super::conn::Conn;
use super::mime;
use super::state::Selected;
use super::wire::{self, compact, flags_for, io_no};
use crate::store::{CachedMessage, Flag, FlagOp, MessageRef, SYSTEM_FLAGS};

fn part_path(p: &Part) -> Vec<u32> {
    p.0.as_ref().iter().map(|n| n.get()).collect()
}

fn path_str(p: &[u32]) -> String {
    p.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
}

fn with_prefix(p: &Option<Part>, what: &str) -> String {
    match p {
        Some(p) => format!("{}.{what}", path_str(&part_path(p))),
        None => what.to_owned(),
    }
}

/// The section as the response names it.
fn section_name(s: &Option<Section<'_>>) -> String {
    let names = |l: &[imap_codec::imap_types::core::AString<'_>]| {
        l.iter()
            .map(|a| String::from_utf8_lossy(a.as_ref()).to_ascii_uppercase())
            .collect::<Vec<_>>()
            .join(" ")
    };
    match s {
        None => String::new(),
        Some(Section::Part(p)) => path_str(&part_path(p)),
        Some(Section::Header(p)) => with_prefix(p, "HEADER"),
        Some(Section::HeaderFields(p, l)) => {
            with_prefix(p, &format!("HEADER.FIELDS ({})", names(l.as_ref())))
        }
        Some(Section::HeaderFieldsNot(p, l)) => {
            with_prefix(p, &format!("HEADER.FIELDS.NOT ({})", names(l.as_ref())))
        }
        Some(Section::Text(p)) => with_prefix(p, "TEXT"),
        Some(Section::Mime(p)) => format!("{}.MIME", path_str(&part_path(p))),
    }
}

/// The bytes a section names; empty when the part does not exist.
fn section_bytes(data: &[u8], root: &mime::Part, s: &Option<Section<'_>>) -> Vec<u8> {
    let msg = |p: &Option<Part>| root.message_at(&p.as_ref().map(part_path).unwrap_or_default());
    match s {
        None => data.to_vec(),
        Some(Section::Part(p)) => {
            root.find(&part_path(p)).map(|x| data[x.body.clone()].to_vec()).unwrap_or_default()
        }
        Some(Section::Header(p)) => msg(p).map(|m| data[m.header.clone()].to_vec()).unwrap_or_default(),
        Some(Section::Text(p)) => msg(p).map(|m| data[m.body.clone()].to_vec()).unwrap_or_default(),
        Some(Section::Mime(p)) => {
            root.find(&part_path(p)).map(|x| data[x.header.clone()].to_vec()).unwrap_or_default()
        }
        Some(Section::HeaderFields(p, l)) => msg(p)
            .map(|m| mime::header_fields(&data[m.header.clone()], l.as_ref(), false))
            .unwrap_or_default(),
        Some(Section::HeaderFieldsNot(p, l)) => {
            msg(p).map(|m| mime::header_fields(&data[m.header.clone()], l.as_ref(), true)).unwrap_or_default()
        }
    }
}

/// Messages FETCH and SEARCH handle under one hold of the folder's index lock, at most (the
/// lock is let go in between, so deliveries and other sessions of the folder wait little).
pub(super) const RUN: usize = 1024;

/// Keys of the rendered items in the store's per-message cache.
const ITEM_ENVELOPE: u8 = 1;
const ITEM_BODYSTRUCTURE: u8 = 2;
const ITEM_BODY: u8 = 3;

/// Sections of the top-level header alone, which the cached header block answers.
fn header_only(s: &Option<Section<'_>>) -> bool {
    matches!(
        s,
        Some(Section::Header(None) | Section::HeaderFields(None, _) | Section::HeaderFieldsNot(None, _))
    )
}

fn header_section(header: &[u8], s: &Option<Section<'_>>) -> Vec<u8> {
    match s {
        Some(Section::HeaderFields(None, l)) => mime::header_fields(header, l.as_ref(), false),
        Some(Section::HeaderFieldsNot(None, l)) => mime::header_fields(header, l.as_ref(), true),
        _ => header.to_vec(),
    }
}

/// Whether answering `item` needs the message file, given what the cache holds.
fn needs_file(item: &MessageDataItemName<'_>, c: &CachedMessage, m: &MessageRef<'_>) -> bool {
    use MessageDataItemName as N;
    match item {
        N::Flags | N::Uid | N::ModSeq | N::Binary { .. } | N::BinarySize { .. } => false,
        // Not learnt yet: the file's mtime (its metadata, not its content).
        N::InternalDate => m.internal_date().is_none(),
        N::Rfc822Size => c.size.is_none() && m.virtual_size().is_none(),
        N::Envelope => c.item(ITEM_ENVELOPE).is_none(),
        N::BodyStructure => c.item(ITEM_BODYSTRUCTURE).is_none(),
        N::Body => c.item(ITEM_BODY).is_none(),
        N::Rfc822Header => c.header.is_none(),
        N::BodyExt { section, .. } => !header_only(section) || c.header.is_none(),
        N::Rfc822 | N::Rfc822Text => true,
    }
}

/// After reading the file: everything cacheable this FETCH asks for, plus the size and the
/// header block (cheap, and what SEARCH and later FETCHes of header fields need).
fn fill_cache(c: &mut CachedMessage, items: &[MessageDataItemName<'_>], data: &[u8], root: &mime::Part) {
    use MessageDataItemName as N;
    c.size = Some(data.len() as u64);
    if c.header.is_none() {
        c.header = Some(data[root.header.clone()].into());
    }
    for item in items {
        let key = match item {
            N::Envelope => ITEM_ENVELOPE,
            N::BodyStructure => ITEM_BODYSTRUCTURE,
            N::Body => ITEM_BODY,
            _ => continue,
        };
        if c.item(key).is_some() {
            continue;
        }
        let mut out = Vec::new();
        match key {
            ITEM_ENVELOPE => mime::envelope(&mut out, &data[root.header.clone()]),
            _ => mime::body_structure(&mut out, data, root, key == ITEM_BODYSTRUCTURE),
        }
        c.items.push((key, out.into()));
    }
}

/// Append `* seq FETCH (…)` for one message: from the cache entry `c`, and from the file's
/// bytes and MIME structure when it was read (`file`: whatever `needs_file` asked for).
fn render(
    out: &mut Vec<u8>,
    items: &[MessageDataItemName<'_>],
    names: &[String],
    seq: usize,
    m: &MessageRef<'_>,
    c: &CachedMessage,
    file: Option<(&[u8], &mime::Part)>,
) {
    use std::io::Write;
    use MessageDataItemName as N;
    let _ = write!(out, "* {seq} FETCH (");
    let header: &[u8] = c.header.as_deref().unwrap_or_default();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        match item {
            N::Flags => {
                out.extend_from_slice(b"FLAGS (");
                write_flags(out, m);
                out.push(b')');
            }
            N::Uid => {
                let _ = write!(out, "UID {}", m.uid());
            }
            N::InternalDate => {
                let date = m.internal_date().unwrap_or_default();
                let _ = write!(out, "INTERNALDATE \"{}\"", internal_date(date));
            }
            N::Rfc822Size => {
                let size = m.virtual_size().or(c.size).or_else(|| file.map(|(d, _)| d.len() as u64));
                let _ = write!(out, "RFC822.SIZE {}", size.unwrap_or(0));
            }
            N::ModSeq => {
                let _ = write!(out, "MODSEQ ({})", m.modseq());
            }
            N::Envelope => {
                out.extend_from_slice(b"ENVELOPE ");
                out.extend_from_slice(&c.item(ITEM_ENVELOPE).expect("filled"));
            }
            N::Body | N::BodyStructure => {
                let ext = matches!(item, N::BodyStructure);
                out.extend_from_slice(if ext { b"BODYSTRUCTURE " } else { b"BODY " });
                let key = if ext { ITEM_BODYSTRUCTURE } else { ITEM_BODY };
                out.extend_from_slice(&c.item(key).expect("filled"));
            }
            N::Rfc822 => {
                out.extend_from_slice(b"RFC822 ");
                wire::literal(out, file.expect("read").0);
            }
            N::Rfc822Header => {
                out.extend_from_slice(b"RFC822.HEADER ");
                wire::literal(out, header);
            }
            N::Rfc822Text => {
                let (data, root) = file.expect("read");
                out.extend_from_slice(b"RFC822.TEXT ");
                wire::literal(out, &data[root.body.clone()]);
            }
            N::BodyExt { section, partial, .. } => {
                let bytes = match file {
                    _ if header_only(section) => header_section(header, section),
                    Some((data, root)) => section_bytes(data, root, section),
                    None => unreachable!("needs_file reads the file for this section"),
                };
                out.extend_from_slice(b"BODY[");
                out.extend_from_slice(names[i].as_bytes());
                out.push(b']');
                let slice: &[u8] = match partial {
                    Some((start, len)) => {
                        let _ = write!(out, "<{start}>");
                        let s = (*start as usize).min(bytes.len());
                        let e = s.saturating_add(len.get() as usize).min(bytes.len());
                        &bytes[s..e]
                    }
                    None => &bytes,
                };
                out.push(b' ');
                wire::literal(out, slice);
            }
            N::Binary { .. } | N::BinarySize { .. } => {}
        }
    }
    out.extend_from_slice(b")\r\n");
}

/// The FETCH FLAGS list (RFC 3501 §7.4.2) of a message, without a `Vec` of flags unless it
/// has keywords.
pub(super) fn write_flags(out: &mut Vec<u8>, m: &MessageRef<'_>) {
    let start = out.len();
    let sep = |out: &mut Vec<u8>| {
        if out.len() > start {
            out.push(b' ');
        }
    };
    if m.has_keywords() {
        for f in m.flags() {
            sep(out);
            out.extend_from_slice(f.as_imap().as_bytes());
        }
    } else {
        let bits = m.system_flags();
        for (f, bit) in &SYSTEM_FLAGS {
            if bits & bit != 0 {
                sep(out);
                out.extend_from_slice(f.as_imap().as_bytes());
            }
        }
    }
    if m.recent() {
        sep(out);
        out.extend_from_slice(b"\\Recent");
    }
}

/// RFC 3501 §9 date-time, in UTC.
pub(super) fn internal_date(secs: i64) -> String {
    use chrono::TimeZone;
    let t = chrono::Utc.timestamp_opt(secs, 0).single().unwrap_or_default();
    t.format("%d-%b-%Y %H:%M:%S +0000").to_string()
}

fn expand(items: MacroOrMessageDataItemNames<'_>) -> Vec<MessageDataItemName<'_>> {
    use MessageDataItemName as N;
    match items {
        MacroOrMessageDataItemNames::Macro(m) => match m {
            Macro::Fast => vec![N::Flags, N::InternalDate, N::Rfc822Size],
            Macro::All => vec![N::Flags, N::InternalDate, N::Rfc822Size, N::Envelope],
            _ => vec![N::Flags, N::InternalDate, N::Rfc822Size, N::Envelope, N::Body],
        },
        MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
    }
}

impl Conn {
    pub(super) fn fetch(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        set: &SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
    ) -> io::Result<()> {
        use MessageDataItemName as N;
        self.updates(sel, false, &BTreeSet::new())?;
        let uids = match sel.resolve(set, uid) {
            Ok(u) => u,
            Err(e) => {
                self.bad(Some(tag), &e);
                return Ok(());
            }
        };
        let mut items = expand(items);
        let mut changed_since = None;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => {
                    self.bad(Some(tag), "VANISHED needs QRESYNC, which is not enabled");
                    return Ok(());
                }
            }
        }
        if changed_since.is_some() {
            self.condstore = true;
        }
        if uid && !items.iter().any(|i| matches!(i, N::Uid)) {
            items.insert(0, N::Uid);
        }
        if (changed_since.is_some() || self.condstore) && !items.iter().any(|i| matches!(i, N::ModSeq)) {
            items.push(N::ModSeq);
        }
        if items.iter().any(|i| matches!(i, N::Binary { .. } | N::BinarySize { .. })) {
            self.bad(Some(tag), "BINARY is not supported");
            return Ok(());
        }
        let sets_seen =
            items.iter().any(|i| matches!(i, N::BodyExt { peek: false, .. } | N::Rfc822 | N::Rfc822Text));
        let mut uids = uids;
        if let Some(since) = changed_since {
            uids.retain(|u| sel.mb.message(*u).is_some_and(|m| m.modseq > since));
        }
        // RFC 3501 §6.4.5: a non-PEEK body fetch sets \Seen; the new flags go with the data.
        let mut seen_now: BTreeSet<u32> = BTreeSet::new();
        if sets_seen && !sel.read_only {
            let unseen: Vec<u32> = uids
                .iter()
                .copied()
                .filter(|u| sel.mb.message(*u).is_some_and(|m| !m.flags.contains(&Flag::Seen)))
                .collect();
            if !unseen.is_empty() {
                let r = sel.mb.store_flags(&unseen, FlagOp::Add, &[Flag::Seen], None)?;
                seen_now.extend(r.updated);
            }
        }
        if !seen_now.is_empty() && !items.iter().any(|i| matches!(i, N::Flags)) {
            items.push(N::Flags);
        }
        // Messages whose items the folder's shared cache answers (flags, sizes, the header
        // block, rendered BODYSTRUCTURE/BODY/ENVELOPE) are rendered in runs under one lock of
        // the index, straight from it; a message that needs its file stops the run, is read
        // without the lock, and rendered from what was read.
        let empty = CachedMessage::default();
        // Only items beyond the index need the cache (probing it per message is not free);
        // RFC822.SIZE comes from the file name's W= when it has one.
        let cache_items = items
            .iter()
            .any(|i| !matches!(i, N::Flags | N::Uid | N::InternalDate | N::ModSeq | N::Rfc822Size));
        let wants_size = items.iter().any(|i| matches!(i, N::Rfc822Size));
        // How each BODY[section] item is named in the response, once for all messages.
        let names: Vec<String> = items
            .iter()
            .map(|i| match i {
                N::BodyExt { section, .. } => section_name(section),
                _ => String::new(),
            })
            .collect();
        let mut out = std::mem::take(&mut self.out);
        // One message, rendered under the lock from `c` and what was read of its file.
        let render_one = |sel: &Selected,
                          out: &mut Vec<u8>,
                          u: u32,
                          c: &CachedMessage,
                          file: Option<(&[u8], &mime::Part)>| {
            sel.mb.visit(&[u], |_, m| {
                if let Some(seq) = sel.seq_of(u) {
                    render(out, &items, &names, seq, m, c, file);
                }
                ControlFlow::Continue(())
            });
        };
        let mut pos = 0;
        while pos < uids.len() {
            let end = (pos + RUN).min(uids.len());
            pos += sel.mb.visit(&uids[pos..end], |_, m| {
                let c = if cache_items || (wants_size && m.virtual_size().is_none()) {
                    m.cached().unwrap_or(&empty)
                } else {
                    &empty
                };
                if items.iter().any(|i| needs_file(i, c, m)) {
                    return ControlFlow::Break(());
                }
                if let Some(seq) = sel.seq_of(m.uid()) {
                    render(&mut out, &items, &names, seq, m, c, None);
                }
                ControlFlow::Continue(())
            });
            if pos == end {
                continue;
            }
            let u = uids[pos];
            pos += 1;
            let mut c = sel.mb.cached(u).unwrap_or_default();
            let mut raw = Vec::new();
            // Opening the file teaches the index its date (Mailbox::open_message); the
            // content is read only if something else is missing.
            let read = sel.mb.open_message(u).and_then(|mut f| {
                let mut content = false;
                sel.mb.visit(&[u], |_, m| {
                    content = items.iter().any(|i| needs_file(i, &c, m));
                    ControlFlow::Continue(())
                });
                if content {
                    f.read_to_end(&mut raw)?;
                }
                Ok(content)
            });
            match read {
                Ok(true) => {}
                Ok(false) => {
                    render_one(sel, &mut out, u, &c, None);
                    continue;
                }
                // Expunged by another session meanwhile: nothing to send for it.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.out = out;
                    return Err(e);
                }
            }
            let data = mime::crlf(raw);
            let root = mime::parse(&data);
            fill_cache(&mut c, &items, &data, &root);
            let fresh = c.clone();
            sel.mb.cache_update(u, move |e| {
                e.size = fresh.size;
                e.header = fresh.header;
                e.items = fresh.items;
            });
            render_one(sel, &mut out, u, &c, Some((&data, &root)));
        }
        self.out = out;
        self.updates(sel, false, &seen_now)?;
        self.ok(tag, if uid { "UID FETCH completed" } else { "FETCH completed" });
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn store(
        &mut self,
        sel: &mut Selected,
        tag: &str,
        set: &SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: &[WireFlag<'_>],
        uid: bool,
        modifiers: &[StoreModifier],
    ) -> io::Result<()> {
        // A malformed command is BAD whatever the mailbox (RFC 3501 §6.4.6, as Dovecot).
        let uids = match sel.resolve(set, uid) {
            Ok(u) => u,
            Err(e) => {
                self.bad(Some(tag), &e);
                return Ok(());
            }
        };
        if sel.read_only {
            self.no(tag, "[READ-ONLY] Mailbox is read-only");
            return Ok(());
        }
        let mut parsed = Vec::new();
        for f in flags {
            let s = f.to_string();
            match Flag::parse(&s) {
                Some(f) => parsed.push(f),
                None => {
                    self.bad(Some(tag), &format!("Flag {} cannot be stored", wire::text(&s)));
                    return Ok(());
                }
            }
        }
        let op = match kind {
            StoreType::Replace => FlagOp::Replace,
            StoreType::Add => FlagOp::Add,
            StoreType::Remove => FlagOp::Remove,
        };
        let unchanged_since = modifiers.iter().map(|StoreModifier::UnchangedSince(n)| *n).next();
        if unchanged_since.is_some() {
            self.condstore = true;
        }
        let condstore = self.condstore;
        let r = match sel.mb.store_flags(&uids, op, &parsed, unchanged_since) {
            Ok(r) => r,
            Err(e) => {
                self.no(tag, &io_no(&e));
                return Ok(());
            }
        };
        let mut lines = sel.new_keywords(&parsed);
        let modified: BTreeSet<u32> = r.modified.iter().copied().collect();
        let silent = matches!(response, StoreResponse::Silent);
        for &u in &uids {
            if modified.contains(&u) {
                continue;
            }
            // RFC 3501 §6.4.6: the updated values; a message whose flags this STORE did
            // not change has none to report (as Dovecot answers).
            if !r.updated.contains(&u) {
                continue;
            }
            let (Some(m), Some(seq)) = (sel.mb.message(u), sel.seq_of(u)) else { continue };
            // RFC 7162 §3.2: with CONDSTORE the new MODSEQ is sent even for .SILENT.
            if silent && !condstore {
                continue;
            }
            let mut items = Vec::new();
            if uid {
                items.push(format!("UID {u}"));
            }
            if !silent {
                items.push(format!("FLAGS ({})", flags_for(&m)));
            }
            if condstore {
                items.push(format!("MODSEQ ({})", m.modseq));
            }
            lines.push(format!("* {seq} FETCH ({})", items.join(" ")));
        }
        for l in lines {
            self.line(&l);
        }
        let quiet: BTreeSet<u32> = uids.iter().copied().collect();
        self.updates(sel, false, &quiet)?;
        if modified.is_empty() {
            self.ok(tag, "STORE completed");
        } else {
            // RFC 7162 §3.1.3: MODIFIED lists what was not stored (UIDs for UID STORE).
            let list: Vec<u32> = if uid {
                modified.iter().copied().collect()
            } else {
                modified.iter().filter_map(|u| sel.seq_of(*u).map(|s| s as u32)).collect()
            };
            self.ok(tag, &format!("[MODIFIED {}] Conditional STORE failed", compact(&list)));
        }
        Ok(())
    }
}
