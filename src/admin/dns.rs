//! `posthaste dns [DOMAIN]`: the DNS records a mail domain needs — MX, SPF, DMARC, the DKIM
//! keys, and the SRV records mail clients use to configure themselves (RFC 6186) for the
//! listeners that are configured, with their ports. Printed as zone-file lines (with how
//! to enter them in a registrar's web form) or as JSON objects; the installer prints the
//! same at the end of an install.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::domain::{self, DkimKeys};
use super::{Error, Kind, Result};
use crate::config::Config;
use crate::directory::Directory;
use crate::mailauth::keys;

const TTL: u32 = 3600;

/// One resource record to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The mail domain it belongs to.
    pub domain: String,
    /// Owner name, without the final dot.
    pub name: String,
    /// The owner name as a registrar's web form wants it: relative to the domain, `@` for
    /// the domain itself.
    pub host: String,
    pub ttl: u32,
    #[serde(rename = "type")]
    pub rtype: &'static str,
    /// The record data; for TXT the whole text (the strings below concatenated).
    pub value: String,
    /// TXT only: the character-strings of at most 255 octets (RFC 1035 §3.3.14).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub strings: Vec<String>,
}

impl Record {
    fn new(domain: &str, name: String, rtype: &'static str, value: String) -> Record {
        let host = match name.strip_suffix(domain) {
            Some("") => "@".to_owned(),
            Some(sub) => sub.trim_end_matches('.').to_owned(),
            None => name.clone(),
        };
        Record { domain: domain.to_owned(), name, host, ttl: TTL, rtype, value, strings: vec![] }
    }

    fn txt(domain: &str, name: String, value: String) -> Record {
        let strings = value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        Record { strings, ..Record::new(domain, name, "TXT", value) }
    }

    /// One zone-file line; a long TXT value is several quoted strings on that line.
    pub fn zone_line(&self) -> String {
        let data = if self.rtype == "TXT" {
            self.strings.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(" ")
        } else {
            self.value.clone()
        };
        format!("{}.\t{}\tIN\t{}\t{data}\n", self.name, self.ttl, self.rtype)
    }
}

/// What the server offers, as far as DNS tells clients and other servers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Services {
    /// Port 25 listens on an address other servers can reach: the MX record is of use.
    pub mx: bool,
    /// RFC 6186 services with their priority and port, in the order they are printed.
    pub srv: Vec<(&'static str, u16, u16)>,
    /// Why a listener gets no record (it listens on loopback only, or is not configured).
    pub notes: Vec<String>,
    /// The HTTPS listener is reachable: the client autoconfiguration and MTA-STS names
    /// point at it: the MTA-STS policy's id (it changes when the policy does) and the port.
    pub web: Option<(String, u16)>,
}

impl Services {
    /// The configured listeners. RFC 6186 §3.1: clients find the submission, IMAP and POP3
    /// servers by SRV (priority weight port target); RFC 8314 §5.1 prefers implicit TLS,
    /// so 465/993/995 get the higher priority (lower number) where both forms exist. A
    /// listener bound to loopback only is not announced: nobody else can reach it.
    pub fn from_config(config: &Config) -> Services {
        let l = &config.listen;
        let mut out = Services::default();
        let reachable = |addrs: &[SocketAddr]| addrs.iter().find(|a| !a.ip().is_loopback()).map(|a| a.port());
        match (l.smtp.is_empty(), reachable(&l.smtp)) {
            (true, _) => out.notes.push(
                "listen.smtp is not configured: other servers cannot deliver mail here, so the MX records above have no use yet".into(),
            ),
            (false, None) => out.notes.push(
                "listen.smtp listens on loopback only: other servers cannot deliver mail here, so the MX records above have no use yet".into(),
            ),
            (false, Some(_)) => out.mx = true,
        }
        for (key, service, priority, addrs) in [
            ("submissions", "_submissions._tcp", 0, &l.submissions),
            ("submission", "_submission._tcp", 10, &l.submission),
            ("imaps", "_imaps._tcp", 0, &l.imaps),
            ("imap", "_imap._tcp", 10, &l.imap),
            ("pop3s", "_pop3s._tcp", 0, &l.pop3s),
            ("pop3", "_pop3._tcp", 10, &l.pop3),
        ] {
            match reachable(addrs) {
                Some(port) => out.srv.push((service, priority, port)),
                None if addrs.is_empty() => {}
                None => out.notes.push(format!("listen.{key} listens on loopback only: no {service} record")),
            }
        }
        match reachable(&l.https) {
            Some(port) => {
                let policy = crate::web::mta_sts_policy(config);
                out.web = Some((crate::directory::secret::digest("mta-sts", &policy)[..16].to_owned(), port));
            }
            None if l.https.is_empty() => {}
            None => out.notes.push(
                "listen.https listens on loopback only: no autoconfig, autodiscover or MTA-STS records"
                    .into(),
            ),
        }
        out
    }

