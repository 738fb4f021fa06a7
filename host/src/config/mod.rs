//! The configuration: engine settings, the compile cache, policies with
//! their settings and limits, and routes. Parsed from TOML with unknown keys
//! refused, and checked as a whole (every route names a configured policy,
//! names are unique) before anything is built from it.
//!
//! A running server reloads it when the file changes; what can change
//! without a restart and what cannot is decided by
//! [`Config::restart_only_changes`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decision::Mode;
use crate::decision::{Action, Context, History, Outcome};
use crate::engine::EngineConfig;
use crate::evaluate::Limits;
use crate::route::RouteSpec;

mod console;
mod flow;
mod identity;

pub use console::ConsoleConfig;
pub use flow::{FlowConfig, FlowRule, FlowScope};
pub use identity::{
    ASYMMETRIC, AdminConfig, AdminListen, AgentToken, ApprovalRule, IdentityConfig, JwtConfig,
    OperatorToken, Role, ServerTls,
};

/// The configuration Arbiter runs with when given none: the five example
/// policies, embedded in the binary, on routes that fit their deployments.
pub const DEFAULT_CONFIG: &str = include_str!("../default-config.toml");

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The HTTP server.
    #[serde(default)]
    pub server: ServerConfig,
    /// Bearer tokens.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Credentials that name the agent asking.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The admin plane: its listener and its operators.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The external authorizer endpoint (`/v1/authz`).
    #[serde(default)]
    pub authorizer: AuthorizerConfig,
    /// Engine settings.
    #[serde(default)]
    pub engine: EngineConfig,
    /// The compile cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The policies, by name.
    #[serde(default)]
    pub policies: Vec<PolicyConfig>,
    /// The routes, in match order.
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Hot reload.
    #[serde(default)]
    pub reload: ReloadConfig,
    /// Which keys may sign policies, and whether they must.
    #[serde(default)]
    pub trust: TrustConfig,
    /// The tamper-evident decision log.
    #[serde(default)]
    pub log: LogConfig,
    /// Shadow evaluation, divergence reports and the monitor baseline.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// Per-agent state: history windows, the circuit breaker.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// Where the host's durable state (suspensions, open breakers,
    /// approvals) lives.
    #[serde(default)]
    pub state: StateConfig,
    /// Approvals.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// The MCP gateway: servers Arbiter stands in front of.
    #[serde(default)]
    pub mcp: McpConfig,
    /// The operator console on the admin listener.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// Policies from OCI registries: the store, tag polling, registries.
    #[serde(default)]
    pub oci: crate::oci::OciConfig,
    /// OpenTelemetry: decision spans and decision records over OTLP.
    #[serde(default)]
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// Session flow labels: the vocabulary, rules and bounds.
    #[serde(default)]
    pub flow: FlowConfig,
}

/// `[mcp]`: the MCP servers the gateway governs ([`crate::mcp`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// One entry per server, `[[mcp.servers]]`.
    pub servers: Vec<McpServerConfig>,
    /// Tools pinned per server at most; a listing that would pin more is
    /// withheld, and no pin is evicted. Read at start. Default: 1000.
    pub max_pins_per_server: usize,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            servers: Vec::new(),
            max_pins_per_server: 1000,
        }
    }
}

impl McpConfig {
    /// The entry named `name`.
    pub fn server(&self, name: &str) -> Option<&McpServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }
}

/// `[[mcp.servers]]`: one MCP server behind the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpServerConfig {
    /// The server's name: the target of its actions, and the path
    /// `/mcp/{name}` that `arbiter serve` proxies it on.
    pub name: String,
    /// The Streamable HTTP endpoint (`http://host:port/path`) that
    /// `arbiter serve` proxies; none for a server reached over stdio.
    pub upstream: Option<String>,
    /// The agent id of every call; default: the agent header
    /// (`authorizer.agent_header`, when configured), else the client's `initialize` name.
    pub agent: Option<String>,
    /// The agent's roles, with `agent`.
    pub agent_roles: Vec<String>,
    /// The user the agent acts for; default: the user header, if any.
    pub user: Option<String>,
    /// The environment; default: the environment header, else "".
    pub environment: Option<String>,
    /// What a require-approval does to the call: `error` answers at once
    /// with the approval's id; `hold` keeps the call until a person answers
    /// or `hold_timeout_s` passes. Default: `error`.
    pub on_approval: OnApproval,
    /// The longest a held call waits, in seconds. Default: 300.
    pub hold_timeout_s: u64,
    /// Route each tool result through the policies as an action of kind
    /// `mcp.result` before the client sees it. Default: false.
    pub govern_results: bool,
    /// The largest JSON-RPC message taken from either side, in bytes.
    /// Default: 4 MiB.
    pub max_message_bytes: usize,
    /// How long the upstream has to start answering an HTTP request, in
    /// seconds. Default: 300.
    pub upstream_timeout_s: u64,
    /// Variables set for a stdio server, which starts with an otherwise
    /// empty environment: Arbiter's own never reach it.
    pub env: BTreeMap<String, String>,
    /// Variables passed through from Arbiter's environment to a stdio
    /// server. Default: `PATH`, `HOME`, `LANG`, `TZ`, `TMPDIR`. Names
    /// starting `ARBITER_` are refused.
    pub pass_env: Vec<String>,
    /// JSON-RPC methods (globs) the gateway does not know but lets
    /// through undecided, both ways; the methods it decides are decided
    /// whatever this says. Default: none; an unknown method is refused.
    pub pass_methods: Vec<String>,
}

impl Default for McpServerConfig {
    fn default() -> Self {
        McpServerConfig {
            name: String::new(),
            upstream: None,
            agent: None,
            agent_roles: Vec::new(),
            user: None,
            environment: None,
            on_approval: OnApproval::Error,
            hold_timeout_s: 300,
            govern_results: false,
            max_message_bytes: 4 << 20,
            upstream_timeout_s: 300,
            env: BTreeMap::new(),
            pass_env: ["PATH", "HOME", "LANG", "TZ", "TMPDIR"]
                .map(str::to_owned)
                .to_vec(),
            pass_methods: Vec::new(),
        }
    }
}

/// What the MCP gateway does with a call that needs approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnApproval {
    /// Answer with an error carrying the approval id.
    Error,
    /// Hold the call until the approval is answered or the hold times out.
    Hold,
}

/// `[approvals]`: how long approvals wait and are kept
/// ([`crate::approvals`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// Seconds a person has to answer, and a granted approval to be used,
    /// before it expires (a deny). Default: 3600.
    pub ttl_s: u64,
    /// Seconds answered, used and expired approvals are kept. Default:
    /// 604800 (a week).
    pub keep_s: u64,
    /// The longest a caller may long-poll an approval, in seconds.
    /// Default: 120.
    pub max_wait_s: u64,
    /// How many distinct approvers an approval needs, by rule and risk
    /// (`[[approvals.rules]]`, first match); default: one.
    pub rules: Vec<ApprovalRule>,
    /// Approvals open at once (pending, or granted and not yet used);
    /// past it, a require-approval is a deny (`approval.limit`).
    /// Default: 1000.
    pub max_open: usize,
    /// Approvals open at once for one agent. Default: 50.
    pub max_open_per_agent: usize,
    /// Answered, used and expired approvals kept (within `keep_s`); past
    /// it the oldest are forgotten first (the decision log keeps them).
    /// Default: 10000.
    pub max_kept: usize,
    /// Callers waiting on one agent's approvals at once (long-polls and
    /// held MCP calls); past it a wait is refused (429). Default: 16.
    pub max_waiting_per_agent: usize,
    /// Callers waiting on approvals at once, every agent together, so
    /// callers naming many agents cannot hold every connection. Default:
    /// 1024.
    pub max_waiting: usize,
}

