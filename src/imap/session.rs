//! One IMAP connection, generic over its stream so tests can drive it in memory.
//!
//! The loop frames one command (line + literals), parses it with imap-codec, checks the
//! state (RFC 3501 §3), runs it, and writes untagged updates of the selected mailbox where
//! RFC 3501 §7 allows them (EXPUNGE never during FETCH/STORE/SEARCH, §7.4.1).
//!
//! A [`Session`] is its `Conn` (stream, framing, replies: `conn.rs`) and its `State`
//! (`state.rs`). Command handlers are methods of `Conn` that take the state their command
//! needs as arguments (`mailbox`, `fetch`, `search`): the dispatch here matches the state
//! once and hands over the account and the selected mailbox. Nothing below this module
//! calls back into it.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imap_codec::decode::Decoder;
use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::command::{Command, CommandBody};
use imap_codec::CommandCodec;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use super::conn::{tag_of, Conn, Flow, Framed, MAX_LINE};
use super::list::{split_list_options, ListOptions};
use super::state::{Account, Selected, Selection, State};
use super::Context;
use crate::address::Address;
use crate::net::{blocking, Stream};
use crate::sasl::{decode_b64, parse_plain, sanitize};

/// Protocol errors in a row before we hang up.
const MAX_ERRORS: usize = 20;
/// Failed logins in one connection before we hang up (the guard bans repeat offenders).
const MAX_AUTH_FAILURES: usize = 3;

/// What this server does, for CAPABILITY (RFC 3501 §6.1.1). Only what works is listed.
const CAPS_COMMON: &str = "IMAP4rev1 LITERAL+ SASL-IR ID ENABLE IDLE";
const CAPS_AUTHED: &str =
    "NAMESPACE UNSELECT UIDPLUS MOVE CHILDREN SPECIAL-USE CONDSTORE QUOTA QUOTA=RES-STORAGE";

pub struct Session {
    conn: Conn,
    state: State,
}

impl Session {
    /// `tls` is true when the stream is already encrypted (port 993).
    pub fn new(ctx: Arc<Context>, stream: Box<dyn Stream>, peer: SocketAddr, tls: bool) -> Session {
        Session { conn: Conn::new(ctx, stream, peer, tls), state: State::NotAuthenticated }
    }

    fn capabilities(&self) -> String {
        let mut caps = CAPS_COMMON.to_owned();
        if matches!(self.state, State::Authenticated { .. }) {
            caps.push(' ');
            caps.push_str(CAPS_AUTHED);
        } else if self.conn.tls {
            caps.push_str(" AUTH=PLAIN");
        } else {
            // RFC 3501 §6.2.3 / RFC 8314: no passwords in clear text.
            if self.conn.ctx.tls.is_some() {
                caps.push_str(" STARTTLS");
            }
            caps.push_str(" LOGINDISABLED");
        }
        caps
    }

    pub async fn run(mut self) {
        let caps = self.capabilities();
        let greeting =
            format!("* OK [CAPABILITY {caps}] {} IMAP4rev1 posthaste ready", self.conn.ctx.config.hostname);
        self.conn.line(&greeting);
        if let Err(e) = self.run_loop().await {
            debug!(session = %self.conn.id, client = %self.conn.peer.ip(), error = %e, "imap session ended with I/O error");
        }
        let _ = self.conn.flush().await;
        let _ = self.conn.reader.get_mut().shutdown().await;
    }

    async fn run_loop(&mut self) -> io::Result<()> {
        loop {
            if self.conn.reader.buffer().is_empty() {
                self.conn.flush().await?;
            }
            let authenticated = matches!(self.state, State::Authenticated { .. });
            let raw = match self.conn.read_command(authenticated).await? {
                Framed::Command(raw) => raw,
                Framed::Rejected => {
                    if self.conn.errors >= MAX_ERRORS {
                        self.conn.line("* BYE Too many errors");
                        return Ok(());
                    }
                    continue;
                }
                Framed::Eof | Framed::Close => return Ok(()),
                Framed::Timeout => {
                    // RFC 3501 §5.4: the autologout timer.
                    self.conn.line("* BYE Autologout; idle for too long");
                    return Ok(());
                }
            };
            // LIST with RFC 5258 selection/return options, which imap-codec does not parse:
            // the subset clients use (RFC 6154 §5.1 `LIST (SPECIAL-USE) "" "*"`) is taken
            // off here and the rest parsed as a plain LIST.
            let (raw, list_opts) = match split_list_options(&raw) {
                Some((plain, opts)) => (plain, opts),
                None => (raw, ListOptions::default()),
            };
            self.conn.list_opts = list_opts;
            let flow = match CommandCodec::default().decode(&raw) {
                Ok((_, cmd)) => {
                    self.conn.errors = 0;
                    self.dispatch(cmd).await?
                }
                Err(_) => {
                    let tag = tag_of(&raw);
                    self.conn.bad(tag.as_deref(), "Syntax error in command");
                    Flow::Continue
                }
            };
            if let Flow::Close = flow {
                return Ok(());
            }
            if self.conn.auth_failures >= MAX_AUTH_FAILURES {
                self.conn.line("* BYE Too many authentication failures");
                return Ok(());
            }
            if self.conn.errors >= MAX_ERRORS {
                self.conn.line("* BYE Too many errors");
                return Ok(());
            }
        }
    }

