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
//! - `line`: [`read_line_limited`];
//! - here: [`Stream`], and [`blocking`] for a session's file-system work.
//!
//! Every listener's context takes the guard it passes to the gate; there is no default:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use posthaste::{config::Config, directory::Directory, guard::Guard, queue::Queue, store::Store};
//! # fn contexts(c: Arc<Config>, d: Directory, q: Queue, s: Store, guard: Arc<Guard>) {
//! let smtp = posthaste::smtp::Context::new(c.clone(), d.clone(), q, None, guard.clone());
//! let imap = posthaste::imap::Context::new(c.clone(), d.clone(), s.clone(), None, guard);
//! // A test that wants no guard says so.
//! let pop3 = posthaste::pop3::Context::new(c, d, s, None, Arc::new(Guard::off()));
//! # }
//! ```

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

/// Run blocking work (files, the disk) from a session's task: on a multi-threaded runtime
/// (the daemon) the worker thread first hands its other tasks to another worker
/// (`block_in_place`), so no other connection waits; elsewhere (a current-thread runtime in
/// tests, no runtime in the CLI) it just runs.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Any byte stream a session can run on: TCP, TLS over TCP, or an in-memory pipe in tests.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}
