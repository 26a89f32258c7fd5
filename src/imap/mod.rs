//! The IMAP server (IMAP4rev1, RFC 3501, with the extensions listed in `session::CAPS`):
//! port 143 with STARTTLS (LOGINDISABLED until TLS) and 993 with implicit TLS.
//!
//! # Codec decision
//! Commands are parsed with `imap-codec` 2.0.0-alpha.10 (+ `imap-types`, MIT OR Apache-2.0,
//! rust-version 1.85, builds with our 1.95; pinned with `=` because alphas change their API).
//! It is the only server-side IMAP grammar in Rust and covers RFC 3501 plus IDLE, MOVE,
//! UIDPLUS, CONDSTORE, ID, ENABLE, QUOTA, NAMESPACE, LITERAL+; writing and testing our own
//! parser for that grammar (SEARCH keys, FETCH sections, dates) would cost more than it saves.
//! We do not use `imap-next` (it queues its own greeting and sends nothing for an
//! unparseable line, DESIGN.md): `session` frames lines and literals itself (literal size
//! limit, synchronising `+` continuations, BAD for garbage) and hands each complete command
//! to `CommandCodec`. Responses are written directly (`wire`): they are simple, and message
//! bytes go from the file to the socket without building an `imap-types` response tree.

mod fetch;
pub mod mailbox;
pub mod mime;
pub mod search;
pub mod session;
pub mod utf7;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::Config;
use crate::directory::Directory;
use crate::smtp::{ConnectionLimiter, Refused, Stream};
use crate::store::Store;

/// Port 143 (STARTTLS) or 993 (implicit TLS, RFC 8314 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Imap,
    Imaps,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Imap => "imap",
            Profile::Imaps => "imaps",
        }
    }
}

/// What every IMAP session shares.
pub struct Context {
    pub config: Arc<Config>,
    pub directory: Directory,
    pub store: Store,
    pub tls: Option<TlsAcceptor>,
    /// Bans and abuse counters shared with SMTP and POP3 (src/guard/).
    pub guard: Arc<crate::guard::Guard>,
    /// Spam learning when messages move into or out of Junk (src/filter/).
    pub filter: Arc<crate::filter::Filter>,
    connections: Arc<ConnectionLimiter>,
}

impl Context {
    pub fn new(config: Arc<Config>, directory: Directory, store: Store, tls: Option<TlsAcceptor>) -> Context {
        let guard = Arc::new(crate::guard::Guard::off());
        let connections =
            ConnectionLimiter::new(config.imap.max_connections, config.imap.max_connections_per_ip);
        let filter = Arc::new(crate::filter::Filter::from_config(&config));
        Context { config, directory, store, tls, guard, filter, connections }
    }

    /// Use the daemon's shared guard (the default one counts nothing and bans nobody).
    pub fn with_guard(mut self, guard: Arc<crate::guard::Guard>) -> Context {
        self.guard = guard;
        self
    }
}

/// Accept connections on `listener` until `shutdown` turns true.
pub async fn serve(
    ctx: Arc<Context>,
    profile: Profile,
    listener: TcpListener,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::net::accept_loop(profile.name(), listener, shutdown, move |tcp, peer| {
        handle_connection(ctx.clone(), profile, tcp, peer)
    })
    .await
}

async fn handle_connection(ctx: Arc<Context>, profile: Profile, mut tcp: crate::net::Tcp, peer: SocketAddr) {
    // A banned client is dropped before any greeting (src/guard/mod.rs).
    if ctx.guard.connect(peer.ip()).is_banned() {
        return;
    }
    let _slot = match ctx.connections.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            let reason = match why {
                Refused::Total => "Too many connections, try again later",
                Refused::PerIp => "Too many connections from your address",
            };
            debug!(client = %peer.ip(), reason, "imap: connection refused");
            // RFC 3501 §7.1.5: BYE as the greeting refuses the connection.
            let _ = tcp.write_all(format!("* BYE {reason}\r\n").as_bytes()).await;
            return;
        }
    };
    let stream: Box<dyn Stream> = if profile == Profile::Imaps {
        let Some(acceptor) = ctx.tls.clone() else { return };
        let Some(tls) = crate::net::tls_accept(&acceptor, tcp, peer, "imaps").await else { return };
        tls
    } else {
        Box::new(tcp)
    };
    session::Session::new(ctx, stream, peer, profile == Profile::Imaps).run().await;
}
