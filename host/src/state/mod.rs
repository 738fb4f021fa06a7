//! Durable state: what makes a decision depend on more than its input,
//! kept across restarts. Each kind is reached through a trait named for
//! what it holds, so the stages never see how or where it is kept:
//!
//! | trait | holds | used by |
//! |---|---|---|
//! | [`AgentStore`] | suspensions, open circuit breakers, the day's spend | [`crate::enrich`] |
//! | [`ApprovalStore`] | approvals, with an atomic single use | [`crate::approvals`] |
//! | [`PinStore`] | pinned MCP tool definitions | [`crate::enrich::pins`] |
//! | [`FlowStore`] | sessions' flow labels and fingerprints | [`crate::enrich::flow`] |
//!
//! [`redb`] is the default implementation: an embedded database in the
//! state directory, for one node. [`memory`] keeps everything in memory,
//! for embedders and tests. Both pass one conformance suite (this module's
//! tests), which a new backend runs too. A store shared by several replicas (a
//! fleet, [`postgres`]) implements the same traits in a module of its own,
//! and [`from_config`] is the one place that chooses: its atomic [`ApprovalStore::transition`]
//! keeps single use fleet-wide, and [`State::subscribe`] carries the changes
//! other replicas make.

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod memory;
pub mod postgres;
pub mod redb;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decision::ApprovalStatus;
pub use crate::flow::StoredFlow;

/// The default state directory: `$ARBITER_STATE_DIR`,
/// `$XDG_STATE_HOME/arbiter/state` or `~/.local/state/arbiter/state`.
pub fn default_dir() -> Option<PathBuf> {
    crate::paths::default_dir(
        "ARBITER_STATE_DIR",
        "XDG_STATE_HOME",
        ".local/state",
        "state",
    )
}

/// The state directory `config` names (relative to `base`, the
/// configuration file's directory), else [`default_dir`].
pub fn resolve_dir(config: &crate::config::StateConfig, base: &Path) -> Option<PathBuf> {
    config
        .dir
        .as_ref()
        .map(|d| base.join(d))
        .or_else(default_dir)
}

