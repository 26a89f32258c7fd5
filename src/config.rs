//! The daemon configuration (`/etc/posthaste/posthaste.toml`).
//!
//! Loading is two steps: serde turns the TOML into typed structs (syntax and type errors,
//! with line numbers from the toml crate), then [`Config::validate`] checks the values and
//! reports every problem at once, so a user fixes the file in one pass instead of one error
//! per restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;
use crate::hostname;
pub use crate::layered_toml::Layer;
use crate::layered_toml::LayerError;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/posthaste/posthaste.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// EHLO name and TLS name of this server.
    pub hostname: String,
    /// Directory DB, queue, mail and keys live below this directory.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub listen: Listen,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Present = the certificate in [tls] comes from an ACME CA and the daemon renews it.
    #[serde(default)]
    pub acme: Option<AcmeConfig>,
    #[serde(default)]
    pub dns: DnsConfig,
    #[serde(default)]
    pub directory: DirectoryConfig,
    #[serde(default)]
    pub smtp: SmtpConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub server: ServerConfig,
    /// Spam checks with rspamd; absent = no spam checks (DESIGN.md contract).
    #[serde(default)]
    pub antispam: Option<AntispamConfig>,
    /// Virus checks with clamd; absent = no virus checks.
    #[serde(default)]
    pub antivirus: Option<AntivirusConfig>,
    /// Absent = guard on with the defaults (DESIGN.md contract).
    #[serde(default)]
    pub guard: GuardConfig,
    #[serde(default)]
    pub pop3: Pop3Config,
    #[serde(default)]
    pub imap: ImapConfig,
    #[serde(default)]
    pub mailauth: MailAuthConfig,
    /// The HTTPS listener's admin panel, self-service, API and autoconfiguration (src/web/).
    #[serde(default)]
    pub web: WebConfig,
}