impl ApprovalsConfig {
    /// The distinct approvers an approval asked by `rule` at `risk` needs
    /// under `rules`.
    pub fn required_by(rules: &[ApprovalRule], rule: &str, risk: u8) -> u8 {
        rules
            .iter()
            .find(|r| risk >= r.min_risk && crate::glob::glob(&r.rule, rule))
            .map_or(1, |r| r.required)
    }
}

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            ttl_s: 3600,
            keep_s: 604_800,
            max_wait_s: 120,
            rules: Vec::new(),
            max_open: 1000,
            max_open_per_agent: 50,
            max_kept: 10_000,
            max_waiting_per_agent: 16,
            max_waiting: 1024,
        }
    }
}

/// `[agents]`: what the host keeps per agent ([`crate::enrich`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentsConfig {
    /// Agents tracked one by one; past it, new agents are counted together,
    /// which can only raise their counters. Default: 100000.
    pub max_agents: usize,
    /// Denials within `breaker_window_s` that open an agent's circuit
    /// breaker; 0 turns the breaker off. Default: 0.
    pub breaker_denials: u32,
    /// The window the breaker counts denials over, in seconds. Default: 60.
    pub breaker_window_s: u64,
    /// How long an open breaker stays open, in seconds. Default: 300.
    pub breaker_cooldown_s: u64,
    /// What an agent with an open breaker may do. Default: `deny-all`.
    pub breaker_mode: SafeMode,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            max_agents: 100_000,
            breaker_denials: 0,
            breaker_window_s: 60,
            breaker_cooldown_s: 300,
            breaker_mode: SafeMode::DenyAll,
        }
    }
}

/// What an agent whose circuit breaker is open may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafeMode {
    /// Nothing: every action is denied.
    DenyAll,
    /// Only actions on routes marked `read_only = true`, which the
    /// policies still judge.
    ReadOnly,
}

/// `[state]`: the host's durable state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// The directory, relative to the configuration file. Default:
    /// `$ARBITER_STATE_DIR`, `$XDG_STATE_HOME/arbiter/state` or
    /// `~/.local/state/arbiter/state`. With PostgreSQL it still holds
    /// this replica's own keys and admin socket.
    pub dir: Option<PathBuf>,
    /// Where approvals, suspensions, breakers, spend and pins are kept.
    /// Default: `redb`.
    pub backend: Backend,
    /// The PostgreSQL connection URL (`postgres://user:pass@host/db`,
    /// `?sslmode=require` for TLS), or `env:NAME` to read it from a
    /// variable. Required with `backend = "postgres"`.
    pub url: Option<String>,
    /// PEM certificates of the CAs that may sign the database's TLS
    /// certificate, relative to the configuration file. Default: the
    /// Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// The longest a call to the database may take. Default: 1000.
    pub timeout_ms: u64,
    /// How long a replica that lost the database's change feed keeps
    /// deciding from what it last heard. Default: 0: it denies
    /// (`failure.state`) at once.
    pub max_staleness_ms: u64,
    /// Serialize each agent's spending decisions across the fleet (a row
    /// lock from the policy's reading of the spend to its addition), so a
    /// budget holds exactly. Default: false: replicas deciding one agent
    /// at once may each spend against the same total.
    pub exact_spend: bool,
    /// How often a replica sends its sliding windows' counts to the others
    /// and reads theirs, in ms: what another replica decided in the last
    /// `window_merge_ms` may be missing from a count. Default: 100.
    pub window_merge_ms: u64,
    /// This replica's name in the fleet, in every decision record it
    /// writes: letters, digits, `.`, `_` and `-`, at most 64. Default with
    /// PostgreSQL: one made at first start and kept in the state directory;
    /// with the embedded store, none.
    pub replica: Option<String>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: None,
            backend: Backend::Redb,
            url: None,
            ca_file: None,
            timeout_ms: 1000,
            max_staleness_ms: 0,
            exact_spend: false,
            window_merge_ms: 100,
            replica: None,
        }
    }
}

/// Where the state is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An embedded database in the state directory, for one node.
    #[default]
    Redb,
    /// A PostgreSQL database several replicas share.
    Postgres,
}

impl StateConfig {
    fn check(&self) -> Result<(), String> {
        match (self.backend, &self.url) {
            (Backend::Postgres, None) => {
                Err("`state.backend = \"postgres\"` needs `state.url`".into())
            }
            (Backend::Redb, Some(_)) => Err(
                "`state.url` is for `state.backend = \"postgres\"`; the embedded store needs none"
                    .into(),
            ),
            _ if self.timeout_ms == 0 => Err("`state.timeout_ms` must be at least 1".into()),
            _ if self.replica.as_deref().is_some_and(|r| !valid_replica(r)) => {
                Err("`state.replica` must be 1 to 64 letters, digits, `.`, `_` or `-`".into())
            }
            _ if !(10..=60_000).contains(&self.window_merge_ms) => {
                Err("`state.window_merge_ms` must be between 10 and 60000".into())
            }
            _ if self.exact_spend && self.backend == Backend::Redb => {
                Err("`state.exact_spend` is for `state.backend = \"postgres\"`".into())
            }
            _ => Ok(()),
        }
    }
}

/// Whether `name` may name a replica: it goes into every record and onto
/// the command line, so only plain characters.
pub fn valid_replica(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `[rollout]`: the machinery behind modes and candidates
/// ([`crate::mode`], [`crate::shadow`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// Shadow evaluations waiting at most; more are dropped and counted,
    /// so a slow candidate never slows the callers. Default: 4096.
    pub shadow_queue: usize,
    /// Bytes the queued shadow evaluations may hold in all (their inputs,
    /// params included); past it they are dropped and counted as when the
    /// queue is full. Default: 64 MiB.
    pub shadow_queue_bytes: usize,
    /// Threads that run shadow evaluations, at nice 10 so that decisions
    /// run first. Default: 1.
    pub shadow_workers: usize,
    /// Diverging inputs kept per pair of versions (a uniform sample of all
    /// divergences). Default: 20.
    pub divergence_samples: usize,
    /// Agent and action pairs the monitor baseline tracks; actions beyond
    /// are counted as untracked. Default: 10000.
    pub baseline_max_actions: usize,
    /// Distinct values kept per params key (strings of at most 64
    /// characters), target and e-mail domain. Default: 20.
    pub baseline_distinct_values: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            shadow_queue: 4096,
            shadow_queue_bytes: 64 << 20,
            shadow_workers: 1,
            divergence_samples: 20,
            baseline_max_actions: 10_000,
            baseline_distinct_values: 20,
        }
    }
}