/// The state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No state directory is configured and none can be derived.
    #[error("no state directory: set [state] dir, ARBITER_STATE_DIR or HOME")]
    NoDirectory,
    /// The state directory cannot be created.
    #[error("state directory `{}` cannot be created", path.display())]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database refused an operation.
    #[error("state store `{}`: {what}", path.display())]
    Database {
        /// The database.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The database's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database server refused an operation or could not be reached.
    #[error("state database `{target}`: {what}")]
    Remote {
        /// The server and database, without credentials.
        target: String,
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database was migrated by a newer Arbiter.
    #[error(
        "state database `{target}` has schema version {found}, newer than this Arbiter's {supported}: upgrade Arbiter"
    )]
    SchemaNewer {
        /// The server and database.
        target: String,
        /// The version found.
        found: i32,
        /// The newest this binary knows.
        supported: i32,
    },
    /// A value could not be encoded.
    #[error("state store `{}`: a {what} does not encode", path.display())]
    Encode {
        /// The database.
        path: PathBuf,
        /// What kind of value.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Suspensions, open circuit breakers and the day's spend, by agent id.
pub trait AgentStore: Send + Sync + fmt::Debug {
    /// Every suspension.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn suspensions(&self) -> Result<Vec<(String, Suspension)>, StoreError>;
    /// Suspends `agent`, committed before it returns.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn suspend(&self, agent: &str, suspension: &Suspension) -> Result<(), StoreError>;
    /// Lifts `agent`'s suspension, committed before it returns.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn resume(&self, agent: &str) -> Result<(), StoreError>;
    /// Every open breaker.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn breakers(&self) -> Result<Vec<(String, Breaker)>, StoreError>;
    /// Opens `agent`'s breaker.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn open_breaker(&self, agent: &str, breaker: &Breaker) -> Result<(), StoreError>;
    /// Closes `agent`'s breaker.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn close_breaker(&self, agent: &str) -> Result<(), StoreError>;
    /// Every agent's spend of its last day.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn spend(&self) -> Result<Vec<(String, DaySpend)>, StoreError>;
    /// Sets the spend of each agent of `spend`, in one commit.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn save_spend(&self, spend: &[(String, DaySpend)]) -> Result<(), StoreError>;
}

/// Approvals, by id.
pub trait ApprovalStore: Send + Sync + fmt::Debug {
    /// Every approval.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn approvals(&self) -> Result<Vec<Approval>, StoreError>;
    /// One approval, read from the store now (for a store other replicas
    /// share, fresher than any copy in memory).
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn approval(&self, id: &str) -> Result<Option<Approval>, StoreError> {
        Ok(self.approvals()?.into_iter().find(|a| a.id == id))
    }
    /// Stores a new approval, committed before it returns.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn create(&self, approval: &Approval) -> Result<(), StoreError>;
    /// Replaces approval `next.id` with `next` only if its stored status is
    /// still `from`, in one atomic step; `false` when it is not (another
    /// caller, or replica, changed it first). A granted approval is used
    /// once because of this.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn transition(&self, from: ApprovalStatus, next: &Approval) -> Result<bool, StoreError>;
    /// Forgets approval `id`.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn remove(&self, id: &str) -> Result<(), StoreError>;
}

/// Pinned MCP tool definitions, by server and tool.
pub trait PinStore: Send + Sync + fmt::Debug {
    /// Every pin.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn pins(&self) -> Result<Vec<Pin>, StoreError>;
    /// Stores every pin of `pins` (new or changed), in one commit.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn save_pins(&self, pins: &[Pin]) -> Result<(), StoreError>;
}

/// Each session's flow: the labels its results brought and their
/// fingerprints ([`crate::enrich::flow`]), by session key.
pub trait FlowStore: Send + Sync + fmt::Debug {
    /// Every session's flow.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn flows(&self) -> Result<Vec<(String, StoredFlow)>, StoreError>;
    /// One session's flow, read from the store now.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn flow(&self, key: &str) -> Result<Option<StoredFlow>, StoreError>;
    /// Adds `added` to session `key`'s flow in one atomic step: labels it
    /// lacks (a label held keeps its first origin), prints, overflow. Two
    /// replicas adding at once both count.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing was added.
    fn add_flow(&self, key: &str, added: &StoredFlow) -> Result<(), StoreError>;
    /// Forgets labels `names` of session `key`, with their prints; the
    /// session, once it holds none.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing changed.
    fn forget_flow(&self, key: &str, names: &[String]) -> Result<(), StoreError>;
}

/// `stored` with `added` merged in, for a store that keeps each session's
/// flow as one document.
pub fn merged_flow(stored: Option<StoredFlow>, added: &StoredFlow) -> StoredFlow {
    let mut flow = crate::flow::SessionFlow::from_stored(stored.unwrap_or_default());
    flow.merge(&crate::flow::SessionFlow::from_stored(added.clone()));
    flow.to_stored()
}

/// `stored` without labels `names`; `None` once it holds no label.
pub fn forgotten_flow(stored: StoredFlow, names: &[String]) -> Option<StoredFlow> {
    let mut flow = crate::flow::SessionFlow::from_stored(stored);
    flow.forget(names);
    (!flow.is_empty()).then(|| flow.to_stored())
}

/// The day's spend in a store several replicas share: only ever added to,
/// in one statement, so that no replica's spend overwrites another's.
pub trait SharedSpend: Send + Sync + fmt::Debug {
    /// `agent`'s spend on the UTC day of `now_ms`, in cents, fleet-wide.
    ///
    /// # Errors
    /// A [`StoreError`] when the store cannot be read.
    fn today(&self, agent: &str, now_ms: u64) -> Result<u64, StoreError>;
    /// Adds `cents` to `agent`'s spend of the day of `now_ms`, committed
    /// before it returns; the day's total after it.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing was added.
    fn add(&self, agent: &str, now_ms: u64, cents: u64) -> Result<u64, StoreError>;
    /// Takes `agent`'s spend for this caller alone, fleet-wide, until the
    /// hold is committed or dropped: the spending decisions of one agent
    /// then run one at a time, and a budget holds exactly.
    ///
    /// # Errors
    /// A [`StoreError`] when the hold cannot be taken.
    fn hold(&self, agent: &str, now_ms: u64) -> Result<Box<dyn SpendHold>, StoreError>;
}

/// Counts of what agents did, in one-second buckets, that replicas add to
/// and read each other's from: the fleet-wide part of the sliding windows.
pub trait SharedWindows: Send + Sync + fmt::Debug {
    /// Adds `counts` under `instance` (this process), forgets buckets that
    /// left the longest of `spans`, and returns what every other instance
    /// counted per agent and counter in the windows of `spans` ms ending at
    /// `now_ms`. A bucket counts while any part of its second is inside a
    /// window, so a remote event is counted up to 999 ms longer than exact,
    /// never shorter.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing was added.
    fn exchange(
        &self,
        instance: &str,
        counts: &[BucketCount],
        now_ms: u64,
        spans: [u64; 3],
    ) -> Result<Vec<WindowTotals>, StoreError>;
}

/// Events of one counter of one agent in one second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketCount {
    /// The agent's id.
    pub agent: String,
    /// Which counter, as bytes the store keeps as they are.
    pub counter: Vec<u8>,
    /// Seconds since the epoch.
    pub second: u64,
    /// Events in it.
    pub n: u64,
}