/// Every listener is a list of addresses; a missing key means that listener is off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default)]
    pub smtp: Vec<SocketAddr>,
    #[serde(default)]
    pub submission: Vec<SocketAddr>,
    #[serde(default)]
    pub submissions: Vec<SocketAddr>,
    #[serde(default)]
    pub imap: Vec<SocketAddr>,
    #[serde(default)]
    pub imaps: Vec<SocketAddr>,
    #[serde(default)]
    pub pop3: Vec<SocketAddr>,
    #[serde(default)]
    pub pop3s: Vec<SocketAddr>,
    /// The admin panel, self-service, API and autoconfiguration over TLS (src/web/).
    #[serde(default)]
    pub https: Vec<SocketAddr>,
    /// Plain HTTP: a redirect to https, and the ACME HTTP-01 responder when
    /// `acme.http_listen` is one of these addresses.
    #[serde(default)]
    pub http: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[acme]`: where the [tls] certificate comes from and when it is renewed (RFC 8555).
/// See docs/configuration.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    /// Account contact; the CA sends expiry warnings there.
    pub email: String,
    /// Only `http-01` (RFC 8555 §8.3) for now.
    #[serde(default = "default_acme_challenge")]
    pub challenge: String,
    /// Where the HTTP-01 responder listens. The CA connects to port 80 of the hostname; bound
    /// before root is dropped and kept for the daemon's lifetime.
    #[serde(default = "default_http_listen")]
    pub http_listen: SocketAddr,
    /// Names besides `hostname` the certificate must cover.
    #[serde(default)]
    pub names: Vec<String>,
    /// Account key and id (JSON, mode 0600); default `acme-account.json` beside tls.cert.
    #[serde(default)]
    pub account: Option<PathBuf>,
    /// A PEM CA certificate to trust for the directory's HTTPS (a private CA; tests).
    /// Absent: the system's trust store.
    #[serde(default)]
    pub directory_ca: Option<PathBuf>,
    /// Renew when the certificate expires within this; absent = at 2/3 of its lifetime.
    #[serde(default, with = "opt_duration_str", skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<Duration>,
    /// How often the daemon looks at the certificate (and retries after a failure).
    #[serde(default = "default_check_interval", with = "duration_str")]
    pub check_interval: Duration,
}

pub const LETSENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

fn default_acme_directory() -> String {
    LETSENCRYPT_DIRECTORY.into()
}
fn default_acme_challenge() -> String {
    "http-01".into()
}
fn default_http_listen() -> SocketAddr {
    "0.0.0.0:80".parse().expect("a valid address")
}
fn default_check_interval() -> Duration {
    Duration::from_secs(12 * 3600)
}

impl AcmeConfig {
    /// The names the certificate must cover: the hostname first, then `names`.
    pub fn all_names(&self, hostname: &str) -> Vec<String> {
        let mut all = vec![hostname.to_ascii_lowercase()];
        for n in &self.names {
            let n = n.to_ascii_lowercase();
            if !all.contains(&n) {
                all.push(n);
            }
        }
        all
    }

    pub fn account_path(&self, tls: &TlsConfig) -> PathBuf {
        self.account.clone().unwrap_or_else(|| {
            tls.cert.parent().unwrap_or(Path::new("/etc/posthaste/tls")).join("acme-account.json")
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// `host:port` of recursive resolvers; empty = the system resolver (/etc/resolv.conf).
    #[serde(default)]
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// `sqlite:///path/db` or `postgres://user@host/db`; default `sqlite://{data_dir}/directory.db`.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Largest message accepted, in bytes (advertised as SIZE, RFC 1870).
    pub max_message_size: u64,
    /// Recipients per transaction; RFC 5321 §4.5.3.1.8 requires at least 100.
    pub max_recipients: usize,
    /// Simultaneous connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Simultaneous SMTP connections in all.
    pub max_connections: usize,
    /// Error replies in one session before we close it.
    pub max_errors: usize,
    /// Waiting for a command (RFC 5321 §4.5.3.2.7 asks for at least 5 minutes).
    #[serde(with = "duration_str")]
    pub command_timeout: Duration,
    /// Waiting for the next chunk of message data (RFC 5321 §4.5.3.2.6: 3 minutes at least).
    #[serde(with = "duration_str")]
    pub data_timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 100,
            max_connections_per_ip: 20,
            max_connections: 1000,
            max_errors: 10,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Delay after the first failed attempt; it doubles after each failure.
    #[serde(with = "duration_str")]
    pub retry_initial: Duration,
    /// The delay between attempts never grows past this.
    #[serde(with = "duration_str")]
    pub retry_max: Duration,
    /// A message still undelivered this long after it was queued bounces.
    #[serde(with = "duration_str")]
    pub expire: Duration,
    /// Remote deliveries running at once.
    pub concurrency: usize,
    /// TCP port of remote MX hosts. 25 everywhere on the Internet; tests change it.
    pub remote_port: u16,
    /// Timeout for connecting and for each reply of a remote server.
    #[serde(with = "duration_str")]
    pub remote_timeout: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            retry_initial: Duration::from_secs(5 * 60),
            retry_max: Duration::from_secs(4 * 3600),
            expire: Duration::from_secs(5 * 86400),
            concurrency: 16,
            remote_port: 25,
            remote_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `json` (one object per line) or `text`.
    pub format: String,
    /// A tracing filter such as `info` or `posthaste=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "json".into(), level: "info".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// When started as root, drop to this user after binding the listeners.
    pub user: String,
    /// Write the daemon's PID here (direct mode without systemd).
    pub pidfile: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { user: "posthaste".into(), pidfile: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3Config {
    /// Allow USER/PASS and AUTH before STLS (passwords in clear text). Off by default: RFC
    /// 2595 §2.1 lets a server refuse plaintext logins, and we do unless told otherwise.
    pub allow_plaintext_auth: bool,
    /// Simultaneous POP3 connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Simultaneous POP3 connections in all.
    pub max_connections: usize,
    /// Error replies in one session before we close it.
    pub max_errors: usize,
    /// Inactivity autologout; RFC 1939 §3 asks for at least 10 minutes.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Pause before answering a failed login (slows down password guessing).
    #[serde(with = "duration_str")]
    pub auth_failure_delay: Duration,
}

impl Default for Pop3Config {
    fn default() -> Self {
        Pop3Config {
            allow_plaintext_auth: false,
            max_connections_per_ip: 10,
            max_connections: 1000,
            max_errors: 10,
            timeout: Duration::from_secs(600),
            auth_failure_delay: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapConfig {
    /// Largest literal (APPEND message, any string) a client may send, in bytes.
    pub max_literal_size: u64,
    /// Simultaneous connections from one client IP (clients open one per folder they watch).
    pub max_connections_per_ip: usize,
    /// Simultaneous IMAP connections in all.
    pub max_connections: usize,
    /// Autologout timer (RFC 3501 §5.4: at least 30 minutes), also while idling.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            max_literal_size: 50 * 1024 * 1024,
            max_connections_per_ip: 50,
            max_connections: 2000,
            idle_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// `[mailauth]`: DKIM signing of submitted mail and SPF/DKIM/DMARC/ARC/iprev verification on
/// the MX (src/mailauth/). See docs/configuration.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailAuthConfig {
    /// Sign mail submitted by local users with the domain's DKIM keys.
    pub sign: bool,
    /// Verify inbound mail on the MX and add an `Authentication-Results` header.
    pub verify: bool,
    /// Apply the sender domain's DMARC policy: p=reject refuses (550 5.7.1), p=quarantine
    /// delivers to Junk. Off = results are only recorded in the header.
    pub dmarc_enforce: bool,
    /// Refuse mail whose MAIL FROM domain's SPF record says `-all` for the client (550 5.7.23).
    pub spf_fail_reject: bool,
    /// Answer 451 when a DNS error leaves DMARC undecided (temperror), so the sender retries
    /// later. Off = accept and record `temperror`.
    pub temperror_defer: bool,
    /// Timeout of one DNS query made by the checks.
    #[serde(with = "duration_str")]
    pub dns_timeout: Duration,
    /// Upper bound for all checks of one message; what has not finished is a temperror.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for MailAuthConfig {
    fn default() -> Self {
        MailAuthConfig {
            sign: true,
            verify: true,
            dmarc_enforce: true,
            spf_fail_reject: false,
            temperror_defer: false,
            dns_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
        }
    }
}

/// `[web]`: the HTTPS listener (src/web/). See docs/configuration.md and docs/web.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// A web login lasts this long (the session cookie's Max-Age); then it must log in again.
    #[serde(with = "duration_str")]
    pub session_ttl: Duration,
    /// A session unused this long ends earlier.
    #[serde(with = "duration_str")]
    pub idle_timeout: Duration,
    /// Largest request body (forms, API JSON), in bytes.
    pub max_request_size: u64,
    /// Time a client has to send one request's headers and body, and the server to answer.
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
    /// Simultaneous HTTPS/HTTP connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Simultaneous HTTPS/HTTP connections in all.
    pub max_connections: usize,
    /// The MTA-STS policy's mode (RFC 8461 §3.2): `none`, `testing` or `enforce`.
    pub mta_sts_mode: String,
    /// The policy's `max_age`.
    #[serde(with = "duration_str")]
    pub mta_sts_max_age: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            session_ttl: Duration::from_secs(8 * 3600),
            idle_timeout: Duration::from_secs(3600),
            max_request_size: 1 << 20,
            request_timeout: Duration::from_secs(30),
            max_connections_per_ip: 50,
            max_connections: 1000,
            mta_sts_mode: "testing".into(),
            mta_sts_max_age: Duration::from_secs(7 * 86400),
        }
    }
}

/// What to do with a message when a checker cannot give a verdict (down, slow, broken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Accept it, with a header saying it was not checked.
    Accept,
    /// `451 4.7.1`: the client retries later.
    Tempfail,
}

