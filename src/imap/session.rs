//! One IMAP connection, generic over its stream so tests can drive it in memory.
//!
//! The loop frames one command (line + literals), parses it with imap-codec, checks the
//! state (RFC 3501 §3), runs it, and writes untagged updates of the selected mailbox where
//! RFC 3501 §7 allows them (EXPUNGE never during FETCH/STORE/SEARCH, §7.4.1).

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::enable::CapabilityEnable;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::CommandCodec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{debug, info, warn};

use super::Context;
use crate::address::Address;
use crate::net::Stream;
use crate::sasl::{decode_b64, parse_plain, sanitize};
use crate::store::{Flag, Mailbox};

/// Longest command line (without literals) we buffer; RFC 7162 §4 asks for at least 8192.
const MAX_LINE: usize = 64 * 1024;
/// Protocol errors in a row before we hang up.
const MAX_ERRORS: usize = 20;
/// Failed logins in one connection before we hang up (the guard bans repeat offenders).
const MAX_AUTH_FAILURES: usize = 3;

/// What this server does, for CAPABILITY (RFC 3501 §6.1.1). Only what works is listed.
const CAPS_COMMON: &str = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE";
const CAPS_AUTHED: &str =
    "NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN SPECIAL-USE CONDSTORE QUOTA QUOTA=RES-STORAGE";

pub(super) enum Flow {
    Continue,
    Close,
}

enum Framed {
    Command(Vec<u8>),
    /// Answered already (a literal over the limit); read the next one.
    Rejected,
    Eof,
    Timeout,
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
            super::mailbox::flags_lines(&self.keywords, self.read_only)
        } else {
            Vec::new()
        }
    }
}

impl Selected {
    pub fn seq_of(&self, uid: u32) -> Option<usize> {
        self.uids.binary_search(&uid).ok().map(|i| i + 1)
    }
}

pub struct Session {
    pub(super) ctx: Arc<Context>,
    reader: BufReader<Box<dyn Stream>>,
    pub(super) out: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
    id: String,
    pub(super) user: Option<Address>,
    pub(super) quota: u64,
    pub(super) selected: Option<Selected>,
    pub(super) condstore: bool,
    pub(super) list_opts: super::mailbox::ListOptions,
    errors: usize,
    auth_failures: usize,
}

pub(super) fn io_no(e: &io::Error) -> String {
    super::wire::text(&e.to_string())
}

impl Session {
    /// Count a failed login with the guard; when it bans the client, end the session at
    /// once (the next check of `auth_failures` says BYE).
    fn guard_auth_failure(&mut self) {
        if self
            .ctx
            .guard
            .record(self.peer.ip(), crate::guard::Event::AuthFailure { protocol: "imap" })
            .is_banned()
        {
            self.auth_failures = self.auth_failures.max(MAX_AUTH_FAILURES);
        }
    }

    /// `tls` is true when the stream is already encrypted (port 993).
    pub fn new(ctx: Arc<Context>, stream: Box<dyn Stream>, peer: SocketAddr, tls: bool) -> Session {
        Session {
            ctx,
            reader: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::with_capacity(4096),
            peer,
            tls,
            id: format!("{:016x}", rand::random::<u64>()),
            user: None,
            quota: 0,
            selected: None,
            condstore: false,
            list_opts: Default::default(),
            errors: 0,
            auth_failures: 0,
        }
    }