/// What the other instances counted for one counter of one agent, in each
/// window of [`SharedWindows::exchange`]'s `spans`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowTotals {
    /// The agent's id.
    pub agent: String,
    /// Which counter.
    pub counter: Vec<u8>,
    /// Events in each window.
    pub counts: [u64; 3],
}

/// One agent's spend, held by one decision ([`SharedSpend::hold`]);
/// dropped without [`SpendHold::commit`], nothing is added.
pub trait SpendHold: Send + fmt::Debug {
    /// The day's spend when the hold was taken.
    fn today(&self) -> u64;
    /// Adds `cents` and lets the hold go; the day's total after it.
    ///
    /// # Errors
    /// A [`StoreError`]; then nothing was added.
    fn commit(self: Box<Self>, cents: u64) -> Result<u64, StoreError>;
}

/// Whether a replica hears every change the others make to a shared
/// store. A store nobody else writes (embedded, in memory) is always in
/// step; a shared one is in step from the moment its change feed is
/// listening and everything it may have missed has been read again.
#[derive(Debug, Default)]
pub struct Feed {
    shared: bool,
    /// Mirrors `step.lost_since_ms` for the decisions' lock-free read.
    lost_since_ms: std::sync::atomic::AtomicU64,
    step: std::sync::Mutex<Step>,
    reconnects: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Default)]
struct Step {
    /// Bumped each time the feed is joined or lost.
    epoch: u64,
    joined: bool,
    lost_since_ms: u64,
}

impl Feed {
    /// The feed of a store other replicas write too: lost (since
    /// `now_ms`) until it is first joined and caught up.
    pub fn shared(now_ms: u64) -> Self {
        Feed {
            shared: true,
            lost_since_ms: now_ms.max(1).into(),
            step: std::sync::Mutex::new(Step {
                epoch: 0,
                joined: false,
                lost_since_ms: now_ms.max(1),
            }),
            reconnects: 0.into(),
        }
    }

    /// Whether other replicas write the store too.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Since when (ms since the epoch) changes made elsewhere may have
    /// been missed; `None` while every change is heard.
    pub fn lost_since(&self) -> Option<u64> {
        let t = self
            .lost_since_ms
            .load(std::sync::atomic::Ordering::Acquire);
        (t != 0).then_some(t)
    }

    /// The feed is listening again; returns its epoch, which a reader
    /// passes to [`Feed::caught_up`] once it has read everything again.
    pub fn joined(&self) -> u64 {
        let mut step = self.step();
        step.epoch += 1;
        step.joined = true;
        step.epoch
    }

