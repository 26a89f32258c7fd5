//! Inbound checks on the MX: SPF for the HELO and MAIL FROM identities (RFC 7208), DKIM
//! (RFC 6376, RFC 8463), ARC (RFC 8617), iprev (RFC 8601 §3), then DMARC (RFC 7489) over
//! the SPF and DKIM results; one `Authentication-Results` header (RFC 8601) records them.
//!
//! The independent checks run at once, all under `[mailauth] timeout`, each DNS query under
//! `dns_timeout`: a dead DNS server makes `temperror`, never a hanging session.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::path::Path;
use std::sync::{Arc, Mutex};

use mail_auth::common::headers::HeaderWriter;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult, MessageAuthenticator,
    Parameters, ResolverCache, SpfOutput, SpfResult, Txt,
};
use tracing::{info, warn};

use crate::config::MailAuthConfig;
use crate::filter::{Decision, MessageInfo, Reply};

pub async fn inbound(
    auth: &MessageAuthenticator,
    config: &MailAuthConfig,
    info: &MessageInfo<'_>,
    message: &[u8],
) -> Decision {
    match tokio::time::timeout(config.timeout, evaluate(auth, config, info, message)).await {
        Ok(decision) => decision,
        Err(_) => {
            warn!(event = "mailauth", client = %info.client_ip, timeout = ?config.timeout,
                  "mailauth: checks did not finish in time; recorded as temperror");
            let headers = format!(
                "Authentication-Results: {};\r\n\tspf=temperror (checks timed out);\r\n\tdkim=temperror (checks timed out);\r\n\tdmarc=temperror (checks timed out)\r\n",
                info.hostname
            );
            Decision { headers, junk: false, reject: config.temperror_defer.then(defer_reply) }
        }
    }
}

/// RFC 3463 4.4.3: a directory (DNS) server failure; the sender retries later.
fn defer_reply() -> Reply {
    Reply {
        code: 451,
        enhanced: "4.4.3",
        text: "Temporary DNS failure while checking the sender's authentication, try again later".into(),
    }
}

/// The HELO name when it is a domain (RFC 7208 §2.3: an address literal or a bare word
/// cannot be checked): the one host name rule, which refuses both (`[…]` has brackets, a
/// dotted quad an all-digit top label, a bare word a single label).
fn helo_domain(helo: &str) -> Option<&str> {
    let h = helo.strip_suffix('.').unwrap_or(helo);
    crate::hostname::is_fqdn(h).then_some(h)
}

async fn evaluate(
    auth: &MessageAuthenticator,
    config: &MailAuthConfig,
    info: &MessageInfo<'_>,
    message: &[u8],
) -> Decision {
    let hostname = info.hostname;
    let ip = info.client_ip;
    let helo = info.helo.unwrap_or("");
    let helo_dom = helo_domain(helo);
    let sender = info.sender.map(|a| a.to_string()).unwrap_or_default();
    // An unparsable message still gets SPF and iprev; DKIM and DMARC then find nothing.
    let msg = AuthenticatedMessage::parse(message).unwrap_or_default();

    let spf_helo = async {
        match helo_dom {
            Some(h) => auth.verify_spf(SpfParameters::verify_ehlo(ip, h, hostname)).await,
            None => SpfOutput::default(),
        }
    };
    let spf_mail = async {
        if sender.is_empty() {
            None
        } else {
            Some(auth.verify_spf(SpfParameters::verify_mail_from(ip, helo, hostname, &sender)).await)
        }
    };
    let (spf_helo, spf_mail, dkim, arc, iprev) = tokio::join!(
        spf_helo,
        spf_mail,
        auth.verify_dkim(&msg),
        auth.verify_arc(&msg),
        auth.verify_iprev(ip)
    );
    // RFC 7208 §2.4: for the null reverse-path the MAIL FROM identity is postmaster@HELO,
    // so its result is the HELO result.
    let spf_mail = spf_mail.unwrap_or_else(|| spf_helo.clone());
    let mail_from_domain = match info.sender {
        Some(a) => a.domain().to_owned(),
        None => helo_dom.unwrap_or("").to_owned(),
    };
    let dmarc = auth.verify_dmarc(DmarcParameters::new(&msg, &dkim, &mail_from_domain, &spf_mail)).await;

    let mut results = AuthenticationResults::new(hostname).with_dkim_results(&dkim, msg.from());
    if let Some(h) = helo_dom {
        results = results.with_spf_ehlo_result(&spf_helo, ip, h);
    }
    let results = results
        .with_spf_mailfrom_result(&spf_mail, ip, &sender, helo)
        .with_dmarc_result(&dmarc)
        .with_arc_result(&arc, ip)
        .with_iprev_result(&iprev, ip);
    let mut headers = results.to_header();
    if dkim.is_empty() {
        // mail-auth writes nothing for an unsigned message; RFC 8601 §2.7.1 has "none".
        let prefix = format!("Authentication-Results: {hostname}");
        headers = headers.replacen(&prefix, &format!("{prefix};\r\n\tdkim=none"), 1);
    }

    let dmarc_result = dmarc.result();
    let domain = dmarc.domain().to_owned();
    let mut decision = Decision { headers, junk: false, reject: None };
    let action = if config.spf_fail_reject && spf_mail.result() == SpfResult::Fail {
        // RFC 7208 §8.4: a receiver may reject on "fail"; RFC 7372 §3.2 gives 5.7.23.
        decision.reject = Some(Reply {
            code: 550,
            enhanced: "5.7.23",
            text: format!("SPF check failed: {} does not allow {ip} to send its mail", spf_mail.domain()),
        });
        "reject (spf)"
    } else if matches!(dmarc_result, DmarcResult::Fail(_)) && config.dmarc_enforce {
        // RFC 7489 §6.3: p=reject asks receivers to refuse what fails DMARC, p=quarantine
        // to treat it as suspicious (here: the Junk folder).
        match dmarc.policy() {
            Policy::Reject => {
                decision.reject = Some(Reply {
                    code: 550,
                    enhanced: "5.7.1",
                    text: format!(
                        "Rejected by the DMARC policy of {domain}: the message is not authenticated by it"
                    ),
                });
                "reject (dmarc)"
            }
            Policy::Quarantine => {
                decision.junk = true;
                "junk (dmarc)"
            }
            Policy::None | Policy::Unspecified => "accept",
        }
    } else if matches!(dmarc_result, DmarcResult::TempError(_)) && config.temperror_defer {
        decision.reject = Some(defer_reply());
        "defer (dmarc temperror)"
    } else {
        "accept"
    };
    info!(event = "mailauth", client = %ip, helo, from = %sender, header_from = msg.from(),
          spf_helo = %lower(spf_helo.result()), spf = %lower(spf_mail.result()),
          dkim = %dkim_summary(&dkim), arc = %arc.result(), iprev = %iprev.result(),
          dmarc = %dmarc_name(&dmarc_result), dmarc_domain = %domain, policy = ?dmarc.policy(), action,
          "authentication results");
    decision
}

