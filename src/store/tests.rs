//! Unit tests of the index's crash and format handling; the public API is tested in
//! tests/it/store.rs.

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

/// Age new/ and cur/ and sync once, so the folder has a quiet `D` stamp.
fn quiet(mb: &mut Mailbox, dir: &Path) {
    let old = SystemTime::now() - std::time::Duration::from_secs(10);
    for sub in ["new", "cur"] {
        File::open(dir.join(sub)).unwrap().set_modified(old).unwrap();
    }
    mb.sync().unwrap();
    assert!(mb.index_dirs_unchanged_for_test());
}

/// posthaste issue #3 (a): our own STORE, APPEND, delivery, COPY and EXPUNGE change cur/ and
/// new/, but the index describes them, so the next sync must not rescan the folder — while
/// a foreign file still makes it rescan.
#[test]
fn own_changes_keep_the_index_trusted_foreign_ones_do_not() {
    let (_t, store, a) = setup();
    let d1 = store.deliver(&a, "INBOX", b"one\n").unwrap();
    let dir = store.account_dir(&a);
    let mut mb = store.open_mailbox(&a, "INBOX", true).unwrap();
    quiet(&mut mb, &dir);
    mb.store_flags(&[d1.uid], FlagOp::Add, &[Flag::Seen], None).unwrap();
    assert!(mb.index_dirs_unchanged_for_test(), "after our STORE (a rename in cur/)");
    let d2 = store.append(&a, "INBOX", b"two\n", &[Flag::Flagged], None).unwrap();
    assert!(mb.index_dirs_unchanged_for_test(), "after our APPEND");
    let d3 = store.deliver(&a, "INBOX", b"three\n").unwrap();
    assert!(mb.index_dirs_unchanged_for_test(), "after our delivery");
    mb.copy_to(&[d1.uid], "INBOX").unwrap();
    assert!(mb.index_dirs_unchanged_for_test(), "after our COPY");
    mb.expunge(&[d2.uid]).unwrap();
    assert!(mb.index_dirs_unchanged_for_test(), "after our EXPUNGE");
    let ch = mb.sync().unwrap();
    // d2 came and went between two syncs: the session never hears of it.
    assert!(ch.expunged.is_empty() && !ch.added.contains(&d2.uid), "{ch:?}");
    assert!(ch.added.contains(&d3.uid) && ch.changed.contains(&d1.uid), "{ch:?}");
    assert_eq!(mb.len(), 3);
    // Another program drops a file in (a later clock tick than ours): seen at once.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(dir.join("new").join("1.2.elsewhere"), "x").unwrap();
    assert!(!mb.index_dirs_unchanged_for_test());
    let ch = mb.sync().unwrap();
    assert_eq!(ch.added.len(), 1, "{ch:?}");
    assert_eq!(mb.len(), 4);
}

/// The soft stamp is checked once the folder has been quiet for the trust period: a foreign
/// file that landed in the same clock tick as our own change is found then.
#[test]
fn same_tick_foreign_file_is_found_once_the_folder_is_quiet() {
    let (_t, store, a) = setup();
    let d1 = store.deliver(&a, "INBOX", b"one\n").unwrap();
    let dir = store.account_dir(&a);
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    quiet(&mut mb, &dir);
    // Simulate the race: a foreign file, then our change, then put the mtime of new/ back
    // to what our change left (as if both happened within one tick).
    mb.store_flags(&[d1.uid], FlagOp::Add, &[Flag::Seen], None).unwrap();
    let m_new = std::fs::metadata(dir.join("new")).unwrap().modified().unwrap();
    std::fs::write(dir.join("new").join("1.3.sametick"), "x").unwrap();
    File::open(dir.join("new")).unwrap().set_modified(m_new).unwrap();
    assert!(mb.index_dirs_unchanged_for_test(), "within the tick the stamp cannot tell");
    assert_eq!(mb.sync().unwrap().added.len(), 0);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(!mb.index_dirs_unchanged_for_test(), "a quiet folder gets checked");
    assert_eq!(mb.sync().unwrap().added.len(), 1);
    assert!(mb.index_dirs_unchanged_for_test(), "and then trusted with a D stamp");
}

