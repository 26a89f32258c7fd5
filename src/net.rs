//! Connection plumbing shared by the SMTP, POP3 and IMAP listeners: the accept loop, the
//! TLS handshake (implicit TLS and STARTTLS/STLS alike) and the stream type sessions run on.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
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
    F: Fn(Tcp, SocketAddr) -> Fut,
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
        tokio::spawn(handle(Tcp(tcp), peer));
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

/// An accepted connection: a `TcpStream` that acknowledges what it reads at once.
///
/// Why: Linux delays the ACK of a segment (up to 40 ms) while the connection looks
/// interactive ("ping-pong" mode: we answered the client's last data quickly), hoping to
/// piggyback it on our reply. A client that leaves Nagle's algorithm on (Python's imaplib,
/// most scripts, many SMTP libraries) may not send its next small segment until the previous
/// one is acknowledged. So when it sends a literal after our `+` continuation and then the
/// command's final CRLF (or the body of DATA and then `.` CRLF in a second write, or BDAT
/// chunks), the final bytes wait in the client for our ACK, and we send no reply (so no
/// piggybacked ACK) until they arrive: every such command cost the full delayed-ACK timer.
/// Dovecot's ACK went out at once because its process read the data and left the kernel in
/// quick-ACK mode; ours only after the timer.
///
/// Setting TCP_QUICKACK after every read that returned data leaves ping-pong mode and,
/// with an ACK pending, sends it now (tcp(7); `__tcp_sock_set_quickack` in the kernel). The
/// option is not sticky (the kernel re-enters ping-pong mode on its own), hence once per
/// read: one cheap setsockopt that costs nothing on the wire when no ACK is pending. Below
/// TLS, so it covers every protocol and both implicit TLS and STARTTLS.
pub struct Tcp(pub TcpStream);

impl Tcp {
    fn quick_ack(&self) {
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd owned by self.0 and a pointer to a c_int of the size given.
        unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
}

impl AsyncRead for Tcp {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.0).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.quick_ack();
        }
        r
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, data)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
