//! Unit tests of the index's crash and format handling; the public API is tested in
//! tests/store.rs.

use super::index::{INDEX_FILE, LOCK_FILE};
use super::*;

fn setup() -> (tempfile::TempDir, Store, Address) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("mail"));
    let a = Address::parse("alice@example.test").unwrap();
    store.create_account(&a).unwrap();
    (tmp, store, a)
}

#[test]
fn torn_append_is_ignored_and_cut_off() {
    let (_t, store, a) = setup();
    let d1 = store.deliver(&a, "INBOX", b"one\n").unwrap();
    let idx = store.account_dir(&a).join(INDEX_FILE);
    // A writer that crashed in the middle of its line.
    let mut f = OpenOptions::new().append(true).open(&idx).unwrap();
    f.write_all(b"+ 9 9 1 1 c 0 :half-writ").unwrap();
    drop(f);
    let mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    assert_eq!(mb.uids(), vec![d1.uid]);
    let d2 = store.deliver(&a, "INBOX", b"two\n").unwrap();
    assert_eq!(d2.uid, d1.uid + 1);
    assert_eq!(d2.uidvalidity, d1.uidvalidity, "a torn line is not corruption");
    let text = std::fs::read_to_string(&idx).unwrap();
    assert!(!text.contains("half-writ"), "{text}");
    assert!(text.ends_with('\n'));
}

#[test]
fn corrupt_index_is_rebuilt_with_new_uidvalidity() {
    let (_t, store, a) = setup();
    let d1 = store.deliver(&a, "INBOX", b"one\n").unwrap();
    let dir = store.account_dir(&a);
    std::fs::write(dir.join(INDEX_FILE), "posthaste-uidlist 1 5 2 1\nnonsense\n").unwrap();
    let mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    assert_ne!(mb.uidvalidity(), d1.uidvalidity);
    assert_eq!(mb.len(), 1);
    assert!(dir.join("posthaste-uidlist.corrupt").exists());
    // The lock file remembers the last UIDVALIDITY.
    let hint: u32 = std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap().trim().parse().unwrap();
    assert_eq!(hint, mb.uidvalidity());
}

#[test]
fn log_is_compacted_and_state_survives() {
    let (_t, store, a) = setup();
    let d = store.deliver(&a, "INBOX", b"one\n").unwrap();
    let mut mb = store.open_mailbox(&a, "INBOX", true).unwrap();
    for i in 0..400 {
        let op = if i % 2 == 0 { FlagOp::Add } else { FlagOp::Remove };
        mb.store_flags(&[d.uid], op, &[Flag::Seen, Flag::Keyword("work".into())], None).unwrap();
    }
    mb.store_flags(&[d.uid], FlagOp::Add, &[Flag::Flagged], None).unwrap();
    let text = std::fs::read_to_string(store.account_dir(&a).join(INDEX_FILE)).unwrap();
    assert!(text.lines().count() < 300, "not compacted: {} lines", text.lines().count());
    let hm = mb.highest_modseq();
    let reopened = store.open_mailbox(&a, "INBOX", false).unwrap();
    assert_eq!(reopened.highest_modseq(), hm);
    assert_eq!(reopened.message(d.uid).unwrap().flags, vec![Flag::Flagged]);
    assert_eq!(reopened.uid_next(), d.uid + 1);
}

#[test]
fn next_uid_survives_expunge_of_the_last_message() {
    let (_t, store, a) = setup();
    let d = store.deliver(&a, "INBOX", b"one\n").unwrap();
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    mb.expunge(&[d.uid]).unwrap();
    // Force a compaction path too: the header must carry next-uid.
    drop(mb);
    let d2 = store.deliver(&a, "INBOX", b"two\n").unwrap();
    assert_eq!(d2.uid, d.uid + 1, "UIDs are never reused (RFC 3501 §2.3.1.1)");
}

#[test]
fn unchanged_mailbox_sync_reads_no_directory() {
    let (_t, store, a) = setup();
    store.deliver(&a, "INBOX", b"one\n").unwrap();
    let dir = store.account_dir(&a);
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    // Age the directories so their mtimes can be trusted, then scan once to record them.
    let old = SystemTime::now() - std::time::Duration::from_secs(10);
    for sub in ["new", "cur"] {
        File::open(dir.join(sub)).unwrap().set_modified(old).unwrap();
    }
    mb.sync().unwrap();
    assert!(mb.index_dirs_unchanged_for_test());
    // A foreign file dropped in with the mtime put back would be missed: that is exactly
    // what the quiet period protects against, and what this test shows the fast path uses.
    std::fs::write(dir.join("new").join("1.2.elsewhere"), "x").unwrap();
    assert!(!mb.index_dirs_unchanged_for_test());
    let ch = mb.sync().unwrap();
    assert_eq!(ch.added.len(), 1);
}
