//! Minimal SMTP, IMAP and POP3 client sessions for the smoke test: just enough protocol to
//! send one message and read it back, over plain TCP, STARTTLS/STLS or implicit TLS.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::net::Stream;

/// Each network step (connect, one reply) must finish within this.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts exactly the certificate the daemon is configured with ([tls] cert): the smoke
/// test proves that every listener presents *that* certificate (not a stale one, not
/// another server's), which also works for self-signed certificates. Signatures are still
/// checked against the certificate's key.
#[derive(Debug)]
pub struct PinnedCert {
    expected: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server presented a different certificate than the one in [tls] cert (restart the daemon after replacing it)".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client config that trusts exactly `cert` (DER).
pub fn pinned_client(cert: CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    crate::tls::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(PinnedCert { expected: cert, provider: provider.clone() });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// One line-oriented connection.
pub struct Conn {
    reader: BufReader<Box<dyn Stream>>,
    /// What TLS was negotiated, e.g. "TLSv1.3" (None: plain text).
    pub tls: Option<String>,
    /// The literals of the last IMAP response, byte for byte (a fetched message).
    pub literals: Vec<Vec<u8>>,
}

async fn step<T>(what: &str, fut: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    match tokio::time::timeout(STEP_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => bail!("no answer within {}s while {what}", STEP_TIMEOUT.as_secs()),
    }
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Conn> {
        let tcp = step("connecting", async {
            TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))
        })
        .await?;
        let _ = tcp.set_nodelay(true);
        Ok(Conn { reader: BufReader::new(Box::new(tcp)), tls: None, literals: Vec::new() })
    }

    /// Implicit TLS (465, 993, 995).
    pub async fn connect_tls(
        addr: SocketAddr,
        tls: &Arc<rustls::ClientConfig>,
        name: &str,
    ) -> anyhow::Result<Conn> {
        let mut conn = Conn::connect(addr).await?;
        conn.start_tls(tls, name).await?;
        Ok(conn)
    }

    /// Implicit TLS when `implicit` (465, 993, 995), else plain for a later STARTTLS/STLS.
    pub async fn open(
        addr: SocketAddr,
        implicit: bool,
        tls: &Arc<rustls::ClientConfig>,
        name: &str,
    ) -> anyhow::Result<Conn> {
        if implicit {
            Conn::connect_tls(addr, tls, name).await
        } else {
            Conn::connect(addr).await
        }
    }

    /// Switch this connection to TLS (after STARTTLS/STLS was accepted, or at once).
    pub async fn start_tls(&mut self, tls: &Arc<rustls::ClientConfig>, name: &str) -> anyhow::Result<()> {
        if !self.reader.buffer().is_empty() {
            bail!("the server sent data before the TLS handshake (STARTTLS injection?)");
        }
        let server_name = ServerName::try_from(name.to_owned()).context("invalid TLS server name")?;
        let placeholder: Box<dyn Stream> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.reader, BufReader::new(placeholder)).into_inner();
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = step("in the TLS handshake", async {
            connector.connect(server_name, plain).await.context("TLS handshake failed")
        })
        .await?;
        let version =
            stream.get_ref().1.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS").replace('_', ".");
        self.tls = Some(version);
        self.reader = BufReader::new(Box::new(stream));
        Ok(())
    }

    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        let w = self.reader.get_mut();
        step("sending", async {
            w.write_all(line.as_bytes()).await?;
            w.write_all(b"\r\n").await?;
            w.flush().await?;
            Ok(())
        })
        .await
    }

    pub async fn send_raw(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let w = self.reader.get_mut();
        step("sending", async {
            w.write_all(data).await?;
            w.flush().await?;
            Ok(())
        })
        .await
    }

    pub async fn line(&mut self) -> anyhow::Result<String> {
        let r = &mut self.reader;
        step("waiting for the server", async {
            let mut buf = Vec::new();
            let n = r.read_until(b'\n', &mut buf).await?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                buf.pop();
            }
            Ok(String::from_utf8_lossy(&buf).into_owned())
        })
        .await
    }

    /// An SMTP reply (RFC 5321 §4.2: `NNN-` continues, `NNN ` ends): code and all text.
    pub async fn smtp_reply(&mut self) -> anyhow::Result<(u16, String)> {
        let mut text = Vec::new();
        loop {
            let line = self.line().await?;
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| anyhow!("not an SMTP reply: {line:?}"))?;
            text.push(line.get(4..).unwrap_or("").to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, text.join(" / ")));
            }
        }
    }

    /// Send an SMTP command and expect a reply in `want` (e.g. 2 for 2xx).
    pub async fn smtp(&mut self, cmd: &str, want: u16) -> anyhow::Result<(u16, String)> {
        self.send(cmd).await?;
        let (code, text) = self.smtp_reply().await?;
        if code / 100 != want {
            let shown = if cmd.starts_with("AUTH") { "AUTH PLAIN …" } else { cmd };
            bail!("`{shown}` was answered `{code} {text}`");
        }
        Ok((code, text))
    }

    /// Run an IMAP command; the untagged lines and the tagged OK text. Literals in the
    /// response (`{N}`) are read and appended to their line.
    pub async fn imap(&mut self, tag: &str, cmd: &str) -> anyhow::Result<Vec<String>> {
        self.send(&format!("{tag} {cmd}")).await?;
        self.literals.clear();
        let mut lines = Vec::new();
        loop {
            let mut line = self.line().await?;
            while let Some(n) = literal_len(&line) {
                let mut buf = vec![0u8; n];
                let r = &mut self.reader;
                step("reading a literal", async {
                    tokio::io::AsyncReadExt::read_exact(r, &mut buf).await?;
                    Ok(())
                })
                .await?;
                line.push('\n');
                line.push_str(&String::from_utf8_lossy(&buf));
                self.literals.push(buf);
                line.push_str(&self.line().await?);
            }
            if let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
                if rest.starts_with("OK") {
                    lines.push(rest.to_owned());
                    return Ok(lines);
                }
                let shown = if cmd.starts_with("LOGIN") { "LOGIN …" } else { cmd };
                bail!("`{shown}` was answered `{rest}`");
            }
            lines.push(line);
        }
    }

    /// A POP3 command answered `+OK` (RFC 1939 §3); the first line's text.
    pub async fn pop3(&mut self, cmd: &str) -> anyhow::Result<String> {
        self.send(cmd).await?;
        let line = self.line().await?;
        match line.strip_prefix("+OK") {
            Some(rest) => Ok(rest.trim().to_owned()),
            None => {
                let shown = if cmd.starts_with("PASS") || cmd.starts_with("AUTH") { "PASS …" } else { cmd };
                bail!("`{shown}` was answered `{line}`")
            }
        }
    }

    /// The rest of a POP3 multi-line response, dot-unstuffed (RFC 1939 §3).
    pub async fn pop3_multiline(&mut self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await?;
            if line == "." {
                return Ok(out);
            }
            out.push(line.strip_prefix('.').map(str::to_owned).unwrap_or(line));
        }
    }
}

/// `… {123}` at the end of an IMAP response line announces a literal of 123 octets.
fn literal_len(line: &str) -> Option<usize> {
    let open = line.rfind('{')?;
    let inner = line[open + 1..].strip_suffix('}')?;
    inner.trim_end_matches('+').parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn literal_lengths() {
        assert_eq!(super::literal_len("* 1 FETCH (BODY[] {42}"), Some(42));
        assert_eq!(super::literal_len("* 1 FETCH (FLAGS (\\Seen))"), None);
        assert_eq!(super::literal_len("a {7+}"), Some(7));
    }
}
