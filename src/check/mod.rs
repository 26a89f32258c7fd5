//! `posthaste check`: the smoke test. It talks to the running daemon as a client would and
//! proves that mail really goes in and comes out:
//!
//! - every TLS listener completes a handshake and presents the configured certificate;
//! - the MX (port 25) accepts a recipient of a local domain and refuses to relay;
//! - a message submitted with AUTH (587 with STARTTLS, else 465) is read back over IMAP and
//!   over POP3.
//!
//! It sends as an account whose password it knows: the one given (`--user` with
//! `--password-file`; the installer passes the postmaster's), or else a temporary account
//! `posthaste-check-…@<first domain>` with a random password, created for the run and
//! removed with its Maildir afterwards — so it never needs a stored secret.

pub mod client;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::config::Config;
use crate::directory::Directory;
use crate::store::Store;
use client::Conn;

/// The last report, saved in the data directory by `posthaste check` for the web
/// dashboard.
pub const LAST_REPORT: &str = "check-last.json";

/// How long the delivered message may take to show up in the mailbox.
const DELIVERY_WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// Stable for scripts (`tls.imaps`, `mx.relay`, `filter.gtube`; see [`CheckId`]):
    /// unlike the name it never holds an address or a port.
    pub id: String,
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub millis: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub ok: bool,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub checks: Vec<Outcome>,
}

impl Report {
    pub fn new(checks: Vec<Outcome>) -> Report {
        let n = |s| checks.iter().filter(|c| c.status == s).count();
        let (passed, failed, skipped) = (n(Status::Pass), n(Status::Fail), n(Status::Skip));
        Report { ok: failed == 0, passed, failed, skipped, checks }
    }

    /// The table for a terminal.
    pub fn table(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(5).max(5);
        let mut out = format!("{:width$}  RESULT  TIME     DETAIL\n", "CHECK");
        for c in &self.checks {
            let result = match c.status {
                Status::Pass => "pass",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            let time = format!("{}ms", c.millis);
            out.push_str(&format!("{:width$}  {result:6}  {time:>7}  {}\n", c.name, c.detail));
        }
        out.push_str(&format!("{} passed, {} failed, {} skipped\n", self.passed, self.failed, self.skipped));
        out
    }
}

/// What a check row is about. Its `Display` is the row's stable `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckId {
    /// TLS on the `nth` (from 0) address of a listener: `tls.imaps`, then `tls.imaps.2`, ….
    Tls {
        listener: &'static str,
        nth: usize,
    },
    TemporaryAccount,
    MxLocal,
    MxRelay,
    Submission,
    ImapReadBack,
    Pop3ReadBack,
    Dkim,
    /// A filter component answers its health check (`rspamd`, `rspamd controller`, `clamd`).
    FilterAnswers(&'static str),
    SpamFilter,
    VirusFilter,
    CleanupMessage,
    CleanupAccount,
}

impl std::fmt::Display for CheckId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckId::Tls { listener, nth: 0 } => write!(f, "tls.{listener}"),
            CheckId::Tls { listener, nth } => write!(f, "tls.{listener}.{}", nth + 1),
            CheckId::TemporaryAccount => f.write_str("account.temporary"),
            CheckId::MxLocal => f.write_str("mx.local"),
            CheckId::MxRelay => f.write_str("mx.relay"),
            CheckId::Submission => f.write_str("submission"),
            CheckId::ImapReadBack => f.write_str("imap.read"),
            CheckId::Pop3ReadBack => f.write_str("pop3.read"),
            CheckId::Dkim => f.write_str("dkim"),
            CheckId::FilterAnswers(component) => write!(f, "filter.{}", component.replace(' ', "-")),
            CheckId::SpamFilter => f.write_str("filter.gtube"),
            CheckId::VirusFilter => f.write_str("filter.eicar"),
            CheckId::CleanupMessage => f.write_str("cleanup.message"),
            CheckId::CleanupAccount => f.write_str("cleanup.account"),
        }
    }
}

/// The account the check sends as.
#[derive(Clone)]
pub struct Credentials {
    pub address: Address,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("address", &self.address).finish_non_exhaustive()
    }
}

/// Everything a run needs that must be read before privileges are dropped.
pub struct Prepared {
    /// The certificate every TLS listener must present (first one in [tls] cert).
    pub cert: Option<CertificateDer<'static>>,
    pub cert_problem: Option<String>,
    pub credentials: Option<Credentials>,
}

