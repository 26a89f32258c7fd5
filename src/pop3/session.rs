//! One POP3 session, generic over its stream so tests can drive it in memory.
//!
//! States (RFC 1939 §3): AUTHORIZATION until a login succeeds, then TRANSACTION; QUIT in
//! TRANSACTION enters UPDATE, the only place where messages are removed. Anything else that
//! ends the session (a dropped connection, the autologout timer, too many errors) removes
//! nothing (RFC 1939 §6).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader};
use tracing::{debug, info, warn};

use super::command::{self, Command};
use super::maildrop::{self, Maildrop, OpenError, Part};
use super::Context;
use crate::address::Address;
use crate::guard::Event;
use crate::net::Stream;
use crate::sasl::{decode_b64, parse_plain, sanitize};

/// RFC 2449 §4 limits commands to 255 octets; AUTH initial responses (RFC 5034 §4) and long
/// passwords make real lines longer, so we allow more before answering -ERR.
const MAX_LINE: usize = 2048;

/// Output is written to the client in pieces of about this size while a message is sent.
const CHUNK: usize = 64 * 1024;

enum ReadError {
    Eof,
    Timeout,
    TooLong,
    Io(std::io::Error),
}

enum State {
    /// `user`: the name from a USER command waiting for its PASS.
    Authorization {
        user: Option<String>,
    },
    Transaction(Box<Maildrop>),
}

enum Flow {
    Continue,
    Close,
}

pub struct Session {
    conn: Conn,
    state: State,
}

/// The connection half of a session: the stream, the replies not yet written and the error
/// count. The TRANSACTION commands are its methods and get the maildrop as an argument.
struct Conn {
    ctx: Arc<Context>,
    reader: BufReader<Box<dyn Stream>>,
    out: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
    id: String,
    errors: usize,
    /// The guard banned this client during the session: close after the current reply.
    banned: bool,
}

impl Session {
    /// `tls` is true when the stream is already encrypted (implicit TLS, port 995).
    pub fn new(ctx: Arc<Context>, stream: Box<dyn Stream>, peer: SocketAddr, tls: bool) -> Session {
        let conn = Conn {
            ctx,
            reader: BufReader::with_capacity(16 * 1024, stream),
            out: Vec::with_capacity(512),
            peer,
            tls,
            id: format!("{:016x}", rand::random::<u64>()),
            errors: 0,
            banned: false,
        };
        Session { conn, state: State::Authorization { user: None } }
    }

    pub async fn run(mut self) {
        // RFC 1939 §4: the greeting. No APOP timestamp: APOP is not offered.
        let greeting = format!("{} POP3 server ready", self.conn.ctx.config.hostname);
        self.conn.ok(&greeting);
        if let Err(e) = self.run_loop().await {
            debug!(session = %self.conn.id, client = %self.conn.peer.ip(), error = %e, "pop3 session ended with I/O error");
        }
        // Dropping the state releases the maildrop lock without touching any message.
        let _ = self.conn.reader.get_mut().shutdown().await;
    }

