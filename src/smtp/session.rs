//! One SMTP session, generic over its stream so tests can drive it in memory.
//!
//! Each command passes check → (filters, later) → proceed, and the reply is written where
//! the decision is made, with its enhanced status code (RFC 3463).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tracing::{info, warn};

use super::command::{self, Command, ForwardPath, ReversePath};
use super::data::{command_is_malformed, normalise_chunks, DataLines, Line, Malformed};
use super::message;
use super::{Context, Profile};
use crate::address::Address;
use crate::directory::Target;
use crate::filter::{Decision, MessageInfo};
use crate::guard::{Event, LimitExceeded};
use crate::net::Stream;
use crate::queue::Incoming;
use crate::sasl::{decode_b64, parse_plain, sanitize};

/// RFC 5321 §4.5.3.1.4 sets 512 octets for a command line; AUTH initial responses and
/// ESMTP parameters make real lines longer, so we allow more before answering 500.
const MAX_LINE: usize = 4096;

enum ReadError {
    Eof,
    Timeout,
    TooLong,
    Io(std::io::Error),
}

struct Transaction {
    sender: ReversePath,
    recipients: Vec<(Address, Vec<Target>)>,
    /// RCPT commands answered 250, repeats of the same address included: the limit counts
    /// commands, or a client could pipeline a million identical RCPTs.
    rcpt_commands: usize,
    /// Collected BDAT chunks (RFC 3030), if the client uses CHUNKING.
    chunks: Option<Vec<u8>>,
    oversize: bool,
    /// The client declared SMTPUTF8 at MAIL (RFC 6531 §3.4): UTF-8 addresses allowed.
    utf8: bool,
}

pub struct Session {
    ctx: Arc<Context>,
    profile: Profile,
    reader: BufReader<Box<dyn Stream>>,
    out: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
    id: String,
    helo: Option<String>,
    esmtp: bool,
    auth: Option<Address>,
    tx: Option<Transaction>,
    errors: usize,
    messages: u64,
    /// The guard banned this client during the session: close at the next opportunity.
    banned: bool,
}

/// What a command handler tells the loop.
enum Flow {
    Continue,
    Close,
}

impl Session {
    /// `tls` is true when the stream is already encrypted (implicit TLS, port 465).
    pub fn new(
        ctx: Arc<Context>,
        profile: Profile,
        stream: Box<dyn Stream>,
        peer: SocketAddr,
        tls: bool,
    ) -> Session {
        Session {
            ctx,
            profile,
            reader: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::with_capacity(512),
            peer,
            tls,
            id: format!("{:016x}", rand::random::<u64>()),
            helo: None,
            esmtp: false,
            auth: None,
            tx: None,
            errors: 0,
            messages: 0,
            banned: false,
        }
    }

    pub async fn run(mut self) {
        let greeting = format!("{} ESMTP posthaste", self.ctx.config.hostname);
        self.reply(220, "", &greeting);
        let result = self.run_loop().await;
        if let Err(e) = result {
            tracing::debug!(session = %self.id, client = %self.peer.ip(), error = %e, "smtp session ended with I/O error");
        }
        let _ = self.reader.get_mut().shutdown().await;
    }

    async fn run_loop(&mut self) -> std::io::Result<()> {
        loop {
            // Flush only when the client has nothing more pipelined (RFC 2920 §3.1): one
            // write for a whole batch of replies.
            if self.reader.buffer().is_empty() {
                self.flush().await?;
            }
            let line = match self.read_line(self.ctx.config.smtp.command_timeout).await {
                Ok(line) => line,
                Err(ReadError::Eof) => return Ok(()),
                Err(ReadError::Timeout) => {
                    // RFC 5321 §4.5.3.2.7: close with 421 after the command timeout.
                    self.reply(
                        421,
                        "4.4.2",
                        &format!("{} Timeout, closing connection", self.ctx.config.hostname),
                    );
                    return self.flush().await;
                }
                Err(ReadError::TooLong) => {
                    self.guard_event(Event::ProtocolError { protocol: "smtp" });
                    self.error(500, "5.5.6", "Line too long");
                    if self.too_many_errors() {
                        return self.flush().await;
                    }
                    continue;
                }
                Err(ReadError::Io(e)) => return Err(e),
            };
            if command_is_malformed(&line) {
                // src/smtp/data.rs: a CR or NUL inside a command line is never a line end.
                self.guard_event(Event::ProtocolError { protocol: "smtp" });
                self.error(500, "5.5.2", "Command line contains a bare CR or a NUL; end lines with CR LF");
                if self.too_many_errors() {
                    return self.flush().await;
                }
                continue;
            }
            let Ok(line) = std::str::from_utf8(&line) else {
                self.guard_event(Event::ProtocolError { protocol: "smtp" });
                self.error(500, "5.5.2", "Command is not valid UTF-8");
                if self.too_many_errors() {
                    return self.flush().await;
                }
                continue;
            };
            let line = line.to_owned();
            let flow = match command::parse(&line) {
                Ok(cmd) => self.handle(cmd).await?,
                Err(e) => {
                    self.guard_event(Event::ProtocolError { protocol: "smtp" });
                    self.error(e.code, e.enhanced, &e.text);
                    Flow::Continue
                }
            };
            if matches!(flow, Flow::Close) || self.too_many_errors() {
                return self.flush().await;
            }
        }
    }