/// What to do with a message larger than a checker's size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OversizePolicy {
    /// Accept it unscanned, with a header saying so.
    Accept,
    /// `451 4.7.1`.
    Tempfail,
    /// `552 5.3.4` (RFC 3463: message too big for the system).
    Reject,
}

/// `[antispam]`: rspamd. See docs/configuration.md and src/filter/rspamd.rs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntispamConfig {
    /// rspamd's normal worker: `http://127.0.0.1:11333` (or a unix socket path).
    pub rspamd: String,
    /// Also check mail from authenticated users (submission); rspamd then applies its
    /// outbound rules (it is told the `User`).
    #[serde(default)]
    pub check_submissions: bool,
    /// How long one check may take before `on_failure` applies.
    #[serde(default = "default_rspamd_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// rspamd down, slow or broken: `accept` (default, with an `X-Spam-Status: Unchecked`
    /// header) or `tempfail`.
    #[serde(default = "default_fail_accept")]
    pub on_failure: FailMode,
    /// Messages larger than this (bytes) are not sent to rspamd; they are accepted with an
    /// `Unchecked` header.
    #[serde(default = "default_rspamd_max_size")]
    pub max_size: u64,
    /// rspamd's controller worker, for learning from IMAP moves into and out of Junk:
    /// `http://127.0.0.1:11334`. Absent = no learning.
    #[serde(default)]
    pub controller: Option<String>,
    /// The controller's (enable_)password, sent in the `Password` header.
    #[serde(default)]
    pub controller_password: Option<String>,
}

fn default_rspamd_timeout() -> Duration {
    Duration::from_secs(15)
}
fn default_fail_accept() -> FailMode {
    FailMode::Accept
}
fn default_fail_tempfail() -> FailMode {
    FailMode::Tempfail
}
fn default_rspamd_max_size() -> u64 {
    20 * 1024 * 1024
}
fn default_clamd_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_clamd_max_size() -> u64 {
    // clamd's own StreamMaxLength default is 25 MB; larger streams it refuses.
    25 * 1024 * 1024
}
fn default_oversize() -> OversizePolicy {
    OversizePolicy::Accept
}

/// `[antivirus]`: clamd. See docs/configuration.md and src/filter/clamd.rs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntivirusConfig {
    /// clamd's socket: a unix socket path (`/run/clamav/clamd.ctl`) or `host:port`.
    pub clamd: String,
    /// How long one scan may take before `on_failure` applies.
    #[serde(default = "default_clamd_timeout", with = "duration_str")]
    pub timeout: Duration,
    /// clamd down, slow or broken: `tempfail` (default) or `accept` (fail open, with an
    /// `X-Virus-Status: Unchecked` header).
    #[serde(default = "default_fail_tempfail")]
    pub on_failure: FailMode,
    /// Largest message streamed to clamd, in bytes; keep it at or below clamd's
    /// `StreamMaxLength`.
    #[serde(default = "default_clamd_max_size")]
    pub max_size: u64,
    /// Larger messages: `accept` (unscanned, with a header), `tempfail` or `reject`.
    #[serde(default = "default_oversize")]
    pub oversize: OversizePolicy,
}

/// `[guard]`: abuse counters per client IP, bans, the nftables set, and per-user sending
/// limits on submission. See docs/configuration.md and src/guard/.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Off = nothing is counted and nobody is banned (the sending limits still apply).
    pub enabled: bool,
    /// CIDRs never banned (and never counted).
    pub allow: Vec<String>,
    /// Failed logins (SMTP AUTH, POP3, IMAP) within `auth_failure_window` that ban.
    pub auth_failures: u32,
    #[serde(with = "duration_str")]
    pub auth_failure_window: Duration,
    /// RCPTs to unknown local users within `unknown_recipient_window` that ban.
    pub unknown_recipients: u32,
    #[serde(with = "duration_str")]
    pub unknown_recipient_window: Duration,
    /// Syntax errors and overlong lines within `protocol_error_window` that ban.
    pub protocol_errors: u32,
    #[serde(with = "duration_str")]
    pub protocol_error_window: Duration,
    /// New connections within `connection_window` that ban (a flood).
    pub connections: u32,
    #[serde(with = "duration_str")]
    pub connection_window: Duration,
    /// The first ban; each repeat offence doubles it, up to `max_ban_time`.
    #[serde(with = "duration_str")]
    pub ban_time: Duration,
    #[serde(with = "duration_str")]
    pub max_ban_time: Duration,
    /// How long after a ban ends a new one still counts as a repeat offence.
    #[serde(with = "duration_str")]
    pub repeat_window: Duration,
    /// Also drop banned sources in the kernel: true, false or "auto" (when `nft` works).
    pub nftables: NftMode,
    /// Messages per hour one authenticated user may submit (0 = unlimited).
    pub messages_per_hour: u32,
    /// Recipients per hour one authenticated user may submit to (0 = unlimited).
    pub recipients_per_hour: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            enabled: true,
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            auth_failures: 5,
            auth_failure_window: Duration::from_secs(600),
            unknown_recipients: 20,
            unknown_recipient_window: Duration::from_secs(600),
            protocol_errors: 30,
            protocol_error_window: Duration::from_secs(600),
            connections: 120,
            connection_window: Duration::from_secs(60),
            ban_time: Duration::from_secs(3600),
            max_ban_time: Duration::from_secs(7 * 86400),
            repeat_window: Duration::from_secs(7 * 86400),
            nftables: NftMode::Auto,
            messages_per_hour: 200,
            recipients_per_hour: 1000,
        }
    }
}

impl GuardConfig {
    /// The allow list parsed; invalid entries are reported by [`Config::validate`].
    pub fn allow_nets(&self) -> Vec<ipnet::IpNet> {
        self.allow.iter().filter_map(|s| parse_net(s).ok()).collect()
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or CIDR such as 192.0.2.0/24"))
}

/// `nftables = true | false | "auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NftMode {
    On,
    Off,
    Auto,
}

