//! The maildrop of one POP3 session (synchronous: callers use `spawn_blocking`).
//!
//! - **Lock** (RFC 1939 §8): the session holds an exclusive `flock` on
//!   `{INBOX}/posthaste-pop3.lock` from login to the end of the session, so a second POP3
//!   session on the same mailbox gets `-ERR [IN-USE]`. flock locks belong to the open file,
//!   so this works between tasks of the daemon and between processes, and the kernel drops
//!   the lock when the holder dies. IMAP and deliveries do not take it: they coordinate with
//!   us through the store's index lock, so they keep working on the same INBOX.
//! - **Numbering**: the messages present at login, in UID order, numbered from 1 for the
//!   whole session (RFC 1939 §5). Messages delivered later wait for the next session;
//!   messages another client removes meanwhile keep their number but can no longer be read.
//! - **Sizes**: RFC 1939 §11 counts octets as transmitted, i.e. with CRLF line ends. Files may
//!   hold LF-only lines (written by other tools), so the size is that of the rendered form
//!   (see [`render`]), computed on first use and kept for the session.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::sync::{Arc, Mutex};

use crate::address::Address;
use crate::durable::FileLock;
use crate::store::{FlagOp, Mailbox, Store};

/// In the INBOX directory beside `posthaste-uidlist`; Dovecot ignores it.
pub const LOCK_FILE: &str = "posthaste-pop3.lock";

pub struct Maildrop {
    pub account: Address,
    mailbox: Arc<Mutex<Mailbox>>,
    _lock: FileLock,
    pub messages: Vec<Msg>,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub uid: u32,
    pub uidl: String,
    /// The size as transmitted (CRLF line ends), once known.
    pub size: Option<u64>,
    /// The size the store knows (the file size), used if the file is gone before we read it.
    pub stored_size: u64,
    /// Marked by DELE (RFC 1939 §6), undone by RSET.
    pub deleted: bool,
    /// Retrieved with RETR: gets \Seen when the session enters UPDATE.
    pub retrieved: bool,
}

#[derive(Debug)]
pub enum OpenError {
    /// Another POP3 session holds the maildrop lock.
    InUse,
    Io(io::Error),
}

impl From<io::Error> for OpenError {
    fn from(e: io::Error) -> Self {
        OpenError::Io(e)
    }
}

/// The outcome of the UPDATE state.
#[derive(Debug, Default)]
pub struct Update {
    pub deleted: usize,
    pub seen: usize,
}

/// What to send of a message.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// RETR: all of it.
    All,
    /// TOP: the header, the blank line, and this many body lines (RFC 1939 §7).
    Top(u64),
}

impl Maildrop {
    /// Lock and open the INBOX of `account` (creating the Maildir of an account that never
    /// got mail).
    pub fn open(store: &Store, account: &Address) -> Result<Maildrop, OpenError> {
        if !store.folder_exists(account, "INBOX")? {
            store.create_account(account)?;
        }
        let Some(lock) = FileLock::try_acquire(&store.account_dir(account).join(LOCK_FILE))? else {
            return Err(OpenError::InUse);
        };
        // POP3 takes \Recent like SELECT does (the store's open_mailbox docs).
        let mailbox = store.open_mailbox(account, "INBOX", true)?;
        let messages = mailbox
            .messages()
            .into_iter()
            .map(|m| Msg {
                uid: m.uid,
                uidl: m.uidl(),
                size: None,
                stored_size: m.size,
                deleted: false,
                retrieved: false,
            })
            .collect();
        Ok(Maildrop {
            account: account.clone(),
            mailbox: Arc::new(Mutex::new(mailbox)),
            _lock: lock,
            messages,
        })
    }

    /// A handle for `spawn_blocking` closures.
    pub fn mailbox(&self) -> Arc<Mutex<Mailbox>> {
        self.mailbox.clone()
    }
}

