//! Real SMTP clients: swaks and Python's smtplib (tests/py/smtp_send.py).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{repo_root, require, run, Out};

/// Runs swaks with `args` (e.g. `["--server", "127.0.0.1:2525", "--to", "a@b"]`).
/// swaks exits non-zero when the server rejects something; the transcript is in stdout
/// (`<~ ` lines are replies after TLS, `<** ` rejected replies).
pub fn swaks(args: &[&str]) -> Out {
    let bin = require("swaks", "swaks");
    // swaks --tls needs Net::SSLeay; without it swaks exits with a message that is easy
    // to mistake for a server failure.
    if args.iter().any(|a| a.starts_with("--tls")) {
        let probe = run(
            {
                let mut c = Command::new("perl");
                c.args(["-MNet::SSLeay", "-MIO::Socket::SSL", "-e1"]);
                c
            },
            None,
        );
        assert!(
            probe.success(),
            "swaks --tls needs the Debian packages `libnet-ssleay-perl` and `libio-socket-ssl-perl`:\n{}",
            probe.stderr
        );
    }
    let mut cmd = Command::new(bin);
    // --hide-informational would lose why a connection failed; keep everything.
    cmd.args(args);
    run(cmd, None)
}

/// `python3 tests/py/<script>` when `script` is a file name ending in `.py`, otherwise
/// `python3 -c <script>`; arguments follow.
pub fn python(script: &str, args: &[&str]) -> Out {
    let bin = require("python3", "python3");
    let mut cmd = Command::new(bin);
    if script.ends_with(".py") && !script.contains('\n') {
        let path = py_dir().join(script);
        assert!(path.exists(), "no such helper script {}", path.display());
        cmd.arg(path);
    } else {
        cmd.arg("-c").arg(script);
    }
    cmd.args(args);
    run(cmd, None)
}

pub fn py_dir() -> PathBuf {
    repo_root().join("tests/py")
}

/// One server reply seen by smtp_send.py: `step` is connect, ehlo, starttls, auth, mail,
/// rcpt (with `arg` = the recipient), data, dot (the reply to the final dot), quit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub step: String,
    pub arg: Option<String>,
    pub code: u16,
    pub text: String,
}

/// What smtp_send.py saw.
#[derive(Debug, Clone)]
pub struct SmtpTranscript {
    pub replies: Vec<SmtpReply>,
    /// `{"version": "TLSv1.3", "cipher": …}` once TLS was up.
    pub tls: Option<serde_json::Value>,
    /// A connection or protocol error that stopped the client, if any.
    pub error: Option<String>,
    pub raw: String,
}

impl SmtpTranscript {
    /// The code of the first reply to `step` (panics if the step was not reached).
    #[track_caller]
    pub fn code(&self, step: &str) -> u16 {
        self.reply(step).unwrap_or_else(|| panic!("no {step} step in transcript: {}", self.raw)).code
    }

    pub fn reply(&self, step: &str) -> Option<&SmtpReply> {
        self.replies.iter().find(|r| r.step == step)
    }

    /// The last reply to `step` (e.g. the EHLO after STARTTLS).
    pub fn last(&self, step: &str) -> Option<&SmtpReply> {
        self.replies.iter().rev().find(|r| r.step == step)
    }

    pub fn rcpt_code(&self, rcpt: &str) -> Option<u16> {
        self.replies.iter().find(|r| r.step == "rcpt" && r.arg.as_deref() == Some(rcpt)).map(|r| r.code)
    }

