//! Connection plumbing shared by the SMTP, POP3 and IMAP listeners: the accept loop, the
//! TLS handshake (implicit TLS and STARTTLS/STLS alike) and the stream type sessions run on.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

pub use crate::smtp::Stream;

/// How long a client may take to complete a TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept connections on `listener` until `shutdown` turns true; each one is handled by
/// `handle` in its own task. `name` is the listener's config key, for the log.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    info!(listener = name, addr = %local, "listening");
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(handle(tcp, peer));
    }
}

/// The server side of a TLS handshake on `stream`, within [`TLS_HANDSHAKE_TIMEOUT`]. None
/// (logged at debug) when it fails or times out: the connection is then simply closed.
pub async fn tls_accept<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    peer: SocketAddr,
    name: &str,
) -> Option<Box<dyn Stream>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + Sync + 'static,
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