    /// Every listener on its standard port.
    #[cfg(test)]
    fn standard() -> Services {
        Services {
            mx: true,
            srv: vec![
                ("_submissions._tcp", 0, 465),
                ("_submission._tcp", 10, 587),
                ("_imaps._tcp", 0, 993),
                ("_imap._tcp", 10, 143),
                ("_pop3s._tcp", 0, 995),
                ("_pop3._tcp", 10, 110),
            ],
            notes: vec![],
            web: None,
        }
    }
}

/// What the records are made from.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The server's name: MX and SRV targets.
    pub hostname: String,
    /// The postmaster's address; a domain's DMARC reports go to it when it is in that
    /// domain, else to `postmaster@DOMAIN` (which every domain has, RFC 5321 §4.5.1).
    pub postmaster: String,
    pub services: Services,
    /// `{data_dir}/dkim`; a key that does not exist (yet) has no record.
    pub dkim_dir: Option<PathBuf>,
    /// Some listener is on IPv6: only then is an AAAA record advised (an AAAA record sends
    /// IPv6 clients and MTAs to an address nothing would answer on).
    pub ipv6: bool,
}

impl Setup {
    pub fn new(config: &Config, postmaster: &str) -> Setup {
        Setup {
            hostname: config.hostname.clone(),
            postmaster: postmaster.to_owned(),
            services: Services::from_config(config),
            dkim_dir: Some(config.dkim_dir()),
            ipv6: config.listeners().iter().any(|(_, addrs)| addrs.iter().any(|a| a.is_ipv6())),
        }
    }

    /// The records of one domain.
    pub fn domain_records(&self, domain: &str) -> anyhow::Result<Vec<Record>> {
        let (d, hostname) = (domain, &self.hostname);
        let rua = if self.postmaster.ends_with(&format!("@{d}")) {
            self.postmaster.clone()
        } else {
            format!("postmaster@{d}")
        };
        let mut out = vec![
            // RFC 5321 §5.1: the MX names the host that accepts mail for the domain.
            Record::new(d, d.to_owned(), "MX", format!("10 {hostname}.")),
            // RFC 7208: only the domain's MX hosts send its mail.
            Record::txt(d, d.to_owned(), "v=spf1 mx -all".into()),
            // RFC 7489: quarantine what fails, aggregate reports to the postmaster.
            Record::txt(d, format!("_dmarc.{d}"), format!("v=DMARC1; p=quarantine; rua=mailto:{rua}")),
        ];
        for (service, priority, port) in &self.services.srv {
            out.push(Record::new(
                d,
                format!("{service}.{d}"),
                "SRV",
                format!("{priority} 1 {port} {hostname}."),
            ));
        }
        if let Some((id, port)) = &self.services.web {
            // Thunderbird asks autoconfig.DOMAIN, Outlook autodiscover.DOMAIN (and the
            // _autodiscover SRV), MTA-STS senders mta-sts.DOMAIN (RFC 8461 §3.3) after
            // finding the policy's id at _mta-sts.DOMAIN (§3.1). All served by our HTTPS
            // listener, so the names point at the hostname (its certificate must cover them).
            for name in ["autoconfig", "autodiscover", "mta-sts"] {
                out.push(Record::new(d, format!("{name}.{d}"), "CNAME", format!("{hostname}.")));
            }
            out.push(Record::new(
                d,
                format!("_autodiscover._tcp.{d}"),
                "SRV",
                format!("0 1 {port} {hostname}."),
            ));
            out.push(Record::txt(d, format!("_mta-sts.{d}"), format!("v=STSv1; id={id}")));
        }
        if let Some(dir) = &self.dkim_dir {
            // RFC 6376 §3.6.2.1: the key of selector S is the TXT record at S._domainkey.DOMAIN.
            for k in keys::dns_records(dir, d)? {
                out.push(Record::txt(d, k.name, k.value));
            }
        }
        Ok(out)
    }