/// `[log]`: the hash-chained decision log of `arbiter serve`
/// ([`crate::evidence::log`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Whether decisions are logged. Default: true; with false, decisions
    /// leave no record, and the server says so when it starts.
    pub enabled: bool,
    /// The directory, relative to the configuration file. Default:
    /// `$ARBITER_LOG_DIR`, `$XDG_STATE_HOME/arbiter/decisions` or
    /// `~/.local/state/arbiter/decisions`.
    pub dir: Option<PathBuf>,
    /// How each decision's params are stored. Default: `full`.
    pub params: ParamsStorage,
    /// With `params = "redact"`: keys whose values are replaced wherever
    /// they occur in the params (compared case-insensitively).
    pub redact_fields: Vec<String>,
    /// How often written records are synced to disk, in ms; 0 syncs every
    /// batch before its decisions are answered. Default: 100. Records are
    /// written (to the OS) before any decision is answered either way; this
    /// bounds what a power loss, not a crash, can take.
    pub sync_interval_ms: u64,
    /// A signed checkpoint after this many records. Default: 1000.
    pub checkpoint_every: u64,
    /// A signed checkpoint at least this often while records come in, in
    /// ms. Default: 10000.
    pub checkpoint_interval_ms: u64,
    /// The private key checkpoints are signed with (an `arbiter keygen`
    /// file, owner-only, outside the log directory; verifiers read its
    /// public half, the same name with `.pub`). Default: `checkpoint.key`
    /// in the state directory, made on first start, so whoever can write
    /// the log cannot sign a forged one.
    pub checkpoint_key: Option<PathBuf>,
    /// Where signed checkpoints are also appended, so cutting the log's
    /// tail shows. Default: `checkpoints.jsonl` in the log directory.
    pub checkpoints_file: Option<PathBuf>,
    /// A new segment file once the current one reaches this size, in bytes.
    /// Default: 64 MiB.
    pub max_segment_bytes: u64,
    /// A new segment file once the current one is this old, in seconds.
    /// Default: 86400 (a day).
    pub max_segment_age_s: u64,
    /// What to do when records cannot be written. Default: `deny`.
    pub on_failure: LogFailurePolicy,
    /// `[log.retention]`: when whole sealed segments are removed.
    pub retention: RetentionConfig,
    /// The replica id every record carries: `state.replica`, filled in by
    /// the server, never read from `[log]`.
    #[serde(skip)]
    pub replica: Option<String>,
}

/// `[log.retention]`: the oldest sealed segments leave once the log is too
/// big or they are too old, each removal named by a `retention` record.
/// Default: everything is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionConfig {
    /// Segments beyond this many bytes in all, oldest first; 0 keeps them.
    /// At least twice `max_segment_bytes` when set.
    pub max_total_bytes: u64,
    /// Segments whose last record is older than this, in seconds; 0 keeps
    /// them. At least 60 when set.
    pub max_age_s: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            enabled: true,
            dir: None,
            params: ParamsStorage::Full,
            redact_fields: Vec::new(),
            sync_interval_ms: 100,
            checkpoint_every: 1000,
            checkpoint_interval_ms: 10_000,
            checkpoint_key: None,
            checkpoints_file: None,
            max_segment_bytes: 64 << 20,
            max_segment_age_s: 86_400,
            on_failure: LogFailurePolicy::Deny,
            retention: RetentionConfig::default(),
            replica: None,
        }
    }
}

/// How a decision's params are kept in the log. Every record also holds
/// `params_sha256`, the digest of the params in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamsStorage {
    /// As sent, so decisions can be replayed.
    Full,
    /// Only the digest: the arguments stay provable without being kept.
    Sha256,
    /// As sent, with the values of `redact_fields` replaced.
    Redact,
}

/// What happens to decisions while the log cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFailurePolicy {
    /// Fail closed: every decision is a deny saying the log cannot be
    /// written, until it can again.
    Deny,
    /// Keep deciding; the records lost are counted in metrics and a `gap`
    /// record says how many once the log can be written again.
    Serve,
}

/// `[trust]`: the keys trusted to sign policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrustConfig {
    /// Refuse every policy without a valid signature by a trusted key.
    /// Default: false (a signature that is present is still checked).
    pub require_signatures: bool,
    /// The trusted keys (`[[trust.keys]]`).
    pub keys: Vec<TrustedKey>,
    /// Ids of keys whose signatures are refused, trusted or not.
    pub revoked: Vec<String>,
    /// The lowest signed version that may serve: not a key of `[trust]`,
    /// but each policy's `min_signed_version`, carried with the trust it
    /// loads under.
    #[serde(skip)]
    pub min_signed_version: Option<semver::Version>,
}

/// One trusted key: its id, the public key, and the policies it may sign.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedKey {
    /// The id signatures name.
    pub id: String,
    /// The Ed25519 public key, 64 hex digits (from `arbiter keygen`).
    pub public_key: String,
    /// Globs on policy names this key may sign. Default: `["*"]`.
    #[serde(default = "any_policy")]
    pub policies: Vec<String>,
}

fn any_policy() -> Vec<String> {
    vec!["*".to_owned()]
}

/// `[reload]`: how a running server follows changes to its files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Watch every policy file and the configuration file, and reload what
    /// changes. Default: true. Without it, SIGHUP reloads everything.
    pub watch: bool,
    /// Quiet time after the last change to a file before it is loaded, in
    /// ms, so a file being copied is read once it is whole. Default: 50.
    pub debounce_ms: u64,
    /// Good versions of each policy kept in memory for rollback, the
    /// serving one included. Default: 5.
    pub keep_versions: usize,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce_ms: 50,
            keep_versions: 5,
        }
    }
}

/// `[server]`: where to listen and how much to accept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port. Default: `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest request body, in bytes; larger is 413. Default: 1 MiB.
    pub max_body_bytes: usize,
    /// Time a client has to send the request headers, in ms; then the
    /// connection is closed. Default: 5000.
    pub header_timeout_ms: u64,
    /// Time a client has to send the request body, in ms; then 408.
    /// Default: 10000.
    pub body_timeout_ms: u64,
    /// The longest a write may wait for the peer to read, in ms; past it
    /// the connection is closed, so a client that stops reading cannot hold
    /// its connection. Default: 10000.
    pub write_timeout_ms: u64,
    /// Decisions running or waiting at once; more get 503 with
    /// `Retry-After` rather than an unbounded queue. Default: 256.
    pub max_pending_decisions: usize,
    /// Open connections at once; more wait in the kernel's backlog.
    /// Default: 4096.
    pub max_connections: usize,
    /// Time in-flight requests get to finish on shutdown, in ms.
    /// Default: 10000.
    pub shutdown_grace_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 1 << 20,
            header_timeout_ms: 5_000,
            body_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            max_pending_decisions: 256,
            max_connections: 4096,
            shutdown_grace_ms: 10_000,
        }
    }
}

impl ServerConfig {
    /// `header_timeout_ms` as a [`Duration`].
    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    /// `body_timeout_ms` as a [`Duration`].
    pub fn body_timeout(&self) -> Duration {
        Duration::from_millis(self.body_timeout_ms)
    }