impl Serialize for NftMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NftMode::On => s.serialize_bool(true),
            NftMode::Off => s.serialize_bool(false),
            NftMode::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for NftMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            B(bool),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::B(true) => Ok(NftMode::On),
            Raw::B(false) => Ok(NftMode::Off),
            Raw::S(s) if s == "auto" => Ok(NftMode::Auto),
            Raw::S(s) => {
                Err(serde::de::Error::custom(format!("guard.nftables {s:?} must be true, false or \"auto\"")))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}\nhelp: pass --config FILE or set POSTHASTE_CONFIG")]
    Read { path: PathBuf, source: std::io::Error },
    /// A site settings file in `conf.d/` (or the directory itself) cannot be read.
    #[error("cannot read {path}: {source}\nhelp: the daemon reads conf.d as its own user: make the file readable for it (chgrp posthaste FILE; chmod 640 FILE), or move it out of conf.d")]
    ReadSite { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// `also`: the conf.d files merged over `path`.
    #[error("{}{} has {} problem(s):\n{}", .path.display(), merged_with(.also), .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, also: Vec<PathBuf>, problems: Vec<String> },
}

fn merged_with(also: &[PathBuf]) -> String {
    if also.is_empty() {
        return String::new();
    }
    let names: Vec<String> = also.iter().map(|p| p.display().to_string()).collect();
    format!(" (with {})", names.join(", "))
}

/// The site settings directory of a config file: `conf.d/` beside it
/// (`/etc/posthaste/conf.d/` for the default config). Its `*.toml` files, in name order, are
/// merged over the config per key (later files win). The installer renders the config file
/// itself and never touches conf.d, so what an administrator puts there survives every
/// rerun and upgrade.
pub fn conf_dir(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join("conf.d")
}

