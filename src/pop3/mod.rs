//! The POP3 server: port 110 with STLS (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS) and port
//! 995 with implicit TLS (RFC 8314 §3.3), AUTH PLAIN (RFC 5034) and USER/PASS.
//!
//! - `command` parses one line (pure, unit-tested);
//! - `session` runs one connection over any stream (tests drive it in memory);
//! - `maildrop` is the INBOX as one session sees it: the messages present at login, numbered
//!   1..n for the whole session, with the RFC 1939 §8 exclusive lock and the CRLF sizes;
//! - this module holds what the sessions share and plugs POP3 into the front door
//!   (`net::serve`: guard, connection limits, implicit TLS on 995).

pub mod command;
mod maildrop;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::directory::Directory;
use crate::guard::Guard;
use crate::net::{ConnectionLimiter, Gate, Protocol, Refused, Stream};
use crate::store::Store;

pub use maildrop::LOCK_FILE;

/// Port 110 (STLS) or 995 (implicit TLS, RFC 8314 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Pop3,
    Pop3s,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Pop3 => "pop3",
            Profile::Pop3s => "pop3s",
        }
    }
}

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
    /// `guard` is required: the daemon passes its shared guard, tests that want none pass
    /// `Arc::new(Guard::off())` (see src/net/door.rs for why there is no default). Leaving
    /// it out does not compile (the example beside `posthaste::net` is the one that does):
    ///
    /// ```compile_fail
    /// # use std::sync::Arc;
    /// # fn no_guard(c: Arc<posthaste::config::Config>, d: posthaste::directory::Directory, s: posthaste::store::Store) {
    /// let ctx = posthaste::pop3::Context::new(c, d, s, None);
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
            ConnectionLimiter::new(config.pop3.max_connections, config.pop3.max_connections_per_ip);
        Context { config, directory, store, tls, guard, connections }
    }
}

/// POP3 and POP3S through the front door (src/net/door.rs).
impl Protocol for Context {
    type Profile = Profile;

    fn listener_name(profile: Profile) -> &'static str {
        profile.name()
    }

    fn implicit_tls(profile: Profile) -> bool {
        profile == Profile::Pop3s
    }

    fn refusal(why: Refused) -> &'static str {
        // RFC 3206 §4: [SYS/TEMP] is a temporary problem on our side; try later.
        match why {
            Refused::Total => "-ERR [SYS/TEMP] Too many connections, try again later\r\n",
            Refused::PerIp => "-ERR [SYS/TEMP] Too many connections from your address, try again later\r\n",
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
