//! Parsing one POP3 command line (RFC 1939 §3) into a [`Command`]. Pure, so every refusal is
//! unit-tested here; the session decides what each command means in its state.

/// A parsed command. Message numbers are 1-based as on the wire (RFC 1939 §3: "msg").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capa,
    Stls,
    User(String),
    Pass(String),
    /// `AUTH` alone lists the mechanisms (as many servers and clients still do); otherwise a
    /// mechanism and the optional initial response (RFC 5034 §4).
    Auth {
        mechanism: Option<String>,
        initial: Option<String>,
    },
    Apop,
    Stat,
    List(Option<u32>),
    Uidl(Option<u32>),
    Retr(u32),
    Top(u32, u64),
    Dele(u32),
    Rset,
    Noop,
    Quit,
}

/// Why a line is not a command we can run; the text goes after `-ERR `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(s.into()))
}

/// RFC 1939 §3: a keyword of three or four characters, case-insensitive, then arguments
/// separated by single spaces (we accept runs of spaces and tabs too). §3 limits arguments
/// to 40 characters, but real addresses given to USER are longer; the session's line limit
/// bounds them instead. The line has no CRLF any more.
pub fn parse(line: &str) -> Result<Command, ParseError> {
    let (keyword, rest) = match line.split_once([' ', '\t']) {
        Some((k, r)) => (k, r),
        None => (line, ""),
    };
    let keyword = keyword.to_ascii_uppercase();
    // PASS has exactly one argument, so spaces belong to the password (RFC 1939 §7, PASS).
    if keyword == "PASS" {
        if rest.is_empty() {
            return err("PASS needs a password");
        }
        return Ok(Command::Pass(rest.to_owned()));
    }
    let args: Vec<&str> = rest.split([' ', '\t']).filter(|a| !a.is_empty()).collect();
    let arity = |min: usize, max: usize| -> Result<(), ParseError> {
        if args.len() < min || args.len() > max {
            err(format!("Wrong number of arguments for {keyword}"))
        } else {
            Ok(())
        }
    };
    let cmd = match keyword.as_str() {
        "CAPA" => {
            arity(0, 0)?;
            Command::Capa
        }
        "STLS" => {
            arity(0, 0)?;
            Command::Stls
        }
        "USER" => {
            arity(1, 1)?;
            Command::User(args[0].to_owned())
        }
        "AUTH" => {
            arity(0, 2)?;
            Command::Auth {
                mechanism: args.first().map(|m| m.to_ascii_uppercase()),
                initial: args.get(1).map(|s| s.to_string()),
            }
        }
        "APOP" => Command::Apop,
        "STAT" => {
            arity(0, 0)?;
            Command::Stat
        }
        "LIST" => {
            arity(0, 1)?;
            Command::List(args.first().map(|a| msg_number(a)).transpose()?)
        }
        "UIDL" => {
            arity(0, 1)?;
            Command::Uidl(args.first().map(|a| msg_number(a)).transpose()?)
        }
        "RETR" => {
            arity(1, 1)?;
            Command::Retr(msg_number(args[0])?)
        }
        "TOP" => {
            arity(2, 2)?;
            let lines = digits(args[1]).ok_or_else(|| ParseError("Invalid number of lines".into()))?;
            Command::Top(msg_number(args[0])?, lines)
        }
        "DELE" => {
            arity(1, 1)?;
            Command::Dele(msg_number(args[0])?)
        }
        "RSET" => {
            arity(0, 0)?;
            Command::Rset
        }
        "NOOP" => {
            arity(0, 0)?;
            Command::Noop
        }
        "QUIT" => {
            arity(0, 0)?;
            Command::Quit
        }
        "" => return err("Empty command"),
        _ => return err("Unknown command"),
    };
    Ok(cmd)
}

/// Only plain decimal digits: no sign, no spaces, no overflow.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A message number: decimal and at least 1 (RFC 1939 §3: messages are numbered from 1).
/// Whether such a message exists is for the session to say.
fn msg_number(s: &str) -> Result<u32, ParseError> {
    match digits(s) {
        Some(n) if n >= 1 && n <= u32::MAX as u64 => Ok(n as u32),
        Some(_) => err("No such message"),
        None => err("Invalid message number"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("capa"), Ok(Command::Capa));
        assert_eq!(parse("USER alice@example.test"), Ok(Command::User("alice@example.test".into())));
        assert_eq!(parse("PASS two words "), Ok(Command::Pass("two words ".into())));
        assert_eq!(parse("list"), Ok(Command::List(None)));
        assert_eq!(parse("LIST 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse("uidl 2"), Ok(Command::Uidl(Some(2))));
        assert_eq!(parse("TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse("RETR  7"), Ok(Command::Retr(7)));
        assert_eq!(
            parse("AUTH plain AGEAYg=="),
            Ok(Command::Auth { mechanism: Some("PLAIN".into()), initial: Some("AGEAYg==".into()) })
        );
        assert_eq!(parse("AUTH"), Ok(Command::Auth { mechanism: None, initial: None }));
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "LIST x",
            "LIST -1",
            "LIST +1",
            "LIST 0",
            "RETR",
            "RETR 1 2",
            "TOP 1",
            "TOP 1 -1",
            "DELE 99999999999",
            "QUIT now",
            "XTND",
            "STAT 1",
            "PASS",
            "USER",
            "USER a b",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
