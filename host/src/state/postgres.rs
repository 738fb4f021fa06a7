//! A state store in PostgreSQL, which a fleet of replicas shares.
//!
//! Arbiter creates and migrates its own schema at start, under an advisory
//! lock so that replicas starting together migrate once; the schema's
//! version is a row of its own, and a database migrated by a newer Arbiter
//! is refused by name rather than misread. Values are JSON (`jsonb`), as in
//! the embedded store, so both fail closed on an entry that does not decode
//! in the same way.
//!
//! What each kind needs across replicas:
//! - an approval's single use is one conditional `UPDATE`, so it holds
//!   under races;
//! - every write to suspensions, breakers, approvals and pins fires a
//!   trigger that `NOTIFY`s channel `arbiter_state`; each replica listens
//!   on a connection of its own and announces what others changed on
//!   [`State::subscribe`]. A notification is only a hint to read a row
//!   again, never trusted for its content; one that does not parse, or a
//!   key too long to carry, asks for everything to be read again. When
//!   the listening connection is lost, the [`Feed`] says since when, it is
//!   made again with backoff, and a [`StateChange::Resync`] follows;
//! - the day's spend is added to in one statement ([`SharedSpend`]), never
//!   overwritten; an exact budget holds each agent's row (`FOR UPDATE`) on
//!   a connection of its own from the policy's reading of the spend to its
//!   addition;
//! - the agents' sliding windows are merged: each process adds its counts
//!   per second under an id of its own and reads the sum of the others'
//!   ([`SharedWindows`]).
//!
//! The stores' traits are synchronous; the client is asynchronous. Each
//! call runs on this store's own runtime thread and the caller waits for
//! its answer, up to [`PgOptions::timeout`], so a caller on any thread (a
//! tokio worker included) may use it. A lost connection is made again on
//! the next call, no sooner than a backoff that doubles up to 5 s.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast;
use tokio_postgres::config::SslMode;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    AgentStore, Approval, ApprovalStore, Breaker, BucketCount, DaySpend, Feed, FlowStore, Pin,
    PinStore, SharedSpend, SharedWindows, SpendHold, State, StateChange, StoreError, StoredFlow,
    Suspension, WindowTotals, fallback,
};
use crate::decision::ApprovalStatus;
use crate::time::Clock as _;

/// The schema this binary reads and writes. Each entry of [`MIGRATIONS`]
/// moves the database one version up.
pub const SCHEMA_VERSION: i32 = 3;

/// The channel the triggers notify.
const CHANNEL: &str = "arbiter_state";

/// Every migration, oldest first: `MIGRATIONS[n]` takes version `n` to
/// `n + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    r"
    CREATE TABLE arbiter_suspensions (agent text PRIMARY KEY, value jsonb NOT NULL);
    CREATE TABLE arbiter_breakers (agent text PRIMARY KEY, value jsonb NOT NULL);
    CREATE TABLE arbiter_spend (
        agent text PRIMARY KEY,
        day bigint NOT NULL,
        cents bigint NOT NULL
    );
    CREATE TABLE arbiter_approvals (
        id text PRIMARY KEY,
        status text NOT NULL,
        value jsonb NOT NULL
    );
    CREATE TABLE arbiter_pins (
        server text NOT NULL,
        tool text NOT NULL,
        value jsonb NOT NULL,
        PRIMARY KEY (server, tool)
    );
    -- A key too long for a notification's 8000 bytes, even escaped, is
    -- left out: the listener then reads everything again.
    CREATE FUNCTION arbiter_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        k text := COALESCE(to_jsonb(NEW), to_jsonb(OLD)) ->> TG_ARGV[0];
    BEGIN
        IF octet_length(k) > 1000 THEN k := NULL; END IF;
        PERFORM pg_notify('arbiter_state',
            json_build_object('table', TG_TABLE_NAME, 'op', TG_OP, 'key', k)::text);
        RETURN NULL;
    END $$;
    CREATE TRIGGER arbiter_notify AFTER INSERT OR UPDATE OR DELETE ON arbiter_suspensions
        FOR EACH ROW EXECUTE FUNCTION arbiter_notify('agent');
    CREATE TRIGGER arbiter_notify AFTER INSERT OR UPDATE OR DELETE ON arbiter_breakers
        FOR EACH ROW EXECUTE FUNCTION arbiter_notify('agent');
    CREATE TRIGGER arbiter_notify AFTER INSERT OR UPDATE OR DELETE ON arbiter_approvals
        FOR EACH ROW EXECUTE FUNCTION arbiter_notify('id');
    CREATE TRIGGER arbiter_notify AFTER INSERT OR UPDATE OR DELETE ON arbiter_pins
        FOR EACH ROW EXECUTE FUNCTION arbiter_notify('server');
",
    r"
    -- Each process's counts per agent, counter and second; ids as bytes,
    -- since an agent id or action name may hold what text cannot (NUL).
    CREATE TABLE arbiter_windows (
        instance text NOT NULL,
        agent bytea NOT NULL,
        counter bytea NOT NULL,
        second bigint NOT NULL,
        n bigint NOT NULL,
        PRIMARY KEY (instance, agent, counter, second)
    );
    CREATE INDEX arbiter_windows_second ON arbiter_windows (second);