/// Read the certificate (root may own it) and the password file, if any.
pub fn prepare(config: &Config, credentials: Option<Credentials>) -> Prepared {
    let (cert, cert_problem) = match &config.tls {
        None => (None, Some("no [tls] section: TLS listeners cannot work".to_owned())),
        Some(tls) => match std::fs::read(&tls.cert) {
            Err(e) => (None, Some(format!("cannot read tls.cert {}: {e}", tls.cert.display()))),
            Ok(pem) => match rustls_pemfile::certs(&mut pem.as_slice()).next() {
                Some(Ok(c)) => (Some(c), None),
                _ => (None, Some(format!("{} holds no PEM certificate", tls.cert.display()))),
            },
        },
    };
    Prepared { cert, cert_problem, credentials }
}

/// Where a client on this machine reaches a listener bound to `addr`.
pub fn local_target(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        // `[::]` is bound dual-stack, or on IPv4 only on a host without IPv6 (src/serve.rs):
        // 127.0.0.1 reaches it either way, ::1 only in the first case.
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port()),
        _ => addr,
    }
}

fn first(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs.first().copied().map(local_target)
}

struct Runner {
    checks: Vec<Outcome>,
}

impl Runner {
    fn record(
        &mut self,
        id: CheckId,
        name: impl Into<String>,
        started: Instant,
        result: anyhow::Result<String>,
    ) -> bool {
        let millis = started.elapsed().as_millis() as u64;
        let (status, detail) = match result {
            Ok(d) => (Status::Pass, d),
            Err(e) => (Status::Fail, format!("{e:#}")),
        };
        self.checks.push(Outcome { id: id.to_string(), name: name.into(), status, detail, millis });
        status == Status::Pass
    }

    fn skip(&mut self, id: CheckId, name: impl Into<String>, why: impl Into<String>) {
        self.checks.push(Outcome {
            id: id.to_string(),
            name: name.into(),
            status: Status::Skip,
            detail: why.into(),
            millis: 0,
        });
    }
}