    fn capabilities(&self) -> String {
        let mut caps = CAPS_COMMON.to_owned();
        if self.user.is_some() {
            caps.push(' ');
            caps.push_str(CAPS_AUTHED);
        } else if self.tls {
            caps.push_str(" AUTH=PLAIN");
        } else {
            // RFC 3501 §6.2.3 / RFC 8314: no passwords in clear text.
            if self.ctx.tls.is_some() {
                caps.push_str(" STARTTLS");
            }
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    pub async fn run(mut self) {
        let caps = self.capabilities();
        self.line(&format!(
            "* OK [CAPABILITY {caps}] {} IMAP4rev1 posthaste ready",
            self.ctx.config.hostname
        ));
        if let Err(e) = self.run_loop().await {
            debug!(session = %self.id, client = %self.peer.ip(), error = %e, "imap session ended with I/O error");
        }
        let _ = self.flush().await;
        let _ = self.reader.get_mut().shutdown().await;
    }

    pub(super) fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let w = self.reader.get_mut();
            w.write_all(&self.out).await?;
            w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn run_loop(&mut self) -> io::Result<()> {
        loop {
            if self.reader.buffer().is_empty() {
                self.flush().await?;
            }
            let raw = match self.read_command().await? {
                Framed::Command(raw) => raw,
                Framed::Rejected => continue,
                Framed::Eof => return Ok(()),
                Framed::Timeout => {
                    // RFC 3501 §5.4: the autologout timer.
                    self.line("* BYE Autologout; idle for too long");
                    return Ok(());
                }
            };
            // LIST with RFC 5258 selection/return options, which imap-codec does not parse:
            // the subset clients use (RFC 6154 §5.1 `LIST (SPECIAL-USE) "" "*"`) is taken
            // off here and the rest parsed as a plain LIST.
            let (raw, list_opts) = match super::mailbox::split_list_options(&raw) {
                Some((plain, opts)) => (plain, opts),
                None => (raw, super::mailbox::ListOptions::default()),
            };
            self.list_opts = list_opts;
            let flow = match CommandCodec::default().decode(&raw) {
                Ok((_, cmd)) => {
                    self.errors = 0;
                    self.dispatch(cmd).await?
                }
                Err(_) => {
                    let tag = tag_of(&raw);
                    self.bad(tag.as_deref(), "Syntax error in command");
                    Flow::Continue
                }
            };
            if let Flow::Close = flow {
                return Ok(());
            }
            if self.auth_failures >= MAX_AUTH_FAILURES {
                self.line("* BYE Too many authentication failures");
                return Ok(());
            }
            if self.errors >= MAX_ERRORS {
                self.line("* BYE Too many errors");
                return Ok(());
            }
        }
    }

    pub(super) fn bad(&mut self, tag: Option<&str>, text: &str) {
        self.errors += 1;
        self.line(&format!("{} BAD {text}", tag.unwrap_or("*")));
    }

    /// Read one line (with CRLF) of at most `max` bytes; Ok(None) = EOF, Err(TooLong)…
    async fn read_line(&mut self, max: usize) -> io::Result<Option<(Vec<u8>, bool)>> {
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
    async fn read_command(&mut self) -> io::Result<Framed> {
        let timeout = self.ctx.config.imap.idle_timeout;
        let max_literal = self.ctx.config.imap.max_literal_size;
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
            // One command's literals together stay within the limit too.
            if size > max_literal || raw.len() as u64 + size > max_literal + MAX_LINE as u64 {
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

    fn require_auth(&mut self, tag: &str) -> bool {
        if self.user.is_none() {
            self.bad(Some(tag), "Log in first");
            return false;
        }
        true
    }

    fn require_selected(&mut self, tag: &str) -> bool {
        if self.selected.is_none() {
            self.bad(Some(tag), "No mailbox selected");
            return false;
        }
        true
    }

    async fn dispatch(&mut self, cmd: Command<'_>) -> io::Result<Flow> {
        let tag = cmd.tag.as_ref().to_owned();
        let tag = tag.as_str();
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.line(&format!("* CAPABILITY {caps}"));
                self.ok(tag, "CAPABILITY completed");
            }
            CommandBody::Noop => {
                if self.selected.is_some() {
                    self.updates(true, &BTreeSet::new())?;
                }
                self.ok(tag, "NOOP completed");
            }
            CommandBody::Logout => {
                self.line("* BYE Logging out");
                self.ok(tag, "LOGOUT completed");
                return Ok(Flow::Close);
            }
            CommandBody::StartTLS => return self.starttls(tag).await,
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                if self.user.is_some() {
                    self.bad(Some(tag), "Already logged in");
                } else if !self.tls {
                    self.no(tag, "[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS");
                } else {
                    self.login(tag, &user, &pass).await;
                }
            }
            CommandBody::Authenticate { mechanism, initial_response } => {
                let ir = initial_response.map(|r| r.declassify().to_vec());
                self.authenticate(tag, &mechanism, ir).await?;
            }
            CommandBody::Id { .. } => {
                // RFC 2971: any state.
                self.line(&format!(
                    "* ID (\"name\" \"posthaste\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                self.ok(tag, "ID completed");
            }
            CommandBody::Enable { capabilities } => {
                if self.require_auth(tag) {
                    self.enable(tag, capabilities);
                }
            }
            CommandBody::Namespace => {
                if self.require_auth(tag) {
                    // RFC 2342: one personal namespace, no others.
                    self.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                    self.ok(tag, "NAMESPACE completed");
                }
            }
            body => {
                if !self.require_auth(tag) {
                    return Ok(Flow::Continue);
                }
                return self.dispatch_authed(tag, body).await;
            }
        }
        Ok(Flow::Continue)
    }

    async fn dispatch_authed(&mut self, tag: &str, body: CommandBody<'_>) -> io::Result<Flow> {
        if let CommandBody::Idle = body {
            return self.idle(tag).await;
        }
        // Everything else works on the file system: keep it off the async worker threads.
        blocking(|| self.dispatch_fs(tag, body))?;
        Ok(Flow::Continue)
    }

    fn dispatch_fs(&mut self, tag: &str, body: CommandBody<'_>) -> io::Result<()> {
        match body {
            CommandBody::Select { mailbox, parameters } => {
                let condstore = !parameters.is_empty();
                self.select(tag, &mailbox, false, condstore)?
            }
            CommandBody::Examine { mailbox, parameters } => {
                let condstore = !parameters.is_empty();
                self.select(tag, &mailbox, true, condstore)?
            }
            CommandBody::Create { mailbox } => self.create(tag, &mailbox),
            CommandBody::Delete { mailbox } => self.delete(tag, &mailbox),
            CommandBody::Rename { from, to } => self.rename(tag, &from, &to),
            CommandBody::Subscribe { mailbox } => self.subscribe(tag, &mailbox, true),
            CommandBody::Unsubscribe { mailbox } => self.subscribe(tag, &mailbox, false),
            CommandBody::List { reference, mailbox_wildcard } => {
                self.list(tag, &reference, &list_pattern(&mailbox_wildcard), false)
            }
            CommandBody::Lsub { reference, mailbox_wildcard } => {
                self.list(tag, &reference, &list_pattern(&mailbox_wildcard), true)
            }
            CommandBody::Status { mailbox, item_names } => self.status(tag, &mailbox, &item_names),
            CommandBody::Append { mailbox, flags, date, message } => {
                let data: &[u8] = match &message {
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => l.as_ref(),
                    imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => {
                        l.data.as_ref()
                    }
                };
                let data = data.to_vec();
                self.append(tag, &mailbox, &flags, date.as_ref().map(|d| *d.as_ref()), &data)?
            }
            CommandBody::GetQuota { root } => {
                let root = String::from_utf8_lossy(root.as_ref()).into_owned();
                self.get_quota(tag, &root)
            }
            CommandBody::GetQuotaRoot { mailbox } => self.get_quota_root(tag, &mailbox),
            CommandBody::SetQuota { .. } => self.no(tag, "[NOPERM] Quotas are set by the administrator"),
            body => {
                if !self.require_selected(tag) {
                    return Ok(());
                }
                self.dispatch_selected(tag, body)?;
            }
        }
        Ok(())
    }

    fn dispatch_selected(&mut self, tag: &str, body: CommandBody<'_>) -> io::Result<()> {
        match body {
            CommandBody::Check => {
                self.updates(true, &BTreeSet::new())?;
                self.ok(tag, "CHECK completed");
            }
            CommandBody::Close => {
                // RFC 3501 §6.4.2: expunge silently, unless read-only.
                let sel = self.selected.take().expect("selected");
                let mut mb = sel.mb;
                if !sel.read_only {
                    if let Err(e) = mb.expunge_deleted() {
                        warn!(session = %self.id, error = %e, "imap: CLOSE expunge failed");
                    }
                }
                self.ok(tag, "CLOSE completed");
            }
            CommandBody::Unselect => {
                self.selected = None;
                self.ok(tag, "UNSELECT completed");
            }
            CommandBody::Expunge => self.expunge(tag, None)?,
            CommandBody::ExpungeUid { sequence_set } => self.expunge(tag, Some(&sequence_set))?,
            CommandBody::Fetch { sequence_set, macro_or_item_names, uid, modifiers } => {
                self.fetch(tag, &sequence_set, macro_or_item_names, uid, &modifiers)?
            }
            CommandBody::Store { sequence_set, kind, response, flags, uid, modifiers } => {
                self.store(tag, &sequence_set, kind, response, &flags, uid, &modifiers)?
            }
            CommandBody::Copy { sequence_set, mailbox, uid } => {
                self.copy_move(tag, &sequence_set, &mailbox, uid, false)?
            }
            CommandBody::Move { sequence_set, mailbox, uid } => {
                self.copy_move(tag, &sequence_set, &mailbox, uid, true)?
            }
            CommandBody::Search { charset, criteria, uid } => {
                let charset = charset.map(|c| c.as_ref().to_owned());
                self.search(tag, charset.as_deref(), &criteria, uid)?
            }
            _ => self.bad(Some(tag), "Command not supported"),
        }
        Ok(())
    }

    pub(super) fn ok(&mut self, tag: &str, text: &str) {
        self.line(&format!("{tag} OK {text}"));
    }

    pub(super) fn no(&mut self, tag: &str, text: &str) {
        self.line(&format!("{tag} NO {text}"));
    }

    async fn starttls(&mut self, tag: &str) -> io::Result<Flow> {
        let Some(acceptor) = self.ctx.tls.clone() else {
            self.bad(Some(tag), "STARTTLS not available");
            return Ok(Flow::Continue);
        };
        if self.tls {
            self.bad(Some(tag), "Already using TLS");
            return Ok(Flow::Continue);
        }
        if self.user.is_some() {
            self.bad(Some(tag), "STARTTLS only before login");
            return Ok(Flow::Continue);
        }
        self.ok(tag, "Begin TLS negotiation now");
        self.flush().await?;
        // Anything pipelined after STARTTLS arrived in clear text and is discarded, never
        // executed inside TLS (RFC 3501 §6.2.1, the command-injection attack CVE-2011-0411).
        if !self.reader.buffer().is_empty() {
            warn!(session = %self.id, client = %self.peer.ip(), "imap: data pipelined after STARTTLS discarded");
        }
        if !crate::net::upgrade_to_tls(&mut self.reader, &acceptor, self.peer, "imap").await {
            return Ok(Flow::Close);
        }
        self.tls = true;
        Ok(Flow::Continue)
    }

    async fn login(&mut self, tag: &str, user: &str, pass: &str) {
        match self.ctx.directory.authenticate(user, pass).await {
            Ok(Some(account)) => {
                let Ok(address) = Address::parse(&account.address) else {
                    self.no(tag, "[UNAVAILABLE] Account address is invalid");
                    return;
                };
                if let Err(e) = self.ctx.store.create_account(&address) {
                    warn!(session = %self.id, error = %e, "imap: cannot create the account's mailboxes");
                    self.no(tag, "[UNAVAILABLE] Mail storage is unavailable");
                    return;
                }
                info!(session = %self.id, client = %self.peer.ip(), protocol = "imap", user = %address, "login");
                self.user = Some(address);
                self.quota = account.quota;
                let caps = self.capabilities();
                self.ok(tag, &format!("[CAPABILITY {caps}] Logged in"));
            }
            Ok(None) => {
                // One structured line per failure: the guard counts these per client IP.
                warn!(event = "auth_failure", session = %self.id, client = %self.peer.ip(), protocol = "imap",
                      user = %sanitize(user), "authentication failed");
                // Slow down guessing a little.
                tokio::time::sleep(Duration::from_millis(300)).await;
                self.auth_failures += 1;
                self.guard_auth_failure();
                self.no(tag, "[AUTHENTICATIONFAILED] Invalid credentials");
            }
            Err(e) => {
                warn!(session = %self.id, error = %e, "imap: directory error during login");
                self.no(tag, "[UNAVAILABLE] Temporary authentication failure");
            }
        }
    }

    async fn authenticate(
        &mut self,
        tag: &str,
        mech: &AuthMechanism<'_>,
        ir: Option<Vec<u8>>,
    ) -> io::Result<()> {
        if self.user.is_some() {
            self.bad(Some(tag), "Already logged in");
            return Ok(());
        }
        if !self.tls {
            self.no(tag, "[PRIVACYREQUIRED] Authentication is disabled before STARTTLS");
            return Ok(());
        }
        if !matches!(mech, AuthMechanism::Plain) {
            self.no(tag, "[CANNOT] Unsupported mechanism; use PLAIN");
            return Ok(());
        }
        let raw = match ir {
            Some(ir) => ir,
            None => {
                // RFC 3501 §6.2.2: an empty challenge, one base64 line back ("*" cancels).
                self.line("+ ");
                self.flush().await?;
                let timeout = self.ctx.config.imap.idle_timeout;
                let line = match tokio::time::timeout(timeout, self.read_line(MAX_LINE)).await {
                    Err(_) => return Ok(()),
                    Ok(r) => r?,
                };
                let Some((line, too_long)) = line else { return Ok(()) };
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if too_long {
                    self.bad(Some(tag), "Response too long");
                    return Ok(());
                }
                if text == "*" {
                    self.bad(Some(tag), "Authentication cancelled");
                    return Ok(());
                }
                match decode_b64(&text) {
                    Some(raw) => raw,
                    None => {
                        self.bad(Some(tag), "Invalid base64");
                        return Ok(());
                    }
                }
            }
        };
        match parse_plain(&raw) {
            Some((user, pass)) => self.login(tag, &user, &pass).await,
            None => {
                warn!(event = "auth_failure", session = %self.id, client = %self.peer.ip(), protocol = "imap",
                      user = "", "malformed AUTHENTICATE PLAIN");
                self.auth_failures += 1;
                self.guard_auth_failure();
                self.no(tag, "[AUTHENTICATIONFAILED] Malformed PLAIN response");
            }
        }
        Ok(())
    }

    fn enable(&mut self, tag: &str, caps: Vec1<CapabilityEnable<'_>>) {
        let mut enabled = Vec::new();
        for c in caps.as_ref() {
            if let CapabilityEnable::CondStore = c {
                self.condstore = true;
                enabled.push("CONDSTORE");
            }
        }
        self.line(format!("* ENABLED {}", enabled.join(" ")).trim_end());
        self.ok(tag, "ENABLE completed");
    }

    /// Bring the selected mailbox up to date and tell the client (RFC 3501 §7: EXPUNGE,
    /// EXISTS, RECENT, FETCH FLAGS). `allow_expunge` is false during FETCH, STORE and SEARCH
    /// (§7.4.1); `quiet` lists UIDs whose flag changes the caller reports itself.
    pub(super) fn updates(&mut self, allow_expunge: bool, quiet: &BTreeSet<u32>) -> io::Result<()> {
        let condstore = self.condstore;
        let Some(sel) = self.selected.as_mut() else { return Ok(()) };
        let ch = sel.mb.sync()?;
        let mut lines: Vec<String> = Vec::new();
        if ch.uidvalidity_changed {
            // RFC 3501 §2.3.1.1: every UID the client holds is void.
            self.selected = None;
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
        if allow_expunge && !sel.pending_expunge.is_empty() {
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
            let recent = sel.uids.iter().filter(|u| sel.mb.is_recent(**u)).count();
            lines.push(format!("* {recent} RECENT"));
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

    /// IDLE (RFC 2177): push changes every 500 ms until DONE.
    async fn idle(&mut self, tag: &str) -> io::Result<Flow> {
        self.line("+ idling");
        self.updates(true, &BTreeSet::new())?;
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
                    blocking(|| self.updates(true, &BTreeSet::new()))?;
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

    /// The UIDs a sequence set names in the selected mailbox (RFC 3501 §9 seq-number,
    /// §6.4.8 for UIDs). Sequence numbers beyond EXISTS are an error; UIDs not in the
    /// mailbox are ignored.
    pub(super) fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<u32>, String> {
        let sel = self.selected.as_ref().expect("selected");
        resolve_set(&sel.uids, set, uid)
    }
}

/// Run blocking file-system work: on a multi-threaded runtime (the daemon) the worker thread
/// hands its other tasks over first; elsewhere (tests) it just runs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
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

/// `\Seen \Flagged …` for FETCH FLAGS.
pub(super) fn flag_list(flags: &[Flag], recent: bool) -> String {
    let mut v: Vec<&str> = flags.iter().map(Flag::as_imap).collect();
    if recent {
        v.push("\\Recent");
    }
    v.join(" ")
}

/// A UID set in compact form (`1:3,7`) for COPYUID/APPENDUID.
pub(super) fn compact(uids: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { uids[i].to_string() } else { format!("{}:{}", uids[i], uids[j]) });
        i = j + 1;
    }
    parts.join(",")
}

fn list_pattern(m: &imap_codec::imap_types::mailbox::ListMailbox<'_>) -> Vec<u8> {
    use imap_codec::imap_types::mailbox::ListMailbox;
    match m {
        ListMailbox::Token(t) => t.as_ref().to_vec(),
        ListMailbox::String(s) => s.as_ref().to_vec(),
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

/// The tag of a command line, if it looks like one (RFC 3501 §9 `tag`).
fn tag_of(raw: &[u8]) -> Option<String> {
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
        assert_eq!(compact(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
    }
}