    /// The feed was lost at `now_ms` (kept if it was lost already).
    pub fn lose(&self, now_ms: u64) {
        self.step().joined = false;
        self.missed(now_ms);
    }

    /// The current epoch, read before reading everything again.
    pub fn epoch(&self) -> u64 {
        self.step().epoch
    }

    /// A reader could not apply a change it heard: behind (since `now_ms`)
    /// until it has read everything again and calls [`Feed::caught_up`]
    /// with an epoch read after this.
    pub fn missed(&self, now_ms: u64) {
        let mut step = self.step();
        step.epoch += 1;
        if step.lost_since_ms == 0 {
            step.lost_since_ms = now_ms.max(1);
            self.lost_since_ms
                .store(step.lost_since_ms, std::sync::atomic::Ordering::Release);
        }
    }

    /// Everything was read again after `epoch` began: in step, unless the
    /// feed was lost or joined anew meanwhile.
    pub fn caught_up(&self, epoch: u64) {
        let mut step = self.step();
        if step.joined && step.epoch == epoch {
            step.lost_since_ms = 0;
            self.lost_since_ms
                .store(0, std::sync::atomic::Ordering::Release);
        }
    }

    /// Connections to the store made again after one was lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a connection made again.
    pub fn reconnected(&self) {
        self.reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn step(&self) -> std::sync::MutexGuard<'_, Step> {
        self.step
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A change to the state, as every holder of a [`State`] hears of it.
#[derive(Debug, Clone, PartialEq)]
pub enum StateChange {
    /// An agent was suspended.
    Suspended(String),
    /// An agent was resumed.
    Resumed(String),
    /// An agent's breaker opened.
    BreakerOpened(String),
    /// An agent's breaker closed.
    BreakerClosed(String),
    /// An approval changed (created, answered, used, expired, removed).
    Approval(String),
    /// Pins changed.
    Pins,
    /// Changes may have been missed (the feed was lost, or a receiver
    /// fell behind): read everything again.
    Resync,
}

/// The state of one Arbiter: each kind behind its trait, and the changes
/// made to it.
#[derive(Clone)]
pub struct State {
    /// Suspensions, breakers, spend.
    pub agents: Arc<dyn AgentStore>,
    /// Approvals.
    pub approvals: Arc<dyn ApprovalStore>,
    /// MCP tool pins.
    pub pins: Arc<dyn PinStore>,
    /// Sessions' flow labels.
    pub flows: Arc<dyn FlowStore>,
    /// The day's spend added to in place, when replicas share the store.
    pub shared_spend: Option<Arc<dyn SharedSpend>>,
    /// The agents' windows merged across replicas, when they share the
    /// store.
    pub shared_windows: Option<Arc<dyn SharedWindows>>,
    changes: tokio::sync::broadcast::Sender<StateChange>,
    undecodable: Arc<std::sync::atomic::AtomicU64>,
    feed: Arc<Feed>,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State")
            .field("agents", &self.agents)
            .finish_non_exhaustive()
    }
}

impl State {
    /// A state from its stores, and where their changes are announced.
    pub fn new(
        agents: Arc<dyn AgentStore>,
        approvals: Arc<dyn ApprovalStore>,
        pins: Arc<dyn PinStore>,
        flows: Arc<dyn FlowStore>,
        changes: tokio::sync::broadcast::Sender<StateChange>,
    ) -> Self {
        State {
            agents,
            approvals,
            pins,
            flows,
            shared_spend: None,
            shared_windows: None,
            changes,
            undecodable: Arc::default(),
            feed: Arc::default(),
        }
    }

    /// One `store` behind every trait, announcing on `changes`.
    pub fn of<S>(store: S, changes: tokio::sync::broadcast::Sender<StateChange>) -> Self
    where
        S: AgentStore + ApprovalStore + PinStore + FlowStore + 'static,
    {
        let me = Arc::new(store);
        State::new(
            Arc::clone(&me) as _,
            Arc::clone(&me) as _,
            Arc::clone(&me) as _,
            me as _,
            changes,
        )
    }