",
    r"
    -- Each session's flow labels, with the first result that brought
    -- each, and the fingerprints of labelled text, a row per label they
    -- carry: rows are only added or deleted, so replicas adding to one
    -- session at once both count.
    CREATE TABLE IF NOT EXISTS arbiter_flow_labels (
        key text NOT NULL,
        name text NOT NULL,
        origin jsonb NOT NULL,
        at_ms bigint NOT NULL,
        overflow boolean NOT NULL DEFAULT false,
        PRIMARY KEY (key, name)
    );
    CREATE TABLE IF NOT EXISTS arbiter_flow_prints (
        key text NOT NULL,
        print bigint NOT NULL,
        name text NOT NULL,
        PRIMARY KEY (key, print, name)
    );
",
];

/// The advisory lock a migration holds ("arbiter" in ASCII).
const MIGRATION_LOCK: i64 = 0x0061_7262_6974_6572;

/// Changes announced at once that a slow subscriber may miss.
const CHANGES: usize = 1024;

/// The first wait before connecting again, and the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// The least time a new connection is given.
const CONNECT: Duration = Duration::from_secs(5);

/// Spend holds one replica may have at once, each on a connection of
/// its own: a bound on the connections a fleet opens. More wait, within
/// the call's timeout.
const HOLDS: usize = 16;

/// Adds `$3` cents to `$1`'s spend of day `$2`, starting the day afresh
/// when the stored one is older, without overflowing; the total after.
const ADD_SPEND: &str = "
    INSERT INTO arbiter_spend AS s VALUES ($1, $2, $3)
    ON CONFLICT (agent) DO UPDATE SET
        cents = CASE
            WHEN s.day = EXCLUDED.day
                THEN s.cents + LEAST(EXCLUDED.cents, 9223372036854775807 - s.cents)
            WHEN s.day < EXCLUDED.day THEN EXCLUDED.cents
            ELSE s.cents END,
        day = GREATEST(s.day, EXCLUDED.day)
    RETURNING CASE WHEN day = $2 THEN cents ELSE 0 END";

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key-value string; `sslmode=require` for TLS.
    pub url: String,
    /// The longest a call may take before it fails. Default: 1 s.
    pub timeout: Duration,
    /// PEM certificates of CAs trusted for the server's TLS certificate,
    /// beside Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// How often the listening connection is checked. Default: 1 s.
    pub ping: Duration,
}

impl PgOptions {
    /// `url`, with the default timeout.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            timeout: Duration::from_secs(1),
            ca_file: None,
            ping: Duration::from_secs(1),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One database, reached the same way by every connection of this store.
struct Link {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    /// Where, for messages: the host, port and database, never a password.
    target: String,
    timeout: Duration,
    /// The connection for reads and writes; `None` or closed when lost.
    client: ArcSwapOption<Client>,
    /// Serializes reconnecting, and says when the next attempt may be.
    retry: tokio::sync::Mutex<Backoff>,
    /// The backend of `client`: its own notifications are not news.
    own_pid: AtomicI32,
    connected_once: AtomicBool,
    feed: Arc<Feed>,
    changes: broadcast::Sender<StateChange>,
    /// Idle connections for spend holds.
    holds: Mutex<Vec<Client>>,
    /// A place for each hold at once.
    hold_places: Arc<tokio::sync::Semaphore>,
    /// The fleet id the database held at start: a database found at the
    /// same address later with another one (an empty one restored in its
    /// place) is refused, not taken for the fleet's state.
    fleet: std::sync::OnceLock<String>,
}

#[derive(Debug)]
struct Backoff {
    next: Option<tokio::time::Instant>,
    delay: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff {
            next: None,
            delay: BACKOFF.0,
        }
    }

    fn failed(&mut self) {
        self.next = Some(tokio::time::Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(BACKOFF.1);
    }
}

/// What a connection does with the notifications it receives.
#[derive(Clone)]
struct Listener {
    changes: broadcast::Sender<StateChange>,
    link: Arc<Link>,
}

impl Link {
    /// A new connection, its messages driven on this runtime; with
    /// `listener`, its notifications announced. The driver's handle ends
    /// when the connection does.
    async fn connect(
        &self,
        listener: Option<Listener>,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), BoxError> {
        let connect = async {
            Ok::<_, BoxError>(match &self.tls {
                Some(tls) => {
                    let (client, conn) = self.config.connect(tls.clone()).await?;
                    (client, tokio::spawn(drive(conn, listener)))
                }
                None => {
                    let (client, conn) = self.config.connect(NoTls).await?;
                    (client, tokio::spawn(drive(conn, listener)))
                }
            })
        };
        // A connection costs the server a process: on a busy machine it
        // may take longer than a call should.
        let limit = self.timeout.max(CONNECT);
        tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| format!("no connection within {limit:?}"))?
    }

    /// Refuses a database whose fleet id is not the one seen at start.
    async fn same_database(&self, client: &Client) -> Result<(), BoxError> {
        let Some(expected) = self.fleet.get() else {
            return Ok(());
        };
        let found: String = client
            .query_one("SELECT fleet FROM arbiter_schema", &[])
            .await?
            .get(0);
        if &found == expected {
            Ok(())
        } else {
            Err(format!(
                "the database at {} is not the one this replica started with (fleet {expected}, found {found}); refusing it",
                self.target
            )
            .into())
        }
    }

