//! A state store in PostgreSQL, for a fleet of replicas that share it.
//!
//! Arbiter creates and migrates its own schema at start, under an advisory
//! lock so that replicas starting together migrate once; the schema's
//! version is a row of its own, and a database migrated by a newer Arbiter
//! is refused by name rather than misread. Values are JSON (`jsonb`), as in
//! the embedded store, so both fail closed on an entry that does not decode
//! in the same way. An approval's single use is one conditional `UPDATE`,
//! so it holds across replicas under races.
//!
//! Not yet selectable in the configuration: a replica must also hear the
//! changes the others make (suspensions in force everywhere within 100 ms)
//! before a fleet may share this store.
//!
//! The stores' traits are synchronous; the client is asynchronous. Each
//! call runs on this store's own runtime thread and the caller waits for
//! its answer, up to [`PgOptions::timeout`], so a caller on any thread
//! (a tokio worker included) may use it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{Client, NoTls};

use super::{
    AgentStore, Approval, ApprovalStore, Breaker, DaySpend, Pin, PinStore, State, StateChange,
    StoreError, Suspension, fallback,
};
use crate::decision::ApprovalStatus;

/// The schema this binary reads and writes. Each entry of [`MIGRATIONS`]
/// moves the database one version up.
pub const SCHEMA_VERSION: i32 = 1;

/// Every migration, oldest first: `MIGRATIONS[n]` takes version `n` to
/// `n + 1`.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = ["
    CREATE TABLE arbiter_suspensions (agent text PRIMARY KEY, value jsonb NOT NULL);
    CREATE TABLE arbiter_breakers (agent text PRIMARY KEY, value jsonb NOT NULL);
    CREATE TABLE arbiter_spend (agent text PRIMARY KEY, value jsonb NOT NULL);
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
"];

/// The advisory lock a migration holds ("arbiter" in ASCII).
const MIGRATION_LOCK: i64 = 0x0061_7262_6974_6572;

/// Changes announced at once that a slow subscriber may miss.
const CHANGES: usize = 1024;

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key-value string.
    pub url: String,
    /// The longest a call may take before it fails. Default: 5 s.
    pub timeout: Duration,
}

impl PgOptions {
    /// `url`, with the default timeout.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The state in a PostgreSQL database.
pub struct PgState {
    runtime: tokio::runtime::Runtime,
    client: Arc<Client>,
    /// Where, for messages: the host, port and database, never a password.
    target: String,
    timeout: Duration,
    changes: broadcast::Sender<StateChange>,
    undecodable: Arc<AtomicU64>,
}

impl std::fmt::Debug for PgState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgState")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

type DbResult<T> = Result<T, tokio_postgres::Error>;

/// A stored row: its key, and its value or why it does not decode.
type Entry<T> = (String, Result<T, String>);

impl PgState {
    /// Connects, and creates or migrates the schema.
    ///
    /// # Errors
    /// A [`StoreError`] naming the database: the URL does not parse, the
    /// server cannot be reached, or its schema is newer than this binary's.
    pub fn open(options: &PgOptions) -> Result<PgState, StoreError> {
        let config: tokio_postgres::Config =
            options.url.parse().map_err(|e| StoreError::Remote {
                target: "the configured database URL".into(),
                what: "parse the URL",
                source: Box::new(e),
            })?;
        let target = describe(&config);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("arbiter-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Remote {
                target: target.clone(),
                what: "start the client's thread",
                source: Box::new(e),
            })?;
        let client = {
            let fail = |what| {
                let target = target.clone();
                move |e: tokio_postgres::Error| StoreError::Remote {
                    target,
                    what,
                    source: Box::new(e),
                }
            };
            let (client, connection) = runtime
                .block_on(async {
                    tokio::time::timeout(options.timeout, config.connect(NoTls)).await
                })
                .map_err(|_| StoreError::Remote {
                    target: target.clone(),
                    what: "connect",
                    source: "timed out".into(),
                })?
                .map_err(fail("connect"))?;
            runtime.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::error!(error = %e, "the state database connection ended");
                }
            });
            let mut client = client;
            runtime
                .block_on(migrate(&mut client))
                .map_err(|e| match e {
                    Migration::Db(e) => fail("migrate the schema")(e),
                    Migration::Newer(found) => StoreError::SchemaNewer {
                        target: target.clone(),
                        found,
                        supported: SCHEMA_VERSION,
                    },
                })?;
            Arc::new(client)
        };
        Ok(PgState {
            runtime,
            client,
            target,
            timeout: options.timeout,
            changes: broadcast::channel(CHANGES).0,
            undecodable: Arc::new(AtomicU64::new(0)),
        })
    }

    /// This store behind every state trait.
    pub fn into_state(self) -> State {
        let (changes, undecodable) = (self.changes.clone(), Arc::clone(&self.undecodable));
        State::of(self, changes).with_undecodable(undecodable)
    }

    /// Runs `call` with the client on this store's thread and waits for it.
    fn run<T, F>(
        &self,
        what: &'static str,
        call: impl FnOnce(Arc<Client>) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = DbResult<T>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = call(Arc::clone(&self.client));
        self.runtime.spawn(async move {
            let _ = tx.send(fut.await);
        });
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Remote {
            target: self.target.clone(),
            what,
            source,
        };
        match rx.recv_timeout(self.timeout) {
            Ok(result) => result.map_err(|e| fail(Box::new(e))),
            Err(_) => Err(fail(format!("no answer within {:?}", self.timeout).into())),
        }
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
            path: self.target.clone().into(),
            what,
            source,
        })
    }

    /// Runs `sql` with `params`, then announces `change`.
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
            // Nobody listening is fine.
            let _ = self.changes.send(change);
        }
        Ok(n)
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

