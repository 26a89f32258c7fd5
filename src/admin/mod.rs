//! The admin areas: what `posthaste domain|user|alias|queue|ban|dns|status` do, as
//! functions that the CLI calls — and the web admin and its JSON API after it.
//!
//! Each function takes typed arguments (parsed addresses, sizes, choices), does the whole
//! change or none of it, and returns a typed value (serde-serialisable, for `--json` and
//! the API) or an [`Error`] that says what to do next. Nothing here prints or reads the
//! terminal: input (passwords from stdin or files) is read by the caller, and the wording
//! of the output lines is the CLI's (`cli.rs`).
//!
//! May import: `address`, `config`, `directory`, `store`, `queue` (its spool), `guard`
//! (the ban file), `mailauth::keys`. Never `serve` (the daemon), `cli` or
//! `install` (the installer calls into this module, not the other way round).

pub mod alias;
pub mod ban;
pub mod dns;
pub mod domain;
mod error;
pub mod queue;
pub mod security;
pub mod status;
pub mod token;
pub mod user;

pub use error::{Error, Kind};

pub type Result<T> = std::result::Result<T, Error>;

/// `1 account`, `2 accounts`: for messages that count things.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `a, b, c` or `a, b and 5 more`.
pub fn short_list(items: &[&str], max: usize) -> String {
    let mut s = items.iter().take(max).copied().collect::<Vec<_>>().join(", ");
    if items.len() > max {
        s.push_str(&format!(" and {} more", items.len() - max));
    }
    s
}