    /// The connection for reads and writes, made again if it was lost and
    /// the backoff allows.
    async fn client(&self) -> Result<Arc<Client>, BoxError> {
        if let Some(c) = self.client.load_full().filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let mut retry = self.retry.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(c) = self.client.load_full().filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        let now = tokio::time::Instant::now();
        if let Some(next) = retry.next.filter(|n| *n > now) {
            return Err(format!(
                "the database is unreachable; the next attempt is in {} ms",
                (next - now).as_millis()
            )
            .into());
        }
        let connected = async {
            let (client, _) = self.connect(None).await?;
            self.same_database(&client).await?;
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await?
                .get(0);
            Ok::<_, BoxError>((client, pid))
        }
        .await;
        match connected {
            Ok((client, pid)) => {
                self.own_pid.store(pid, Ordering::Release);
                if self.connected_once.swap(true, Ordering::AcqRel) {
                    self.feed.reconnected();
                    tracing::info!(target = %self.target, "connected to the state database again");
                }
                *retry = Backoff::new();
                let client = Arc::new(client);
                self.client.store(Some(Arc::clone(&client)));
                Ok(client)
            }
            Err(e) => {
                retry.failed();
                Err(e)
            }
        }
    }
}

/// Drives `conn` until it ends, handing its notifications to `listener`.
async fn drive<S, T>(mut conn: Connection<S, T>, listener: Option<Listener>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(l) = &listener {
                    l.heard(n.process_id(), n.channel(), n.payload());
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "a connection to the state database ended");
                return;
            }
            None => return,
        }
    }
}

/// A trigger's notification.
#[derive(serde::Deserialize)]
struct Notice {
    table: String,
    op: String,
    key: Option<String>,
}

impl Listener {
    /// Announces the change notification `payload` stands for. Its
    /// content is never trusted: a change only makes a replica read the
    /// row again, and anything not understood makes it read everything.
    fn heard(&self, pid: i32, channel: &str, payload: &str) {
        // Writes through this store's own connection were announced when
        // they were made.
        if channel != CHANNEL || pid == self.link.own_pid.load(Ordering::Acquire) {
            return;
        }
        let change = match serde_json::from_str::<Notice>(payload) {
            Ok(Notice {
                table,
                op,
                key: Some(key),
            }) => match (table.as_str(), op.as_str()) {
                ("arbiter_suspensions", "DELETE") => StateChange::Resumed(key),
                ("arbiter_suspensions", _) => StateChange::Suspended(key),
                ("arbiter_breakers", "DELETE") => StateChange::BreakerClosed(key),
                ("arbiter_breakers", _) => StateChange::BreakerOpened(key),
                ("arbiter_approvals", _) => StateChange::Approval(key),
                ("arbiter_pins", _) => StateChange::Pins,
                _ => StateChange::Resync,
            },
            _ => {
                tracing::warn!(
                    bytes = payload.len(),
                    "a state notification was not understood; reading everything again"
                );
                StateChange::Resync
            }
        };
        // Nobody listening is fine.
        let _ = self.changes.send(change);
    }
}

/// Listens for other replicas' changes for as long as the runtime runs:
/// joined, the feed is in step once everything was read again; lost, it
/// says since when, and the connection is made again with backoff.
async fn listen(link: Arc<Link>, ping: Duration) {
    let listener = Listener {
        changes: link.changes.clone(),
        link: Arc::clone(&link),
    };
    let mut delay = BACKOFF.0;
    let mut joined_once = false;
    loop {
        let joined = async {
            let (client, driver) = link.connect(Some(listener.clone())).await?;
            link.same_database(&client).await?;
            tokio::time::timeout(
                link.timeout,
                client.batch_execute(&format!("LISTEN {CHANNEL}")),
            )
            .await
            .map_err(|_| "LISTEN timed out")??;
            Ok::<_, BoxError>((client, driver))
        }
        .await;
        match joined {
            Ok((client, mut driver)) => {
                if std::mem::replace(&mut joined_once, true) {
                    link.feed.reconnected();
                    tracing::info!(target = %link.target, "hearing the other replicas again");
                }
                link.feed.joined();
                let _ = link.changes.send(StateChange::Resync);
                delay = BACKOFF.0;
                let mut tick = tokio::time::interval(ping);
                loop {
                    tokio::select! {
                        _ = &mut driver => break,
                        _ = tick.tick() => {
                            let alive = tokio::time::timeout(link.timeout, client.simple_query("")).await;
                            if !matches!(alive, Ok(Ok(_))) {
                                break;
                            }
                        }
                    }
                }
                driver.abort();
                tracing::error!(target = %link.target, "lost the state database's change feed; reconnecting");
            }
            Err(e) => {
                tracing::debug!(target = %link.target, error = %e, "the change feed cannot connect");
            }
        }
        link.feed.lose(crate::time::SystemClock.now_ms());
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(BACKOFF.1);
    }
}

/// Runs futures on the store's runtime and waits for them, up to a
/// timeout; shared by the store and its holds.
#[derive(Clone)]
struct Exec {
    handle: tokio::runtime::Handle,
    link: Arc<Link>,
}

impl Exec {
    fn block<T: Send + 'static>(
        &self,
        what: &'static str,
        fut: impl Future<Output = Result<T, BoxError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.block_within(what, self.link.timeout, fut)
    }

    fn block_within<T: Send + 'static>(
        &self,
        what: &'static str,
        timeout: Duration,
        fut: impl Future<Output = Result<T, BoxError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            // A caller that stopped waiting drops what arrives late; a
            // hold's drop then rolls its transaction back.
            let _ = tx.send(fut.await);
        });
        let fail = |source: BoxError| StoreError::Remote {
            target: self.link.target.clone(),
            what,
            source,
        };
        match rx.recv_timeout(timeout) {
            Ok(result) => result.map_err(fail),
            Err(_) => Err(fail(format!("no answer within {timeout:?}").into())),
        }
    }
}