impl Config {
    /// The config file with its `conf.d/*.toml` merged over it ([`conf_dir`]): what `serve`,
    /// `check` and every admin command run with.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut layers = vec![Layer { path: path.to_owned(), text }];
        layers.extend(Self::site_layers(path)?);
        Self::from_layers(&layers)
    }

    /// The files of [`conf_dir`] for the config at `path`, read.
    pub fn site_layers(path: &Path) -> Result<Vec<Layer>, ConfigError> {
        let dir = conf_dir(path);
        let files = crate::layered_toml::drop_ins(&dir)
            .map_err(|source| ConfigError::ReadSite { path: dir.clone(), source })?;
        files
            .into_iter()
            .map(|f| match std::fs::read_to_string(&f) {
                Ok(text) => Ok(Layer { path: f, text }),
                Err(source) => Err(ConfigError::ReadSite { path: f, source }),
            })
            .collect()
    }

    /// One config text on its own (no conf.d).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Self::from_layers(&[Layer { path: path.to_owned(), text: text.to_owned() }])
    }

    /// The first layer is the config file, the others override it per key. Type errors are
    /// reported all at once (each with its file and line), then, once the types are right,
    /// every invalid value.
    pub fn from_layers(layers: &[Layer]) -> Result<Config, ConfigError> {
        let path = layers.first().map(|l| l.path.clone()).unwrap_or_default();
        let also: Vec<PathBuf> = layers.iter().skip(1).map(|l| l.path.clone()).collect();
        let config: Config = crate::layered_toml::deserialize(layers).map_err(|e| match e {
            LayerError::Syntax { path, message } => ConfigError::Parse { path, message },
            LayerError::Types(problems) => ConfigError::Invalid {
                path: path.clone(),
                also: also.clone(),
                problems: problems.iter().map(ToString::to_string).collect(),
            },
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path, also, problems })
        }
    }

    /// Every problem with the values, each with what to do about it.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = hostname::check(&self.hostname) {
            p.push(format!(
                "hostname {:?} is not a fully qualified domain name: {e} (help: use the name your MX record points to, e.g. mail.example.org)",
                self.hostname
            ));
        }
        if !self.data_dir.is_absolute() {
            p.push(format!("data_dir {:?} must be an absolute path", self.data_dir));
        }
        let l = &self.listen;
        let tls_needed = !(l.submission.is_empty()
            && l.submissions.is_empty()
            && l.imap.is_empty()
            && l.imaps.is_empty()
            && l.pop3.is_empty()
            && l.pop3s.is_empty()
            && l.https.is_empty());
        if tls_needed && self.tls.is_none() {
            p.push("listeners for submission/IMAP/POP3 need TLS: add a [tls] section with cert and key (help: `posthaste install` creates a self-signed pair)".into());
        }
        let mut seen: Vec<(&str, SocketAddr)> = Vec::new();
        for (name, addrs) in self.listeners().into_iter().chain(self.web_listeners()) {
            for a in addrs {
                match seen.iter().find(|(_, b)| listeners_overlap(a, b)) {
                    Some((_, b)) if b == a => {
                        p.push(format!("listen.{name}: {a} is used by more than one listener"))
                    }
                    Some((other, b)) => p.push(format!(
                        "listen.{name}: {a} and {b} (listen.{other}) are the same port (help: [::] also listens on every IPv4 address; use one of them)"
                    )),
                    None => seen.push((name, *a)),
                }
            }
        }
        let w = &self.web;
        if w.session_ttl < Duration::from_secs(60) || w.idle_timeout < Duration::from_secs(60) {
            p.push("web.session_ttl and web.idle_timeout must be at least 1m".into());
        }
        if w.max_request_size < 4096 {
            p.push("web.max_request_size must be at least 4096 bytes".into());
        }
        if w.request_timeout < Duration::from_secs(1) {
            p.push("web.request_timeout must be at least 1s".into());
        }
        if w.max_connections == 0 || w.max_connections_per_ip == 0 {
            p.push("web.max_connections and web.max_connections_per_ip must be at least 1".into());
        }
        if !matches!(w.mta_sts_mode.as_str(), "none" | "testing" | "enforce") {
            p.push(format!(
                "web.mta_sts_mode {:?} must be \"none\", \"testing\" or \"enforce\" (help: RFC 8461 §5 suggests \"testing\" first, then \"enforce\")",
                w.mta_sts_mode
            ));
        }
        if let Some(url) = &self.directory.url {
            if !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
            {
                p.push(format!("directory.url {url:?} must start with sqlite: or postgres://"));
            }
        }
        if self.smtp.max_message_size < 1024 {
            p.push("smtp.max_message_size must be at least 1024 bytes".into());
        }
        if self.smtp.max_recipients == 0 {
            p.push("smtp.max_recipients must be at least 1 (RFC 5321 recommends 100)".into());
        }
        if self.imap.max_connections_per_ip == 0 || self.imap.max_connections == 0 {
            p.push("imap.max_connections and imap.max_connections_per_ip must be at least 1".into());
        }
        if self.imap.max_literal_size < 1024 {
            p.push("imap.max_literal_size must be at least 1024 bytes".into());
        }
        if self.smtp.max_connections_per_ip == 0 || self.smtp.max_connections == 0 {
            p.push("smtp.max_connections and smtp.max_connections_per_ip must be at least 1".into());
        }
        if self.queue.retry_initial.is_zero() || self.queue.retry_max < self.queue.retry_initial {
            p.push("queue.retry_initial must be > 0 and not larger than queue.retry_max".into());
        }
        if self.queue.expire < self.queue.retry_initial {
            p.push("queue.expire must be longer than queue.retry_initial".into());
        }
        if self.queue.concurrency == 0 {
            p.push("queue.concurrency must be at least 1".into());
        }
        if self.pop3.max_connections_per_ip == 0 || self.pop3.max_connections == 0 {
            p.push("pop3.max_connections and pop3.max_connections_per_ip must be at least 1".into());
        }
        if self.pop3.max_errors == 0 {
            p.push("pop3.max_errors must be at least 1".into());
        }
        if self.pop3.timeout < Duration::from_secs(600) {
            p.push("pop3.timeout must be at least 10m (RFC 1939 §3)".into());
        }
        let g = &self.guard;
        for a in &g.allow {
            if let Err(e) = parse_net(a) {
                p.push(format!("guard.allow: {e}"));
            }
        }
        for (name, n, w) in [
            ("auth_failures", g.auth_failures, g.auth_failure_window),
            ("unknown_recipients", g.unknown_recipients, g.unknown_recipient_window),
            ("protocol_errors", g.protocol_errors, g.protocol_error_window),
            ("connections", g.connections, g.connection_window),
        ] {
            if n == 0 || w.is_zero() {
                p.push(format!("guard.{name} and its window must be at least 1 and 1s"));
            }
        }
        if g.ban_time.is_zero() || g.max_ban_time < g.ban_time {
            p.push("guard.ban_time must be > 0 and not larger than guard.max_ban_time".into());
        }
        if self.mailauth.dns_timeout.is_zero() || self.mailauth.timeout < self.mailauth.dns_timeout {
            p.push("mailauth.dns_timeout must be > 0 and not longer than mailauth.timeout".into());
        }
        if let Some(a) = &self.acme {
            if self.tls.is_none() {
                p.push("[acme] needs a [tls] section: cert and key name the files the certificate is written to (help: add [tls] cert = \"/etc/posthaste/tls/fullchain.pem\" and key = \"/etc/posthaste/tls/privkey.pem\")".into());
            }
            if !a.directory.starts_with("https://") {
                p.push(format!(
                    "acme.directory {:?} must be an https:// URL (help: Let's Encrypt's is {LETSENCRYPT_DIRECTORY})",
                    a.directory
                ));
            }
            if crate::address::Address::parse(&a.email).is_err() {
                p.push(format!(
                    "acme.email {:?} is not an email address (help: the CA sends certificate expiry warnings there)",
                    a.email
                ));
            }
            if a.challenge != "http-01" {
                p.push(format!(
                    "acme.challenge {:?} is not supported (help: use \"http-01\"; the CA then connects to port 80 of the hostname)",
                    a.challenge
                ));
            }
            for n in &a.names {
                if let Err(e) = hostname::check(n) {
                    p.push(format!("acme.names: {n:?} is not a fully qualified host name: {e} (help: wildcards need DNS-01, which is not supported)"));
                }
            }
            // listen.http may share the address: the web listener then answers the challenges.
            if self
                .listeners()
                .iter()
                .chain(&[("https", &self.listen.https)])
                .any(|(_, addrs)| addrs.iter().any(|l| listeners_overlap(l, &a.http_listen)))
            {
                p.push(format!(
                    "acme.http_listen {} is also a mail listener (help: the HTTP-01 responder needs its own port, normally 0.0.0.0:80)",
                    a.http_listen
                ));
            }
            if a.check_interval < Duration::from_secs(1) {
                p.push("acme.check_interval must be at least 1s (help: the default, 12h, is right outside tests)".into());
            }
            if a.renew_before.is_some_and(|d| d.is_zero()) {
                p.push("acme.renew_before must be more than 0s (help: leave it out to renew at 2/3 of the lifetime)".into());
            }
        }
        if let Some(a) = &self.antispam {
            for (key, url) in [("rspamd", Some(&a.rspamd)), ("controller", a.controller.as_ref())] {
                if let Some(url) = url {
                    if let Err(e) = Endpoint::parse_http(url) {
                        p.push(format!("antispam.{key}: {e}"));
                    }
                }
            }
            if a.timeout.is_zero() {
                p.push("antispam.timeout must be at least 1s".into());
            }
            if a.controller.is_some() && a.controller_password.is_none() {
                p.push("antispam.controller needs antispam.controller_password (help: the password rspamd's controller worker has; `posthaste install` sets both)".into());
            }
        }
        if let Some(v) = &self.antivirus {
            if let Err(e) = Endpoint::parse_socket(&v.clamd) {
                p.push(format!("antivirus.clamd: {e}"));
            }
            if v.timeout.is_zero() {
                p.push("antivirus.timeout must be at least 1s".into());
            }
        }
        if !matches!(self.log.format.as_str(), "json" | "text") {
            p.push(format!("log.format {:?} must be \"json\" or \"text\"", self.log.format));
        }
        p
    }

    pub fn listeners(&self) -> [(&'static str, &Vec<SocketAddr>); 7] {
        let l = &self.listen;
        [
            ("smtp", &l.smtp),
            ("submission", &l.submission),
            ("submissions", &l.submissions),
            ("imap", &l.imap),
            ("imaps", &l.imaps),
            ("pop3", &l.pop3),
            ("pop3s", &l.pop3s),
        ]
    }

    /// The web listeners (src/web/), apart from [`Config::listeners`]'s mail listeners.
    pub fn web_listeners(&self) -> [(&'static str, &Vec<SocketAddr>); 2] {
        [("https", &self.listen.https), ("http", &self.listen.http)]
    }

    pub fn directory_url(&self) -> String {
        match &self.directory.url {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("directory.db").display()),
        }
    }
    pub fn mail_dir(&self) -> PathBuf {
        self.data_dir.join("mail")
    }
    pub fn queue_dir(&self) -> PathBuf {
        self.data_dir.join("queue")
    }
    /// The running daemon's pidfile (`[server] pidfile`, else in the data directory).
    pub fn pidfile(&self) -> PathBuf {
        self.server.pidfile.clone().unwrap_or_else(|| self.data_dir.join("posthaste.pid"))
    }
    /// DKIM private keys: `{dkim_dir}/{domain}/{selector}.pem`.
    pub fn dkim_dir(&self) -> PathBuf {
        self.data_dir.join("dkim")
    }
}