    /// Report `event` to the guard; when it bans the client, the session ends after the
    /// current reply.
    fn guard_event(&mut self, event: Event) {
        if self.ctx.guard.record(self.peer.ip(), event).is_banned() {
            self.banned = true;
        }
    }

    fn too_many_errors(&mut self) -> bool {
        if self.banned {
            self.reply(
                421,
                "4.7.0",
                &format!("{} Too many failures, closing connection", self.ctx.config.hostname),
            );
            return true;
        }
        if self.errors >= self.ctx.config.smtp.max_errors {
            warn!(session = %self.id, client = %self.peer.ip(), errors = self.errors, "smtp: too many errors, closing");
            self.reply(
                421,
                "4.7.0",
                &format!("{} Too many errors, closing connection", self.ctx.config.hostname),
            );
            true
        } else {
            false
        }
    }

    async fn handle(&mut self, cmd: Command) -> std::io::Result<Flow> {
        match cmd {
            Command::Ehlo(name) | Command::Helo(name) if name.chars().any(|c| c.is_control()) => {
                self.error(501, "5.5.4", "Invalid host name");
            }
            Command::Ehlo(name) => self.ehlo(name),
            Command::Helo(name) => {
                self.tx = None;
                self.helo = Some(name);
                self.esmtp = false;
                let text = format!("{} Hello", self.ctx.config.hostname);
                self.reply(250, "", &text);
            }
            Command::StartTls => return self.starttls().await,
            Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await?,
            Command::Mail { path, params } => self.mail(path, params).await,
            Command::Rcpt { path, params } => self.rcpt(path, params).await,
            Command::Data => self.data().await?,
            Command::Bdat { size, last } => self.bdat(size, last).await?,
            Command::Rset => {
                self.tx = None;
                self.reply(250, "2.0.0", "Ok");
            }
            Command::Noop => self.reply(250, "2.0.0", "Ok"),
            Command::Help => self.reply(214, "2.0.0", "See RFC 5321"),
            // RFC 5321 §3.5.3: 252 says "cannot verify, but will accept"; we never disclose
            // which addresses exist.
            Command::Vrfy => {
                self.reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
            }
            Command::Expn => self.error(502, "5.5.1", "EXPN not available"),
            Command::Quit => {
                self.reply(221, "2.0.0", "Bye");
                return Ok(Flow::Close);
            }
        }
        Ok(Flow::Continue)
    }

    fn tls_available(&self) -> bool {
        self.ctx.tls.is_some() && !self.tls
    }

    fn auth_available(&self) -> bool {
        self.profile != Profile::Mx && self.tls && self.auth.is_none()
    }

    fn ehlo(&mut self, name: String) {
        // RFC 5321 §4.1.4: EHLO resets any transaction in progress.
        self.tx = None;
        self.helo = Some(name);
        self.esmtp = true;
        let mut lines = vec![format!("{} Hello", self.ctx.config.hostname)];
        lines.push("PIPELINING".into());
        lines.push(format!("SIZE {}", self.ctx.config.smtp.max_message_size));
        lines.push("8BITMIME".into());
        lines.push("SMTPUTF8".into());
        lines.push("ENHANCEDSTATUSCODES".into());
        lines.push("CHUNKING".into());
        if self.tls_available() {
            lines.push("STARTTLS".into());
        }
        // RFC 4954 §4 and our policy: AUTH only on submission ports and only under TLS, so
        // passwords never cross the network in clear text.
        if self.auth_available() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.reply_multi(250, &lines);
    }

    async fn starttls(&mut self) -> std::io::Result<Flow> {
        let Some(acceptor) = self.ctx.tls.clone() else {
            self.error(502, "5.5.1", "STARTTLS not available");
            return Ok(Flow::Continue);
        };
        if self.tls {
            self.error(503, "5.5.1", "Already using TLS");
            return Ok(Flow::Continue);
        }
        self.reply(220, "2.0.0", "Ready to start TLS");
        self.flush().await?;
        // Anything the client pipelined after STARTTLS arrived in clear text and must not be
        // executed inside the TLS session (the STARTTLS command-injection attack, CVE-2011-0411).
        if !self.reader.buffer().is_empty() {
            warn!(session = %self.id, client = %self.peer.ip(), "smtp: data pipelined after STARTTLS, closing");
            return Ok(Flow::Close);
        }
        if !crate::net::upgrade_to_tls(&mut self.reader, &acceptor, self.peer, "smtp").await {
            return Ok(Flow::Close);
        }
        self.tls = true;
        // RFC 3207 §4.2: forget everything learnt before TLS; the client must EHLO again.
        self.helo = None;
        self.esmtp = false;
        self.tx = None;
        Ok(Flow::Continue)
    }

