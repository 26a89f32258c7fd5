//! The connection half of an IMAP session: the stream, command framing (lines and
//! literals, RFC 3501 §4.3, RFC 7888), the replies not yet written, and the untagged
//! updates of the selected mailbox (RFC 3501 §7). The command handlers (`mailbox`,
//! `fetch`, `search`) are methods of [`Conn`] that take the state their command needs;
//! nothing here calls them (the dispatch in `session` does).

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::list::ListOptions;
use super::state::{Selected, Selection};
use super::wire::flag_list;
use super::Context;
use crate::net::{blocking, Stream};
use crate::store::Flag;

/// Longest command line (without literals) we buffer; RFC 7162 §4 asks for at least 8192.
pub(super) const MAX_LINE: usize = 64 * 1024;

/// Largest literal accepted before login (`imap.max_literal_size` applies after it). Before
/// authentication a client is anyone: a 50 MiB literal it announces and then stalls would be
/// held until the idle timeout, twenty such connections cost a gigabyte, and nothing a
/// client legitimately sends before login needs more than a few hundred bytes — LOGIN's
/// user name and password, ID's field values (at most 1024 octets each, RFC 2971 §3.3);
/// AUTHENTICATE's responses come as lines, not literals (RFC 3501 §6.2.2). 8 KiB is eight
/// times the largest of those, and with the line limit a whole command before login stays
/// under MAX_LINE + 8 KiB per literal, MAX_LINE + PREAUTH_MAX_LITERAL in all.
pub(super) const PREAUTH_MAX_LITERAL: u64 = 8 * 1024;

pub(super) enum Flow {
    Continue,
    Close,
}

pub(super) enum Framed {
    Command(Vec<u8>),
    /// Answered already (a literal over the limit); read the next one.
    Rejected,
    Eof,
    Timeout,
    /// Answered with BYE already (a literal we will not read): close the connection.
    Close,
}

/// The connection half of a session: the stream, the replies not yet written, and what
/// holds for the whole connection whatever its state.
pub(super) struct Conn {
    pub ctx: Arc<Context>,
    pub reader: BufReader<Box<dyn Stream>>,
    pub out: Vec<u8>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub id: String,
    /// CONDSTORE is on (RFC 7162 §3.1: by ENABLE or the first command that uses it).
    pub condstore: bool,
    /// The RFC 5258 options of the LIST being run (taken off its line before parsing).
    pub list_opts: ListOptions,
    pub errors: usize,
    pub auth_failures: usize,
}

impl Conn {
    /// `tls` is true when the stream is already encrypted (port 993).
    pub(super) fn new(ctx: Arc<Context>, stream: Box<dyn Stream>, peer: SocketAddr, tls: bool) -> Conn {
        Conn {
            ctx,
            reader: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::with_capacity(4096),
            peer,
            tls,
            id: format!("{:016x}", rand::random::<u64>()),
            condstore: false,
            list_opts: Default::default(),
            errors: 0,
            auth_failures: 0,
        }
    }

    pub(super) fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    pub(super) async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let w = self.reader.get_mut();
            w.write_all(&self.out).await?;
            w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    pub(super) fn bad(&mut self, tag: Option<&str>, text: &str) {
        self.errors += 1;
        self.line(&format!("{} BAD {text}", tag.unwrap_or("*")));
    }