fn lower(r: SpfResult) -> String {
    r.to_string().to_ascii_lowercase()
}

fn dmarc_name(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

fn dkim_name(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// `pass,fail` for two signatures; `none` for an unsigned message.
fn dkim_summary(dkim: &[DkimOutput]) -> String {
    if dkim.is_empty() {
        return "none".into();
    }
    dkim.iter().map(|d| dkim_name(d.result())).collect::<Vec<_>>().join(",")
}

/// One DKIM signature of ours on a message, checked against the key on disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnSignature {
    pub domain: String,
    pub selector: String,
    /// `ed25519-sha256` or `rsa-sha256`.
    pub algorithm: String,
    /// `pass`, `fail`, `neutral`, `permerror`, `temperror`.
    pub result: String,
    /// The error, when it did not pass.
    pub reason: Option<String>,
}

impl OwnSignature {
    pub fn passed(&self) -> bool {
        self.result == "pass"
    }
}

/// TXT answers given in advance: our own key records, so no DNS is asked for them.
#[derive(Default)]
struct KnownTxt(Mutex<HashMap<Box<str>, Txt>>);

impl ResolverCache<Box<str>, Txt> for KnownTxt {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("txt lock").get(name).cloned()
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.lock().expect("txt lock").remove(name)
    }

    fn insert(&self, key: Box<str>, value: Txt, _valid_until: std::time::Instant) {
        self.0.lock().expect("txt lock").insert(key, value);
    }
}

/// The message's DKIM signatures by domains that have keys in `dkim_dir`, verified with
/// those keys (see [`super::MailAuth::verify_own`]).
pub async fn own(auth: &MessageAuthenticator, dkim_dir: &Path, message: &[u8]) -> Vec<OwnSignature> {
    let Some(msg) = AuthenticatedMessage::parse(message) else { return Vec::new() };
    let known = KnownTxt::default();
    let mut ours = HashSet::new();
    for header in &msg.dkim_headers {
        let d = header.header.d.to_ascii_lowercase();
        if ours.contains(&d) {
            continue;
        }
        let Ok(records) = super::keys::dns_records(dkim_dir, &d) else { continue };
        for r in records {
            if let Ok(key) = DomainKey::parse(r.value.as_bytes()) {
                let name: Box<str> = format!("{}.", r.name).into();
                known.0.lock().expect("txt lock").insert(name, Txt::DomainKey(Arc::new(key)));
                ours.insert(d.clone());
            }
        }
    }
    if ours.is_empty() {
        return Vec::new();
    }
    let outputs = auth.verify_dkim(Parameters::new(&msg).with_txt_cache(&known)).await;
    outputs
        .iter()
        .filter_map(|o| {
            let sig = o.signature()?;
            if !ours.contains(&sig.d.to_ascii_lowercase()) {
                return None;
            }
            let reason = match o.result() {
                DkimResult::Pass | DkimResult::None => None,
                DkimResult::Neutral(e)
                | DkimResult::Fail(e)
                | DkimResult::PermError(e)
                | DkimResult::TempError(e) => Some(e.to_string()),
            };
            Some(OwnSignature {
                domain: sig.d.clone(),
                selector: sig.s.clone(),
                algorithm: sig.a.name().to_owned(),
                result: dkim_name(o.result()).to_owned(),
                reason,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helo_identities() {
        assert_eq!(helo_domain("mx.example.org"), Some("mx.example.org"));
        assert_eq!(helo_domain("mx.example.org."), Some("mx.example.org"));
        assert_eq!(helo_domain("[192.0.2.1]"), None);
        assert_eq!(helo_domain("192.0.2.1"), None);
        assert_eq!(helo_domain("[IPv6:2001:db8::1]"), None);
        assert_eq!(helo_domain("xn--bcher-kva.example"), Some("xn--bcher-kva.example"));
        assert_eq!(helo_domain("localhost"), None);
        assert_eq!(helo_domain(""), None);
    }
}
