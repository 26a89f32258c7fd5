//! smtp-sink (from Postfix) as a remote SMTP server that records what it receives, or
//! answers with 4xx/5xx replies on chosen commands (retry, bounce and DSN tests).

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{is_root, require, wait_for_port, ProcessGuard, TestDir};

/// One transaction as smtp-sink dumped it (`-d`): its own X-* envelope headers, a
/// Received: header, then the message exactly as the client sent it.
#[derive(Debug, Clone)]
pub struct SinkMessage {
    pub path: PathBuf,
    pub client_addr: String,
    pub helo: String,
    /// The MAIL FROM arguments, e.g. `<a@example.test> SIZE=123`.
    pub mail_args: String,
    /// The RCPT TO arguments, one per RCPT command, e.g. `<b@remote.test>`.
    pub rcpt_args: Vec<String>,
    /// The message as transmitted (headers and body), after smtp-sink's own headers.
    pub data: Vec<u8>,
}

impl SinkMessage {
    /// The reverse-path without brackets or parameters (empty for a bounce, `<>`).
    pub fn mail_from(&self) -> String {
        angle_addr(&self.mail_args)
    }

    pub fn rcpt_to(&self) -> Vec<String> {
        self.rcpt_args.iter().map(|a| angle_addr(a)).collect()
    }

    pub fn data_str(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    fn parse(path: PathBuf, raw: &[u8]) -> SinkMessage {
        let text = String::from_utf8_lossy(raw);
        let mut m = SinkMessage {
            path,
            client_addr: String::new(),
            helo: String::new(),
            mail_args: String::new(),
            rcpt_args: Vec::new(),
            data: Vec::new(),
        };
        // smtp-sink's header block ends with its three-line Received: header; the next
        // line starts the client's message.
        let mut offset = 0;
        let mut in_received = false;
        for line in text.split_inclusive('\n') {
            let l = line.trim_end_matches('\n');
            if in_received {
                if l.starts_with('\t') || l.starts_with(' ') {
                    offset += line.len();
                    continue;
                }
                break;
            }
            if let Some(v) = l.strip_prefix("X-Client-Addr: ") {
                m.client_addr = v.into();
            } else if let Some(v) = l.strip_prefix("X-Helo-Args: ") {
                m.helo = v.into();
            } else if let Some(v) = l.strip_prefix("X-Mail-Args: ") {
                m.mail_args = v.into();
            } else if let Some(v) = l.strip_prefix("X-Rcpt-Args: ") {
                m.rcpt_args.push(v.into());
            } else if l.starts_with("Received: ") {
                in_received = true;
            } else if !l.starts_with("X-Client-Proto: ") {
                break;
            }
            offset += line.len();
        }
        // Drop the empty line smtp-sink appends after each message. (It also stores lines
        // with LF endings, not CRLF.)
        let end = raw.len().saturating_sub(1).max(offset.min(raw.len()));
        m.data = raw[offset.min(raw.len())..end].to_vec();
        m
    }
}

fn angle_addr(args: &str) -> String {
    let a = args.split_whitespace().next().unwrap_or("");
    a.trim_start_matches('<').trim_end_matches('>').to_owned()
}

/// Options for smtp-sink; `SmtpSink::builder(addr)…start(&dir)`.
#[derive(Debug, Clone)]
pub struct SmtpSinkBuilder {
    addr: SocketAddr,
    hostname: String,
    hard_reject: Vec<String>,
    soft_reject: Vec<String>,
    hard_reply: Option<String>,
    soft_reply: Option<String>,
    disconnect: Vec<String>,
    extra: Vec<String>,
}

impl SmtpSinkBuilder {
    /// Greeting/EHLO name (smtp-sink `-h`).
    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.into();
        self
    }
    /// Reject these commands (`MAIL`, `RCPT`, `DATA`, `.` for end of data, `CONNECT`, …)
    /// with a 5xx reply (smtp-sink `-f`). The reply is "500 5.3.0 Error: command failed"
    /// unless `hard_reply` changes it.
    pub fn hard_reject(mut self, commands: &[&str]) -> Self {
        self.hard_reject.extend(commands.iter().map(|c| c.to_string()));
        self
    }
    /// The same with a 4xx reply (smtp-sink `-r`), "450 4.3.0 Error: command failed" by default.
    pub fn soft_reject(mut self, commands: &[&str]) -> Self {
        self.soft_reject.extend(commands.iter().map(|c| c.to_string()));
        self
    }
    /// e.g. "550 5.1.1 No such user" (smtp-sink `-B`).
    pub fn hard_reply(mut self, reply: &str) -> Self {
        self.hard_reply = Some(reply.into());
        self
    }
    /// e.g. "451 4.3.0 Try again later" (smtp-sink `-b`).
    pub fn soft_reply(mut self, reply: &str) -> Self {
        self.soft_reply = Some(reply.into());
        self
    }
    /// Drop the connection without a reply after these commands (smtp-sink `-q`).
    pub fn disconnect_after(mut self, commands: &[&str]) -> Self {
        self.disconnect.extend(commands.iter().map(|c| c.to_string()));
        self
    }
    /// Any other smtp-sink option (see `man smtp-sink`), e.g. `["-w", "5"]`.
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    pub fn start(self, dir: &TestDir) -> SmtpSink {
        let bin = require("smtp-sink", "postfix");
        let tag = format!("{}_{}", self.addr.ip(), self.addr.port());
        let dump = dir.subdir(format!("sink-{tag}"));
        let log = dir.join(format!("sink-{tag}.log"));
        let mut cmd = Command::new(bin);
        if is_root() {
            // smtp-sink refuses to run as root without a user to switch to; root keeps
            // the dump directory writable without chown.
            cmd.args(["-u", "root"]);
        }
        cmd.args(["-h", &self.hostname]);
        // `%M.` plus smtp-sink's random suffix: a new file for every transaction.
        cmd.arg("-d").arg(format!("{}/%M.", dump.display()));
        if !self.hard_reject.is_empty() {
            cmd.args(["-f", &self.hard_reject.join(",")]);
        }
        if !self.soft_reject.is_empty() {
            cmd.args(["-r", &self.soft_reject.join(",")]);
        }
        if let Some(r) = &self.hard_reply {
            cmd.args(["-B", r]);
        }
        if let Some(r) = &self.soft_reply {
            cmd.args(["-b", r]);
        }
        if !self.disconnect.is_empty() {
            cmd.args(["-q", &self.disconnect.join(",")]);
        }
        cmd.args(&self.extra);
        cmd.arg(format!("{}:{}", self.addr.ip(), self.addr.port())).arg("64");
        let mut guard = ProcessGuard::spawn("smtp-sink", cmd, &log);
        wait_for_port(self.addr, Duration::from_secs(10), &mut guard);
        SmtpSink { addr: self.addr, dump, guard }
    }
}

