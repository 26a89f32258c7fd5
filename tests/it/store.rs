//! The Maildir++ store through its public API, on temporary directories.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use posthaste::address::Address;
use posthaste::store::{Flag, FlagOp, Store, SPECIAL_FOLDERS};

fn setup() -> (tempfile::TempDir, Store, Address) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::new(tmp.path().join("mail"));
    let a = Address::parse("alice@example.test").unwrap();
    store.create_account(&a).unwrap();
    (tmp, store, a)
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    v
}

fn base(name: &str) -> &str {
    name.split(':').next().unwrap()
}

#[test]
fn delivery_writes_dovecot_names_into_new_and_assigns_uids() {
    let (_t, store, a) = setup();
    let inbox = store.account_dir(&a);
    assert!(inbox.ends_with("example.test/alice"));
    let msg = b"Subject: hi\r\n\r\nhello\r\n";
    let d1 = store.deliver(&a, "INBOX", msg).unwrap();
    let d2 = store.deliver(&a, "inbox", msg).unwrap();
    assert_eq!((d1.uid, d2.uid), (1, 2));
    assert_eq!(d1.uidvalidity, d2.uidvalidity);
    assert!(d1.uidvalidity > 0);
    assert_eq!(d1.path.parent().unwrap(), inbox.join("new"));
    assert_eq!(std::fs::read(&d1.path).unwrap(), msg);
    assert!(files(&inbox.join("tmp")).is_empty(), "tmp/ is left clean");

    // <secs>.M<usecs>P<pid>Q<counter>.<host>,S=<size>,W=<size with CRLF line ends>
    let name = d1.path.file_name().unwrap().to_str().unwrap();
    let (secs, rest) = name.split_once('.').unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(now - secs.parse::<u64>().unwrap() < 60, "{name}");
    assert!(rest.starts_with('M'), "{name}");
    assert!(rest.contains(&format!("P{}Q", std::process::id())), "{name}");
    let crlf = msg.len() + msg.iter().filter(|&&b| b == b'\n').count()
        - msg.windows(2).filter(|w| w == b"\r\n").count();
    assert!(name.ends_with(&format!(",S={},W={crlf}", msg.len())), "{name}");
    assert!(!name.contains(':'), "no info part in new/: {name}");

    // Into a special folder, and into a folder that did not exist yet.
    let j = store.deliver(&a, "Junk", b"spam\n").unwrap();
    assert_eq!(j.uid, 1);
    assert!(j.path.starts_with(inbox.join(".Junk/new")));
    let x = store.deliver(&a, "Lists.rust", b"x\n").unwrap();
    assert!(x.path.starts_with(inbox.join(".Lists.rust/new")));
}

#[test]
fn new_account_layout_is_maildirplusplus() {
    let (_t, store, a) = setup();
    let inbox = store.account_dir(&a);
    for sub in ["cur", "new", "tmp"] {
        assert!(inbox.join(sub).is_dir());
    }
    for f in SPECIAL_FOLDERS {
        let d = inbox.join(format!(".{f}"));
        for sub in ["cur", "new", "tmp"] {
            assert!(d.join(sub).is_dir(), "{f}/{sub}");
        }
        assert_eq!(std::fs::metadata(d.join("maildirfolder")).unwrap().len(), 0);
    }
    let subs = std::fs::read_to_string(inbox.join("subscriptions")).unwrap();
    let subs: BTreeSet<&str> = subs.lines().collect();
    assert_eq!(subs, BTreeSet::from(["INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive"]));
    let list = store.list_folders(&a).unwrap();
    assert_eq!(list[0].name, "INBOX");
    assert!(list.iter().all(|f| f.subscribed));
    let sent = list.iter().find(|f| f.name == "Sent").unwrap();
    assert_eq!(sent.special_use, Some("\\Sent"));
    // Idempotent.
    store.create_account(&a).unwrap();
    assert_eq!(store.list_folders(&a).unwrap(), list);
}

