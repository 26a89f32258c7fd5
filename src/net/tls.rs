//! TLS on an accepted connection: implicit TLS (ports 465, 993, 995; RFC 8314 §3.3) and the
//! STARTTLS/STLS upgrade of a clear-text session (RFC 3207, RFC 3501 §6.2.1, RFC 2595 §4).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::Stream;

/// How long a client may take to complete a TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The server side of a TLS handshake on `stream`, within [`TLS_HANDSHAKE_TIMEOUT`]. None
/// (logged at debug) when it fails or times out: the connection is then simply closed.
pub async fn tls_accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    peer: SocketAddr,
    name: &str,
) -> Option<Box<dyn Stream>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            debug!(listener = name, client = %peer.ip(), error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(listener = name, client = %peer.ip(), "TLS handshake timed out");
            None
        }
    }
}

/// STARTTLS / STLS: replace the session's clear-text stream by TLS over it. The caller has
/// already answered the command and checked that nothing was pipelined after it. False
/// when the handshake failed (the session must end).
pub async fn upgrade_to_tls(
    reader: &mut BufReader<Box<dyn Stream>>,
    acceptor: &TlsAcceptor,
    peer: SocketAddr,
    name: &str,
) -> bool {
    let placeholder: Box<dyn Stream> = Box::new(tokio::io::duplex(1).0);
    let plain = std::mem::replace(reader, BufReader::new(placeholder)).into_inner();
    match tls_accept(acceptor, plain, peer, name).await {
        Some(tls) => {
            *reader = BufReader::with_capacity(16 * 1024, tls);
            true
        }
        None => false,
    }
}