    /// Commands of any state (RFC 3501 §6.1, §6.2), then the authenticated ones.
    async fn dispatch(&mut self, cmd: Command<'_>) -> io::Result<Flow> {
        let tag = cmd.tag.as_ref().to_owned();
        let tag = tag.as_str();
        let authenticated = matches!(self.state, State::Authenticated { .. });
        match cmd.body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.conn.line(&format!("* CAPABILITY {caps}"));
                self.conn.ok(tag, "CAPABILITY completed");
            }
            CommandBody::Noop => {
                if let State::Authenticated { mailbox: Selection::Selected(sel), .. } = &mut self.state {
                    // A sync reads the folder's files: off the async worker threads.
                    let conn = &mut self.conn;
                    blocking(|| conn.updates(sel, true, &BTreeSet::new()))?;
                }
                self.conn.ok(tag, "NOOP completed");
            }
            CommandBody::Logout => {
                self.conn.line("* BYE Logging out");
                self.conn.ok(tag, "LOGOUT completed");
                return Ok(Flow::Close);
            }
            CommandBody::StartTLS => return self.starttls(tag).await,
            CommandBody::Login { username, password } => {
                let user = String::from_utf8_lossy(username.as_ref()).into_owned();
                let pass = String::from_utf8_lossy(password.declassify().as_ref()).into_owned();
                if authenticated {
                    self.conn.bad(Some(tag), "Already logged in");
                } else if !self.conn.tls {
                    self.conn.no(tag, "[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS");
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
                self.conn.line(&format!(
                    "* ID (\"name\" \"posthaste\" \"version\" \"{}\")",
                    env!("CARGO_PKG_VERSION")
                ));
                self.conn.ok(tag, "ID completed");
            }
            body => {
                let State::Authenticated { account, mailbox } = &mut self.state else {
                    self.conn.bad(Some(tag), "Log in first");
                    return Ok(Flow::Continue);
                };
                let conn = &mut self.conn;
                match body {
                    CommandBody::Enable { capabilities } => conn.enable(tag, capabilities),
                    CommandBody::Namespace => {
                        // RFC 2342: one personal namespace, no others.
                        conn.line("* NAMESPACE ((\"\" \"/\")) NIL NIL");
                        conn.ok(tag, "NAMESPACE completed");
                    }
                    CommandBody::Idle => return conn.idle(tag, mailbox).await,
                    // Everything else works on the file system: keep it off the async
                    // worker threads.
                    body => blocking(|| dispatch_fs(conn, account, mailbox, tag, body))?,
                }
            }
        }
        Ok(Flow::Continue)
    }

    async fn starttls(&mut self, tag: &str) -> io::Result<Flow> {
        let conn = &mut self.conn;
        let Some(acceptor) = conn.ctx.tls.clone() else {
            conn.bad(Some(tag), "STARTTLS not available");
            return Ok(Flow::Continue);
        };
        if conn.tls {
            conn.bad(Some(tag), "Already using TLS");
            return Ok(Flow::Continue);
        }
        if matches!(self.state, State::Authenticated { .. }) {
            conn.bad(Some(tag), "STARTTLS only before login");
            return Ok(Flow::Continue);
        }
        conn.ok(tag, "Begin TLS negotiation now");
        conn.flush().await?;
        // Anything pipelined after STARTTLS arrived in clear text and is discarded, never
        // executed inside TLS (RFC 3501 §6.2.1, the command-injection attack CVE-2011-0411).
        if !conn.reader.buffer().is_empty() {
            warn!(session = %conn.id, client = %conn.peer.ip(), "imap: data pipelined after STARTTLS discarded");
        }
        if !crate::net::upgrade_to_tls(&mut conn.reader, &acceptor, conn.peer, "imap").await {
            return Ok(Flow::Close);
        }
        conn.tls = true;
        Ok(Flow::Continue)
    }

    async fn login(&mut self, tag: &str, user: &str, pass: &str) {
        let conn = &mut self.conn;
        match conn.ctx.directory.authenticate(user, pass).await {
            Ok(Some(account)) => {
                let Ok(address) = Address::parse(&account.address) else {
                    conn.no(tag, "[UNAVAILABLE] Account address is invalid");
                    return;
                };
                // Creating the Maildir folders is file-system work: on a blocking thread.
                let (store, addr) = (conn.ctx.store.clone(), address.clone());
                let created = tokio::task::spawn_blocking(move || store.create_account(&addr))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
                if let Err(e) = created {
                    warn!(session = %conn.id, error = %e, "imap: cannot create the account's mailboxes");
                    conn.no(tag, "[UNAVAILABLE] Mail storage is unavailable");
                    return;
                }
                info!(session = %conn.id, client = %conn.peer.ip(), protocol = "imap", user = %address, "login");
                self.state = State::Authenticated {
                    account: Account { address, quota: account.quota },
                    mailbox: Selection::NotSelected,
                };
                let caps = self.capabilities();
                self.conn.ok(tag, &format!("[CAPABILITY {caps}] Logged in"));
            }
            Ok(None) => {
                // One structured line per failure: the guard counts these per client IP.
                warn!(event = "auth_failure", session = %conn.id, client = %conn.peer.ip(), protocol = "imap",
                      user = %sanitize(user), "authentication failed");
                // Slow down guessing a little.
                tokio::time::sleep(Duration::from_millis(300)).await;
                conn.auth_failures += 1;
                guard_auth_failure(conn);
                conn.no(tag, "[AUTHENTICATIONFAILED] Invalid credentials");
            }
            Err(e) => {
                warn!(session = %conn.id, error = %e, "imap: directory error during login");
                conn.no(tag, "[UNAVAILABLE] Temporary authentication failure");
            }
        }
    }

    async fn authenticate(
        &mut self,
        tag: &str,
        mech: &AuthMechanism<'_>,
        ir: Option<Vec<u8>>,
    ) -> io::Result<()> {
        let conn = &mut self.conn;
        if matches!(self.state, State::Authenticated { .. }) {
            conn.bad(Some(tag), "Already logged in");
            return Ok(());
        }
        if !conn.tls {
            conn.no(tag, "[PRIVACYREQUIRED] Authentication is disabled before STARTTLS");
            return Ok(());
        }
        if !matches!(mech, AuthMechanism::Plain) {
            conn.no(tag, "[CANNOT] Unsupported mechanism; use PLAIN");
            return Ok(());
        }
        let raw = match ir {
            Some(ir) => ir,
            None => {
                // RFC 3501 §6.2.2: an empty challenge, one base64 line back ("*" cancels).
                conn.line("+ ");
                conn.flush().await?;
                let timeout = conn.ctx.config.imap.idle_timeout;
                let line = match tokio::time::timeout(timeout, conn.read_line(MAX_LINE)).await {
                    Err(_) => return Ok(()),
                    Ok(r) => r?,
                };
                let Some((line, too_long)) = line else { return Ok(()) };
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if too_long {
                    conn.bad(Some(tag), "Response too long");
                    return Ok(());
                }
                if text == "*" {
                    conn.bad(Some(tag), "Authentication cancelled");
                    return Ok(());
                }
                match decode_b64(&text) {
                    Some(raw) => raw,
                    None => {
                        conn.bad(Some(tag), "Invalid base64");
                        return Ok(());
                    }
                }
            }
        };
        match parse_plain(&raw) {
            Some((user, pass)) => self.login(tag, &user, &pass).await,
            None => {
                warn!(event = "auth_failure", session = %conn.id, client = %conn.peer.ip(), protocol = "imap",
                      user = "", "malformed AUTHENTICATE PLAIN");
                conn.auth_failures += 1;
                guard_auth_failure(conn);
                conn.no(tag, "[AUTHENTICATIONFAILED] Malformed PLAIN response");
            }
        }
        Ok(())
    }
}

