//! `posthaste user add|list|passwd|set|disable|enable|remove`: mail accounts and their
//! mailboxes.

use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

use super::{Error, Kind, Result};
use crate::address::Address;
use crate::directory::{password, Account, Directory, DirectoryError};
use crate::store::Store;

/// Where a new password comes from. Reading it (stdin, a file, a form) is the caller's
/// job; `from` names the source in messages ("standard input", "the password file").
#[derive(Clone)]
pub enum Password {
    Plain {
        text: String,
        from: &'static str,
    },
    /// A hash in Dovecot's `{SCHEME}` form, e.g. from `doveadm pw`.
    Hash(String),
    /// A strong random one, returned once.
    Generate,
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Password::Plain { from, .. } => write!(f, "Plain {{ from: {from:?}, .. }}"),
            Password::Hash(_) => f.write_str("Hash(..)"),
            Password::Generate => f.write_str("Generate"),
        }
    }
}

/// The hash to store, and the generated password if one was made (shown once, never kept).
#[derive(Clone)]
pub struct NewPassword {
    pub hash: String,
    pub generated: Option<String>,
}

/// Validates the password for `address` and hashes it. `allow_weak` accepts a password of
/// the common-password list or the account's name (an administrator moving an existing
/// user who cannot change theirs today); the 8-character minimum holds regardless, and a
/// generated or hashed password is not affected.
pub fn new_password(address: &Address, password: &Password, allow_weak: bool) -> Result<NewPassword> {
    let plain = match password {
        Password::Hash(hash) => {
            password::check_hash(hash)
                .map_err(|p| Error::invalid(p.message("--password-hash")).help(p.help(hash)))?;
            return Ok(NewPassword { hash: hash.clone(), generated: None });
        }
        Password::Generate => {
            let p = password::generate();
            return Ok(NewPassword { hash: password::hash(&p), generated: Some(p) });
        }
        Password::Plain { text, from } => {
            let first = text.lines().next().unwrap_or("");
            if first.is_empty() {
                return Err(Error::invalid(format!("no password on {from} (an empty first line)")).help(
                    "put the password on the first line, or omit the password options to get a generated one",
                ));
            }
            first
        }
    };
    match password::check_strength(plain, address) {
        Ok(()) => {}
        Err(password::Weakness::TooShort) => {
            return Err(Error::invalid(password::Weakness::TooShort.to_string())
                .help("choose a longer one, or omit the password options to get a generated one"));
        }
        Err(_) if allow_weak => {}
        Err(weak) => {
            return Err(Error::invalid(weak.to_string()).help(
                "it is among the first guesses of password-guessing bots: choose another (a few unrelated words make a strong one), omit the password options to get a generated one, or pass --allow-weak-password to keep it anyway",
            ));
        }
    }
    Ok(NewPassword { hash: password::hash(plain), generated: None })
}

/// What `user add` does when a mailbox already exists where the new account's goes (left
/// by an earlier account of the same address, or by `domain remove --force`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldMail {
    /// Refuse, and say what the choices are: never hand someone else's mail to a new
    /// account silently.
    Refuse,
    /// Archive it under a dated name (as `user remove` does) and start empty.
    Archive,
    /// Give it to the new account: restoring a removed account on purpose.
    Reuse,
}

/// What happened to a mailbox that was in the way of `user add`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum OldMailOutcome {
    Archived { path: PathBuf, messages: u64 },
    Reused { path: PathBuf, messages: u64 },
}

#[derive(Debug, Clone, Serialize)]
pub struct Added {
    pub account: Account,
    /// The generated password, if the caller asked for one: shown once, not stored.
    pub password: Option<String>,
    pub old_mail: Option<OldMailOutcome>,
}