    /// [`ServerConfig::write_timeout_ms`] as a duration.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    /// `shutdown_grace_ms` as a [`Duration`].
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// `[auth]`: optional bearer tokens. A value `env:NAME` is read from the
/// environment variable NAME when the configuration is parsed, so tokens
/// need not sit in the file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Required to ask for decisions and read state, when set.
    pub decide_token: Option<Secret>,
    /// Required for anything that changes state, when set; without it,
    /// such endpoints are refused.
    pub admin_token: Option<Secret>,
}

/// A token, resolved when parsed (see [`resolve_secret`]) so that a
/// running server never finds it missing. Never printed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Secret(String);

impl Secret {
    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Secret {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        resolve_secret(&value).map(Secret)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

/// `[authorizer]`: how the external authorizer builds an action of kind
/// `http` from the original request. Every header it trusts is named
/// here; none is by default, so a client cannot choose its identity or
/// its request line by sending a header the proxy passes along.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizerConfig {
    /// Header with the original request's URI, for a proxy that asks with
    /// a subrequest (nginx: `x-original-uri`, set with `proxy_set_header`,
    /// which overwrites what the client sent). Default: none; the URI is
    /// the authorizer request's own, after `/v1/authz`.
    pub original_uri_header: Option<String>,
    /// Header with the original method (nginx: `x-original-method`).
    /// Default: none; the authorizer request's own method.
    pub original_method_header: Option<String>,
    /// Header with the original host. Default: none; the `Host` header.
    pub host_header: Option<String>,
    /// Header with the agent id, set by the proxy. Default: none (with
    /// `[identity]`, the agent comes from its credential anyway).
    pub agent_header: Option<String>,
    /// Header with the agent's roles, comma-separated. Default: none.
    pub agent_roles_header: Option<String>,
    /// Header with the user id. Default: none.
    pub user_header: Option<String>,
    /// Header with the user's roles, comma-separated. Default: none.
    pub user_roles_header: Option<String>,
    /// Header with the environment. Default: none.
    pub environment_header: Option<String>,
    /// Header with the session id. Default: none.
    pub session_header: Option<String>,
    /// Headers of the original request copied into `params.headers`.
    /// Default: `content-type`, `content-length`, `user-agent`.
    pub forward_headers: Vec<String>,
    /// Where Envoy's gRPC authorizer (`envoy.service.auth.v3.Authorization`)
    /// listens, on a listener of its own. Default: none, not served.
    pub grpc_listen: Option<SocketAddr>,
}

impl Default for AuthorizerConfig {
    fn default() -> Self {
        AuthorizerConfig {
            original_uri_header: None,
            original_method_header: None,
            host_header: None,
            agent_header: None,
            agent_roles_header: None,
            user_header: None,
            user_roles_header: None,
            environment_header: None,
            session_header: None,
            forward_headers: ["content-type", "content-length", "user-agent"]
                .map(str::to_owned)
                .to_vec(),
            grpc_listen: None,
        }
    }
}

impl AuthorizerConfig {
    /// Every header this configuration trusts, with its key.
    pub fn trusted_headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("original_uri_header", &self.original_uri_header),
            ("original_method_header", &self.original_method_header),
            ("host_header", &self.host_header),
            ("agent_header", &self.agent_header),
            ("agent_roles_header", &self.agent_roles_header),
            ("user_header", &self.user_header),
            ("user_roles_header", &self.user_roles_header),
            ("environment_header", &self.environment_header),
            ("session_header", &self.session_header),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }

    fn check(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for (key, name) in self.trusted_headers() {
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(format!("`authorizer.{key}`: `{name}` is not a header name"));
            }
            let lower = name.to_ascii_lowercase();
            if matches!(
                lower.as_str(),
                "authorization" | "cookie" | "host" | "x-arbiter-token"
            ) {
                return Err(format!(
                    "`authorizer.{key}`: `{name}` carries something else; name a header the proxy sets"
                ));
            }
            if !seen.insert(lower) {
                return Err(format!(
                    "`authorizer.{key}`: `{name}` is named for two things"
                ));
            }
        }
        Ok(())
    }
}

/// `[cache]`: where compiled components are kept between runs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Whether to use the cache. Default: true.
    pub enabled: bool,
    /// The directory. Default: see [`crate::load::CompileCache::default_dir`].
    pub dir: Option<PathBuf>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// One `[[policies]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// The name routes refer to.
    pub name: String,
    /// The component file, relative to the configuration file.
    pub file: Option<PathBuf>,
    /// An example policy embedded in the binary, instead of `file`.
    pub example: Option<String>,
    /// An OCI reference to pull the signed policy from, instead of
    /// `file`: `registry/repository:tag` (checked every `oci.poll_s`) or
    /// `registry/repository@sha256:…`.
    #[serde(default)]
    pub oci: Option<String>,
    /// Settings passed to the policy, as JSON. Default: `{}`.
    #[serde(default = "empty_settings")]
    pub settings: serde_json::Value,
    /// Limits. Default: [`Limits::default`].
    #[serde(default)]
    pub limits: Limits,
    /// Sample requests every new version must decide as expected before
    /// it serves (`[[policies.smoke]]`). Default: none.
    #[serde(default)]
    pub smoke: Vec<SmokeSample>,
    /// How much its answer binds. Default: `enforce`.
    #[serde(default)]
    pub mode: Mode,
    /// Candidate versions, shadow or canary (`[[policies.candidates]]`).
    #[serde(default)]
    pub candidates: Vec<CandidateConfig>,
    /// The lowest signed version that may serve, so an older release,
    /// validly signed, cannot be brought back. Setting it requires a
    /// signature on every version of the policy.
    #[serde(default)]
    pub min_signed_version: Option<semver::Version>,
}

impl PolicyConfig {
    /// An enforcing policy with no candidates, smoke samples or limits of
    /// its own: `example` names an embedded example policy, `file` a
    /// component.
    pub fn new(name: &str, file: Option<PathBuf>, example: Option<String>) -> Self {
        PolicyConfig {
            name: name.to_owned(),
            file,
            example,
            oci: None,
            settings: empty_settings(),
            limits: Limits::default(),
            smoke: Vec::new(),
            mode: Mode::Enforce,
            candidates: Vec::new(),
            min_signed_version: None,
        }
    }
}

/// One `[[policies.candidates]]` entry: another version of the policy,
/// evaluated beside the serving one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidateConfig {
    /// Its id in reports and endpoints (A-Z a-z 0-9 . _ -).
    pub id: String,
    /// `shadow`: evaluated, never enforced; `canary`: enforced for
    /// `percent` of the sessions.
    pub role: CandidateRole,
    /// With `canary`: the share of sessions, above 0 and at most 100.
    #[serde(default)]
    pub percent: Option<f64>,
    /// The component file. Default: the policy's own component.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An embedded example policy, instead of `file`.
    #[serde(default)]
    pub example: Option<String>,
    /// Its settings. Default: the policy's.
    #[serde(default)]
    pub settings: Option<serde_json::Value>,
    /// Its limits. Default: the policy's.
    #[serde(default)]
    pub limits: Option<Limits>,
}