#[test]
fn uids_strictly_increase_across_reopen() {
    let (_t, store, a) = setup();
    let mut uids = Vec::new();
    for i in 0..3 {
        uids.push(store.deliver(&a, "INBOX", format!("m{i}\n").as_bytes()).unwrap().uid);
    }
    let mut mb = store.open_mailbox(&a, "INBOX", true).unwrap();
    mb.expunge(&[uids[2]]).unwrap();
    drop(mb);
    let again = Store::new(store.root());
    for i in 0..2 {
        uids.push(again.deliver(&a, "INBOX", format!("n{i}\n").as_bytes()).unwrap().uid);
    }
    assert_eq!(uids, vec![1, 2, 3, 4, 5], "never reused, even the expunged 3");
    let mb = again.open_mailbox(&a, "INBOX", false).unwrap();
    assert_eq!(mb.uids(), vec![1, 2, 4, 5]);
    assert_eq!(mb.uid_next(), 6);
}

#[test]
fn deleted_index_is_rebuilt_with_new_uidvalidity_and_same_messages() {
    let (_t, store, a) = setup();
    for i in 0..5 {
        store.deliver(&a, "INBOX", format!("m{i}\n").as_bytes()).unwrap();
    }
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    mb.store_flags(&[2], FlagOp::Add, &[Flag::Seen, Flag::Flagged], None).unwrap();
    let before: Vec<_> = mb.messages();
    let uidl_before: Vec<String> = before.iter().map(|m| m.uidl()).collect();
    let uv = mb.uidvalidity();
    drop(mb);
    std::fs::remove_file(store.account_dir(&a).join("posthaste-uidlist")).unwrap();

    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    assert_ne!(mb.uidvalidity(), uv, "RFC 3501 §2.3.1.1");
    let after = mb.messages();
    assert_eq!(after.len(), 5);
    // Same messages, UIDs in delivery order, Maildir flags kept (they live in the names).
    let bases = |ms: &[posthaste::store::Message]| ms.iter().map(|m| m.base.clone()).collect::<Vec<_>>();
    assert_eq!(bases(&after), bases(&before));
    assert_eq!(after.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(after[1].flags, vec![Flag::Seen, Flag::Flagged]);
    // POP3 UIDLs do not change with the index.
    assert_eq!(after.iter().map(|m| m.uidl()).collect::<Vec<String>>(), uidl_before);
    // A session that had the folder open learns that its UIDs are void.
    let uv2 = mb.uidvalidity();
    std::fs::remove_file(store.account_dir(&a).join("posthaste-uidlist")).unwrap();
    store.deliver(&a, "INBOX", b"later\n").unwrap();
    let ch = mb.sync().unwrap();
    assert!(ch.uidvalidity_changed);
    assert_ne!(mb.uidvalidity(), uv2);
    assert_eq!(mb.len(), 6);
}

#[test]
fn message_dropped_into_new_by_another_program_gets_a_uid() {
    let (_t, store, a) = setup();
    store.deliver(&a, "INBOX", b"ours\n").unwrap();
    let mut mb = store.open_mailbox(&a, "INBOX", true).unwrap();
    assert!(mb.sync().unwrap().is_empty());
    // procmail-style name: no S=, no M; then a Dovecot-style one with S= and W=.
    let inbox = store.account_dir(&a);
    std::fs::write(inbox.join("tmp/1700000000.4242_1.otherhost"), "From: x\n\nbody\n").unwrap();
    std::fs::rename(
        inbox.join("tmp/1700000000.4242_1.otherhost"),
        inbox.join("new/1700000000.4242_1.otherhost"),
    )
    .unwrap();
    std::fs::write(inbox.join("new/1700000001.M5P6Q7.dove,S=3,W=4"), "abc").unwrap();
    let ch = mb.sync().unwrap();
    assert_eq!(ch.added, BTreeSet::from([2, 3]), "in order of delivery time");
    let m2 = mb.message(2).unwrap();
    assert_eq!(m2.size, 14, "from stat");
    assert!(m2.recent, "this session saw it first");
    assert!(m2.path.ends_with("cur/1700000000.4242_1.otherhost:2,"), "{:?}", m2.path);
    assert_eq!(mb.message(3).unwrap().size, 3, "from S=");
    assert!(files(&inbox.join("new")).is_empty(), "the IMAP view moves new/ to cur/");
    // Another session does not get \Recent for them (RFC 3501 §2.3.2).
    let other = store.open_mailbox(&a, "INBOX", true).unwrap();
    assert!(other.messages().iter().all(|m| !m.recent));
}

#[test]
fn flag_changes_and_removals_by_other_maildir_clients_are_seen() {
    let (_t, store, a) = setup();
    for i in 0..3 {
        store.deliver(&a, "INBOX", format!("m{i}\n").as_bytes()).unwrap();
    }
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    let m1 = mb.message(1).unwrap();
    let hm = mb.highest_modseq();
    // Another client (mutt, Dovecot) marks message 1 seen+replied, deletes message 3.
    let renamed = m1.path.with_file_name(format!("{}:2,RS", m1.base));
    std::fs::rename(&m1.path, &renamed).unwrap();
    std::fs::remove_file(mb.message(3).unwrap().path).unwrap();
    let ch = mb.sync().unwrap();
    assert_eq!(ch.changed, BTreeSet::from([1]));
    assert_eq!(ch.expunged, BTreeSet::from([3]));
    let m1 = mb.message(1).unwrap();
    assert_eq!(m1.flags, vec![Flag::Seen, Flag::Answered]);
    assert!(m1.modseq > hm, "RFC 7162: a flag change gets a new MODSEQ");
    assert!(mb.highest_modseq() > m1.modseq, "and so does the expunge");
    assert_eq!(m1.path, renamed);
    assert_eq!(mb.uids(), vec![1, 2]);
}

#[test]
fn store_flags_renames_files_and_writes_keywords_as_dovecot_letters() {
    let (_t, store, a) = setup();
    store.deliver(&a, "INBOX", b"one\n").unwrap();
    store.deliver(&a, "INBOX", b"two\n").unwrap();
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    let kw = Flag::parse("$Label1").unwrap();
    let r = mb.store_flags(&[1, 2, 99], FlagOp::Add, &[Flag::Seen, Flag::Flagged, kw.clone()], None).unwrap();
    assert_eq!(r.updated, vec![1, 2]);
    let m = mb.message(1).unwrap();
    // The keyword is Dovecot's letter `a`, named in the folder's dovecot-keywords.
    assert!(m.path.to_str().unwrap().ends_with(":2,FSa"), "{:?}", m.path);
    let kwfile = std::fs::read_to_string(store.account_dir(&a).join("dovecot-keywords")).unwrap();
    assert_eq!(kwfile, "0 $Label1\n");
    assert_eq!(m.flags, vec![Flag::Seen, Flag::Flagged, kw.clone()]);
    // Nothing changes: no new MODSEQ.
    let ms = m.modseq;
    let r = mb.store_flags(&[1], FlagOp::Add, &[Flag::Seen], None).unwrap();
    assert!(r.updated.is_empty());
    assert_eq!(mb.message(1).unwrap().modseq, ms);
    // Remove, replace, $Forwarded as the P letter.
    mb.store_flags(&[1], FlagOp::Remove, &[Flag::Flagged, kw.clone()], None).unwrap();
    assert_eq!(mb.message(1).unwrap().flags, vec![Flag::Seen]);
    let fwd = Flag::parse("$Forwarded").unwrap();
    mb.store_flags(&[1], FlagOp::Replace, &[Flag::Draft, fwd.clone(), Flag::Deleted], None).unwrap();
    let m = mb.message(1).unwrap();
    assert!(m.path.to_str().unwrap().ends_with(":2,DPT"), "{:?}", m.path);
    assert_eq!(m.flags, vec![Flag::Deleted, Flag::Draft, fwd]);
    // RFC 7162 §3.1.3 UNCHANGEDSINCE.
    let m2 = mb.message(2).unwrap();
    let r = mb.store_flags(&[1, 2], FlagOp::Add, &[Flag::Answered], Some(m2.modseq)).unwrap();
    assert_eq!(r.modified, vec![1]);
    assert_eq!(r.updated, vec![2]);
    // Keywords and flags survive a reopen; the changes were reported.
    let ch = mb.sync().unwrap();
    assert_eq!(ch.changed, BTreeSet::from([1, 2]));
    let again = store.open_mailbox(&a, "INBOX", false).unwrap();
    assert_eq!(again.message(2).unwrap().flags, vec![Flag::Seen, Flag::Answered, Flag::Flagged, kw]);
    assert_eq!(again.highest_modseq(), mb.highest_modseq());
    // Parsing.
    assert_eq!(Flag::parse("\\SEEN"), Some(Flag::Seen));
    assert_eq!(Flag::parse("\\Recent"), None);
    assert_eq!(Flag::parse("bad word"), None);
}

#[test]
fn expunge_by_uid_and_deleted() {
    let (_t, store, a) = setup();
    for i in 0..4 {
        store.deliver(&a, "INBOX", format!("m{i}\n").as_bytes()).unwrap();
    }
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    let p1 = mb.message(1).unwrap().path;
    assert_eq!(mb.expunge(&[1, 42]).unwrap(), vec![1]);
    assert!(!p1.exists());
    mb.store_flags(&[3, 4], FlagOp::Add, &[Flag::Deleted], None).unwrap();
    assert_eq!(mb.expunge_deleted().unwrap(), vec![3, 4]);
    let ch = mb.sync().unwrap();
    assert_eq!(ch.expunged, BTreeSet::from([1, 3, 4]));
    assert_eq!(mb.uids(), vec![2]);
    assert_eq!(files(&store.account_dir(&a).join("cur")).len(), 1);
}

#[test]
fn copy_and_move_assign_new_uids_and_keep_flags_and_date() {
    let (_t, store, a) = setup();
    let date = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let kw = Flag::Keyword("work".into());
    let d = store.append(&a, "INBOX", b"appended\n", &[Flag::Seen, kw.clone()], Some(date)).unwrap();
    store.deliver(&a, "INBOX", b"second\n").unwrap();
    store.deliver(&a, "Archive", b"already there\n").unwrap();
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    let m = mb.message(d.uid).unwrap();
    assert_eq!(m.internal_date(), 1_600_000_000);
    assert_eq!(m.flags, vec![Flag::Seen, kw.clone()]);

    let c = mb.copy_to(&[1, 2, 7], "Archive").unwrap();
    assert_eq!(c.mapping, vec![(1, 2), (2, 3)]);
    let arch = store.open_mailbox(&a, "Archive", false).unwrap();
    assert_eq!(c.uidvalidity, arch.uidvalidity());
    let copied = arch.message(2).unwrap();
    assert_eq!(copied.internal_date(), 1_600_000_000, "RFC 3501 §6.4.7 keeps the internal date");
    assert_eq!(copied.flags, vec![Flag::Seen, kw]);
    assert_eq!(std::fs::read(&copied.path).unwrap(), b"appended\n");
    assert_ne!(copied.base, m.base, "a copy is a new message with its own name");
    assert_eq!(mb.len(), 2, "copy leaves the source");

    let mv = mb.move_to(&[2], "Trash").unwrap();
    assert_eq!(mv.mapping, vec![(2, 1)]);
    assert_eq!(mb.sync().unwrap().expunged, BTreeSet::from([2]));
    assert_eq!(mb.uids(), vec![1]);
    assert_eq!(store.open_mailbox(&a, "Trash", false).unwrap().len(), 1);
    assert_eq!(mb.copy_to(&[1], "Nope").unwrap_err().kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        store.append(&a, "Nope", b"x", &[], None).unwrap_err().kind(),
        std::io::ErrorKind::NotFound,
        "APPEND to a missing folder: [TRYCREATE]"
    );
}

#[test]
fn folders_create_rename_delete_subscribe() {
    let (_t, store, a) = setup();
    let root = store.account_dir(&a);
    store.create_folder(&a, "Projekte.Entwürfe.2024").unwrap();
    assert!(root.join(".Projekte").is_dir(), "parents created (RFC 3501 §6.3.3)");
    assert!(root.join(".Projekte.Entwürfe.2024/cur").is_dir(), "UTF-8 on disk");
    assert_eq!(store.create_folder(&a, "Projekte").unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    store.subscribe(&a, "Projekte.Entwürfe").unwrap();
    store.deliver(&a, "Projekte.Entwürfe", b"draft\n").unwrap();

    store.rename_folder(&a, "Projekte", "Alt.Projekte").unwrap();
    let names: Vec<String> = store.list_folders(&a).unwrap().into_iter().map(|f| f.name).collect();
    assert!(names.contains(&"Alt.Projekte.Entwürfe.2024".to_owned()), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("Projekte")), "{names:?}");
    let subs = store.subscriptions(&a).unwrap();
    assert!(subs.contains("Alt.Projekte.Entwürfe") && !subs.contains("Projekte.Entwürfe"), "{subs:?}");
    assert_eq!(store.open_mailbox(&a, "Alt.Projekte.Entwürfe", false).unwrap().uids(), vec![1]);

    store.delete_folder(&a, "Alt.Projekte").unwrap();
    assert!(!root.join(".Alt.Projekte").exists());
    assert!(root.join(".Alt.Projekte.Entwürfe").is_dir(), "subfolders stay (RFC 3501 §6.3.4)");
    assert_eq!(store.delete_folder(&a, "Alt.Projekte").unwrap_err().kind(), std::io::ErrorKind::NotFound);
    assert!(store.delete_folder(&a, "INBOX").is_err());
    assert!(store.list_folders(&a).unwrap().iter().all(|f| !f.name.starts_with("posthaste")));

    store.unsubscribe(&a, "Junk").unwrap();
    let junk = store.list_folders(&a).unwrap().into_iter().find(|f| f.name == "Junk").unwrap();
    assert!(!junk.subscribed);

    for bad in ["", ".hidden", "trailing.", "a..b", "a/b", "../../etc", "x\ny", "tab\there", "\u{7f}"] {
        let err = store.create_folder(&a, bad).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{bad:?}");
        assert!(err.to_string().contains("not allowed"), "{err}");
        assert!(store.deliver(&a, bad, b"x").is_err(), "{bad:?}");
    }
    assert!(store.rename_folder(&a, "Sent", "Sent.Old").is_err(), "not into itself");
    assert_eq!(
        store.rename_folder(&a, "Sent", "Drafts").unwrap_err().kind(),
        std::io::ErrorKind::AlreadyExists
    );
}

#[test]
fn renaming_inbox_moves_its_messages() {
    let (_t, store, a) = setup();
    store.deliver(&a, "INBOX", b"one\n").unwrap();
    store.deliver(&a, "INBOX", b"two\n").unwrap();
    store.rename_folder(&a, "INBOX", "Old").unwrap();
    assert_eq!(store.open_mailbox(&a, "INBOX", false).unwrap().len(), 0);
    assert_eq!(store.open_mailbox(&a, "Old", false).unwrap().len(), 2);
}

#[test]
fn account_usage_counts_all_folders() {
    let (_t, store, a) = setup();
    assert_eq!(store.account_size(&a).unwrap(), 0);
    store.deliver(&a, "INBOX", &[b'x'; 100]).unwrap();
    store.deliver(&a, "Junk", &[b'y'; 50]).unwrap();
    std::fs::write(store.account_dir(&a).join("cur/1.2.foreign:2,S"), [b'z'; 7]).unwrap();
    let u = store.account_usage(&a).unwrap();
    assert_eq!((u.bytes, u.messages), (157, 3));
    let nobody = Address::parse("nobody@example.test").unwrap();
    assert_eq!(store.account_size(&nobody).unwrap(), 0);
}

#[test]
fn concurrent_deliveries_from_threads_never_lose_or_duplicate_a_uid() {
    let (_t, store, a) = setup();
    let root = store.root().to_path_buf();
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (root, a) = (root.clone(), a.clone());
            std::thread::spawn(move || {
                let store = Store::new(root);
                let mut uids = Vec::new();
                for i in 0..25 {
                    let d = store.deliver(&a, "INBOX", format!("t{t} m{i}\n").as_bytes()).unwrap();
                    uids.push(d.uid);
                }
                uids
            })
        })
        .collect();
    // Meanwhile an IMAP session keeps syncing (moving new/ to cur/) and flagging.
    let reader = {
        let (root, a) = (root.clone(), a.clone());
        std::thread::spawn(move || {
            let store = Store::new(root);
            let mut mb = store.open_mailbox(&a, "INBOX", true).unwrap();
            for _ in 0..40 {
                mb.sync().unwrap();
                let uids = mb.uids();
                mb.store_flags(&uids, FlagOp::Add, &[Flag::Seen], None).unwrap();
            }
        })
    };
    let mut all: Vec<u32> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    reader.join().unwrap();
    all.sort();
    assert_eq!(all, (1..=150).collect::<Vec<u32>>());
    check_consistent(&store, &a, 150);
}

