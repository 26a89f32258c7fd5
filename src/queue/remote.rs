//! A small SMTP client for delivery to one remote host (RFC 5321 §3, §4).
//!
//! Written here rather than taken from lettre because MX delivery needs every RCPT reply
//! recorded on its own (lettre aborts the transaction on the first rejected recipient).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::spool::RcptStatus;
use crate::address::Address;

/// One SMTP reply: the code and the text of every line.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// `250 2.1.0 ok` with continuation lines joined by a space.
    pub fn text(&self) -> String {
        format!("{} {}", self.code, self.lines.join(" ")).trim_end().to_owned()
    }
    /// RFC 5321 §4.2.1: 2yz positive completion, 4yz transient, 5yz permanent.
    pub fn status(&self) -> RcptStatus {
        match self.code {
            200..=299 => RcptStatus::Delivered,
            500..=599 => RcptStatus::Failed,
            _ => RcptStatus::Deferred,
        }
    }
}

/// What happened to one recipient at this host.
#[derive(Debug, Clone)]
pub struct RcptResult {
    pub status: RcptStatus,
    pub reply: String,
}

/// The outcome of a session with one host.
#[derive(Debug)]
pub enum HostResult {
    /// The transaction ran: one result per recipient, in the order given.
    Done(Vec<RcptResult>),
    /// Nothing decided here (connection failure, timeout, 4xx/5xx greeting): try the next
    /// host. `permanent` is set when the host answered 5xx.
    TryNext { reason: String, permanent: bool },
    /// The TLS handshake after STARTTLS failed: retry this host without TLS.
    TlsFailed(String),
}

/// Everything a delivery to one host needs.
pub struct Job<'a> {
    pub sender: Option<&'a Address>,
    pub rcpts: &'a [Address],
    pub message: &'a [u8],
    /// Our EHLO name.
    pub helo_name: &'a str,
    pub timeout: Duration,
    /// Some: try STARTTLS when offered, with this (non-verifying) client config.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug)]
enum SessionError {
    Io(String),
    /// The host gave a reply we cannot continue after.
    Reply(Reply),
}

impl From<std::io::Error> for SessionError {
    fn from(e: std::io::Error) -> Self {
        SessionError::Io(e.to_string())
    }
}

struct Session<S> {
    io: BufReader<S>,
    timeout: Duration,
    /// EHLO keywords, uppercased, with their parameters.
    extensions: Vec<(String, String)>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(stream: S, timeout: Duration) -> Self {
        Session { io: BufReader::new(stream), timeout, extensions: Vec::new() }
    }

    async fn read_reply(&mut self) -> Result<Reply, SessionError> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = timeout(self.timeout, (&mut self.io).take(4096).read_until(b'\n', &mut line))
                .await
                .map_err(|_| SessionError::Io("timeout waiting for the server's reply".into()))??;
            if n == 0 {
                return Err(SessionError::Io("connection closed by the server".into()));
            }
            let line = String::from_utf8_lossy(&line).trim_end().to_owned();
            let code = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let (Some(code), sep) = (code, line.as_bytes().get(3).copied()) else {
                return Err(SessionError::Io(format!("malformed reply line {line:?}")));
            };
            lines.push(line.get(4..).unwrap_or("").to_owned());
            // RFC 5321 §4.2.1: "250-" continues a multiline reply, "250 " ends it.
            if sep != Some(b'-') || lines.len() > 200 {
                return Ok(Reply { code, lines });
            }
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), SessionError> {
        let io = self.io.get_mut();
        timeout(self.timeout, async {
            io.write_all(line.as_bytes()).await?;
            io.write_all(b"\r\n").await?;
            io.flush().await
        })
        .await
        .map_err(|_| SessionError::Io("timeout sending a command".into()))??;
        Ok(())
    }

    async fn command(&mut self, line: &str) -> Result<Reply, SessionError> {
        self.send(line).await?;
        self.read_reply().await
    }

    /// EHLO, falling back to HELO when EHLO is refused (RFC 5321 §4.1.4).
    async fn hello(&mut self, name: &str) -> Result<(), SessionError> {
        let reply = self.command(&format!("EHLO {name}")).await?;
        if reply.code == 250 {
            self.extensions = reply.lines[1..]
                .iter()
                .map(|l| match l.split_once(' ') {
                    Some((k, v)) => (k.to_ascii_uppercase(), v.to_owned()),
                    None => (l.to_ascii_uppercase(), String::new()),
                })
                .collect();
            return Ok(());
        }
        self.extensions.clear();
        let reply = self.command(&format!("HELO {name}")).await?;
        if reply.code == 250 {
            Ok(())
        } else {
            Err(SessionError::Reply(reply))
        }
    }
}

impl<S> Session<S> {
    fn has(&self, keyword: &str) -> Option<&str> {
        self.extensions.iter().find(|(k, _)| k == keyword).map(|(_, v)| v.as_str())
    }
}