    async fn auth(&mut self, mechanism: String, initial: Option<String>) -> std::io::Result<()> {
        if self.profile == Profile::Mx {
            self.error(502, "5.5.1", "AUTH is only available on the submission ports");
            return Ok(());
        }
        if !self.tls {
            // RFC 4954 §6: 538 when the mechanism needs an encrypted channel.
            self.error(538, "5.7.11", "Encryption required: issue STARTTLS first");
            return Ok(());
        }
        if self.helo.is_none() {
            self.error(503, "5.5.1", "Send EHLO first");
            return Ok(());
        }
        if self.auth.is_some() {
            // RFC 4954 §4: AUTH is not permitted once authenticated.
            self.error(503, "5.5.1", "Already authenticated");
            return Ok(());
        }
        if self.tx.is_some() {
            self.error(503, "5.5.1", "AUTH not permitted during a mail transaction");
            return Ok(());
        }
        let creds = match mechanism.as_str() {
            "PLAIN" => {
                let Some(resp) = self.sasl_response(initial, "").await? else { return Ok(()) };
                parse_plain(&resp)
            }
            "LOGIN" => {
                // RFC 4954 §4: an initial response, if any, is the user name.
                let Some(user) = self.sasl_response(initial, "VXNlcm5hbWU6").await? else { return Ok(()) }; // "Username:"
                let Some(pass) = self.sasl_response(None, "UGFzc3dvcmQ6").await? else { return Ok(()) }; // "Password:"
                match (String::from_utf8(user), String::from_utf8(pass)) {
                    (Ok(u), Ok(p)) => Some((u, p)),
                    _ => None,
                }
            }
            _ => {
                self.error(504, "5.5.4", "Unrecognized authentication mechanism");
                return Ok(());
            }
        };
        let Some((user, pass)) = creds else {
            self.error(501, "5.5.2", "Malformed authentication response");
            return Ok(());
        };
        match self.ctx.directory.authenticate(&user, &pass).await {
            Ok(Some(account)) => match Address::parse(&account.address) {
                Ok(addr) => {
                    info!(session = %self.id, client = %self.peer.ip(), protocol = "smtp", user = %addr, "auth success");
                    self.auth = Some(addr);
                    self.reply(235, "2.7.0", "Authentication successful");
                }
                Err(_) => self.error(454, "4.7.0", "Temporary authentication failure"),
            },
            Ok(None) => {
                // One structured line per failure: the guard counts these per client IP.
                warn!(event = "auth_failure", session = %self.id, client = %self.peer.ip(), protocol = "smtp",
                      user = %sanitize(&user), "authentication failed");
                self.guard_event(Event::AuthFailure { protocol: "smtp" });
                self.error(535, "5.7.8", "Authentication credentials invalid");
            }
            Err(e) => {
                warn!(session = %self.id, error = %e, "smtp: directory error during AUTH");
                self.error(454, "4.7.0", "Temporary authentication failure");
            }
        }
        Ok(())
    }

    /// The client's answer to a SASL challenge, base64-decoded; None after an error reply
    /// (the reply is already queued).
    async fn sasl_response(
        &mut self,
        initial: Option<String>,
        challenge: &str,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let text = match initial {
            // RFC 4954 §4: "=" is an empty initial response.
            Some(i) if i == "=" => return Ok(Some(Vec::new())),
            Some(i) => i,
            None => {
                self.out.extend_from_slice(format!("334 {challenge}\r\n").as_bytes());
                self.flush().await?;
                match self.read_line(self.ctx.config.smtp.command_timeout).await {
                    Ok(l) => String::from_utf8_lossy(&l).trim_end().to_owned(),
                    Err(ReadError::Io(e)) => return Err(e),
                    Err(_) => {
                        self.error(501, "5.5.2", "Authentication aborted");
                        return Ok(None);
                    }
                }
            }
        };
        if text == "*" {
            self.error(501, "5.0.0", "Authentication cancelled");
            return Ok(None);
        }
        match decode_b64(&text) {
            Some(v) => Ok(Some(v)),
            None => {
                self.error(501, "5.5.2", "Invalid base64 in authentication response");
                Ok(None)
            }
        }
    }

