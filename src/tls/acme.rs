//! ACME (RFC 8555) with the HTTP-01 challenge: the installer gets the first certificate,
//! the daemon renews it and swaps it into the running listeners.
//!
//! Why HTTP-01 and not TLS-ALPN-01: the CA validates TLS-ALPN-01 on port 443, which no
//! listener of ours uses, so both would need one extra low port. HTTP-01's port 80 is bound
//! by `serve` before it drops root (like the mail ports), and an HTTP responder is far less
//! to get right than a second TLS stack with the `acme-tls/1` protocol. Port 80 then only
//! ever answers `/.well-known/acme-challenge/<token>` (RFC 8555 §8.3); everything else is
//! 404.
//!
//! On disk: the account (key and id, JSON, mode 0600), the certificate chain (0644) and its
//! key (0600), each replaced atomically; the key is written before the chain, and a reload
//! refuses a pair that does not match, so a crash between the two renames never puts a
//! broken pair into service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder,
    OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, error, info, warn};

use super::{write_atomic, CertInfo, CertStore};
use crate::config::Config;

/// An issuance that takes longer than this has failed (the CA is stuck or unreachable).
pub const ISSUE_TIMEOUT: Duration = Duration::from_secs(180);

/// What an issuance needs; paths are where the files are written (host paths).
#[derive(Debug, Clone)]
pub struct Settings {
    pub directory: String,
    pub email: String,
    /// The names on the certificate; the first is the hostname.
    pub names: Vec<String>,
    pub directory_ca: Option<PathBuf>,
    pub account: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Settings {
    /// From the daemon config; None without `[acme]` and `[tls]`.
    pub fn from_config(config: &Config) -> Option<Settings> {
        let (acme, tls) = (config.acme.as_ref()?, config.tls.as_ref()?);
        Some(Settings {
            directory: acme.directory.clone(),
            email: acme.email.clone(),
            names: acme.all_names(&config.hostname),
            directory_ca: acme.directory_ca.clone(),
            account: acme.account_path(tls),
            cert: tls.cert.clone(),
            key: tls.key.clone(),
        })
    }
}

/// Whether the certificate at a path needs issuing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// No file (first issuance).
    Missing,
    /// The file is there but no certificate could be read from it.
    Unreadable(String),
    /// Self-signed (an install that used `mode: self-signed` before): replaced at once.
    SelfSigned,
    /// It lacks some of the names asked for.
    OtherNames { has: Vec<String> },
    /// Past its renewal time (Unix seconds).
    Renew { at: i64 },
    /// Good until `renew_at`.
    Valid { renew_at: i64 },
}

impl Due {
    pub fn is_due(&self) -> bool {
        !matches!(self, Due::Valid { .. })
    }

    /// For the plan and the log.
    pub fn reason(&self) -> String {
        match self {
            Due::Missing => "no certificate yet".into(),
            Due::Unreadable(e) => format!("the current file is unusable ({e})"),
            Due::SelfSigned => "the current certificate is self-signed".into(),
            Due::OtherNames { has } => format!("the current certificate is for {}", has.join(", ")),
            Due::Renew { at } => format!("due for renewal since {}", iso(*at)),
            Due::Valid { renew_at } => format!("valid, renewal due {}", iso(*renew_at)),
        }
    }
}

/// When a certificate should be renewed: `renew_before` its expiry, or else at 2/3 of its
/// lifetime (what Let's Encrypt recommends: a 90-day certificate is renewed at day 60).
pub fn renew_at(info: &CertInfo, renew_before: Option<Duration>) -> i64 {
    match renew_before {
        Some(d) => info.not_after - d.as_secs() as i64,
        None => info.not_before + (info.not_after - info.not_before) * 2 / 3,
    }
}

