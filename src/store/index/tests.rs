//! Unit tests of the index as a whole: rebuild, bulk load, and the write transaction.
//! (The format, the cache, the state and the scanner have tests beside their code; the
//! store's behaviour on top is tested in `store/tests.rs` and tests/it/store.rs.)

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::*;

pub(super) fn folder() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir(dir.join(d)).unwrap();
    }
    (t, dir)
}

pub(super) fn put(dir: &Path, name: &str, body: &str, mtime: u64) {
    let f = File::create(dir.join(name)).unwrap();
    (&f).write_all(body.as_bytes()).unwrap();
    f.set_modified(UNIX_EPOCH + std::time::Duration::from_secs(mtime)).unwrap();
}

pub(super) fn rebuilt(dir: &Path) -> Index {
    let mut idx = Index::new(dir.to_path_buf());
    let lock = IndexLock::acquire(dir).unwrap();
    idx.refresh_locked(&lock, &mut Changes::default()).unwrap();
    idx
}

#[test]
fn rebuild_takes_cur_over_new_orders_by_delivery_time_and_skips_odd_names() {
    let (_t, dir) = folder();
    // Delivered last, but its copy in cur/ (a crashed foreign rename) is the one taken.
    put(&dir, "cur/1700000002.M5P1.h,S=99:2,S", "abc", 1_700_000_100);
    put(&dir, "new/1700000002.M5P1.h,S=99", "abc", 1_700_000_200);
    // No S=: the size is the file's; same time as the next, so the base decides.
    put(&dir, "new/1700000001.M9P1.h", "hello", 1_700_000_300);
    put(&dir, "new/1700000001.M9P1.a,W=7", "hi", 1_700_000_400);
    // No time in the name: ordered by mtime, the oldest here.
    put(&dir, "cur/no-time-name:2,", "x", 1_600_000_000);
    // Not messages: hidden, an empty base, a directory, a line break.
    put(&dir, "cur/.hidden", "x", 1);
    put(&dir, "cur/:2,S", "x", 1);
    put(&dir, "new/two\nlines", "x", 1);
    std::fs::create_dir(dir.join("cur/sub")).unwrap();

    let idx = rebuilt(&dir);
    let got: Vec<_> = idx
        .state
        .entries
        .values()
        .map(|e| (e.uid, e.filename.as_str(), e.in_new, e.date, e.size, e.modseq))
        .collect();
    assert_eq!(
        got,
        vec![
            // MODSEQs from 2: an empty folder's HIGHESTMODSEQ is 1 (RFC 7162 §3.1.1).
            (1, "no-time-name:2,", false, 1_600_000_000, 1, 2),
            (2, "1700000001.M9P1.a,W=7", true, 1_700_000_400, 2, 3),
            (3, "1700000001.M9P1.h", true, 1_700_000_300, 5, 4),
            // Time and S= in the name: not stat'ed, the date is learnt when asked.
            (4, "1700000002.M5P1.h,S=99:2,S", false, DATE_UNKNOWN, 99, 5),
        ]
    );
    assert_eq!((idx.state.next_uid, idx.state.highest_modseq), (5, 5));
    assert_eq!(idx.state.by_base.get("1700000001.M9P1.h"), Some(&3));
    assert_eq!(idx.state.by_base.len(), 4);
    // The file it wrote reads back as the same state.
    let mut again = Index::new(dir.clone());
    assert!(matches!(again.refresh(&mut Changes::default()).unwrap(), Loaded::Ok));
    assert_eq!(again.state.entries, idx.state.entries);
    assert_eq!(again.state.by_modseq, idx.state.by_modseq);

    // A later scan: one file gone, one renamed by another client, one new.
    std::fs::remove_file(dir.join("new/1700000001.M9P1.h")).unwrap();
    std::fs::rename(dir.join("cur/no-time-name:2,"), dir.join("cur/no-time-name:2,F")).unwrap();
    put(&dir, "new/1800000000.M1P1.h", "later", 1_800_000_000);
    let (recs, _) = idx.scan_records_at(false).unwrap();
    let kinds: Vec<String> = recs
        .iter()
        .map(|r| match r {
            Record::Add(e) => format!("+{} {} {}", e.uid, e.modseq, e.filename),
            Record::Update(e) => format!("={} {} {}", e.uid, e.modseq, e.filename),
            Record::Expunge { uid, modseq } => format!("-{uid} {modseq}"),
            Record::Recent(u) => format!("R{u}"),
            Record::Stamp(..) => "D".to_owned(),
        })
        .collect();
    assert_eq!(kinds[..3], ["=1 6 no-time-name:2,F", "-3 7", "+5 8 1800000000.M1P1.h"]);
}

