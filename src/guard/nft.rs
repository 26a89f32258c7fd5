//! The kernel side of bans: a table of our own in nftables, changed by running `nft`.
//!
//! DESIGN.md decides on the `nft` subprocess (the Rust bindings are GPL or need C
//! libraries). The ruleset follows the nftables wiki ("Sets", "Element timeouts"):
//!
//! ```text
//! table inet posthaste {
//!   set banned4 { type ipv4_addr; flags timeout; }
//!   set banned6 { type ipv6_addr; flags timeout; }
//!   chain input { type filter hook input priority 0; policy accept;
//!     ip saddr @banned4 tcp dport { PORTS } drop
//!     ip6 saddr @banned6 tcp dport { PORTS } drop } }
//! ```
//!
//! PORTS are the ports of our configured listeners, so nothing else on the host is
//! affected, and the table is ours alone: we never touch other tables. Elements carry the
//! ban's remaining time as their timeout, so the kernel lifts a ban by itself even when the
//! daemon is down. Scripts go to `nft -f -` (one atomic transaction each); `nft -j list
//! tables` is the availability probe.

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const TABLE: &str = "posthaste";

#[derive(Debug, Clone)]
pub struct Nft {
    ports: Vec<u16>,
}

impl Nft {
    pub fn new(mut ports: Vec<u16>) -> Nft {
        ports.sort_unstable();
        ports.dedup();
        Nft { ports }
    }

    /// Does `nft` run here with the rights to read the ruleset?
    pub fn available() -> Result<(), String> {
        match Command::new("nft").args(["-j", "list", "tables"]).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
            Err(e) => Err(format!("cannot run nft: {e} (the Debian package is `nftables`)")),
        }
    }

    /// (Re)create our table with `bans` (client, remaining time) in it. Replacing the whole
    /// table in one transaction makes a restart converge on the ban file.
    pub fn setup(&self, bans: &[(IpAddr, Duration)]) -> Result<(), String> {
        let ports = self.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        // `add table` first so that `delete table` cannot fail on a fresh host.
        let mut s = format!(
            "add table inet {TABLE}\ndelete table inet {TABLE}\n\
             table inet {TABLE} {{\n\
             \tset banned4 {{ type ipv4_addr; flags timeout; }}\n\
             \tset banned6 {{ type ipv6_addr; flags timeout; }}\n\
             \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n"
        );
        if !ports.is_empty() {
            s.push_str(&format!("\t\tip saddr @banned4 tcp dport {{ {ports} }} drop\n"));
            s.push_str(&format!("\t\tip6 saddr @banned6 tcp dport {{ {ports} }} drop\n"));
        }
        s.push_str("\t}\n}\n");
        for (ip, left) in bans {
            if left.as_secs() > 0 {
                s.push_str(&format!(
                    "add element inet {TABLE} {} {{ {ip} timeout {}s }}\n",
                    set_of(ip),
                    left.as_secs()
                ));
            }
        }
        run_script(&s)
    }

    /// Create our table if it is missing (the daemon has not run yet in this network
    /// namespace, or someone deleted it), so `posthaste ban add` works with the daemon down.
    fn ensure(&self) -> Result<(), String> {
        let present = ["banned4", "banned6"].iter().all(|set| {
            Command::new("nft")
                .args(["-j", "list", "set", "inet", TABLE, set])
                .stdin(Stdio::null())
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if present {
            Ok(())
        } else {
            self.setup(&[])
        }
    }

    /// Put `ip` in the set for `timeout`, replacing an existing element's timeout: `add` is a
    /// no-op for an element that exists, so add, delete, add in one transaction.
    pub fn ban(&self, ip: IpAddr, timeout: Duration) -> Result<(), String> {
        self.ensure()?;
        let set = set_of(&ip);
        let secs = timeout.as_secs().max(1);
        run_script(&format!(
            "add element inet {TABLE} {set} {{ {ip} }}\n\
             delete element inet {TABLE} {set} {{ {ip} }}\n\
             add element inet {TABLE} {set} {{ {ip} timeout {secs}s }}\n"
        ))
    }

    /// Take `ip` out of the set (no error when it is not there).
    pub fn unban(&self, ip: IpAddr) -> Result<(), String> {
        self.ensure()?;
        let set = set_of(&ip);
        run_script(&format!(
            "add element inet {TABLE} {set} {{ {ip} }}\ndelete element inet {TABLE} {set} {{ {ip} }}\n"
        ))
    }
}

fn set_of(ip: &IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => "banned4",
        IpAddr::V6(_) => "banned6",
    }
}

fn run_script(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(|e| format!("nft stdin: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
