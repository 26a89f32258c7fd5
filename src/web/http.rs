//! HTTP plumbing: hyper on a front-door stream, the request as the handlers see it, the
//! responses, the security headers every response carries, and the size and time limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::debug;

use super::i18n::Lang;
use super::Context;
use crate::net::Stream;

/// A request whose body has been read (within `web.max_request_size`).
pub type Request = hyper::Request<Bytes>;
pub type Response = hyper::Response<Full<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

/// Serve HTTP/1.1 or HTTP/2 (told apart by the client's preface) on one connection.
pub async fn serve_connection(
    ctx: Arc<Context>,
    stream: Box<dyn Stream>,
    peer: SocketAddr,
    scheme: Scheme,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let limit = ctx.config.web.max_request_size as usize;
    let timeout = ctx.config.web.request_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        async move {
            // The whole request (headers were read already; the body now) and the answer
            // within the time limit: a slow client holds a connection slot, not the server.
            let answer = tokio::time::timeout(timeout, async {
                let (parts, body) = req.into_parts();
                match Limited::new(body, limit).collect().await {
                    Ok(b) => serve_request(ctx, Request::from_parts(parts, b.to_bytes()), peer, scheme).await,
                    Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                        with_headers(plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n"), scheme)
                    }
                    Err(_) => {
                        with_headers(plain(StatusCode::BAD_REQUEST, "cannot read the request body\n"), scheme)
                    }
                }
            })
            .await;
            Ok::<_, std::convert::Infallible>(answer.unwrap_or_else(|_| {
                with_headers(plain(StatusCode::REQUEST_TIMEOUT, "request timed out\n"), scheme)
            }))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client must send its request headers within this (slowloris).
        .header_read_timeout(timeout)
        .max_buf_size(64 * 1024);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(100).max_header_list_size(64 * 1024);
    builder.serve_connection(TokioIo::new(stream), service).await
}

/// One request through the router, with the security headers added.
pub async fn serve_request(ctx: Arc<Context>, req: Request, peer: SocketAddr, scheme: Scheme) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let r = Req::new(req, peer.ip(), scheme);
    let resp = super::route(&ctx, r).await;
    debug!(
        client = %peer.ip(),
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "web request"
    );
    with_headers(resp, scheme)
}

/// What every response gets. No inline script or style anywhere (CSP), no framing, no
/// sniffing, no referrer (paths are not secret, but nothing leaks), HSTS on HTTPS
/// (RFC 6797 §7.2: never over plain HTTP), and nothing cached that a login produced.
pub fn with_headers(mut resp: Response, scheme: Scheme) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cache-control", "no-store");
    if scheme == Scheme::Https {
        set(h, "strict-transport-security", "max-age=31536000; includeSubDomains");
    }
    resp
}

/// The request as handlers see it.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client: IpAddr,
    /// The Host (or HTTP/2 :authority) without the port, lower case.
    pub host: String,
    pub scheme: Scheme,
    pub lang: Lang,
}

impl Req {
    pub fn new(req: Request, client: IpAddr, scheme: Scheme) -> Req {
        let (parts, body) = req.into_parts();
        let host = parts
            .uri
            .authority()
            .map(|a| a.host().to_owned())
            .or_else(|| parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).map(strip_port))
            .unwrap_or_default()
            .to_ascii_lowercase();
        let query = parts.uri.query().map(parse_form).unwrap_or_default();
        let mut r = Req {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query,
            headers: parts.headers,
            body,
            client: crate::guard::canonical(client),
            host,
            scheme,
            lang: Lang::En,
        };
        r.lang = Lang::choose(r.cookie(super::i18n::COOKIE), r.header("accept-language"));
        r
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A cookie's value (the first of that name).
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|line| {
            line.split(';').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == name).then_some(v)
            })
        })
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The body as an `application/x-www-form-urlencoded` form.
    pub fn form(&self) -> Form {
        Form(parse_form(&String::from_utf8_lossy(&self.body)))
    }

    pub fn is_post(&self) -> bool {
        self.method == Method::POST
    }
}

/// A parsed form (or query string).
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    /// The field, trimmed; "" when absent.
    pub fn text(&self, name: &str) -> &str {
        self.get(name).unwrap_or("").trim()
    }
    pub fn checked(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| !v.is_empty())
    }
}

fn parse_form(s: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

fn strip_port(host: &str) -> String {
    if host.starts_with('[') {
        host.split_once(']').map(|(h, _)| format!("{h}]")).unwrap_or_else(|| host.to_owned())
    } else {
        host.split(':').next().unwrap_or("").to_owned()
    }
}

pub fn response(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

pub fn plain(status: StatusCode, text: &str) -> Response {
    response(status, "text/plain; charset=utf-8", text.to_owned())
}

pub fn html(status: StatusCode, body: String) -> Response {
    response(status, "text/html; charset=utf-8", body)
}

pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    response(status, "application/json", body)
}

/// 303 See Other: after a POST, the browser GETs `location` (no resubmission on reload).
pub fn redirect(location: &str) -> Response {
    let mut r = response(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", Bytes::new());
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

pub fn add_cookie(resp: &mut Response, cookie: &str) {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Percent-decode one path segment (`alice%40example.org` → `alice@example.org`).
pub fn decode_segment(s: &str) -> String {
    percent_decode(s)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) =
                std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encode for a path segment or query value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_cookies_and_segments() {
        assert_eq!(strip_port("Mail.Example.test:8443"), "Mail.Example.test");
        assert_eq!(strip_port("[::1]:443"), "[::1]");
        assert_eq!(decode_segment("alice%40example.test"), "alice@example.test");
        assert_eq!(decode_segment("100%"), "100%");
        assert_eq!(encode("a b@c"), "a%20b%40c");
        let req = hyper::Request::builder()
            .uri("/x?lang=ru&a=1")
            .header("host", "Autoconfig.Example.TEST")
            .header("cookie", "a=1; __Host-ph_session=abc")
            .body(Bytes::new())
            .unwrap();
        let r = Req::new(req, "::ffff:192.0.2.1".parse().unwrap(), Scheme::Https);
        assert_eq!(r.host, "autoconfig.example.test");
        assert_eq!(r.cookie("__Host-ph_session"), Some("abc"));
        assert_eq!(r.query("a"), Some("1"));
        assert_eq!(r.client.to_string(), "192.0.2.1");
    }
}