/// Whether `cert` must be (re-)issued for `names`, at `now` (Unix seconds).
pub fn due(cert: &Path, names: &[String], renew_before: Option<Duration>, now: i64) -> Due {
    if !cert.exists() {
        return Due::Missing;
    }
    let info = match CertInfo::read(cert) {
        Ok(i) => i,
        Err(e) => return Due::Unreadable(format!("{e:#}")),
    };
    if info.self_signed {
        return Due::SelfSigned;
    }
    if !info.covers(names) {
        return Due::OtherNames { has: info.names };
    }
    let at = renew_at(&info, renew_before);
    if now >= at {
        Due::Renew { at }
    } else {
        Due::Valid { renew_at: at }
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn iso(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

/// The HTTP-01 responder's tokens: token → key authorization (RFC 8555 §8.1, §8.3).
#[derive(Debug, Clone, Default)]
pub struct Challenges(Arc<Mutex<HashMap<String, String>>>);

impl Challenges {
    fn insert(&self, token: &str, key_authorization: &str) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }
    fn remove(&self, token: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
    }
    /// The key authorization for `token`, if a challenge is open (the web listener's HTTP side
    /// answers with it when it shares the responder's address).
    pub fn get(&self, token: &str) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    /// Answer HTTP requests on `listener` until `shutdown` turns true.
    pub async fn serve(self, listener: TcpListener, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        if let Ok(a) = listener.local_addr() {
            info!(listener = "acme-http", addr = %a, "listening");
        }
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) =
                            tokio::time::timeout(Duration::from_secs(10), me.answer(stream, peer)).await
                        {
                            debug!(client = %peer.ip(), error = %e, "HTTP-01 request timed out");
                        }
                    });
                }
                Err(e) => {
                    warn!(listener = "acme-http", error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// One request, one response, then close. Only `GET` (and `HEAD`) of
    /// `/.well-known/acme-challenge/<token>` with a token we hold gets a 200 and the key
    /// authorization as the body (RFC 8555 §8.3); anything else a 404.
    async fn answer(&self, mut stream: TcpStream, peer: SocketAddr) {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let mut words = head.lines().next().unwrap_or("").split(' ');
        let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let body = match (method, target.strip_prefix("/.well-known/acme-challenge/")) {
            ("GET" | "HEAD", Some(token)) => self.get(token),
            _ => None,
        };
        debug!(client = %peer.ip(), method, target, found = body.is_some(), "HTTP-01 request");
        let response = match body {
            Some(b) => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                b.len(),
                if method == "HEAD" { "" } else { b.as_str() }
            ),
            None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
        };
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }
}

/// The account file: the credentials with the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Obtain a certificate for `s.names` and write it (key, then chain) where `s` says. The
/// HTTP-01 responses are published in `challenges`, which something must be serving on
/// port 80 of the names (the installer's temporary listener, or the daemon's). Nothing is
/// written unless a certificate was issued, except the account file right after the CA
/// created the account (so the next attempt reuses it).
pub async fn issue(s: &Settings, challenges: &Challenges) -> anyhow::Result<CertInfo> {
    super::install_crypto_provider();
    match tokio::time::timeout(ISSUE_TIMEOUT, issue_inner(s, challenges)).await {
        Ok(r) => r,
        Err(_) => bail!(
            "the ACME CA at {} did not finish within {} s (no certificate was written)\nhelp: check that this host reaches the CA over HTTPS, and try again later",
            s.directory,
            ISSUE_TIMEOUT.as_secs()
        ),
    }
}

fn unreachable(s: &Settings, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "cannot reach the ACME CA at {}: {e} (no certificate was requested)\nhelp: check the directory URL (acme.directory, or tls.directory in the answers) and that this host reaches it over HTTPS (DNS, firewall, proxy){}",
        s.directory,
        if s.directory_ca.is_some() { "; acme.directory_ca must be the CA that signed the directory's HTTPS certificate" } else { "" }
    )
}

async fn account(s: &Settings) -> anyhow::Result<Account> {
    let builder = || {
        match &s.directory_ca {
        Some(ca) => Account::builder_with_root(ca).map_err(|e| {
            anyhow!("cannot use {} as the CA of the ACME directory: {e}\nhelp: acme.directory_ca must be a PEM certificate file", ca.display())
        }),
        None => Account::builder().map_err(|e| anyhow!("cannot set up the HTTPS client: {e}\nhelp: the system's CA certificates (package ca-certificates) must be installed")),
    }
    };
    if let Ok(text) = std::fs::read(&s.account) {
        match serde_json::from_slice::<StoredAccount>(&text) {
            Ok(stored) if stored.directory == s.directory => {
                return builder()?.from_credentials(stored.credentials).await.map_err(|e| unreachable(s, e));
            }
            Ok(_) => {
                info!(account = %s.account.display(), "the ACME account is for another CA; creating one with {}", s.directory)
            }
            Err(e) => {
                warn!(account = %s.account.display(), error = %e, "unreadable ACME account file; creating a new account")
            }
        }
    }
    let contact = format!("mailto:{}", s.email);
    let (account, credentials) = builder()?
        .create(
            &NewAccount { contact: &[&contact], terms_of_service_agreed: true, only_return_existing: false },
            s.directory.clone(),
            None,
        )
        .await
        .map_err(|e| match e {
            instant_acme::Error::Api(p) => anyhow!(
                "the ACME CA at {} refused to create an account for {}: {p}\nhelp: check acme.email (tls.email in the answers); the CA's terms are accepted on your behalf",
                s.directory,
                s.email
            ),
            other => unreachable(s, other),
        })?;
    let stored = serde_json::to_vec_pretty(&StoredAccount { directory: s.directory.clone(), credentials })?;
    if let Some(dir) = s.account.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(&s.account, &stored, 0o600).context("cannot store the ACME account")?;
    info!(account = %s.account.display(), id = account.id(), "ACME account created");
    Ok(account)
}