    /// Counts entries that do not decode in `counter`.
    #[must_use]
    pub fn with_undecodable(mut self, counter: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.undecodable = counter;
        self
    }

    /// This state, shared by replicas: spend added to in place, windows
    /// merged, and `feed` saying whether their changes are heard.
    #[must_use]
    pub fn with_fleet(
        mut self,
        spend: Arc<dyn SharedSpend>,
        windows: Arc<dyn SharedWindows>,
        feed: Arc<Feed>,
    ) -> Self {
        self.shared_spend = Some(spend);
        self.shared_windows = Some(windows);
        self.feed = feed;
        self
    }

    /// Whether the changes other replicas make are heard.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Stored entries read so far that did not decode; each was failed
    /// closed on (a suspension kept, a pin changed, a day's spend used up).
    pub fn undecodable(&self) -> u64 {
        self.undecodable.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The changes made from now on: by this process and, with a shared
    /// store, by the other replicas. A receiver that falls behind is told
    /// it lagged, and must read the state again.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }
}

/// Runs `call`, a store call that may wait on a lock or the network,
/// from a decision's task: on a multi-threaded tokio runtime the worker's
/// other tasks move to another thread meanwhile, so a decision that holds
/// what `call` waits for can finish; elsewhere it simply runs.
pub fn blocking<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}

/// Opens the embedded state kept in `dir`.
///
/// # Errors
/// A [`StoreError`] naming the file or directory.
pub fn open(dir: &Path) -> Result<State, StoreError> {
    redb::RedbState::open(dir).map(redb::RedbState::into_state)
}

/// Opens the state `config` names: the one place a backend is chosen.
/// `base` is the configuration file's directory; `dir` the state
/// directory, for the embedded store.
///
/// # Errors
/// A [`StoreError`] naming the store: it cannot be opened, or reached.
pub fn from_config(
    config: &crate::config::StateConfig,
    base: &Path,
    dir: &Path,
) -> Result<State, StoreError> {
    match config.backend {
        crate::config::Backend::Redb => open(dir),
        crate::config::Backend::Postgres => {
            let remote = |what, source: String| StoreError::Remote {
                target: "`state.url`".into(),
                what,
                source: source.into(),
            };
            let url = config
                .url
                .as_deref()
                .ok_or_else(|| remote("read the URL", "it is not set".into()))?;
            let url = crate::config::resolve_secret(url).map_err(|e| remote("read the URL", e))?;
            let options = postgres::PgOptions {
                timeout: std::time::Duration::from_millis(config.timeout_ms),
                ca_file: config.ca_file.as_ref().map(|f| base.join(f)),
                ..postgres::PgOptions::new(url)
            };
            postgres::PgState::open(&options).map(postgres::PgState::into_state)
        }
    }
}

/// The file in the state directory that keeps a replica's made-up name.
pub const REPLICA_FILE: &str = "replica";

/// This replica's name in a fleet, for its decision records:
/// `state.replica`, else, with a shared store, one made at first start and
/// kept in `dir`; a single node has none.
///
/// # Errors
/// A [`StoreError`] when the kept name cannot be read or made, or is not
/// one a configuration could give.
pub fn replica(
    config: &crate::config::StateConfig,
    dir: &Path,
) -> Result<Option<String>, StoreError> {
    if let Some(name) = &config.replica {
        return Ok(Some(name.clone()));
    }
    if config.backend == crate::config::Backend::Redb {
        return Ok(None);
    }
    let path = dir.join(REPLICA_FILE);
    let failed = |source: std::io::Error| StoreError::Database {
        path: path.clone(),
        what: "this replica's name",
        source: Box::new(source),
    };
    let name = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes)
                .map_err(|e| failed(std::io::Error::other(e.to_string())))?;
            let made = format!("r-{}", crate::hex::encode(&bytes));
            crate::paths::create_private_dir(dir).map_err(failed)?;
            // Written whole under another name first, so a crash never
            // leaves an empty name behind.
            let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
            crate::paths::write_new(&tmp, format!("{made}\n").as_bytes(), 0o600).map_err(failed)?;
            let linked = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => made,
                // Another process made one first: theirs is the name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    std::fs::read_to_string(&path)
                        .map_err(failed)?
                        .trim()
                        .to_owned()
                }
                Err(e) => return Err(failed(e)),
            }
        }
        Err(e) => return Err(failed(e)),
    };
    if !crate::config::valid_replica(&name) {
        return Err(failed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not 1 to 64 letters, digits, `.`, `_` or `-`",
        )));
    }
    Ok(Some(name))
}

