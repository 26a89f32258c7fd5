//! Finding the hosts that accept mail for a domain (RFC 5321 §5.1, RFC 7505) and trying
//! them in order.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::{ResolveError, ResolveErrorKind};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;
use rand::seq::SliceRandom;

use super::remote::{self, HostResult, Job, RcptResult};
use super::spool::RcptStatus;
use crate::config::Config;

/// Why a domain has no usable host.
#[derive(Debug, Clone)]
pub struct RouteError {
    pub permanent: bool,
    /// With an enhanced status code (RFC 3463) first.
    pub reason: String,
}

impl RouteError {
    fn permanent(reason: String) -> Self {
        RouteError { permanent: true, reason }
    }
    fn temporary(reason: String) -> Self {
        RouteError { permanent: false, reason }
    }
}

pub struct Resolver {
    dns: TokioAsyncResolver,
    /// Our own name: an MX pointing here is a loop.
    hostname: String,
    /// Our SMTP listeners, for the same check by address.
    own_addrs: Vec<SocketAddr>,
}

impl Resolver {
    /// `[dns] nameservers` when set, else the system resolver.
    pub fn new(config: &Config) -> std::io::Result<Resolver> {
        let dns = if config.dns.nameservers.is_empty() {
            TokioAsyncResolver::tokio_from_system_conf().map_err(std::io::Error::other)?
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in &config.dns.nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true));
            }
            TokioAsyncResolver::tokio(
                ResolverConfig::from_parts(None, vec![], group),
                ResolverOpts::default(),
            )
        };
        Ok(Resolver { dns, hostname: normalize(&config.hostname), own_addrs: config.listen.smtp.clone() })
    }

    /// The host names to try, best first. RFC 5321 §5.1: MX records sorted by preference
    /// (equal preferences in random order); no MX at all → the domain itself (implicit MX).
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, RouteError> {
        let fqdn = format!("{}.", normalize(domain));
        let records = match self.dns.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => lookup.iter().map(|mx| (mx.preference(), mx.exchange().to_ascii())).collect(),
            Err(e) if no_records(&e) == Some(ResponseCode::NoError) => Vec::new(),
            Err(e) => return Err(dns_error(domain, &e)),
        };
        if records.is_empty() {
            return Ok(vec![normalize(domain)]);
        }
        // RFC 7505 §3: a single MX with the root as exchange says the domain takes no mail.
        let mut records: Vec<(u16, String)> =
            records.into_iter().map(|(p, h)| (p, normalize(&h))).filter(|(_, h)| !h.is_empty()).collect();
        if records.is_empty() {
            return Err(RouteError::permanent(format!(
                "5.1.10 domain {domain} does not accept mail (null MX, RFC 7505)"
            )));
        }
        records.shuffle(&mut rand::thread_rng());
        records.sort_by_key(|(p, _)| *p);
        Ok(records.into_iter().map(|(_, h)| h).collect())
    }

    /// A and AAAA records of one host.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        match self.dns.lookup_ip(format!("{host}.").as_str()).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if no_records(&e).is_some() => {
                Err(RouteError::permanent(format!("5.1.2 host {host} has no address (A/AAAA)")))
            }
            Err(e) => Err(dns_error(host, &e)),
        }
    }

    /// RFC 5321 §5.1: "if the SMTP server finds its own name … it MUST … treat it as an
    /// error" (mail loops back to myself).
    fn is_self(&self, host: &str, addr: SocketAddr) -> bool {
        host == self.hostname || self.own_addrs.contains(&addr)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn no_records(e: &ResolveError) -> Option<ResponseCode> {
    match e.kind() {
        ResolveErrorKind::NoRecordsFound { response_code, .. } => Some(*response_code),
        _ => None,
    }
}

fn dns_error(name: &str, e: &ResolveError) -> RouteError {
    if no_records(e) == Some(ResponseCode::NXDomain) {
        RouteError::permanent(format!("5.1.2 domain {name} does not exist"))
    } else if let Some(rcode) = no_records(e) {
        RouteError::temporary(format!("4.4.3 DNS lookup for {name} failed: {rcode}"))
    } else {
        RouteError::temporary(format!("4.4.3 DNS lookup for {name} failed: {e}"))
    }
}

/// The results for all recipients of one domain, and the host that gave them.
pub struct DomainResult {
    pub results: Vec<RcptResult>,
    pub remote_mta: Option<String>,
}

/// Try every host of `domain` until one runs the transaction. When none does, every
/// recipient gets the last error: failed if it was permanent, deferred otherwise.
pub async fn deliver_domain(resolver: &Resolver, domain: &str, port: u16, job: &Job<'_>) -> DomainResult {
    let all = |err: RouteError, mta: Option<String>| DomainResult {
        results: job
            .rcpts
            .iter()
            .map(|_| RcptResult {
                status: if err.permanent { RcptStatus::Failed } else { RcptStatus::Deferred },
                reply: err.reason.clone(),
            })
            .collect(),
        remote_mta: mta,
    };
    let hosts = match resolver.mx_hosts(domain).await {
        Ok(h) => h,
        Err(e) => return all(e, None),
    };
    let mut last = RouteError::temporary(format!("4.4.1 no host for {domain} answered"));
    let mut last_host = None;
    for host in hosts {
        let addrs = match resolver.addresses(&host).await {
            Ok(a) => a,
            Err(e) => {
                last = e;
                continue;
            }
        };
        for ip in addrs {
            let addr = SocketAddr::new(ip, port);
            if resolver.is_self(&host, addr) {
                let e = format!("5.4.6 mail for {domain} loops back to myself (MX {host})");
                return all(RouteError::permanent(e), None);
            }
            match try_host(addr, &host, job).await {
                HostResult::Done(results) => return DomainResult { results, remote_mta: Some(host) },
                HostResult::TryNext { reason, permanent } => {
                    last = RouteError { permanent, reason };
                    last_host = Some(host.clone());
                }
                HostResult::TlsFailed(reason) => last = RouteError::temporary(reason),
            }
        }
    }
    all(last, last_host)
}

/// One host: with STARTTLS when offered; if the TLS handshake fails, once more in plaintext.
async fn try_host(addr: SocketAddr, host: &str, job: &Job<'_>) -> HostResult {
    match remote::deliver(addr, host, job).await {
        HostResult::TlsFailed(reason) if job.tls.is_some() => {
            tracing::info!(mx = host, %addr, reason, "TLS failed; retrying without TLS");
            let plain = Job { tls: None, ..*job };
            remote::deliver(addr, host, &plain).await
        }
        other => other,
    }
}