/// Run every check against the daemon `config` describes. The directory is used only to
/// create and remove the temporary account when no credentials were given.
pub async fn run(config: &Config, prepared: Prepared) -> Report {
    let mut r = Runner { checks: Vec::new() };
    let tls = prepared.cert.clone().map(client::pinned_client);
    let host = config.hostname.clone();

    // 1. TLS on every listener that speaks it (all of them do: STARTTLS/STLS or implicit).
    for (name, addrs) in config.listeners() {
        for (nth, addr) in addrs.iter().copied().map(local_target).enumerate() {
            let id = CheckId::Tls { listener: name, nth };
            let label = format!("tls {name} {addr}");
            let Some(tls) = &tls else {
                r.record(
                    id,
                    label,
                    Instant::now(),
                    Err(anyhow!("{}", prepared.cert_problem.clone().unwrap_or_default())),
                );
                continue;
            };
            let started = Instant::now();
            let result = tls_handshake(name, addr, tls, &host).await;
            r.record(id, label, started, result);
        }
    }

    // 2. The account to send as.
    let started = Instant::now();
    let (creds, temporary) = match prepared.credentials.clone() {
        Some(c) => (Some(c), None),
        None => match temporary_account(config).await {
            Ok((c, dir)) => {
                r.record(
                    CheckId::TemporaryAccount,
                    "temporary account",
                    started,
                    Ok(format!("{} created for this run", c.address)),
                );
                (Some(c.clone()), Some((c, dir)))
            }
            Err(e) => {
                r.record(CheckId::TemporaryAccount, "temporary account", started, Err(e));
                (None, None)
            }
        },
    };

    // 3. The MX: a local recipient is accepted, relaying is refused.
    match (first(&config.listen.smtp), &creds) {
        (None, _) => r.skip(CheckId::MxLocal, "mx accepts local mail", "listen.smtp is not configured"),
        (Some(_), None) => r.skip(CheckId::MxLocal, "mx accepts local mail", "no account to address"),
        (Some(addr), Some(c)) => {
            let started = Instant::now();
            let result = mx_local(addr, &c.address).await;
            r.record(CheckId::MxLocal, format!("mx accepts local mail {addr}"), started, result);
        }
    }
    if let Some(addr) = first(&config.listen.smtp) {
        // A sender of our own: an open relay that trusts "local" senders is caught too,
        // and a refusal cannot be about a foreign sender (SPF, sender verification).
        let sender = match &creds {
            Some(c) => c.address.clone(),
            None => Address::parse(&format!("posthaste-check@{}", config.hostname))
                .unwrap_or_else(|_| Address::parse("posthaste-check@localhost.localdomain").expect("valid")),
        };
        let started = Instant::now();
        let result = mx_relay(addr, &sender).await;
        r.record(CheckId::MxRelay, format!("mx refuses relaying {addr}"), started, result);
    } else {
        r.skip(CheckId::MxRelay, "mx refuses relaying", "listen.smtp is not configured");
    }

    // 4. Submission → IMAP and POP3.
    let token = format!("posthaste-check-{}", uuid::Uuid::new_v4().simple());
    let submit = match (&creds, &tls) {
        (None, _) => Err("no account to send as".to_owned()),
        (_, None) => Err("no TLS certificate: AUTH needs TLS".to_owned()),
        (Some(c), Some(tls)) => Ok((c, tls)),
    };
    let mut sent = false;
    match &submit {
        Err(why) => r.skip(CheckId::Submission, "submission", why.clone()),
        Ok((c, tls)) => {
            let (addr, implicit) = match (first(&config.listen.submission), first(&config.listen.submissions))
            {
                (Some(a), _) => (Some(a), false),
                (None, Some(a)) => (Some(a), true),
                (None, None) => (None, false),
            };
            match addr {
                None => r.skip(
                    CheckId::Submission,
                    "submission",
                    "neither listen.submission nor listen.submissions is configured",
                ),
                Some(addr) => {
                    let started = Instant::now();
                    let result = submit_message(addr, implicit, tls, &host, c, &token).await;
                    sent =
                        r.record(CheckId::Submission, format!("submission {addr} (AUTH)"), started, result);
                }
            }
        }
    }

    let imap_addr = match (first(&config.listen.imaps), first(&config.listen.imap)) {
        (Some(a), _) => Some((a, true)),
        (None, Some(a)) => Some((a, false)),
        _ => None,
    };
    let pop3_addr = match (first(&config.listen.pop3s), first(&config.listen.pop3)) {
        (Some(a), _) => Some((a, true)),
        (None, Some(a)) => Some((a, false)),
        _ => None,
    };
    // The IMAP session stays open until the POP3 check is done, then removes the message.
    let mut imap = None;
    let mut delivered: Option<Vec<u8>> = None;
    match (imap_addr, sent, &submit) {
        (None, _, _) => r.skip(
            CheckId::ImapReadBack,
            "imap reads it back",
            "neither listen.imaps nor listen.imap is configured",
        ),
        (Some(_), false, _) | (Some(_), _, Err(_)) => {
            r.skip(CheckId::ImapReadBack, "imap reads it back", "nothing was submitted")
        }
        (Some((addr, implicit)), true, Ok((c, tls))) => {
            let started = Instant::now();
            let result = match imap_read_back(addr, implicit, tls, &host, c, &token).await {
                Ok((detail, conn, uid, message)) => {
                    imap = Some((conn, uid));
                    delivered = Some(message);
                    Ok(detail)
                }
                Err(e) => Err(e),
            };
            r.record(CheckId::ImapReadBack, format!("imap reads it back {addr}"), started, result);
        }
    }
    match (pop3_addr, sent, &submit) {
        (None, _, _) => r.skip(
            CheckId::Pop3ReadBack,
            "pop3 reads it back",
            "neither listen.pop3s nor listen.pop3 is configured",
        ),
        (Some(_), false, _) | (Some(_), _, Err(_)) => {
            r.skip(CheckId::Pop3ReadBack, "pop3 reads it back", "nothing was submitted")
        }
        (Some((addr, implicit)), true, Ok((c, tls))) => {
            let started = Instant::now();
            let result = pop3_read_back(addr, implicit, tls, &host, c, &token).await;
            r.record(CheckId::Pop3ReadBack, format!("pop3 reads it back {addr}"), started, result);
        }
    }

    // The delivered message carries our DKIM signatures, and they verify with the keys
    // (the same keys `posthaste dns` publishes).
    match (&delivered, config.mailauth.sign) {
        (_, false) => r.skip(CheckId::Dkim, "dkim signatures", "signing is off ([mailauth] sign = false)"),
        (None, true) => r.skip(CheckId::Dkim, "dkim signatures", "no message was read back"),
        (Some(message), true) => {
            let started = Instant::now();
            let result = dkim_check(config, message).await;
            r.record(CheckId::Dkim, "dkim signatures", started, result);
        }
    }

    // 5. The filters answer, and act: GTUBE must not reach INBOX, EICAR must be refused.
    let filter = crate::filter::Filter::from_config(config);
    for (component, result) in filter.health().await {
        let started = Instant::now();
        let result = result.map_err(|e| match component {
            // The usual reason on a new server: no signatures yet.
            "clamd" => anyhow!(
                "{e} — clamd starts only once freshclam has downloaded its signatures (~250 MB, \
                 a few minutes on a new server; it needs HTTPS to database.clamav.net): see \
                 the freshclam and clamd services' status and logs, or turn antivirus off in the answers"
            ),
            _ => anyhow!("{e}"),
        });
        r.record(CheckId::FilterAnswers(component), format!("{component} answers"), started, result);
    }
    for (what, enabled, off) in [
        (Content::Gtube, config.antispam.is_some(), "antispam is off ([antispam] is not configured)"),
        (Content::Eicar, config.antivirus.is_some(), "antivirus is off ([antivirus] is not configured)"),
    ] {
        let (name, id) = (what.check_name(), what.check_id());
        let (addr, c) = match (enabled, first(&config.listen.smtp), &creds) {
            (false, _, _) => {
                r.skip(id, name, off);
                continue;
            }
            (true, None, _) => {
                r.skip(id, name, "listen.smtp is not configured");
                continue;
            }
            (true, _, None) => {
                r.skip(id, name, "no account to address");
                continue;
            }
            (true, Some(addr), Some(c)) => (addr, c),
        };
        let started = Instant::now();
        let verdict = content_check(addr, &c.address, &token, what).await;
        let result = match (verdict, imap_addr, &submit) {
            // Spam that was accepted must be in Junk, not in INBOX.
            (Ok(accepted @ Verdict::AcceptedForJunk { .. }), Some((imap_at, implicit)), Ok((_, tls))) => {
                find_in_junk(imap_at, implicit, tls, &host, c, &token, temporary.is_none())
                    .await
                    .map(|where_| format!("{accepted}; {where_}"))
            }
            (verdict, _, _) => verdict.map(|v| v.to_string()),
        };
        r.record(id, format!("{name} {addr}"), started, result);
    }

    // 6. Leave nothing behind: the message (a real account's INBOX), or the whole
    // temporary account.
    if let (Some((mut conn, uid)), None) = (imap, &temporary) {
        let started = Instant::now();
        let result = imap_delete(&mut conn, uid).await;
        if result.is_err() {
            r.record(CheckId::CleanupMessage, "clean up the test message", started, result);
        }
    }
    if let Some((c, dir)) = temporary {
        let started = Instant::now();
        let result = remove_temporary(config, &dir, &c.address).await;
        if result.is_err() {
            r.record(CheckId::CleanupAccount, "remove the temporary account", started, result);
        }
    }
    Report::new(r.checks)
}

