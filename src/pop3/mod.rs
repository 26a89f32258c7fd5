//! The POP3 server: port 110 with STLS (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS) and port
//! 995 with implicit TLS (RFC 8314 §3.3), AUTH PLAIN (RFC 5034) and USER/PASS.
//!
//! - `command` parses one line (pure, unit-tested);
//! - `session` runs one connection over any stream (tests drive it in memory);
//! - `maildrop` is the INBOX as one session sees it: the messages present at login, numbered
//!   1..n for the whole session, with the RFC 1939 §8 exclusive lock and the CRLF sizes;
//! - this module accepts connections, enforces the connection limits and implicit TLS.

pub mod command;
mod maildrop;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::Config;
use crate::directory::Directory;
use crate::guard::Guard;
use crate::smtp::{ConnectionLimiter, Refused, Stream};
use crate::store::Store;

pub use maildrop::LOCK_FILE;

/// What every POP3 session shares.
pub struct Context {
    pub config: Arc<Config>,
    pub directory: Directory,
    pub store: Store,
    pub tls: Option<TlsAcceptor>,
    /// Abuse counters and bans (shared with the other listeners in the daemon).
    pub guard: Arc<Guard>,
    connections: Arc<ConnectionLimiter>,
}

impl Context {
    /// With the guard off (nothing counted, nobody banned, no sending limits); the daemon
    /// attaches its shared guard with [`Context::with_guard`].
    pub fn new(config: Arc<Config>, directory: Directory, store: Store, tls: Option<TlsAcceptor>) -> Context {
        let connections =
            ConnectionLimiter::new(config.pop3.max_connections, config.pop3.max_connections_per_ip);
        let guard = Arc::new(Guard::off());
        Context { config, directory, store, tls, guard, connections }
    }

    pub fn with_guard(mut self, guard: Arc<Guard>) -> Context {
        self.guard = guard;
        self
    }
}

/// Accept connections on `listener` until `shutdown` turns true. `implicit_tls`: port 995,
/// TLS from the first byte.
pub async fn serve(
    ctx: Arc<Context>,
    implicit_tls: bool,
    listener: TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let name = if implicit_tls { "pop3s" } else { "pop3" };
    crate::net::accept_loop(name, listener, shutdown, move |tcp, peer| {
        handle_connection(ctx.clone(), implicit_tls, tcp, peer)
    })
    .await
}

async fn handle_connection(
    ctx: Arc<Context>,
    implicit_tls: bool,
    mut tcp: crate::net::Tcp,
    peer: SocketAddr,
) {
    // A banned client is dropped before any greeting (src/guard/mod.rs).
    if ctx.guard.connect(peer.ip()).is_banned() {
        debug!(client = %peer.ip(), "pop3: connection from a banned client closed");
        return;
    }
    let _slot = match ctx.connections.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            // RFC 3206 §4: [SYS/TEMP] is a temporary problem on our side; try later.
            let text = match why {
                Refused::Total => "-ERR [SYS/TEMP] Too many connections, try again later\r\n",
                Refused::PerIp => {
                    "-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n"
                }
            };
            debug!(client = %peer.ip(), "pop3: connection refused by the connection limit");
            let _ = tcp.write_all(text.as_bytes()).await;
            return;
        }
    };
    let stream: Box<dyn Stream> = if implicit_tls {
        let Some(acceptor) = ctx.tls.clone() else { return };
        let Some(tls) = crate::net::tls_accept(&acceptor, tcp, peer, "pop3s").await else { return };
        tls
    } else {
        Box::new(tcp)
    };
    session::Session::new(ctx, stream, peer, implicit_tls).run().await;
}
