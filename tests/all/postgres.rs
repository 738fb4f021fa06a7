//! The PostgreSQL state store against a real server started for each test:
//! it passes the backends' conformance suite, an approval is used once
//! when replicas race for it, the schema is migrated once by replicas that
//! start together, a database migrated by a newer Arbiter is refused, and
//! a database that is away is an error that names it, never a hang and
//! never the password; the windows' counts of several processes add up,
//! each sees only the others', and they age out.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use arbiter::decision::ApprovalStatus;
use arbiter::state::conformance::{self, approval};
use arbiter::state::postgres::{PgOptions, PgState, SCHEMA_VERSION};
use arbiter::state::{BucketCount, State, StoreError, WindowTotals};
use arbiter_tests::postgres::Postgres;

fn open(pg: &Postgres) -> State {
    PgState::open(&PgOptions::new(pg.url()))
        .expect("open")
        .into_state()
}

#[test]
fn the_postgres_store_conforms() {
    let pg = Postgres::start();
    let state = open(&pg);
    conformance::conforms(&state);
    conformance::single_use_holds_under_races(&state);
}

#[test]
fn an_approval_raced_for_through_three_replicas_is_used_once() {
    let pg = Postgres::start();
    let replicas: Vec<State> = (0..3).map(|_| open(&pg)).collect();
    replicas[0]
        .approvals
        .create(&approval("granted", ApprovalStatus::Approved))
        .expect("create");
    let start = Arc::new(Barrier::new(30));
    let wins: usize = (0..30)
        .map(|i| {
            let store = Arc::clone(&replicas[i % 3].approvals);
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                store
                    .transition(
                        ApprovalStatus::Approved,
                        &approval("granted", ApprovalStatus::Used),
                    )
                    .expect("transition")
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| usize::from(t.join().expect("join")))
        .sum();
    assert_eq!(wins, 1, "exactly one of 30 re-asks over 3 replicas");
    for r in &replicas {
        assert_eq!(
            r.approvals.approvals().expect("read")[0].status,
            ApprovalStatus::Used
        );
    }
}

#[test]
fn replicas_starting_together_migrate_the_schema_once() {
    let pg = Postgres::start();
    let url = pg.url();
    let start = Arc::new(Barrier::new(4));
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let (url, start) = (url.clone(), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                PgState::open(&PgOptions::new(url)).map(drop)
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("join"))
        .collect();
    assert!(opened.iter().all(Result::is_ok), "{opened:?}");
    assert_eq!(
        pg.psql("SELECT count(*), max(version) FROM arbiter_schema"),
        format!("1|{SCHEMA_VERSION}")
    );
}

#[test]
fn a_database_migrated_by_a_newer_arbiter_is_refused_by_name() {
    let pg = Postgres::start();
    drop(open(&pg));
    pg.psql("UPDATE arbiter_schema SET version = 99");
    let e = PgState::open(&PgOptions::new(pg.url())).expect_err("refused");
    assert!(
        matches!(e, StoreError::SchemaNewer { found: 99, .. }),
        "{e:?}"
    );
    let message = e.to_string();
    assert!(message.contains("schema version 99"), "{message}");
    assert!(message.contains("127.0.0.1"), "{message}");
    // Nothing was touched.
    assert_eq!(pg.psql("SELECT version FROM arbiter_schema"), "99");
}

#[test]
fn attack_an_unreachable_database_is_named_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // Nothing listens there once the listener above is dropped.
    let mut options = PgOptions::new(format!("postgres://arbiter:hunter2@127.0.0.1:{port}/fleet"));
    options.timeout = Duration::from_secs(2);
    let e = PgState::open(&options).expect_err("refused");
    let message = format!("{e} {e:?}");
    assert!(
        message.contains(&format!("127.0.0.1:{port}/fleet")),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "the password leaked: {message}"
    );
}