/// Index and directories agree: every file has exactly one UID and vice versa.
fn check_consistent(store: &Store, a: &Address, n: usize) {
    let mb = store.open_mailbox(a, "INBOX", false).unwrap();
    assert_eq!(mb.uids(), (1..=n as u32).collect::<Vec<u32>>());
    let dir = store.account_dir(a);
    let mut on_disk: Vec<String> = files(&dir.join("cur"))
        .into_iter()
        .chain(files(&dir.join("new")))
        .map(|f| base(&f).to_owned())
        .collect();
    on_disk.sort();
    let mut indexed: Vec<String> = mb.messages().into_iter().map(|m| m.base).collect();
    indexed.sort();
    assert_eq!(on_disk, indexed);
}

const CHILD_ENV: &str = "POSTHASTE_STORE_TEST_CHILD_ROOT";

/// Not a test on its own: the body of the second process in the test below.
#[test]
fn child_process_delivers() {
    let Ok(root) = std::env::var(CHILD_ENV) else { return };
    let store = Store::new(PathBuf::from(root));
    let a = Address::parse("alice@example.test").unwrap();
    let mut uids = Vec::new();
    for i in 0..60 {
        uids.push(store.deliver(&a, "INBOX", format!("child {i}\n").as_bytes()).unwrap().uid.to_string());
    }
    println!("CHILD-UIDS {}", uids.join(","));
}