/// The state in a PostgreSQL database.
pub struct PgState {
    /// Dropped in the background, since a store may be dropped on a
    /// tokio thread, where a runtime may not be dropped.
    runtime: Option<tokio::runtime::Runtime>,
    exec: Exec,
    undecodable: Arc<AtomicU64>,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState")
            .field("target", &self.exec.link.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgState {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

type DbResult<T> = Result<T, tokio_postgres::Error>;

/// A stored row: its key, and its value or why it does not decode.
type Entry<T> = (String, Result<T, String>);

impl PgState {
    /// Connects, creates or migrates the schema, and starts listening for
    /// the other replicas' changes.
    ///
    /// # Errors
    /// A [`StoreError`] naming the database: the URL does not parse, the
    /// CA file cannot be read, the server cannot be reached, or its schema
    /// is newer than this binary's.
    pub fn open(options: &PgOptions) -> Result<PgState, StoreError> {
        let config: tokio_postgres::Config =
            options.url.parse().map_err(|e| StoreError::Remote {
                target: "the configured database URL".into(),
                what: "parse the URL",
                source: Box::new(e),
            })?;
        let target = describe(&config);
        let remote = |what, source: BoxError| StoreError::Remote {
            target: target.clone(),
            what,
            source,
        };
        // TLS when the URL asks for it; `prefer` (the default) stays plain
        // rather than trusting a certificate nobody checked.
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(MakeRustlsConnect::new(
                crate::tls::client_config(options.ca_file.as_deref())
                    .map_err(|e| remote("set up TLS", e.into()))?,
            )),
            _ => None,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("arbiter-postgres")
            .enable_all()
            .build()
            .map_err(|e| remote("start the client's thread", Box::new(e)))?;
        let link = Arc::new(Link {
            config,
            tls,
            target: target.clone(),
            timeout: options.timeout,
            client: ArcSwapOption::empty(),
            retry: tokio::sync::Mutex::new(Backoff::new()),
            own_pid: AtomicI32::new(0),
            connected_once: AtomicBool::new(false),
            feed: Arc::new(Feed::shared(crate::time::SystemClock.now_ms())),
            changes: broadcast::channel(CHANGES).0,
            holds: Mutex::new(Vec::new()),
            hold_places: Arc::new(tokio::sync::Semaphore::new(HOLDS)),
            fleet: std::sync::OnceLock::new(),
        });
        let store = PgState {
            exec: Exec {
                handle: runtime.handle().clone(),
                link: Arc::clone(&link),
            },
            runtime: Some(runtime),
            undecodable: Arc::new(AtomicU64::new(0)),
        };
        // Migrating may wait for another replica's migration: its own
        // deadline, longer than a call's.
        let wait = options.timeout.max(Duration::from_secs(30));
        let migrating = Arc::clone(&link);
        let migrated = store
            .exec
            .block_within("migrate the schema", wait, async move {
                let client = migrating.client().await?;
                let fleet = migrate(&client).await.map_err(|e| match e {
                    Migration::Db(e) => Box::new(e) as BoxError,
                    Migration::Newer(found) => Box::new(Newer(found)),
                })?;
                let _ = migrating.fleet.set(fleet);
                Ok(())
            });
        if let Err(StoreError::Remote { source, .. }) = &migrated
            && let Some(Newer(found)) = source.downcast_ref::<Newer>()
        {
            return Err(StoreError::SchemaNewer {
                target,
                found: *found,
                supported: SCHEMA_VERSION,
            });
        }
        migrated?;
        store
            .exec
            .handle
            .spawn(listen(Arc::clone(&link), options.ping));
        Ok(store)
    }

    /// This store behind every state trait, with its spend shared and its
    /// change feed.
    pub fn into_state(self) -> State {
        let link = Arc::clone(&self.exec.link);
        let undecodable = Arc::clone(&self.undecodable);
        let me = Arc::new(self);
        State::new(
            Arc::clone(&me) as _,
            Arc::clone(&me) as _,
            Arc::clone(&me) as _,
            Arc::clone(&me) as _,
            link.changes.clone(),
        )
        .with_undecodable(undecodable)
        .with_fleet(Arc::clone(&me) as _, me, Arc::clone(&link.feed))
    }

    /// Runs `call` with the client on this store's thread and waits for it.
    fn run<T, F>(
        &self,
        what: &'static str,
        call: impl FnOnce(Arc<Client>) -> F + Send + 'static,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = DbResult<T>> + Send + 'static,
    {
        let link = Arc::clone(&self.exec.link);
        self.exec.block(what, async move {
            let client = link.client().await?;
            Ok(call(client).await?)
        })
    }

    /// Every row of `table` (`key`, `value`): decoded, or the key of one
    /// that does not decode (counted and logged), for the caller to fail
    /// closed on.
    fn all<T: DeserializeOwned>(
        &self,
        table: &'static str,
        key: &'static str,
    ) -> Result<Vec<Entry<T>>, StoreError> {
        let sql = format!("SELECT {key}, value FROM {table}");
        let rows = self.run("read", move |c| async move { c.query(&sql, &[]).await })?;
        Ok(rows
            .iter()
            .map(|row| {
                let key: String = row.get(0);
                let Json(value): Json<serde_json::Value> = row.get(1);
                let decoded = serde_json::from_value(value).map_err(|e| {
                    self.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(table, key, error = %e, "a stored entry does not decode; failing closed on it");
                    e.to_string()
                });
                (key, decoded)
            })
            .collect())
    }

    fn encode(
        &self,
        what: &'static str,
        value: &impl Serialize,
    ) -> Result<serde_json::Value, StoreError> {
        serde_json::to_value(value).map_err(|source| StoreError::Encode {
            path: self.exec.link.target.clone().into(),
            what,
            source,
        })
    }

    /// Runs `sql` with `params`, then announces `change` to this
    /// process; the other replicas hear of it from the database.
    fn execute(
        &self,
        what: &'static str,
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
        change: Option<StateChange>,
    ) -> Result<u64, StoreError> {
        let n = self.run(what, move |c| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync))
                .collect();
            c.execute(sql, &refs).await
        })?;
        if let Some(change) = change {
            self.announce(change);
        }
        Ok(n)
    }

    fn announce(&self, change: StateChange) {
        // Nobody listening is fine.
        let _ = self.exec.link.changes.send(change);
    }
}

/// The host, port and database of `config`, for messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("postgres");
    format!("postgres://{host}:{port}/{db}")
}

