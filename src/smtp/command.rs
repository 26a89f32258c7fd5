//! SMTP command parsing (RFC 5321 §4.1, with the ESMTP extensions we offer).
//!
//! The parser is pure: one command line in, one [`Command`] or a reply-ready error out. The
//! session decides what the command means in its state.

use crate::address::{is_domain, is_dot_atom, Address};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail { path: ReversePath, params: Vec<(String, Option<String>)> },
    Rcpt { path: ForwardPath, params: Vec<(String, Option<String>)> },
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth { mechanism: String, initial: Option<String> },
}

/// `MAIL FROM:<…>`: the null path `<>` (bounces) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Address(Address),
}

/// `RCPT TO:<…>`, classified so that relay tricks can be refused before any lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// A plain `local@domain`.
    Address(Address),
    /// `<postmaster>` without a domain, which RFC 5321 §4.5.1 requires us to accept.
    Postmaster,
    /// A path that tries to make us route mail onwards: `@a,@b:u@c` source routes,
    /// `"u@remote"@local` quoted local parts, `u%remote@local` and `remote!u@local`.
    /// The text is kept for the log and the reply.
    RelayTrick { kind: &'static str, path: String },
}

/// A parse failure, already as the reply the client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

fn err(code: u16, enhanced: &'static str, text: impl Into<String>) -> ParseError {
    ParseError { code, enhanced, text: text.into() }
}

pub fn parse(line: &str) -> Result<Command, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let no_args = |cmd: Command| {
        // RFC 5321 §4.1.1: these take no arguments (NOOP/HELP may, and we ignore them).
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(err(501, "5.5.4", format!("{verb} takes no arguments")))
        }
    };
    match verb.as_str() {
        "HELO" | "EHLO" => {
            let name = rest.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(err(501, "5.5.4", format!("Syntax: {verb} hostname")));
            }
            // RFC 5321 §4.1.4: the argument is a domain or an address literal. Clients in
            // the wild send all kinds of names; we record it rather than reject it.
            Ok(if verb == "HELO" { Command::Helo(name.into()) } else { Command::Ehlo(name.into()) })
        }
        "MAIL" => {
            let rest = strip_prefix_ci(rest, "FROM:")
                .ok_or_else(|| err(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]"))?;
            let (path, params) = split_path(rest)?;
            let path = if path == "<>" {
                ReversePath::Null
            } else {
                let inner = unbracket(path)?;
                ReversePath::Address(
                    Address::parse(inner)
                        .map_err(|e| err(553, "5.1.7", format!("Bad sender address syntax: {}", e.reason)))?,
                )
            };
            Ok(Command::Mail { path, params: parse_params(params)? })
        }
        "RCPT" => {
            let rest = strip_prefix_ci(rest, "TO:")
                .ok_or_else(|| err(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]"))?;
            let (path, params) = split_path(rest)?;
            let inner = unbracket(path)?;
            Ok(Command::Rcpt { path: classify_forward(inner)?, params: parse_params(params)? })
        }
        "DATA" => no_args(Command::Data),
        "BDAT" => {
            // RFC 3030 §2: BDAT chunk-size [LAST]
            let mut words = rest.split_ascii_whitespace();
            let size = words
                .next()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| err(501, "5.5.4", "Syntax: BDAT size [LAST]"))?;
            let last = match words.next() {
                None => false,
                Some(w) if w.eq_ignore_ascii_case("LAST") => true,
                Some(_) => return Err(err(501, "5.5.4", "Syntax: BDAT size [LAST]")),
            };
            if words.next().is_some() {
                return Err(err(501, "5.5.4", "Syntax: BDAT size [LAST]"));
            }
            Ok(Command::Bdat { size, last })
        }
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "HELP" => Ok(Command::Help),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => {
            let mut words = rest.split_ascii_whitespace();
            let mechanism = words
                .next()
                .ok_or_else(|| err(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))?
                .to_ascii_uppercase();
            let initial = words.next().map(str::to_owned);
            if words.next().is_some() {
                return Err(err(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "" => Err(err(500, "5.5.2", "Empty command")),
        _ => Err(err(500, "5.5.2", "Command not recognized")),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    // Some clients send `MAIL FROM: <a@b>` with a space; RFC 5321 forbids it, but refusing
    // it helps nobody.
    head.eq_ignore_ascii_case(prefix).then(|| s[prefix.len()..].trim_start())
}

/// Split `<path> params…`, honouring quotes inside the path.
fn split_path(s: &str) -> Result<(&str, &str), ParseError> {
    if !s.starts_with('<') {
        return Err(err(501, "5.5.4", "The address must be enclosed in <>"));
    }
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => return Ok((&s[..=i], s[i + 1..].trim())),
            _ => {}
        }
    }
    Err(err(501, "5.5.4", "Missing closing > in the address"))
}

fn unbracket(path: &str) -> Result<&str, ParseError> {
    path.strip_prefix('<')
        .and_then(|p| p.strip_suffix('>'))
        .ok_or_else(|| err(501, "5.5.4", "The address must be enclosed in <>"))
}

fn classify_forward(inner: &str) -> Result<ForwardPath, ParseError> {
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath::Postmaster);
    }
    // RFC 5321 §4.1.1.3 / Appendix C: source routes are obsolete; a server may ignore the
    // route, but honouring *or* ignoring it has been abused to relay, so we refuse it.
    if inner.starts_with('@') {
        return Ok(ForwardPath::RelayTrick { kind: "source route", path: inner.into() });
    }
    if inner.starts_with('"') {
        // A quoted local part can hide `@`, `%` or `!` from naive relay checks.
        return Ok(ForwardPath::RelayTrick { kind: "quoted local part", path: inner.into() });
    }
    let Some((local, domain)) = inner.rsplit_once('@') else {
        return Err(err(501, "5.1.3", "Bad recipient address syntax: no @domain"));
    };
    if local.contains('%') {
        return Ok(ForwardPath::RelayTrick { kind: "percent hack", path: inner.into() });
    }
    if local.contains('!') {
        return Ok(ForwardPath::RelayTrick { kind: "bang path", path: inner.into() });
    }
    if !is_dot_atom(local) || !is_domain(domain) {
        return Err(err(501, "5.1.3", "Bad recipient address syntax"));
    }
    Address::parse(inner)
        .map(ForwardPath::Address)
        .map_err(|e| err(501, "5.1.3", format!("Bad recipient address syntax: {}", e.reason)))
}