#[test]
fn concurrent_deliveries_from_two_processes_never_lose_or_duplicate_a_uid() {
    let (_t, store, a) = setup();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "store::child_process_delivers", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, store.root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut mine = Vec::new();
    let mut mb = store.open_mailbox(&a, "INBOX", true).unwrap();
    for i in 0..60 {
        mine.push(store.deliver(&a, "INBOX", format!("parent {i}\n").as_bytes()).unwrap().uid);
        if i % 10 == 0 {
            mb.sync().unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD-UIDS ").map(|(_, r)| r))
        .expect("child printed its UIDs");
    let theirs: Vec<u32> = line.split(',').map(|u| u.parse().unwrap()).collect();
    assert_eq!(theirs.len(), 60);
    let mut all: Vec<u32> = mine.into_iter().chain(theirs).collect();
    all.sort();
    assert_eq!(all, (1..=120).collect::<Vec<u32>>());
    check_consistent(&store, &a, 120);
}

/// Dovecot reads our Maildir++ (layout, names, flags, subscriptions, UTF-8 folders) and we
/// see its changes. Runs only where `doveadm` is installed and we are root (Dovecot refuses
/// mail access as root, so the Maildir is handed to `nobody`); otherwise it passes silently.
#[test]
fn dovecot_reads_our_maildir_and_we_see_its_changes() {
    // Never skipped: a missing Dovecot would make this look like a pass (tests/run.sh
    // installs it; the test needs root to run doveadm as the mail user).
    assert!(
        std::process::Command::new("doveadm").arg("-V").output().is_ok(),
        "doveadm not found: install the Debian package dovecot-core (bash tests/run.sh does)"
    );
    assert!(nix::unistd::geteuid().is_root(), "the Dovecot interop test must run as root");
    let (t, store, a) = setup();
    for i in 0..3 {
        store.deliver(&a, "INBOX", format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes()).unwrap();
    }
    store.create_folder(&a, "Projekte.Entwürfe").unwrap();
    store.subscribe(&a, "Projekte.Entwürfe").unwrap();
    let mut mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    mb.store_flags(&[1], FlagOp::Add, &[Flag::Seen], None).unwrap();

    let home = t.path().to_path_buf();
    let conf = home.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "mail_location = maildir:{}:UTF-8\nssl = no\nlog_path = {h}/dovecot.log\nbase_dir = {h}/run\n\
             state_dir = {h}/state\nmail_uid = 65534\nmail_gid = 65534\n\
             namespace inbox {{\n  inbox = yes\n  separator = .\n}}\n",
            store.account_dir(&a).display(),
            h = home.display()
        ),
    )
    .unwrap();
    let st = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(&home).status().unwrap();
    assert!(st.success());
    let dove = |args: &[&str]| {
        let out = std::process::Command::new("doveadm")
            .arg("-c")
            .arg(&conf)
            .args(args)
            .env("USER", "nobody")
            .env("HOME", &home)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "doveadm {args:?}: {}{text}", String::from_utf8_lossy(&out.stderr));
        text
    };
    let list: BTreeSet<String> = dove(&["mailbox", "list"]).lines().map(str::to_owned).collect();
    for f in ["INBOX", "Sent", "Drafts", "Junk", "Trash", "Archive", "Projekte", "Projekte.Entwürfe"] {
        assert!(list.contains(f), "{f} missing from {list:?}");
    }
    let subs: BTreeSet<String> = dove(&["mailbox", "list", "-s"]).lines().map(str::to_owned).collect();
    assert!(subs.contains("Projekte.Entwürfe") && subs.contains("Junk"), "{subs:?}");
    let fetched = dove(&["fetch", "flags body", "mailbox", "INBOX", "all"]);
    assert!(fetched.contains("body 2"), "{fetched}");
    assert_eq!(fetched.matches("\\Seen").count(), 1, "{fetched}");

    // Dovecot flags everything and expunges the last message; we see both.
    dove(&["flags", "add", "\\Flagged", "mailbox", "INBOX", "all"]);
    dove(&["expunge", "mailbox", "INBOX", "body", "body 2"]);
    let ch = mb.sync().unwrap();
    assert_eq!(ch.expunged, BTreeSet::from([3]));
    assert_eq!(ch.changed, BTreeSet::from([1, 2]));
    assert_eq!(mb.message(1).unwrap().flags, vec![Flag::Seen, Flag::Flagged]);
    assert_eq!(mb.message(2).unwrap().flags, vec![Flag::Flagged]);
}

