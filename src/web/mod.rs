//! The web front door: one HTTPS listener for the admin panel (`/admin/`), self-service
//! (`/account/`), the JSON API (`/api/v1/`) and client autoconfiguration, and a plain HTTP
//! listener that redirects to it and answers ACME HTTP-01 challenges.
//!
//! Both are [`net::Protocol`]s: the guard at connect, connection limits and implicit TLS
//! (over the shared `CertStore`, so ACME renewal and SIGHUP reach this listener like every
//! other) come from the one front door. hyper serves HTTP/1.1 and HTTP/2 on the stream;
//! which one is told by the client's first bytes (the HTTP/2 preface), and ALPN offers
//! both (RFC 7540 §3.3, RFC 7301).
//!
//! Layers, each importing only those below it:
//! - `http`: the request as handlers see it, responses and the security headers every
//!   response gets, body and time limits;
//! - `session`: logins in memory (cookie, CSRF token, expiry), the login's CSRF cookie;
//! - `i18n`: English and Russian strings, the language from the cookie or Accept-Language;
//! - `render`: the tera templates (compiled into the binary);
//! - `ops`: what a logged-in admin or an API token may do, scoped by role, each change
//!   through `admin::*` (the CLI's functions) and into the audit log;
//! - `auth` (login, second factor, logout), `pages` (`/admin/`), `account` (`/account/`),
//!   `api` (`/api/v1/`, OpenAPI), `autoconfig` (Thunderbird, Outlook, MTA-STS, Apple
//!   profile): the handlers.
//!
//! May import: `admin`, `address`, `config`, `directory`, `guard`, `net`, `store`, `tls`,
//! `queue` (types), `check` (its report type). Nothing imports `web` but `serve`.

mod account;
mod api;
mod auth;
mod autoconfig;
mod http;
mod i18n;
mod ops;
mod pages;
mod render;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::config::Config;
use crate::directory::Directory;
use crate::guard::Guard;
use crate::net::{self, ConnectionLimiter, Refused, Stream};
use crate::store::Store;
use crate::tls::acme::Challenges;
use crate::tls::CertStore;

pub use autoconfig::mta_sts_policy;
pub use http::Scheme;

/// Which web listener a socket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// `listen.https`: everything, over TLS.
    Https,
    /// `listen.http`: a redirect to https, and ACME challenges.
    Http,
}

/// What every web connection shares.
pub struct Context {
    pub(crate) config: Arc<Config>,
    pub(crate) dir: Directory,
    pub(crate) store: Store,
    pub(crate) guard: Arc<Guard>,
    pub(crate) certs: Option<Arc<CertStore>>,
    tls: Option<TlsAcceptor>,
    limiter: Arc<ConnectionLimiter>,
    pub(crate) sessions: session::Sessions,
    /// The ACME responder's tokens when `acme.http_listen` is one of `listen.http`.
    challenges: Option<Challenges>,
}

impl Context {
    /// `certs`: the daemon's certificate store (HTTPS needs it); `challenges`: given when
    /// the HTTP listener also answers ACME HTTP-01.
    pub fn new(
        config: Arc<Config>,
        dir: Directory,
        store: Store,
        certs: Option<Arc<CertStore>>,
        guard: Arc<Guard>,
        challenges: Option<Challenges>,
    ) -> Context {
        // The same certificate resolver as every listener, plus ALPN: h2 first, so HTTP/2
        // clients use it; HTTP/1.1 clients still get theirs.
        let tls = certs.as_ref().map(|c| {
            let mut cfg = (**c.acceptor().config()).clone();
            cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            TlsAcceptor::from(Arc::new(cfg))
        });
        let w = &config.web;
        Context {
            limiter: ConnectionLimiter::new(w.max_connections, w.max_connections_per_ip),
            sessions: session::Sessions::new(w.session_ttl, w.idle_timeout),
            config: config.clone(),
            dir,
            store,
            guard,
            certs,
            tls,
            challenges,
        }
    }

    /// The ACME responder's tokens, when this HTTP listener answers them.
    pub fn challenges(&self) -> Option<&Challenges> {
        self.challenges.as_ref()
    }

    /// Serve one request (the handlers, without the connection around them). Public for
    /// the in-process tests and the bench.
    pub async fn handle(
        self: &Arc<Self>,
        req: http::Request,
        peer: SocketAddr,
        scheme: Scheme,
    ) -> http::Response {
        http::serve_request(self.clone(), req, peer, scheme).await
    }
}

impl net::Protocol for Context {
    type Profile = Profile;

