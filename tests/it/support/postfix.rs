//! A real Postfix, from a private configuration directory, as the remote MX of test domains
//! (it stores what posthaste sends it in a Maildir) and as a sending MTA (it relays chosen
//! domains to posthaste's MX), for interoperability tests with the most common MTA.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::tls::{self_signed, CertPair};
use super::{file_tail, maildir_files, port_is_open, require, run, Out, TestDir};

/// uid/gid that virtual(8) delivers as: `nobody`. Postfix refuses root for deliveries
/// (virtual_minimum_uid), and nobody exists on every Debian system.
const NOBODY: u32 = 65534;

#[derive(Debug, Clone)]
pub struct PostfixPeerBuilder {
    listen: SocketAddr,
    hostname: Option<String>,
    domains: Vec<String>,
    reject: Vec<String>,
    relay: Vec<(String, SocketAddr)>,
    tls: bool,
    smtps: Option<SocketAddr>,
    extra: BTreeMap<String, String>,
}

impl PostfixPeerBuilder {
    /// A domain whose mail this Postfix accepts for every local part (default `remote.test`
    /// if none is given). Mail for `x@d` lands in the Maildir `mail/d/`, one for the whole
    /// domain; the recipient is in each message's `Delivered-To:` header.
    pub fn domain(mut self, d: &str) -> Self {
        self.domains.push(d.into());
        self
    }
    /// The EHLO/greeting name (default `mx.<first domain>`).
    pub fn hostname(mut self, h: &str) -> Self {
        self.hostname = Some(h.into());
        self
    }
    /// RCPT TO this address gets `550 5.7.1 … Recipient address rejected`.
    pub fn reject(mut self, address: &str) -> Self {
        self.reject.push(address.into());
        self
    }
    /// Mail for `domain` is relayed over SMTP to `to` (e.g. posthaste's MX listener),
    /// whatever DNS says: `transport_maps = inline:{ domain=smtp:[ip]:port }`.
    pub fn relay(mut self, domain: &str, to: SocketAddr) -> Self {
        self.relay.push((domain.into(), to));
        self
    }
    /// Offer STARTTLS as server and use it opportunistically as client (default on:
    /// real MX hosts do).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }
    /// Also listen with implicit TLS (RFC 8314, "smtps") on `addr`; implies `tls(true)`.
    pub fn smtps(mut self, addr: SocketAddr) -> Self {
        self.smtps = Some(addr);
        self.tls = true;
        self
    }
    /// Any main.cf parameter, overriding the harness's value.
    pub fn main_cf(mut self, key: &str, value: &str) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    pub fn start(mut self, dir: &TestDir) -> PostfixPeer {
        let postfix = require("postfix", "postfix");
        if self.domains.is_empty() {
            self.domains.push("remote.test".into());
        }
        let hostname = self.hostname.clone().unwrap_or_else(|| format!("mx.{}", self.domains[0]));
        let root = dir.subdir(format!("postfix-{}_{}", self.listen.ip(), self.listen.port()));
        let conf = root.join("conf");
        let queue = root.join("queue");
        let data = root.join("data");
        let mail = root.join("mail");
        for d in [&conf, &queue, &data, &mail] {
            fs::create_dir_all(d).unwrap();
        }
        // data_directory belongs to the mail_owner, mailboxes to the delivery user;
        // `postfix start` creates and fixes the queue subdirectories itself.
        std::os::unix::fs::chown(&data, Some(postfix_uid()), None).unwrap();
        std::os::unix::fs::chown(&mail, Some(NOBODY), Some(NOBODY)).unwrap();
        let maillog = root.join("maillog");

        let cert = self.tls.then(|| self_signed(&root, "smtpd", &hostname, &[], &[self.listen.ip()]));

        let mut main: BTreeMap<String, String> = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            main.insert(k.to_owned(), v);
        };
        set("compatibility_level", "3.6".into());
        set("queue_directory", queue.display().to_string());
        set("data_directory", data.display().to_string());
        // Without maillog_file_prefixes covering maillog_file, `postfix start` exits 1
        // without a word.
        set("maillog_file", maillog.display().to_string());
        set("maillog_file_prefixes", root.display().to_string());
        set("myhostname", hostname.clone());
        set("mydestination", String::new());
        // inet_interfaces must name addresses configured on an interface, and 127.0.0.N
        // (N≠1) is only routed, not configured; the listener address is in master.cf.
        set("inet_interfaces", "127.0.0.1".into());
        set("inet_protocols", "ipv4".into());
        // Send from our own address, as a separate host would (SPF and per-IP limits see it).
        set("smtp_bind_address", self.listen.ip().to_string());
        set("mynetworks", "127.0.0.0/8".into());
        set("alias_maps", String::new());
        set("alias_database", String::new());
        set("local_recipient_maps", String::new());
        set("biff", "no".into());
        set("append_dot_mydomain", "no".into());
        // The host's resolver may be unreachable here; nothing may wait for it.
        set("smtpd_peername_lookup", "no".into());
        set("smtp_dns_support_level", "disabled".into());
        set("default_transport", "error:5.4.4 this test peer routes only its transport_maps".into());
        set("virtual_mailbox_domains", self.domains.join(" "));
        set("virtual_mailbox_base", mail.display().to_string());
        // "@domain" is the catch-all key; a value ending in / means Maildir.
        let vmap: Vec<String> = self.domains.iter().map(|d| format!("@{d}={d}/")).collect();
        set("virtual_mailbox_maps", format!("inline:{{ {} }}", vmap.join(", ")));
        set("virtual_uid_maps", format!("static:{NOBODY}"));
        set("virtual_gid_maps", format!("static:{NOBODY}"));
        set("access_map_reject_code", "550".into());
        let mut rcpt = Vec::new();
        if !self.reject.is_empty() {
            let m: Vec<String> = self.reject.iter().map(|a| format!("{a}=REJECT")).collect();
            rcpt.push(format!("check_recipient_access inline:{{ {} }}", m.join(", ")));
        }
        rcpt.extend(["permit_mynetworks".to_owned(), "reject_unauth_destination".to_owned()]);
        set("smtpd_recipient_restrictions", rcpt.join(", "));
        set("smtpd_relay_restrictions", "permit_mynetworks, reject_unauth_destination".into());
        if !self.relay.is_empty() {
            let domains: Vec<&str> = self.relay.iter().map(|(d, _)| d.as_str()).collect();
            set("relay_domains", domains.join(" "));
            let t: Vec<String> =
                self.relay.iter().map(|(d, a)| format!("{d}=smtp:[{}]:{}", a.ip(), a.port())).collect();
            set("transport_maps", format!("inline:{{ {} }}", t.join(", ")));
        } else {
            set("relay_domains", String::new());
        }
        // Retry fast, so a test that starts posthaste late, or restarts it, sees the
        // deferred mail within seconds.
        set("queue_run_delay", "1s".into());
        set("minimal_backoff_time", "1s".into());
        set("maximal_backoff_time", "2s".into());
        set("smtp_connect_timeout", "5s".into());
        set("delay_warning_time", "0".into());
        if let Some(CertPair { cert, key }) = &cert {
            set("smtpd_tls_cert_file", cert.display().to_string());
            set("smtpd_tls_key_file", key.display().to_string());
            set("smtpd_tls_security_level", "may".into());
            set("smtp_tls_security_level", "may".into());
            set("smtpd_tls_loglevel", "1".into());
            set("smtp_tls_loglevel", "1".into());
        }
        for (k, v) in &self.extra {
            main.insert(k.clone(), v.clone());
        }
        let main_cf: String = main.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        fs::write(conf.join("main.cf"), main_cf).unwrap();
        let mut master = master_cf(self.listen);
        if let Some(a) = self.smtps {
            master.push_str(&format!(
                "{}:{} inet n - n - - smtpd -o smtpd_tls_wrappermode=yes\n",
                a.ip(),
                a.port()
            ));
        }
        fs::write(conf.join("master.cf"), master).unwrap();