    /// Zone-file lines for every domain, with comments on what cannot be derived here and on
    /// how to enter the records in a registrar's web form.
    pub fn zone(&self, domains: &[String]) -> anyhow::Result<String> {
        let mut out = String::new();
        for d in domains {
            out += &format!("; {d}\n");
            let recs = self.domain_records(d)?;
            for r in &recs {
                out += &r.zone_line();
            }
            if !recs.iter().any(|r| r.name.contains("._domainkey.")) {
                out += &format!(
                    "; {d} has no DKIM keys yet: `posthaste dns {d}` makes them and prints their records\n"
                );
            }
        }
        for note in &self.services.notes {
            out += &format!("; {note}\n");
        }
        let hostname = &self.hostname;
        if self.ipv6 {
            out += &format!(
                "; {hostname} needs an A record and an AAAA record with this server's public IPv4 and IPv6\n\
                 ; addresses (it listens on both; leave out the AAAA if the server has no public IPv6\n\
                 ; address), and the reverse DNS (PTR) of each should be {hostname} (set at your hosting provider).\n"
            );
        } else {
            out += &format!(
                "; {hostname} needs an A record with this server's public IPv4 address, and no AAAA record:\n\
                 ; no listener is on IPv6 (see [listen] in the config). The reverse DNS (PTR) of the address\n\
                 ; should be {hostname} (set at your hosting provider).\n"
            );
        }
        let example = domains.first().map(String::as_str).unwrap_or("example.org");
        out += &format!(
            "; In a registrar's web form: the name goes without the trailing dot, and most forms want\n\
             ; it without the domain as well (`_dmarc` for _dmarc.{example}., `@` or empty for {example}.\n\
             ; itself); a TXT value goes without the quotes. A DKIM key shown as several quoted strings\n\
             ; is one value: paste it whole, without the quotes and the spaces between them (the form\n\
             ; splits it), unless the form has a field for each string. `posthaste dns --json` gives\n\
             ; each record's `host` and `value` ready to paste.\n"
        );
        Ok(out)
    }
}

/// The records `posthaste dns [DOMAIN]` prints, and the DKIM keys it had to make.
#[derive(Debug, Clone)]
pub struct Zone {
    pub setup: Setup,
    pub domains: Vec<String>,
    pub keys_made: Vec<DkimKeys>,
}

impl Zone {
    pub fn records(&self) -> Result<Vec<Record>> {
        let mut all = Vec::new();
        for d in &self.domains {
            all.extend(self.setup.domain_records(d).map_err(|e| Error::from_anyhow(Kind::Failed, &e))?);
        }
        Ok(all)
    }

    pub fn text(&self) -> Result<String> {
        self.setup.zone(&self.domains).map_err(|e| Error::from_anyhow(Kind::Failed, &e))
    }
}

/// The records of one configured domain, or of every domain. A domain without DKIM keys
/// (added before signing existed, or keys moved away) gets them here, so the records can
/// be published at once. A domain this server does not serve is refused: its records
/// would point other servers at a server that refuses its mail.
pub async fn zone(config: &Config, dir: &Directory, domain: Option<&str>) -> Result<Zone> {
    let domains = match domain {
        Some(d) => vec![domain::existing(dir, d).await?],
        None => dir.list_domains().await?.into_iter().map(|d| d.name).collect(),
    };
    if domains.is_empty() {
        return Err(Error::not_found("no domains yet").help("posthaste domain add example.org"));
    }
    let mut keys_made = Vec::new();
    for d in &domains {
        keys_made.extend(domain::dkim_keys(config, d)?);
    }
    let setup = Setup::new(config, &format!("postmaster@{}", domains[0]));
    Ok(Zone { setup, domains, keys_made })
}

