//! The one error type of the admin areas: what went wrong, what to do next, and the causes.
//! The CLI prints it as `error: …`, `  caused by: …` and `help: …`; the web admin and its
//! API will answer `{"kind", "message", "help"}` with a status derived from [`Kind`].

use std::fmt;

use serde::Serialize;

use crate::address::AddressError;
use crate::directory::DirectoryError;
use crate::queue::QueueError;

/// What sort of failure, for a caller that must choose a reply (an HTTP status, an exit
/// code) without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The input is wrong: a bad address, a weak password, an unknown option value.
    Invalid,
    /// What the command names does not exist (an account, a domain, a queue id).
    NotFound,
    /// It exists already, or something that exists is in the way.
    Exists,
    /// Well-formed, but refused by a rule (a loop, a domain that is not empty).
    Refused,
    /// The system failed: a file, the database, a permission.
    Failed,
}

/// An admin action's failure. `Display` is the message followed by `\nhelp: …` when there
/// is advice, which is what the CLI's `main` splits on.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    help: Option<String>,
    cause: Option<Box<Cause>>,
}

/// One link of the cause chain, as text: the admin layer reports causes, it does not let
/// callers match on them.
#[derive(Debug)]
struct Cause {
    text: String,
    next: Option<Box<Cause>>,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.next.as_deref().map(|c| c as _)
    }
}

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into(), help: None, cause: None }
    }
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Kind::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, message)
    }
    pub fn exists(message: impl Into<String>) -> Error {
        Error::new(Kind::Exists, message)
    }
    pub fn refused(message: impl Into<String>) -> Error {
        Error::new(Kind::Refused, message)
    }
    pub fn failed(message: impl Into<String>) -> Error {
        Error::new(Kind::Failed, message)
    }

    /// The same failure and causes, told differently (e.g. what did happen before it).
    pub fn reworded(mut self, message: impl Into<String>) -> Error {
        self.message = message.into();
        self
    }

    /// Adds the advice (one `help:` line).
    pub fn help(mut self, help: impl Into<String>) -> Error {
        self.help = Some(help.into());
        self
    }

    /// Adds `cause` and its own causes below this message.
    pub fn caused_by(mut self, cause: &(dyn std::error::Error + 'static)) -> Error {
        let mut texts = Vec::new();
        let mut at = Some(cause);
        while let Some(e) = at {
            texts.push(e.to_string());
            at = e.source();
        }
        self.cause = texts.into_iter().rev().fold(None, |next, text| Some(Box::new(Cause { text, next })));
        self
    }

    /// An `anyhow` error from a lower layer: its message (with a `\nhelp: ` part, if any,
    /// as the help) and its causes.
    pub fn from_anyhow(kind: Kind, e: &anyhow::Error) -> Error {
        let (message, help) = split_help(&e.to_string(), "\nhelp: ", "");
        let mut out = Error::new(kind, message);
        out.help = help;
        if let Some(cause) = e.chain().nth(1) {
            out = out.caused_by(cause);
        }
        out
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\nhelp: {help}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

impl Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Error", 3)?;
        st.serialize_field("kind", &self.kind)?;
        st.serialize_field("message", &self.message)?;
        st.serialize_field("help", &self.help)?;
        st.end()
    }
}

/// `message (help: advice)` → (`message`, `advice`): the lower layers put their advice in
/// a trailing parenthesis so their own `Display` reads as one line.
fn split_help(message: &str, open: &str, close: &str) -> (String, Option<String>) {
    let body = if close.is_empty() { Some(message) } else { message.strip_suffix(close) };
    match body.and_then(|b| b.split_once(open)) {
        Some((head, help)) => (head.to_owned(), Some(help.to_owned())),
        None => (message.to_owned(), None),
    }
}

/// A lower layer's error whose advice is a trailing `(help: …)`.
fn with_trailing_help(kind: Kind, e: &dyn std::error::Error) -> Error {
    let (message, help) = split_help(&e.to_string(), " (help: ", ")");
    let mut out = Error::new(kind, message);
    out.help = help;
    out
}

impl From<AddressError> for Error {
    fn from(e: AddressError) -> Error {
        Error::invalid(e.to_string()).help("an address looks like alice@example.org")
    }
}

impl From<DirectoryError> for Error {
    fn from(e: DirectoryError) -> Error {
        match e {
            DirectoryError::InvalidAddress(a) => a.into(),
            DirectoryError::NotFound(what) => {
                let list = match what.split(' ').next() {
                    Some("domain") => "domain list",
                    Some("account") => "user list",
                    _ => "alias list",
                };
                Error::not_found(format!("{what} does not exist"))
                    .help(format!("`posthaste {list}` shows what there is"))
            }
            DirectoryError::Db(ref db) => Error::failed(e.to_string()).caused_by(db),
            DirectoryError::InvalidDomain(_) | DirectoryError::Other(_) => {
                with_trailing_help(Kind::Invalid, &e)
            }
            DirectoryError::UnknownDomain(_) => with_trailing_help(Kind::NotFound, &e),
            DirectoryError::Duplicate(_) => with_trailing_help(Kind::Exists, &e),
            DirectoryError::DomainNotEmpty { .. } => with_trailing_help(Kind::Refused, &e),
        }
    }
}

impl From<QueueError> for Error {
    fn from(e: QueueError) -> Error {
        let kind = match &e {
            QueueError::UnknownId(_) => Kind::NotFound,
            QueueError::Io(_) | QueueError::Other(_) => Kind::Failed,
        };
        let out = with_trailing_help(kind, &e);
        match &e {
            QueueError::Io(io) => out.caused_by(io),
            _ => out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_is_split_off_the_lower_layers_messages() {
        let e: Error = DirectoryError::UnknownDomain("nope.test".into()).into();
        assert_eq!(e.kind(), Kind::NotFound);
        assert_eq!(e.message(), "domain nope.test is not configured here");
        assert_eq!(e.help_text(), Some("`posthaste domain add nope.test` first"));
        assert_eq!(
            e.to_string(),
            "domain nope.test is not configured here\nhelp: `posthaste domain add nope.test` first"
        );
        let e: Error = DirectoryError::Duplicate("account a@b.test".into()).into();
        assert_eq!((e.kind(), e.help_text()), (Kind::Exists, None));
        let e: Error = QueueError::UnknownId("x".into()).into();
        assert_eq!(
            e.to_string(),
            "no message x in the queue\nhelp: `posthaste queue list` shows the queue ids"
        );
    }

    #[test]
    fn causes_are_kept_in_order() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let top = anyhow::Error::new(io).context("cannot write x\nhelp: run as root");
        let e = Error::from_anyhow(Kind::Failed, &top);
        assert_eq!(e.message(), "cannot write x");
        assert_eq!(e.help_text(), Some("run as root"));
        let chain: Vec<String> = std::iter::successors(std::error::Error::source(&e), |c| c.source())
            .map(|c| c.to_string())
            .collect();
        assert_eq!(chain, ["denied"]);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "failed", "message": "cannot write x", "help": "run as root"})
        );
    }
}
