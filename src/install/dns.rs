//! The DNS records a mail domain needs: MX, SPF, DMARC, the DKIM keys and the SRV records
//! mail clients use to configure themselves (RFC 6186). Printed as
//! zone-file lines at the end of an install and by `posthaste dns [DOMAIN]` (`--json`: the
//! same records as objects).

use std::path::Path;

use serde::Serialize;

use crate::mailauth::keys;

const TTL: u32 = 3600;

/// One resource record to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Record {
    /// The mail domain it belongs to.
    pub domain: String,
    /// Owner name, without the final dot.
    pub name: String,
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
    fn txt(domain: &str, name: String, value: String) -> Record {
        let strings = value.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
        Record { domain: domain.to_owned(), name, ttl: TTL, rtype: "TXT", value, strings }
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

/// The records of one domain. `dkim_dir` is where its keys are (`{data_dir}/dkim`); a key
/// that does not exist (yet) has no record.
pub fn domain_records(
    hostname: &str,
    domain: &str,
    postmaster: &str,
    dkim_dir: Option<&Path>,
) -> anyhow::Result<Vec<Record>> {
    let d = domain;
    let rua = if postmaster.ends_with(&format!("@{d}")) {
        postmaster.to_owned()
    } else {
        format!("postmaster@{d}")
    };
    let mut out = vec![
        // RFC 5321 §5.1: the MX names the host that accepts mail for the domain.
        Record {
            domain: d.to_owned(),
            name: d.to_owned(),
            ttl: TTL,
            rtype: "MX",
            value: format!("10 {hostname}."),
            strings: vec![],
        },
        // RFC 7208: only the domain's MX hosts send its mail.
        Record::txt(d, d.to_owned(), "v=spf1 mx -all".into()),
        // RFC 7489: quarantine what fails, aggregate reports to the postmaster.
        Record::txt(d, format!("_dmarc.{d}"), format!("v=DMARC1; p=quarantine; rua=mailto:{rua}")),
    ];
    // RFC 6186 §3.1: mail clients find the submission, IMAP and POP3 servers by SRV
    // (priority weight port target); RFC 8314 §5.1 prefers implicit TLS, so 465/993/995 get
    // the higher priority (lower number) where both forms exist.
    for (service, priority, port) in [
        ("_submissions._tcp", 0, 465),
        ("_submission._tcp", 10, 587),
        ("_imaps._tcp", 0, 993),
        ("_imap._tcp", 10, 143),
        ("_pop3s._tcp", 0, 995),
        ("_pop3._tcp", 10, 110),
    ] {
        out.push(Record {
            domain: d.to_owned(),
            name: format!("{service}.{d}"),
            ttl: TTL,
            rtype: "SRV",
            value: format!("{priority} 1 {port} {hostname}."),
            strings: vec![],
        });
    }
    if let Some(dir) = dkim_dir {
        // RFC 6376 §3.6.2.1: the key of selector S is the TXT record at S._domainkey.DOMAIN.
        for k in keys::dns_records(dir, d)? {
            out.push(Record::txt(d, k.name, k.value));
        }
    }
    Ok(out)
}

/// Zone-file lines for every domain, with comments on what cannot be derived here (the
/// server's own address records, which depend on `listen`: AAAA only when a listener is on
/// IPv6).
pub fn records(
    hostname: &str,
    domains: &[String],
    postmaster: &str,
    dkim_dir: Option<&Path>,
    listen: &crate::config::Listen,
) -> anyhow::Result<String> {
    let mut out = String::new();
    for d in domains {
        out += &format!("; {d}\n");
        let recs = domain_records(hostname, d, postmaster, dkim_dir)?;
        for r in &recs {
            out += &r.zone_line();
        }
        if !recs.iter().any(|r| r.name.contains("._domainkey.")) {
            out += &format!(
                "; {d} has no DKIM keys yet: `posthaste dns {d}` makes them and prints their records\n"
            );
        }
    }
    out += &address_advice(hostname, listen);
    Ok(out)
}

/// What to publish for the server's own name. An AAAA record sends IPv6 clients (and other
/// MTAs) to an address nothing answers on unless a listener is on IPv6, so it is advised
/// only then.
fn address_advice(hostname: &str, listen: &crate::config::Listen) -> String {
    let lists = [
        &listen.smtp,
        &listen.submission,
        &listen.submissions,
        &listen.imap,
        &listen.imaps,
        &listen.pop3,
        &listen.pop3s,
    ];
    let ipv6 = lists.iter().any(|l| l.iter().any(|a| a.is_ipv6()));
    if ipv6 {
        format!(
            "; {hostname} needs an A record and an AAAA record with this server's public IPv4 and IPv6\n\
             ; addresses (it listens on both; leave out the AAAA if the server has no public IPv6\n\
             ; address), and the reverse DNS (PTR) of each should be {hostname} (set at your hosting provider).\n"
        )
    } else {
        format!(
            "; {hostname} needs an A record with this server's public IPv4 address, and no AAAA record:\n\
             ; no listener is on IPv6 (see [listen] in the config). The reverse DNS (PTR) of the address\n\
             ; should be {hostname} (set at your hosting provider).\n"
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn mx_spf_dmarc_per_domain() {
        let r = super::records(
            "mail.example.test",
            &["example.test".into(), "b.test".into()],
            "pm@example.test",
            None,
            &crate::config::Listen::default(),
        )
        .unwrap();
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
    }

    /// Regression: AAAA records were advised while every listener was on 0.0.0.0.
    #[test]
    fn aaaa_is_advised_only_when_a_listener_is_on_ipv6() {
        let advice = |addrs: &[&str]| {
            let listen = crate::config::Listen {
                smtp: addrs.iter().map(|a| a.parse().unwrap()).collect(),
                ..Default::default()
            };
            super::records("mail.example.test", &["example.test".into()], "pm@example.test", None, &listen)
                .unwrap()
        };
        let v4 = advice(&["0.0.0.0:25"]);
        assert!(v4.contains("an A record") && v4.contains("no AAAA record"), "{v4}");
        let both = advice(&["[::]:25"]);
        assert!(both.contains("an AAAA record") && both.contains("listens on both"), "{both}");
        assert!(advice(&["127.0.0.1:25", "[2001:db8::25]:25"]).contains("an AAAA record"));
    }

    #[test]
    fn dkim_records_split_long_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let dkim = tmp.path().join("dkim");
        crate::mailauth::keys::ensure_domain_keys(&dkim, "example.test", None).unwrap();
        let r = super::records(
            "mail.example.test",
            &["example.test".into()],
            "pm@example.test",
            Some(&dkim),
            &crate::config::Listen::default(),
        )
        .unwrap();
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
