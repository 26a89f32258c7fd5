//! Message authentication: DKIM signing of submitted mail and, on the MX, SPF/DKIM/DMARC/
//! ARC/iprev verification with an `Authentication-Results` header (RFC 8601).
//!
//! The protocols themselves are mail-auth's (Stalwart's library); this module decides what
//! to sign with (keys.rs), which resolver to ask (`[dns] nameservers`, bounded timeouts),
//! and what a result means for the message (verify.rs: header, Junk, or a refusal).
//!
//! - keys.rs     the per-domain key files, their generation, and the DNS records to publish
//! - verify.rs   the inbound checks and the policy decision
//! - results.rs  removing `Authentication-Results` headers that claim to be ours (RFC 8601 §5)

pub mod keys;
mod results;
mod verify;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use mail_auth::common::crypto::SigningKey;
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::DkimSigner;
use mail_auth::MessageAuthenticator;
use tracing::warn;

use crate::config::{Config, MailAuthConfig};
use crate::dns::{self, Resolver as _};
use crate::filter::{Decision, MessageInfo};
pub use results::{authserv_id, strip_fields, strip_own_results};
pub use verify::OwnSignature;

/// RFC 6376 §5.4: the header fields we sign, when present. §5.4.1 recommends these; From
/// is required (§5.4) and is listed once more than it occurs ("oversigned", §8.15), so a
/// second From added later breaks the signature instead of being shown to the reader.
pub const SIGNED_HEADERS: [&str; 10] = [
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Signing keys and the verifier's resolver, shared by all SMTP sessions.
pub struct MailAuth {
    config: MailAuthConfig,
    dkim_dir: PathBuf,
    /// Where the verifier's resolver comes from (see [`crate::dns::Resolver`] for how
    /// mail-auth is given one).
    dns: DnsSource,
    /// Built on first use, not at startup: `serve` writes its pidfile before it installs
    /// its signal handlers, and a slower start there lets a `queue flush` SIGUSR1 kill it.
    /// None inside when no resolver could be built (logged once): nothing is verified.
    authenticator: OnceLock<Option<MessageAuthenticator>>,
    /// Keys of domains we signed for. A domain without keys is looked up again each time
    /// (a key made by `posthaste domain add` is used without a restart).
    keys: Mutex<HashMap<String, Arc<keys::DomainKeys>>>,
    /// Domains we already warned about (missing or unreadable keys): once per domain.
    warned: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for MailAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailAuth").field("config", &self.config).field("dkim_dir", &self.dkim_dir).finish()
    }
}

enum DnsSource {
    /// `[dns] nameservers` (empty: the system's).
    Config(Vec<SocketAddr>),
    /// A resolver given by the caller (tests: a [`crate::dns::Zone`]).
    Given(Arc<dyn dns::Resolver>),
}

impl MailAuth {
    pub fn from_config(config: &Config) -> MailAuth {
        Self::with_dns_source(config, DnsSource::Config(config.dns.nameservers.clone()))
    }

    /// Like [`MailAuth::from_config`], verifying with `dns` instead of `[dns]`.
    pub fn with_dns(config: &Config, dns: Arc<dyn dns::Resolver>) -> MailAuth {
        Self::with_dns_source(config, DnsSource::Given(dns))
    }

    fn with_dns_source(config: &Config, dns: DnsSource) -> MailAuth {
        MailAuth {
            config: config.mailauth.clone(),
            dkim_dir: config.dkim_dir(),
            dns,
            authenticator: OnceLock::new(),
            keys: Mutex::new(HashMap::new()),
            warned: Mutex::new(HashSet::new()),
        }
    }

    fn authenticator(&self) -> Option<&MessageAuthenticator> {
        self.authenticator
            .get_or_init(|| match self.resolver() {
                Ok(r) => Some(MessageAuthenticator(r)),
                Err(e) => {
                    warn!(error = %e, "mailauth: no DNS resolver, mail is not verified (help: check /etc/resolv.conf or set [dns] nameservers)");
                    None
                }
            })
            .as_ref()
    }

    /// Verify an inbound (MX) message and decide by the sender domain's DMARC policy.
    pub async fn verify_inbound(&self, info: &MessageInfo<'_>, message: &[u8]) -> Decision {
        if !self.config.verify {
            return Decision::default();
        }
        let Some(auth) = self.authenticator() else { return Decision::default() };
        verify::inbound(auth, &self.config, info, message).await
    }

    /// `DKIM-Signature` header lines (CRLF-terminated) for a message submitted by a local
    /// user of `domain`; empty when the domain has no keys.
    pub fn sign(&self, domain: &str, message: &[u8]) -> String {
        if !self.config.sign {
            return String::new();
        }
        let domain = domain.to_ascii_lowercase();
        let Some(keys) = self.domain_keys(&domain) else { return String::new() };
        let headers = headers_to_sign(message);
        if headers.is_empty() {
            return String::new();
        }
        let mut out = String::new();
        // Ed25519 first, RSA second: both are prepended in this order, and verifiers
        // that do not know Ed25519 skip it (RFC 8463 §3).
        if let Some(key) = &keys.ed25519 {
            let signer = DkimSigner::from_key(KeyRef(key)).domain(&domain).selector(keys::ED25519_SELECTOR);
            self.push_signature(&mut out, &domain, signer.headers(headers.clone()).sign(message));
        }
        if let Some(key) = &keys.rsa {
            let signer = DkimSigner::from_key(KeyRef(key)).domain(&domain).selector(keys::RSA_SELECTOR);
            self.push_signature(&mut out, &domain, signer.headers(headers.clone()).sign(message));
        }
        out
    }