    async fn mail(&mut self, path: ReversePath, params: Vec<(String, Option<String>)>) {
        if self.helo.is_none() {
            return self.error(503, "5.5.1", "Send HELO/EHLO first");
        }
        if self.tx.is_some() {
            return self.error(503, "5.5.1", "Nested MAIL command");
        }
        if self.profile != Profile::Mx {
            if !self.tls {
                return self.error(530, "5.7.0", "Must issue a STARTTLS command first");
            }
            if self.auth.is_none() {
                // RFC 4954 §6: 530 5.7.0 when authentication is required.
                return self.error(530, "5.7.0", "Authentication required");
            }
            let user = self.auth.as_ref().expect("checked above").to_string();
            if self.ctx.guard.may_send_message(&user) == Err(LimitExceeded::Messages) {
                // RFC 3463 §3.8 X.7.1 (delivery not authorized): a temporary refusal, the
                // client may retry once the hour has passed.
                warn!(event = "rate_limit", session = %self.id, client = %self.peer.ip(), user = %user,
                      limit = "messages_per_hour", "smtp: sending limit reached");
                return self.error(451, "4.7.1", "Too many messages sent in the last hour, try again later");
            }
        }
        let utf8 = params.iter().any(|(k, v)| k == "SMTPUTF8" && v.is_none());
        if let ReversePath::Address(a) = &path {
            if !utf8 && !a.to_string().is_ascii() {
                // RFC 6531 §3.2: a UTF-8 address needs the SMTPUTF8 parameter.
                return self.error(553, "5.6.7", "UTF-8 addresses need the SMTPUTF8 parameter");
            }
        }
        for (key, value) in &params {
            match (key.as_str(), value.as_deref()) {
                ("SIZE", Some(v)) => match v.parse::<u64>() {
                    // RFC 1870 §6.2: refuse at MAIL when the declared size is too large.
                    Ok(n) if n > self.ctx.config.smtp.max_message_size => {
                        return self.error(552, "5.3.4", "Message size exceeds fixed maximum message size");
                    }
                    Ok(_) => {}
                    Err(_) => return self.error(501, "5.5.4", "Invalid SIZE parameter"),
                },
                ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {
                }
                ("SMTPUTF8", None) => {}
                // RFC 4954 §5: AUTH=<> or AUTH=addr from a trusted relay; we accept and ignore it.
                ("AUTH", Some(_)) => {}
                _ => return self.error(555, "5.5.4", &format!("Unsupported parameter {key}")),
            }
        }
        if self.profile != Profile::Mx {
            let account = self.auth.clone().expect("checked above");
            let allowed = match &path {
                ReversePath::Null => Ok(false),
                ReversePath::Address(a) => self.ctx.directory.may_send_as(&account, a).await,
            };
            match allowed {
                Ok(true) => {}
                Ok(false) => {
                    return self.error(553, "5.7.1", &format!("Sender address is not owned by {account}"));
                }
                Err(e) => {
                    warn!(session = %self.id, error = %e, "smtp: directory error at MAIL");
                    return self.error(451, "4.3.0", "Temporary lookup failure");
                }
            }
        }
        self.tx = Some(Transaction {
            sender: path,
            recipients: Vec::new(),
            rcpt_commands: 0,
            chunks: None,
            oversize: false,
            utf8,
        });
        self.reply(250, "2.1.0", "Sender OK");
    }