        let peer = PostfixPeer {
            addr: self.listen,
            smtps: self.smtps,
            hostname,
            domains: self.domains.clone(),
            root,
            conf,
            mail,
            maillog,
            cert,
            postfix,
        };
        let out = peer.postfix(&["start"]);
        if !out.success() {
            panic!(
                "postfix -c {} start failed ({}):\n{}\n{}\nlast lines of {}:\n{}",
                peer.conf.display(),
                out.status,
                out.all(),
                peer.start_diagnosis(),
                peer.maillog.display(),
                file_tail(&peer.maillog, 30)
            );
        }
        let start = Instant::now();
        while !(port_is_open(peer.addr) && peer.smtps.map(port_is_open).unwrap_or(true)) {
            if start.elapsed() > Duration::from_secs(15) {
                panic!(
                    "Postfix not listening on {} after 15 s; last lines of {}:\n{}",
                    peer.addr,
                    peer.maillog.display(),
                    file_tail(&peer.maillog, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peer
    }
}

/// A whole master.cf: only the services this test instance needs, none chrooted (the
/// chroot would need copies of /etc files in every private queue directory).
fn master_cf(listen: SocketAddr) -> String {
    let mut s = format!("{}:{} inet n - n - - smtpd\n", listen.ip(), listen.port());
    s.push_str(
        "pickup    unix  n - n 60   1 pickup
cleanup   unix  n - n -    0 cleanup
qmgr      unix  n - n 300  1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -    - trivial-rewrite
bounce    unix  - - n -    0 bounce
defer     unix  - - n -    0 bounce
trace     unix  - - n -    0 bounce
verify    unix  - - n -    1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -    - proxymap
proxywrite unix - - n -    1 proxymap
smtp      unix  - - n -    - smtp
relay     unix  - - n -    - smtp
showq     unix  n - n -    - showq
error     unix  - - n -    - error
retry     unix  - - n -    - error
discard   unix  - - n -    - discard
local     unix  - n n -    - local
virtual   unix  - n n -    - virtual
lmtp      unix  - - n -    - lmtp
anvil     unix  - - n -    1 anvil
scache    unix  - - n -    1 scache
postlog   unix-dgram n - n - 1 postlogd
",
    );
    s
}

fn postfix_uid() -> u32 {
    // SAFETY: getpwnam with a NUL-terminated literal; the result is read before any other
    // passwd call on this thread could overwrite it.
    unsafe {
        let pw = libc::getpwnam(c"postfix".as_ptr());
        assert!(!pw.is_null(), "no `postfix` user: install the Debian package `postfix`");
        (*pw).pw_uid
    }
}

/// A message Postfix delivered into its Maildir.
#[derive(Debug, Clone)]
pub struct PeerMessage {
    pub path: PathBuf,
    /// From the `Delivered-To:` header virtual(8) adds.
    pub recipient: String,
    /// From the `Return-Path:` header (the envelope sender; empty for bounces).
    pub return_path: String,
    pub bytes: Vec<u8>,
}

impl PeerMessage {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The first header `name` (case-insensitive), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.text(), name)
    }
}

pub fn header_value(msg: &str, name: &str) -> Option<String> {
    let mut lines = msg.lines().take_while(|l| !l.is_empty()).peekable();
    while let Some(l) = lines.next() {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case(name) {
                let mut value = v.trim().to_owned();
                while let Some(next) = lines.peek() {
                    if next.starts_with(' ') || next.starts_with('\t') {
                        value.push(' ');
                        value.push_str(next.trim());
                        lines.next();
                    } else {
                        break;
                    }
                }
                return Some(value);
            }
        }
    }
    None
}

