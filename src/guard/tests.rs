//! Counting, decay, escalation, allow list and the per-user limits, on an injected clock.

use super::*;

fn cfg() -> GuardConfig {
    GuardConfig { nftables: NftMode::Off, ..GuardConfig::default() }
}

const T0: u64 = 1_800_000_000;
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
const AUTH: Event = Event::AuthFailure { protocol: "smtp" };

#[test]
fn five_failures_in_ten_minutes_ban_for_an_hour() {
    let g = Guard::in_memory(&cfg());
    let c = ip("192.0.2.1");
    for i in 0..4 {
        assert_eq!(g.record_at(c, AUTH, T0 + i * 60), Verdict::Allow);
    }
    assert_eq!(g.check_at(c, T0 + 300), Verdict::Allow);
    assert_eq!(g.record_at(c, AUTH, T0 + 300), Verdict::Banned { until: T0 + 300 + 3600 });
    assert!(g.check_at(c, T0 + 301).is_banned());
    // Other clients are not affected.
    assert_eq!(g.check_at(ip("192.0.2.2"), T0 + 301), Verdict::Allow);
    // It ends by itself.
    assert_eq!(g.check_at(c, T0 + 300 + 3600), Verdict::Allow);
}

#[test]
fn old_events_decay_out_of_the_window() {
    let g = Guard::in_memory(&cfg());
    let c = ip("192.0.2.1");
    // One failure every 3 minutes: never 5 within 10 minutes.
    for i in 0..20 {
        assert_eq!(g.record_at(c, AUTH, T0 + i * 180), Verdict::Allow, "failure {i}");
    }
    // Kinds are counted separately.
    for i in 0..4 {
        g.record_at(c, AUTH, T0 + 10_000 + i);
        g.record_at(c, Event::UnknownRecipient, T0 + 10_000 + i);
    }
    assert_eq!(g.check_at(c, T0 + 10_010), Verdict::Allow);
}

#[test]
fn repeat_offenders_get_doubled_bans_up_to_the_cap() {
    let mut c = cfg();
    c.max_ban_time = Duration::from_secs(5 * 3600);
    let g = Guard::in_memory(&c);
    let client = ip("2001:db8::7");
    let mut now = T0;
    let mut lengths = Vec::new();
    for _ in 0..5 {
        let mut v = Verdict::Allow;
        for _ in 0..5 {
            v = g.record_at(client, AUTH, now);
        }
        let Verdict::Banned { until } = v else { panic!("not banned") };
        lengths.push((until - now) / 3600);
        now = until + 60;
    }
    assert_eq!(lengths, [1, 2, 4, 5, 5]);
    // After a quiet repeat_window the count starts again.
    let (offence, d) = g.next_ban(g.state.lock().unwrap().bans.get(&client), now + 8 * 86400);
    assert_eq!((offence, d), (1, Duration::from_secs(3600)));
}

#[test]
fn allow_list_is_never_counted_or_banned() {
    let mut c = cfg();
    // Loopback stays allowed even when the list no longer names it.
    c.allow = vec!["198.51.100.0/24".into()];
    let g = Guard::in_memory(&c);
    for who in ["127.0.0.1", "127.9.9.9", "::1", "198.51.100.200", "::ffff:127.0.0.1"] {
        for i in 0..50 {
            assert_eq!(g.record_at(ip(who), AUTH, T0 + i), Verdict::Allow, "{who}");
        }
        assert!(g.ban(ip(who), None, "manual").is_err(), "{who}");
    }
    // An IPv4-mapped address counts as the IPv4 client.
    for i in 0..5 {
        g.record_at(ip("::ffff:192.0.2.9"), AUTH, T0 + i);
    }
    assert!(g.check_at(ip("192.0.2.9"), T0 + 10).is_banned());
}

#[test]
fn disabled_guard_counts_nothing() {
    let g = Guard::in_memory(&GuardConfig { enabled: false, ..cfg() });
    for i in 0..100 {
        assert_eq!(g.record_at(ip("192.0.2.1"), AUTH, T0 + i), Verdict::Allow);
    }
}

#[test]
fn counters_reset_after_a_ban_is_lifted() {
    let g = Guard::in_memory(&cfg());
    let c = ip("192.0.2.1");
    for _ in 0..5 {
        g.record_at(c, AUTH, now_secs());
    }
    assert!(g.check(c).is_banned());
    assert!(g.unban(c, "test").unwrap().is_some());
    assert_eq!(g.check(c), Verdict::Allow);
    // One more failure is one, not six.
    assert_eq!(g.record(c, AUTH), Verdict::Allow);
    // The next ban is a repeat offence.
    for _ in 0..4 {
        g.record(c, AUTH);
    }
    let b = g.list().into_iter().find(|b| b.client == c).unwrap();
    assert_eq!(b.offence, 2);
    assert_eq!(b.until - b.since, 7200);
}