/// posthaste issue #3 (c): sessions of one folder share one index; each still gets every
/// change once, in its own time.
#[test]
fn sessions_share_the_index_and_each_sees_every_change_once() {
    let (_t, store, a) = setup();
    let d1 = store.deliver(&a, "INBOX", b"one\n").unwrap();
    let d2 = store.deliver(&a, "INBOX", b"two\n").unwrap();
    let mut s1 = store.open_mailbox(&a, "INBOX", true).unwrap();
    let mut s2 = store.open_mailbox(&a, "INBOX", false).unwrap();
    assert!(std::sync::Arc::ptr_eq(&s1.shared, &s2.shared), "one index per folder");
    assert!(s1.is_recent(d1.uid) && !s2.is_recent(d1.uid));
    s1.store_flags(&[d1.uid], FlagOp::Add, &[Flag::Keyword("work".into())], None).unwrap();
    s1.expunge(&[d2.uid]).unwrap();
    let d3 = store.deliver(&a, "INBOX", b"three\n").unwrap();
    let c1 = s1.sync().unwrap();
    assert_eq!(c1.changed, [d1.uid].into());
    assert_eq!(c1.expunged, [d2.uid].into());
    assert_eq!(c1.added, [d3.uid].into());
    assert!(s1.is_recent(d3.uid));
    assert!(s1.sync().unwrap().is_empty(), "reported once");
    // s2 looked at nothing meanwhile: it gets the same, later.
    let c2 = s2.sync().unwrap();
    assert_eq!((c2.changed, c2.expunged, c2.added), (c1.changed, c1.expunged, c1.added));
    // A compaction (the file replaced) by another process keeps the expunges visible.
    let other = Store::new(store.root());
    let mut o = other.open_mailbox(&a, "INBOX", false).unwrap();
    for i in 0..300 {
        let op = if i % 2 == 0 { FlagOp::Add } else { FlagOp::Remove };
        o.store_flags(&[d1.uid], op, &[Flag::Flagged], None).unwrap();
    }
    o.expunge(&[d3.uid]).unwrap();
    for _ in 0..300 {
        o.store_flags(&[d1.uid], FlagOp::Add, &[Flag::Answered], None).unwrap();
        o.store_flags(&[d1.uid], FlagOp::Remove, &[Flag::Answered], None).unwrap();
    }
    let c = s2.sync().unwrap();
    assert_eq!(c.expunged, [d3.uid].into(), "{c:?}");
    assert_eq!(s2.uids(), vec![d1.uid]);
}

/// The per-message cache is shared by the folder's sessions and tied to the file: an entry
/// is not handed out for another message that got the same UID after a rebuild.
#[test]
fn message_cache_is_shared_and_checked_against_the_file() {
    let (_t, store, a) = setup();
    let d1 = store.deliver(&a, "INBOX", b"Subject: one\r\n\r\nx\r\n").unwrap();
    let s1 = store.open_mailbox(&a, "INBOX", false).unwrap();
    let mut s2 = store.open_mailbox(&a, "INBOX", false).unwrap();
    assert!(s1.cached(d1.uid).is_none());
    s1.cache_update(d1.uid, |c| c.size = Some(42));
    assert_eq!(s2.cached(d1.uid).unwrap().size, Some(42));
    // Replace the message under the same UID: the index is rebuilt, the cache must not answer.
    let dir = store.account_dir(&a);
    let path = s2.message(d1.uid).unwrap().path;
    std::fs::rename(path, dir.join("cur").join("other-base:2,")).unwrap();
    std::fs::remove_file(dir.join(INDEX_FILE)).unwrap();
    assert!(s2.sync().unwrap().uidvalidity_changed);
    assert_eq!(s2.uids(), vec![d1.uid], "the same UID, now for another file");
    assert!(s2.cached(d1.uid).is_none());
}

/// The caches of all folders count against one total, and an evicted folder gives its
/// bytes back.
#[test]
fn message_cache_bytes_are_counted_across_folders() {
    let (_t, store, a) = setup();
    let d = store.deliver(&a, "INBOX", b"Subject: x\r\n\r\nx\r\n").unwrap();
    let total = || store.indexes.cached_bytes.load(std::sync::atomic::Ordering::Relaxed);
    let mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    mb.cache_update(d.uid, |c| c.header = Some(vec![b'h'; 1000].into()));
    let after = total();
    assert!(after >= 1000, "{after}");
    mb.cache_update(d.uid, |c| c.size = Some(1));
    assert_eq!(total(), after, "an update replaces, it does not add");
    drop(mb);
    store.indexes.map.lock().unwrap().clear();
    assert_eq!(total(), 0, "a dropped folder index returns its bytes");
}