/// A running private Postfix. Dropping it runs `postfix stop` (and kills a master that
/// does not go away).
pub struct PostfixPeer {
    pub addr: SocketAddr,
    /// The implicit-TLS listener, if the builder asked for one.
    pub smtps: Option<SocketAddr>,
    pub hostname: String,
    pub domains: Vec<String>,
    root: PathBuf,
    conf: PathBuf,
    mail: PathBuf,
    maillog: PathBuf,
    cert: Option<CertPair>,
    postfix: PathBuf,
}

impl PostfixPeer {
    /// The MX for `remote.test` on `listen` (e.g. `remote_mx_addr()`), accepting every
    /// local part, with STARTTLS.
    pub fn start(dir: &TestDir, listen: SocketAddr) -> PostfixPeer {
        PostfixPeer::builder(listen).start(dir)
    }

    pub fn builder(listen: SocketAddr) -> PostfixPeerBuilder {
        PostfixPeerBuilder {
            listen,
            hostname: None,
            domains: vec![],
            reject: vec![],
            relay: vec![],
            tls: true,
            smtps: None,
            extra: BTreeMap::new(),
        }
    }

    pub fn config_dir(&self) -> &Path {
        &self.conf
    }

    /// The smtpd certificate (self-signed: use it as CA to verify this peer).
    pub fn cert(&self) -> Option<&CertPair> {
        self.cert.as_ref()
    }

