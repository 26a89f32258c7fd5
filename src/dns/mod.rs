//! DNS for the queue (MX, A/AAAA: RFC 5321 §5.1) and message authentication (TXT, MX,
//! A/AAAA, PTR for SPF, DKIM, DMARC and iprev): one resolver stack, hickory 0.26 — the
//! version mail-auth 0.13 is built on — behind the [`Resolver`] trait, so tests replace it
//! with [`Zone`], an in-process double.
//!
//! A leaf: it imports nothing of posthaste. [`Hickory`] is built from `[dns] nameservers`
//! (or the system's resolv.conf when that list is empty) with [`Limits`]: each query has
//! a timeout and a number of attempts, and every lookup as a whole is cut off after all
//! of them could have run, so an unanswering server costs a bounded time.

mod zone;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
pub use hickory_resolver::TokioResolver;

pub use zone::{Failure, Zone};

/// One MX record (RFC 1035 §3.3.9): the exchange lowercased, without the final dot; the
/// empty string for the root (a null MX, RFC 7505).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mx {
    pub preference: u16,
    pub exchange: String,
}

/// Why a lookup gave no records. The queue decides by it what is permanent (RFC 5321
/// §5.1: a domain that does not exist) and what is worth a retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// NXDOMAIN: the name does not exist (RFC 1035 §4.1.1 RCODE 3).
    #[error("no such domain (NXDOMAIN)")]
    NxDomain,
    /// The name exists but has no records of the type asked for (NOERROR, no answer;
    /// RFC 2308 §2.2 "NODATA").
    #[error("no records of that type")]
    NoRecords,
    /// The server answered with another error code (SERVFAIL, REFUSED, …).
    #[error("{0}")]
    Rcode(String),
    /// No answer within the limits.
    #[error("request timed out")]
    Timeout,
    /// No answer for another reason (network, a malformed name or response).
    #[error("{0}")]
    Failed(String),
}

/// A lookup in flight.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

/// The lookups posthaste makes. Names are domain names with or without the final dot;
/// answers carry no TTLs (nothing above caches them; hickory does).
///
/// mail-auth 0.13 cannot be handed this trait, so the trait hands mail-auth what it can
/// take ([`Resolver::hickory`]). Read in its source (`common/resolver.rs`, `lib.rs`):
/// `MessageAuthenticator` is a newtype around a concrete hickory 0.26 `TokioResolver`
/// (its field is public), and every SPF/DKIM/DMARC/ARC/iprev lookup calls that resolver
/// unless a `ResolverCache` passed in `Parameters` answers first. Those caches are
/// synchronous `get(name) -> Option<answer>` maps: they cannot wait for an async trait,
/// cannot say "no such name" for MX/A/AAAA/PTR (only a TXT entry can hold an error), and
/// SPF's `exists:` takes any cache entry as existence. A pre-filled cache is therefore
/// only right for answers known in advance — our own DKIM keys when we check our own
/// signatures (`mailauth::verify::own` does that) — not as the resolver. Decision:
/// mail-auth gets a hickory resolver from the same trait object — for [`Hickory`] a
/// handle on the very resolver the trait methods use (same servers, limits and cache),
/// for the [`Zone`] double one pointed at the zone's own loopback DNS server — so there
/// is one hickory version in Cargo.lock and one place that builds resolvers, and a test
/// replaces DNS for the queue and for mail-auth with the same object.
pub trait Resolver: Send + Sync {
    /// MX records of `domain`, in the order the server gave them.
    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, Vec<Mx>>;
    /// The addresses of `host`: its A records, or its AAAA records when it has no A
    /// record.
    fn ip<'a>(&'a self, host: &'a str) -> Lookup<'a, Vec<IpAddr>>;
    /// TXT records of `name`, each record's strings joined (RFC 7208 §3.3).
    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a, Vec<Vec<u8>>>;
    /// PTR names of `ip` (lowercased, without the final dot).
    fn ptr<'a>(&'a self, ip: IpAddr) -> Lookup<'a, Vec<String>>;
    /// A hickory resolver that answers as this one does, for mail-auth (see above).
    fn hickory(&self) -> std::io::Result<TokioResolver>;
}

/// How long one lookup may take: each query waits `timeout`, and is sent `attempts` times
/// to each server before the lookup fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub attempts: usize,
}