/// A running smtp-sink. Dropping it stops it.
pub struct SmtpSink {
    pub addr: SocketAddr,
    dump: PathBuf,
    guard: ProcessGuard,
}

impl SmtpSink {
    /// An accepting sink on `addr` (e.g. `remote_mx_addr()`).
    pub fn start(dir: &TestDir, addr: SocketAddr) -> SmtpSink {
        SmtpSink::builder(addr).start(dir)
    }

    pub fn builder(addr: SocketAddr) -> SmtpSinkBuilder {
        SmtpSinkBuilder {
            addr,
            hostname: "sink.remote.test".into(),
            hard_reject: vec![],
            soft_reject: vec![],
            hard_reply: None,
            soft_reply: None,
            disconnect: vec![],
            extra: vec![],
        }
    }

    /// Every complete transaction received so far, oldest first.
    ///
    /// smtp-sink creates the dump file at DATA and writes it when the transaction ends,
    /// before it answers the final dot; a file is taken as complete once it ends with the
    /// empty line smtp-sink appends and its size stayed the same for 100 ms.
    pub fn messages(&self) -> Vec<SinkMessage> {
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir(&self.dump)
            .map(|rd| {
                rd.flatten().filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path()))).collect()
            })
            .unwrap_or_default();
        entries.sort();
        let first: Vec<(PathBuf, u64)> =
            entries.iter().filter_map(|(_, p)| Some((p.clone(), fs::metadata(p).ok()?.len()))).collect();
        if first.is_empty() {
            return vec![];
        }
        std::thread::sleep(Duration::from_millis(100));
        first
            .into_iter()
            .filter_map(|(p, len)| {
                let raw = fs::read(&p).ok()?;
                (raw.len() as u64 == len && len > 0 && raw.ends_with(b"\n\n"))
                    .then(|| SinkMessage::parse(p, &raw))
            })
            .collect()
    }

    /// Waits until at least `n` transactions arrived; returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        let start = Instant::now();
        loop {
            let msgs = self.messages();
            if msgs.len() >= n {
                return msgs;
            }
            if start.elapsed() > timeout {
                panic!(
                    "smtp-sink on {} got {} message(s), expected {n}, within {timeout:?}; its log:\n{}",
                    self.addr,
                    msgs.len(),
                    self.guard.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn dump_dir(&self) -> &std::path::Path {
        &self.dump
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Stops the sink now (e.g. to make the next delivery attempt fail to connect).
    pub fn stop(mut self) {
        self.guard.terminate(Duration::from_secs(3));
    }
}