enum Migration {
    Db(tokio_postgres::Error),
    Newer(i32),
}

/// The schema version a newer Arbiter left.
#[derive(Debug, thiserror::Error)]
#[error("schema version {0}")]
struct Newer(i32);

impl From<tokio_postgres::Error> for Migration {
    fn from(e: tokio_postgres::Error) -> Self {
        Migration::Db(e)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction, holding
/// the migration lock, so that replicas starting together migrate once;
/// the fleet's id, made by the first.
async fn migrate(client: &Client) -> Result<String, Migration> {
    client.batch_execute("BEGIN").await?;
    let migrated = async {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS arbiter_schema (
                    version integer NOT NULL,
                    fleet text NOT NULL DEFAULT gen_random_uuid()::text
                )",
            )
            .await?;
        let found: Option<i32> = client
            .query_opt("SELECT version FROM arbiter_schema", &[])
            .await?
            .map(|row| row.get(0));
        let from = found.unwrap_or(0);
        if from > SCHEMA_VERSION {
            return Err(Migration::Newer(from));
        }
        for step in &MIGRATIONS[usize::try_from(from).unwrap_or(0)..] {
            client.batch_execute(step).await?;
        }
        if found.is_none() {
            client
                .execute("INSERT INTO arbiter_schema VALUES ($1)", &[&SCHEMA_VERSION])
                .await?;
        } else {
            client
                .execute("UPDATE arbiter_schema SET version = $1", &[&SCHEMA_VERSION])
                .await?;
        }
        let fleet: String = client
            .query_one("SELECT fleet FROM arbiter_schema", &[])
            .await?
            .get(0);
        Ok(fleet)
    }
    .await;
    match &migrated {
        Ok(_) => client.batch_execute("COMMIT").await?,
        Err(_) => {
            let _ = client.batch_execute("ROLLBACK").await;
        }
    }
    migrated
}

fn json(value: serde_json::Value) -> Box<dyn ToSql + Send + Sync> {
    Box::new(Json(value))
}

fn text(value: &str) -> Box<dyn ToSql + Send + Sync> {
    Box::new(value.to_owned())
}

/// The stored form of a status: its wire name.
fn status(s: ApprovalStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A day number or a number of cents as the database's `bigint`.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl AgentStore for PgState {
    fn suspensions(&self) -> Result<Vec<(String, Suspension)>, StoreError> {
        Ok(self
            .all("arbiter_suspensions", "agent")?
            .into_iter()
            .map(|(agent, s)| (agent, s.unwrap_or_else(|e| fallback::suspension(&e))))
            .collect())
    }

    fn suspend(&self, agent: &str, suspension: &Suspension) -> Result<(), StoreError> {
        let value = self.encode("suspension", suspension)?;
        self.execute(
            "suspend",
            "INSERT INTO arbiter_suspensions VALUES ($1, $2)
             ON CONFLICT (agent) DO UPDATE SET value = EXCLUDED.value",
            vec![text(agent), json(value)],
            Some(StateChange::Suspended(agent.to_owned())),
        )
        .map(drop)
    }

    fn resume(&self, agent: &str) -> Result<(), StoreError> {
        self.execute(
            "resume",
            "DELETE FROM arbiter_suspensions WHERE agent = $1",
            vec![text(agent)],
            Some(StateChange::Resumed(agent.to_owned())),
        )
        .map(drop)
    }

    fn breakers(&self) -> Result<Vec<(String, Breaker)>, StoreError> {
        Ok(self
            .all("arbiter_breakers", "agent")?
            .into_iter()
            .map(|(agent, b)| (agent, b.unwrap_or_else(|_| fallback::breaker())))
            .collect())
    }

    fn open_breaker(&self, agent: &str, breaker: &Breaker) -> Result<(), StoreError> {
        let value = self.encode("breaker", breaker)?;
        self.execute(
            "open a breaker",
            "INSERT INTO arbiter_breakers VALUES ($1, $2)
             ON CONFLICT (agent) DO UPDATE SET value = EXCLUDED.value",
            vec![text(agent), json(value)],
            Some(StateChange::BreakerOpened(agent.to_owned())),
        )
        .map(drop)
    }

    fn close_breaker(&self, agent: &str) -> Result<(), StoreError> {
        self.execute(
            "close a breaker",
            "DELETE FROM arbiter_breakers WHERE agent = $1",
            vec![text(agent)],
            Some(StateChange::BreakerClosed(agent.to_owned())),
        )
        .map(drop)
    }

    fn spend(&self) -> Result<Vec<(String, DaySpend)>, StoreError> {
        let rows = self.run("read the spend", |c| async move {
            c.query("SELECT agent, day, cents FROM arbiter_spend", &[])
                .await
        })?;
        Ok(rows
            .iter()
            .map(|row| {
                let (agent, day, cents): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
                let day = u64::try_from(day).unwrap_or(0);
                let mut spend = DaySpend::default();
                spend.add(
                    day.saturating_mul(super::DAY_MS),
                    u64::try_from(cents).unwrap_or(0),
                );
                (agent, spend)
            })
            .collect())
    }

    fn save_spend(&self, spend: &[(String, DaySpend)]) -> Result<(), StoreError> {
        let mut agents = Vec::new();
        let mut days = Vec::new();
        let mut cents = Vec::new();
        for (agent, d) in spend {
            agents.push(agent.clone());
            days.push(big(d.day()));
            cents.push(big(d.cents()));
        }
        // One statement for all of them: one commit.
        self.execute(
            "save the spend",
            "INSERT INTO arbiter_spend SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[])
             ON CONFLICT (agent) DO UPDATE SET day = EXCLUDED.day, cents = EXCLUDED.cents",
            vec![Box::new(agents), Box::new(days), Box::new(cents)],
            None,
        )
        .map(drop)
    }
}

/// Adds one process's window counts, each key once per call.
const ADD_WINDOWS: &str = "INSERT INTO arbiter_windows
    SELECT $1, * FROM unnest($2::bytea[], $3::bytea[], $4::bigint[], $5::bigint[])
    ON CONFLICT (instance, agent, counter, second)
    DO UPDATE SET n = arbiter_windows.n + excluded.n";

/// The other processes' counts in three windows; a second counts while
/// its last millisecond is inside.
const READ_WINDOWS: &str = "SELECT agent, counter,
        COALESCE(sum(n) FILTER (WHERE second * 1000 + 999 > $2), 0)::bigint,
        COALESCE(sum(n) FILTER (WHERE second * 1000 + 999 > $3), 0)::bigint,
        COALESCE(sum(n) FILTER (WHERE second * 1000 + 999 > $4), 0)::bigint
    FROM arbiter_windows
    WHERE instance <> $1 AND second * 1000 + 999 > LEAST($2, $3, $4)
    GROUP BY agent, counter";

impl SharedWindows for PgState {
    fn exchange(
        &self,
        instance: &str,
        counts: &[BucketCount],
        now_ms: u64,
        spans: [u64; 3],
    ) -> Result<Vec<WindowTotals>, StoreError> {
        let instance = instance.to_owned();
        let agents: Vec<Vec<u8>> = counts
            .iter()
            .map(|c| c.agent.clone().into_bytes())
            .collect();
        let counters: Vec<Vec<u8>> = counts.iter().map(|c| c.counter.clone()).collect();
        let seconds: Vec<i64> = counts.iter().map(|c| big(c.second)).collect();
        let ns: Vec<i64> = counts.iter().map(|c| big(c.n)).collect();
        let cuts = spans.map(|s| big(now_ms.saturating_sub(s)));
        let oldest = big(now_ms.saturating_sub(spans.into_iter().max().unwrap_or(0)) / 1000);
        let rows = self.run("exchange the windows", move |c| async move {
            if !agents.is_empty() {
                c.execute(ADD_WINDOWS, &[&instance, &agents, &counters, &seconds, &ns])
                    .await?;
            }
            // Any process forgets for all: a stopped one's rows age out too.
            c.execute("DELETE FROM arbiter_windows WHERE second < $1", &[&oldest])
                .await?;
            c.query(READ_WINDOWS, &[&instance, &cuts[0], &cuts[1], &cuts[2]])
                .await
        })?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let agent = String::from_utf8(row.get(0)).ok()?;
                let count = |i| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
                Some(WindowTotals {
                    agent,
                    counter: row.get(1),
                    counts: [count(2), count(3), count(4)],
                })
            })
            .collect())
    }
}

