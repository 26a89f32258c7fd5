//! The rspamd client: `POST /checkv2` on the normal worker with the envelope in request
//! headers (rspamd "protocol" documentation: `IP`, `Helo`, `From`, `Rcpt` once per
//! recipient, `User` for authenticated senders, `MTA-Name`), and learning
//! through the controller (`/learnspam`, `/learnham`, authenticated with `Password`).
//! No `Hostname` header: posthaste does no reverse DNS lookup of its clients, and without
//! the header rspamd resolves the client's name itself (its HFILTER/RDNS rules need it).
//!
//! A small HTTP/1.1 client of our own (one request per connection, `Connection: close`):
//! rspamd is on loopback, requests are one POST each, and a general HTTP crate would bring
//! a second TLS stack we do not need here.
//!
//! Actions (rspamd's `action` field) at the end of DATA:
//! - `reject` → `550 5.7.1`;
//! - `soft reject`, `greylist` → `451 4.7.1`;
//! - `add header`, `rewrite subject` → accepted into the recipient's Junk folder;
//! - `no action` → INBOX.
//!
//! Every accepted message gets `X-Spam-Status` (and score, action, symbols). rspamd down,
//! slow or broken → `on_failure`: accept with `X-Spam-Status: Unchecked (…)` or `451 4.7.1`.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::{sanitize, Decision, Endpoint, MessageInfo, Reply};
use crate::address::Address;
use crate::config::{AntispamConfig, FailMode};

/// Replies larger than this are refused (a /checkv2 answer is a few KiB).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct Rspamd {
    endpoint: Endpoint,
    timeout: Duration,
    on_failure: FailMode,
    max_size: u64,
    check_submissions: bool,
    controller: Option<Endpoint>,
    password: Option<String>,
}

/// The parts of rspamd's `/checkv2` answer we use.
#[derive(Debug, Clone, Deserialize)]
pub struct CheckResult {
    pub action: String,
    pub score: f64,
    #[serde(default)]
    pub required_score: f64,
    #[serde(default)]
    pub symbols: std::collections::BTreeMap<String, Symbol>,
    #[serde(default)]
    pub messages: std::collections::BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Symbol {
    #[serde(default)]
    pub score: f64,
}

impl Rspamd {
    pub fn new(c: &AntispamConfig) -> Result<Rspamd, String> {
        Ok(Rspamd {
            endpoint: Endpoint::parse_http(&c.rspamd)?,
            timeout: c.timeout,
            on_failure: c.on_failure,
            max_size: c.max_size,
            check_submissions: c.check_submissions,
            controller: c.controller.as_deref().map(Endpoint::parse_http).transpose()?,
            password: c.controller_password.clone(),
        })
    }

    pub fn check_submissions(&self) -> bool {
        self.check_submissions
    }

    pub fn can_learn(&self) -> bool {
        self.controller.is_some()
    }

    /// The spam check of one message, as a [`Decision`].
    pub async fn check(&self, info: &MessageInfo<'_>, message: &[u8]) -> Decision {
        let d = Decision::default();
        if message.len() as u64 > self.max_size {
            debug!(
                event = "antispam",
                size = message.len(),
                "message larger than antispam.max_size: not checked"
            );
            return d.header("X-Spam-Status", "Unchecked (larger than antispam.max_size)");
        }
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.checkv2(info, message)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer from {} within {:?}", self.endpoint, self.timeout)),
        };
        let r = match result {
            Ok(r) => r,
            Err(e) => {
                warn!(event = "antispam", client = %info.client_ip, result = "error", error = %e,
                      on_failure = ?self.on_failure, "rspamd gave no verdict");
                return match self.on_failure {
                    FailMode::Accept => {
                        d.header("X-Spam-Status", &format!("Unchecked (rspamd: {})", sanitize(&e)))
                    }
                    FailMode::Tempfail => Decision {
                        reject: Some(Reply::tempfail("Spam filter unavailable, try again later")),
                        ..d
                    },
                };
            }
        };
        info!(event = "antispam", client = %info.client_ip, action = %r.action, score = r.score,
              symbols = %symbol_names(&r), ms = started.elapsed().as_millis() as u64, "rspamd verdict");
        decision_for(&r)
    }