/// A Store keeps folder indexes between deliveries. Another Store (standing for another
/// process) that appends, expunges, compacts or deletes the index must never make the
/// first one hand out a UID twice or point at a stale file.
#[test]
fn cached_indexes_follow_changes_made_by_another_store() {
    let (t, a_store, a) = setup();
    let b_store = Store::new(t.path().join("mail"));
    let msg = b"Subject: x\r\n\r\nbody\r\n";
    let mut uids = BTreeSet::new();
    for round in 0..2 {
        for _ in 0..100 {
            assert!(uids.insert(a_store.deliver(&a, "INBOX", msg).unwrap().uid), "round {round}: UID reused");
            assert!(uids.insert(b_store.deliver(&a, "INBOX", msg).unwrap().uid), "round {round}: UID reused");
        }
        // Expunging many messages through B makes its log long enough to be compacted
        // (replaced by rename): A must notice the new file.
        let mut mb = b_store.open_mailbox(&a, "INBOX", false).unwrap();
        let victims: Vec<u32> = mb.uids().into_iter().take(200).collect();
        mb.expunge(&victims).unwrap();
        let d = a_store.deliver(&a, "INBOX", msg).unwrap();
        assert!(uids.insert(d.uid), "round {round}: UID {} reused after compaction", d.uid);
        assert!(d.path.exists(), "round {round}: delivered path {} missing", d.path.display());
    }
    // The index deleted under A's feet: rebuilt, new UIDVALIDITY, deliveries go on.
    let before = a_store.deliver(&a, "INBOX", msg).unwrap();
    std::fs::remove_file(a_store.account_dir(&a).join("posthaste-uidlist")).unwrap();
    let after = a_store.deliver(&a, "INBOX", msg).unwrap();
    assert_ne!(before.uidvalidity, after.uidvalidity);
    let mb = a_store.open_mailbox(&a, "INBOX", false).unwrap();
    let on_disk =
        files(&a_store.account_dir(&a).join("new")).len() + files(&a_store.account_dir(&a).join("cur")).len();
    assert_eq!(mb.messages().len(), on_disk, "the index and the Maildir disagree");
}

