//! dnsmasq as the authoritative DNS for test domains (MX, A, AAAA, TXT, PTR, CNAME).
//!
//! posthaste's queue, SPF, DKIM and DMARC code make real DNS queries; pointing
//! `[dns] nameservers` at this server gives them real answers over the wire.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use super::{free_addr, is_root, require, wait_for, ProcessGuard, TestDir};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRecord {
    Mx {
        domain: String,
        exchange: String,
        preference: u16,
    },
    /// An A or AAAA record (and the matching PTR, as dnsmasq's --host-record does).
    Host {
        name: String,
        ip: IpAddr,
    },
    Txt {
        name: String,
        text: String,
    },
    Cname {
        alias: String,
        target: String,
    },
    /// A PTR without a forward record; `ip` gives the in-addr.arpa name.
    Ptr {
        ip: IpAddr,
        name: String,
    },
}

impl DnsRecord {
    pub fn mx(domain: &str, exchange: &str, preference: u16) -> DnsRecord {
        DnsRecord::Mx { domain: domain.into(), exchange: exchange.into(), preference }
    }
    pub fn a(name: &str, ip: impl Into<IpAddr>) -> DnsRecord {
        DnsRecord::Host { name: name.into(), ip: ip.into() }
    }
    pub fn txt(name: &str, text: &str) -> DnsRecord {
        DnsRecord::Txt { name: name.into(), text: text.into() }
    }
    pub fn cname(alias: &str, target: &str) -> DnsRecord {
        DnsRecord::Cname { alias: alias.into(), target: target.into() }
    }
    pub fn ptr(ip: impl Into<IpAddr>, name: &str) -> DnsRecord {
        DnsRecord::Ptr { ip: ip.into(), name: name.into() }
    }

    fn to_arg(&self) -> String {
        match self {
            DnsRecord::Mx { domain, exchange, preference } => {
                format!("--mx-host={domain},{exchange},{preference}")
            }
            DnsRecord::Host { name, ip } => format!("--host-record={name},{ip}"),
            DnsRecord::Txt { name, text } => {
                // dnsmasq splits the argument at commas into strings (quotes are only shell
                // syntax and we use no shell), so a comma would silently change the record.
                // SPF, DKIM and DMARC records contain none.
                assert!(
                    !text.contains(',') && !text.contains('"'),
                    "TXT text with , or \" is not supported by the harness: {text:?}"
                );
                // One TXT record holds strings of at most 255 bytes (RFC 1035 §3.3.14);
                // long values (DKIM keys) become several strings that readers concatenate
                // (RFC 6376 §3.6.2.2).
                let chunks: Vec<String> =
                    text.as_bytes().chunks(255).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
                format!("--txt-record={name},{}", chunks.join(","))
            }
            DnsRecord::Cname { alias, target } => format!("--cname={alias},{target}"),
            DnsRecord::Ptr { ip, name } => {
                let rev = match ip {
                    IpAddr::V4(v4) => {
                        let o = v4.octets();
                        format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
                    }
                    IpAddr::V6(v6) => {
                        let hex: String = v6.octets().iter().map(|b| format!("{b:02x}")).collect();
                        let mut nibbles: Vec<String> = hex.chars().rev().map(|c| c.to_string()).collect();
                        nibbles.push("ip6.arpa".into());
                        nibbles.join(".")
                    }
                };
                format!("--ptr-record={rev},{name}")
            }
        }
    }
}

/// A dnsmasq answering only the given records, on `127.0.0.1:<free port>` (UDP and TCP).
/// Every other name gets NXDOMAIN at once (`--local=/#/`): with no upstream configured a
/// query must never wait for a timeout or leak to the machine's resolver.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    records: Vec<DnsRecord>,
    log: std::path::PathBuf,
    guard: Option<ProcessGuard>,
}

impl Dnsmasq {
    pub fn start(dir: &TestDir, records: &[DnsRecord]) -> Dnsmasq {
        let addr = free_addr();
        let log = dir.join(format!("dnsmasq-{}.log", addr.port()));
        let mut d = Dnsmasq { addr, records: records.to_vec(), log, guard: None };
        d.spawn();
        d
    }

    /// Replaces all records. dnsmasq reads records from its command line only once, so it
    /// is restarted on the same address (queries in that instant get no answer and are
    /// retried by any resolver).
    pub fn set_records(&mut self, records: &[DnsRecord]) {
        self.records = records.to_vec();
        if let Some(mut g) = self.guard.take() {
            g.terminate(Duration::from_secs(3));
        }
        self.spawn();
    }

    pub fn records(&self) -> &[DnsRecord] {
        &self.records
    }

    /// For `[dns] nameservers`.
    pub fn nameserver(&self) -> String {
        self.addr.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.guard.as_ref().unwrap().pid()
    }

    fn spawn(&mut self) {
        let bin = require("dnsmasq", "dnsmasq");
        let mut cmd = Command::new(bin);
        cmd.args([
            // Ignore /etc/dnsmasq.conf and /etc/dnsmasq.d: only our records count.
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--log-facility=-",
            "--log-queries",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--local=/#/",
        ])
        .arg(format!("--listen-address={}", self.addr.ip()))
        .arg(format!("--port={}", self.addr.port()));
        if is_root() {
            // Otherwise it switches to the `dnsmasq` user, which is not needed to read
            // nothing and may not exist on a minimal system.
            cmd.arg("--user=root");
        }
        cmd.args(self.records.iter().map(|r| r.to_arg()));
        let mut guard = ProcessGuard::spawn("dnsmasq", cmd, &self.log);
        // dnsmasq binds UDP and TCP together before it logs "started"; TCP is what we can
        // probe without sending a query.
        super::wait_for_port(self.addr, Duration::from_secs(10), &mut guard);
        self.guard = Some(guard);
    }

    /// Asks this server (through tests/py/dns_query.py, an independent client) and returns
    /// `{"rcode": n, "answers": [{"name","type","ttl","data"}…]}`.
    pub fn query(&self, name: &str, rtype: &str) -> serde_json::Value {
        let port = self.addr.port().to_string();
        let ip = self.addr.ip().to_string();
        let out = super::python("dns_query.py", &[&ip, &port, name, rtype]);
        assert!(out.success(), "dns_query.py failed:\n{}", out.all());
        serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("bad JSON from dns_query.py ({e}): {}", out.stdout))
    }

    /// Waits until a query for `name`/`rtype` gets at least one answer.
    pub fn wait_resolves(&self, name: &str, rtype: &str) -> serde_json::Value {
        wait_for(&format!("{name} {rtype} to resolve"), Duration::from_secs(5), || {
            let v = self.query(name, rtype);
            (v["answers"].as_array().map(|a| !a.is_empty()).unwrap_or(false)).then_some(v)
        })
    }
}
