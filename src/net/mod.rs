//! What every listener shares: the front door (accept loop, guard check, connection limits,
//! implicit TLS, spawning the session), the STARTTLS/STLS upgrade, the stream type sessions
//! run on and line reading with a limit.
//!
//! A leaf: it imports nothing of posthaste (only tokio, rustls and libc), so every protocol
//! (SMTP, IMAP, POP3, and the listeners still to come) can use it without importing another
//! protocol. Protocols plug into [`serve`] by implementing [`Protocol`]; the guard plugs in
//! as the [`Gate`].
//!
//! - `door`: [`serve`], [`Protocol`], [`Gate`];
//! - `limit`: [`ConnectionLimiter`], [`Refused`], [`ConnectionSlot`];
//! - `tls`: [`tls_accept`] (implicit TLS, with its 30 s limit) and [`upgrade_to_tls`];
//! - `tcp`: [`Tcp`], the accepted socket (TCP_QUICKACK after each read);
//! - `line`: [`read_line_limited`].

mod door;
mod limit;
mod line;
mod tcp;
mod tls;

use tokio::io::{AsyncRead, AsyncWrite};

pub use door::{serve, Gate, Protocol};
pub use limit::{ConnectionLimiter, ConnectionSlot, Refused};
pub use line::read_line_limited;
pub use tcp::Tcp;
pub use tls::{tls_accept, upgrade_to_tls, TLS_HANDSHAKE_TIMEOUT};

/// Any byte stream a session can run on: TCP, TLS over TCP, or an in-memory pipe in tests.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}