    /// Read one line (with CRLF) of at most `max` bytes; Ok(None) = EOF, Err(TooLong)…
    pub(super) async fn read_line(&mut self, max: usize) -> io::Result<Option<(Vec<u8>, bool)>> {
        let mut line = Vec::new();
        let mut too_long = false;
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                return Ok(None);
            }
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..=i], true),
                None => (buf, false),
            };
            let n = chunk.len();
            if line.len() + n <= max {
                line.extend_from_slice(chunk);
            } else {
                too_long = true;
            }
            self.reader.consume(n);
            if done {
                return Ok(Some((line, too_long)));
            }
        }
    }

    /// One command: its line and every literal it announces (RFC 3501 §4.3, RFC 7888).
    /// `authenticated`: whether the client has logged in; before, literals are limited to
    /// [`PREAUTH_MAX_LITERAL`] and LOGIN's are refused unread without TLS.
    pub(super) async fn read_command(&mut self, authenticated: bool) -> io::Result<Framed> {
        let timeout = self.ctx.config.imap.idle_timeout;
        let (max_literal, max_command) = if authenticated {
            (self.ctx.config.imap.max_literal_size, self.ctx.config.imap.max_literal_size + MAX_LINE as u64)
        } else {
            (PREAUTH_MAX_LITERAL, PREAUTH_MAX_LITERAL + MAX_LINE as u64)
        };
        let mut raw = Vec::new();
        loop {
            let line = match tokio::time::timeout(timeout, self.read_line(MAX_LINE)).await {
                Err(_) => return Ok(Framed::Timeout),
                Ok(r) => r?,
            };
            let Some((line, too_long)) = line else { return Ok(Framed::Eof) };
            if too_long {
                let tag = tag_of(if raw.is_empty() { &line } else { &raw });
                self.bad(tag.as_deref(), "Command line too long");
                return Ok(Framed::Rejected);
            }
            raw.extend_from_slice(&line);
            let Some((size, sync)) = literal_announcement(&line) else {
                return Ok(Framed::Command(raw));
            };
            if !authenticated
                && !self.tls
                && command_name(&raw).is_some_and(|c| c.eq_ignore_ascii_case(b"LOGIN"))
            {
                // LOGIN is refused before STARTTLS whatever it carries (RFC 3501 §6.2.3,
                // RFC 8314): its literals — the password — are not even read.
                let tag = tag_of(&raw);
                self.errors += 1;
                if sync {
                    // The client waits for "+", which never comes: it sends nothing more.
                    self.no(
                        tag.as_deref().unwrap_or("*"),
                        "[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS",
                    );
                    return Ok(Framed::Rejected);
                }
                // RFC 7888 §4: a non-synchronizing literal the server will not take leaves
                // no way to find where the command ends but reading it: close instead.
                self.line("* BYE LOGIN is disabled before STARTTLS");
                return Ok(Framed::Close);
            }
            // One command's literals together stay within the limit too.
            if size > max_literal || raw.len() as u64 + size > max_command {
                if !authenticated {
                    // Before login nothing large is read, not even to skip it (a client that
                    // has proved nothing could make us read gigabytes): a synchronizing
                    // literal is refused before the client sends it; for a
                    // non-synchronizing one (RFC 7888 §4) the connection is closed, as
                    // Dovecot does with the same words.
                    if sync {
                        let tag = tag_of(&raw);
                        self.errors += 1;
                        self.no(
                            tag.as_deref().unwrap_or("*"),
                            "[TOOBIG] Literal size too large before login",
                        );
                        return Ok(Framed::Rejected);
                    }
                    self.line("* BYE Literal size too large");
                    return Ok(Framed::Close);
                }
                let tag = tag_of(&raw);
                if sync {
                    // The client waits for "+": it will not send the literal.
                    self.line(&format!("{} NO [TOOBIG] Literal too large", tag.as_deref().unwrap_or("*")));
                    self.errors += 1;
                    return Ok(Framed::Rejected);
                }
                // LITERAL+ (RFC 7888 §4): the bytes come anyway; skip them and the rest of
                // the command, then refuse.
                let mut left = size;
                while left > 0 {
                    let buf = self.reader.fill_buf().await?;
                    if buf.is_empty() {
                        return Ok(Framed::Eof);
                    }
                    let n = buf.len().min(left as usize);
                    self.reader.consume(n);
                    left -= n as u64;
                }
                match self.read_line(MAX_LINE).await? {
                    None => return Ok(Framed::Eof),
                    Some((l, _)) if literal_announcement(&l).is_none() => {}
                    Some(_) => {
                        // Yet another literal: we cannot tell where this command ends.
                        self.line("* BYE Literal too large");
                        return Ok(Framed::Eof);
                    }
                }
                self.line(&format!("{} NO [TOOBIG] Literal too large", tag.as_deref().unwrap_or("*")));
                self.errors += 1;
                return Ok(Framed::Rejected);
            }
            if sync {
                self.line("+ Ready for literal data");
                self.flush().await?;
            }
            // Memory grows with the bytes that really arrive, not with the announcement.
            let start = raw.len();
            let mut take = (&mut self.reader).take(size);
            match tokio::time::timeout(timeout, take.read_to_end(&mut raw)).await {
                Err(_) => return Ok(Framed::Timeout),
                Ok(r) => {
                    r?;
                }
            }
            if ((raw.len() - start) as u64) < size {
                return Ok(Framed::Eof);
            }
        }
    }

    pub(super) fn ok(&mut self, tag: &str, text: &str) {
        self.line(&format!("{tag} OK {text}"));
    }

    pub(super) fn no(&mut self, tag: &str, text: &str) {
        self.line(&format!("{tag} NO {text}"));
    }

    pub(super) fn enable(&mut self, tag: &str, caps: Vec1<CapabilityEnable<'_>>) {
        let mut enabled = Vec::new();
        for c in caps.as_ref() {
            if let CapabilityEnable::CondStore = c {
                self.condstore = true;
                enabled.push("CONDSTORE");
            }
        }
        // RFC 5161 §3.2: ENABLED lists what this command enabled; nothing, no line.
        if !enabled.is_empty() {
            self.line(&format!("* ENABLED {}", enabled.join(" ")));
        }
        self.ok(tag, "ENABLE completed");
    }

    /// Bring the selected mailbox up to date and tell the client (RFC 3501 §7: EXPUNGE,
    /// EXISTS, RECENT, FETCH FLAGS). `allow_expunge` is false during FETCH, STORE and SEARCH
    /// (§7.4.1); `quiet` lists UIDs whose flag changes the caller reports itself. Blocking
    /// (it may read the folder): callers run it off the async worker threads.
    pub(super) fn updates(
        &mut self,
        sel: &mut Selected,
        allow_expunge: bool,
        quiet: &BTreeSet<u32>,
    ) -> io::Result<()> {
        let condstore = self.condstore;
        let ch = match sel.mb.sync() {
            Ok(ch) => ch,
            Err(e) if !sel.mb.exists() => {
                // Another session (or program) deleted the selected mailbox: nothing the
                // client holds is valid any more, and there is no state to go on with.
                self.line("* BYE Selected mailbox was deleted, have to disconnect.");
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let mut lines: Vec<String> = Vec::new();
        if ch.uidvalidity_changed {
            // RFC 3501 §2.3.1.1: every UID the client holds is void; the session ends.
            self.line("* BYE Mailbox UIDVALIDITY changed; please reconnect");
            return Err(io::Error::other("UIDVALIDITY changed"));
        }
        for uid in &ch.expunged {
            if sel.uids.binary_search(uid).is_ok() {
                sel.pending_expunge.insert(*uid);
            }
        }
        if ch.resync {
            // The store no longer lists every expunge since our last look: compare the view.
            let present = sel.mb.with_messages(&sel.uids, |_| ());
            for (uid, p) in sel.uids.iter().zip(present) {
                if p.is_none() {
                    sel.pending_expunge.insert(*uid);
                }
            }
        }
        let expunged_now = allow_expunge && !sel.pending_expunge.is_empty();
        if expunged_now {
            // Highest first: each EXPUNGE renumbers only the messages after it.
            for uid in std::mem::take(&mut sel.pending_expunge).into_iter().rev() {
                if let Ok(i) = sel.uids.binary_search(&uid) {
                    sel.uids.remove(i);
                    lines.push(format!("* {} EXPUNGE", i + 1));
                }
            }
        }
        // New messages always get UIDs above every one the client knows (RFC 3501 §2.3.1.1).
        let last = sel.uids.last().copied().unwrap_or(0);
        let mut added = false;
        for &uid in &ch.added {
            if uid > last && sel.mb.message(uid).is_some() {
                sel.uids.push(uid);
                added = true;
            }
        }
        if added {
            lines.push(format!("* {} EXISTS", sel.uids.len()));
        }
        if added || expunged_now {
            // RFC 3501 §7.3.2: RECENT when the count changes with the mailbox's size; after
            // expunges alone the client lowers it itself (§7.4.1).
            let recent = sel.uids.iter().filter(|u| sel.mb.is_recent(**u)).count();
            if added && recent != sel.recent_reported {
                lines.push(format!("* {recent} RECENT"));
            }
            sel.recent_reported = recent;
        }
        let touched: Vec<Flag> = ch
            .changed
            .iter()
            .chain(&ch.added)
            .filter_map(|u| sel.mb.message(*u))
            .flat_map(|m| m.flags)
            .filter(|f| matches!(f, Flag::Keyword(_)))
            .collect();
        lines.extend(sel.new_keywords(&touched));
        for uid in &ch.changed {
            if quiet.contains(uid) || ch.added.contains(uid) {
                continue;
            }
            let (Some(seq), Some(m)) = (sel.seq_of(*uid), sel.mb.message(*uid)) else { continue };
            let modseq = if condstore { format!(" MODSEQ ({})", m.modseq) } else { String::new() };
            lines
                .push(format!("* {seq} FETCH (UID {uid} FLAGS ({}){modseq})", flag_list(&m.flags, m.recent)));
        }
        for l in lines {
            self.line(&l);
        }
        Ok(())
    }

    /// IDLE (RFC 2177): push changes every 500 ms until DONE. Allowed in the authenticated
    /// state too; then there is nothing to push.
    pub(super) async fn idle(&mut self, tag: &str, mailbox: &mut Selection) -> io::Result<Flow> {
        self.line("+ idling");
        if let Selection::Selected(sel) = mailbox {
            blocking(|| self.updates(sel, true, &BTreeSet::new()))?;
        }
        self.flush().await?;
        let deadline = tokio::time::Instant::now() + self.ctx.config.imap.idle_timeout;
        loop {
            let ready = tokio::select! {
                r = self.reader.fill_buf() => Some(r.map(|b| b.is_empty())),
                _ = tokio::time::sleep(Duration::from_millis(500)) => None,
            };
            match ready {
                Some(Err(e)) => return Err(e),
                Some(Ok(true)) => return Ok(Flow::Close),
                Some(Ok(false)) => break,
                None => {
                    if tokio::time::Instant::now() >= deadline {
                        self.line("* BYE Autologout; idle for too long");
                        return Ok(Flow::Close);
                    }
                    if let Selection::Selected(sel) = mailbox {
                        blocking(|| self.updates(sel, true, &BTreeSet::new()))?;
                    }
                    self.flush().await?;
                }
            }
        }
        let Some((line, _)) = self.read_line(MAX_LINE).await? else { return Ok(Flow::Close) };
        if line.trim_ascii().eq_ignore_ascii_case(b"DONE") {
            self.ok(tag, "IDLE terminated");
        } else {
            self.bad(Some(tag), "Expected DONE");
        }
        Ok(Flow::Continue)
    }
}

/// `{n}` or `{n+}` at the end of a line (RFC 3501 §4.3, RFC 7888): (n, synchronising).
fn literal_announcement(line: &[u8]) -> Option<(u64, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let mut digits = &inner[open + 1..];
    let sync = match digits.strip_suffix(b"+") {
        Some(d) => {
            digits = d;
            false
        }
        None => true,
    };
    // Binary literals ~{n} (RFC 3516) are framed the same way.
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok().map(|n| (n, sync))
}

/// The command name of a command line (the word after the tag), if there is one.
fn command_name(raw: &[u8]) -> Option<&[u8]> {
    let mut words = raw.split(|&b| b == b' ' || b == b'\r' || b == b'\n');
    words.next()?;
    words.next().filter(|w| !w.is_empty())
}

/// The tag of a command line, if it looks like one (RFC 3501 §9 `tag`).
pub(super) fn tag_of(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|&b| b == b' ' || b == b'\r' || b == b'\n').unwrap_or(raw.len());
    let tag = &raw[..end];
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag.iter().all(|&b| (0x21..0x7f).contains(&b) && !b"(){%*\"\\+".contains(&b));
    ok.then(|| String::from_utf8_lossy(tag).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_helpers() {
        assert_eq!(literal_announcement(b"a APPEND x {12}\r\n"), Some((12, true)));
        assert_eq!(literal_announcement(b"a APPEND x {12+}\r\n"), Some((12, false)));
        assert_eq!(literal_announcement(b"a APPEND x {}\r\n"), None);
        assert_eq!(literal_announcement(b"a LOGIN x y\r\n"), None);
        assert_eq!(tag_of(b"a1 FOO\r\n").as_deref(), Some("a1"));
        assert_eq!(tag_of(b"+ x\r\n"), None);
        assert_eq!(tag_of(b"\r\n"), None);
        assert_eq!(command_name(b"a1 login {5}\r\n"), Some(&b"login"[..]));
        assert_eq!(command_name(b"a1\r\n"), None);
    }
}