#[test]
fn ban_file_round_trip_and_change_detection() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n[guard]\nnftables = false\n",
        dir.path().display()
    );
    let config = Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    let daemon = Guard::open(&config).unwrap();
    daemon.start().unwrap();
    let cli = Guard::open(&config).unwrap();
    let c = ip("203.0.113.5");
    assert_eq!(daemon.check(c), Verdict::Allow);
    cli.ban(c, Some(Duration::from_secs(600)), "manual").unwrap();
    // The daemon sees the CLI's ban once it looks at the file again: its watch task does
    // when the file is replaced (see the test below), the sweep every SWEEP_INTERVAL.
    daemon.refresh();
    assert!(daemon.check(c).is_banned());
    cli.unban(c, "removed by test").unwrap();
    daemon.sweep();
    assert_eq!(daemon.check(c), Verdict::Allow);
    // Bans the daemon makes persist for the next start.
    for _ in 0..5 {
        daemon.record(c, AUTH);
    }
    let restarted = Guard::open(&config).unwrap();
    restarted.start().unwrap();
    let b = restarted.list();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].offence, 2, "the lifted manual ban still counts for escalation");
}

fn file_config(dir: &std::path::Path) -> Config {
    let text = format!(
        "hostname = \"mail.example.test\"\ndata_dir = \"{}\"\n[guard]\nnftables = false\n",
        dir.display()
    );
    Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
}

/// Poll `f` every 10 ms for up to `limit`; how long it took, or None.
fn within(limit: Duration, f: impl Fn() -> bool) -> Option<Duration> {
    let t = std::time::Instant::now();
    while t.elapsed() < limit {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bans_reach_the_daemon_through_its_watch_task_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path());
    let daemon = Arc::new(Guard::open(&config).unwrap());
    daemon.start().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(daemon.clone().watch(rx));
    // The interval's first tick (a sweep) happens at once; let it pass.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let c = ip("203.0.113.9");
    let (d, cfg) = (daemon.clone(), config.clone());
    let took = tokio::task::spawn_blocking(move || {
        Guard::open(&cfg).unwrap().ban(c, Some(Duration::from_secs(600)), "manual").unwrap();
        within(Duration::from_secs(2), || d.check(c).is_banned())
    })
    .await
    .unwrap();
    // Well before the next sweep (SWEEP_INTERVAL): the change notification did it.
    assert!(
        took.is_some_and(|t| t < SWEEP_INTERVAL / 2),
        "the daemon did not notice the CLI's ban: {took:?}"
    );
    let (d, cfg) = (daemon.clone(), config.clone());
    let took = tokio::task::spawn_blocking(move || {
        Guard::open(&cfg).unwrap().unban(c, "removed by test").unwrap();
        within(Duration::from_secs(2), || d.check(c) == Verdict::Allow)
    })
    .await
    .unwrap();
    assert!(took.is_some(), "the daemon did not notice the CLI's unban");
    stop.send(true).unwrap();
    task.await.unwrap();
}