impl SharedSpend for PgState {
    fn today(&self, agent: &str, now_ms: u64) -> Result<u64, StoreError> {
        let (agent, day) = (agent.to_owned(), big(now_ms / super::DAY_MS));
        let row = self.run("read the spend", move |c| async move {
            c.query_opt(
                "SELECT CASE WHEN day = $2 THEN cents ELSE 0 END FROM arbiter_spend WHERE agent = $1",
                &[&agent, &day],
            )
            .await
        })?;
        Ok(row.map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    fn add(&self, agent: &str, now_ms: u64, cents: u64) -> Result<u64, StoreError> {
        let (agent, day, cents) = (agent.to_owned(), big(now_ms / super::DAY_MS), big(cents));
        let row = self.run("add to the spend", move |c| async move {
            c.query_one(ADD_SPEND, &[&agent, &day, &cents]).await
        })?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn hold(&self, agent: &str, now_ms: u64) -> Result<Box<dyn SpendHold>, StoreError> {
        let (agent, day) = (agent.to_owned(), big(now_ms / super::DAY_MS));
        let exec = self.exec.clone();
        let hold = self.exec.block("hold the spend", async move {
            let link = &exec.link;
            let place = Arc::clone(&link.hold_places).acquire_owned().await?;
            let idle = link
                .holds
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .filter(|c| !c.is_closed());
            let client = match idle {
                Some(c) => c,
                None => {
                    let (c, _) = link.connect(None).await?;
                    link.same_database(&c).await?;
                    // Waiting for another replica's hold ends with the
                    // caller's patience.
                    c.batch_execute(&format!("SET lock_timeout = {}", link.timeout.as_millis()))
                        .await?;
                    c
                }
            };
            // From here the hold owns the connection: dropped on any path,
            // it rolls back.
            let mut hold = PgHold {
                exec: exec.clone(),
                _place: place,
                client: Some(client),
                agent,
                day,
                today: 0,
            };
            let c = hold.client.as_ref().ok_or("no connection")?;
            c.batch_execute("BEGIN").await?;
            c.execute(
                "INSERT INTO arbiter_spend VALUES ($1, $2, 0) ON CONFLICT (agent) DO NOTHING",
                &[&hold.agent, &day],
            )
            .await?;
            let row = c
                .query_one(
                    "SELECT CASE WHEN day = $2 THEN cents ELSE 0 END FROM arbiter_spend
                     WHERE agent = $1 FOR UPDATE",
                    &[&hold.agent, &day],
                )
                .await?;
            hold.today = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            Ok(hold)
        })?;
        Ok(Box::new(hold))
    }
}

/// One agent's spend row, locked by a transaction on a connection of its
/// own until committed or dropped.
struct PgHold {
    exec: Exec,
    /// Given back when the hold ends.
    _place: tokio::sync::OwnedSemaphorePermit,
    client: Option<Client>,
    agent: String,
    day: i64,
    today: u64,
}

impl std::fmt::Debug for PgHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgHold")
            .field("agent", &self.agent)
            .field("today", &self.today)
            .finish_non_exhaustive()
    }
}

/// Gives a connection whose transaction ended back to the idle ones.
fn give_back(link: &Link, client: Client) {
    let mut idle = link.holds.lock().unwrap_or_else(PoisonError::into_inner);
    if idle.len() < HOLDS && !client.is_closed() {
        idle.push(client);
    }
}

impl SpendHold for PgHold {
    fn today(&self) -> u64 {
        self.today
    }