#[test]
fn a_database_that_goes_away_fails_each_call_promptly() {
    let mut pg = Postgres::start();
    let mut options = PgOptions::new(pg.url());
    options.timeout = Duration::from_secs(2);
    let state = PgState::open(&options).expect("open").into_state();
    state
        .agents
        .suspend("bot", &conformance::suspension("leak"))
        .expect("suspend");
    pg.kill();
    // The killed server's processes die within moments; from then on every
    // call fails, each within its timeout, and none hangs.
    let deadline = Instant::now() + Duration::from_secs(10);
    let e = loop {
        let start = Instant::now();
        let read = state.agents.suspensions();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        match read {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "still answering"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(e.to_string().contains("state database"), "{e}");
    assert!(
        state
            .approvals
            .transition(
                ApprovalStatus::Approved,
                &approval("x", ApprovalStatus::Used)
            )
            .is_err(),
        "a use is never granted without the database"
    );
}

#[test]
fn spend_added_through_three_replicas_at_once_is_the_sum_and_starts_afresh_each_day() {
    let pg = Postgres::start();
    let replicas: Vec<State> = (0..3).map(|_| open(&pg)).collect();
    let day = 20_000 * 86_400_000;
    std::thread::scope(|s| {
        for r in &replicas {
            s.spawn(move || {
                let spend = r.shared_spend.as_ref().expect("shared");
                for _ in 0..50 {
                    spend.add("bot", day, 7).expect("add");
                }
            });
        }
    });
    let spend = replicas[0].shared_spend.as_ref().expect("shared");
    assert_eq!(spend.today("bot", day).expect("read"), 3 * 50 * 7);
    // The next day starts at zero; the old one is not added to.
    assert_eq!(spend.today("bot", day + 86_400_000).expect("read"), 0);
    assert_eq!(spend.add("bot", day + 86_400_000, 5).expect("add"), 5);
    assert_eq!(spend.add("bot", day, 1_000).expect("late add"), 0);
    assert_eq!(spend.today("bot", day + 86_400_000).expect("read"), 5);
    // A total past what a bigint holds saturates instead of failing.
    spend.add("rich", day, u64::MAX).expect("huge");
    assert_eq!(
        spend.add("rich", day, u64::MAX).expect("huge"),
        i64::MAX as u64
    );
}

#[test]
fn a_spend_hold_makes_the_other_replicas_wait_and_a_dropped_hold_adds_nothing() {
    let pg = Postgres::start();
    let (a, b) = (open(&pg), open(&pg));
    let day = 20_000 * 86_400_000;
    let held = a
        .shared_spend
        .as_ref()
        .expect("shared")
        .hold("bot", day)
        .expect("hold");
    assert_eq!(held.today(), 0);
    let waited = std::thread::scope(|s| {
        let other = s.spawn(|| {
            let start = Instant::now();
            let h = b
                .shared_spend
                .as_ref()
                .expect("shared")
                .hold("bot", day)
                .expect("hold");
            (start.elapsed(), h.today(), h.commit(1).expect("commit"))
        });
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(held.commit(100).expect("commit"), 100);
        other.join().expect("join")
    });
    // b read the spend only after a added to it.
    assert!(waited.0 >= Duration::from_millis(250), "{:?}", waited.0);
    assert_eq!((waited.1, waited.2), (100, 101));
    let dropped = a
        .shared_spend
        .as_ref()
        .expect("shared")
        .hold("bot", day)
        .expect("hold");
    drop(dropped);
    let spend = b.shared_spend.as_ref().expect("shared");
    assert_eq!(spend.hold("bot", day).expect("free again").today(), 101);
}

#[test]
fn a_replica_hears_the_others_changes_and_a_forged_notification_only_makes_it_read_again() {
    use arbiter::state::StateChange;
    let pg = Postgres::start();
    let (a, b) = (open(&pg), open(&pg));
    let mut heard = b.subscribe();
    let wait_in_step = |s: &State| {
        let start = Instant::now();
        while s.feed().lost_since().is_some() {
            // Nobody reads everything again here: catch up by hand.
            let epoch = s.feed().epoch();
            s.feed().caught_up(epoch);
            assert!(start.elapsed() < Duration::from_secs(10), "never joined");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_in_step(&b);
    let next = |rx: &mut tokio::sync::broadcast::Receiver<StateChange>| {
        let start = Instant::now();
        loop {
            match rx.try_recv() {
                Ok(StateChange::Resync) => {}
                Ok(c) => return c,
                Err(_) => {
                    assert!(start.elapsed() < Duration::from_secs(5), "nothing heard");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    };
    a.agents
        .suspend("rogue", &conformance::suspension("x"))
        .expect("suspend");
    assert_eq!(next(&mut heard), StateChange::Suspended("rogue".into()));
    a.agents.resume("rogue").expect("resume");
    assert_eq!(next(&mut heard), StateChange::Resumed("rogue".into()));
    // Anyone who can reach the database can NOTIFY the channel: what
    // they send is never taken for state, only a reason to read again.
    pg.psql("NOTIFY arbiter_state, '{\"table\":\"arbiter_suspensions\",\"op\":\"DELETE\",\"key\":\"victim\"}'");
    assert_eq!(next(&mut heard), StateChange::Resumed("victim".into()));
    pg.psql("NOTIFY arbiter_state, 'garbage'");
    let start = Instant::now();
    loop {
        if let Ok(StateChange::Resync) = heard.try_recv() {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no resync");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Writes through b's own connection are not heard twice.
    b.agents
        .suspend("own", &conformance::suspension("x"))
        .expect("suspend");
    assert_eq!(next(&mut heard), StateChange::Suspended("own".into()));
    std::thread::sleep(Duration::from_millis(200));
    assert!(heard.try_recv().is_err(), "b heard its own write twice");
}

#[test]
fn attack_another_database_found_at_the_same_address_is_refused_not_taken_for_the_fleet() {
    let pg = Postgres::start();
    let state = open(&pg);
    state
        .agents
        .suspend("rogue", &conformance::suspension("x"))
        .expect("suspend");
    // An empty database restored in its place: same address, same
    // tables, another fleet, and none of its suspensions.
    pg.psql("DELETE FROM arbiter_suspensions; UPDATE arbiter_schema SET fleet = 'impostor'");
    pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'");
    let start = Instant::now();
    let e = loop {
        match state.agents.suspensions() {
            Err(e) => break e,
            Ok(_) => assert!(start.elapsed() < Duration::from_secs(10), "still answering"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let chain = |e: &StoreError| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    };
    // The first call may only see its connection end; the next one
    // reconnects and is refused by name.
    let refused = |e: &StoreError| chain(e).contains("not the one this replica started with");
    if !refused(&e) {
        std::thread::sleep(Duration::from_millis(300));
        let again = state.agents.suspensions().expect_err("refused");
        assert!(refused(&again), "{}", chain(&again));
    }
    // Nor does the feed come back: decisions stay failed closed.
    std::thread::sleep(Duration::from_millis(500));
    assert!(state.feed().lost_since().is_some());
}

#[test]
fn tls_is_used_when_the_url_asks_and_a_server_certificate_nobody_vouches_for_is_refused() {
    let pg = Postgres::start_tls();
    let url = format!("{}?sslmode=require", pg.url());
    let mut options = PgOptions::new(&url);
    options.ca_file = Some(pg.ca_file());
    let state = PgState::open(&options).expect("open over TLS").into_state();
    conformance::conforms(&state);
    assert_eq!(
        pg.psql("SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE ssl AND application_name = ''"),
        "2",
        "the store's two connections (calls and the feed) are encrypted"
    );
    // The server's certificate from a CA the replica was not given.
    let e = PgState::open(&PgOptions::new(&url)).expect_err("untrusted");
    assert!(matches!(e, StoreError::Remote { .. }), "{e:?}");
    // Plaintext is refused by this server: nothing falls back to it.
    let e = PgState::open(&PgOptions::new(pg.url())).expect_err("plaintext");
    assert!(matches!(e, StoreError::Remote { .. }), "{e:?}");
}

fn bucket(agent: &str, counter: &[u8], second: u64, n: u64) -> BucketCount {
    BucketCount {
        agent: agent.into(),
        counter: counter.to_vec(),
        second,
        n,
    }
}

fn sorted(mut totals: Vec<WindowTotals>) -> Vec<(String, Vec<u8>, [u64; 3])> {
    totals.sort_by(|a, b| (&a.agent, &a.counter).cmp(&(&b.agent, &b.counter)));
    totals
        .into_iter()
        .map(|t| (t.agent, t.counter, t.counts))
        .collect()
}

#[test]
fn window_counts_of_several_processes_add_up_each_sees_the_others_and_they_age_out() {
    let pg = Postgres::start();
    let (a, b) = (open(&pg), open(&pg));
    let (a, b) = (
        a.shared_windows.expect("shared"),
        b.shared_windows.expect("shared"),
    );
    // Minute, ten minutes, hour.
    let spans = [60_000, 600_000, 3_600_000];
    let now = 1_800_000_000_000;
    let s = now / 1000;
    // An agent id and a counter that text could not hold travel intact.
    let odd = "bot\0two";
    a.exchange(
        "a",
        &[
            bucket("bot", b"c", s - 10, 3),
            bucket("bot", b"c", s - 120, 2),
            bucket(odd, b"a\0x", s - 1_000, 5),
        ],
        now,
        spans,
    )
    .expect("a sends");
    // The same key again adds to it.
    a.exchange("a", &[bucket("bot", b"c", s - 10, 1)], now, spans)
        .expect("a sends again");
    let seen = b
        .exchange("b", &[bucket("bot", b"c", s, 7)], now, spans)
        .expect("b exchanges");
    assert_eq!(
        sorted(seen),
        vec![
            ("bot".to_owned(), b"c".to_vec(), [4, 6, 6]),
            (odd.to_owned(), b"a\0x".to_vec(), [0, 0, 5]),
        ],
        "b sees a's counts, not its own"
    );
    let seen = a.exchange("a", &[], now, spans).expect("a reads");
    assert_eq!(
        sorted(seen),
        vec![("bot".to_owned(), b"c".to_vec(), [7, 7, 7])]
    );
    // A second counts while its last millisecond is inside: the bucket of
    // `s - 10` leaves the minute at (s - 10) * 1000 + 999 + 60 000.
    let edge = (s - 10) * 1000 + 999 + 60_000;
    let counts = |now| {
        sorted(b.exchange("b", &[], now, spans).expect("read"))
            .into_iter()
            .find(|(agent, ..)| agent == "bot")
            .map_or([0; 3], |(.., c)| c)
    };
    assert_eq!(counts(edge - 1)[0], 4);
    assert_eq!(counts(edge)[0], 0);
    // Past the longest span everything is forgotten, by any process.
    assert_eq!(
        sorted(b.exchange("b", &[], now + 3_700_000, spans).expect("read")),
        vec![]
    );
    assert_eq!(pg.psql("SELECT count(*) FROM arbiter_windows"), "0");
}

#[test]
fn a_database_of_the_previous_schema_is_migrated_to_the_windows() {
    let pg = Postgres::start();
    drop(open(&pg));
    pg.psql("DROP TABLE arbiter_windows; UPDATE arbiter_schema SET version = 1");
    let state = open(&pg);
    assert_eq!(
        pg.psql("SELECT version FROM arbiter_schema"),
        SCHEMA_VERSION.to_string()
    );
    let windows = state.shared_windows.expect("shared");
    windows
        .exchange("a", &[bucket("bot", b"d", 1, 1)], 1_000, [60_000; 3])
        .expect("the new table is there");
}

#[test]
fn window_counts_made_while_the_database_is_away_are_sent_when_it_is_back() {
    use arbiter::config::AgentsConfig;
    use arbiter::enrich::{Agents, Shared};
    use arbiter::time::SystemClock;
    use arbiter::{Outcome, Request};

    let mut pg = Postgres::start();
    let replica = |state: &State| {
        Agents::in_memory(AgentsConfig::default(), Arc::new(SystemClock)).with_fleet(Shared {
            spend: state.shared_spend.clone().expect("shared"),
            windows: state.shared_windows.clone().expect("shared"),
            exact_spend: false,
            feed: Arc::clone(state.feed()),
            // The feed is not followed here; only the windows are tested.
            max_staleness_ms: u64::MAX,
        })
    };
    let (sa, sb) = (open(&pg), open(&pg));
    let (a, b) = (replica(&sa), replica(&sb));
    let call: Request = serde_json::from_value(serde_json::json!({
        "action": {"kind": "tool", "name": "search.web"},
        "context": {"agent": {"id": "bot"}},
    }))
    .expect("request");
    let decide = |n: usize| {
        for _ in 0..n {
            let enriched = a.enrich(&call);
            a.observe(&call, &enriched, Outcome::Allow);
        }
    };
    decide(5);
    pg.kill();
    assert!(a.exchange().is_err(), "no database, no exchange");
    decide(2);
    pg.resume();
    let start = Instant::now();
    while let Err(e) = a.exchange() {
        assert!(start.elapsed() < Duration::from_secs(30), "{e}");
        std::thread::sleep(Duration::from_millis(50));
    }
    while b.exchange().is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "b reconnects");
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen = b.report(Some("bot"));
    assert_eq!(seen[0].calls_last_minute, 7, "{seen:?}");
    assert_eq!(seen[0].actions_last_minute.get("tool search.web"), Some(&7));
    // a counts its own once, not again through the store.
    assert_eq!(a.report(Some("bot"))[0].calls_last_minute, 7);
}