    fn push_signature(
        &self,
        out: &mut String,
        domain: &str,
        result: mail_auth::Result<mail_auth::dkim::Signature>,
    ) {
        match result {
            Ok(sig) => out.push_str(&sig.to_header()),
            Err(e) => {
                warn!(domain, error = %e, "dkim: signing failed, the message goes out without this signature")
            }
        }
    }

    /// The cached keys of `domain`, loading them on first use. None (and one warning per
    /// domain) when it has none.
    fn domain_keys(&self, domain: &str) -> Option<Arc<keys::DomainKeys>> {
        if let Some(k) = self.keys.lock().expect("keys lock").get(domain) {
            return Some(k.clone());
        }
        let problem = match keys::DomainKeys::load(&self.dkim_dir, domain) {
            Ok(k) if !k.is_empty() => {
                if keys::missing(&self.dkim_dir, domain) {
                    self.warn_once(
                        domain,
                        "one of the domain's DKIM keys is missing; signing with the other".into(),
                    );
                }
                let k = Arc::new(k);
                self.keys.lock().expect("keys lock").insert(domain.to_owned(), k.clone());
                return Some(k);
            }
            Ok(_) => format!("no DKIM keys in {}", keys::domain_dir(&self.dkim_dir, domain).display()),
            Err(e) => e.to_string(),
        };
        self.warn_once(domain, problem);
        None
    }

    fn warn_once(&self, domain: &str, problem: String) {
        if self.warned.lock().expect("warned lock").insert(domain.to_owned()) {
            warn!(domain, problem = %problem, "dkim: mail from this domain is sent unsigned (help: `posthaste dns {domain}` makes the missing keys and prints the records to publish)");
        }
    }

    /// Verify the DKIM signatures a message carries for our own domains against the keys
    /// on disk (not DNS), e.g. for `posthaste check` on a message it sent through us: proves
    /// the signing works before, and independently of, the records being published.
    pub async fn verify_own(&self, message: &[u8]) -> Vec<OwnSignature> {
        let Some(auth) = self.authenticator() else { return Vec::new() };
        verify::own(auth, &self.dkim_dir, message).await
    }
}

/// A cached key lent to one signer (mail-auth's signers own their key).
struct KeyRef<'a, K>(&'a K);

impl<K: SigningKey> SigningKey for KeyRef<'_, K> {
    type Hasher = K::Hasher;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

/// The domain of the (first) From: address, for `d=`: DMARC (RFC 7489 §3.1.1) needs the
/// signing domain to align with it.
pub fn author_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(message)?;
    let from = parsed.from()?.first()?.address()?.to_owned();
    from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

/// The names from [`SIGNED_HEADERS`] the message has (each once, in that order), plus one
/// more From (oversigning, RFC 6376 §8.15).
fn headers_to_sign(message: &[u8]) -> Vec<String> {
    let present = header_names(message);
    let mut out: Vec<String> = SIGNED_HEADERS
        .iter()
        .filter(|h| present.iter().any(|p| p.eq_ignore_ascii_case(h)))
        .map(|h| h.to_string())
        .collect();
    if out.first().is_some_and(|h| h == "From") {
        out.push("From".into());
    } else {
        // RFC 6376 §5.4: From MUST be signed; without one there is nothing to sign.
        out.clear();
    }
    out
}

/// The field names of the header section (RFC 5322 §2.2), in order; broken lines and
/// continuation lines at the very start are no fields.
fn header_names(message: &[u8]) -> Vec<String> {
    crate::header::fields(message)
        .filter(|f| !f.is_continuation())
        .filter_map(|f| f.name())
        .map(|n| String::from_utf8_lossy(n).trim().to_owned())
        .collect()
}