    async fn checkv2(&self, info: &MessageInfo<'_>, message: &[u8]) -> Result<CheckResult, String> {
        let mut headers: Vec<(&str, String)> =
            vec![("IP", info.client_ip.to_string()), ("MTA-Name", info.hostname.to_owned())];
        if let Some(h) = info.helo {
            headers.push(("Helo", h.to_owned()));
        }
        // The null reverse-path is sent as an empty From (rspamd reads it as `<>`).
        headers.push(("From", info.sender.map(|s| s.to_string()).unwrap_or_default()));
        for r in info.recipients {
            headers.push(("Rcpt", r.to_string()));
        }
        if let Some(u) = info.auth_user {
            headers.push(("User", u.to_owned()));
        }
        let (status, body) = request(&self.endpoint, "POST", "/checkv2", &headers, message).await?;
        if status != 200 {
            return Err(format!(
                "{} answered HTTP {status}: {}",
                self.endpoint,
                sanitize(&String::from_utf8_lossy(&body))
            ));
        }
        serde_json::from_slice(&body).map_err(|e| format!("unreadable answer from {}: {e}", self.endpoint))
    }

    /// Teaches rspamd's Bayes classifier one message (`/learnspam` or `/learnham`).
    pub async fn learn(&self, message: &[u8], spam: bool) -> Result<String, String> {
        let Some(ctl) = &self.controller else { return Err("no antispam.controller configured".into()) };
        let path = if spam { "/learnspam" } else { "/learnham" };
        let headers = vec![("Password", self.password.clone().unwrap_or_default())];
        let (status, body) =
            tokio::time::timeout(self.timeout, request(ctl, "POST", path, &headers, message))
                .await
                .map_err(|_| format!("no answer from the controller {ctl} within {:?}", self.timeout))??;
        let text = sanitize(&String::from_utf8_lossy(&body));
        match status {
            200 => Ok(text),
            // rspamd answers 208 when it has learned this very message before.
            208 => Ok(format!("already learned: {text}")),
            401 | 403 => Err(format!("{ctl} refused the password (help: antispam.controller_password must match the controller's password): {text}")),
            _ => Err(format!("{ctl} answered HTTP {status}: {text}")),
        }
    }

