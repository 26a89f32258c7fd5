//! The SMTP server: MX (port 25) and submission (587 with STARTTLS, 465 with implicit TLS).

pub mod command;
pub mod data;
pub mod message;
pub mod session;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::Config;
use crate::directory::Directory;
use crate::filter::Filter;
use crate::guard::Guard;
use crate::mailauth::MailAuth;
use crate::queue::Queue;

/// Read through the next LF into `line`, keeping at most `limit` bytes. Returns false if the
/// line was longer (the rest is consumed and dropped). An empty `line` means EOF. Shared by
/// the SMTP and POP3 sessions.
pub async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<bool> {
    let mut complete = true;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(complete);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if complete && line.len() + n <= limit {
            line.extend_from_slice(chunk);
        } else {
            if complete && line.is_empty() {
                // Keep the first byte so the caller can tell EOF from an overlong line.
                line.push(chunk[0]);
            }
            complete = false;
        }
        reader.consume(n);
        if done {
            return Ok(complete);
        }
    }
}

/// Any byte stream a session can run on: TCP, TLS over TCP, or an in-memory pipe in tests.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

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
    /// With the guard off (nothing counted, nobody banned, no sending limits); the daemon
    /// attaches its shared guard with [`Context::with_guard`].
    pub fn new(config: Arc<Config>, directory: Directory, queue: Queue, tls: Option<TlsAcceptor>) -> Context {
        let connections =
            ConnectionLimiter::new(config.smtp.max_connections, config.smtp.max_connections_per_ip);
        let guard = Arc::new(Guard::off());
        let mailauth = Arc::new(MailAuth::from_config(&config));
        let filter = Arc::new(Filter::from_config(&config));
        Context { config, directory, queue, tls, guard, mailauth, filter, connections }
    }

    pub fn with_guard(mut self, guard: Arc<Guard>) -> Context {
        self.guard = guard;
        self
    }

    /// Count a new connection, or say why it is refused.
    fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, &'static str> {
        self.connections.admit(ip).map_err(|r| match r {
            Refused::Total => "4.3.2 Too many connections, try again later",
            Refused::PerIp => "4.7.0 Too many connections from your address, try again later",
        })
    }
}

/// Counts open connections in all and per client IP, for one protocol's listeners (SMTP and
/// POP3 each have their own).
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Connections>,
}

#[derive(Default)]
struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why `ConnectionLimiter::admit` refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerIp,
}

impl ConnectionLimiter {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter { max_total, max_per_ip, state: Mutex::new(Connections::default()) })
    }

    /// Count a new connection from `ip`; the slot releases it when dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut c = self.state.lock().unwrap();
        if c.total >= self.max_total {
            return Err(Refused::Total);
        }
        let n = c.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        c.total += 1;
        Ok(ConnectionSlot { limiter: self.clone(), ip })
    }
}

/// Releases the connection count when the session ends, however it ends.
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut c = self.limiter.state.lock().unwrap();
        c.total -= 1;
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
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
        debug!(client = %peer.ip(), "smtp: connection from a banned client closed");
        return;
    }
    let _slot = match ctx.admit(peer.ip()) {
        Ok(slot) => slot,
        Err(reason) => {
            debug!(client = %peer.ip(), reason, "smtp: connection refused");
            let _ = tcp.write_all(format!("421 {reason}\r\n").as_bytes()).await;
            return;
        }
    };
    let stream: Box<dyn Stream> = if profile == Profile::Submissions {
        let Some(acceptor) = ctx.tls.clone() else { return };
        let Some(tls) = crate::net::tls_accept(&acceptor, tcp, peer, profile.name()).await else { return };
        tls
    } else {
        Box::new(tcp)
    };
    let tls = profile == Profile::Submissions;
    session::Session::new(ctx, profile, stream, peer, tls).run().await;
}