/// Deliver `job` to the host at `addr` (`host_name` is its name, for TLS SNI and logs).
pub async fn deliver(addr: SocketAddr, host_name: &str, job: &Job<'_>) -> HostResult {
    let stream = match timeout(job.timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return try_next(format!("connect to {host_name}[{addr}]: {e}")),
        Err(_) => return try_next(format!("connect to {host_name}[{addr}]: timed out")),
    };
    let mut session = Session::new(stream, job.timeout);
    match open(&mut session, job).await {
        Ok(()) => {}
        Err(e) => return session_failed(host_name, e),
    }
    if let (Some(tls), Some(_)) = (&job.tls, session.has("STARTTLS")) {
        return match starttls(session, tls.clone(), host_name).await {
            Ok(Some(mut tls_session)) => run(&mut tls_session, host_name, job).await,
            Ok(None) => HostResult::TlsFailed(format!("{host_name}[{addr}]: STARTTLS refused")),
            Err(e) => HostResult::TlsFailed(format!("{host_name}[{addr}]: TLS handshake: {e}")),
        };
    }
    run(&mut session, host_name, job).await
}

/// Greeting and EHLO.
async fn open<S: AsyncRead + AsyncWrite + Unpin>(
    session: &mut Session<S>,
    job: &Job<'_>,
) -> Result<(), SessionError> {
    let greeting = session.read_reply().await?;
    if greeting.code != 220 {
        return Err(SessionError::Reply(greeting));
    }
    session.hello(job.helo_name).await
}

/// RFC 3207. Opportunistic: the certificate is not verified (like Postfix `may`), because
/// an unverified encryption is still better than plaintext. Ok(None): the server refused
/// STARTTLS (the caller then retries without TLS).
async fn starttls(
    mut session: Session<TcpStream>,
    config: Arc<rustls::ClientConfig>,
    host_name: &str,
) -> Result<Option<Session<tokio_rustls::client::TlsStream<TcpStream>>>, String> {
    let timeout_d = session.timeout;
    match session.command("STARTTLS").await {
        Ok(r) if r.code == 220 => {}
        Ok(_) => return Ok(None),
        Err(e) => return Err(format!("{e:?}")),
    }
    // Anything the server sent after 220 before the handshake would be an injection
    // (CVE-2011-0411 class): refuse it.
    if !session.io.buffer().is_empty() {
        return Err("data after the STARTTLS reply".into());
    }
    let server_name =
        rustls::pki_types::ServerName::try_from(host_name.to_owned()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = session.io.into_inner();
    let tls = timeout(timeout_d, connector.connect(server_name, tcp))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(Some(Session::new(tls, timeout_d)))
}

/// After STARTTLS the session starts over with EHLO (RFC 3207 §4.2); then the transaction.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    session: &mut Session<S>,
    host_name: &str,
    job: &Job<'_>,
) -> HostResult {
    if session.extensions.is_empty() {
        if let Err(e) = session.hello(job.helo_name).await {
            return session_failed(host_name, e);
        }
    }
    match transaction(session, job).await {
        Ok(results) => {
            let _ = session.command("QUIT").await;
            HostResult::Done(results)
        }
        Err(e) => session_failed(host_name, e),
    }
}

async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    session: &mut Session<S>,
    job: &Job<'_>,
) -> Result<Vec<RcptResult>, SessionError> {
    let all = |status, reply: &str| {
        job.rcpts.iter().map(|_| RcptResult { status, reply: reply.to_owned() }).collect()
    };
    let mail = match mail_from(session, job) {
        Ok(cmd) => cmd,
        Err(reason) => return Ok(all(RcptStatus::Failed, &reason)),
    };
    let reply = session.command(&mail).await?;
    if reply.code / 100 != 2 {
        return Ok(all(reply.status(), &reply.text()));
    }
    let mut results = Vec::with_capacity(job.rcpts.len());
    for rcpt in job.rcpts {
        let reply = session.command(&format!("RCPT TO:<{rcpt}>")).await?;
        results.push(RcptResult { status: reply.status(), reply: reply.text() });
    }
    let accepted: Vec<usize> =
        (0..results.len()).filter(|&i| results[i].status == RcptStatus::Delivered).collect();
    if accepted.is_empty() {
        return Ok(results);
    }
    let reply = session.command("DATA").await?;
    let final_reply = if reply.code == 354 {
        send_data(session, job.message).await?;
        session.read_reply().await?
    } else {
        reply
    };
    for i in accepted {
        results[i] = RcptResult { status: final_reply.status(), reply: final_reply.text() };
    }
    Ok(results)
}