/// ESMTP parameters `KEY[=VALUE]` (RFC 5321 §4.1.2 `Mail-parameters`).
fn parse_params(s: &str) -> Result<Vec<(String, Option<String>)>, ParseError> {
    let mut out = Vec::new();
    for word in s.split_ascii_whitespace() {
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v.to_owned())),
            None => (word, None),
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(err(501, "5.5.4", format!("Bad parameter {word:?}")));
        }
        out.push((k.to_ascii_uppercase(), v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt(line: &str) -> ForwardPath {
        match parse(line).unwrap() {
            Command::Rcpt { path, .. } => path,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mail_from_forms() {
        assert_eq!(parse("MAIL FROM:<>").unwrap(), Command::Mail { path: ReversePath::Null, params: vec![] });
        let Command::Mail { path: ReversePath::Address(a), params } =
            parse("mail from:<Bob@Example.org> SIZE=1000 BODY=8BITMIME").unwrap()
        else {
            panic!()
        };
        assert_eq!(a.to_string(), "bob@example.org");
        assert_eq!(params[0], ("SIZE".into(), Some("1000".into())));
        assert!(parse("MAIL FROM: <a@b.test>").is_ok(), "a space after the colon is tolerated");
        assert!(parse("MAIL FROM:a@b.test").is_err());
        assert_eq!(parse("MAIL FROM:<a b@c.test>").unwrap_err().code, 553);
    }

    #[test]
    fn relay_tricks_are_classified() {
        assert!(matches!(
            rcpt("RCPT TO:<@relay.test:u@remote.test>"),
            ForwardPath::RelayTrick { kind: "source route", .. }
        ));
        assert!(matches!(
            rcpt("RCPT TO:<\"u@remote.test\"@local.test>"),
            ForwardPath::RelayTrick { kind: "quoted local part", .. }
        ));
        assert!(matches!(
            rcpt("RCPT TO:<u%remote.test@local.test>"),
            ForwardPath::RelayTrick { kind: "percent hack", .. }
        ));
        assert!(matches!(
            rcpt("RCPT TO:<remote.test!u@local.test>"),
            ForwardPath::RelayTrick { kind: "bang path", .. }
        ));
        assert_eq!(rcpt("RCPT TO:<Postmaster>"), ForwardPath::Postmaster);
        assert!(matches!(rcpt("RCPT TO:<a@local.test>"), ForwardPath::Address(_)));
    }

    #[test]
    fn bad_commands() {
        assert_eq!(parse("FOO").unwrap_err().code, 500);
        assert_eq!(parse("").unwrap_err().code, 500);
        assert_eq!(parse("DATA x").unwrap_err().code, 501);
        assert_eq!(parse("RCPT TO:<a@b.test").unwrap_err().code, 501);
        assert_eq!(parse("BDAT x").unwrap_err().code, 501);
        assert_eq!(parse("BDAT 10 LAST").unwrap(), Command::Bdat { size: 10, last: true });
        assert_eq!(parse("EHLO").unwrap_err().code, 501);
        assert_eq!(parse("MAIL FROM:<a@b.test> b@d=x").unwrap_err().code, 501);
    }
}