/// Open message `uid`; None if another client removed it.
pub fn open_message(mailbox: &Mutex<Mailbox>, uid: u32) -> io::Result<Option<File>> {
    match mailbox.lock().unwrap().open_message(uid) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The transmitted size of each message of `uids` (the stored size for one that is gone).
pub fn sizes(mailbox: &Mutex<Mailbox>, uids: &[(u32, u64)]) -> io::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(uids.len());
    for &(uid, stored) in uids {
        out.push(match open_message(mailbox, uid)? {
            Some(f) => {
                let mut n = 0u64;
                render(BufReader::with_capacity(64 * 1024, f), Part::All, false, &mut |chunk| {
                    n += chunk.len() as u64;
                    Ok(())
                })?;
                n
            }
            None => stored,
        });
    }
    Ok(out)
}

/// RFC 1939 §6 UPDATE: remove the messages marked deleted, and mark the retrieved ones \Seen
/// (as Dovecot does; RSET forgets both). Messages another client removed meanwhile are
/// skipped. Flags first: if the expunge fails halfway, nothing not marked deleted is lost.
pub fn update(mailbox: &Mutex<Mailbox>, messages: &[Msg]) -> io::Result<Update> {
    let mut mb = mailbox.lock().unwrap();
    let seen: Vec<u32> = messages.iter().filter(|m| m.retrieved && !m.deleted).map(|m| m.uid).collect();
    let deleted: Vec<u32> = messages.iter().filter(|m| m.deleted).map(|m| m.uid).collect();
    let mut result = Update::default();
    if !seen.is_empty() {
        result.seen = mb.store_flags(&seen, FlagOp::Add, &[crate::store::Flag::Seen], None)?.updated.len();
    }
    if !deleted.is_empty() {
        result.deleted = mb.expunge(&deleted)?.len();
    }
    Ok(result)
}

/// Turn the stored message into its POP3 form and hand it out in pieces: every line ends
/// with CRLF (LF-only lines are fixed, a last line without a line end gets one), and with
/// `stuff`, a line starting with "." gets another "." in front (RFC 1939 §3 byte-stuffing).
/// The terminating ".CRLF" is the caller's. Sizes are computed with `stuff = false`, since
/// the stuffing belongs to the transfer, not to the message.
pub fn render(
    mut reader: impl BufRead,
    part: Part,
    stuff: bool,
    emit: &mut dyn FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(1024);
    let mut in_header = true;
    let mut body_lines = 0u64;
    loop {
        if let Part::Top(n) = part {
            if !in_header && body_lines >= n {
                return Ok(());
            }
        }
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        if in_header {
            if line.is_empty() {
                in_header = false;
            }
        } else {
            body_lines += 1;
        }
        if stuff && line.first() == Some(&b'.') {
            emit(b".")?;
        }
        emit(&line)?;
        emit(b"\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(msg: &str, part: Part, stuff: bool) -> String {
        let mut out = Vec::new();
        render(msg.as_bytes(), part, stuff, &mut |c| {
            out.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn crlf_and_stuffing() {
        assert_eq!(r("A: b\n\n.x\r\n..y\nlast", Part::All, true), "A: b\r\n\r\n..x\r\n...y\r\nlast\r\n");
        assert_eq!(r("A: b\n\n.x\r\n", Part::All, false), "A: b\r\n\r\n.x\r\n");
        assert_eq!(r("", Part::All, true), "");
    }

    #[test]
    fn top() {
        let m = "A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\nl3\r\n";
        assert_eq!(r(m, Part::Top(0), true), "A: 1\r\nB: 2\r\n\r\n");
        assert_eq!(r(m, Part::Top(2), true), "A: 1\r\nB: 2\r\n\r\nl1\r\nl2\r\n");
        assert_eq!(r(m, Part::Top(99), true), m);
        assert_eq!(r("A: 1\r\nno blank line", Part::Top(0), true), "A: 1\r\nno blank line\r\n");
    }
}
