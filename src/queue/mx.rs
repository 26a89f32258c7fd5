//! Finding the hosts that accept mail for a domain (RFC 5321 §5.1, RFC 7505) and trying
//! them in order.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rand::seq::SliceRandom;

use super::remote::{self, HostResult, Job, RcptResult};
use super::spool::RcptStatus;
use crate::config::Config;
use crate::dns::{self, DnsError};

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

/// Where mail for a domain goes: the MX hosts and their addresses from DNS, and the loop
/// check against ourselves.
pub struct Router {
    dns: Arc<dyn dns::Resolver>,
    /// Our own name: an MX pointing here is a loop.
    hostname: String,
    /// Our SMTP listeners, for the same check by address.
    own_addrs: Vec<SocketAddr>,
}

impl Router {
    /// `[dns] nameservers` when set, else the system resolver, with delivery's limits.
    pub fn new(config: &Config) -> std::io::Result<Router> {
        let dns = dns::Hickory::new(&config.dns.nameservers, dns::Limits::DELIVERY)?;
        Ok(Router::with_dns(config, Arc::new(dns)))
    }

    /// With any resolver (tests give a [`dns::Zone`]).
    pub fn with_dns(config: &Config, dns: Arc<dyn dns::Resolver>) -> Router {
        Router { dns, hostname: normalize(&config.hostname), own_addrs: config.listen.smtp.clone() }
    }

    /// The host names to try, best first. RFC 5321 §5.1: MX records sorted by preference
    /// (equal preferences in random order); no MX at all → the domain itself (implicit MX).
    pub async fn mx_hosts(&self, domain: &str) -> Result<Vec<String>, RouteError> {
        let records = match self.dns.mx(&normalize(domain)).await {
            Ok(records) => records,
            Err(DnsError::NoRecords) => Vec::new(),
            Err(e) => return Err(dns_error(domain, &e)),
        };
        if records.is_empty() {
            return Ok(vec![normalize(domain)]);
        }
        // RFC 7505 §3: a single MX with the root as exchange says the domain takes no mail.
        let mut records: Vec<(u16, String)> = records
            .into_iter()
            .map(|mx| (mx.preference, mx.exchange))
            .filter(|(_, h)| !h.is_empty())
            .collect();
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
        match self.dns.ip(host).await {
            Ok(ips) if !ips.is_empty() => Ok(ips),
            Ok(_) | Err(DnsError::NxDomain | DnsError::NoRecords) => {
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

/// RFC 5321 §5.1: a domain that does not exist fails the mail; any other DNS failure is
/// temporary (RFC 3463 4.4.3), retried on the queue's schedule.
fn dns_error(name: &str, e: &DnsError) -> RouteError {
    match e {
        DnsError::NxDomain => RouteError::permanent(format!("5.1.2 domain {name} does not exist")),
        e => RouteError::temporary(format!("4.4.3 DNS lookup for {name} failed: {e}")),
    }
}

/// The results for all recipients of one domain, and the host that gave them.
pub struct DomainResult {
    pub results: Vec<RcptResult>,
    pub remote_mta: Option<String>,
}

/// Try every host of `domain` until one runs the transaction. When none does, every
/// recipient gets the last error: failed if it was permanent, deferred otherwise.
pub async fn deliver_domain(resolver: &Router, domain: &str, port: u16, job: &Job<'_>) -> DomainResult {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{Failure, Zone};

    fn router(zone: &Arc<Zone>) -> Router {
        let text =
            "hostname = \"mail.local.test\"\ndata_dir = \"/x\"\n[listen]\nsmtp = [\"192.0.2.25:25\"]\n";
        let config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        Router::with_dns(&config, zone.clone())
    }

    #[tokio::test]
    async fn mx_hosts_by_preference_with_the_implicit_mx_and_null_mx() {
        let zone = Arc::new(Zone::new());
        zone.add_mx("multi.test", 20, "b.multi.test")
            .add_mx("multi.test", 10, "A.multi.test.")
            .add_mx("multi.test", 30, "c.multi.test")
            .add_addr("bare.test", [192, 0, 2, 1])
            .add_mx("nullmx.test", 0, ".")
            .fail("broken.test", Failure::ServFail)
            .fail("silent.test", Failure::Timeout);
        let r = router(&zone);
        assert_eq!(r.mx_hosts("Multi.TEST").await.unwrap(), ["a.multi.test", "b.multi.test", "c.multi.test"]);
        // RFC 5321 §5.1: no MX records → the domain itself.
        assert_eq!(r.mx_hosts("bare.test").await.unwrap(), ["bare.test"]);
        let e = r.mx_hosts("nullmx.test").await.unwrap_err();
        assert!(e.permanent && e.reason.starts_with("5.1.10"), "{e:?}");
        let e = r.mx_hosts("nowhere.test").await.unwrap_err();
        assert!(e.permanent && e.reason == "5.1.2 domain nowhere.test does not exist", "{e:?}");
        for name in ["broken.test", "silent.test"] {
            let e = r.mx_hosts(name).await.unwrap_err();
            assert!(!e.permanent && e.reason.starts_with("4.4.3 DNS lookup for"), "{e:?}");
        }
    }

    #[tokio::test]
    async fn addresses_missing_are_permanent_failing_dns_is_temporary() {
        let zone = Arc::new(Zone::new());
        zone.add_addr("v6.test", "2001:db8::25".parse::<IpAddr>().unwrap())
            .add_mx("mxonly.test", 10, "mx.mxonly.test")
            .fail("broken.test", Failure::ServFail);
        let r = router(&zone);
        assert_eq!(r.addresses("192.0.2.7").await.unwrap(), [IpAddr::from([192, 0, 2, 7])]);
        assert_eq!(r.addresses("v6.test").await.unwrap(), ["2001:db8::25".parse::<IpAddr>().unwrap()]);
        for name in ["mxonly.test", "nowhere.test"] {
            let e = r.addresses(name).await.unwrap_err();
            assert!(e.permanent && e.reason.starts_with("5.1.2 host"), "{e:?}");
        }
        let e = r.addresses("broken.test").await.unwrap_err();
        assert!(!e.permanent && e.reason.starts_with("4.4.3"), "{e:?}");
        assert!(!zone.asked().iter().any(|q| q.contains("192.0.2.7")), "an address literal is not looked up");
    }

    #[test]
    fn loops_back_by_name_or_listener() {
        let r = router(&Arc::new(Zone::new()));
        assert!(r.is_self("mail.local.test", "198.51.100.1:25".parse().unwrap()));
        assert!(r.is_self("other.test", "192.0.2.25:25".parse().unwrap()));
        assert!(!r.is_self("other.test", "192.0.2.25:2525".parse().unwrap()));
    }
}