/// Why an agent is suspended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspension {
    /// Why, as the person who did it said.
    pub reason: String,
    /// Who did it.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// An open circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breaker {
    /// When it opened (ms since the epoch).
    pub since_ms: u64,
    /// When it closes again.
    pub until_ms: u64,
    /// Denials in the window when it opened.
    pub denials: u32,
}

/// Spend of the current UTC day, in cents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaySpend {
    day: u64,
    cents: u64,
}

/// Milliseconds in a day.
pub(crate) const DAY_MS: u64 = 86_400_000;

impl DaySpend {
    /// A day whose whole budget is spent: what a spend that cannot be read
    /// counts as.
    pub fn exhausted(now: u64) -> Self {
        DaySpend {
            day: now / DAY_MS,
            cents: u64::MAX,
        }
    }

    /// Today's spend at `now` (ms since the Unix epoch).
    pub fn today(&self, now: u64) -> u64 {
        if self.day == now / DAY_MS {
            self.cents
        } else {
            0
        }
    }

    /// The day it counts (days since the Unix epoch, UTC).
    pub fn day(&self) -> u64 {
        self.day
    }

    /// Its cents.
    pub fn cents(&self) -> u64 {
        self.cents
    }

    /// Adds `cents` to today's spend.
    pub fn add(&mut self, now: u64, cents: u64) {
        let day = now / DAY_MS;
        if self.day != day {
            *self = DaySpend { day, cents: 0 };
        }
        self.cents = self.cents.saturating_add(cents);
    }
}

/// What a stored entry that does not decode counts as, in every backend:
/// whatever fails closed.
pub(crate) mod fallback {
    use super::{Breaker, DaySpend, Pin, PinChange, Suspension};
    use crate::time::Clock as _;

    /// A suspension that does not read back stays in force.
    pub(crate) fn suspension(error: &str) -> Suspension {
        Suspension {
            reason: format!("the stored suspension does not decode ({error}); kept in force"),
            by: "store".into(),
            at: crate::time::timestamp(std::time::SystemTime::now()),
        }
    }

    /// A breaker that does not read back stays open for an hour.
    pub(crate) fn breaker() -> Breaker {
        let now = crate::time::SystemClock.now_ms();
        Breaker {
            since_ms: now,
            until_ms: now.saturating_add(3_600_000),
            denials: 0,
        }
    }

    /// A day's spend that does not read back is spent in full.
    pub(crate) fn spend() -> DaySpend {
        DaySpend::exhausted(crate::time::SystemClock.now_ms())
    }

    /// A pin that does not read back is a tool changed: its calls are
    /// denied until an operator accepts what the server lists now.
    pub(crate) fn pin(server: &str, tool: &str, error: &str) -> Pin {
        let at = crate::time::timestamp(std::time::SystemTime::now());
        Pin {
            server: server.to_owned(),
            tool: tool.to_owned(),
            digest: "sha256:undecodable".into(),
            definition: serde_json::Value::Null,
            pinned_at: at.clone(),
            accepted_by: None,
            changed: Some(PinChange {
                digest: "sha256:undecodable".into(),
                definition: serde_json::json!({"error": format!("the stored pin does not decode: {error}")}),
                seen_at: at,
            }),
        }
    }
}