pub async fn add(
    dir: &Directory,
    store: &Store,
    address: &Address,
    password: &Password,
    quota: u64,
    old_mail: OldMail,
    allow_weak: bool,
) -> Result<Added> {
    let new = new_password(address, password, allow_weak)?;
    // Everything that could refuse the account is asked first: the mailbox must not be
    // moved aside for an account that then cannot be created.
    dir.check_new_account(address).await?;
    let old_mail = match (store.mailbox_exists(address), old_mail) {
        (false, _) => None,
        (true, choice) => {
            let messages = store.account_usage(address).map(|u| u.messages).unwrap_or(0);
            let path = store.account_dir(address);
            match choice {
                OldMail::Refuse => {
                    return Err(Error::exists(format!(
                        "{} already holds a mailbox ({}), left by an earlier account {address}",
                        path.display(),
                        super::count(messages as usize, "message", "messages")
                    ))
                    .help(format!(
                        "pass --archive-old-mail to move it to {} and give {address} an empty mailbox, or --reuse-old-mail to give it that mail (to restore a removed account)",
                        store.archive_root().join(address.domain()).display()
                    )));
                }
                OldMail::Reuse => Some(OldMailOutcome::Reused { path, messages }),
                OldMail::Archive => {
                    let moved = store
                        .archive_account(address, SystemTime::now())
                        .map_err(|e| {
                            Error::failed(format!("cannot move the old mailbox {} aside", path.display()))
                                .caused_by(&e)
                        })?
                        .unwrap_or(path);
                    Some(OldMailOutcome::Archived { path: moved, messages })
                }
            }
        }
    };
    let account = dir.add_account(address, &new.hash, quota).await?;
    store.create_account(address).map_err(|e| {
        Error::failed(format!(
            "the account exists but its Maildir could not be created under {}",
            store.root().display()
        ))
        .caused_by(&e)
    })?;
    Ok(Added { account, password: new.generated, old_mail })
}

pub async fn list(dir: &Directory, domain: Option<&str>) -> Result<Vec<Account>> {
    Ok(dir.list_accounts(domain).await?)
}

/// Replace the password; returns the generated one, if that was asked for.
pub async fn passwd(
    dir: &Directory,
    address: &Address,
    password: &Password,
    allow_weak: bool,
) -> Result<Option<String>> {
    let new = new_password(address, password, allow_weak)?;
    dir.set_password(address, &new.hash).await?;
    Ok(new.generated)
}

/// A setting before and after a change.
#[derive(Debug, Clone, Serialize)]
pub struct Changed<T> {
    pub address: String,
    pub before: T,
    pub after: T,
}

async fn existing(dir: &Directory, address: &Address) -> Result<Account> {
    dir.get_account(address)
        .await?
        .ok_or_else(|| DirectoryError::NotFound(format!("account {address}")).into())
}

/// Change the quota (bytes, 0 = unlimited). Mail already stored stays; deliveries beyond
/// the new quota are refused from now on.
pub async fn set_quota(dir: &Directory, address: &Address, quota: u64) -> Result<Changed<u64>> {
    let before = existing(dir, address).await?.quota;
    dir.set_quota(address, quota).await?;
    Ok(Changed { address: address.to_string(), before, after: quota })
}

/// Disable (or enable again) logging in and sending; mail to the account is still
/// delivered, so nothing is lost while it is suspended.
pub async fn set_enabled(dir: &Directory, address: &Address, enabled: bool) -> Result<Changed<bool>> {
    let before = existing(dir, address).await?.enabled;
    dir.set_enabled(address, enabled).await?;
    Ok(Changed { address: address.to_string(), before, after: enabled })
}

/// What `user remove` does with the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemoveMail {
    /// Archive it under a dated name outside the live tree (the default: no mail is lost,
    /// and a later account with the same address does not get it).
    #[default]
    Keep,
    /// Delete it.
    Purge,
}

/// What happened to the removed account's mailbox.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum MailOutcome {
    Archived {
        path: PathBuf,
        messages: u64,
    },
    Purged {
        messages: u64,
    },
    /// It had no mailbox on disk.
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct Removed {
    pub address: String,
    pub mail: MailOutcome,
    /// Aliases that still point to the address: they stay (they may be meant for a
    /// successor) and skip it meanwhile.
    pub aliases: Vec<String>,
}

/// Remove the account and retire its mailbox as `mail` says. The mailbox is moved out of
/// the way first and moved back if the account cannot be removed, so either both happen
/// or neither.
pub async fn remove(dir: &Directory, store: &Store, address: &Address, mail: RemoveMail) -> Result<Removed> {
    existing(dir, address).await?;
    let messages = store.account_usage(address).map(|u| u.messages).unwrap_or(0);
    let retire_error = |e: std::io::Error| {
        Error::failed(format!("cannot move the mailbox {} aside", store.account_dir(address).display()))
            .caused_by(&e)
            .help("nothing was changed; check the permissions of the mail directory (the command runs as its owner)")
    };
    let archived = store.archive_account(address, SystemTime::now()).map_err(retire_error)?;
    if let Err(e) = dir.remove_account(address).await {
        if let Some(path) = &archived {
            if let Err(back) = store.restore_archived(address, path) {
                return Err(Error::failed(format!(
                    "the account could not be removed ({e}), and its mailbox could not be moved back from {}",
                    path.display()
                ))
                .caused_by(&back));
            }
        }
        return Err(e.into());
    }
    let mail = match (archived, mail) {
        (None, _) => MailOutcome::None,
        (Some(path), RemoveMail::Keep) => MailOutcome::Archived { path, messages },
        (Some(path), RemoveMail::Purge) => {
            store.delete_archived(&path).map_err(|e| {
                Error::new(
                    Kind::Failed,
                    format!(
                        "the account is removed, but its mail could not be deleted from {}",
                        path.display()
                    ),
                )
                .caused_by(&e)
                .help(format!("delete it by hand: rm -r '{}'", path.display()))
            })?;
            MailOutcome::Purged { messages }
        }
    };
    let me = address.to_string();
    let aliases = dir
        .list_aliases(None)
        .await?
        .into_iter()
        .filter(|a| a.destinations.contains(&me))
        .map(|a| a.source)
        .collect();
    Ok(Removed { address: me, mail, aliases })
}