    async fn rcpt(&mut self, path: ForwardPath, params: Vec<(String, Option<String>)>) {
        let Some(tx) = &self.tx else {
            return self.error(503, "5.5.1", "Need MAIL command first");
        };
        if tx.rcpt_commands >= self.ctx.config.smtp.max_recipients {
            // RFC 5321 §4.5.3.1.10: 452 for too many recipients; the client retries the rest.
            return self.error(452, "4.5.3", "Too many recipients");
        }
        if let Some((key, _)) = params.first() {
            return self.error(555, "5.5.4", &format!("Unsupported parameter {key}"));
        }
        if let (Some(user), Profile::Submission | Profile::Submissions) = (&self.auth, self.profile) {
            if self.ctx.guard.may_add_recipient(&user.to_string(), tx.recipients.len()).is_err() {
                // RFC 5321 §4.5.3.1.10: 452 for too many recipients (RFC 3463 X.5.3).
                warn!(event = "rate_limit", session = %self.id, client = %self.peer.ip(), user = %user,
                      limit = "recipients_per_hour", "smtp: sending limit reached");
                return self.error(452, "4.5.3", "Too many recipients in the last hour, try again later");
            }
        }
        let addr = match path {
            ForwardPath::Address(a) => a,
            ForwardPath::Postmaster => match self.postmaster().await {
                Some(a) => a,
                None => return self.error(550, "5.1.1", "No postmaster configured"),
            },
            ForwardPath::RelayTrick { kind, path } => {
                warn!(session = %self.id, client = %self.peer.ip(), kind, rcpt = %sanitize(&path), "smtp: relay trick refused");
                return self.error(554, "5.7.1", &format!("Relay access denied ({kind} not accepted)"));
            }
        };
        if !addr.to_string().is_ascii() && !self.tx.as_ref().is_some_and(|t| t.utf8) {
            // RFC 6531 §3.2: without SMTPUTF8 at MAIL, a UTF-8 recipient is refused.
            return self.error(553, "5.6.7", "UTF-8 addresses need the SMTPUTF8 parameter");
        }
        let local = match self.ctx.directory.is_local_domain(addr.domain()).await {
            Ok(l) => l,
            Err(e) => {
                warn!(session = %self.id, error = %e, "smtp: directory error at RCPT");
                return self.error(451, "4.3.0", "Temporary lookup failure");
            }
        };
        let targets = if local {
            match self.ctx.directory.resolve(&addr).await {
                Ok(Some(t)) if !t.is_empty() => t,
                Ok(_) => {
                    info!(event = "unknown_recipient", session = %self.id, client = %self.peer.ip(), rcpt = %addr, "smtp: unknown recipient");
                    self.guard_event(Event::UnknownRecipient);
                    return self.error(
                        550,
                        "5.1.1",
                        &format!("<{addr}>: Recipient address rejected: User unknown"),
                    );
                }
                Err(e) => {
                    warn!(session = %self.id, error = %e, "smtp: directory error at RCPT");
                    return self.error(451, "4.3.0", "Temporary lookup failure");
                }
            }
        } else if self.profile != Profile::Mx && self.auth.is_some() {
            vec![Target::Remote(addr.clone())]
        } else {
            // No open relay: without authentication we only accept mail for our domains.
            info!(session = %self.id, client = %self.peer.ip(), rcpt = %addr, "smtp: relay denied");
            return self.error(554, "5.7.1", &format!("<{addr}>: Relay access denied"));
        };
        if self.all_over_quota(&targets).await {
            // RFC 3463 §3.3: X.2.2 "mailbox full", persistent transient (RFC 5321 §4.2.2 452):
            // the sender retries, and the mail arrives once the user has made room.
            info!(event = "over_quota", session = %self.id, client = %self.peer.ip(), rcpt = %addr, "smtp: mailbox full");
            return self.error(452, "4.2.2", &format!("<{addr}>: Mailbox full"));
        }
        let tx = self.tx.as_mut().expect("checked above");
        tx.rcpt_commands += 1;
        if tx.recipients.iter().any(|(a, _)| *a == addr) {
            // A repeated recipient is harmless once (RFC 5321 §3.3 lets us accept it; the
            // message is delivered once) but counts as an error, so repeating it endlessly
            // ends the session like any other misbehaviour.
            self.errors += 1;
        } else {
            tx.recipients.push((addr, targets));
        }
        self.reply(250, "2.1.5", "Recipient OK");
    }

    /// Whether every target is a local account at or over its quota (the directory's
    /// `quota`, bytes; 0 = no limit), counted as IMAP QUOTA counts it (the store's
    /// `account_usage`). An alias with one recipient that has room is accepted: refusing it
    /// would keep the mail from the others. Errors count as "has room": a quota check never
    /// loses mail.
    async fn all_over_quota(&self, targets: &[Target]) -> bool {
        let mut accounts = Vec::new();
        for t in targets {
            let Target::Local(a) = t else { return false };
            match self.ctx.directory.get_account(a).await {
                Ok(Some(acct)) if acct.quota > 0 => accounts.push((a.clone(), acct.quota)),
                _ => return false,
            }
        }
        if accounts.is_empty() {
            return false;
        }
        let store = crate::store::Store::new(self.ctx.config.mail_dir());
        let full = tokio::task::spawn_blocking(move || {
            accounts.iter().all(|(a, quota)| store.account_usage(a).is_ok_and(|u| u.bytes >= *quota))
        });
        full.await.unwrap_or(false)
    }

    /// `<postmaster>` without a domain (RFC 5321 §4.5.1): postmaster of our host name's
    /// domain if we serve it, otherwise of the first local domain that has one.
    async fn postmaster(&self) -> Option<Address> {
        let mut candidates = Vec::new();
        if let Some((_, parent)) = self.ctx.config.hostname.split_once('.') {
            candidates.push(parent.to_owned());
        }
        candidates.push(self.ctx.config.hostname.clone());
        if let Ok(domains) = self.ctx.directory.list_domains().await {
            candidates.extend(domains.into_iter().map(|d| d.name));
        }
        for d in candidates {
            if let Ok(a) = Address::parse(&format!("postmaster@{d}")) {
                if let Ok(Some(t)) = self.ctx.directory.resolve(&a).await {
                    if !t.is_empty() {
                        return Some(a);
                    }
                }
            }
        }
        None
    }

    fn check_ready_for_data(&mut self) -> bool {
        match &self.tx {
            None => {
                self.error(503, "5.5.1", "Need MAIL command first");
                false
            }
            Some(tx) if tx.recipients.is_empty() => {
                // RFC 5321 §3.3: 554 (or 503) when there are no valid recipients.
                self.error(554, "5.5.1", "No valid recipients");
                false
            }
            Some(_) => true,
        }
    }