impl Limits {
    /// Mail delivery can wait: hickory's (and glibc's) defaults, 5 s and 2 attempts.
    pub const DELIVERY: Limits = Limits { timeout: Duration::from_secs(5), attempts: 2 };

    /// The longest a lookup can take on `servers` name servers before we stop waiting
    /// (a safety net above hickory's own timeouts: every attempt on every server, plus
    /// one second).
    fn bound(&self, servers: usize) -> Duration {
        self.timeout * ((self.attempts.max(1) + 1) * servers.max(1)) as u32 + Duration::from_secs(1)
    }
}

/// The resolver of the daemon: hickory on `[dns] nameservers`, else the system's.
#[derive(Clone)]
pub struct Hickory {
    inner: TokioResolver,
    bound: Duration,
}

impl std::fmt::Debug for Hickory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hickory").field("bound", &self.bound).finish()
    }
}

impl Hickory {
    /// `nameservers` (UDP and TCP on each address's port), or `/etc/resolv.conf` when the
    /// list is empty, with `limits` either way.
    pub fn new(nameservers: &[SocketAddr], limits: Limits) -> std::io::Result<Hickory> {
        let (config, mut opts) = if nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                std::io::Error::other(format!(
                    "cannot read the system resolver configuration: {e} (help: check /etc/resolv.conf or set [dns] nameservers)"
                ))
            })?
        } else {
            let servers = nameservers
                .iter()
                .map(|ns| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = ns.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = ns.port();
                    NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
                })
                .collect();
            (ResolverConfig::from_parts(None, vec![], servers), ResolverOpts::default())
        };
        opts.timeout = limits.timeout;
        opts.attempts = limits.attempts;
        let servers = config.name_servers().len();
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Hickory { inner, bound: limits.bound(servers) })
    }

    async fn bounded<T>(&self, lookup: impl Future<Output = Result<T, NetError>>) -> Result<T, DnsError> {
        match tokio::time::timeout(self.bound, lookup).await {
            Ok(result) => result.map_err(|e| from_hickory(&e)),
            Err(_) => Err(DnsError::Timeout),
        }
    }
}

/// The name as an absolute one: lookups never go through resolv.conf's search list.
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

/// A name from an answer, the way posthaste compares names: lowercase, no final dot.
fn plain(name: &hickory_resolver::proto::rr::Name) -> String {
    name.to_lowercase().to_ascii().trim_end_matches('.').to_owned()
}

fn from_hickory(e: &NetError) -> DnsError {
    match e {
        NetError::Dns(HickoryDnsError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NXDomain => DnsError::NxDomain,
            ResponseCode::NoError => DnsError::NoRecords,
            code => DnsError::Rcode(code.to_string()),
        },
        NetError::Dns(HickoryDnsError::ResponseCode(code)) => DnsError::Rcode(code.to_string()),
        NetError::Timeout => DnsError::Timeout,
        e => DnsError::Failed(e.to_string()),
    }
}

impl Resolver for Hickory {
    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, Vec<Mx>> {
        Box::pin(async move {
            let lookup = self.bounded(self.inner.mx_lookup(absolute(domain).as_str())).await?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(Mx { preference: mx.preference, exchange: plain(&mx.exchange) }),
                    _ => None,
                })
                .collect())
        })
    }

    fn ip<'a>(&'a self, host: &'a str) -> Lookup<'a, Vec<IpAddr>> {
        Box::pin(async move {
            let lookup = self.bounded(self.inner.lookup_ip(absolute(host).as_str())).await?;
            Ok(lookup.iter().collect())
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a, Vec<Vec<u8>>> {
        Box::pin(async move {
            let lookup = self.bounded(self.inner.txt_lookup(absolute(name).as_str())).await?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(txt) => Some(txt.txt_data.concat()),
                    _ => None,
                })
                .collect())
        })
    }

    fn ptr<'a>(&'a self, ip: IpAddr) -> Lookup<'a, Vec<String>> {
        Box::pin(async move {
            let lookup = self.bounded(self.inner.reverse_lookup(ip)).await?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(ptr) => Some(plain(&ptr.0)),
                    _ => None,
                })
                .collect())
        })
    }

    fn hickory(&self) -> std::io::Result<TokioResolver> {
        Ok(self.inner.clone())
    }
}