/// What a candidate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CandidateRole {
    /// Evaluated on the same input, never enforced.
    Shadow,
    /// Enforced for a stable share of sessions.
    Canary,
}

/// One smoke sample: a request and the outcome (and optionally the rule)
/// the policy must give for it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmokeSample {
    /// What to call it in errors. Default: its position.
    #[serde(default)]
    pub name: Option<String>,
    /// The action.
    pub action: Action,
    /// The context.
    #[serde(default)]
    pub context: Context,
    /// The history.
    #[serde(default)]
    pub history: History,
    /// The outcome the policy must give.
    pub expect: Outcome,
    /// The rule it must give, when set.
    #[serde(default)]
    pub rule: Option<String>,
}

fn empty_settings() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration `{}`: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse, or a key is unknown or of the wrong type.
    #[error("configuration `{origin}`: {}", source.to_string().trim_end())]
    Parse {
        /// The file, or `<embedded default>`.
        origin: String,
        /// The parser's error, with line, column and key.
        #[source]
        source: toml::de::Error,
    },
    /// The configuration parses but does not hold together.
    #[error("configuration `{origin}`: {problem}")]
    Invalid {
        /// The file, or `<embedded default>`.
        origin: String,
        /// What is wrong, naming the policy or route.
        problem: String,
    },
}

impl Config {
    /// Reads and checks a configuration file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file and the problem.
    pub fn from_file(path: &Path) -> Result<(Self, PathBuf), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Ok((Self::parse(&text, &path.display().to_string())?, base))
    }

    /// The embedded default configuration.
    ///
    /// # Errors
    /// Only if the embedded text is broken, which a test guards against.
    pub fn default_config() -> Result<Self, ConfigError> {
        Self::parse(DEFAULT_CONFIG, "<embedded default>")
    }

    /// Parses and checks configuration text; `origin` names it in errors.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `origin` and the problem.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            source: e,
        })?;
        config.check().map_err(|problem| ConfigError::Invalid {
            origin: origin.to_owned(),
            problem,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        self.check_durations()?;
        self.state.check()?;
        check_mcp(&self.mcp)?;
        self.authorizer.check()?;
        self.console.check()?;
        self.flow.check()?;
        if self.flow.enabled
            && self.state.backend == Backend::Postgres
            && self.flow.key_file.is_none()
        {
            return Err("with `state.backend = \"postgres\"`, replicas must fingerprint with one key: set `flow.key_file`".into());
        }
        identity::check(&self.identity, &self.admin, &self.approvals.rules)?;
        if self.identity.enabled() && self.auth.decide_token.is_some() {
            return Err("with `[identity]`, each caller presents its own credential: remove `auth.decide_token`".into());
        }
        let s = &self.server;
        for (key, value) in [
            ("server.max_body_bytes", s.max_body_bytes as u64),
            ("server.header_timeout_ms", s.header_timeout_ms),
            ("server.body_timeout_ms", s.body_timeout_ms),
            ("server.write_timeout_ms", s.write_timeout_ms),
            (
                "server.max_pending_decisions",
                s.max_pending_decisions as u64,
            ),
            ("server.max_connections", s.max_connections as u64),
        ] {
            if value == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        let mut key_ids = BTreeSet::new();
        for k in &self.trust.keys {
            crate::signing::PublicKey::new(&k.id, &k.public_key)
                .map_err(|e| format!("`trust.keys`: {e}"))?;
            if !key_ids.insert(k.id.as_str()) {
                return Err(format!("`trust.keys`: key `{}` is listed twice", k.id));
            }
        }
        if self.log.checkpoint_every == 0 || self.log.checkpoint_interval_ms == 0 {
            return Err(
                "`log.checkpoint_every` and `log.checkpoint_interval_ms` must be at least 1".into(),
            );
        }
        if self.log.max_segment_bytes < 4096 || self.log.max_segment_age_s == 0 {
            return Err(
                "`log.max_segment_bytes` must be at least 4096 and `log.max_segment_age_s` at least 1"
                    .into(),
            );
        }
        let kept = &self.log.retention;
        if kept.max_total_bytes > 0 && kept.max_total_bytes < 2 * self.log.max_segment_bytes {
            return Err("`log.retention.max_total_bytes` must be at least twice `log.max_segment_bytes`, or 0 to keep every segment".into());
        }
        if kept.max_age_s > 0 && kept.max_age_s < 60 {
            return Err(
                "`log.retention.max_age_s` must be at least 60, or 0 to keep every segment".into(),
            );
        }
        if self.log.params == ParamsStorage::Redact && self.log.redact_fields.is_empty() {
            return Err("`log.params = \"redact\"` needs `log.redact_fields`".into());
        }
        if self.agents.max_agents == 0
            || (self.agents.breaker_denials > 0
                && (self.agents.breaker_window_s == 0 || self.agents.breaker_cooldown_s == 0))
        {
            return Err("`agents.max_agents` must be at least 1, and with `agents.breaker_denials` set, `agents.breaker_window_s` and `agents.breaker_cooldown_s` too".into());
        }
        let a = &self.approvals;
        for (key, value) in [
            ("approvals.ttl_s", a.ttl_s),
            ("approvals.max_wait_s", a.max_wait_s),
            ("approvals.max_open", a.max_open as u64),
            ("approvals.max_open_per_agent", a.max_open_per_agent as u64),
            (
                "approvals.max_waiting_per_agent",
                a.max_waiting_per_agent as u64,
            ),
            ("approvals.max_waiting", a.max_waiting as u64),
        ] {
            if value == 0 {
                return Err(format!("`{key}` must be at least 1"));
            }
        }
        let r = &self.rollout;
        if r.shadow_queue == 0
            || r.shadow_queue_bytes == 0
            || r.shadow_workers == 0
            || r.baseline_max_actions == 0
        {
            return Err("`rollout.shadow_queue`, `rollout.shadow_queue_bytes`, `rollout.shadow_workers` and `rollout.baseline_max_actions` must be at least 1".into());
        }
        self.oci.check()?;
        self.telemetry.check()?;
        if self.reload.keep_versions == 0 {
            return Err("`reload.keep_versions` must be at least 1".into());
        }
        let mut names = BTreeSet::new();
        for p in &self.policies {
            if p.name.is_empty() {
                return Err("a policy has an empty name".into());
            }
            if !names.insert(p.name.as_str()) {
                return Err(format!("policy `{}` is configured twice", p.name));
            }
            let sources = [p.file.is_some(), p.example.is_some(), p.oci.is_some()];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(format!(
                    "policy `{}`: give exactly one of `file`, `example` and `oci`",
                    p.name
                ));
            }
            if let Some(r) = &p.oci {
                r.parse::<oci_client::Reference>().map_err(|e| {
                    format!(
                        "policy `{}`: `oci = \"{r}\"` is not an OCI reference: {e}",
                        p.name
                    )
                })?;
            }
            check_candidates(p)?;
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.chain.is_empty() {
                return Err(format!(
                    "route {} (kind `{}`, name `{}`) has an empty chain",
                    i + 1,
                    r.kind,
                    r.name
                ));
            }
            if let Some(unknown) = r.chain.iter().find(|n| !names.contains(n.as_str())) {
                return Err(format!(
                    "route {} (kind `{}`, name `{}`) names policy `{unknown}`, which is not configured",
                    i + 1,
                    r.kind,
                    r.name
                ));
            }
        }
        Ok(())
    }
}