    async fn data(&mut self) -> std::io::Result<()> {
        if self.tx.as_ref().is_some_and(|t| t.chunks.is_some()) {
            self.error(503, "5.5.1", "DATA not allowed after BDAT");
            return Ok(());
        }
        if !self.check_ready_for_data() {
            return Ok(());
        }
        self.reply(354, "", "End data with <CR><LF>.<CR><LF>");
        self.flush().await?;
        let max = self.ctx.config.smtp.max_message_size as usize;
        let mut body = Vec::with_capacity(8192);
        let mut oversize = false;
        let mut line = Vec::with_capacity(1024);
        // Where the data ends and what it may contain: src/smtp/data.rs (SMTP smuggling).
        let mut lines = DataLines::default();
        loop {
            line.clear();
            let read = tokio::time::timeout(
                self.ctx.config.smtp.data_timeout,
                self.read_data_line(&mut line, max + 3),
            );
            let complete = match read.await {
                Err(_) => {
                    self.reply(421, "4.4.2", "Timeout waiting for data, closing connection");
                    self.flush().await?;
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "data timeout"));
                }
                Ok(r) => r?,
            };
            if line.is_empty() {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if !complete {
                oversize = true;
                continue;
            }
            let content = match lines.line(&line) {
                Line::End => break,
                Line::Content(c) => c,
            };
            if body.len() + content.len() + 2 > max {
                oversize = true;
            } else if !oversize {
                body.extend_from_slice(content);
                body.extend_from_slice(b"\r\n");
            }
        }
        if oversize {
            self.tx = None;
            self.error(552, "5.3.4", "Message size exceeds fixed maximum message size");
            return Ok(());
        }
        if let Some(bad) = lines.malformed() {
            self.refuse_malformed(bad);
            return Ok(());
        }
        self.finish_message(body).await;
        Ok(())
    }

    async fn bdat(&mut self, size: u64, last: bool) -> std::io::Result<()> {
        // RFC 3030 §2: the chunk is always read, even when the command is refused.
        let max = self.ctx.config.smtp.max_message_size;
        let mut chunk = Vec::new();
        let keep = self.tx.as_ref().is_some_and(|t| !t.oversize && !t.recipients.is_empty());
        let already = self.tx.as_ref().and_then(|t| t.chunks.as_ref()).map_or(0, |c| c.len() as u64);
        let fits = keep && already + size <= max;
        let reader = (&mut self.reader).take(size);
        let copied = if fits {
            tokio::time::timeout(self.ctx.config.smtp.data_timeout, async {
                let mut r = reader;
                r.read_to_end(&mut chunk).await
            })
            .await
        } else {
            tokio::time::timeout(self.ctx.config.smtp.data_timeout, async {
                let mut r = reader;
                tokio::io::copy(&mut r, &mut tokio::io::sink()).await.map(|n| n as usize)
            })
            .await
        };
        match copied {
            Err(_) => {
                self.reply(421, "4.4.2", "Timeout waiting for data, closing connection");
                self.flush().await?;
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "bdat timeout"));
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(n)) if (n as u64) < size && fits => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(Ok(_)) => {}
        }
        if !self.check_ready_for_data() {
            return Ok(());
        }
        let tx = self.tx.as_mut().expect("checked");
        if !fits {
            tx.oversize = true;
        }
        tx.chunks.get_or_insert_with(Vec::new).extend_from_slice(&chunk);
        if !last {
            let n = size.to_string();
            self.reply(250, "2.0.0", &format!("{n} octets received"));
            return Ok(());
        }
        let tx = self.tx.as_mut().expect("checked");
        if tx.oversize {
            self.tx = None;
            self.error(552, "5.3.4", "Message size exceeds fixed maximum message size");
            return Ok(());
        }
        let body = tx.chunks.take().unwrap_or_default();
        match normalise_chunks(body) {
            Ok(body) => self.finish_message(body).await,
            Err(bad) => self.refuse_malformed(bad),
        }
        Ok(())
    }

    /// A message with a bare CR or a NUL (src/smtp/data.rs): refused after its end, the
    /// transaction is over and counted as a protocol error.
    fn refuse_malformed(&mut self, bad: Malformed) {
        let tx = self.tx.take();
        let sender = tx.as_ref().map(|t| match &t.sender {
            ReversePath::Null => String::new(),
            ReversePath::Address(a) => a.to_string(),
        });
        warn!(event = "smtp_transaction", session = %self.id, client = %self.peer.ip(),
              from = %sender.unwrap_or_default(), result = "rejected", reason = bad.as_str(),
              "message refused: malformed line ends");
        self.guard_event(Event::ProtocolError { protocol: "smtp" });
        self.error(554, "5.6.0", bad.reply_text());
    }

    /// The whole message has arrived: policy checks, our headers, then make it durable.
    async fn finish_message(&mut self, body: Vec<u8>) {
        let tx = self.tx.take().expect("a transaction is in progress");
        let hostname = self.ctx.config.hostname.clone();
        let mut extra = String::new();
        if let Some(account) = self.auth.clone() {
            match self.check_from_header(&account, &body).await {
                Ok(()) => {}
                Err((code, enhanced, text)) => return self.error(code, enhanced, &text),
            }
            // RFC 6409 §8.2/§8.3: a submission server may add Date and Message-ID.
            if message::header_value(&body, "Date").is_none() {
                extra.push_str(&format!("Date: {}\r\n", chrono::Utc::now().to_rfc2822()));
            }
            if message::header_value(&body, "Message-ID").is_none() {
                extra.push_str(&format!("Message-ID: <{}@{hostname}>\r\n", uuid::Uuid::new_v4().simple()));
            }
        }
        self.messages += 1;
        let txid = format!("{}{:02x}", self.id, self.messages);
        let rcpts: Vec<String> = tx.recipients.iter().map(|(a, _)| a.to_string()).collect();
        let sender = match &tx.sender {
            ReversePath::Null => None,
            ReversePath::Address(a) => Some(a.clone()),
        };

        // The content checks (filter/mod.rs): authentication results on the MX, then spam
        // and viruses. A refusal here means nothing was written to disk.
        let rcpt_addrs: Vec<Address> = tx.recipients.iter().map(|(a, _)| a.clone()).collect();
        let auth_user = self.auth.as_ref().map(|a| a.to_string());
        let info = MessageInfo {
            client_ip: self.peer.ip(),
            helo: self.helo.as_deref(),
            sender: sender.as_ref(),
            recipients: &rcpt_addrs,
            auth_user: auth_user.as_deref(),
            submission: self.auth.is_some(),
            hostname: &hostname,
        };
        let mut decision = Decision::default();
        if self.auth.is_none() {
            decision.merge(self.ctx.mailauth.verify_inbound(&info, &body).await);
        }
        if decision.reject.is_none() {
            decision.merge(self.ctx.filter.scan(&info, &body).await);
        }
        if let Some(reply) = decision.reject {
            let message_id = message::header_value(&body, "Message-ID");
            let sender_s = sender.map(|s| s.to_string()).unwrap_or_default();
            warn!(event = "smtp_transaction", session = %self.id, txid = %txid, client = %self.peer.ip(),
                  message_id = message_id.as_deref().unwrap_or(""), from = %sender_s, rcpts = %rcpts.join(","),
                  size = body.len(), result = "rejected", code = reply.code, reason = %reply.text,
                  "message refused by content checks");
            return self.error(reply.code, reply.enhanced, &reply.text);
        }
        // RFC 8601 §5: Authentication-Results claiming our authserv-id did not come from
        // us (ours is in decision.headers, added below); remove them before anyone trusts them.
        let mut body = crate::mailauth::strip_own_results(body, &hostname);
        // Our filters write X-Spam-* and X-Virus-* headers; the sender's own claims of a
        // clean verdict must not reach mail clients that filter on them.
        let (spam, virus) = (self.ctx.config.antispam.is_some(), self.ctx.config.antivirus.is_some());
        if spam || virus {
            body = crate::mailauth::strip_fields(body, |name, _| {
                let name = name.to_ascii_lowercase();
                (spam && name.starts_with(b"x-spam-")) || (virus && name.starts_with(b"x-virus-"))
            });
        }
        // Submitted mail is signed last, over the headers we added (Date, Message-ID).
        let mut signed_part = Vec::with_capacity(decision.headers.len() + extra.len() + body.len());
        signed_part.extend_from_slice(decision.headers.as_bytes());
        signed_part.extend_from_slice(extra.as_bytes());
        signed_part.extend_from_slice(&body);
        drop(body);
        // d= is the From: header's domain, which DMARC aligns with (RFC 7489 §3.1.1); the
        // submission checks above made sure the account may use it.
        let signature = match &self.auth {
            Some(_) => match crate::mailauth::author_domain(&signed_part)
                .or_else(|| sender.as_ref().map(|s| s.domain().to_owned()))
            {
                Some(domain) => self.ctx.mailauth.sign(&domain, &signed_part),
                None => String::new(),
            },
            None => String::new(),
        };
        let received = self.received_header(&tx, &txid);
        let mut msg = Vec::with_capacity(received.len() + signature.len() + signed_part.len());
        msg.extend_from_slice(received.as_bytes());
        msg.extend_from_slice(signature.as_bytes());
        msg.extend_from_slice(&signed_part);
        drop(signed_part);
        let message_id = message::header_value(&msg, "Message-ID");
        let size = msg.len();
        let incoming = Incoming {
            sender: sender.clone(),
            recipients: tx.recipients,
            message_id: message_id.clone(),
            client_ip: Some(self.peer.ip()),
            helo: self.helo.clone(),
            auth_user: self.auth.as_ref().map(|a| a.to_string()),
            folder: decision.junk.then(|| "Junk".to_owned()),
        };
        let result = self.ctx.queue.accept(incoming, msg).await;
        let sender_s = sender.map(|s| s.to_string()).unwrap_or_default();
        match result {
            Ok(queue_id) => {
                if let Some(user) = &self.auth {
                    self.ctx.guard.record_message(&user.to_string(), rcpts.len());
                }
                info!(event = "smtp_transaction", session = %self.id, txid = %txid, queue_id = %queue_id,
                      message_id = message_id.as_deref().unwrap_or(""), client = %self.peer.ip(),
                      helo = self.helo.as_deref().unwrap_or(""), profile = self.profile.name(), tls = self.tls,
                      auth = self.auth.as_ref().map(|a| a.to_string()).unwrap_or_default(),
                      from = %sender_s, rcpts = %rcpts.join(","), size, result = "accepted",
                      "message accepted");
                self.reply(250, "2.0.0", &format!("Ok: queued as {queue_id}"));
            }
            Err(e) => {
                warn!(event = "smtp_transaction", session = %self.id, txid = %txid, client = %self.peer.ip(),
                      message_id = message_id.as_deref().unwrap_or(""), from = %sender_s, rcpts = %rcpts.join(","),
                      size, result = "tempfail", error = %e, "message could not be queued");
                self.error(451, "4.3.0", "Temporary failure storing the message, try again later");
            }
        }
    }

    /// Submission: every From: address must belong to the authenticated account
    /// (RFC 6409 §6.1 lets the MSA enforce its sender policy).
    async fn check_from_header(
        &self,
        account: &Address,
        body: &[u8],
    ) -> Result<(), (u16, &'static str, String)> {
        let parsed = mail_parser::MessageParser::default().parse_headers(body);
        let addrs: Vec<String> = parsed
            .as_ref()
            .and_then(|m| m.from())
            .map(|f| f.iter().filter_map(|a| a.address().map(|s| s.to_string())).collect())
            .unwrap_or_default();
        if addrs.is_empty() {
            return Err((550, "5.6.0", "The message has no From: header".into()));
        }
        for a in addrs {
            let allowed = match Address::parse(&a) {
                Ok(addr) => self.ctx.directory.may_send_as(account, &addr).await.unwrap_or(false),
                Err(_) => false,
            };
            if !allowed {
                return Err((
                    553,
                    "5.7.1",
                    format!("From: address {} is not owned by {account}", sanitize(&a)),
                ));
            }
        }
        Ok(())
    }

    /// RFC 5321 §4.4 trace header; the "with" keyword per RFC 3848.
    fn received_header(&self, tx: &Transaction, txid: &str) -> String {
        let proto = match (self.esmtp, self.tls, self.auth.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let ip = match self.peer.ip() {
            std::net::IpAddr::V4(v4) => format!("[{v4}]"),
            std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        };
        let helo = sanitize(self.helo.as_deref().unwrap_or("unknown"));
        let rcpt = if tx.recipients.len() == 1 {
            format!("\r\n\tfor <{}>", tx.recipients[0].0)
        } else {
            String::new()
        };
        format!(
            "Received: from {helo} ({ip})\r\n\tby {} (posthaste) with {proto} id {txid}{rcpt};\r\n\t{}\r\n",
            self.ctx.config.hostname,
            chrono::Utc::now().to_rfc2822()
        )
    }

    // ---- I/O -----------------------------------------------------------------------------

    fn reply(&mut self, code: u16, enhanced: &str, text: &str) {
        let line = if enhanced.is_empty() {
            format!("{code} {text}\r\n")
        } else {
            format!("{code} {enhanced} {text}\r\n")
        };
        self.out.extend_from_slice(line.as_bytes());
    }

    fn reply_multi(&mut self, code: u16, lines: &[String]) {
        for (i, l) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            self.out.extend_from_slice(format!("{code}{sep}{l}\r\n").as_bytes());
        }
    }

    /// An error reply, counted towards the per-session error limit.
    fn error(&mut self, code: u16, enhanced: &str, text: &str) {
        self.errors += 1;
        self.reply(code, enhanced, text);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let w = self.reader.get_mut();
            w.write_all(&self.out).await?;
            w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn read_line(&mut self, timeout: Duration) -> Result<Vec<u8>, ReadError> {
        let mut line = Vec::with_capacity(128);
        match tokio::time::timeout(timeout, self.read_data_line(&mut line, MAX_LINE)).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Ok(Ok(_)) if line.is_empty() => Err(ReadError::Eof),
            Ok(Ok(false)) => Err(ReadError::TooLong),
            Ok(Ok(true)) if !line.ends_with(b"\n") => Err(ReadError::Eof),
            Ok(Ok(true)) => {
                // One line end: LF, or CR LF. A second CR before it is a bare CR, left in
                // the line for the command check (src/smtp/data.rs).
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                Ok(line)
            }
        }
    }

    /// Read through the next LF into `line`, keeping at most `limit` bytes. Returns false if
    /// the line was longer (the rest is consumed and dropped). An empty `line` means EOF.
    async fn read_data_line(&mut self, line: &mut Vec<u8>, limit: usize) -> std::io::Result<bool> {
        crate::net::read_line_limited(&mut self.reader, line, limit).await
    }
}