    async fn run_loop(&mut self) -> std::io::Result<()> {
        loop {
            // RFC 2449 §6.6 PIPELINING: answer in order, one write for all the replies to
            // what the client sent in one go.
            if self.conn.reader.buffer().is_empty() {
                self.conn.flush().await?;
            }
            let line = match self.conn.read_line().await {
                Ok(line) => line,
                Err(ReadError::Eof) => return Ok(()),
                Err(ReadError::Timeout) => {
                    // RFC 1939 §3: the autologout timer closes without entering UPDATE.
                    self.conn.err("Autologout; idle for too long");
                    return self.conn.flush().await;
                }
                Err(ReadError::TooLong) => {
                    self.conn.guard_event(Event::ProtocolError { protocol: "pop3" });
                    self.conn.error("Line too long");
                    if self.conn.too_many_errors() {
                        return self.conn.flush().await;
                    }
                    continue;
                }
                Err(ReadError::Io(e)) => return Err(e),
            };
            let flow = match std::str::from_utf8(&line) {
                Err(_) => {
                    self.conn.guard_event(Event::ProtocolError { protocol: "pop3" });
                    self.conn.error("Command is not valid UTF-8");
                    Flow::Continue
                }
                Ok(line) => match command::parse(line) {
                    Ok(cmd) => self.handle(cmd).await?,
                    Err(e) => {
                        self.conn.guard_event(Event::ProtocolError { protocol: "pop3" });
                        self.conn.error(&e.0);
                        Flow::Continue
                    }
                },
            };
            if matches!(flow, Flow::Close) || self.conn.too_many_errors() {
                return self.conn.flush().await;
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> std::io::Result<Flow> {
        // Commands allowed in both states.
        match cmd {
            Command::Capa => {
                self.capa();
                return Ok(Flow::Continue);
            }
            Command::Quit => return self.quit().await,
            _ => {}
        }
        let State::Transaction(md) = &mut self.state else {
            match cmd {
                Command::Stls => return self.stls().await,
                Command::User(name) => self.user(name),
                Command::Pass(pass) => self.pass(pass).await,
                Command::Auth { mechanism, initial } => self.auth(mechanism, initial).await?,
                Command::Apop => self.conn.error("APOP is not supported; use AUTH PLAIN or USER/PASS"),
                // RFC 1939 §5/§6: these need a maildrop, i.e. the TRANSACTION state.
                _ => self.conn.error("Not logged in"),
            }
            return Ok(Flow::Continue);
        };
        let conn = &mut self.conn;
        match cmd {
            Command::Stat => conn.stat(md).await?,
            Command::List(n) => conn.list(md, n).await?,
            Command::Uidl(n) => conn.uidl(md, n),
            Command::Retr(n) => return conn.retr(md, n, Part::All).await,
            Command::Top(n, lines) => return conn.retr(md, n, Part::Top(lines)).await,
            Command::Dele(n) => conn.dele(md, n),
            Command::Rset => conn.rset(md),
            Command::Noop => conn.ok(""),
            // RFC 2595 §4: STLS only in the AUTHORIZATION state.
            Command::Stls => conn.error("STLS is only allowed before login"),
            Command::User(_) | Command::Pass(_) | Command::Auth { .. } | Command::Apop => {
                conn.error("Already logged in")
            }
            Command::Capa | Command::Quit => unreachable!("handled above"),
        }
        Ok(Flow::Continue)
    }

    fn tls_available(&self) -> bool {
        self.conn.ctx.tls.is_some() && !self.conn.tls
    }

    /// RFC 2595 §2.1: no clear-text passwords on an unencrypted connection, unless the admin
    /// allows it.
    fn login_allowed(&self) -> bool {
        self.conn.tls || self.conn.ctx.config.pop3.allow_plaintext_auth
    }

    /// RFC 2449 §5 CAPA. USER and SASL are listed only where a login is allowed, so a client
    /// on port 110 sees it must STLS first (RFC 2595 §4), and not after login.
    fn capa(&mut self) {
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        if matches!(self.state, State::Authorization { .. }) {
            if self.tls_available() {
                caps.push("STLS");
            }
            if self.login_allowed() {
                caps.push("USER");
                caps.push("SASL PLAIN");
            }
        }
        caps.push("IMPLEMENTATION posthaste");
        self.conn.ok("Capability list follows");
        for c in caps {
            self.conn.line(c);
        }
        self.conn.line(".");
    }

    async fn stls(&mut self) -> std::io::Result<Flow> {
        let Some(acceptor) = self.conn.ctx.tls.clone() else {
            self.conn.error("STLS not available");
            return Ok(Flow::Continue);
        };
        if self.conn.tls {
            self.conn.error("Already using TLS");
            return Ok(Flow::Continue);
        }
        self.conn.ok("Begin TLS negotiation");
        self.conn.flush().await?;
        // Anything pipelined after STLS arrived in clear text and must not be run inside the
        // TLS session (command injection, as CVE-2011-0411 for SMTP).
        if !self.conn.reader.buffer().is_empty() {
            warn!(session = %self.conn.id, client = %self.conn.peer.ip(), "pop3: data pipelined after STLS, closing");
            return Ok(Flow::Close);
        }
        if !crate::net::upgrade_to_tls(&mut self.conn.reader, &acceptor, self.conn.peer, "pop3").await {
            return Ok(Flow::Close);
        }
        self.conn.tls = true;
        // RFC 2595 §4: forget what was learnt before TLS (a USER given in clear text).
        self.state = State::Authorization { user: None };
        Ok(Flow::Continue)
    }

    fn user(&mut self, name: String) {
        if !self.login_allowed() {
            return self.conn.refuse_plaintext();
        }
        // Always +OK: whether the account exists is only told after PASS (RFC 1939 §13).
        self.state = State::Authorization { user: Some(name) };
        self.conn.ok("Send PASS");
    }

    async fn pass(&mut self, pass: String) {
        if !self.login_allowed() {
            return self.conn.refuse_plaintext();
        }
        // RFC 1939 §7: PASS only right after a successful USER; a failed PASS needs a new USER.
        let State::Authorization { user } = &mut self.state else { return };
        let Some(user) = user.take() else {
            return self.conn.error("Send USER first");
        };
        self.login(&user, &pass).await;
    }

    /// RFC 5034: AUTH PLAIN, with the initial response on the command line or after "+ ".
    async fn auth(&mut self, mechanism: Option<String>, initial: Option<String>) -> std::io::Result<()> {
        if !self.login_allowed() {
            self.conn.refuse_plaintext();
            return Ok(());
        }
        let Some(mechanism) = mechanism else {
            // Bare AUTH: the mechanism list, as the pre-RFC 5034 drafts had it and clients
            // such as Outlook still ask.
            self.conn.ok("Mechanisms follow");
            self.conn.line("PLAIN");
            self.conn.line(".");
            return Ok(());
        };
        if mechanism != "PLAIN" {
            self.conn.error("Unsupported authentication mechanism");
            return Ok(());
        }
        let text = match initial {
            Some(i) => i,
            None => {
                // RFC 5034 §4: an empty challenge is "+ ".
                self.conn.line("+ ");
                self.conn.flush().await?;
                match self.conn.read_line().await {
                    Ok(l) => String::from_utf8_lossy(&l).trim_end().to_owned(),
                    Err(ReadError::Io(e)) => return Err(e),
                    Err(ReadError::Eof) => return Ok(()),
                    Err(_) => {
                        self.conn.error("Authentication aborted");
                        return Ok(());
                    }
                }
            }
        };
        if text == "*" {
            // RFC 5034 §4: "*" cancels; the server MUST answer -ERR.
            self.conn.error("Authentication cancelled");
            return Ok(());
        }
        // RFC 5034 §4: "=" is an empty initial response.
        let raw = if text == "=" { Some(Vec::new()) } else { decode_b64(&text) };
        let Some(raw) = raw else {
            self.conn.error("Invalid base64 in authentication response");
            return Ok(());
        };
        let Some((user, pass)) = parse_plain(&raw) else {
            self.conn.error("[AUTH] Malformed PLAIN response");
            return Ok(());
        };
        self.login(&user, &pass).await;
        Ok(())
    }

    async fn login(&mut self, user: &str, pass: &str) {
        let account = match self.conn.ctx.directory.authenticate(user, pass).await {
            Ok(Some(account)) => account,
            Ok(None) => {
                // One structured line per failure: the guard counts these per client IP.
                warn!(event = "auth_failure", session = %self.conn.id, client = %self.conn.peer.ip(), protocol = "pop3",
                      user = %sanitize(user), "authentication failed");
                self.conn.guard_event(Event::AuthFailure { protocol: "pop3" });
                tokio::time::sleep(self.conn.ctx.config.pop3.auth_failure_delay).await;
                self.state = State::Authorization { user: None };
                return self.conn.error("[AUTH] Authentication failed");
            }
            Err(e) => {
                warn!(session = %self.conn.id, error = %e, "pop3: directory error during login");
                // RFC 3206 §4: [SYS/TEMP], a problem on our side that may go away.
                return self.conn.err("[SYS/TEMP] Temporary authentication failure, try again later");
            }
        };
        let Ok(addr) = Address::parse(&account.address) else {
            return self.conn.err("[SYS/TEMP] Temporary authentication failure, try again later");
        };
        let store = self.conn.ctx.store.clone();
        let opened = {
            let addr = addr.clone();
            tokio::task::spawn_blocking(move || Maildrop::open(&store, &addr))
                .await
                .unwrap_or_else(|e| Err(OpenError::Io(std::io::Error::other(e.to_string()))))
        };
        match opened {
            Ok(md) => {
                let n = md.messages.len();
                info!(event = "login", session = %self.conn.id, client = %self.conn.peer.ip(), protocol = "pop3",
                      user = %addr, messages = n, "pop3 login");
                self.state = State::Transaction(Box::new(md));
                self.conn.ok(&format!("Logged in, maildrop has {n} messages"));
            }
            Err(OpenError::InUse) => {
                // RFC 1939 §8 and RFC 2449 §8.1.1: the maildrop is locked by another session.
                info!(session = %self.conn.id, client = %self.conn.peer.ip(), protocol = "pop3", user = %addr,
                      "pop3: maildrop in use");
                self.state = State::Authorization { user: None };
                self.conn.err("[IN-USE] Mailbox is locked by another POP3 session");
            }
            Err(OpenError::Io(e)) => {
                warn!(session = %self.conn.id, user = %addr, error = %e, "pop3: cannot open the maildrop");
                self.state = State::Authorization { user: None };
                self.conn.err("[SYS/TEMP] Cannot open the mailbox, try again later");
            }
        }
    }

    async fn quit(&mut self) -> std::io::Result<Flow> {
        let State::Transaction(md) = std::mem::replace(&mut self.state, State::Authorization { user: None })
        else {
            // RFC 1939 §4: QUIT in AUTHORIZATION ends the session, no UPDATE.
            self.conn.ok("Bye");
            return Ok(Flow::Close);
        };
        // RFC 1939 §6: QUIT from TRANSACTION enters UPDATE.
        let mailbox = md.mailbox();
        let messages = md.messages.clone();
        let result = tokio::task::spawn_blocking(move || maildrop::update(&mailbox, &messages))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        match result {
            Ok(u) => {
                info!(event = "pop3_logout", session = %self.conn.id, client = %self.conn.peer.ip(), user = %md.account,
                      deleted = u.deleted, seen = u.seen, "pop3 logout");
                self.conn.ok(&format!("Bye, {} messages deleted", u.deleted));
            }
            Err(e) => {
                // RFC 1939 §6: some or none of the marked messages may be gone; we say so.
                warn!(session = %self.conn.id, user = %md.account, error = %e, "pop3: UPDATE failed");
                self.conn.err("[SYS/TEMP] Some deleted messages could not be removed");
            }
        }
        // The maildrop lock is released here, after the update is done.
        drop(md);
        Ok(Flow::Close)
    }
}

impl Conn {
    /// Report `event` to the guard; when it bans the client, the session ends after the
    /// current reply.
    fn guard_event(&mut self, event: Event) {
        if self.ctx.guard.record(self.peer.ip(), event).is_banned() {
            self.banned = true;
        }
    }

    fn too_many_errors(&mut self) -> bool {
        if self.banned {
            // The reply to the command is out; POP3 has no unsolicited reply, so just close.
            warn!(session = %self.id, client = %self.peer.ip(), "pop3: client banned, closing");
            return true;
        }
        if self.errors >= self.ctx.config.pop3.max_errors {
            warn!(session = %self.id, client = %self.peer.ip(), errors = self.errors, "pop3: too many errors, closing");
            self.err("Too many errors, closing connection");
            true
        } else {
            false
        }
    }

    fn refuse_plaintext(&mut self) {
        // RFC 3206 §5: [AUTH] says the problem is with how the credentials are given.
        self.error("[AUTH] Plaintext authentication disallowed on non-secure connections; use STLS first");
    }

    /// The index of message `n` if it exists and is not marked deleted; else the error reply
    /// is queued. RFC 1939 §5: deleted messages are not to be referred to.
    fn lookup(&mut self, md: &Maildrop, n: u32) -> Option<usize> {
        let found = (n as usize).checked_sub(1).and_then(|i| md.messages.get(i).map(|m| (i, m.deleted)));
        match found {
            None => {
                self.error("No such message");
                None
            }
            Some((_, true)) => {
                self.error("Message is deleted");
                None
            }
            Some((i, false)) => Some(i),
        }
    }

    /// Compute the transmitted sizes of the given messages that have none yet.
    async fn ensure_sizes(&mut self, md: &mut Maildrop, which: &[usize]) -> std::io::Result<()> {
        let todo: Vec<usize> = which.iter().copied().filter(|&i| md.messages[i].size.is_none()).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let args: Vec<(u32, u64)> =
            todo.iter().map(|&i| (md.messages[i].uid, md.messages[i].stored_size)).collect();
        let mailbox = md.mailbox();
        let sizes = tokio::task::spawn_blocking(move || maildrop::sizes(&mailbox, &args))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        for (i, s) in todo.into_iter().zip(sizes) {
            md.messages[i].size = Some(s);
        }
        Ok(())
    }

    async fn stat(&mut self, md: &mut Maildrop) -> std::io::Result<()> {
        let live = live(md);
        if let Err(e) = self.ensure_sizes(md, &live).await {
            self.io_failure(e);
            return Ok(());
        }
        let total: u64 = live.iter().map(|&i| md.messages[i].size.unwrap_or(0)).sum();
        // RFC 1939 §5: "+OK nn mm", deleted messages not counted.
        self.ok(&format!("{} {}", live.len(), total));
        Ok(())
    }

    async fn list(&mut self, md: &mut Maildrop, n: Option<u32>) -> std::io::Result<()> {
        let which = match n {
            Some(n) => match self.lookup(md, n) {
                Some(i) => vec![i],
                None => return Ok(()),
            },
            None => live(md),
        };
        if let Err(e) = self.ensure_sizes(md, &which).await {
            self.io_failure(e);
            return Ok(());
        }
        let lines: Vec<String> =
            which.iter().map(|&i| format!("{} {}", i + 1, md.messages[i].size.unwrap_or(0))).collect();
        if n.is_some() {
            self.ok(&lines[0]);
        } else {
            self.ok(&format!("{} messages", lines.len()));
            for l in lines {
                self.line(&l);
            }
            self.line(".");
        }
        Ok(())
    }

    fn uidl(&mut self, md: &Maildrop, n: Option<u32>) {
        let which = match n {
            Some(n) => match self.lookup(md, n) {
                Some(i) => vec![i],
                None => return,
            },
            None => live(md),
        };
        // RFC 1939 §7 UIDL: the unique-id is stable across sessions (Message::uidl).
        let lines: Vec<String> =
            which.iter().map(|&i| format!("{} {}", i + 1, md.messages[i].uidl)).collect();
        if n.is_some() {
            self.ok(&lines[0]);
        } else {
            self.ok("Unique-ID listing follows");
            for l in lines {
                self.line(&l);
            }
            self.line(".");
        }
    }

    /// RETR and TOP: the message (or its top) as a multi-line response, dot-stuffed, with
    /// CRLF line ends, streamed from the file.
    async fn retr(&mut self, md: &mut Maildrop, n: u32, part: Part) -> std::io::Result<Flow> {
        let Some(i) = self.lookup(md, n) else { return Ok(Flow::Continue) };
        if matches!(part, Part::All) {
            if let Err(e) = self.ensure_sizes(md, &[i]).await {
                self.io_failure(e);
                return Ok(Flow::Continue);
            }
        }
        let (uid, size) = (md.messages[i].uid, md.messages[i].size);
        let mailbox = md.mailbox();
        let file = {
            let mailbox = mailbox.clone();
            tokio::task::spawn_blocking(move || maildrop::open_message(&mailbox, uid))
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|r| r)
        };
        let file = match file {
            Ok(Some(f)) => f,
            Ok(None) => {
                // Removed by another client (IMAP EXPUNGE) since login: the number stays
                // valid, the message is gone. Not the client's fault, so not counted.
                self.err(&format!("Message {n} was removed by another client"));
                return Ok(Flow::Continue);
            }
            Err(e) => {
                self.io_failure(e);
                return Ok(Flow::Continue);
            }
        };
        match part {
            Part::All => self.ok(&format!("{} octets", size.unwrap_or(0))),
            Part::Top(_) => self.ok("Top of message follows"),
        }
        // The file is read and rendered on a blocking thread; the pieces come through a
        // small channel so a slow client holds at most a few chunks in memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let producer = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::with_capacity(CHUNK);
            let reader = std::io::BufReader::with_capacity(CHUNK, file);
            maildrop::render(reader, part, true, &mut |piece| {
                buf.extend_from_slice(piece);
                if buf.len() >= CHUNK {
                    let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK));
                    tx.blocking_send(full).map_err(|_| std::io::Error::other("client gone"))?;
                }
                Ok(())
            })?;
            if !buf.is_empty() {
                tx.blocking_send(buf).map_err(|_| std::io::Error::other("client gone"))?;
            }
            Ok::<(), std::io::Error>(())
        });
        while let Some(chunk) = rx.recv().await {
            self.out.extend_from_slice(&chunk);
            if self.out.len() >= CHUNK {
                self.flush().await?;
            }
        }
        match producer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                // Part of the message is out already: there is no way to say -ERR now, so
                // end the session (without UPDATE) rather than send a truncated message.
                warn!(session = %self.id, uid, error = %e, "pop3: reading a message failed mid-transfer");
                return Ok(Flow::Close);
            }
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
        self.line(".");
        if matches!(part, Part::All) {
            md.messages[i].retrieved = true;
        }
        Ok(Flow::Continue)
    }

    fn dele(&mut self, md: &mut Maildrop, n: u32) {
        let Some(i) = self.lookup(md, n) else { return };
        md.messages[i].deleted = true;
        self.ok(&format!("Message {n} deleted"));
    }

    fn rset(&mut self, md: &mut Maildrop) {
        for m in &mut md.messages {
            m.deleted = false;
            m.retrieved = false;
        }
        let n = md.messages.len();
        self.ok(&format!("Maildrop has {n} messages"));
    }

    fn io_failure(&mut self, e: std::io::Error) {
        warn!(session = %self.id, error = %e, "pop3: store error");
        self.err("[SYS/TEMP] Cannot read the mailbox, try again later");
    }

    fn ok(&mut self, text: &str) {
        if text.is_empty() {
            self.line("+OK");
        } else {
            self.line(&format!("+OK {text}"));
        }
    }

    /// A negative reply that does not count against the client.
    fn err(&mut self, text: &str) {
        self.line(&format!("-ERR {text}"));
    }

    /// A negative reply for a client mistake; too many of them end the session.
    fn error(&mut self, text: &str) {
        self.errors += 1;
        self.err(text);
    }

    fn line(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Write what is queued. A client that stops reading (say in the middle of a RETR) is
    /// given the same inactivity timeout as one that stops sending, then dropped.
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            let timeout = self.ctx.config.pop3.timeout;
            let w = self.reader.get_mut();
            let write = async {
                w.write_all(&self.out).await?;
                w.flush().await
            };
            match tokio::time::timeout(timeout, write).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client stopped reading"))
                }
            }
            self.out.clear();
        }
        Ok(())
    }

    async fn read_line(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut line = Vec::with_capacity(128);
        let timeout = self.ctx.config.pop3.timeout;
        match tokio::time::timeout(timeout, self.read_limited(&mut line)).await {
            Err(_) => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Io(e)),
            Ok(Ok(_)) if line.is_empty() => Err(ReadError::Eof),
            Ok(Ok(false)) => Err(ReadError::TooLong),
            Ok(Ok(true)) if !line.ends_with(b"\n") => Err(ReadError::Eof),
            Ok(Ok(true)) => {
                while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    line.pop();
                }
                Ok(line)
            }
        }
    }

    async fn read_limited(&mut self, line: &mut Vec<u8>) -> std::io::Result<bool> {
        crate::net::read_line_limited(&mut self.reader, line, MAX_LINE).await
    }
}

/// The messages not marked deleted.
fn live(md: &Maildrop) -> Vec<usize> {
    (0..md.messages.len()).filter(|&i| !md.messages[i].deleted).collect()
}