async fn tls_handshake(
    name: &str,
    addr: SocketAddr,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
) -> anyhow::Result<String> {
    let conn = match name {
        "submissions" | "imaps" | "pop3s" => Conn::connect_tls(addr, tls, host).await?,
        "smtp" | "submission" => {
            let mut c = Conn::connect(addr).await?;
            c.smtp_reply().await.and_then(|(code, t)| expect(code, 220, &t))?;
            c.smtp("EHLO posthaste-check", 2).await?;
            c.smtp("STARTTLS", 2).await?;
            c.start_tls(tls, host).await?;
            c.smtp("EHLO posthaste-check", 2).await?;
            c.send("QUIT").await?;
            c
        }
        "imap" => {
            let mut c = Conn::connect(addr).await?;
            c.line().await?;
            c.imap("a1", "STARTTLS").await?;
            c.start_tls(tls, host).await?;
            c.imap("a2", "CAPABILITY").await?;
            c
        }
        "pop3" => {
            let mut c = Conn::connect(addr).await?;
            c.line().await?;
            c.pop3("STLS").await?;
            c.start_tls(tls, host).await?;
            c.pop3("CAPA").await?;
            c.pop3_multiline().await?;
            c
        }
        other => bail!("unknown listener {other}"),
    };
    let how = if matches!(name, "submissions" | "imaps" | "pop3s") { "implicit TLS" } else { "STARTTLS" };
    Ok(format!("{how}, {}, presents the configured certificate", conn.tls.unwrap_or_default()))
}