impl From<tokio_postgres::Error> for Migration {
    fn from(e: tokio_postgres::Error) -> Self {
        Migration::Db(e)
    }
}

/// Brings the schema to [`SCHEMA_VERSION`] in one transaction, holding
/// the migration lock, so that replicas starting together migrate once.
async fn migrate(client: &mut Client) -> Result<(), Migration> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS arbiter_schema (version integer NOT NULL)")
        .await?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM arbiter_schema", &[])
        .await?
        .map(|row| row.get(0));
    let from = found.unwrap_or(0);
    if from > SCHEMA_VERSION {
        return Err(Migration::Newer(from));
    }
    for step in &MIGRATIONS[usize::try_from(from).unwrap_or(0)..] {
        tx.batch_execute(step).await?;
    }
    if found.is_none() {
        tx.execute("INSERT INTO arbiter_schema VALUES ($1)", &[&SCHEMA_VERSION])
            .await?;
    } else {
        tx.execute("UPDATE arbiter_schema SET version = $1", &[&SCHEMA_VERSION])
            .await?;
    }
    tx.commit().await?;
    Ok(())
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
        Ok(self
            .all("arbiter_spend", "agent")?
            .into_iter()
            .map(|(agent, d)| (agent, d.unwrap_or_else(|_| fallback::spend())))
            .collect())
    }

    fn save_spend(&self, spend: &[(String, DaySpend)]) -> Result<(), StoreError> {
        let (agents, values): (Vec<String>, Vec<Json<serde_json::Value>>) = spend
            .iter()
            .map(|(agent, day)| Ok((agent.clone(), Json(self.encode("spend", day)?))))
            .collect::<Result<Vec<_>, StoreError>>()?
            .into_iter()
            .unzip();
        // One statement for all of them: one commit.
        self.execute(
            "save the spend",
            "INSERT INTO arbiter_spend SELECT * FROM unnest($1::text[], $2::jsonb[])
             ON CONFLICT (agent) DO UPDATE SET value = EXCLUDED.value",
            vec![Box::new(agents), Box::new(values)],
            None,
        )
        .map(drop)
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
            let _ = self.changes.send(StateChange::Approval(next.id.clone()));
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
