//! The answers: what the person installing wants, from an answers file or the wizard.
//!
//! Both end in one validated [`Answers`]. A file is checked completely before anything is
//! planned: unknown keys, wrong types and invalid values are all reported at once, each with
//! its line and a `help:`. The answers actually used are written back (without plaintext
//! passwords) to `/etc/posthaste/answers.yaml`, so a rerun repeats the same deployment and
//! the wizard offers them as defaults.

use std::fmt;
use std::path::{Path, PathBuf};

use super::host::Prompter;
use super::yaml::{self, Node, Value};
use crate::address::{normalize_domain, Address};
use crate::directory::password;
use crate::hostname::Hostname;

pub const SAVED_ANSWERS: &str = "/etc/posthaste/answers.yaml";
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    pub hostname: String,
    pub domains: Vec<String>,
    pub postmaster: Postmaster,
    pub components: Components,
    pub tls: Tls,
    pub replace_existing_mta: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Postmaster {
    pub address: Address,
    pub password: Password,
    /// `password_file` did not exist: the password was generated, and the install writes it
    /// there (mode 0600) before it changes anything, so the file is the record of it.
    pub generated_file: Option<std::path::PathBuf>,
}

/// The postmaster's password. A plaintext one is only ever hashed, never written.
#[derive(Clone, PartialEq)]
pub enum Password {
    /// Read from `password_file` or typed into the wizard.
    Plain(String),
    /// `password_hash`, in Dovecot's `{SCHEME}` form.
    Hash(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Plain(_) => f.write_str("Plain(<redacted>)"),
            Password::Hash(h) => write!(f, "Hash({h})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Components {
    pub antispam: bool,
    pub antivirus: bool,
    pub guard: bool,
}

impl Default for Components {
    fn default() -> Self {
        Components { antispam: true, antivirus: true, guard: true }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tls {
    SelfSigned,
    /// Certificate and key that exist on the target (paths as the daemon sees them).
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Acme {
        email: String,
        directory: String,
        /// Where the HTTP-01 responder listens (install and daemon); default 0.0.0.0:80.
        http_listen: Option<std::net::SocketAddr>,
        /// A PEM CA certificate (on the installing machine, absolute) that signed the
        /// directory's HTTPS certificate: a private CA. Copied to the target.
        directory_ca: Option<PathBuf>,
    },
}

/// One thing wrong in an answers file.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub line: u64,
    pub message: String,
    pub help: Option<String>,
}

/// Everything wrong with an answers file.
#[derive(Debug)]
pub struct AnswersError {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for AnswersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(f, "{} has {n} problem{}:", self.path.display(), if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {}:{}: {}", self.path.display(), p.line, p.message)?;
            if let Some(h) = &p.help {
                write!(f, "\n    help: {h}")?;
            }
        }
        write!(f, "\nhelp: nothing was changed; fix the file and run the install again")
    }
}

impl std::error::Error for AnswersError {}

const TOP_KEYS: &[&str] = &["hostname", "domains", "postmaster", "components", "tls", "replace_existing_mta"];
const POSTMASTER_KEYS: &[&str] = &["address", "password_file", "password_hash"];
const COMPONENT_KEYS: &[&str] = &["antispam", "antivirus", "guard"];

/// Collects problems while walking the tree.
struct Check {
    problems: Vec<Problem>,
}

impl Check {
    fn add(&mut self, line: u64, message: impl Into<String>, help: Option<String>) {
        self.problems.push(Problem { line, message: message.into(), help });
    }

    /// The entries of a mapping, reporting keys outside `allowed` and duplicates.
    fn map<'a>(&mut self, node: &'a Node, what: &str, allowed: &[&str]) -> Option<Vec<(String, &'a Node)>> {
        let Value::Map(entries) = &node.value else {
            self.add(
                node.line,
                format!("{what} must be a mapping (key: value lines), not {}", node.value.type_name()),
                Some(format!("its keys are: {}", allowed.join(", "))),
            );
            return None;
        };
        let mut out: Vec<(String, &Node)> = Vec::new();
        for (k, v) in entries {
            let name = k.key_text();
            if !allowed.contains(&name.as_str()) {
                let help = match closest(&name, allowed) {
                    Some(c) => format!("did you mean `{c}`? The keys of {what} are: {}", allowed.join(", ")),
                    None => format!("the keys of {what} are: {}", allowed.join(", ")),
                };
                self.add(k.line, format!("unknown key `{name}` in {what}"), Some(help));
            } else if out.iter().any(|(n, _)| *n == name) {
                self.add(
                    k.line,
                    format!("`{name}` is given twice in {what}"),
                    Some("keep one of them".into()),
                );
            } else {
                out.push((name, v));
            }
        }
        Some(out)
    }

    fn string(&mut self, node: &Node, key: &str) -> Option<String> {
        match &node.value {
            Value::Str(s) => Some(s.trim().to_owned()),
            other => {
                self.add(
                    node.line,
                    format!("`{key}` must be a string, not {}", other.type_name()),
                    Some(format!("write it as {key}: \"…\"")),
                );
                None
            }
        }
    }

    fn boolean(&mut self, node: &Node, key: &str) -> Option<bool> {
        match &node.value {
            Value::Bool(b) => Some(*b),
            other => {
                self.add(
                    node.line,
                    format!("`{key}` must be true or false, not {}", other.type_name()),
                    Some(format!("write `{key}: true` or `{key}: false` (without quotes)")),
                );
                None
            }
        }
    }
}

fn get<'a>(entries: &[(String, &'a Node)], key: &str) -> Option<&'a Node> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// The allowed key nearest to a misspelt one (at most two edits away).
fn closest<'a>(name: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed.iter().map(|a| (levenshtein(name, a), *a)).filter(|(d, _)| *d <= 2).min().map(|(_, a)| a)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// A domain as typed — U-labels allowed, e.g. `пример.рф` — in the ASCII form DNS and the
/// config use (A-labels, RFC 5890 §2.3.2.1: `xn--e1afmkfd.xn--p1ai`; UTS #46 with the STD3
/// rules), lower case, without a final dot. None if it is not a domain name.
pub fn ascii_domain(s: &str) -> Option<String> {
    let s = s.trim().trim_end_matches('.');
    if s.is_ascii() {
        return normalize_domain(s);
    }
    normalize_domain(&idna::domain_to_ascii_strict(s).ok()?)
}