    /// True when the final dot got a 250.
    pub fn accepted(&self) -> bool {
        self.reply("dot").map(|r| r.code == 250).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Plain,
    StartTls,
    /// Implicit TLS (port 465).
    Implicit,
}

/// Builder over tests/py/smtp_send.py:
/// `SmtpClient::new(addr).starttls(&ca).tls_name("mail.example.test").login("u", "p")
///  .from("a@x").to("b@y").body("hi").send()`.
#[derive(Debug, Clone)]
pub struct SmtpClient {
    addr: SocketAddr,
    mode: TlsMode,
    ca: Option<PathBuf>,
    tls_name: Option<String>,
    login: Option<(String, String)>,
    helo: Option<String>,
    from: String,
    to: Vec<String>,
    body: Option<String>,
    subject: Option<String>,
    data_file: Option<PathBuf>,
}

impl SmtpClient {
    pub fn new(addr: SocketAddr) -> SmtpClient {
        SmtpClient {
            addr,
            mode: TlsMode::Plain,
            ca: None,
            tls_name: None,
            login: None,
            helo: None,
            from: "sender@remote.test".into(),
            to: vec![],
            body: None,
            subject: None,
            data_file: None,
        }
    }
    /// STARTTLS, verifying the server against `ca` (a self-signed cert is its own CA).
    pub fn starttls(mut self, ca: &Path) -> Self {
        self.mode = TlsMode::StartTls;
        self.ca = Some(ca.to_owned());
        self
    }
    /// Implicit TLS, verifying against `ca`.
    pub fn implicit_tls(mut self, ca: &Path) -> Self {
        self.mode = TlsMode::Implicit;
        self.ca = Some(ca.to_owned());
        self
    }
    /// TLS without certificate verification (opportunistic, like MTAs do).
    pub fn tls_unverified(mut self, mode: TlsMode) -> Self {
        self.mode = mode;
        self.ca = None;
        self
    }
    /// The name to verify in the certificate (default: the IP connected to).
    pub fn tls_name(mut self, name: &str) -> Self {
        self.tls_name = Some(name.into());
        self
    }
    pub fn login(mut self, user: &str, password: &str) -> Self {
        self.login = Some((user.into(), password.into()));
        self
    }
    pub fn helo(mut self, name: &str) -> Self {
        self.helo = Some(name.into());
        self
    }
    pub fn from(mut self, addr: &str) -> Self {
        self.from = addr.into();
        self
    }
    pub fn to(mut self, addr: &str) -> Self {
        self.to.push(addr.into());
        self
    }
    pub fn subject(mut self, s: &str) -> Self {
        self.subject = Some(s.into());
        self
    }
    pub fn body(mut self, b: &str) -> Self {
        self.body = Some(b.into());
        self
    }
    /// Send this file as the message (headers and body) instead of a generated one.
    pub fn data_file(mut self, p: &Path) -> Self {
        self.data_file = Some(p.to_owned());
        self
    }

    pub fn send(&self) -> SmtpTranscript {
        assert!(!self.to.is_empty(), "SmtpClient needs at least one recipient");
        let mut args: Vec<String> = vec![
            "--host".into(),
            self.addr.ip().to_string(),
            "--port".into(),
            self.addr.port().to_string(),
            "--mode".into(),
            match self.mode {
                TlsMode::Plain => "plain",
                TlsMode::StartTls => "starttls",
                TlsMode::Implicit => "ssl",
            }
            .into(),
            "--from".into(),
            self.from.clone(),
        ];
        for t in &self.to {
            args.extend(["--to".into(), t.clone()]);
        }
        let mut opt = |flag: &str, v: &Option<String>| {
            if let Some(v) = v {
                args.extend([flag.to_owned(), v.clone()]);
            }
        };
        opt("--cafile", &self.ca.as_ref().map(|p| p.display().to_string()));
        opt("--tls-name", &self.tls_name);
        opt("--helo", &self.helo);
        opt("--body", &self.body);
        opt("--subject", &self.subject);
        opt("--data-file", &self.data_file.as_ref().map(|p| p.display().to_string()));
        if let Some((u, p)) = &self.login {
            args.extend(["--user".into(), u.clone(), "--password".into(), p.clone()]);
        }
        let argv: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let out = python("smtp_send.py", &argv);
        assert!(out.success(), "smtp_send.py crashed:\n{}", out.all());
        let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("bad JSON from smtp_send.py ({e}):\n{}", out.all()));
        let replies = v["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| SmtpReply {
                step: s["step"].as_str().unwrap_or("").into(),
                arg: s["arg"].as_str().map(String::from),
                code: s["code"].as_u64().unwrap_or(0) as u16,
                text: s["text"].as_str().unwrap_or("").into(),
            })
            .collect();
        SmtpTranscript {
            replies,
            tls: (!v["tls"].is_null()).then(|| v["tls"].clone()),
            error: v["error"].as_str().map(String::from),
            raw: out.stdout,
        }
    }
}