/// Count a failed login with the guard; when it bans the client, end the session at
/// once (the next check of `auth_failures` says BYE).
fn guard_auth_failure(conn: &mut Conn) {
    if conn
        .ctx
        .guard
        .record(conn.peer.ip(), crate::guard::Event::AuthFailure { protocol: "imap" })
        .is_banned()
    {
        conn.auth_failures = conn.auth_failures.max(MAX_AUTH_FAILURES);
    }
}

/// The commands of the authenticated and selected states (RFC 3501 §6.3, §6.4), run on
/// a blocking thread.
fn dispatch_fs(
    conn: &mut Conn,
    account: &Account,
    mailbox: &mut Selection,
    tag: &str,
    body: CommandBody<'_>,
) -> io::Result<()> {
    match body {
        CommandBody::Select { mailbox: m, parameters } => {
            let condstore = !parameters.is_empty();
            conn.select(account, mailbox, tag, &m, false, condstore)?
        }
        CommandBody::Examine { mailbox: m, parameters } => {
            let condstore = !parameters.is_empty();
            conn.select(account, mailbox, tag, &m, true, condstore)?
        }
        CommandBody::Create { mailbox: m } => conn.create(account, tag, &m),
        CommandBody::Delete { mailbox: m } => conn.delete(account, mailbox, tag, &m),
        CommandBody::Rename { from, to } => conn.rename(account, tag, &from, &to),
        CommandBody::Subscribe { mailbox: m } => conn.subscribe(account, tag, &m, true),
        CommandBody::Unsubscribe { mailbox: m } => conn.subscribe(account, tag, &m, false),
        CommandBody::List { reference, mailbox_wildcard } => {
            conn.list(account, tag, &reference, &list_pattern(&mailbox_wildcard), false)
        }
        CommandBody::Lsub { reference, mailbox_wildcard } => {
            conn.list(account, tag, &reference, &list_pattern(&mailbox_wildcard), true)
        }
        CommandBody::Status { mailbox: m, item_names } => conn.status(account, mailbox, tag, &m, &item_names),
        CommandBody::Append { mailbox: m, flags, date, message } => {
            let data: &[u8] = match &message {
                imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal(l) => l.as_ref(),
                imap_codec::imap_types::extensions::binary::LiteralOrLiteral8::Literal8(l) => l.data.as_ref(),
            };
            let data = data.to_vec();
            conn.append(account, mailbox, tag, &m, &flags, date.as_ref().map(|d| *d.as_ref()), &data)?
        }
        CommandBody::GetQuota { root } => {
            let root = String::from_utf8_lossy(root.as_ref()).into_owned();
            conn.get_quota(account, tag, &root)
        }
        CommandBody::GetQuotaRoot { mailbox: m } => conn.get_quota_root(account, tag, &m),
        CommandBody::SetQuota { .. } => conn.no(tag, "[NOPERM] Quotas are set by the administrator"),
        CommandBody::Close => match std::mem::replace(mailbox, Selection::NotSelected) {
            // RFC 3501 §6.4.2: expunge silently, unless read-only.
            Selection::Selected(mut sel) => {
                if !sel.read_only {
                    if let Err(e) = sel.mb.expunge_deleted() {
                        warn!(session = %conn.id, error = %e, "imap: CLOSE expunge failed");
                    }
                }
                conn.ok(tag, "CLOSE completed");
            }
            Selection::NotSelected => conn.bad(Some(tag), "No mailbox selected"),
        },
        CommandBody::Unselect => match std::mem::replace(mailbox, Selection::NotSelected) {
            Selection::Selected(_) => conn.ok(tag, "UNSELECT completed"),
            Selection::NotSelected => conn.bad(Some(tag), "No mailbox selected"),
        },
        body => match mailbox {
            Selection::Selected(sel) => dispatch_selected(conn, account, sel, tag, body)?,
            Selection::NotSelected => conn.bad(Some(tag), "No mailbox selected"),
        },
    }
    Ok(())
}

