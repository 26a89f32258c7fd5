//! The clamd client: each message is streamed to clamd with `INSTREAM` over its unix
//! socket or TCP (clamd(8), "INSTREAM": chunks of a 4-byte big-endian length and the
//! bytes, ended by a zero length; the reply is `stream: OK` or `stream: <name> FOUND`).
//! Commands use the `z` prefix, so every reply ends with a NUL byte.
//!
//! Verdicts at the end of DATA: a virus → `554 5.7.1` (the signature is logged and named
//! in the reply); clamd down, slow or broken → `451 4.7.1` unless `on_failure = "accept"`;
//! a message above `max_size` follows `oversize`.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::{sanitize, Decision, Endpoint, MessageInfo, Reply};
use crate::config::{AntivirusConfig, FailMode, OversizePolicy};

/// clamd's default StreamMaxLength is 25 MB; chunks this size keep few syscalls.
const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
pub struct Clamd {
    endpoint: Endpoint,
    timeout: Duration,
    on_failure: FailMode,
    max_size: u64,
    oversize: OversizePolicy,
}

/// What clamd said about one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Virus(String),
}

impl Clamd {
    pub fn new(c: &AntivirusConfig) -> Result<Clamd, String> {
        Ok(Clamd {
            endpoint: Endpoint::parse_socket(&c.clamd)?,
            timeout: c.timeout,
            on_failure: c.on_failure,
            max_size: c.max_size,
            oversize: c.oversize,
        })
    }

    /// The virus check of one message, as a [`Decision`].
    pub async fn check(&self, info: &MessageInfo<'_>, message: &[u8]) -> Decision {
        let d = Decision::default();
        if message.len() as u64 > self.max_size {
            let why = format!("message of {} bytes is larger than antivirus.max_size", message.len());
            warn!(event = "antivirus", client = %info.client_ip, size = message.len(), policy = ?self.oversize,
                  "message too large to scan");
            return match self.oversize {
                OversizePolicy::Accept => d.header("X-Virus-Status", &format!("Unchecked ({why})")),
                OversizePolicy::Tempfail => Decision {
                    reject: Some(Reply::tempfail("Message too large for the virus scanner, try again later")),
                    ..d
                },
                // RFC 3463 §3.4: X.3.4 "message too big for system".
                OversizePolicy::Reject => Decision {
                    reject: Some(Reply {
                        code: 552,
                        enhanced: "5.3.4",
                        text: "Message too large for the virus scanner".into(),
                    }),
                    ..d
                },
            };
        }
        match self.scan(message).await {
            Ok(Verdict::Clean) => {
                debug!(event = "antivirus", client = %info.client_ip, result = "clean");
                d.header("X-Virus-Scanned", "clamd; clean")
            }
            Ok(Verdict::Virus(name)) => {
                warn!(event = "antivirus", client = %info.client_ip, result = "virus", signature = %name,
                      from = %info.sender.map(|s| s.to_string()).unwrap_or_default(),
                      auth = info.auth_user.unwrap_or(""), "virus found");
                // RFC 3463 §3.8: X.7.1 "delivery not authorized, message refused".
                Decision {
                    reject: Some(Reply {
                        code: 554,
                        enhanced: "5.7.1",
                        text: format!("Message rejected: virus found ({})", sanitize(&name)),
                    }),
                    ..d
                }
            }
            Err(e) => {
                warn!(event = "antivirus", client = %info.client_ip, result = "error", error = %e,
                      on_failure = ?self.on_failure, "clamd gave no verdict");
                match self.on_failure {
                    FailMode::Accept => {
                        d.header("X-Virus-Status", &format!("Unchecked (clamd: {})", sanitize(&e)))
                    }
                    FailMode::Tempfail => Decision {
                        reject: Some(Reply::tempfail("Virus scanner unavailable, try again later")),
                        ..d
                    },
                }
            }
        }
    }

    /// Streams `data` to clamd and returns its verdict, within the configured timeout.
    pub async fn scan(&self, data: &[u8]) -> Result<Verdict, String> {
        let reply = tokio::time::timeout(self.timeout, self.instream(data))
            .await
            .map_err(|_| format!("no answer from {} within {:?}", self.endpoint, self.timeout))??;
        parse_reply(&reply)
    }

    async fn instream(&self, data: &[u8]) -> Result<String, String> {
        let mut conn =
            self.endpoint.connect().await.map_err(|e| format!("cannot connect to {}: {e}", self.endpoint))?;
        let sent = async {
            conn.write_all(b"zINSTREAM\0").await?;
            for chunk in data.chunks(CHUNK) {
                conn.write_all(&(chunk.len() as u32).to_be_bytes()).await?;
                conn.write_all(chunk).await?;
            }
            conn.write_all(&0u32.to_be_bytes()).await?;
            conn.flush().await
        }
        .await;
        // clamd may stop reading early (size limit) and say why: read its reply either way.
        let reply = read_reply(&mut conn).await;
        match (sent, reply) {
            (_, Ok(r)) if !r.is_empty() => Ok(r),
            (Err(e), _) => Err(format!("sending to {}: {e}", self.endpoint)),
            (Ok(()), Err(e)) => Err(format!("reading from {}: {e}", self.endpoint)),
            (Ok(()), Ok(_)) => Err(format!("{} closed the connection without a verdict", self.endpoint)),
        }
    }

    /// `zPING` → `PONG`, and clamd's version (for `posthaste check`).
    pub async fn health(&self) -> Result<String, String> {
        let ask = |cmd: &'static [u8]| async move {
            let mut conn = self.endpoint.connect().await.map_err(|e| {
                format!(
                    "cannot connect to {}: {e} (help: is clamd running? `systemctl status clamav-daemon`)",
                    self.endpoint
                )
            })?;
            conn.write_all(cmd).await.map_err(|e| e.to_string())?;
            read_reply(&mut conn).await.map_err(|e| e.to_string())
        };
        let t = Duration::from_secs(5);
        let pong = tokio::time::timeout(t, ask(b"zPING\0"))
            .await
            .map_err(|_| "no answer within 5s".to_owned())??;
        if pong != "PONG" {
            return Err(format!("unexpected answer to PING: {pong:?}"));
        }
        let version = tokio::time::timeout(t, ask(b"zVERSION\0"))
            .await
            .unwrap_or(Ok(String::new()))
            .unwrap_or_default();
        Ok(format!("{} answers PONG ({version})", self.endpoint))
    }
}

/// Reads up to the terminating NUL (or EOF), at most 4 KiB.
async fn read_reply(conn: &mut Box<dyn super::Conn>) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&0) || buf.len() > 4096 {
            break;
        }
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).trim().to_owned())
}

/// `stream: OK`, `stream: Eicar-Test-Signature FOUND`, or `… ERROR`.
fn parse_reply(reply: &str) -> Result<Verdict, String> {
    let body = reply.strip_prefix("stream:").map(str::trim).unwrap_or(reply);
    if body == "OK" {
        Ok(Verdict::Clean)
    } else if let Some(name) = body.strip_suffix(" FOUND") {
        Ok(Verdict::Virus(name.trim().to_owned()))
    } else {
        Err(format!("clamd answered {:?}", sanitize(reply)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        assert_eq!(parse_reply("stream: OK").unwrap(), Verdict::Clean);
        assert_eq!(
            parse_reply("stream: Eicar-Test-Signature.UNOFFICIAL FOUND").unwrap(),
            Verdict::Virus("Eicar-Test-Signature.UNOFFICIAL".into())
        );
        assert!(parse_reply("INSTREAM size limit exceeded. ERROR").unwrap_err().contains("size limit"));
    }
}