/// Feed a FIFO for a while, from a thread of its own: whoever waits to read it goes on.
fn feed(fifo: &std::path::Path) {
    let p = fifo.to_owned();
    std::thread::spawn(move || {
        for _ in 0..20 {
            let _ = std::fs::write(&p, "{\"bans\": []}\n");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

/// `Guard::check` used to stat (and, when it changed, re-read) the ban file under the state
/// mutex on every accept, on the async workers, and a ban was written to the file under that
/// mutex. A ban file whose reading blocks (here a FIFO nobody writes: opening it for reading
/// waits for a writer) must hold up neither accepts nor, while a ban is being saved, the
/// other connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_wait_neither_for_the_ban_file_nor_for_a_ban_being_saved() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path());
    let daemon = Arc::new(Guard::open(&config).unwrap());
    let path = dir.path().join(bans::BAN_FILE);
    let fifo = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let (a, b) = (ip("198.51.100.77"), ip("198.51.100.78"));
    // An accept as the front door makes it, timed by a thread of its own: a stuck runtime
    // must make this test fail, not hang.
    let accept = |ip| {
        let (d, (tx, rx)) = (daemon.clone(), std::sync::mpsc::channel());
        std::thread::spawn(move || tx.send((d.check(ip), d.connect(ip))));
        rx.recv_timeout(Duration::from_secs(3))
    };
    let Ok(first) = accept(a) else {
        feed(&path);
        panic!("an accept waited for the ban file");
    };
    assert_eq!(first, (Verdict::Allow, Verdict::Allow));
    // A session's fifth failed login bans `b`; saving the ban waits on the FIFO.
    let d = daemon.clone();
    let banning = tokio::spawn(async move {
        let mut v = Verdict::Allow;
        for _ in 0..5 {
            v = d.record(b, AUTH);
        }
        v
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(!banning.is_finished(), "the save did not wait for the FIFO: the test proves nothing");
    // Meanwhile other connections are accepted, and `b` is already refused.
    let during = accept(a);
    let refused = accept(b);
    feed(&path);
    let (Ok(during), Ok(refused)) = (during, refused) else {
        panic!("accepts waited for a ban being saved");
    };
    assert_eq!(during, (Verdict::Allow, Verdict::Allow));
    assert!(refused.0.is_banned() && refused.1.is_banned(), "{refused:?}");
    // Fed, the save goes on and replaces the FIFO by the real ban file, which has the ban.
    assert!(tokio::time::timeout(Duration::from_secs(5), banning).await.unwrap().unwrap().is_banned());
    let on_disk = BanFile::new(dir.path()).load().unwrap();
    assert!(on_disk.get(&b).is_some_and(|x| x.active_at(now_secs())), "{on_disk:?}");
}

#[test]
fn a_ban_the_file_could_not_take_stays_in_force_and_is_saved_later() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_config(dir.path());
    let daemon = Guard::open(&config).unwrap();
    // The lock file cannot be opened (a directory in its place): every save fails.
    let lock = dir.path().join(format!("{}.lock", bans::BAN_FILE));
    std::fs::create_dir(&lock).unwrap();
    let (a, b) = (ip("192.0.2.10"), ip("192.0.2.11"));
    for _ in 0..5 {
        daemon.record(a, AUTH);
    }
    assert!(daemon.check(a).is_banned());
    // Meanwhile someone else writes the file (by hand): a re-read takes their ban and keeps
    // ours, which the file does not hold yet.
    let now = now_secs();
    let theirs =
        Ban { client: b, since: now, until: now + 600, reason: "by hand".into(), offence: 1, lifted: None };
    let text = serde_json::json!({ "bans": [theirs] }).to_string();
    std::fs::write(dir.path().join(bans::BAN_FILE), text).unwrap();
    daemon.refresh();
    assert!(daemon.check(a).is_banned(), "a re-read of the file dropped a ban not saved yet");
    assert!(daemon.check(b).is_banned());
    // Once the file can be written again, the sweep saves it.
    std::fs::remove_dir(&lock).unwrap();
    daemon.sweep();
    let on_disk = BanFile::new(dir.path()).load().unwrap();
    assert!(on_disk.contains_key(&a) && on_disk.contains_key(&b), "{on_disk:?}");
    assert!(Guard::open(&config).unwrap().check(a).is_banned());
}

#[test]
fn per_user_limits() {
    let g = Guard::in_memory(&GuardConfig { messages_per_hour: 3, recipients_per_hour: 10, ..cfg() });
    let u = "alice@example.test";
    for i in 0..3 {
        assert_eq!(g.may_send_at(u, 0, T0 + i), Ok(()));
        g.record_message_at(u, 2, T0 + i);
    }
    assert_eq!(g.may_send_at(u, 0, T0 + 10), Err(LimitExceeded::Messages));
    assert_eq!(g.may_send_at(u, 4, T0 + 10), Ok(()));
    assert_eq!(g.may_send_at(u, 5, T0 + 10), Err(LimitExceeded::Recipients));
    // An hour later the old messages no longer count.
    assert_eq!(g.may_send_at(u, 0, T0 + 3600), Ok(()));
    assert_eq!(g.may_send_at("bob@example.test", 0, T0), Ok(()));
}

#[test]
fn connection_floods_ban_at_accept() {
    let g = Guard::in_memory(&GuardConfig {
        connections: 3,
        connection_window: Duration::from_secs(60),
        ..cfg()
    });
    let c = ip("192.0.2.50");
    for _ in 0..2 {
        assert_eq!(g.connect(c), Verdict::Allow);
    }
    // The third connection within the minute reaches the threshold and is itself refused.
    assert!(g.connect(c).is_banned());
    assert!(g.connect(c).is_banned());
    let b = g.list();
    assert_eq!(b.len(), 1);
    assert!(b[0].reason.contains("connections (flood)"), "{}", b[0].reason);
    // Loopback floods are never banned.
    for _ in 0..10 {
        assert_eq!(g.connect(ip("127.0.0.1")), Verdict::Allow);
    }
}