const HOUR_S: u64 = 3600;
const DAY_S: u64 = 86_400;

impl Config {
    /// Every duration under a bound that says what is sane for it: a
    /// larger one is a mistake (or an attack on the arithmetic of
    /// `Instant + Duration`), refused naming the key.
    fn check_durations(&self) -> Result<(), String> {
        let (s, l, a, g) = (&self.server, &self.log, &self.approvals, &self.agents);
        let mut bounds: Vec<(String, u64, u64)> = vec![
            (
                "server.header_timeout_ms".into(),
                s.header_timeout_ms,
                HOUR_S * 1000,
            ),
            (
                "server.body_timeout_ms".into(),
                s.body_timeout_ms,
                HOUR_S * 1000,
            ),
            (
                "server.write_timeout_ms".into(),
                s.write_timeout_ms,
                HOUR_S * 1000,
            ),
            (
                "server.shutdown_grace_ms".into(),
                s.shutdown_grace_ms,
                HOUR_S * 1000,
            ),
            (
                "log.sync_interval_ms".into(),
                l.sync_interval_ms,
                HOUR_S * 1000,
            ),
            (
                "log.checkpoint_interval_ms".into(),
                l.checkpoint_interval_ms,
                DAY_S * 1000,
            ),
            (
                "log.max_segment_age_s".into(),
                l.max_segment_age_s,
                366 * DAY_S,
            ),
            (
                "log.retention.max_age_s".into(),
                l.retention.max_age_s,
                100 * 366 * DAY_S,
            ),
            ("approvals.ttl_s".into(), a.ttl_s, 30 * DAY_S),
            ("approvals.keep_s".into(), a.keep_s, 10 * 366 * DAY_S),
            ("approvals.max_wait_s".into(), a.max_wait_s, HOUR_S),
            ("agents.breaker_window_s".into(), g.breaker_window_s, DAY_S),
            (
                "agents.breaker_cooldown_s".into(),
                g.breaker_cooldown_s,
                30 * DAY_S,
            ),
            ("reload.debounce_ms".into(), self.reload.debounce_ms, 60_000),
            (
                "engine.epoch_tick_ms".into(),
                self.engine.epoch_tick_ms,
                1000,
            ),
        ];
        for m in &self.mcp.servers {
            bounds.push((
                format!("mcp.servers `{}`: hold_timeout_s", m.name),
                m.hold_timeout_s,
                HOUR_S,
            ));
            bounds.push((
                format!("mcp.servers `{}`: upstream_timeout_s", m.name),
                m.upstream_timeout_s,
                HOUR_S,
            ));
        }
        for (key, jwt) in [
            ("identity.jwt", &self.identity.jwt),
            ("admin.jwt", &self.admin.jwt),
        ] {
            if let Some(j) = jwt {
                bounds.push((format!("{key}.leeway_s"), j.leeway_s, HOUR_S));
                bounds.push((format!("{key}.refresh_s"), j.refresh_s, 7 * DAY_S));
            }
        }
        match bounds.into_iter().find(|(_, value, max)| value > max) {
            Some((key, value, max)) => Err(format!("`{key}` is {value}; it may be at most {max}")),
            None => Ok(()),
        }
    }
}

/// Checks `[[mcp.servers]]`: names path-safe and unique, upstreams
/// `http://` URLs with a host, bounds at least 1.
///
/// # Errors
/// The first problem, naming the key.
pub fn check_mcp(mcp: &McpConfig) -> Result<(), String> {
    if mcp.max_pins_per_server == 0 {
        return Err("`mcp.max_pins_per_server` must be at least 1".into());
    }
    let mut names = BTreeSet::new();
    for s in &mcp.servers {
        let safe = !s.name.is_empty()
            && s.name.len() <= 64
            && s.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return Err(format!(
                "`mcp.servers`: name `{}` must be 1 to 64 letters, digits, `-`, `_` or `.`",
                s.name
            ));
        }
        if !names.insert(s.name.as_str()) {
            return Err(format!("`mcp.servers`: `{}` is listed twice", s.name));
        }
        if let Some(u) = &s.upstream {
            let ok = u
                .parse::<hyper::Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return Err(format!(
                    "`mcp.servers` `{}`: upstream `{u}` must be an http:// URL with a host",
                    s.name
                ));
            }
        }
        if let Some(name) = s
            .pass_env
            .iter()
            .chain(s.env.keys())
            .find(|n| n.starts_with("ARBITER_"))
        {
            return Err(format!(
                "`mcp.servers` `{}`: `{name}` may not be passed or set: Arbiter's own variables never reach a governed server",
                s.name
            ));
        }
        if s.max_message_bytes < 1024 || s.hold_timeout_s == 0 || s.upstream_timeout_s == 0 {
            return Err(format!(
                "`mcp.servers` `{}`: `max_message_bytes` must be at least 1024, `hold_timeout_s` and `upstream_timeout_s` at least 1",
                s.name
            ));
        }
    }
    Ok(())
}

fn check_candidates(p: &PolicyConfig) -> Result<(), String> {
    let mut ids = BTreeSet::new();
    let mut canary_total = 0.0;
    for c in &p.candidates {
        let at = format!("policy `{}`, candidate `{}`", p.name, c.id);
        let id_ok = !c.id.is_empty()
            && c.id.len() <= 64
            && c.id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
        if !id_ok {
            return Err(format!(
                "policy `{}`: candidate id `{}` must be 1 to 64 of A-Z a-z 0-9 . _ -",
                p.name, c.id
            ));
        }
        if !ids.insert(c.id.as_str()) {
            return Err(format!("{at} is configured twice"));
        }
        if c.file.is_some() && c.example.is_some() {
            return Err(format!("{at}: give at most one of `file` and `example`"));
        }
        match (c.role, c.percent) {
            (CandidateRole::Shadow, None) => {}
            (CandidateRole::Shadow, Some(_)) => {
                return Err(format!(
                    "{at}: `percent` is for canaries; a shadow is never enforced"
                ));
            }
            (CandidateRole::Canary, Some(pct)) if pct > 0.0 && pct <= 100.0 => {
                canary_total += pct;
            }
            (CandidateRole::Canary, _) => {
                return Err(format!(
                    "{at}: a canary needs `percent`, above 0 and at most 100"
                ));
            }
        }
    }
    if canary_total > 100.0 {
        return Err(format!(
            "policy `{}`: its canaries take {canary_total}% of the sessions, more than 100%",
            p.name
        ));
    }
    Ok(())
}