    fn commit(mut self: Box<Self>, cents: u64) -> Result<u64, StoreError> {
        let Some(client) = self.client.take() else {
            return Err(StoreError::Remote {
                target: self.exec.link.target.clone(),
                what: "add to the spend",
                source: "the hold has no connection".into(),
            });
        };
        let (agent, day, cents) = (self.agent.clone(), self.day, big(cents));
        let link = Arc::clone(&self.exec.link);
        self.exec.block("add to the spend", async move {
            let added = async {
                let row = client.query_one(ADD_SPEND, &[&agent, &day, &cents]).await?;
                client.batch_execute("COMMIT").await?;
                Ok::<_, tokio_postgres::Error>(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
            }
            .await;
            match added {
                Ok(total) => {
                    give_back(&link, client);
                    Ok(total)
                }
                // The connection is dropped with its transaction: the
                // server rolls it back.
                Err(e) => Err(Box::new(e) as BoxError),
            }
        })
    }
}

impl Drop for PgHold {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            let link = Arc::clone(&self.exec.link);
            self.exec.handle.spawn(async move {
                if client.batch_execute("ROLLBACK").await.is_ok() {
                    give_back(&link, client);
                }
            });
        }
    }
}

impl ApprovalStore for PgState {
    fn approvals(&self) -> Result<Vec<Approval>, StoreError> {
        Ok(self
            .all::<Approval>("arbiter_approvals", "id")?
            .into_iter()
            .filter_map(|(_, a)| a.ok())
            .collect())
    }

    fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        let key = id.to_owned();
        let row = self.run("read an approval", move |c| async move {
            c.query_opt("SELECT value FROM arbiter_approvals WHERE id = $1", &[&key])
                .await
        })?;
        Ok(row.and_then(|row| {
            let Json(value): Json<serde_json::Value> = row.get(0);
            serde_json::from_value(value)
                .inspect_err(|e| {
                    self.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(approval = id, error = %e, "a stored approval does not decode; it allows nothing");
                })
                .ok()
        }))
    }

    fn create(&self, approval: &Approval) -> Result<(), StoreError> {
        let value = self.encode("approval", approval)?;
        self.execute(
            "create an approval",
            "INSERT INTO arbiter_approvals VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, value = EXCLUDED.value",
            vec![
                text(&approval.id),
                Box::new(status(approval.status)),
                json(value),
            ],
            Some(StateChange::Approval(approval.id.clone())),
        )
        .map(drop)
    }

    fn transition(&self, from: ApprovalStatus, next: &Approval) -> Result<bool, StoreError> {
        let value = self.encode("approval", next)?;
        // The condition and the write are one statement: two replicas
        // cannot both see `from`.
        let changed = self.execute(
            "change an approval",
            "UPDATE arbiter_approvals SET status = $3, value = $4 WHERE id = $1 AND status = $2",
            vec![
                text(&next.id),
                Box::new(status(from)),
                Box::new(status(next.status)),
                json(value),
            ],
            None,
        )? == 1;
        if changed {
            self.announce(StateChange::Approval(next.id.clone()));
        }
        Ok(changed)
    }

    fn remove(&self, id: &str) -> Result<(), StoreError> {
        self.execute(
            "remove an approval",
            "DELETE FROM arbiter_approvals WHERE id = $1",
            vec![text(id)],
            Some(StateChange::Approval(id.to_owned())),
        )
        .map(drop)
    }
}