/// An address whose domain is typed with U-labels, with that domain in A-labels (the local
/// part stays as it is: [`Address`] decides whether it is acceptable).
fn ascii_address(s: &str) -> String {
    match s.trim().rsplit_once('@') {
        Some((local, domain)) if !domain.is_ascii() => match ascii_domain(domain) {
            Some(d) => format!("{local}@{d}"),
            None => s.trim().to_owned(),
        },
        _ => s.trim().to_owned(),
    }
}

/// A fully qualified host name (A-labels), or why not (the one rule: `crate::hostname`).
fn host_name(s: &str) -> Result<String, String> {
    let typed = s.trim().trim_end_matches('.');
    let h = if typed.is_ascii() {
        typed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(typed).map_err(|_| format!("{typed:?} is not a valid host name"))?
    };
    if !h.contains('.') {
        return Err(format!(
            "{typed:?} is not fully qualified: give the whole name the MX record will point to, e.g. mail.example.org"
        ));
    }
    Hostname::parse(&h)
        .map(Hostname::into_string)
        .map_err(|e| format!("{typed:?} is not a valid host name: {e}"))
}

/// 24 random characters from an alphabet without look-alikes (~140 bits).
pub fn generate_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..24).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

impl Answers {
    /// Read and validate an answers file. `password_file` is relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Answers, AnswersError> {
        let fail = |line, message: String, help: &str| AnswersError {
            path: path.to_owned(),
            problems: vec![Problem { line, message, help: Some(help.into()) }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(0, format!("cannot read the answers file: {e}"), "pass the path of a readable YAML file")
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Answers::from_str(&text, base).map_err(|problems| AnswersError { path: path.to_owned(), problems })
    }

    /// Validate answers in YAML; every problem at once.
    pub fn from_str(text: &str, base: &Path) -> Result<Answers, Vec<Problem>> {
        let root = yaml::parse(text).map_err(|e| {
            vec![Problem {
                line: e.line,
                message: format!("not valid YAML: {}", e.message),
                help: Some("see examples/answers.yaml for the format".into()),
            }]
        })?;
        let mut c = Check { problems: Vec::new() };
        let answers = validate(&mut c, &root, base);
        match answers {
            Some(a) if c.problems.is_empty() => Ok(a),
            _ => {
                c.problems.sort_by_key(|p| p.line);
                Err(c.problems)
            }
        }
    }

    /// The answers file to write back: the same keys, the password only as a hash.
    pub fn to_yaml(&self, password_hash: &str) -> String {
        let q = yaml::quote;
        let mut s = String::from(
            "# The answers posthaste install used (no plaintext password). Rerun the same\n\
             # deployment with: posthaste install --answers /etc/posthaste/answers.yaml --yes\n",
        );
        s += &format!("hostname: {}\n", q(&self.hostname));
        s += &format!("domains: [{}]\n", self.domains.iter().map(|d| q(d)).collect::<Vec<_>>().join(", "));
        s += "postmaster:\n";
        s += &format!("  address: {}\n", q(&self.postmaster.address.to_string()));
        s += &format!("  password_hash: {}\n", q(password_hash));
        let c = &self.components;
        s += &format!(
            "components: {{antispam: {}, antivirus: {}, guard: {}}}\n",
            c.antispam, c.antivirus, c.guard
        );
        s += &match &self.tls {
            Tls::SelfSigned => "tls: {mode: self-signed}\n".to_owned(),
            Tls::Files { cert, key } => format!(
                "tls: {{mode: files, cert: {}, key: {}}}\n",
                q(&cert.display().to_string()),
                q(&key.display().to_string())
            ),
            Tls::Acme { email, directory, http_listen, directory_ca } => {
                let mut extra = String::new();
                if let Some(h) = http_listen {
                    extra += &format!(", http_listen: {}", q(&h.to_string()));
                }
                if let Some(ca) = directory_ca {
                    extra += &format!(", directory_ca: {}", q(&ca.display().to_string()));
                }
                format!("tls: {{mode: acme, email: {}, directory: {}{extra}}}\n", q(email), q(directory))
            }
        };
        s += &format!("replace_existing_mta: {}\n", self.replace_existing_mta);
        s
    }
}

fn validate(c: &mut Check, root: &Node, base: &Path) -> Option<Answers> {
    if root.value == Value::Null {
        c.add(1, "the answers file is empty", Some("start from examples/answers.yaml".into()));
        return None;
    }
    let top = c.map(root, "the answers file", TOP_KEYS)?;
    let missing = |c: &mut Check, key: &str, example: &str| {
        c.add(root.line, format!("`{key}` is missing"), Some(format!("add e.g. `{example}`")))
    };

    let hostname = match get(&top, "hostname") {
        None => {
            missing(c, "hostname", "hostname: mail.example.org");
            None
        }
        Some(n) => c.string(n, "hostname").and_then(|h| match host_name(&h) {
            Ok(h) => Some(h),
            Err(e) => {
                let h = h.trim_end_matches('.').to_lowercase();
                c.add(
                    n.line,
                    format!("hostname {h:?} is not a fully qualified domain name: {e}"),
                    Some("use the name your MX record will point to, e.g. mail.example.org".into()),
                );
                None
            }
        }),
    };

    let domains = match get(&top, "domains") {
        None => {
            missing(c, "domains", "domains: [example.org]");
            None
        }
        Some(n) => match &n.value {
            Value::Seq(items) if !items.is_empty() => {
                let mut out: Vec<String> = Vec::new();
                let mut ok = true;
                for item in items {
                    match c.string(item, "domains[]") {
                        Some(d) => match ascii_domain(&d) {
                            Some(d) => {
                                if out.contains(&d) {
                                    c.add(
                                        item.line,
                                        format!("domain {d} is listed twice"),
                                        Some("remove one".into()),
                                    );
                                } else {
                                    out.push(d);
                                }
                            }
                            _ => {
                                ok = false;
                                c.add(
                                    item.line,
                                    format!("{d:?} is not a valid mail domain"),
                                    Some("write the domain of the addresses, e.g. example.org".into()),
                                );
                            }
                        },
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Value::Seq(_) => {
                c.add(
                    n.line,
                    "`domains` is empty",
                    Some("list at least one domain: domains: [example.org]".into()),
                );
                None
            }
            other => {
                c.add(
                    n.line,
                    format!("`domains` must be a list, not {}", other.type_name()),
                    Some("write domains: [example.org] (a list, even for one domain)".into()),
                );
                None
            }
        },
    };

    let postmaster = match get(&top, "postmaster") {
        None => {
            missing(c, "postmaster", "postmaster: {password_file: ./postmaster.pass}");
            None
        }
        Some(n) => postmaster(c, n, domains.as_deref(), base),
    };

    let components = match get(&top, "components") {
        None => Some(Components::default()),
        Some(n) => c.map(n, "components", COMPONENT_KEYS).map(|e| {
            let mut comp = Components::default();
            for (k, v) in e {
                let Some(b) = c.boolean(v, &k) else { continue };
                match k.as_str() {
                    "antispam" => comp.antispam = b,
                    "antivirus" => comp.antivirus = b,
                    _ => comp.guard = b,
                }
            }
            comp
        }),
    };

    let tls = match get(&top, "tls") {
        None => Some(Tls::SelfSigned),
        Some(n) => tls(c, n, base),
    };

    let replace_existing_mta = match get(&top, "replace_existing_mta") {
        None => Some(false),
        Some(n) => c.boolean(n, "replace_existing_mta"),
    };

    Some(Answers {
        hostname: hostname?,
        domains: domains?,
        postmaster: postmaster?,
        components: components?,
        tls: tls?,
        replace_existing_mta: replace_existing_mta?,
    })
}

fn postmaster(c: &mut Check, n: &Node, domains: Option<&[String]>, base: &Path) -> Option<Postmaster> {
    let e = c.map(n, "postmaster", POSTMASTER_KEYS)?;
    let address = match get(&e, "address") {
        None => domains.and_then(|d| d.first()).and_then(|d| Address::parse(&format!("postmaster@{d}")).ok()),
        Some(a) => c.string(a, "address").and_then(|s| match Address::parse(&ascii_address(&s)) {
            Ok(addr) => {
                if let Some(domains) = domains {
                    if !domains.iter().any(|d| d == addr.domain()) {
                        c.add(
                            a.line,
                            format!(
                                "the postmaster {addr} is not in one of the domains ({})",
                                domains.join(", ")
                            ),
                            Some("use an address in a domain this server receives mail for".into()),
                        );
                        return None;
                    }
                }
                Some(addr)
            }
            Err(err) => {
                c.add(
                    a.line,
                    format!("postmaster address {s:?} is invalid: {err}"),
                    Some("write it as local@domain".into()),
                );
                None
            }
        }),
    };
    let mut generated_file = None;
    let password = match (get(&e, "password_file"), get(&e, "password_hash")) {
        (Some(_), Some(h)) => {
            c.add(
                h.line,
                "give either password_file or password_hash, not both",
                Some("remove one of them".into()),
            );
            None
        }
        (None, None) => {
            c.add(
                n.line,
                "the postmaster needs a password: `password_file` or `password_hash` is missing",
                Some(
                    "put the password in a file (first line) and set password_file: ./postmaster.pass".into(),
                ),
            );
            None
        }
        (Some(f), None) => c.string(f, "password_file").and_then(|file| {
            let path = base.join(&file);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let pw = text.lines().next().unwrap_or("").to_owned();
                    if pw.chars().count() < 8 {
                        c.add(
                            f.line,
                            format!("the password in {} is shorter than 8 characters", path.display()),
                            Some("choose a longer one (only its first line is read)".into()),
                        );
                        None
                    } else {
                        Some(Password::Plain(pw))
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    // A first install: make a strong password and keep it in that file.
                    generated_file = Some(path);
                    Some(Password::Plain(generate_password()))
                }
                Err(err) => {
                    c.add(
                        f.line,
                        format!("cannot read password_file {}: {err}", path.display()),
                        Some("a relative path is relative to the answers file's directory".into()),
                    );
                    None
                }
            }
        }),
        (None, Some(h)) => c.string(h, "password_hash").and_then(|hash| match check_password_hash(&hash) {
            Ok(()) => Some(Password::Hash(hash)),
            Err((message, help)) => {
                c.add(h.line, message, Some(help));
                None
            }
        }),
    };
    Some(Postmaster { address: address?, password: password?, generated_file })
}

/// `password_hash`, checked by the one validator `user add --password-hash` uses
/// (`password::check_hash`): Dovecot's `{SCHEME}` form with a scheme we verify, and after it
/// a string of that scheme's shape — a hash nobody can log in with is refused here, not
/// found out at the postmaster's first login. (message, help) when it is refused.
fn check_password_hash(hash: &str) -> Result<(), (String, String)> {
    password::check_hash(hash).map_err(|p| (p.message("password_hash"), p.help(hash)))
}

fn tls(c: &mut Check, n: &Node, base: &Path) -> Option<Tls> {
    let e = c.map(n, "tls", &["mode", "cert", "key", "email", "directory", "http_listen", "directory_ca"])?;
    let Some(mode_node) = get(&e, "mode") else {
        c.add(n.line, "`tls.mode` is missing", Some("use mode: self-signed, files or acme".into()));
        return None;
    };
    let mode = c.string(mode_node, "mode")?;
    let allowed: &[&str] = match mode.as_str() {
        "self-signed" => &["mode"],
        "files" => &["mode", "cert", "key"],
        "acme" => &["mode", "email", "directory", "http_listen", "directory_ca"],
        other => {
            c.add(
                mode_node.line,
                format!("tls.mode {other:?} is not one of self-signed, files, acme"),
                Some("self-signed needs nothing else; files needs cert and key; acme needs email".into()),
            );
            return None;
        }
    };
    for (k, v) in &e {
        if !allowed.contains(&k.as_str()) {
            c.add(
                v.line,
                format!("`tls.{k}` does not apply to mode {mode}"),
                Some(format!("mode {mode} takes: {}", allowed.join(", "))),
            );
        }
    }
    let mut path_key = |key: &str| -> Option<PathBuf> {
        let Some(v) = get(&e, key) else {
            c.add(
                n.line,
                format!("tls mode files needs `{key}`"),
                Some(format!("add {key}: /path/to/file.pem")),
            );
            return None;
        };
        let s = c.string(v, key)?;
        if !s.starts_with('/') {
            c.add(
                v.line,
                format!("tls.{key} {s:?} must be an absolute path"),
                Some(
                    "paths are as the daemon sees them on the target, e.g. /etc/ssl/mail/fullchain.pem"
                        .into(),
                ),
            );
            return None;
        }
        Some(PathBuf::from(s))
    };
    match mode.as_str() {
        "self-signed" => Some(Tls::SelfSigned),
        "files" => {
            let cert = path_key("cert");
            let key = path_key("key");
            Some(Tls::Files { cert: cert?, key: key? })
        }
        _ => {
            let email = match get(&e, "email") {
                None => {
                    c.add(
                        n.line,
                        "tls mode acme needs `email`",
                        Some("the CA sends expiry warnings there".into()),
                    );
                    None
                }
                Some(v) => c.string(v, "email").and_then(|s| {
                    if Address::parse(&s).is_ok() {
                        Some(s)
                    } else {
                        c.add(
                            v.line,
                            format!("tls.email {s:?} is not an email address"),
                            Some("the CA sends certificate expiry warnings to this address".into()),
                        );
                        None
                    }
                }),
            };
            let directory = match get(&e, "directory") {
                None => Some(LETSENCRYPT.to_owned()),
                Some(v) => c.string(v, "directory").and_then(|s| {
                    if s.starts_with("https://") {
                        Some(s)
                    } else {
                        c.add(
                            v.line,
                            format!("tls.directory {s:?} must be an https:// URL"),
                            Some(format!("Let's Encrypt's is {LETSENCRYPT}")),
                        );
                        None
                    }
                }),
            };
            let http_listen = match get(&e, "http_listen") {
                None => Some(None),
                Some(v) => c.string(v, "http_listen").and_then(|s| match s.parse::<std::net::SocketAddr>() {
                    // The install listens on every address of the mail ports: any of them
                    // here would collide with a mail listener (regression: this came out as
                    // "BUG: the installer rendered a config the daemon refuses").
                    Ok(a) if super::preflight::PORTS.contains(&a.port()) => {
                        c.add(
                            v.line,
                            format!("tls.http_listen {s:?} is on port {}, which posthaste listens on for mail", a.port()),
                            Some("the CA connects to port 80: leave http_listen out (0.0.0.0:80), or give the port a proxy forwards /.well-known/acme-challenge/ to".into()),
                        );
                        None
                    }
                    Ok(a) => Some(Some(a)),
                    Err(_) => {
                        c.add(
                            v.line,
                            format!("tls.http_listen {s:?} is not an address:port"),
                            Some("the CA connects to port 80: leave it out (0.0.0.0:80) unless a proxy forwards port 80 elsewhere".into()),
                        );
                        None
                    }
                }),
            };
            let directory_ca = match get(&e, "directory_ca") {
                None => Some(None),
                Some(v) => c.string(v, "directory_ca").and_then(|s| {
                    let path = base.join(&s);
                    if path.is_file() {
                        Some(Some(std::path::absolute(&path).unwrap_or(path)))
                    } else {
                        c.add(
                            v.line,
                            format!("tls.directory_ca {} does not exist", path.display()),
                            Some("give the PEM file of the CA that signed the ACME directory's HTTPS certificate (relative to the answers file), or leave it out for a public CA".into()),
                        );
                        None
                    }
                }),
            };
            Some(Tls::Acme {
                email: email?,
                directory: directory?,
                http_listen: http_listen?,
                directory_ca: directory_ca?,
            })
        }
    }
}

/// The wizard: one question per answer, earlier answers (or good guesses) as defaults. An
/// answer that cannot be used is asked again, after saying why, with what was typed as the
/// default (so a typo is fixed, not retyped).
pub fn ask(
    p: &dyn Prompter,
    previous: Option<&Answers>,
    system_hostname: Option<&str>,
) -> anyhow::Result<Answers> {
    let mut offer = previous
        .map(|a| a.hostname.clone())
        .or_else(|| system_hostname.and_then(|h| Hostname::parse(h).ok()).map(Hostname::into_string));
    let hostname = loop {
        let typed = p.input("Host name of this mail server (the MX name)", offer.as_deref())?;
        match host_name(&typed) {
            Ok(h) => break h,
            Err(why) => {
                p.tell(&why);
                offer = Some(typed.trim().to_owned()).filter(|t| !t.is_empty());
            }
        }
    };
    let mut offer = previous
        .map(|a| a.domains.join(" "))
        .unwrap_or_else(|| hostname.split_once('.').map(|(_, d)| d.to_owned()).unwrap_or_default());
    let domains = loop {
        let text = p.input("Mail domains (separated by spaces or commas)", Some(&offer))?;
        let mut domains: Vec<String> = Vec::new();
        let mut wrong = Vec::new();
        for word in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()) {
            match ascii_domain(word) {
                Some(d) if d.contains('.') => {
                    if !word.is_ascii() {
                        p.tell(&format!("{word} is written {d} in DNS and in the config"));
                    }
                    if !domains.contains(&d) {
                        domains.push(d);
                    }
                }
                _ => wrong.push(format!("{word:?}")),
            }
        }
        if !wrong.is_empty() {
            p.tell(&format!(
                "{} {} not a mail domain (a domain looks like example.org)",
                wrong.join(", "),
                if wrong.len() == 1 { "is" } else { "are" }
            ));
        } else if domains.is_empty() {
            p.tell("give at least one mail domain, e.g. example.org");
        } else {
            break domains;
        }
        offer = text.trim().to_owned();
    };
    let mut offer = previous
        .map(|a| a.postmaster.address.to_string())
        .filter(|a| domains.iter().any(|d| a.ends_with(&format!("@{d}"))))
        .unwrap_or_else(|| format!("postmaster@{}", domains[0]));
    let address = loop {
        let typed = p.input("Postmaster address (the first account)", Some(&offer))?;
        match Address::parse(&ascii_address(&typed)) {
            Ok(addr) if domains.iter().any(|d| d == addr.domain()) => break addr,
            Ok(addr) => p.tell(&format!(
                "{addr} is not in one of the mail domains ({}): the postmaster's mailbox must be on this server",
                domains.join(", ")
            )),
            Err(err) => p.tell(&format!("{:?} is not an address: {err} (an address looks like postmaster@{})", typed.trim(), domains[0])),
        }
        offer = typed.trim().to_owned();
    };
    let keep = match previous.map(|a| &a.postmaster.password) {
        Some(Password::Hash(h)) if p.confirm("Keep the postmaster's current password?", true)? => {
            Some(Password::Hash(h.clone()))
        }
        _ => None,
    };
    let password = match keep {
        Some(pw) => pw,
        // Typed twice: a typo in a hidden password would lock the postmaster out.
        None => loop {
            let pw = p.password("Postmaster password (at least 8 characters)")?;
            let n = pw.chars().count();
            if n < 8 {
                p.tell(&format!(
                    "that password has {n} character{}; it needs at least 8",
                    if n == 1 { "" } else { "s" }
                ));
                continue;
            }
            if p.password("The same password again")? != pw {
                p.tell("the two passwords differ; type it again");
                continue;
            }
            break Password::Plain(pw);
        },
    };
    let prev_c = previous.map(|a| a.components).unwrap_or_default();
    let components = Components {
        antispam: p.confirm("Spam filtering with rspamd?", prev_c.antispam)?,
        antivirus: p.confirm("Virus scanning with ClamAV (needs about 2 GB of RAM)?", prev_c.antivirus)?,
        guard: p.confirm("Ban clients that keep failing to log in?", prev_c.guard)?,
    };
    let modes = ["self-signed certificate", "certificate files I already have", "ACME (Let's Encrypt)"];
    let default_mode = match previous.map(|a| &a.tls) {
        Some(Tls::Files { .. }) => 1,
        Some(Tls::Acme { .. }) => 2,
        _ => 0,
    };
    let tls = match p.select("TLS certificate", &modes, default_mode)? {
        0 => Tls::SelfSigned,
        1 => Tls::Files {
            cert: PathBuf::from(p.input("Certificate chain (PEM, absolute path)", None)?.trim()),
            key: PathBuf::from(p.input("Private key (PEM, absolute path)", None)?.trim()),
        },
        _ => Tls::Acme {
            email: p.input("Email address for the CA", Some(&address.to_string()))?.trim().to_owned(),
            directory: LETSENCRYPT.to_owned(),
            http_listen: None,
            directory_ca: None,
        },
    };
    Ok(Answers {
        hostname,
        domains,
        postmaster: Postmaster { address, password, generated_file: None },
        components,
        tls,
        replace_existing_mta: previous.map(|a| a.replace_existing_mta).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Answers, Vec<Problem>> {
        Answers::from_str(text, Path::new("/nonexistent"))
    }

    const HASH: &str = "{SHA512-CRYPT}$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNp2xS0ktL3nh/";

    #[test]
    fn minimal_answers_get_defaults() {
        let a = parse(&format!(
            "hostname: Mail.Example.Test\ndomains: [example.test]\npostmaster: {{password_hash: \"{HASH}\"}}\n"
        ))
        .unwrap();
        assert_eq!(a.hostname, "mail.example.test");
        assert_eq!(a.postmaster.address.to_string(), "postmaster@example.test");
        assert_eq!(a.components, Components::default());
        assert_eq!(a.tls, Tls::SelfSigned);
        assert!(!a.replace_existing_mta);
    }

    #[test]
    fn written_answers_read_back_the_same() {
        let a = parse(&format!(
            "hostname: mail.example.test\ndomains: [example.test, b.test]\npostmaster: {{address: pm@b.test, password_hash: \"{HASH}\"}}\ncomponents: {{antivirus: false}}\ntls: {{mode: files, cert: /c.pem, key: /k.pem}}\nreplace_existing_mta: true\n"
        ))
        .unwrap();
        let again = parse(&a.to_yaml(HASH)).unwrap();
        assert_eq!(a, again);
    }

    #[test]
    fn acme_answers_with_listener_and_private_ca() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        let head = format!("hostname: mail.example.test\ndomains: [example.test]\npostmaster: {{password_hash: \"{HASH}\"}}\n");
        let a = Answers::from_str(
            &format!("{head}tls: {{mode: acme, email: pm@example.test, directory: \"https://ca.test/dir\", http_listen: \"127.0.0.1:8080\", directory_ca: ./ca.pem}}\n"),
            dir.path(),
        )
        .unwrap();
        let Tls::Acme { http_listen, directory_ca, .. } = &a.tls else { panic!("{:?}", a.tls) };
        assert_eq!(http_listen.unwrap().port(), 8080);
        // Relative to the answers file, kept absolute so the saved answers work from /etc.
        assert!(directory_ca.as_ref().unwrap().is_absolute());
        assert_eq!(Answers::from_str(&a.to_yaml(HASH), Path::new("/")).unwrap(), a);
        // Defaults: Let's Encrypt, port 80, the system's trust store.
        let a = parse(&format!("{head}tls: {{mode: acme, email: pm@example.test}}\n")).unwrap();
        assert_eq!(
            a.tls,
            Tls::Acme {
                email: "pm@example.test".into(),
                directory: LETSENCRYPT.into(),
                http_listen: None,
                directory_ca: None
            }
        );
        let problems = Answers::from_str(
            &format!("{head}tls: {{mode: acme, email: pm@example.test, http_listen: port80, directory_ca: ./missing.pem}}\n"),
            dir.path(),
        )
        .unwrap_err();
        let all: String = problems.iter().map(|p| format!("{} ({:?})\n", p.message, p.help)).collect();
        assert!(all.contains("tls.http_listen \"port80\" is not an address:port"), "{all}");
        assert!(all.contains("missing.pem does not exist"), "{all}");
        assert!(problems.iter().all(|p| p.help.is_some()), "{all}");
        // They do not apply to other modes.
        let problems =
            parse(&format!("{head}tls: {{mode: self-signed, http_listen: \"0.0.0.0:80\"}}\n")).unwrap_err();
        assert!(problems
            .iter()
            .any(|p| p.message.contains("`tls.http_listen` does not apply to mode self-signed")));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "hostnmae: mail.example.test\n\
                    domains: example.test\n\
                    postmaster:\n  address: 42\n  password_hash: \"nope\"\n\
                    components: {antispam: yes please, guard: 1}\n\
                    tls: {mode: acme, email: x}\n\
                    replace_existing_mta: \"true\"\n";
        let problems = parse(text).unwrap_err();
        let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
        let all: String =
            problems.iter().map(|p| format!("{}: {} (help: {:?})\n", p.line, p.message, p.help)).collect();
        assert!(all.contains("unknown key `hostnmae`") && all.contains("did you mean `hostname`"), "{all}");
        assert!(all.contains("`hostname` is missing"), "{all}");
        assert!(all.contains("`domains` must be a list"), "{all}");
        assert!(all.contains("`address` must be a string"), "{all}");
        assert!(all.contains("password_hash is not a supported hash"), "{all}");
        assert!(all.contains("`antispam` must be true or false"), "{all}");
        assert!(all.contains("`guard` must be true or false"), "{all}");
        assert!(all.contains("tls.email \"x\" is not an email address"), "{all}");
        assert!(all.contains("`replace_existing_mta` must be true or false"), "{all}");
        for l in [1, 2, 4, 5, 6, 7, 8] {
            assert!(lines.contains(&l), "no problem on line {l}: {all}");
        }
        assert!(problems.iter().all(|p| p.help.is_some()), "{all}");
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let p = parse("hostname: a.b\ndomains: [x\n").unwrap_err();
        assert_eq!(p.len(), 1);
        assert!(p[0].line >= 2 && p[0].message.starts_with("not valid YAML"), "{p:?}");
    }

    #[test]
    fn postmaster_must_be_in_a_domain() {
        let p = parse(&format!(
            "hostname: mail.example.test\ndomains: [example.test]\npostmaster: {{address: pm@other.test, password_hash: \"{HASH}\"}}\n"
        ))
        .unwrap_err();
        assert!(p[0].message.contains("not in one of the domains"), "{p:?}");
    }

    #[test]
    fn password_is_never_debug_printed() {
        assert!(!format!("{:?}", Password::Plain("hunter22hunter".into())).contains("hunter"));
    }
}
