//! Where a local service listens — TCP `host:port` or a unix socket — as `[antispam]
//! rspamd/controller and `[antivirus] clamd` name it: parsing (with the `help:` the config
//! check shows) and connecting.
//!
//! A leaf: `config` validates these values and `filter` connects to them, so neither has
//! to import the other.

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

/// Where a checker listens: TCP `host:port` or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A connected checker socket.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

impl Endpoint {
    /// `http://host:port[/]` (rspamd) or an absolute unix socket path.
    pub fn parse_http(url: &str) -> Result<Endpoint, String> {
        if url.starts_with('/') {
            return Ok(Endpoint::Unix(url.into()));
        }
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(format!(
                "{url:?} is not an http:// URL (help: rspamd listens on loopback without TLS, e.g. http://127.0.0.1:11333)"
            ));
        };
        let authority = rest.split('/').next().unwrap_or("");
        Self::host_port(authority, 80)
            .ok_or_else(|| format!("{url:?} has no valid host:port (help: e.g. http://127.0.0.1:11333)"))
    }

    /// An absolute unix socket path (clamd's `LocalSocket`) or `host:port` (`TCPSocket`).
    pub fn parse_socket(s: &str) -> Result<Endpoint, String> {
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(s.into()));
        }
        match s.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(format!(
                    "{s:?} is neither an absolute socket path nor host:port (help: e.g. /run/clamav/clamd.ctl or 127.0.0.1:3310)"
                ))
            }
        }
        Self::host_port(s, 0).ok_or_else(|| format!("{s:?} is not a valid host:port"))
    }

    fn host_port(authority: &str, default_port: u16) -> Option<Endpoint> {
        // [v6]:port, host:port or host.
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, rest) = v6.split_once(']')?;
            (h, rest.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None if default_port != 0 => default_port,
            None => return None,
        };
        (!host.is_empty() && port != 0).then(|| Endpoint::Tcp { host: host.to_owned(), port })
    }

    pub async fn connect(&self) -> std::io::Result<Box<dyn Conn>> {
        match self {
            Endpoint::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                let _ = s.set_nodelay(true);
                Ok(Box::new(s))
            }
            Endpoint::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "{host}:{port}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse_http("http://127.0.0.1:11333").unwrap(),
            Endpoint::Tcp { host: "127.0.0.1".into(), port: 11333 }
        );
        assert_eq!(
            Endpoint::parse_http("http://[::1]:11334/").unwrap(),
            Endpoint::Tcp { host: "::1".into(), port: 11334 }
        );
        assert_eq!(
            Endpoint::parse_http("http://localhost").unwrap(),
            Endpoint::Tcp { host: "localhost".into(), port: 80 }
        );
        assert!(Endpoint::parse_http("https://127.0.0.1:11333").unwrap_err().contains("help:"));
        assert_eq!(
            Endpoint::parse_socket("/run/clamav/clamd.ctl").unwrap(),
            Endpoint::Unix("/run/clamav/clamd.ctl".into())
        );
        assert_eq!(
            Endpoint::parse_socket("127.0.0.1:3310").unwrap(),
            Endpoint::Tcp { host: "127.0.0.1".into(), port: 3310 }
        );
        assert!(Endpoint::parse_socket("clamd.ctl").is_err());
        assert!(Endpoint::parse_socket("127.0.0.1").is_err());
    }
}
