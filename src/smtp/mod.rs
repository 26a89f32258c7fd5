//! The SMTP server: MX (port 25) and submission (587 with STARTTLS, 465 with implicit TLS).

pub mod command;
pub mod data;
pub mod message;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::directory::Directory;
use crate::filter::Filter;
use crate::guard::Guard;
use crate::mailauth::MailAuth;
use crate::net::{ConnectionLimiter, Gate, Protocol, Refused, Stream};
use crate::queue::Queue;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Port 25: mail for our domains from anyone; no AUTH.
    Mx,
    /// Port 587: STARTTLS, then AUTH required (RFC 6409).
    Submission,
    /// Port 465: TLS from the first byte, AUTH required (RFC 8314 §3.3).
    Submissions,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Mx => "smtp",
            Profile::Submission => "submission",
            Profile::Submissions => "submissions",
        }
    }
}

/// What every session shares.
pub struct Context {
    pub config: Arc<Config>,
    pub directory: Directory,
    pub queue: Queue,
    pub tls: Option<TlsAcceptor>,
    /// Abuse counters, bans and the per-user sending limits (shared by all listeners).
    pub guard: Arc<Guard>,
    /// DKIM signing and SPF/DKIM/DMARC verification.
    pub mailauth: Arc<MailAuth>,
    /// Spam and virus checks.
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
    /// # fn no_guard(c: Arc<posthaste::config::Config>, d: posthaste::directory::Directory, q: posthaste::queue::Queue) {
    /// let ctx = posthaste::smtp::Context::new(c, d, q, None);
    /// # }
    /// ```
    pub fn new(
        config: Arc<Config>,
        directory: Directory,
        queue: Queue,
        tls: Option<TlsAcceptor>,
        guard: Arc<Guard>,
    ) -> Context {
        let connections =
            ConnectionLimiter::new(config.smtp.max_connections, config.smtp.max_connections_per_ip);
        let mailauth = Arc::new(MailAuth::from_config(&config));
        let filter = Arc::new(Filter::from_config(&config));
        Context { config, directory, queue, tls, guard, mailauth, filter, connections }
    }
}

/// SMTP, submission and submissions through the front door (src/net/door.rs).
impl Protocol for Context {
    type Profile = Profile;

    fn listener_name(profile: Profile) -> &'static str {
        profile.name()
    }

    fn implicit_tls(profile: Profile) -> bool {
        profile == Profile::Submissions
    }

    fn refusal(why: Refused) -> &'static str {
        // RFC 5321 §4.2.2: 421, service not available, closing the channel, in place of the
        // 220 greeting; a temporary reply, so the client retries later (§4.5.4.1).
        match why {
            Refused::Total => "421 4.3.2 Too many connections, try again later\r\n",
            Refused::PerIp => "421 4.7.0 Too many connections from your address, try again later\r\n",
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
        profile: Profile,
        stream: Box<dyn Stream>,
        peer: SocketAddr,
        tls: bool,
    ) {
        session::Session::new(self, profile, stream, peer, tls).run().await;
    }
}