    /// Runs `postfix -c CONF <args>`.
    pub fn postfix(&self, args: &[&str]) -> Out {
        let mut cmd = Command::new(&self.postfix);
        cmd.arg("-c").arg(&self.conf).args(args);
        run(cmd, None)
    }

    /// postfix(1) reports start-up errors only to a terminal or syslog; run it once more
    /// under script(1) to catch the message for the failure report.
    fn start_diagnosis(&self) -> String {
        let mut cmd = Command::new("script");
        cmd.args(["-qec"])
            .arg(format!("{} -c {} check", self.postfix.display(), self.conf.display()))
            .arg("/dev/null");
        let out = run(cmd, None);
        format!("`postfix check` says: {}", out.all().trim())
    }

    pub fn maillog(&self) -> String {
        fs::read_to_string(&self.maillog).unwrap_or_default()
    }

    /// Every message delivered so far, oldest first.
    pub fn messages(&self) -> Vec<PeerMessage> {
        let mut out = Vec::new();
        for d in &self.domains {
            for path in maildir_files(&self.mail.join(d)) {
                // virtual(8) writes into tmp/ and renames into new/: files here are complete.
                let Ok(bytes) = fs::read(&path) else { continue };
                let text = String::from_utf8_lossy(&bytes);
                let recipient = header_value(&text, "Delivered-To").unwrap_or_default();
                let return_path = header_value(&text, "Return-Path")
                    .unwrap_or_default()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned();
                out.push(PeerMessage { path, recipient, return_path, bytes });
            }
        }
        out
    }

    /// Messages delivered to `recipient`.
    pub fn messages_for(&self, recipient: &str) -> Vec<PeerMessage> {
        self.messages().into_iter().filter(|m| m.recipient.eq_ignore_ascii_case(recipient)).collect()
    }

    /// Waits for a delivered message matching `pred`; on timeout fails with the maillog.
    pub fn wait_for_message(&self, pred: impl Fn(&PeerMessage) -> bool, timeout: Duration) -> PeerMessage {
        let start = Instant::now();
        loop {
            if let Some(m) = self.messages().into_iter().find(|m| pred(m)) {
                return m;
            }
            if start.elapsed() > timeout {
                panic!(
                    "Postfix on {} received no matching message within {timeout:?} ({} other(s)); last lines of {}:\n{}",
                    self.addr,
                    self.messages().len(),
                    self.maillog.display(),
                    file_tail(&self.maillog, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Retry every deferred message now (`postqueue -f`).
    pub fn flush(&self) {
        let mut cmd = Command::new(require("postqueue", "postfix"));
        cmd.arg("-c").arg(&self.conf).arg("-f");
        run(cmd, None).assert_success();
    }

    /// The queue as `postqueue -j` reports it: one JSON object per queued message.
    pub fn queue(&self) -> Vec<serde_json::Value> {
        let mut cmd = Command::new(require("postqueue", "postfix"));
        cmd.arg("-c").arg(&self.conf).arg("-j");
        let out = run(cmd, None);
        out.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits until nothing is queued (everything delivered or bounced).
    pub fn wait_queue_empty(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            let q = self.queue();
            if q.is_empty() {
                return;
            }
            if start.elapsed() > timeout {
                panic!(
                    "Postfix queue on {} not empty after {timeout:?}: {q:?}\nlast lines of {}:\n{}",
                    self.addr,
                    self.maillog.display(),
                    file_tail(&self.maillog, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn master_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.root.join("queue/pid/master.pid")).ok()?;
        text.trim().parse().ok()
    }
}

/// A process that exists and is not a zombie (PID 1 here may not reap orphans).
pub(crate) fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

impl Drop for PostfixPeer {
    fn drop(&mut self) {
        let pid = self.master_pid();
        let _ = self.postfix(&["stop"]);
        if let Some(pid) = pid {
            let start = Instant::now();
            while pid_alive(pid) && start.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if pid_alive(pid) {
                eprintln!("[harness] Postfix master {pid} did not stop; killing it");
                // SAFETY: plain kill(2) of the master whose PID its own pid file gave.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}