    /// Reads the copies `uids` of folder `folder` from the store and learns each.
    pub(super) async fn learn_from_store(
        &self,
        store: crate::store::Store,
        account: Address,
        folder: String,
        uids: Vec<u32>,
        spam: bool,
    ) {
        let what = if spam { "spam" } else { "ham" };
        let acct = account.clone();
        let f = folder.clone();
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Vec<u8>>> {
            let mb = store.open_mailbox(&acct, &f, false)?;
            let mut out = Vec::new();
            for uid in uids {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut mb.open_message(uid)?, &mut buf)?;
                out.push(buf);
            }
            Ok(out)
        })
        .await;
        let messages = match read {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                return warn!(event = "antispam_learn", account = %account, folder = %folder, error = %e, "cannot read the messages to learn")
            }
            Err(e) => return warn!(event = "antispam_learn", error = %e, "learning task failed"),
        };
        for m in messages {
            match self.learn(&m, spam).await {
                Ok(r) => {
                    info!(event = "antispam_learn", account = %account, folder = %folder, learned = what, result = %r, "rspamd learned a message")
                }
                Err(e) => {
                    warn!(event = "antispam_learn", account = %account, folder = %folder, learned = what, error = %e, "rspamd did not learn a message")
                }
            }
        }
    }

    /// `GET /ping` on the worker (and on the controller, plus `/stat` to check the password).
    pub async fn health(&self) -> Vec<(&'static str, Result<String, String>)> {
        let t = Duration::from_secs(5);
        let ping = |ep: &Endpoint, headers: Vec<(&'static str, String)>, path: &'static str| {
            let ep = ep.clone();
            async move {
                match tokio::time::timeout(t, request(&ep, "GET", path, &headers, b"")).await {
                    Err(_) => Err(format!("{ep}: no answer within 5s")),
                    Ok(Err(e)) => Err(format!("{e} (help: is rspamd running? `systemctl status rspamd`)")),
                    Ok(Ok((200, body))) => Ok(format!(
                        "{ep} {path}: {}",
                        sanitize(String::from_utf8_lossy(&body).trim()).chars().take(40).collect::<String>()
                    )),
                    Ok(Ok((status, _))) => Err(format!(
                        "{ep} {path} answered HTTP {status}{}",
                        if status == 401 || status == 403 {
                            " (help: antispam.controller_password does not match rspamd's controller password)"
                        } else {
                            ""
                        }
                    )),
                }
            }
        };
        let mut out = vec![("rspamd", ping(&self.endpoint, vec![], "/ping").await)];
        if let Some(ctl) = &self.controller {
            let pw = self.password.clone().unwrap_or_default();
            out.push((
                "rspamd controller",
                ping(ctl, vec![("Password", pw)], "/stat").await.map(|_| format!("{ctl}: password accepted")),
            ));
        }
        out
    }
}

fn symbol_names(r: &CheckResult) -> String {
    let mut v: Vec<(&String, f64)> = r.symbols.iter().map(|(n, s)| (n, s.score)).collect();
    // Highest scores first: the reasons that matter most come first in the header.
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal).then(a.0.cmp(b.0)));
    v.iter().map(|(n, s)| format!("{}({s:.2})", sanitize(n))).collect::<Vec<_>>().join(", ")
}

/// rspamd's verdict as our decision (see the module documentation).
pub fn decision_for(r: &CheckResult) -> Decision {
    let junk = matches!(r.action.as_str(), "add header" | "rewrite subject");
    let yes = junk || r.action == "reject";
    let mut d = Decision::default()
        .header(
            "X-Spam-Status",
            &format!(
                "{}, score={:.2} required={:.2}",
                if yes { "Yes" } else { "No" },
                r.score,
                r.required_score
            ),
        )
        .header("X-Spam-Action", &sanitize(&r.action))
        .header("X-Spam-Score", &format!("{:.2}", r.score));
    let symbols = symbol_names(r);
    if !symbols.is_empty() {
        d = d.header("X-Spam-Symbols", &symbols);
    }
    if junk {
        d = d.header("X-Spam-Flag", "YES");
    }
    d.junk = junk;
    let smtp_message =
        r.messages.get("smtp_message").and_then(|v| v.as_str()).map(sanitize).filter(|s| !s.is_empty());
    d.reject = match r.action.as_str() {
        // RFC 3463 §3.8: X.7.1 "delivery not authorized, message refused".
        "reject" => Some(Reply {
            code: 550,
            enhanced: "5.7.1",
            text: smtp_message
                .map(|m| format!("Message rejected as spam: {m}"))
                .unwrap_or_else(|| "Message rejected as spam".into()),
        }),
        // RFC 5321 §4.2.5: a 4yz reply makes the client retry (greylisting relies on it).
        "soft reject" | "greylist" => {
            Some(Reply::tempfail(smtp_message.unwrap_or_else(|| "Try again later".into())))
        }
        _ => None,
    };
    d
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and the body.
pub async fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut conn = ep.connect().await.map_err(|e| format!("cannot connect to {ep}: {e}"))?;
    let host = match ep {
        Endpoint::Tcp { host, port } => format!("{host}:{port}"),
        Endpoint::Unix(_) => "localhost".into(),
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        // Header values come from the SMTP envelope, which is already CR/LF-free; keep it so.
        let value: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let io = async {
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body).await?;
        conn.flush().await?;
        let mut resp = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = conn.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            resp.extend_from_slice(&chunk[..n]);
            if resp.len() > MAX_RESPONSE {
                return Err(std::io::Error::other("response too large"));
            }
            // Stop as soon as the whole body is there (some servers keep the socket open).
            if response_complete(&resp) {
                break;
            }
        }
        Ok::<_, std::io::Error>(resp)
    };
    let resp = io.await.map_err(|e| format!("talking to {ep}: {e}"))?;
    parse_response(&resp).ok_or_else(|| format!("{ep} sent an unreadable HTTP response"))
}