#[test]
fn bulk_load_of_a_scan_equals_applying_it_record_by_record() {
    let (_t, dir) = folder();
    for i in 0..2500u64 {
        let sub = if i % 3 == 0 { "new" } else { "cur" };
        let flags = if sub == "cur" { ":2,S" } else { "" };
        put(&dir, &format!("{sub}/{}.M{i}P7.h,S={i}{flags}", 1_700_000_000 + i % 17), "m", 1_700_000_000 + i);
    }
    let idx = Index::new(dir.clone());
    let recs = idx.scan_records(false).unwrap();
    assert!(recs.len() >= 2500);
    let (mut one, mut bulk) = (State::new(9, 1, 0), State::new(9, 1, 0));
    let (mut ch1, mut ch2) = (Changes::default(), Changes::default());
    for r in recs.clone() {
        one.apply(r, &mut ch1);
    }
    bulk.load_scan(recs, &mut ch2);
    assert_eq!(bulk.entries, one.entries);
    assert_eq!(bulk.by_base, one.by_base);
    assert_eq!(bulk.by_modseq, one.by_modseq);
    assert_eq!(
        (bulk.next_uid, bulk.highest_modseq, bulk.records, bulk.stamp),
        (one.next_uid, one.highest_modseq, one.records, one.stamp)
    );
    assert_eq!(ch2, ch1);
    assert_eq!(bulk.entries.len(), 2500);
    // Not a scan of an empty state: record by record.
    let mut st = State::new(9, 1, 0);
    let e = one.entries[&1].clone();
    st.load_scan(
        vec![Record::Add(e.clone()), Record::Expunge { uid: 1, modseq: 2 }],
        &mut Changes::default(),
    );
    assert!(st.entries.is_empty() && st.by_base.is_empty());
}

/// Deliver a file into new/ the way the store does (written first), then index it.
fn add_file(idx: &mut Index, dir: &Path, name: &str) -> io::Result<u32> {
    put(dir, &format!("new/{name}"), "m", 1_700_000_000);
    idx.write(|tx| {
        Ok(tx.add(NewMessage {
            filename: name.to_owned(),
            in_new: true,
            date: 1_700_000_000,
            size: 1,
            keywords: BTreeSet::new(),
        }))
    })
}

/// What a reader that starts from the file alone sees: (UIDVALIDITY, UIDNEXT,
/// HIGHESTMODSEQ, every entry).
fn as_read_from_disk(dir: &Path) -> (u32, u32, u64, Vec<Entry>) {
    let mut fresh = Index::new(dir.to_path_buf());
    assert!(matches!(fresh.refresh(&mut Changes::default()).unwrap(), Loaded::Ok));
    (
        fresh.uidvalidity(),
        fresh.next_uid(),
        fresh.highest_modseq(),
        fresh.entries().values().cloned().collect(),
    )
}

fn as_in_memory(idx: &Index) -> (u32, u32, u64, Vec<Entry>) {
    (idx.uidvalidity(), idx.next_uid(), idx.highest_modseq(), idx.entries().values().cloned().collect())
}

/// A commit whose write reaches the file but whose fdatasync fails leaves the index as it
/// was, in memory and on disk: the lines it wrote are cut off again, so no other reader
/// takes them, and the next writer hands out the same UID (none lost, none twice).
#[test]
fn a_commit_that_fails_leaves_the_index_as_it_was() {
    let (_t, dir) = folder();
    let mut idx = rebuilt(&dir);
    let first = add_file(&mut idx, &dir, "1.M1P1.h").unwrap();
    let before = as_in_memory(&idx);
    let bytes = std::fs::read(dir.join(INDEX_FILE)).unwrap();
    assert_eq!(as_read_from_disk(&dir), before);

    idx.fault = Some(Fault::Sync);
    let err = add_file(&mut idx, &dir, "2.M1P1.h").unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(as_in_memory(&idx), before, "memory as it was");
    assert_eq!(std::fs::read(dir.join(INDEX_FILE)).unwrap(), bytes, "file as it was");
    assert_eq!(as_read_from_disk(&dir), before);
    assert!(!idx.dirs_unchanged(), "the file the index missed is looked for");

    // The next writer (here a scan) indexes the file with the UID the failed commit had.
    idx.write(|tx| tx.scan(false)).unwrap();
    assert_eq!(idx.uid_of_base("2.M1P1.h"), Some(first + 1));
    let third = add_file(&mut idx, &dir, "3.M1P1.h").unwrap();
    assert_eq!(third, first + 2);
    assert_eq!(as_read_from_disk(&dir), as_in_memory(&idx));
}