    fn listener_name(profile: Profile) -> &'static str {
        match profile {
            Profile::Https => "https",
            Profile::Http => "http",
        }
    }

    fn implicit_tls(profile: Profile) -> bool {
        profile == Profile::Https
    }

    fn refusal(why: Refused) -> &'static str {
        // Written before any request is read: a bare HTTP/1.1 response (an HTTP/2 client
        // sees a broken preface and gives up, which is what a refusal is).
        match why {
            Refused::Total => "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 10\r\n\r\n",
            Refused::PerIp => "HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 0\r\nRetry-After: 10\r\n\r\n",
        }
    }

    fn gate(&self) -> &dyn net::Gate {
        &*self.guard
    }

    fn limiter(&self) -> &Arc<ConnectionLimiter> {
        &self.limiter
    }

    fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    async fn session(
        self: Arc<Self>,
        profile: Profile,
        stream: Box<dyn Stream>,
        peer: SocketAddr,
        _tls: bool,
    ) {
        let scheme = match profile {
            Profile::Https => Scheme::Https,
            Profile::Http => Scheme::Http,
        };
        if let Err(e) = http::serve_connection(self, stream, peer, scheme).await {
            debug!(client = %peer.ip(), error = %e, "HTTP connection ended with an error");
        }
    }
}

/// Which handler answers: by listener, host (`mta-sts.`), then path.
async fn route(ctx: &Arc<Context>, req: http::Req) -> http::Response {
    use hyper::StatusCode;
    let path = req.path.as_str();
    if req.scheme == Scheme::Http {
        return plain_http(ctx, &req);
    }
    // ?lang=ru on any page: remember the choice and show the same page without it.
    if let Some(l) = req.query("lang").and_then(i18n::Lang::parse) {
        let mut r = http::redirect(path);
        http::add_cookie(
            &mut r,
            &format!("{}={}; Path=/; Secure; SameSite=Strict; Max-Age=31536000", i18n::COOKIE, l.code()),
        );
        return r;
    }
    let lower = path.to_ascii_lowercase();
    match lower.as_str() {
        "/.well-known/mta-sts.txt" => autoconfig::mta_sts(ctx),
        "/.well-known/autoconfig/mail/config-v1.1.xml" | "/mail/config-v1.1.xml" => {
            autoconfig::thunderbird(ctx, &req).await
        }
        // Outlook asks with this spelling or capitalised.
        "/autodiscover/autodiscover.xml" => autoconfig::outlook(ctx, &req).await,
        "/static/style.css" => {
            let mut r = http::response(StatusCode::OK, "text/css; charset=utf-8", render::STYLE);
            r.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("public, max-age=3600"),
            );
            r
        }
        "/" => http::redirect("/account/"),
        "/admin/login" | "/account/login" | "/login" => auth::login(ctx, &req).await,
        "/login/2fa" => auth::second_factor(ctx, &req).await,
        "/logout" if req.is_post() => auth::logout(ctx, &req).await,
        _ if path == "/admin" || path.starts_with("/admin/") => pages::route(ctx, &req).await,
        _ if path == "/account" || path.starts_with("/account/") => account::route(ctx, &req).await,
        _ if path.starts_with("/api/v1/") => api::route(ctx, &req).await,
        _ => pages::error_page(&req, None, &ops::WebError::NotFound),
    }
}

/// Port 80: ACME challenges (when this listener is the responder), else a permanent
/// redirect to the same path on https (308 keeps the method, RFC 9110 §15.4.9).
fn plain_http(ctx: &Arc<Context>, req: &http::Req) -> http::Response {
    use hyper::StatusCode;
    if let Some(token) = req.path.strip_prefix("/.well-known/acme-challenge/") {
        return match ctx.challenges().and_then(|c| c.get(token)) {
            Some(key_authorization) => {
                http::response(StatusCode::OK, "application/octet-stream", key_authorization)
            }
            None => http::plain(StatusCode::NOT_FOUND, "not found\n"),
        };
    }
    let host = if req.host.is_empty() { ctx.config.hostname.clone() } else { req.host.clone() };
    let port = ctx.config.listen.https.first().map(|a| a.port()).filter(|&p| p != 443);
    let authority = match port {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    let query = if req.query.is_empty() {
        String::new()
    } else {
        format!(
            "?{}",
            req.query
                .iter()
                .map(|(k, v)| format!("{}={}", http::encode(k), http::encode(v)))
                .collect::<Vec<_>>()
                .join("&")
        )
    };
    let mut r = http::plain(StatusCode::PERMANENT_REDIRECT, "moved to https\n");
    if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("https://{authority}{}{query}", req.path)) {
        r.headers_mut().insert(hyper::header::LOCATION, v);
    }
    r
}