impl Config {
    /// What differs between `self` and `new` that a running server cannot
    /// take without a restart: the listen address, the connection limit,
    /// the engine and the compile cache. Empty when `new` can be applied.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.server.listen != new.server.listen {
            changed.push("server.listen");
        }
        if self.server.max_connections != new.server.max_connections {
            changed.push("server.max_connections");
        }
        if self.admin.listen != new.admin.listen {
            changed.push("admin.listen");
        }
        if self.admin.tls != new.admin.tls {
            changed.push("admin.tls");
        }
        if self.authorizer.grpc_listen != new.authorizer.grpc_listen {
            changed.push("authorizer.grpc_listen");
        }
        if self.engine != new.engine {
            changed.push("engine");
        }
        if self.cache != new.cache {
            changed.push("cache");
        }
        if self.log != new.log {
            changed.push("log");
        }
        if self.rollout != new.rollout {
            changed.push("rollout");
        }
        if self.agents != new.agents {
            changed.push("agents");
        }
        if self.state != new.state {
            changed.push("state");
        }
        if self.approvals != new.approvals {
            changed.push("approvals");
        }
        if self.oci.store != new.oci.store {
            changed.push("oci.store");
        }
        if self.telemetry != new.telemetry {
            changed.push("telemetry");
        }
        changed
    }
}

/// What the command line changes in every configuration read from the
/// file, at start and on each reload (`--listen`, `--cache-dir`,
/// `--no-cache`), so a reload does not take them back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// Listen here instead of `server.listen`.
    pub listen: Option<SocketAddr>,
    /// Use this instead of `[cache]`.
    pub cache: Option<CacheConfig>,
    /// Log decisions here instead of `log.dir`.
    pub log_dir: Option<PathBuf>,
    /// Keep the durable state here instead of `state.dir`.
    pub state_dir: Option<PathBuf>,
    /// Serve the admin plane here instead of `admin.listen`.
    pub admin_listen: Option<AdminListen>,
}

impl Overrides {
    /// Applies the overrides to `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.server.listen = listen;
        }
        if let Some(cache) = &self.cache {
            config.cache = cache.clone();
        }
        if let Some(dir) = &self.log_dir {
            config.log.dir = Some(dir.clone());
        }
        if let Some(dir) = &self.state_dir {
            config.state.dir = Some(dir.clone());
        }
        if let Some(listen) = &self.admin_listen {
            config.admin.listen = Some(listen.clone());
        }
    }
}