/// A closure that fails commits nothing it staged.
#[test]
fn a_transaction_whose_closure_fails_commits_nothing() {
    let (_t, dir) = folder();
    let mut idx = rebuilt(&dir);
    let uid = add_file(&mut idx, &dir, "1.M1P1.h").unwrap();
    let before = as_in_memory(&idx);
    let bytes = std::fs::read(dir.join(INDEX_FILE)).unwrap();
    let err = idx
        .write(|tx| -> io::Result<()> {
            tx.add(NewMessage {
                filename: "2.M1P1.h".into(),
                in_new: true,
                date: 1,
                size: 1,
                keywords: BTreeSet::new(),
            });
            assert!(tx.expunge(uid));
            assert_eq!(tx.update(uid, Some("1.M1P1.h:2,S".into()), None), Some(true));
            Err(io::Error::other("the caller gave up"))
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "the caller gave up");
    assert_eq!(as_in_memory(&idx), before);
    assert_eq!(std::fs::read(dir.join(INDEX_FILE)).unwrap(), bytes);
}

/// A compaction that fails after a commit (a full disk) does not turn the durable commit
/// into an error — a client told "failed" would deliver or store again — and the index
/// goes on appending, then compacts once it can.
#[test]
fn a_failed_compaction_does_not_fail_the_commit() {
    let (_t, dir) = folder();
    let mut idx = rebuilt(&dir);
    let uid = add_file(&mut idx, &dir, "1.M1P1.h").unwrap();
    // Before the rename (the file stays), then after it (the file was replaced under the
    // handle we append to: read again before the next append).
    for fault in [Fault::Compact, Fault::Reopen] {
        idx.fault = Some(fault);
        for i in 0..600 {
            let kw: BTreeSet<String> = if i % 2 == 0 { ["work".to_owned()].into() } else { BTreeSet::new() };
            let changed = idx.write(|tx| Ok(tx.update(uid, None, Some(kw)))).unwrap();
            assert_eq!(changed, Some(true), "{fault:?} {i}");
            assert_eq!(as_read_from_disk(&dir), as_in_memory(&idx), "{fault:?} {i}");
        }
        assert!(idx.fault.is_none(), "{fault:?}: the compaction was tried");
        let lines = std::fs::read_to_string(dir.join(INDEX_FILE)).unwrap().lines().count();
        assert!(lines < 300, "{fault:?}: compacted later: {lines} lines");
    }
    // 1 for the empty folder, 2 for the message, then one per update.
    assert_eq!(idx.highest_modseq(), 1202);
    // Within one transaction: the compaction after the first commit fails after its rename,
    // and the second commit (the scan's) must go to the new file, not the replaced one.
    for i in 0..300 {
        let kw: BTreeSet<String> = if i % 2 == 0 { ["x".to_owned()].into() } else { BTreeSet::new() };
        idx.write(|tx| Ok(tx.update(uid, None, Some(kw)))).unwrap();
        if idx.state.records + 1 > 2 * idx.state.entries.len() + 256 {
            break;
        }
    }
    put(&dir, "new/2.M1P1.h", "m", 1_700_000_000);
    idx.fault = Some(Fault::Reopen);
    let kw: BTreeSet<String> =
        if idx.get(uid).unwrap().keywords().is_empty() { ["y".to_owned()].into() } else { BTreeSet::new() };
    idx.write(|tx| {
        assert_eq!(tx.update(uid, None, Some(kw)), Some(true));
        tx.scan(false)
    })
    .unwrap();
    assert!(idx.fault.is_none(), "the compaction was tried");
    assert!(idx.uid_of_base("2.M1P1.h").is_some());
    assert_eq!(as_read_from_disk(&dir), as_in_memory(&idx));
}

#[test]
fn updates_get_a_new_modseq_only_when_flags_or_keywords_change() {
    let (_t, dir) = folder();
    let mut idx = rebuilt(&dir);
    let uid = add_file(&mut idx, &dir, "1.M1P1.h").unwrap();
    let m0 = idx.get(uid).unwrap().modseq();
    // Seen by an IMAP session: moved to cur/ with no flags, nothing to report.
    std::fs::rename(dir.join("new/1.M1P1.h"), dir.join("cur/1.M1P1.h:2,")).unwrap();
    let r = idx.write(|tx| Ok(tx.update(uid, Some("1.M1P1.h:2,".into()), None))).unwrap();
    assert_eq!(r, Some(false));
    let e = idx.get(uid).unwrap();
    assert_eq!((e.in_new, e.filename.as_str(), e.modseq), (false, "1.M1P1.h:2,", m0));
    // \Seen: a new MODSEQ (RFC 7162 §3.1), and HIGHESTMODSEQ with it.
    std::fs::rename(dir.join("cur/1.M1P1.h:2,"), dir.join("cur/1.M1P1.h:2,S")).unwrap();
    let r = idx.write(|tx| Ok(tx.update(uid, Some("1.M1P1.h:2,S".into()), None))).unwrap();
    assert_eq!(r, Some(true));
    assert_eq!((idx.get(uid).unwrap().modseq(), idx.highest_modseq()), (m0 + 1, m0 + 1));
    // The same again: nothing staged, nothing written.
    let len = std::fs::metadata(dir.join(INDEX_FILE)).unwrap().len();
    assert_eq!(idx.write(|tx| Ok(tx.update(uid, Some("1.M1P1.h:2,S".into()), None))).unwrap(), Some(false));
    assert_eq!(std::fs::metadata(dir.join(INDEX_FILE)).unwrap().len(), len);
    // Unknown UIDs.
    assert_eq!(idx.write(|tx| Ok((tx.update(99, None, None), tx.expunge(99)))).unwrap(), (None, false));
    // An expunge raises HIGHESTMODSEQ (RFC 7162 §3.2); UIDNEXT stays.
    std::fs::remove_file(dir.join("cur/1.M1P1.h:2,S")).unwrap();
    assert!(idx.write(|tx| Ok(tx.expunge(uid))).unwrap());
    assert_eq!((idx.highest_modseq(), idx.next_uid(), idx.entries().len()), (m0 + 2, uid + 1, 0));
}

/// Writers in several threads — each with an index of its own, as separate processes
/// have, or sharing one behind a mutex, as the sessions of one daemon do — never lose or
/// duplicate a UID. (The same between two processes: tests/it/store.rs.)
#[test]
fn writers_in_threads_never_lose_or_duplicate_a_uid() {
    let (_t, dir) = folder();
    drop(rebuilt(&dir));
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Index::new(dir.clone())));
    const PER: usize = 40;
    let uids: Vec<(String, u32)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|t| {
                let (dir, shared) = (&dir, shared.clone());
                s.spawn(move || {
                    let mut own = Index::new(dir.clone());
                    let mut got = Vec::new();
                    for i in 0..PER {
                        let name = format!("{t}.M{i}P1.h");
                        let uid = if t < 2 {
                            add_file(&mut own, dir, &name)
                        } else {
                            add_file(&mut shared.lock().unwrap(), dir, &name)
                        };
                        got.push((name, uid.unwrap()));
                    }
                    got
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    let distinct: BTreeSet<u32> = uids.iter().map(|(_, u)| *u).collect();
    assert_eq!(distinct.len(), 4 * PER, "a UID given twice");
    assert_eq!(distinct.iter().copied().collect::<Vec<_>>(), (1..=(4 * PER) as u32).collect::<Vec<_>>());
    let (_, next, _, entries) = as_read_from_disk(&dir);
    assert_eq!(next, 4 * PER as u32 + 1);
    for (name, uid) in &uids {
        assert!(entries.iter().any(|e| e.uid == *uid && &e.filename == name), "{name} lost");
    }
    // The shared index saw the others' records too, as any reader would.
    let mut idx = shared.lock().unwrap();
    idx.refresh(&mut Changes::default()).unwrap();
    assert_eq!(idx.entries().len(), 4 * PER);
}