fn expect(code: u16, want: u16, text: &str) -> anyhow::Result<()> {
    if code != want {
        bail!("expected {want}, got `{code} {text}`");
    }
    Ok(())
}

async fn dkim_check(config: &Config, message: &[u8]) -> anyhow::Result<String> {
    let signatures = crate::mailauth::MailAuth::from_config(config).verify_own(message).await;
    if signatures.is_empty() {
        bail!(
            "the message has no DKIM signature of ours (are the domain's keys in {}?)",
            config.dkim_dir().display()
        );
    }
    let shown: Vec<String> =
        signatures.iter().map(|s| format!("{} {}={}", s.algorithm, s.selector, s.result)).collect();
    if let Some(bad) = signatures.iter().find(|s| !s.passed()) {
        bail!(
            "{} does not verify: {} ({})",
            bad.algorithm,
            bad.result,
            bad.reason.clone().unwrap_or_default()
        );
    }
    if signatures.len() < 2 {
        bail!("only {} signature(s), expected Ed25519 and RSA: {}", signatures.len(), shown.join(", "));
    }
    Ok(format!("d={}: {}", signatures[0].domain, shown.join(", ")))
}

#[derive(Clone, Copy, PartialEq)]
enum Content {
    Gtube,
    Eicar,
}

impl Content {
    fn check_name(self) -> &'static str {
        match self {
            Content::Gtube => "spam filter (GTUBE)",
            Content::Eicar => "virus filter (EICAR)",
        }
    }

    fn check_id(self) -> CheckId {
        match self {
            Content::Gtube => CheckId::SpamFilter,
            Content::Eicar => CheckId::VirusFilter,
        }
    }
}

/// How the MX answered a test message at the end of DATA, when that was what it should do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Refused {
        code: u16,
        text: String,
    },
    /// Spam may be accepted, but then only for the Junk folder (the caller looks there).
    AcceptedForJunk {
        code: u16,
        text: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Refused { code, text } => write!(f, "refused at the end of DATA: {code} {text}"),
            Verdict::AcceptedForJunk { code, text } => {
                write!(f, "accepted for the Junk folder: {code} {text}")
            }
        }
    }
}

/// The GTUBE string: every spam filter scores it as certain spam (rspamd: reject).
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// The EICAR test file, which every virus scanner reports; assembled at run time so the
/// binary itself never carries the signature.
fn eicar() -> String {
    ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$", "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"].concat()
}

/// Offer a test message to the MX: the filter must refuse it at the end of DATA (or, for
/// spam, accept it only for the Junk folder — which the temporary account's removal or
/// the account's own clean-up takes care of; a real account gets a visible Junk message).
async fn content_check(
    addr: SocketAddr,
    rcpt: &Address,
    token: &str,
    what: Content,
) -> anyhow::Result<Verdict> {
    let mut c = Conn::connect(addr).await?;
    let (code, text) = c.smtp_reply().await?;
    expect(code, 220, &text)?;
    c.smtp("EHLO posthaste-check.invalid", 2).await?;
    c.smtp("MAIL FROM:<>", 2).await?;
    c.smtp(&format!("RCPT TO:<{rcpt}>"), 2).await?;
    c.smtp("DATA", 3).await?;
    let (subject, body) = match what {
        Content::Gtube => ("spam filter test", GTUBE.to_owned()),
        Content::Eicar => ("virus filter test", eicar()),
    };
    let message = format!(
        "From: <check@posthaste-check.invalid>\r\nTo: <{rcpt}>\r\nSubject: {subject} {token}\r\n\
         Message-ID: <{token}.{}@posthaste-check.invalid>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}\r\n.\r\n",
        if what == Content::Gtube { "gtube" } else { "eicar" }
    );
    c.send_raw(message.as_bytes()).await?;
    let (code, text) = c.smtp_reply().await?;
    let _ = c.send("QUIT").await;
    match (what, code / 100) {
        (_, 5) => Ok(Verdict::Refused { code, text }),
        (Content::Gtube, 2) => Ok(Verdict::AcceptedForJunk { code, text }),
        (Content::Eicar, 2) => {
            Err(anyhow!("the EICAR test virus was accepted ({code} {text}): clamd did not find it"))
        }
        (_, 4) => {
            Err(anyhow!("temporary failure {code} {text}: is the filter running? (see the daemon's log)"))
        }
        _ => Err(anyhow!("unexpected reply {code} {text}")),
    }
}