/// A secret from the configuration: `env:NAME` reads the variable NAME;
/// anything else is the secret itself. Empty secrets are refused.
///
/// # Errors
/// A message saying which variable is missing, or that the value is empty.
pub fn resolve_secret(value: &str) -> Result<String, String> {
    let secret = match value.strip_prefix("env:") {
        Some(var) => {
            std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))?
        }
        None => value.to_owned(),
    };
    if secret.is_empty() {
        return Err("the value is empty".into());
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_backend_takes_only_the_keys_it_uses() {
        let refused = |text: &str, says: &str| {
            let e = Config::parse(text, "t").expect_err(text).to_string();
            assert!(e.contains(says), "{e}");
        };
        refused("[state]\nbackend = \"postgres\"\n", "needs `state.url`");
        refused("[state]\nurl = \"postgres://h/db\"\n", "`state.url` is for");
        refused(
            "[state]\nexact_spend = true\n",
            "`state.exact_spend` is for",
        );
        refused(
            "[state]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\ntimeout_ms = 0\n",
            "`state.timeout_ms`",
        );
        refused(
            "[state]\nbackend = \"postgres\"\nurl = \"postgres://h/db\"\nwindow_merge_ms = 0\n",
            "`state.window_merge_ms` must be between 10 and 60000",
        );
        refused("[state]\nbackend = \"mysql\"\n", "unknown variant");
        for bad in ["", "a b", "a\\\"b", &"r".repeat(65)] {
            refused(
                &format!("[state]\nreplica = \"{bad}\"\n"),
                "`state.replica` must be",
            );
        }
        let c = Config::parse(
            "[state]\nbackend = \"postgres\"\nurl = \"env:ARBITER_TEST_PG\"\nexact_spend = true\n",
            "t",
        )
        .expect("parses");
        assert_eq!(c.state.backend, Backend::Postgres);
    }

    #[test]
    fn read_and_parse_errors_keep_their_causes() {
        let e = Config::from_file(Path::new("/nonexistent/arbiter.toml")).expect_err("missing");
        let cause = std::error::Error::source(&e).expect("a source");
        let io = cause
            .downcast_ref::<std::io::Error>()
            .expect("the I/O error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        assert!(e.to_string().contains("/nonexistent/arbiter.toml"), "{e}");

        let e = Config::parse("[server]\nlisten = 5\n", "t.toml").expect_err("bad type");
        let cause = std::error::Error::source(&e).expect("a source");
        assert!(cause.downcast_ref::<toml::de::Error>().is_some());
        assert!(e.to_string().starts_with("configuration `t.toml`: "), "{e}");
        assert!(e.to_string().contains("listen"), "{e}");
    }

    #[test]
    fn oci_settings_that_cannot_work_are_refused() {
        let policy = |source: &str| format!("[[policies]]\nname = \"p\"\n{source}\n");
        for (text, says) in [
            (
                policy("oci = \"r.example/p:1\"\nfile = \"p.wasm\""),
                "exactly one of `file`, `example` and `oci`",
            ),
            (policy("oci = \"R E/p::\""), "is not an OCI reference"),
            (
                "[[oci.registries]]\nhost = \"r.example\"\nusername = \"u\"\n".to_owned(),
                "`username` goes with one of",
            ),
            (
                "[[oci.registries]]\nhost = \"r.example\"\n[[oci.registries]]\nhost = \"r.example\"\n"
                    .to_owned(),
                "configured twice",
            ),
            (
                "[[oci.registries]]\nhost = \"https://r.example/v2\"\n".to_owned(),
                "must be a registry host",
            ),
            ("[oci]\npoll_s = 0\n".to_owned(), "must be at least 1"),
        ] {
            let e = Config::parse(&text, "t.toml").expect_err(says);
            assert!(e.to_string().contains(says), "{e}");
        }
        let ok = Config::parse(
            &policy(
                "oci = \"r.example:5000/policies/p@sha256:0000000000000000000000000000000000000000000000000000000000000000\"",
            ),
            "t.toml",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn identity_and_admin_settings_that_would_open_a_hole_are_refused() {
        let hash = "a".repeat(64);
        let jwt = |key: &str, aud: &str, alg: &str| {
            format!(
                "[{key}]\njwks = \"k.json\"\nissuer = \"https://idp\"\naudience = \"{aud}\"\nalgorithms = [\"{alg}\"]\n"
            )
        };
        for (text, says) in [
            (
                format!(
                    "[[identity.tokens]]\nsha256 = \"{hash}\"\nagent = \"a\"\n[[admin.operators]]\nname = \"o\"\nsha256 = \"{hash}\"\nroles = [\"operator\"]\n"
                ),
                "also another operator's or an agent's",
            ),
            (
                format!(
                    "{}{}",
                    jwt("identity.jwt", "arbiter", "RS256"),
                    jwt("admin.jwt", "arbiter", "RS256")
                ),
                "same issuer and audience",
            ),
            (jwt("identity.jwt", "arbiter", "HS256"), "HS256"),
            (
                format!(
                    "[auth]\ndecide_token = \"t\"\n[[identity.tokens]]\nsha256 = \"{hash}\"\nagent = \"a\"\n"
                ),
                "remove `auth.decide_token`",
            ),
            (
                "[[mcp.servers]]\nname = \"s\"\npass_env = [\"ARBITER_ADMIN_TOKEN\"]\n".to_owned(),
                "ARBITER_ADMIN_TOKEN",
            ),
            (
                "[[identity.tokens]]\nsha256 = \"abc\"\nagent = \"a\"\n".to_owned(),
                "64 hex digits",
            ),
            (
                "[identity.jwt]\njwks = \"http://idp/jwks\"\nissuer = \"i\"\naudience = \"a\"\n"
                    .to_owned(),
                "https://",
            ),
            (
                "[admin.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n".to_owned(),
                "`admin.tls` needs `admin.listen` to be HOST:PORT",
            ),
        ] {
            let e = Config::parse(&text, "t.toml").expect_err(says);
            assert!(e.to_string().contains(says), "{e}");
        }
    }

    #[test]
    fn embedded_default_parses() {
        let c = Config::default_config().expect("default config");
        assert_eq!(c.policies.len(), 5);
        assert!(!c.routes.is_empty());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = Config::parse(
            "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\nsetings = {}\n",
            "t.toml",
        )
        .expect_err("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("t.toml") && msg.contains("line 4") && msg.contains("setings"),
            "{msg}"
        );
    }

    #[test]
    fn route_to_unknown_policy_is_refused() {
        let e = Config::parse(
            "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\n[[routes]]\nchain = [\"a\", \"b\"]\n",
            "t.toml",
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("names policy `b`, which is not configured"),
            "{e}"
        );
    }

    #[test]
    fn bad_listen_address_names_line_and_key() {
        let e = Config::parse("[server]\nlisten = \"localhost\"\n", "t.toml").expect_err("refused");
        let msg = e.to_string();
        assert!(msg.contains("line 2") && msg.contains("listen"), "{msg}");
    }

    #[test]
    fn missing_token_variable_is_named() {
        let e = Config::parse(
            "[auth]\nadmin_token = \"env:ARBITER_TEST_NO_SUCH_VAR\"\n",
            "t.toml",
        )
        .expect_err("refused");
        let msg = e.to_string();
        assert!(
            msg.contains("admin_token")
                && msg.contains("environment variable `ARBITER_TEST_NO_SUCH_VAR` is not set"),
            "{msg}"
        );
    }

    #[test]
    fn restart_only_changes_are_named() {
        let old = Config::default();
        let mut new = Config::default();
        new.routes.push(RouteSpec::all(["x"]));
        new.server.max_body_bytes = 10;
        assert!(old.restart_only_changes(&new).is_empty());
        new.server.listen = "127.0.0.1:1".parse().expect("addr");
        new.engine.max_instances = 3;
        assert_eq!(old.restart_only_changes(&new), ["server.listen", "engine"]);
    }

    #[test]
    fn smoke_samples_and_secrets_parse() {
        // `env:` tokens are resolved in the binary's tests, where setting
        // a variable cannot race other threads.
        let c = Config::parse(
            "[auth]\ndecide_token = \"tok\"\n\
             [[policies]]\nname = \"a\"\nfile = \"a.wasm\"\n\
             [[policies.smoke]]\naction = { kind = \"tool\", name = \"x\", params = { n = 1 } }\nexpect = \"require-approval\"\n",
            "t.toml",
        )
        .expect("parses");
        let token = c.auth.decide_token.as_ref().expect("token");
        assert_eq!(token.expose(), "tok");
        assert_eq!(format!("{token:?}"), "<secret>");
        let sample = &c.policies[0].smoke[0];
        assert_eq!(sample.expect, Outcome::RequireApproval);
        assert_eq!(sample.action.params["n"], 1);
        let e = Config::parse(
            "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\n[[policies.smoke]]\naction = { kind = \"t\", name = \"x\" }\nexpect = \"maybe\"\n",
            "t.toml",
        )
        .expect_err("refused");
        assert!(e.to_string().contains("maybe"), "{e}");
    }

    #[test]
    fn candidates_are_checked() {
        let base = "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\nmode = \"soft-enforce\"\n";
        let c = Config::parse(
            &format!(
                "{base}[[policies.candidates]]\nid = \"v2\"\nrole = \"canary\"\npercent = 12.5\n\
                 [[policies.candidates]]\nid = \"v3\"\nrole = \"shadow\"\nsettings = {{ approval_over = 1 }}\n"
            ),
            "t.toml",
        )
        .expect("parses");
        assert_eq!(c.policies[0].mode, Mode::SoftEnforce);
        assert_eq!(c.policies[0].candidates[0].percent, Some(12.5));
        for (extra, want) in [
            (
                "id = \"v2\"\nrole = \"canary\"\n",
                "a canary needs `percent`",
            ),
            (
                "id = \"v2\"\nrole = \"canary\"\npercent = 0\n",
                "a canary needs `percent`",
            ),
            (
                "id = \"v2\"\nrole = \"shadow\"\npercent = 5\n",
                "`percent` is for canaries",
            ),
            ("id = \"v 2\"\nrole = \"shadow\"\n", "must be 1 to 64"),
            ("id = \"v2\"\nrole = \"both\"\n", "both"),
            (
                "id = \"v2\"\nrole = \"canary\"\npercent = 60\n[[policies.candidates]]\nid = \"v3\"\nrole = \"canary\"\npercent = 50\n",
                "more than 100%",
            ),
            (
                "id = \"v2\"\nrole = \"shadow\"\n[[policies.candidates]]\nid = \"v2\"\nrole = \"shadow\"\n",
                "configured twice",
            ),
        ] {
            let e = Config::parse(&format!("{base}[[policies.candidates]]\n{extra}"), "t.toml")
                .expect_err(extra);
            assert!(e.to_string().contains(want), "{extra}: {e}");
        }
        let e = Config::parse(&base.replace("soft-enforce", "sometimes"), "t.toml")
            .expect_err("refused");
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn telemetry_settings_that_cannot_work_are_refused() {
        for (toml, want) in [
            (
                "[telemetry]\ntraces = true\nendpoint = \"https://otel.example:4317\"\n",
                "TLS to the collector is not supported",
            ),
            ("[telemetry]\nsample_ratio = 1.5\n", "between 0.0 and 1.0"),
            ("[telemetry]\nqueue = 0\n", "must be at least 1"),
            ("[telemetry]\ntrace = true\n", "unknown field"),
        ] {
            let e = Config::parse(toml, "t.toml").expect_err(toml);
            assert!(e.to_string().contains(want), "{toml}: {e}");
        }
        let c = Config::parse("[telemetry]\ntraces = true\n", "t.toml").expect("valid");
        assert!(c.telemetry.enabled() && !Config::default().telemetry.enabled());
    }

    #[test]
    fn file_or_example_not_both() {
        let e = Config::parse(
            "[[policies]]\nname = \"a\"\nfile = \"a.wasm\"\nexample = \"x\"\n",
            "t.toml",
        )
        .expect_err("refused");
        assert!(
            e.to_string()
                .contains("exactly one of `file`, `example` and `oci`"),
            "{e}"
        );
    }
}