/// One approval, as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Its id (UUIDv7).
    pub id: String,
    /// Where it stands.
    pub status: ApprovalStatus,
    /// `sha256:` of the canonical action and context it was asked about.
    pub digest: String,
    /// The policies that asked for it, with their versions.
    pub policies: BTreeMap<String, String>,
    /// The action and context, for the person deciding.
    pub request: Value,
    /// The asking policy's rule and reason.
    pub rule: String,
    /// Why the policy asked.
    pub reason: String,
    /// Its risk.
    pub risk: u8,
    /// The decision that asked.
    pub decision_id: String,
    /// When it was asked for (ms since the epoch).
    pub created_ms: u64,
    /// When it expires if nobody answers.
    pub expires_ms: u64,
    /// Who answered, when and why: the decline, or the approval that
    /// completed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Answer>,
    /// Distinct approvers it needs: 1, or 2 for four eyes.
    #[serde(default = "one")]
    pub required: u8,
    /// Each approval given so far, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<Answer>,
    /// The decision that used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_by: Option<String>,
    /// What each policy of the asking decision said, for the person
    /// deciding (empty in approvals stored before it was kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verdicts: Vec<Verdict>,
}

/// One policy's answer in the decision that asked for an approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// The policy.
    pub policy: String,
    /// Its outcome, as on the wire.
    pub outcome: String,
    /// Its rule.
    pub rule: String,
    /// Its reason.
    pub reason: String,
    /// Its risk, 0 to 100.
    pub risk: u8,
}

fn one() -> u8 {
    1
}

/// A person's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Who.
    pub by: String,
    /// Why.
    pub reason: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// One tool's accepted definition, and the change waiting for an admin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    /// The server's configured name (the action's target).
    pub server: String,
    /// The tool's name.
    pub tool: String,
    /// `sha256:` of the accepted definition.
    pub digest: String,
    /// The accepted definition: `name`, `description`, `inputSchema`.
    pub definition: Value,
    /// When it was first pinned.
    pub pinned_at: String,
    /// Who accepted the definition in force, when it is not the first seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_by: Option<String>,
    /// The newest definition the server listed that differs from the
    /// accepted one; calls are denied while it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<PinChange>,
}

/// A definition the server listed that nobody has accepted yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PinChange {
    /// `sha256:` of the new definition.
    pub digest: String,
    /// The new definition.
    pub definition: Value,
    /// When the gateway first saw it.
    pub seen_at: String,
}

#[cfg(test)]
mod tests {
    use super::conformance::{conforms, single_use_holds_under_races};
    use super::*;

    #[test]
    fn the_redb_store_conforms() {
        let dir = tempfile::tempdir().expect("dir");
        let state = open(dir.path()).expect("open");
        conforms(&state);
        single_use_holds_under_races(&state);
    }

    #[test]
    fn the_memory_store_conforms() {
        let state = memory::MemoryState::new().into_state();
        conforms(&state);
        single_use_holds_under_races(&state);
    }

    #[test]
    fn a_replica_keeps_the_name_it_made_and_a_configured_one_wins() {
        use crate::config::{Backend, StateConfig};
        let dir = tempfile::tempdir().expect("dir");
        let shared = StateConfig {
            backend: Backend::Postgres,
            url: Some("postgres://h/db".into()),
            ..StateConfig::default()
        };
        assert_eq!(
            replica(&StateConfig::default(), dir.path()).expect("redb"),
            None
        );
        let made = replica(&shared, dir.path()).expect("made").expect("a name");
        assert!(made.starts_with("r-") && made.len() == 10, "{made}");
        assert_eq!(replica(&shared, dir.path()).expect("kept"), Some(made));
        let named = StateConfig {
            replica: Some("eu-1".into()),
            ..shared.clone()
        };
        assert_eq!(
            replica(&named, dir.path()).expect("named"),
            Some("eu-1".into())
        );
        // A kept name no configuration could give is refused, not used.
        std::fs::write(dir.path().join(REPLICA_FILE), "a\"b\n").expect("write");
        let e = replica(&shared, dir.path()).expect_err("refused");
        assert!(e.to_string().contains("name"), "{e}");
    }
}