/// MAIL FROM with the parameters the message needs and the server offers.
fn mail_from<S>(session: &Session<S>, job: &Job<'_>) -> Result<String, String> {
    let sender = job.sender.map(|a| a.to_string()).unwrap_or_default();
    let mut cmd = format!("MAIL FROM:<{sender}>");
    // RFC 1870: declare the size; refuse early when the server's limit is lower.
    if let Some(limit) = session.has("SIZE") {
        let size = job.message.len() as u64;
        if let Ok(limit) = limit.trim().parse::<u64>() {
            if limit > 0 && size > limit {
                return Err(format!(
                    "5.3.4 message size {size} exceeds the limit {limit} of the remote server"
                ));
            }
        }
        cmd.push_str(&format!(" SIZE={size}"));
    }
    // RFC 6152: 8-bit bodies are declared. A server without 8BITMIME gets them anyway, as
    // most MTAs do; converting to 7 bit would break signatures.
    if !job.message.is_ascii() && session.has("8BITMIME").is_some() {
        cmd.push_str(" BODY=8BITMIME");
    }
    // RFC 6531 §3.4: non-ASCII addresses need SMTPUTF8; without it the mail cannot go there.
    let utf8 = !sender.is_ascii() || job.rcpts.iter().any(|r| !r.to_string().is_ascii());
    if utf8 {
        if session.has("SMTPUTF8").is_none() {
            return Err("5.6.7 the remote server does not support SMTPUTF8 (RFC 6531)".into());
        }
        cmd.push_str(" SMTPUTF8");
    }
    Ok(cmd)
}

/// The message with CRLF line ends and dot-stuffing (RFC 5321 §4.5.2), then `.` CRLF.
async fn send_data<S: AsyncRead + AsyncWrite + Unpin>(
    session: &mut Session<S>,
    message: &[u8],
) -> Result<(), SessionError> {
    let data = dot_stuff(message);
    let io = session.io.get_mut();
    let write = async {
        io.write_all(&data).await?;
        io.flush().await
    };
    // The whole message gets one timeout per 64 KiB, at least the configured one.
    let budget = session.timeout * (1 + (data.len() / 65536) as u32);
    timeout(budget, write).await.map_err(|_| SessionError::Io("timeout sending the message".into()))??;
    Ok(())
}

/// DATA content for the wire: every line ended by CRLF, dot-stuffed (RFC 5321 §4.5.2), then
/// `.` CRLF. We never emit a bare CR or LF (RFC 5321 §2.3.8), so nothing we relay can end the
/// data early at a receiver that accepts other line ends (SMTP smuggling): LF alone and CR
/// alone each end a line, and NUL bytes are dropped. Our own SMTP server refuses bare CRs
/// and NULs (src/smtp/data.rs); this also covers mail that reached the queue another way.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 40 + 5);
    let body = message.strip_suffix(b"\n").unwrap_or(message);
    if !message.is_empty() {
        for line in body.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            for piece in line.split(|&b| b == b'\r') {
                // NULs go before the dot check: "\0." must not become a lone ".".
                let cleaned;
                let piece = if memchr::memchr(0, piece).is_some() {
                    cleaned = piece.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>();
                    &cleaned[..]
                } else {
                    piece
                };
                if piece.first() == Some(&b'.') {
                    out.push(b'.');
                }
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

fn try_next(reason: String) -> HostResult {
    HostResult::TryNext { reason, permanent: false }
}

fn session_failed(host_name: &str, e: SessionError) -> HostResult {
    match e {
        SessionError::Io(msg) => try_next(format!("{host_name}: {msg}")),
        SessionError::Reply(r) => {
            HostResult::TryNext { reason: r.text(), permanent: r.status() == RcptStatus::Failed }
        }
    }
}

/// A rustls client config that accepts any certificate (opportunistic TLS, see [`starttls`]).
pub fn opportunistic_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    // The handshake signatures are still checked: they prove the peer holds the key of the
    // certificate it sent, which costs nothing and keeps the session keys honest.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_crlf() {
        assert_eq!(dot_stuff(b"a\n.b\r\n..c\n"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(dot_stuff(b"."), b"..\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn no_bare_cr_lf_or_nul_reaches_the_next_hop() {
        // The published smuggling sequences, each inside a message: on the wire every one is
        // plain content and only the final CRLF . CRLF ends the data.
        for seq in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\n",
            b"\r\n\x00.\r\n",
            b"\r\n.\x00\r\n",
            b"\r\r\n.\r\r\n",
        ] {
            let mut msg = b"Subject: x\r\n\r\nbody".to_vec();
            msg.extend_from_slice(seq);
            msg.extend_from_slice(b"MAIL FROM:<a@b>\r\n");
            let wire = dot_stuff(&msg);
            assert!(!wire.contains(&0), "{seq:?}: NUL on the wire");
            for (i, &b) in wire.iter().enumerate() {
                if b == b'\r' {
                    assert_eq!(wire.get(i + 1), Some(&b'\n'), "{seq:?}: bare CR in {wire:?}");
                }
                if b == b'\n' {
                    assert_eq!(wire[i - 1], b'\r', "{seq:?}: bare LF in {wire:?}");
                }
            }
            let end = memchr::memmem::find(&wire, b"\r\n.\r\n").map(|i| i + 5);
            assert_eq!(end, Some(wire.len()), "{seq:?}: the data ends early in {wire:?}");
        }
    }
}