/// For the installer: the zone text from its answers and the config it wrote.
pub fn zone_text(
    config: &Config,
    domains: &[String],
    postmaster: &str,
    dkim_dir: &Path,
) -> anyhow::Result<String> {
    let setup = Setup { dkim_dir: Some(dkim_dir.to_owned()), ..Setup::new(config, postmaster) };
    setup.zone(domains)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(services: Services, dkim_dir: Option<PathBuf>) -> Setup {
        Setup {
            hostname: "mail.example.test".into(),
            postmaster: "pm@example.test".into(),
            services,
            dkim_dir,
            ipv6: false,
        }
    }

    /// Regression: AAAA records were advised while every listener was on 0.0.0.0.
    #[test]
    fn aaaa_is_advised_only_when_a_listener_is_on_ipv6() {
        let v4 = setup(Services::standard(), None).zone(&["example.test".into()]).unwrap();
        assert!(v4.contains("an A record") && v4.contains("no AAAA record"), "{v4}");
        let both =
            Setup { ipv6: true, ..setup(Services::standard(), None) }.zone(&["example.test".into()]).unwrap();
        assert!(both.contains("an AAAA record") && both.contains("listens on both"), "{both}");
    }

    #[test]
    fn mx_spf_dmarc_per_domain() {
        let r = setup(Services::standard(), None).zone(&["example.test".into(), "b.test".into()]).unwrap();
        assert!(r.contains("example.test.\t3600\tIN\tMX\t10 mail.example.test.\n"), "{r}");
        assert!(r.contains("b.test.\t3600\tIN\tTXT\t\"v=spf1 mx -all\"\n"), "{r}");
        assert!(r.contains("_submissions._tcp.b.test.\t3600\tIN\tSRV\t0 1 465 mail.example.test.\n"), "{r}");
        assert!(r.contains("_imaps._tcp.example.test.\t3600\tIN\tSRV\t0 1 993 mail.example.test.\n"), "{r}");
        assert!(r.contains("_pop3._tcp.example.test.\t3600\tIN\tSRV\t10 1 110 mail.example.test.\n"), "{r}");
        assert!(
            r.contains(
                "_dmarc.example.test.\t3600\tIN\tTXT\t\"v=DMARC1; p=quarantine; rua=mailto:pm@example.test\""
            ),
            "{r}"
        );
        assert!(r.contains("rua=mailto:postmaster@b.test"), "{r}");
        assert!(r.contains("; b.test has no DKIM keys yet"), "{r}");
        assert!(r.contains("In a registrar's web form"), "{r}");
    }

    #[test]
    fn web_names_when_https_is_reachable() {
        let base = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n[tls]\ncert = \"/c\"\nkey = \"/k\"\n[listen]\nhttps = [\"0.0.0.0:443\"]\n";
        let config = Config::parse(base, Path::new("t.toml")).unwrap();
        let services = Services::from_config(&config);
        let recs = setup(services.clone(), None).domain_records("example.test").unwrap();
        let find = |name: &str| recs.iter().find(|r| r.name == name).map(|r| (r.rtype, r.value.clone()));
        for n in ["autoconfig", "autodiscover", "mta-sts"] {
            assert_eq!(find(&format!("{n}.example.test")), Some(("CNAME", "mail.example.test.".into())));
        }
        assert_eq!(
            find("_autodiscover._tcp.example.test"),
            Some(("SRV", "0 1 443 mail.example.test.".into()))
        );
        let (_, sts) = find("_mta-sts.example.test").unwrap();
        assert!(sts.starts_with("v=STSv1; id=") && sts.len() == "v=STSv1; id=".len() + 16, "{sts}");
        // RFC 8461 §3.1: the id changes whenever the policy does.
        let enforce =
            Config::parse(&format!("{base}[web]\nmta_sts_mode = \"enforce\"\n"), Path::new("t.toml"))
                .unwrap();
        assert_ne!(Services::from_config(&enforce).web, services.web);
        // Loopback only: no such names, and a note.
        let local =
            Config::parse(&base.replace("0.0.0.0:443", "127.0.0.1:443"), Path::new("t.toml")).unwrap();
        let s = Services::from_config(&local);
        assert!(s.web.is_none() && s.notes.iter().any(|n| n.contains("listen.https")), "{:?}", s.notes);
    }

    #[test]
    fn hosts_for_web_forms_are_relative_to_the_domain() {
        let recs = setup(Services::standard(), None).domain_records("example.test").unwrap();
        let host = |name: &str| recs.iter().find(|r| r.name == name).unwrap().host.clone();
        assert_eq!(host("example.test"), "@");
        assert_eq!(host("_dmarc.example.test"), "_dmarc");
        assert_eq!(host("_imaps._tcp.example.test"), "_imaps._tcp");
    }

    #[test]
    fn dkim_records_split_long_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dkim = tmp.path().join("dkim");
        crate::mailauth::keys::ensure_domain_keys(&dkim, "example.test", None).unwrap();
        let r = setup(Services::standard(), Some(dkim)).zone(&["example.test".into()]).unwrap();
        let ed = r.lines().find(|l| {
            l.starts_with(
                "posthaste-ed25519._domainkey.example.test.\t3600\tIN\tTXT\t\"v=DKIM1; k=ed25519; p=",
            )
        });
        assert!(ed.is_some(), "{r}");
        let rsa = r.lines().find(|l| {
            l.starts_with("posthaste-rsa._domainkey.example.test.\t3600\tIN\tTXT\t\"v=DKIM1; k=rsa; p=")
        });
        let rsa = rsa.unwrap_or_else(|| panic!("{r}"));
        // Two quoted strings, each at most 255 octets.
        let strings: Vec<&str> = rsa.split('\t').nth(4).unwrap().split("\" \"").collect();
        assert_eq!(strings.len(), 2, "{rsa}");
        assert!(strings.iter().all(|s| s.trim_matches('"').len() <= 255), "{rsa}");
        assert!(!r.contains("no DKIM keys"), "{r}");
    }
}