/// `2G`, `500M`, `1.5G`, `2GiB`, `2gb`, `1048576` (bytes): binary units, 0 = unlimited.
pub fn parse_quota(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("{s:?} is not a size like 500M, 2G or 1.5G (0 = unlimited)");
    let t = s.trim();
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let t = t.strip_suffix(['I', 'i']).unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        Some('T' | 't') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let num = num.trim();
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad());
    }
    let too_large = || format!("{s:?} is too large for a quota");
    let bytes = if num.contains('.') {
        let n: f64 = num.parse().map_err(|_| bad())?;
        let b = (n * mult as f64).round();
        if b >= i64::MAX as f64 {
            return Err(too_large());
        }
        b as u64
    } else {
        num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)).ok_or_else(too_large)?
    };
    if bytes > i64::MAX as u64 {
        return Err(too_large());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas() {
        assert_eq!(parse_quota("0"), Ok(0));
        assert_eq!(parse_quota("1024"), Ok(1024));
        assert_eq!(parse_quota("500M"), Ok(500 << 20));
        assert_eq!(parse_quota("2G"), Ok(2 << 30));
        assert_eq!(parse_quota("2g"), Ok(2 << 30));
        assert_eq!(parse_quota("2GB"), Ok(2 << 30));
        assert_eq!(parse_quota("2GiB"), Ok(2 << 30));
        assert_eq!(parse_quota("1.5G"), Ok(3 << 29));
        assert_eq!(parse_quota("1T"), Ok(1 << 40));
        for bad in ["", "G", "2X", "-1G", "1.2.3G", "two", "2 G B", "99999999999999999999"] {
            assert!(parse_quota(bad).is_err(), "{bad:?}");
        }
        assert!(parse_quota("9999999T").is_err());
        assert!(parse_quota("99999999999T").is_err());
    }

    fn alice() -> Address {
        Address::parse("alice@example.test").unwrap()
    }

    fn plain(text: &str) -> Password {
        Password::Plain { text: format!("{text}\n"), from: "standard input" }
    }

    #[test]
    fn weak_passwords_are_refused_unless_allowed_but_short_ones_always() {
        for weak in
            ["password", "Password1!", "P@ssw0rd", "qwertyuiop", "Summer2024!", "alice2024", "Example123"]
        {
            let e =
                new_password(&alice(), &plain(weak), false).err().unwrap_or_else(|| panic!("{weak} passed"));
            assert_eq!(e.kind(), Kind::Invalid);
            assert!(e.help_text().unwrap().contains("--allow-weak-password"), "{e}");
            assert!(new_password(&alice(), &plain(weak), true).is_ok(), "{weak}");
        }
        let short = new_password(&alice(), &plain("pw1"), true).err().unwrap();
        assert_eq!(short.message(), "the password is shorter than 8 characters");
        assert!(!short.help_text().unwrap().contains("--allow-weak-password"));
        let empty = new_password(&alice(), &plain(""), false).err().unwrap();
        assert_eq!(empty.message(), "no password on standard input (an empty first line)");
    }

    #[test]
    fn hashes_are_checked_by_the_shared_validator() {
        let e = new_password(&alice(), &Password::Hash("{ARGON2ID}garbage".into()), false).err().unwrap();
        assert_eq!(e.message(), "--password-hash says {ARGON2ID} but what follows is not a ARGON2ID hash");
        let generated = new_password(&alice(), &Password::Generate, false).unwrap();
        assert!(generated.hash.starts_with("{ARGON2ID}") && generated.generated.is_some());
    }
}