async fn issue_inner(s: &Settings, challenges: &Challenges) -> anyhow::Result<CertInfo> {
    let account = account(s).await?;
    let identifiers: Vec<Identifier> = s.names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| anyhow!("the ACME CA refused the order for {}: {e}\nhelp: the names must be public DNS names the CA may issue for (check CAA records and rate limits)", s.names.join(", ")))?;

    let mut tokens = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| anyhow!("cannot fetch an ACME authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => bail!("an ACME authorization is {other:?}, not pending\nhelp: try again; a new order gets new authorizations"),
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                anyhow!("the ACME CA offers no http-01 challenge for {name}\nhelp: this CA needs another challenge type, which posthaste does not support")
            })?;
            challenges.insert(&challenge.token, challenge.key_authorization().as_str());
            tokens.push(challenge.token.clone());
            challenge.set_ready().await.map_err(|e| anyhow!("the ACME CA rejected the challenge for {name}: {e}"))?;
        }
        // The CA now fetches http://<name>/.well-known/acme-challenge/<token> from us.
        let status = order.poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90))).await;
        match status {
            Ok(OrderStatus::Ready) => {}
            Ok(status) => {
                let detail = failed_authorizations(&mut order).await;
                bail!(
                    "the ACME CA could not validate {} (order {status:?}){detail}\nhelp: each name must resolve (A/AAAA) to this host, and port 80 there must reach posthaste's HTTP-01 responder (acme.http_listen)",
                    s.names.join(", ")
                )
            }
            Err(e) => bail!("waiting for the ACME CA to validate {}: {e}\nhelp: try again; if it keeps failing, check port 80 from outside", s.names.join(", ")),
        }
        let key_pem = order.finalize().await.map_err(|e| anyhow!("the ACME CA refused to finalize the order: {e}"))?;
        let chain = order
            .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(60)))
            .await
            .map_err(|e| anyhow!("the ACME CA did not deliver the certificate: {e}\nhelp: try again later"))?;
        anyhow::Ok((key_pem, chain))
    }
    .await;
    for t in &tokens {
        challenges.remove(t);
    }
    let (key_pem, chain) = result?;

    let info = CertInfo::from_pem(chain.as_bytes())
        .context("the ACME CA sent something that is not a certificate")?;
    if !info.covers(&s.names) {
        bail!(
            "the ACME CA issued a certificate for {} instead of {}\nhelp: report this to the CA",
            info.names.join(", "),
            s.names.join(", ")
        );
    }
    for dir in [s.cert.parent(), s.key.parent()].into_iter().flatten() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(&s.key, key_pem.as_bytes(), 0o600)?;
    write_atomic(&s.cert, chain.as_bytes(), 0o644)?;
    info!(event = "certificate_issued", names = %s.names.join(","), serial = %info.serial, not_after = %iso(info.not_after), "ACME certificate issued");
    Ok(info)
}

/// Why the authorizations of a failed order failed, from the CA's problem documents.
async fn failed_authorizations(order: &mut instant_acme::Order) -> String {
    let mut out = String::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                out += &format!(": {}: {p}", authz.identifier());
            }
        }
    }
    out
}

/// Bind the HTTP-01 listener, with a message that says what to do when it cannot.
pub async fn bind_http(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "cannot listen on {addr} for ACME HTTP-01 challenges\nhelp: stop what holds the port (`ss -ltnp 'sport = :{}'`; a running posthaste answers challenges itself and renews on its own), or change acme.http_listen",
            addr.port()
        )
    })
}