/// Whether two listen addresses would take the same port. `[::]` is bound dual-stack
/// (src/serve.rs), so it also takes every IPv4 address; `0.0.0.0` takes every IPv4 one.
pub fn listeners_overlap(a: &SocketAddr, b: &SocketAddr) -> bool {
    use std::net::IpAddr;
    let covers = |wide: &IpAddr, other: &IpAddr| match wide {
        IpAddr::V6(w) if w.is_unspecified() => true,
        IpAddr::V4(w) if w.is_unspecified() => other.is_ipv4(),
        _ => false,
    };
    a.port() == b.port() && (a.ip() == b.ip() || covers(&a.ip(), &b.ip()) || covers(&b.ip(), &a.ip()))
}

/// An optional duration in the [`duration_str`] format.
pub mod opt_duration_str {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_str::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration_str::deserialize(d).map(Some)
    }
}

/// Durations as `30s`, `5m`, `4h`, `5d` (or a bare number of seconds).
pub mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
            None => (s, 1),
            Some((i, _)) => {
                let mult = match &s[i..] {
                    "s" => 1,
                    "m" => 60,
                    "h" => 3600,
                    "d" => 86400,
                    other => {
                        return Err(format!("unknown unit {other:?} in duration {s:?} (use s, m, h or d)"))
                    }
                };
                (&s[..i], mult)
            }
        };
        let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 4h or 5d"))?;
        Ok(Duration::from_secs(n * mult))
    }

    pub fn format(d: &Duration) -> String {
        let s = d.as_secs();
        for (unit, m) in [("d", 86400), ("h", 3600), ("m", 60)] {
            if s > 0 && s.is_multiple_of(m) {
                return format!("{}{unit}", s / m);
            }
        }
        format!("{s}s")
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Duration::from_secs(n)),
            Raw::Str(s) => parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(
            "hostname = \"mail.example.test\"\ndata_dir = \"/var/lib/posthaste\"\n",
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.smtp.max_message_size, 50 * 1024 * 1024);
        assert_eq!(c.queue.retry_initial, Duration::from_secs(300));
        assert!(c.listen.smtp.is_empty());
        assert_eq!(c.directory_url(), "sqlite:///var/lib/posthaste/directory.db");
    }

    #[test]
    fn all_problems_reported_at_once() {
        let text = r#"
hostname = "not a host"
data_dir = "relative"
[listen]
smtp = ["127.0.0.1:25"]
submission = ["127.0.0.1:25"]
[queue]
retry_initial = "0s"
"#;
        let err = Config::parse(text, Path::new("t.toml")).unwrap_err().to_string();
        for needle in ["hostname", "data_dir", "need TLS", "more than one listener", "retry_initial"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    /// `hostname.contains('.')` on the raw string let a single label with the root dot
    /// through; the one rule of `crate::hostname` drops the root first.
    #[test]
    fn single_label_hostname_with_root_dot_is_refused() {
        for bad in ["localhost.", "localhost", "192.0.2.1", "bücher.example"] {
            let text = format!("hostname = \"{bad}\"\ndata_dir = \"/x\"\n");
            let err = Config::parse(&text, Path::new("t.toml")).unwrap_err().to_string();
            assert!(err.contains("is not a fully qualified domain name: "), "{bad}: {err}");
            assert!(err.contains("help:"), "{bad}: {err}");
        }
        let ok = "hostname = \"Mail.Example.TEST.\"\ndata_dir = \"/x\"\n[acme]\nemail = \"a@example.test\"\nnames = [\"xn--bcher-kva.example\", \"x\"]\n[tls]\ncert = \"/c\"\nkey = \"/k\"\n";
        let err = Config::parse(ok, Path::new("t.toml")).unwrap_err().to_string();
        assert!(
            err.contains("acme.names: \"x\" is not a fully qualified host name: it has only one label"),
            "{err}"
        );
        assert!(!err.contains("xn--") && !err.contains("hostname \""), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error_with_a_line() {
        let err = Config::parse("hostname = \"a.b\"\ndata_dir = \"/x\"\nbogus = 1\n", Path::new("t.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus") && err.contains("line 3"), "{err}");
    }

    /// Regression: a wrong type stopped the parse, so each run showed one problem although
    /// docs/configuration.md promises all at once.
    #[test]
    fn config_type_errors_are_reported_all_at_once() {
        let text = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n[smtp]\nmax_message_size = \"big\"\n[log]\nlevel = 5\nbogus = true\n[guard]\nnftables = \"yes\"\n";
        let err = Config::parse(text, Path::new("t.toml")).unwrap_err().to_string();
        for needle in [
            "t.toml has 4 problem(s)",
            "t.toml, line 4: invalid type: string \"big\", expected u64",
            "t.toml, line 6: invalid type: integer `5`, expected a string",
            "t.toml, line 7: unknown field `bogus`",
            "t.toml, line 9: guard.nftables \"yes\" must be true, false or \"auto\"",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
    }

    #[test]
    fn conf_d_beside_the_config_is_merged_over_it_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("posthaste.toml");
        std::fs::write(
            &main,
            "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n[log]\nlevel = \"info\"\nformat = \"text\"\n[guard]\nallow = [\"127.0.0.0/8\"]\n",
        )
        .unwrap();
        assert_eq!(conf_dir(&main), dir.path().join("conf.d"));
        // No conf.d: the file alone.
        assert_eq!(Config::load(&main).unwrap().log.level, "info");
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        std::fs::write(
            dir.path().join("conf.d/10-site.toml"),
            "[log]\nlevel = \"debug\"\n[guard]\nallow = [\"127.0.0.0/8\", \"192.0.2.0/24\"]\n[smtp]\nmax_message_size = 104857600\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("conf.d/20-later.toml"), "log.level = \"warn\"\n").unwrap();
        std::fs::write(dir.path().join("conf.d/notes.txt"), "not read").unwrap();
        let c = Config::load(&main).unwrap();
        assert_eq!((c.log.level.as_str(), c.log.format.as_str()), ("warn", "text"));
        assert_eq!(c.guard.allow, ["127.0.0.0/8", "192.0.2.0/24"]);
        assert_eq!(c.smtp.max_message_size, 104857600);
        // Errors name the file they are in, and the header names every file merged.
        std::fs::write(
            dir.path().join("conf.d/30-bad.toml"),
            "# oops\n[smtp]\nmax_message_size = \"100M\"\n",
        )
        .unwrap();
        let err = Config::load(&main).unwrap_err().to_string();
        assert!(err.contains("30-bad.toml, line 3: invalid type: string \"100M\""), "{err}");
        assert!(err.contains("(with ") && err.contains("10-site.toml"), "{err}");
        std::fs::write(dir.path().join("conf.d/30-bad.toml"), "[log]\nformat = \"xml\"\n").unwrap();
        let err = Config::load(&main).unwrap_err().to_string();
        assert!(err.contains("log.format \"xml\""), "{err}");
        std::fs::write(dir.path().join("conf.d/30-bad.toml"), "[log\n").unwrap();
        let err = Config::load(&main).unwrap_err().to_string();
        assert!(err.contains("30-bad.toml") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn dual_stack_listeners_overlap_ipv4_ones_on_the_same_port() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(listeners_overlap(&a("[::]:25"), &a("0.0.0.0:25")));
        assert!(listeners_overlap(&a("127.0.0.1:25"), &a("[::]:25")));
        assert!(listeners_overlap(&a("0.0.0.0:25"), &a("127.0.0.1:25")));
        assert!(!listeners_overlap(&a("0.0.0.0:25"), &a("[::1]:25")));
        assert!(!listeners_overlap(&a("[::]:25"), &a("[::]:587")));
        let base =
            "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n[tls]\ncert = \"/c\"\nkey = \"/k\"\n";
        let err = Config::parse(
            &format!("{base}[listen]\nsmtp = [\"[::]:25\"]\nsubmission = [\"0.0.0.0:25\"]\n[acme]\nemail = \"pm@example.test\"\nhttp_listen = \"0.0.0.0:25\"\n"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("are the same port") && err.contains("acme.http_listen"), "{err}");
    }

    #[test]
    fn pop3_section() {
        let base = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n";
        let c = Config::parse(base, Path::new("t.toml")).unwrap();
        assert!(!c.pop3.allow_plaintext_auth);
        assert_eq!(c.pop3.timeout, Duration::from_secs(600));
        let c = Config::parse(
            &format!("{base}[pop3]\nallow_plaintext_auth = true\ntimeout = \"30m\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(c.pop3.allow_plaintext_auth);
        let err =
            Config::parse(&format!("{base}[pop3]\ntimeout = \"1m\"\n"), Path::new("t.toml")).unwrap_err();
        assert!(err.to_string().contains("RFC 1939"), "{err}");
    }

    #[test]
    fn guard_section() {
        let base = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n";
        let c = Config::parse(base, Path::new("t.toml")).unwrap();
        assert!(c.guard.enabled);
        assert_eq!(c.guard.allow, ["127.0.0.0/8", "::1/128"]);
        assert_eq!(c.guard.nftables, NftMode::Auto);
        assert_eq!(c.guard.auth_failures, 5);
        let c = Config::parse(
            &format!("{base}[guard]\nallow = [\"10.0.0.0/8\", \"192.0.2.1\"]\nnftables = false\nban_time = \"2h\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.guard.allow_nets().len(), 2);
        assert_eq!(c.guard.nftables, NftMode::Off);
        assert_eq!(c.guard.ban_time, Duration::from_secs(7200));
        let err = Config::parse(
            &format!("{base}[guard]\nallow = [\"nonsense\"]\nauth_failures = 0\n"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("guard.allow") && err.contains("guard.auth_failures"), "{err}");
        assert!(Config::parse(&format!("{base}[guard]\nnftables = \"yes\"\n"), Path::new("t.toml")).is_err());
    }

    #[test]
    fn mailauth_section() {
        let base = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n";
        let c = Config::parse(base, Path::new("t.toml")).unwrap();
        assert!(c.mailauth.sign && c.mailauth.verify && c.mailauth.dmarc_enforce);
        assert!(!c.mailauth.spf_fail_reject && !c.mailauth.temperror_defer);
        let c = Config::parse(
            &format!("{base}[mailauth]\nspf_fail_reject = true\ndns_timeout = \"2s\"\ntimeout = \"5s\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        assert!(c.mailauth.spf_fail_reject);
        assert_eq!(c.mailauth.dns_timeout, Duration::from_secs(2));
        let err = Config::parse(
            &format!("{base}[mailauth]\ndns_timeout = \"30s\"\ntimeout = \"5s\"\n"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mailauth.dns_timeout"), "{err}");
    }

    #[test]
    fn acme_section() {
        let base = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n[tls]\ncert = \"/t/fullchain.pem\"\nkey = \"/t/privkey.pem\"\n";
        let c = Config::parse(&format!("{base}[acme]\nemail = \"pm@example.test\"\n"), Path::new("t.toml"))
            .unwrap();
        let a = c.acme.as_ref().unwrap();
        assert_eq!(a.directory, LETSENCRYPT_DIRECTORY);
        assert_eq!(a.http_listen.port(), 80);
        assert_eq!(a.check_interval, Duration::from_secs(43200));
        assert_eq!(a.renew_before, None);
        assert_eq!(a.account_path(c.tls.as_ref().unwrap()), Path::new("/t/acme-account.json"));
        assert_eq!(a.all_names("Mail.example.test"), ["mail.example.test"]);
        let c = Config::parse(
            &format!("{base}[acme]\nemail = \"pm@example.test\"\nrenew_before = \"30d\"\nnames = [\"imap.example.test\"]\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        assert_eq!(c.acme.as_ref().unwrap().renew_before, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(c.acme.as_ref().unwrap().all_names("mail.example.test").len(), 2);

        let err = Config::parse(
            "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n[listen]\nsmtp = [\"0.0.0.0:80\"]\n[acme]\nemail = \"nope\"\ndirectory = \"http://ca\"\nchallenge = \"dns-01\"\ncheck_interval = \"0s\"\n",
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "needs a [tls]",
            "acme.directory",
            "acme.email",
            "acme.challenge",
            "acme.http_listen",
            "acme.check_interval",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        assert_eq!(err.matches("help:").count(), 6, "{err}");
    }

    #[test]
    fn antispam_and_antivirus_sections() {
        let base = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n";
        let c = Config::parse(base, Path::new("t.toml")).unwrap();
        assert!(c.antispam.is_none() && c.antivirus.is_none());
        let c = Config::parse(
            &format!("{base}[antispam]\nrspamd = \"http://127.0.0.1:11333\"\n[antivirus]\nclamd = \"/run/clamav/clamd.ctl\"\n"),
            Path::new("t.toml"),
        )
        .unwrap();
        let a = c.antispam.unwrap();
        assert_eq!(
            (a.on_failure, a.timeout, a.check_submissions),
            (FailMode::Accept, Duration::from_secs(15), false)
        );
        let v = c.antivirus.unwrap();
        assert_eq!((v.on_failure, v.oversize), (FailMode::Tempfail, OversizePolicy::Accept));
        let err = Config::parse(
            &format!(
                "{base}[antispam]\nrspamd = \"https://rspamd\"\ncontroller = \"http://127.0.0.1:11334\"\n\
                 [antivirus]\nclamd = \"clamd.ctl\"\n"
            ),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        for needle in ["antispam.rspamd", "controller_password", "antivirus.clamd"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        assert!(Config::parse(
            &format!("{base}[antivirus]\nclamd = \"/s\"\non_failure = \"maybe\"\n"),
            Path::new("t.toml")
        )
        .is_err());
    }

    #[test]
    fn web_section_and_listeners() {
        let base = "hostname = \"mail.example.test\"\ndata_dir = \"/x\"\n";
        let c = Config::parse(base, Path::new("t.toml")).unwrap();
        assert_eq!(c.web.session_ttl, Duration::from_secs(8 * 3600));
        assert_eq!(c.web.mta_sts_mode, "testing");
        assert!(c.listen.https.is_empty() && c.listen.http.is_empty());
        let err = Config::parse(
            &format!("{base}[listen]\nhttps = [\"0.0.0.0:443\"]\nhttp = [\"0.0.0.0:443\"]\n[web]\nmta_sts_mode = \"on\"\n"),
            Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        for needle in
            ["need TLS", "listen.http: 0.0.0.0:443 is used by more than one listener", "web.mta_sts_mode"]
        {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        // The HTTP listener may be the ACME responder's address: it then answers challenges.
        let shared = format!("{base}[listen]\nhttp = [\"0.0.0.0:80\"]\n[tls]\ncert = \"/c\"\nkey = \"/k\"\n[acme]\nemail = \"a@example.test\"\n");
        Config::parse(&shared, Path::new("t.toml")).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(duration_str::parse("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration_str::parse("5d").unwrap(), Duration::from_secs(432000));
        assert_eq!(duration_str::parse("42").unwrap(), Duration::from_secs(42));
        assert!(duration_str::parse("5 weeks").is_err());
        assert_eq!(duration_str::format(&Duration::from_secs(14400)), "4h");
    }
}

#[cfg(test)]
mod example_tests {
    /// The documented example must always load: it is what users copy.
    #[test]
    fn example_config_is_valid() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/posthaste.toml"));
        super::Config::load(path).unwrap();
    }
}