/// The GTUBE message with `token` must be in Junk (RFC 6154 \\Junk) and not in INBOX;
/// `delete`: remove it afterwards (a real account).
async fn find_in_junk(
    addr: SocketAddr,
    implicit: bool,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    creds: &Credentials,
    token: &str,
    delete: bool,
) -> anyhow::Result<String> {
    let mut c = imap_session(addr, implicit, tls, host, creds).await?;
    let started = Instant::now();
    let search = format!("UID SEARCH HEADER Subject \"spam filter test {token}\"");
    let uid = loop {
        c.imap("j1", "SELECT Junk").await?;
        if let Some(uid) = search_uids(&c.imap("j2", &search).await?).first() {
            break *uid;
        }
        c.imap("j3", "EXAMINE INBOX").await?;
        if !search_uids(&c.imap("j4", &search).await?).is_empty() {
            bail!("the GTUBE message was delivered to INBOX, not to Junk");
        }
        if started.elapsed() > DELIVERY_WAIT {
            bail!(
                "the accepted GTUBE message is in neither Junk nor INBOX after {}s",
                DELIVERY_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if delete {
        c.imap("j5", &format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)")).await?;
        c.imap("j6", &format!("UID EXPUNGE {uid}")).await?;
    }
    c.imap("j7", "LOGOUT").await.ok();
    Ok("found in Junk".into())
}

async fn mx_local(addr: SocketAddr, rcpt: &Address) -> anyhow::Result<String> {
    let mut c = Conn::connect(addr).await?;
    let (code, text) = c.smtp_reply().await?;
    expect(code, 220, &text)?;
    c.smtp("EHLO posthaste-check.invalid", 2).await?;
    // The null sender: no SPF/DMARC verdict about our own domain can get in the way.
    c.smtp("MAIL FROM:<>", 2).await?;
    let (code, _) = c.smtp(&format!("RCPT TO:<{rcpt}>"), 2).await?;
    c.smtp("RSET", 2).await?;
    c.send("QUIT").await?;
    Ok(format!("RCPT TO:<{rcpt}> → {code} (transaction reset, nothing sent)"))
}

/// A local sender and a remote recipient without AUTH: the MX must refuse the recipient,
/// and for the reason that it will not relay — RFC 3463 §3.8's X.7.x ("security or
/// policy status"; our own refusal is `554 5.7.1`). A `550 5.1.1 User unknown` or a
/// refusal of the sender proves nothing about relaying, so it does not count as a pass.
async fn mx_relay(addr: SocketAddr, sender: &Address) -> anyhow::Result<String> {
    let mut c = Conn::connect(addr).await?;
    let (code, text) = c.smtp_reply().await?;
    expect(code, 220, &text)?;
    c.smtp("EHLO posthaste-check.invalid", 2).await?;
    c.send(&format!("MAIL FROM:<{sender}>")).await?;
    let (mail, mail_text) = c.smtp_reply().await?;
    if mail / 100 != 2 {
        let _ = c.send("QUIT").await;
        bail!(
            "MAIL FROM:<{sender}> (a local sender) was answered `{mail} {mail_text}`, so relaying could not be tested"
        );
    }
    c.send("RCPT TO:<relay-test@example.net>").await?;
    let (code, text) = c.smtp_reply().await?;
    let _ = c.send("QUIT").await;
    let rcpt = format!("RCPT TO:<relay-test@example.net> from <{sender}> without AUTH");
    let policy = text.split_whitespace().next().is_some_and(|status| status.starts_with("5.7."));
    match code / 100 {
        5 if policy => Ok(format!("{rcpt} → {code} {text}")),
        5 => Err(anyhow!(
            "{rcpt} was answered `{code} {text}`, which is not a relay refusal (that is a 5.7.x status, RFC 3463 §3.8): whether this server relays is not proven"
        )),
        _ => Err(anyhow!("{rcpt} was answered `{code} {text}`: this server relays for anyone (open relay)")),
    }
}

async fn submit_message(
    addr: SocketAddr,
    implicit: bool,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    creds: &Credentials,
    token: &str,
) -> anyhow::Result<String> {
    let mut c = Conn::open(addr, implicit, tls, host).await?;
    let (code, text) = c.smtp_reply().await?;
    expect(code, 220, &text)?;
    c.smtp("EHLO posthaste-check", 2).await?;
    if !implicit {
        c.smtp("STARTTLS", 2).await?;
        c.start_tls(tls, host).await?;
        c.smtp("EHLO posthaste-check", 2).await?;
    }
    let plain = crate::sasl::encode_b64(format!("\0{}\0{}", creds.address, creds.password).as_bytes());
    c.smtp(&format!("AUTH PLAIN {plain}"), 2).await.context("authentication failed")?;
    let me = &creds.address;
    c.smtp(&format!("MAIL FROM:<{me}>"), 2).await?;
    c.smtp(&format!("RCPT TO:<{me}>"), 2).await?;
    c.smtp("DATA", 3).await?;
    let date = chrono::Utc::now().to_rfc2822();
    let message = format!(
        "From: <{me}>\r\nTo: <{me}>\r\nSubject: {token}\r\nDate: {date}\r\nMessage-ID: <{token}@{host}>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         This message was sent by `posthaste check` to prove that mail goes in and comes out.\r\n\
         It is deleted again by the check. Token: {token}\r\n.\r\n"
    );
    c.send_raw(message.as_bytes()).await?;
    let (code, text) = c.smtp_reply().await?;
    if code != 250 {
        bail!("the message was refused at the end of DATA: `{code} {text}`");
    }
    let _ = c.send("QUIT").await;
    Ok(format!("{} as {me}: {code} {text}", c.tls.unwrap_or_default()))
}

async fn imap_session(
    addr: SocketAddr,
    implicit: bool,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    creds: &Credentials,
) -> anyhow::Result<Conn> {
    let mut c = Conn::open(addr, implicit, tls, host).await?;
    let greeting = c.line().await?;
    if !greeting.starts_with("* OK") {
        bail!("unexpected IMAP greeting `{greeting}`");
    }
    if !implicit {
        c.imap("s1", "STARTTLS").await?;
        c.start_tls(tls, host).await?;
    }
    c.imap(
        "l1",
        &format!("LOGIN {} {}", imap_quote(&creds.address.to_string()), imap_quote(&creds.password)),
    )
    .await
    .context("IMAP login failed")?;
    Ok(c)
}

/// An IMAP quoted string (RFC 3501 §4.3).
fn imap_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// UIDs in a `* SEARCH 1 2 3` response.
fn search_uids(lines: &[String]) -> Vec<u32> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("* SEARCH"))
        .flat_map(|rest| rest.split_whitespace().filter_map(|n| n.parse().ok()).collect::<Vec<u32>>())
        .collect()
}

async fn imap_read_back(
    addr: SocketAddr,
    implicit: bool,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    creds: &Credentials,
    token: &str,
) -> anyhow::Result<(String, Conn, u32, Vec<u8>)> {
    let started = Instant::now();
    let mut c = imap_session(addr, implicit, tls, host, creds).await?;
    let mut n = 0;
    c.imap("e0", "SELECT INBOX").await?;
    let uid = loop {
        n += 1;
        // NOOP lets the server report the new message (RFC 3501 §6.1.2).
        c.imap(&format!("e{n}"), "NOOP").await?;
        let found =
            search_uids(&c.imap(&format!("f{n}"), &format!("UID SEARCH HEADER Subject {token}")).await?);
        if let Some(uid) = found.first() {
            break *uid;
        }
        if started.elapsed() > DELIVERY_WAIT {
            bail!("the submitted message did not arrive in INBOX within {}s (see `posthaste queue list` and the log)", DELIVERY_WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    c.imap("b1", &format!("UID FETCH {uid} BODY.PEEK[]")).await?;
    let message = c.literals.first().cloned().unwrap_or_default();
    if !String::from_utf8_lossy(&message).contains(&format!("Token: {token}")) {
        bail!("message UID {uid} was found but its body is not the one sent");
    }
    Ok((format!("INBOX UID {uid} after {} ms, body intact", started.elapsed().as_millis()), c, uid, message))
}

async fn imap_delete(c: &mut Conn, uid: u32) -> anyhow::Result<String> {
    c.imap("d1", &format!("UID STORE {uid} +FLAGS.SILENT (\\Deleted)")).await?;
    // UID EXPUNGE (UIDPLUS, RFC 4315 §2.1) removes only this message; a plain EXPUNGE
    // would also remove what the user had marked \Deleted.
    c.imap("d2", &format!("UID EXPUNGE {uid}")).await?;
    c.imap("d3", "LOGOUT").await.ok();
    Ok("removed".into())
}

async fn pop3_read_back(
    addr: SocketAddr,
    implicit: bool,
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    creds: &Credentials,
    token: &str,
) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        let mut c = Conn::open(addr, implicit, tls, host).await?;
        let greeting = c.line().await?;
        if !greeting.starts_with("+OK") {
            bail!("unexpected POP3 greeting `{greeting}`");
        }
        if !implicit {
            c.pop3("STLS").await?;
            c.start_tls(tls, host).await?;
        }
        c.pop3(&format!("USER {}", creds.address)).await?;
        c.pop3(&format!("PASS {}", creds.password)).await.context("POP3 login failed")?;
        let stat = c.pop3("STAT").await?;
        let count: usize = stat.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        // Newest first: the test message is almost always the last one.
        for n in (1..=count).rev() {
            c.pop3(&format!("TOP {n} 0")).await?;
            let headers = c.pop3_multiline().await?;
            if headers.iter().any(|h| h.eq_ignore_ascii_case(&format!("Subject: {token}"))) {
                c.pop3(&format!("RETR {n}")).await?;
                let body = c.pop3_multiline().await?;
                // QUIT without DELE: POP3 leaves the message for the IMAP clean-up.
                let _ = c.pop3("QUIT").await;
                if !body.iter().any(|l| l.contains(&format!("Token: {token}"))) {
                    bail!("message {n} was found but its body is not the one sent");
                }
                return Ok(format!("message {n} of {count}, body intact"));
            }
        }
        let _ = c.pop3("QUIT").await;
        if started.elapsed() > DELIVERY_WAIT {
            bail!("the submitted message is not in the POP3 maildrop after {}s", DELIVERY_WAIT.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first domain of the directory, or an error that says how to add one.
async fn first_domain(dir: &Directory) -> anyhow::Result<String> {
    dir.list_domains().await?.into_iter().next().map(|d| d.name).ok_or_else(|| {
        anyhow!("there is no domain yet\nhelp: add one with `posthaste domain add example.org`")
    })
}

async fn temporary_account(config: &Config) -> anyhow::Result<(Credentials, Directory)> {
    let dir = Directory::open(&config.directory_url()).await.context("cannot open the account directory")?;
    let domain = first_domain(&dir).await?;
    let local = format!("posthaste-check-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let address = Address::parse(&format!("{local}@{domain}"))?;
    let password = crate::sasl::encode_b64(&rand::random::<[u8; 24]>());
    dir.add_account(&address, &crate::directory::password::hash(&password), 0).await?;
    Store::new(config.mail_dir()).create_account(&address).context("cannot create its Maildir")?;
    Ok((Credentials { address, password }, dir))
}

/// The temporary account goes the way `user remove --purge` takes: its mailbox leaves the
/// live tree before it is deleted, so nothing of it is ever found at its address.
async fn remove_temporary(config: &Config, dir: &Directory, address: &Address) -> anyhow::Result<String> {
    let store = Store::new(config.mail_dir());
    crate::admin::user::remove(dir, &store, address, crate::admin::user::RemoveMail::Purge).await?;
    Ok(format!("{address} removed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        assert_eq!(local_target("0.0.0.0:25".parse().unwrap()), "127.0.0.1:25".parse().unwrap());
        // Dual-stack, or IPv4 only on a host without IPv6: 127.0.0.1 reaches it either way.
        assert_eq!(local_target("[::]:993".parse().unwrap()), "127.0.0.1:993".parse().unwrap());
        assert_eq!(local_target("192.0.2.7:587".parse().unwrap()), "192.0.2.7:587".parse().unwrap());
    }

    #[test]
    fn search_responses_give_uids() {
        let lines = vec!["* SEARCH 4 17".to_owned(), "OK done".to_owned()];
        assert_eq!(search_uids(&lines), vec![4, 17]);
        assert!(search_uids(&["* SEARCH".to_owned()]).is_empty());
    }

    #[test]
    fn report_is_ok_only_without_failures() {
        let o =
            |status| Outcome { id: "x".into(), name: "x".into(), status, detail: String::new(), millis: 1 };
        assert!(Report::new(vec![o(Status::Pass), o(Status::Skip)]).ok);
        assert!(!Report::new(vec![o(Status::Pass), o(Status::Fail)]).ok);
        let table = Report::new(vec![o(Status::Fail)]).table();
        assert!(table.contains("FAIL") && table.contains("0 passed, 1 failed, 0 skipped"), "{table}");
    }
}