/// Issue with a temporary HTTP-01 listener on `http_listen` (the installer's way).
pub async fn issue_with_listener(s: &Settings, http_listen: SocketAddr) -> anyhow::Result<CertInfo> {
    let listener = bind_http(http_listen).await?;
    let challenges = Challenges::default();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(challenges.clone().serve(listener, rx));
    let result = issue(s, &challenges).await;
    let _ = stop.send(true);
    let _ = server.await;
    result
}

/// The daemon's renewal task: look at the certificate now and every `check_interval`
/// (sooner when its renewal time comes first); when it is due, issue a new one and swap it
/// into `store`, which every listener uses for its next handshake.
pub async fn renew_loop(
    config: Arc<Config>,
    store: Arc<CertStore>,
    challenges: Challenges,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let (Some(acme), Some(s)) = (config.acme.clone(), Settings::from_config(&config)) else { return };
    loop {
        let state = due(&s.cert, &s.names, acme.renew_before, now());
        let mut wait = acme.check_interval;
        match &state {
            Due::Valid { renew_at } => {
                debug!(cert = %s.cert.display(), "{}", state.reason());
                let until = (*renew_at - now()).max(1) as u64;
                wait = wait.min(Duration::from_secs(until));
            }
            _ => {
                info!(event = "certificate_renewing", reason = %state.reason(), "renewing the ACME certificate");
                match issue(&s, &challenges).await {
                    Ok(_) => match store.reload() {
                        Ok(info) => {
                            info!(event = "certificate_renewed", serial = %info.serial, not_after = %iso(info.not_after), "new certificate in use")
                        }
                        Err(e) => {
                            error!(event = "certificate_reload_failed", error = %format!("{e:#}"), "the new certificate was written but cannot be loaded")
                        }
                    },
                    Err(e) => {
                        error!(event = "certificate_renewal_failed", error = %format!("{e:#}"), retry_in = %crate::config::duration_str::format(&wait), "ACME renewal failed; the current certificate stays in use")
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_time() {
        let info = CertInfo {
            serial: "01".into(),
            not_before: 0,
            not_after: 90,
            names: vec![],
            issuer: String::new(),
            self_signed: false,
        };
        assert_eq!(renew_at(&info, None), 60);
        assert_eq!(renew_at(&info, Some(Duration::from_secs(30))), 60);
        assert_eq!(renew_at(&info, Some(Duration::from_secs(100))), -10);
    }

    #[test]
    fn due_states() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let names = vec!["mail.example.test".to_owned()];
        assert_eq!(due(&c, &names, None, now()), Due::Missing);
        std::fs::write(&c, "junk").unwrap();
        assert!(matches!(due(&c, &names, None, now()), Due::Unreadable(_)));
        std::fs::remove_file(&c).unwrap();
        super::super::generate_self_signed("mail.example.test", &[], &c, &k).unwrap();
        assert_eq!(due(&c, &names, None, now()), Due::SelfSigned);
        // The same certificate signed by a CA: valid 2024-01-01 .. 2035-01-01, 2/3 is in 2031.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let mut params = rcgen::CertificateParams::new(names.clone()).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2035, 1, 1);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&c, params.signed_by(&leaf_key, &ca, &ca_key).unwrap().pem()).unwrap();
        let at = match due(&c, &names, None, now()) {
            Due::Valid { renew_at } => renew_at,
            other => panic!("{other:?}"),
        };
        assert!(at > now());
        assert!(matches!(due(&c, &names, None, at), Due::Renew { .. }));
        assert!(matches!(
            due(&c, &names, Some(Duration::from_secs(20 * 365 * 86400)), now()),
            Due::Renew { .. }
        ));
        let other = vec!["imap.example.test".to_owned()];
        assert_eq!(due(&c, &other, None, now()), Due::OtherNames { has: names.clone() });
    }

    #[tokio::test]
    async fn http01_responder_answers_only_known_tokens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let challenges = Challenges::default();
        challenges.insert("tok", "tok.thumb");
        let (_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(challenges.clone().serve(listener, rx));
        async fn get(addr: SocketAddr, path: &str) -> String {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
        let ok = get(addr, "/.well-known/acme-challenge/tok").await;
        assert!(ok.starts_with("HTTP/1.1 200") && ok.ends_with("\r\n\r\ntok.thumb"), "{ok}");
        assert!(get(addr, "/.well-known/acme-challenge/other").await.starts_with("HTTP/1.1 404"));
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        challenges.remove("tok");
        assert!(get(addr, "/.well-known/acme-challenge/tok").await.starts_with("HTTP/1.1 404"));
    }
}