impl MailAuth {
    /// The hickory resolver mail-auth asks: on `[dns] nameservers` (else the system's)
    /// with the `[mailauth]` timeout and one attempt, so an unanswering server costs a
    /// bounded time and then reads as temperror.
    fn resolver(&self) -> std::io::Result<dns::TokioResolver> {
        match &self.dns {
            DnsSource::Config(nameservers) => {
                let limits = dns::Limits { timeout: self.config.dns_timeout, attempts: 1 };
                dns::Hickory::new(nameservers, limits)?.hickory()
            }
            DnsSource::Given(dns) => dns.hickory(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_present_headers_and_oversigns_from() {
        let msg = b"From: a@example.test\r\nTo: b@example.org\r\nsubject: hi\r\nX-Other: 1\r\nMIME-Version: 1.0\r\n\r\nbody\r\n";
        assert_eq!(headers_to_sign(msg), ["From", "To", "Subject", "MIME-Version", "From"]);
        let folded =
            b"To: b@example.org,\r\n c@example.org\r\nFrom: a@example.test\r\n\r\nCc: not a header\r\n";
        assert_eq!(headers_to_sign(folded), ["From", "To", "From"]);
        assert!(headers_to_sign(b"To: b@example.org\r\n\r\nbody\r\n").is_empty());
    }

    /// Our two signatures verify against the key files (no DNS: the resolver points at a
    /// port where nothing answers), and fail once the body changes.
    #[tokio::test]
    async fn signatures_verify_with_our_own_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[mailauth]\ndns_timeout = \"1s\"\n",
            tmp.path().display()
        );
        let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        keys::ensure_domain_keys(&config.dkim_dir(), "example.test", None).unwrap();
        let auth = MailAuth::from_config(&config);
        let msg = "From: Alice <alice@example.test>\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nHello\r\n";
        let sig = auth.sign("example.test", msg.as_bytes());
        assert_eq!(sig.matches("DKIM-Signature:").count(), 2, "{sig}");
        let signed = format!("{sig}{msg}");
        let results = auth.verify_own(signed.as_bytes()).await;
        assert_eq!(results.len(), 2, "{results:?}");
        assert!(results.iter().all(OwnSignature::passed), "{results:?}");
        let algs: Vec<&str> = results.iter().map(|r| r.algorithm.as_str()).collect();
        assert_eq!(algs, ["ed25519-sha256", "rsa-sha256"]);
        let altered = signed.replace("Hello", "Jello");
        let results = auth.verify_own(altered.as_bytes()).await;
        assert_eq!(results.len(), 2, "{results:?}");
        assert!(results.iter().all(|r| !r.passed()), "{results:?}");
        // Another domain's keys are not ours to check; a domain without keys signs nothing.
        assert!(auth.sign("other.test", msg.as_bytes()).is_empty());
    }

    /// The in-process DNS double serves mail-auth's own lookups (over its loopback server):
    /// SPF, DMARC and iprev run for real without dnsmasq.
    #[tokio::test]
    async fn inbound_checks_ask_the_resolver_they_are_given() {
        use crate::address::Address;
        use crate::dns::Zone;
        let zone = Arc::new(Zone::new());
        zone.add_txt("good.test", "v=spf1 ip4:192.0.2.1 -all")
            .add_txt("bank.test", "v=spf1 ip4:198.51.100.7 -all")
            .add_txt("_dmarc.bank.test", "v=DMARC1; p=reject")
            .add_ptr([192, 0, 2, 1], "mx.good.test")
            .add_addr("mx.good.test", [192, 0, 2, 1]);
        let text = "hostname = \"mail.example.test\"\ndata_dir = \"/nonexistent\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n";
        let config = Config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let auth = MailAuth::with_dns(&config, zone.clone());
        let rcpt = [Address::parse("alice@example.test").unwrap()];
        let check = |sender: &str, ip: [u8; 4], from: &str| {
            let sender = Address::parse(sender).unwrap();
            let msg = format!("From: <{from}>\r\nTo: alice@example.test\r\nSubject: x\r\n\r\nhi\r\n");
            let auth = &auth;
            let rcpt = &rcpt;
            async move {
                let info = MessageInfo {
                    client_ip: ip.into(),
                    helo: Some("mx.good.test"),
                    sender: Some(&sender),
                    recipients: rcpt,
                    auth_user: None,
                    submission: false,
                    hostname: "mail.example.test",
                };
                auth.verify_inbound(&info, msg.as_bytes()).await
            }
        };
        let ok = check("a@good.test", [192, 0, 2, 1], "a@good.test").await;
        assert!(ok.reject.is_none(), "{:?}", ok.reject);
        assert!(ok.headers.contains("spf=pass"), "{}", ok.headers);
        assert!(ok.headers.contains("iprev=pass"), "{}", ok.headers);
        let spoof = check("a@bank.test", [192, 0, 2, 1], "ceo@bank.test").await;
        let reject = spoof.reject.expect("DMARC p=reject refuses the spoof");
        assert_eq!((reject.code, reject.enhanced), (550, "5.7.1"));
        assert!(spoof.headers.contains("dmarc=fail"), "{}", spoof.headers);
        let asked = zone.asked();
        for q in ["TXT good.test", "TXT _dmarc.bank.test", "PTR 1.2.0.192.in-addr.arpa"] {
            assert!(asked.contains(&q.to_owned()), "{q} not asked: {asked:?}");
        }
    }

    #[test]
    fn author_domain_is_the_from_header_domain() {
        assert_eq!(
            author_domain(b"From: Alice <Alice@Example.TEST>\r\nTo: b@x.org\r\n\r\n").as_deref(),
            Some("example.test")
        );
        assert_eq!(author_domain(b"To: b@x.org\r\n\r\n"), None);
    }
}
