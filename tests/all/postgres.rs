//! The PostgreSQL state store against a real server started for each test:
//! it passes the backends' conformance suite, an approval is used once
//! when replicas race for it, the schema is migrated once by replicas that
//! start together, a database migrated by a newer Arbiter is refused, and
//! a database that is away is an error that names it, never a hang and
//! never the password.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use arbiter::decision::ApprovalStatus;
use arbiter::state::conformance::{self, approval};
use arbiter::state::postgres::{PgOptions, PgState, SCHEMA_VERSION};
use arbiter::state::{State, StoreError};
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