/// The commands of the selected state (RFC 3501 §6.4).
fn dispatch_selected(
    conn: &mut Conn,
    account: &Account,
    sel: &mut Selected,
    tag: &str,
    body: CommandBody<'_>,
) -> io::Result<()> {
    match body {
        CommandBody::Check => {
            conn.updates(sel, true, &BTreeSet::new())?;
            conn.ok(tag, "CHECK completed");
        }
        CommandBody::Expunge => conn.expunge(sel, tag, None)?,
        CommandBody::ExpungeUid { sequence_set } => conn.expunge(sel, tag, Some(&sequence_set))?,
        CommandBody::Fetch { sequence_set, macro_or_item_names, uid, modifiers } => {
            conn.fetch(sel, tag, &sequence_set, macro_or_item_names, uid, &modifiers)?
        }
        CommandBody::Store { sequence_set, kind, response, flags, uid, modifiers } => {
            conn.store(sel, tag, &sequence_set, kind, response, &flags, uid, &modifiers)?
        }
        CommandBody::Copy { sequence_set, mailbox, uid } => {
            conn.copy_move(account, sel, tag, &sequence_set, &mailbox, uid, false)?
        }
        CommandBody::Move { sequence_set, mailbox, uid } => {
            conn.copy_move(account, sel, tag, &sequence_set, &mailbox, uid, true)?
        }
        CommandBody::Search { charset, criteria, uid } => {
            let charset = charset.map(|c| c.as_ref().to_owned());
            conn.search(sel, tag, charset.as_deref(), &criteria, uid)?
        }
        _ => conn.bad(Some(tag), "Command not supported"),
    }
    Ok(())
}

fn list_pattern(m: &imap_codec::imap_types::mailbox::ListMailbox<'_>) -> Vec<u8> {
    use imap_codec::imap_types::mailbox::ListMailbox;
    match m {
        ListMailbox::Token(t) => t.as_ref().to_vec(),
        ListMailbox::String(s) => s.as_ref().to_vec(),
    }
}
