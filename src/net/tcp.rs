//! The accepted TCP connection every session runs on (below TLS).

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

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