/// A file named with its delivery time and S= (Dovecot's form) is indexed without a stat; its
/// internal date is still its mtime, learnt from the file when asked, also by a new process
/// (a new Store) reading the index file, and kept by copies.
#[test]
fn copied_in_mail_is_indexed_without_a_stat_and_dated_by_its_mtime() {
    let (t, store, a) = setup();
    store.deliver(&a, "INBOX", b"ours\n").unwrap();
    let inbox = store.account_dir(&a);
    let path = inbox.join("cur/1700000001.M5P6Q7.elsewhere,S=3:2,");
    std::fs::write(&path, "abc").unwrap();
    let mtime = 1_609_851_600;
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
        .unwrap();
    let mb = store.open_mailbox(&a, "INBOX", false).unwrap();
    let mut seen = None;
    mb.visit(&[2], |_, m| {
        seen = Some(m.internal_date());
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(seen, Some(None), "not stat'ed by the scan");
    assert_eq!(mb.message(2).unwrap().internal_date(), mtime as i64, "a whole message view stats it");
    mb.learn_date(2, mtime as i64);
    mb.visit(&[2], |_, m| {
        seen = Some(m.internal_date());
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(seen, Some(Some(mtime as i64)), "learnt for every session of the folder");
    // Another process: the index file, then the file's mtime again.
    let again = Store::new(t.path().join("mail"));
    let mb2 = again.open_mailbox(&a, "INBOX", false).unwrap();
    assert_eq!(mb2.message(2).unwrap().internal_date(), mtime as i64);
    let mut mb2 = mb2;
    let copied = mb2.copy_to(&[2], "Archive").unwrap();
    let arch = again.open_mailbox(&a, "Archive", false).unwrap();
    assert_eq!(
        arch.message(copied.mapping[0].1).unwrap().internal_date(),
        mtime as i64,
        "a copy keeps the date"
    );
}