impl PinStore for PgState {
    fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        let sql = "SELECT server, tool, value FROM arbiter_pins";
        let rows = self.run("read", move |c| async move { c.query(sql, &[]).await })?;
        Ok(rows
            .iter()
            .map(|row| {
                let (server, tool): (String, String) = (row.get(0), row.get(1));
                let Json(value): Json<serde_json::Value> = row.get(2);
                serde_json::from_value(value).unwrap_or_else(|e| {
                    self.undecodable.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(server, tool, error = %e, "a stored pin does not decode; failing closed on it");
                    fallback::pin(&server, &tool, &e.to_string())
                })
            })
            .collect())
    }

    fn save_pins(&self, pins: &[Pin]) -> Result<(), StoreError> {
        let mut servers = Vec::new();
        let mut tools = Vec::new();
        let mut values = Vec::new();
        for p in pins {
            servers.push(p.server.clone());
            tools.push(p.tool.clone());
            values.push(Json(self.encode("pin", p)?));
        }
        self.execute(
            "save pins",
            "INSERT INTO arbiter_pins SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[])
             ON CONFLICT (server, tool) DO UPDATE SET value = EXCLUDED.value",
            vec![Box::new(servers), Box::new(tools), Box::new(values)],
            Some(StateChange::Pins),
        )
        .map(drop)
    }
}

impl FlowStore for PgState {
    fn flows(&self) -> Result<Vec<(String, StoredFlow)>, StoreError> {
        self.read_flows(None)
    }

    fn flow(&self, key: &str) -> Result<Option<StoredFlow>, StoreError> {
        Ok(self
            .read_flows(Some(key.to_owned()))?
            .into_iter()
            .next()
            .map(|(_, f)| f))
    }

    fn add_flow(&self, key: &str, added: &StoredFlow) -> Result<(), StoreError> {
        for (i, l) in added.labels.iter().enumerate() {
            let origin = serde_json::to_value(&l.origin).unwrap_or_default();
            self.execute(
                "add a session's label",
                "INSERT INTO arbiter_flow_labels (key, name, origin, at_ms, overflow)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (key, name) DO UPDATE
                 SET overflow = arbiter_flow_labels.overflow OR EXCLUDED.overflow",
                vec![
                    text(key),
                    text(&l.name),
                    json(origin),
                    Box::new(i64::try_from(l.origin.at_ms).unwrap_or(i64::MAX)),
                    Box::new(added.overflow & (1 << i) != 0),
                ],
                None,
            )?;
        }
        let (mut prints, mut names) = (Vec::new(), Vec::new());
        for [print, mask] in &added.prints {
            for (i, l) in added.labels.iter().enumerate() {
                if mask & (1 << i) != 0 {
                    // The bits as they are: `bigint` is signed.
                    prints.push(i64::from_ne_bytes(print.to_ne_bytes()));
                    names.push(l.name.clone());
                }
            }
        }
        if !prints.is_empty() {
            self.execute(
                "add a session's prints",
                "INSERT INTO arbiter_flow_prints (key, print, name)
                 SELECT $1, p, n FROM unnest($2::bigint[], $3::text[]) AS t(p, n)
                 ON CONFLICT DO NOTHING",
                vec![text(key), Box::new(prints), Box::new(names)],
                None,
            )?;
        }
        Ok(())
    }

    fn forget_flow(&self, key: &str, names: &[String]) -> Result<(), StoreError> {
        for sql in [
            "DELETE FROM arbiter_flow_prints WHERE key = $1 AND name = ANY($2)",
            "DELETE FROM arbiter_flow_labels WHERE key = $1 AND name = ANY($2)",
        ] {
            self.execute(
                "forget a session's labels",
                sql,
                vec![text(key), Box::new(names.to_vec())],
                None,
            )?;
        }
        Ok(())
    }
}

impl PgState {
    /// Every session's flow, or session `key`'s.
    fn read_flows(&self, key: Option<String>) -> Result<Vec<(String, StoredFlow)>, StoreError> {
        let labels = self.run("read flow labels", {
            let key = key.clone();
            move |c| async move {
                c.query(
                    "SELECT key, name, origin, overflow FROM arbiter_flow_labels
                     WHERE $1::text IS NULL OR key = $1 ORDER BY key, at_ms, name",
                    &[&key],
                )
                .await
            }
        })?;
        let prints = self.run("read flow prints", move |c| async move {
            c.query(
                "SELECT key, print, name FROM arbiter_flow_prints WHERE $1::text IS NULL OR key = $1",
                &[&key],
            )
            .await
        })?;
        let mut out: BTreeMap<String, StoredFlow> = BTreeMap::new();
        for row in &labels {
            let (key, name, overflow): (String, String, bool) =
                (row.get(0), row.get(1), row.get(3));
            let Json(origin): Json<serde_json::Value> = row.get(2);
            let origin = serde_json::from_value(origin).map_err(|e| StoreError::Remote {
                target: "`state.url`".into(),
                what: "decode a session's flow",
                source: Box::new(e),
            })?;
            let flow = out.entry(key).or_default();
            if overflow {
                flow.overflow |= 1 << flow.labels.len();
            }
            flow.labels.push(crate::flow::Label { name, origin });
        }
        for row in &prints {
            let (key, print, name): (String, i64, String) = (row.get(0), row.get(1), row.get(2));
            let Some(flow) = out.get_mut(&key) else {
                continue;
            };
            let Some(i) = flow.labels.iter().position(|l| l.name == name) else {
                continue;
            };
            flow.prints
                .push([u64::from_ne_bytes(print.to_ne_bytes()), 1 << i]);
        }
        Ok(out.into_iter().collect())
    }
}
