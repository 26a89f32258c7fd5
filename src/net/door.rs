//! The front door: the one accept loop every listener runs.
//!
//! Each accepted connection goes through the same steps, in this order, before its
//! protocol sees a byte:
//!
//! 1. the [`Gate`] (the guard): a banned client is closed at once, without a word;
//! 2. the protocol's [`ConnectionLimiter`]: over a limit, the protocol's own refusal line
//!    ([`Protocol::refusal`]) and close;
//! 3. on an implicit-TLS port (465, 993, 995), the TLS handshake;
//! 4. the protocol's session, in a task of its own.
//!
//! A protocol plugs in by implementing [`Protocol`] on its shared context. The gate is a
//! required method with no default, and each protocol's `Context::new` takes the guard as a
//! required argument, so a listener that bans nobody cannot be built by forgetting
//! something: it is a compile error. That guarantee is tested as one: `compile_fail`
//! doctests on each `Context::new` (without the guard) next to the example in `net` that
//! compiles (with it), run by `cargo test --doc`. Tests that want no guard pass
//! `Guard::off()` and say so.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{tls_accept, ConnectionLimiter, Refused, Stream, Tcp};

/// Who may connect at all, asked once per accepted connection before anything is sent.
/// The daemon's guard is the one gate (src/guard/).
pub trait Gate: Send + Sync {
    /// True: close this connection at once, silently (a banned client). May count the
    /// connection (the guard counts floods).
    fn refuse(&self, ip: IpAddr) -> bool;
}

/// What the front door needs from a protocol. Implemented by each protocol's context,
/// shared by all of that protocol's listeners; [`Protocol::Profile`] tells them apart.
pub trait Protocol: Send + Sync + Sized + 'static {
    /// Which listener of the protocol a socket is (e.g. SMTP's ports 25, 587 and 465).
    type Profile: Copy + Send + Sync + 'static;

    /// The listener's config key (`smtp`, `submissions`, `imaps`, …), for the log.
    fn listener_name(profile: Self::Profile) -> &'static str;

    /// TLS from the first byte (RFC 8314 §3.3)?
    fn implicit_tls(profile: Self::Profile) -> bool;

    /// The reply that refuses a connection over a limit, CRLF included. It is written as
    /// the greeting would be, then the connection is closed.
    fn refusal(why: Refused) -> &'static str;

    /// The gate every connection passes first: the daemon's guard. No default on purpose.
    fn gate(&self) -> &dyn Gate;

    /// The protocol's connection counts (one limiter for all its listeners).
    fn limiter(&self) -> &Arc<ConnectionLimiter>;

    /// The certificate for implicit TLS (and the sessions' STARTTLS); None without `[tls]`.
    fn tls(&self) -> Option<&TlsAcceptor>;

    /// Run one session on an admitted connection. `tls` is true when the stream is already
    /// encrypted (implicit TLS).
    fn session(
        self: Arc<Self>,
        profile: Self::Profile,
        stream: Box<dyn Stream>,
        peer: SocketAddr,
        tls: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// Accept connections on `listener` for `proto` until `shutdown` turns true; each goes
/// through the front door (see the module docs) in a task of its own.
pub async fn serve<P: Protocol>(
    proto: Arc<P>,
    profile: P::Profile,
    listener: TcpListener,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let name = P::listener_name(profile);
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
        tokio::spawn(connection(proto.clone(), profile, Tcp(tcp), peer));
    }
}

/// One accepted connection through the door: gate, limits, implicit TLS, session.
async fn connection<P, S>(proto: Arc<P>, profile: P::Profile, mut stream: S, peer: SocketAddr)
where
    P: Protocol,
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    let name = P::listener_name(profile);
    // A banned client is dropped before any greeting (src/guard/mod.rs).
    if proto.gate().refuse(peer.ip()) {
        debug!(listener = name, client = %peer.ip(), "connection from a banned client closed");
        return;
    }
    let _slot = match proto.limiter().admit(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            debug!(listener = name, client = %peer.ip(), limit = ?why, "connection refused by the connection limit");
            let _ = stream.write_all(P::refusal(why).as_bytes()).await;
            return;
        }
    };
    let implicit = P::implicit_tls(profile);
    let stream: Box<dyn Stream> = if implicit {
        let Some(acceptor) = proto.tls() else { return };
        let Some(tls) = tls_accept(acceptor, stream, peer, name).await else { return };
        tls
    } else {
        Box::new(stream)
    };
    proto.session(profile, stream, peer, implicit).await;
}
