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
//! unparseable line, DESIGN.md): `conn` frames lines and literals itself (literal size
//! limit, synchronising `+` continuations, BAD for garbage) and `session` hands each
//! complete command to `CommandCodec`. Responses are written directly (`wire`): they are
//! simple, and message bytes go from the file to the socket without building an
//! `imap-types` response tree.
//!
//! # Modules, top to bottom (each uses only those below it)
//! - `session`: a connection's [`session::Session`] (its `Conn` and its `State`), the
//!   dispatch by state, login and STARTTLS;
//! - `mailbox` (SELECT…APPEND, COPY/MOVE, EXPUNGE, QUOTA), `fetch` (FETCH, STORE),
//!   `search`: the command handlers, methods of `Conn` given the account and the selected
//!   mailbox by the dispatch;
//! - `conn`: the stream, framing, replies, untagged updates, IDLE;
//! - `state` (RFC 3501 §3 as data), `list` (RFC 5258 LIST options), `wire`, `mime`, `utf7`.
//! - this module: the shared `Context` and the front door's [`crate::net::Protocol`].

mod conn;
mod fetch;
mod list;
pub mod mailbox;
pub mod mime;
pub mod search;
pub mod session;
mod state;
pub mod utf7;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::directory::Directory;
use crate::filter::Filter;
use crate::guard::Guard;
use crate::net::{ConnectionLimiter, Gate, Protocol, Refused, Stream};
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
    pub guard: Arc<Guard>,
    /// Spam learning when messages move into or out of Junk (src/filter/).
    pub filter: Arc<Filter>,
    connections: Arc<ConnectionLimiter>,
}

impl Context {
    /// `guard` is required: the daemon passes its shared guard, tests that want none pass
    /// `Arc::new(Guard::off())` (see src/net/door.rs for why there is no default). Leaving
    /// it out does not compile (the example beside `posthaste::net` is the one that does):
    ///
    /// ```compile_fail
    /// # use std::sync::Arc;
    /// # fn no_guard(c: Arc<posthaste::config::Config>, d: posthaste::directory::Directory, s: posthaste::store::Store) {
    /// let ctx = posthaste::imap::Context::new(c, d, s, None);
    /// # }
    /// ```
    pub fn new(
        config: Arc<Config>,
        directory: Directory,
        store: Store,
        tls: Option<TlsAcceptor>,
        guard: Arc<Guard>,
    ) -> Context {
        let connections =
            ConnectionLimiter::new(config.imap.max_connections, config.imap.max_connections_per_ip);
        let filter = Arc::new(Filter::from_config(&config));
        Context { config, directory, store, tls, guard, filter, connections }
    }
}

/// IMAP and IMAPS through the front door (src/net/door.rs).
impl Protocol for Context {
    type Profile = Profile;

    fn listener_name(profile: Profile) -> &'static str {
        profile.name()
    }

    fn implicit_tls(profile: Profile) -> bool {
        profile == Profile::Imaps
    }

    fn refusal(why: Refused) -> &'static str {
        // RFC 3501 §7.1.5: BYE as the greeting refuses the connection.
        match why {
            Refused::Total => "* BYE Too many connections, try again later\r\n",
            Refused::PerIp => "* BYE Too many connections from your address\r\n",
        }
    }

    fn gate(&self) -> &dyn Gate {
        &*self.guard
    }

    fn limiter(&self) -> &Arc<ConnectionLimiter> {
        &self.connections
    }

    fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    async fn session(
        self: Arc<Self>,
        _profile: Profile,
        stream: Box<dyn Stream>,
        peer: SocketAddr,
        tls: bool,
    ) {
        session::Session::new(self, stream, peer, tls).run().await;
    }
}