fn split_head(resp: &[u8]) -> Option<(u16, Vec<(String, String)>, &[u8])> {
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&resp[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers, &resp[end + 4..]))
}

fn response_complete(resp: &[u8]) -> bool {
    match split_head(resp) {
        Some((_, headers, body)) => {
            match headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok())
            {
                Some(len) => body.len() >= len,
                None => {
                    headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
                        && body.ends_with(b"0\r\n\r\n")
                }
            }
        }
        None => false,
    }
}

/// The status and body of a complete response (Content-Length, chunked, or until close).
fn parse_response(resp: &[u8]) -> Option<(u16, Vec<u8>)> {
    let (status, headers, body) = split_head(resp)?;
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        // RFC 9112 §7.1: size in hex (extensions after ';'), CRLF, data, CRLF; 0 ends.
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_s = std::str::from_utf8(&rest[..eol]).ok()?;
            let size = usize::from_str_radix(size_s.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if size == 0 {
                return Some((status, out));
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
    }
    let len = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse::<usize>().ok());
    match len {
        Some(len) => Some((status, body.get(..len)?.to_vec())),
        None => Some((status, body.to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong";
        assert!(response_complete(r));
        assert_eq!(parse_response(r).unwrap(), (200, b"pong".to_vec()));
        assert!(!response_complete(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npong"));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert!(response_complete(c));
        assert_eq!(parse_response(c).unwrap(), (200, b"abcde".to_vec()));
        assert!(parse_response(b"garbage\r\n\r\n").is_none());
    }

    fn result(action: &str, score: f64) -> CheckResult {
        serde_json::from_value(serde_json::json!({
            "action": action, "score": score, "required_score": 15.0,
            "symbols": {"GTUBE": {"name": "GTUBE", "score": 0.0}, "MISSING_DATE": {"name": "MISSING_DATE", "score": 1.0}},
            "messages": {"smtp_message": "Gtube pattern"}
        }))
        .unwrap()
    }

    #[test]
    fn actions_map_to_decisions() {
        let d = decision_for(&result("reject", 15.0));
        let r = d.reject.unwrap();
        assert_eq!((r.code, r.enhanced), (550, "5.7.1"));
        assert!(r.text.contains("Gtube pattern"));
        for a in ["soft reject", "greylist"] {
            let r = decision_for(&result(a, 5.0)).reject.unwrap();
            assert_eq!((r.code, r.enhanced), (451, "4.7.1"), "{a}");
        }
        for a in ["add header", "rewrite subject"] {
            let d = decision_for(&result(a, 6.0));
            assert!(d.junk && d.reject.is_none(), "{a}");
            assert!(d.headers.contains("X-Spam-Flag: YES\r\n"));
            assert!(d.headers.contains("X-Spam-Status: Yes, score=6.00 required=15.00\r\n"), "{}", d.headers);
        }
        let d = decision_for(&result("no action", 1.0));
        assert!(!d.junk && d.reject.is_none());
        assert!(d.headers.contains("X-Spam-Status: No, score=1.00"));
        // Highest score first.
        assert!(d.headers.contains("X-Spam-Symbols: MISSING_DATE(1.00), GTUBE(0.00)\r\n"), "{}", d.headers);
    }
}
