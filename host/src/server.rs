//! The decision service: configuration → engine → bind → load → serve →
//! drain.
//!
//! [`bind`] validates what it can before touching the network, builds the
//! engine, binds the listener and returns a [`Bound`] handle with the real
//! address at once; the first load of the policies runs in the background,
//! so `/healthz` answers while `/readyz` says 503 until every configured
//! policy has loaded. A policy that fails its first load is fatal:
//! [`Bound::wait`] returns the error and the server stops, rather than
//! serve with a policy missing. [`Bound::shutdown`] stops accepting, lets
//! in-flight requests finish within the grace period, then returns.
//!
//! The decision log ([`crate::evidence::log`]) is opened before anything
//! binds, so a log that cannot be opened stops the start, and it is sealed
//! with a checkpoint after the drain and after the shadow queue
//! ([`crate::shadow`]) has finished what it holds.
//!
//! Once loaded, a reload worker ([`crate::reload::watch`]) follows the
//! policy files and the configuration file, and [`ReloadHandle::reload`] (SIGHUP)
//! reloads everything.
//!
//! Two listeners: the decision plane on `server.listen`
//! ([`crate::front_door::http`]) and the admin plane on `admin.listen`
//! ([`crate::front_door::admin`]), by default a Unix socket, mode 0600, in
//! the state directory. Neither serves the other's paths.

mod grpc;
mod io;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use crate::approvals::Approvals;
use crate::config::{AdminListen, Config, Overrides};
use crate::engine::Engine;
use crate::enrich::Agents;
use crate::enrich::flow::Flows;
use crate::enrich::pins::Pins;
use crate::evidence::log::{self, DecisionLog, LogError};
use crate::evidence::metrics::Metrics;
use crate::fleet;
use crate::front_door::http::{self, AppState, HttpOptions, LoadState, Service};
use crate::load::LoadError;
use crate::reload::Registry;
pub use crate::reload::watch::ReloadHandle;
use crate::reload::watch::Watcher;
use crate::set::{check_examples, open_cache};
use crate::state::{self, StoreError};
use crate::telemetry::Telemetry;
use crate::time::{Clock, SystemClock};

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// An example policy is missing from this build.
    #[error(transparent)]
    Source(#[from] LoadError),
    /// The decision log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The OTLP exporter.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// The durable state could not be opened.
    #[error(transparent)]
    State(#[from] StoreError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The admin plane's listener could not be made.
    #[error("cannot serve the admin plane on {listen}: {source}")]
    AdminBind {
        /// Where it was to listen.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The admin plane's certificate or key could not be used.
    #[error("cannot serve the admin plane over TLS: {0}")]
    AdminTls(String),
    /// Policies failed their first load; each error names policy and step.
    #[error("{} of the configured policies failed to load:\n  {}", .0.len(), .0.join("\n  "))]
    Load(Vec<String>),
    /// A background task died.
    #[error("internal: {0}")]
    Internal(String),
}

/// Hooks for tests and embedders; the `arbiter` binary uses the defaults.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// HTTP options (test-only history).
    pub http: HttpOptions,
    /// When set, the first load waits until this fires, so a test can see
    /// the server alive but not ready.
    pub hold_load: Option<oneshot::Receiver<()>>,
    /// What the command line changes in the configuration, at start and
    /// on every reload.
    pub overrides: Overrides,
    /// The clock agent windows run on; default: the system clock.
    pub clock: Option<ClockHandle>,
}

/// A clock for [`ServeOptions`], so tests can move time.
#[derive(Clone)]
pub struct ClockHandle(pub Arc<dyn Clock>);

impl std::fmt::Debug for ClockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClockHandle")
    }
}

/// Where the admin plane listens, once bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminEndpoint {
    /// A Unix socket (mode 0600).
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
    /// A TCP address, over TLS (`admin.tls`).
    Tls(SocketAddr),
}

impl AdminEndpoint {
    /// The TCP address, when it is one.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            AdminEndpoint::Tcp(a) | AdminEndpoint::Tls(a) => Some(*a),
            AdminEndpoint::Unix(_) => None,
        }
    }
}

impl std::fmt::Display for AdminEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminEndpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            AdminEndpoint::Tcp(a) => write!(f, "http://{a}"),
            AdminEndpoint::Tls(a) => write!(f, "https://{a}"),
        }
    }
}

/// A running server.
pub struct Bound {
    addr: SocketAddr,
    admin: AdminEndpoint,
    /// Where Envoy's gRPC authorizer listens, if it is served.
    grpc: Option<SocketAddr>,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    serve: JoinHandle<()>,
    ready: watch::Receiver<Option<Result<(), String>>>,
    reloader: ReloadHandle,
    log: Option<Arc<DecisionLog>>,
    telemetry: Option<Telemetry>,
    feed: Arc<state::Feed>,
}

impl Bound {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin plane listens.
    pub fn admin_endpoint(&self) -> &AdminEndpoint {
        &self.admin
    }

    /// Where Envoy's gRPC authorizer listens (`authorizer.grpc_listen`).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc
    }

    /// The metrics registry the server records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// Waits for the first load: `Ok` once every policy is in service
    /// and, for a replica of a fleet, once it follows the shared state
    /// (until then it could only deny, `failure.state`).
    ///
    /// # Errors
    /// [`ServeError::Load`] with each policy's error.
    pub async fn ready(&self) -> Result<(), ServeError> {
        let mut rx = self.ready.clone();
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ServeError::Internal("the loader ended without a result".into()))?
            .clone();
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(ServeError::Load(e.lines().map(str::to_owned).collect())),
            None => return Err(ServeError::Internal("no load result".into())),
        }
        let started = std::time::Instant::now();
        let mut said = false;
        while self.feed.lost_since().is_some() {
            if !said && started.elapsed() > Duration::from_secs(2) {
                tracing::warn!(
                    "waiting to follow the shared state; until then every decision is denied (`failure.state`)"
                );
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// A handle to ask for reloads (SIGHUP) while [`Bound::wait`] runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reloader.clone()
    }

    /// The registry of what serves, once the first load has finished.
    pub fn registry(&self) -> Option<Arc<Registry>> {
        match self.state.load.get() {
            Some(LoadState::Ready(r)) => Some(Arc::clone(r)),
            _ => None,
        }
    }

    /// Stops accepting connections; in-flight requests get the grace period.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Runs until [`Bound::shutdown`] has drained the server, or until the
    /// first load fails.
    ///
    /// # Errors
    /// [`ServeError::Load`] when the first load failed.
    pub async fn wait(self) -> Result<(), ServeError> {
        let registry = self.registry();
        let Bound {
            stop,
            serve,
            ready,
            reloader,
            log,
            telemetry,
            state,
            ..
        } = self;
        let mut ready_rx = ready.clone();
        let mut stop_rx = stop.subscribe();
        tokio::select! {
            _ = ready_rx.wait_for(|r| matches!(r, Some(Err(_)))) => {}
            () = stopped(&mut stop_rx) => {}
        }
        let _ = stop.send(true);
        let served = serve.await;
        // Stop following files: the worker finishes a reload under way.
        let worker = reloader.take();
        drop(worker);
        // Shadow comparisons queued finish, and log their divergences; the
        // day's spend is saved for the next start.
        if let Some(registry) = registry {
            let _ = tokio::task::spawn_blocking(move || {
                let arbiter = registry.arbiter();
                if let Some(shadow) = arbiter.shadow_if_started() {
                    shadow.close();
                }
                if let Some(Err(e)) = arbiter.agents().map(|a| a.save_spend()) {
                    tracing::error!(error = %e, "the day's spend could not be saved");
                }
            })
            .await;
        }
        // Every answered decision is written; seal the log with a checkpoint.
        if let Some(log) = log {
            let _ = tokio::task::spawn_blocking(move || log.close()).await;
        }
        // Then what is queued for the collector, the log's last records
        // (its checkpoint) included, within the grace period.
        if let Some(t) = telemetry {
            let grace = state.service.load().config.server.shutdown_grace();
            let _ = tokio::task::spawn_blocking(move || t.shutdown(grace)).await;
        }
        served.map_err(|e| ServeError::Internal(format!("the server task failed: {e}")))?;
        // A failed first load is the outcome, however the server stopped.
        let outcome = ready.borrow().clone();
        match outcome {
            Some(Err(e)) => Err(ServeError::Load(e.lines().map(str::to_owned).collect())),
            _ => Ok(()),
        }
    }
}

/// Resolves once `stop` says true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Builds and starts the service for `config`, read from `config_path`
/// (`None`: the embedded default). Relative policy files are resolved
/// against the configuration file's directory.
///
/// # Errors
/// A [`ServeError`] for an engine that cannot be built, a missing example
/// policy or an address that cannot be bound.
pub async fn bind(
    mut config: Config,
    config_path: Option<PathBuf>,
    options: ServeOptions,
) -> Result<Bound, ServeError> {
    options.overrides.apply(&mut config);
    let base = config_path
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_owned)
        .unwrap_or_default();
    // Refuse a missing example policy before binding.
    check_examples(&config)?;
    let engine = Engine::new(&config.engine)?;
    let metrics = Arc::new(Metrics::new());
    let state_dir = state::resolve_dir(&config.state, &base).ok_or(StoreError::NoDirectory)?;
    let replica = state::replica(&config.state, &state_dir)?;
    if let Some(name) = &replica {
        tracing::info!(replica = %name, "a replica of a fleet");
    }
    let log = if config.log.enabled {
        let mut log_config = config.log.clone();
        if log_config.checkpoint_key.is_none() {
            log_config.checkpoint_key = Some(log::default_checkpoint_key(&state_dir)?);
        }
        log_config.replica = replica;
        Some(Arc::new(DecisionLog::open(
            &log_config,
            &base,
            Some(Arc::clone(&metrics)),
        )?))
    } else {
        tracing::warn!(
            "the decision log is off (`log.enabled = false`): decisions leave no record"
        );
        None
    };
    let telemetry = Telemetry::start(&config.telemetry)?;
    if let Some(t) = &telemetry {
        metrics.set_otlp(Arc::clone(t.counters()));
        if let Some(log) = &log {
            log.export_to(t.clone());
        }
    }
    let clock = options
        .clock
        .map_or_else(|| Arc::new(SystemClock) as Arc<dyn Clock>, |c| c.0);
    let store = state::from_config(&config.state, &base, &state_dir)?;
    let canary_path = state_dir.join(CANARY_KEY);
    let canary_key =
        crate::paths::secret_key(&canary_path).map_err(|source| StoreError::Database {
            path: canary_path,
            what: "the canary key",
            source: Box::new(source),
        })?;
    let flows = if config.flow.enabled {
        let path = config
            .flow
            .key_file
            .as_ref()
            .map_or_else(|| state_dir.join(FLOW_KEY), |f| base.join(f));
        let key = crate::paths::secret_key(&path).map_err(|source| StoreError::Database {
            path,
            what: "the flow key",
            source: Box::new(source),
        })?;
        Some(Arc::new(Flows::open(
            config.flow.clone(),
            &key,
            Some(Arc::clone(&store.flows)),
            store.feed().is_shared(),
            Arc::clone(&clock),
        )?))
    } else {
        None
    };
    let mut agents = Agents::durable(
        config.agents.clone(),
        Arc::clone(&clock),
        Arc::clone(&store.agents),
    )?
    .with_metrics(Arc::clone(&metrics));
    if let (Some(spend), Some(windows)) = (&store.shared_spend, &store.shared_windows) {
        agents = agents.with_fleet(crate::enrich::Shared {
            spend: Arc::clone(spend),
            windows: Arc::clone(windows),
            exact_spend: config.state.exact_spend,
            feed: Arc::clone(store.feed()),
            max_staleness_ms: config.state.max_staleness_ms,
        });
    }
    let mut approvals = Approvals::open(
        Some(Arc::clone(&store.approvals)),
        clock,
        Duration::from_secs(config.approvals.ttl_s),
        Duration::from_secs(config.approvals.keep_s),
    )?
    .with_rules(config.approvals.rules.clone())
    .with_limits(crate::approvals::Limits::of(&config.approvals));
    if store.feed().is_shared() {
        approvals = approvals.shared();
    }
    if let Some(log) = &log {
        agents = agents.with_log(Arc::clone(log));
        approvals = approvals.with_log(Arc::clone(log));
    }
    let mut pins = Pins::open(Some(Arc::clone(&store.pins)))?
        .with_max_per_server(config.mcp.max_pins_per_server);
    if let Some(log) = &log {
        pins = pins.with_log(Arc::clone(log));
    }
    let pins = Arc::new(pins);
    // Everything stored has been read back by now.
    if store.undecodable() > 0 {
        tracing::error!(
            entries = store.undecodable(),
            "stored entries did not decode; each was failed closed on"
        );
    }
    metrics.set_state_undecodable(store.undecodable());
    let agents = Arc::new(agents);
    let approvals = Arc::new(approvals);
    let approvals_for_sweep = Arc::clone(&approvals);
    let agents_for_save = Arc::clone(&agents);
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let admin_listen = config
        .admin
        .listen
        .clone()
        .unwrap_or_else(|| AdminListen::Unix(state_dir.join(ADMIN_SOCKET)));
    let (admin_listener, admin) =
        bind_admin(&admin_listen, config.admin.tls.as_ref(), &base).await?;
    warn_if_open(&config, addr, &admin);
    let grpc_listener = match config.authorizer.grpc_listen {
        Some(at) => {
            let l = TcpListener::bind(at)
                .await
                .map_err(|source| ServeError::Bind { addr: at, source })?;
            Some(l)
        }
        None => None,
    };
    let grpc_addr = match &grpc_listener {
        Some(l) => Some(l.local_addr().map_err(|source| ServeError::Bind {
            addr: config.authorizer.grpc_listen.unwrap_or(addr),
            source,
        })?),
        None => None,
    };
    let config = Arc::new(config);
    let console_config = config.console.clone();
    let state = Arc::new(AppState::new(
        Arc::clone(&config),
        base.clone(),
        Arc::clone(&metrics),
        options.http,
    ));
    let (stop, stop_rx) = watch::channel(false);
    // A replica of a fleet follows the others' changes, and merges its
    // windows with theirs until its decisions have drained.
    let mut merging = None;
    if store.feed().is_shared() {
        let replica = fleet::Replica {
            agents: Arc::clone(&agents),
            approvals: Arc::clone(&approvals),
            pins: Arc::clone(&pins),
            metrics: Some(Arc::clone(&metrics)),
        };
        let mut follow_stop = stop.subscribe();
        tokio::spawn(fleet::follow(store.clone(), replica, async move {
            stopped(&mut follow_stop).await;
        }));
        let (drained, merge_stop) = oneshot::channel::<()>();
        let task = tokio::spawn(fleet::merge(
            Arc::clone(&agents),
            Duration::from_millis(config.state.window_merge_ms),
            async move {
                let _ = merge_stop.await;
            },
        ));
        merging = Some((drained, task));
    }
    let (ready_tx, ready) = watch::channel(None);
    let reloader = state.reloader.clone();

    // The first load, off the reactor.
    let loader_state = Arc::clone(&state);
    let loader_reloader = reloader.clone();
    let hold = options.hold_load;
    let overrides = options.overrides;
    let loader_log = log.clone();
    let loader_telemetry = telemetry.clone();
    let mut poll_stop = stop.subscribe();
    tokio::spawn(async move {
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        let loaded = tokio::task::spawn_blocking(move || {
            let cache = open_cache(&config);
            Registry::load(engine, cache, (*config).clone(), config_path, base)
        })
        .await;
        let result = match loaded {
            Ok(Ok(registry)) => {
                let service = Arc::clone(&loader_state.service);
                let service_base = loader_state.base.clone();
                let registry = match loader_log {
                    Some(log) => registry.with_log(log),
                    None => registry,
                }
                .with_arbiter(|a| {
                    let a = a
                        .with_agents(agents)
                        .with_approvals(approvals)
                        .with_pins(pins)
                        .with_canary_key(canary_key);
                    let a = match flows {
                        Some(f) => a.with_flows(f),
                        None => a,
                    };
                    match loader_telemetry {
                        Some(t) => a.with_telemetry(t),
                        None => a,
                    }
                });
                let registry = Arc::new(
                    registry
                        .with_metrics(Arc::clone(&loader_state.metrics))
                        .with_overrides(overrides)
                        .on_config(Box::new(move |config| {
                            service
                                .store(Arc::new(Service::new(Arc::clone(config), &service_base)));
                        })),
                );
                let n = registry.arbiter().policy_set().policies().count();
                match Watcher::start(Arc::clone(&registry)) {
                    Ok(w) => loader_reloader.install(w),
                    Err(e) => tracing::error!(error = %e, "no hot reload"),
                }
                tokio::spawn(crate::reload::oci::poll(
                    Arc::clone(&registry),
                    async move {
                        stopped(&mut poll_stop).await;
                    },
                ));
                let _ = loader_state.load.set(LoadState::Ready(registry));
                loader_state.metrics.set_ready(true);
                tracing::info!(policies = n, "ready");
                Ok(())
            }
            Ok(Err(errors)) => {
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                let _ = loader_state.load.set(LoadState::Failed(errors.join("; ")));
                Err(errors.join("\n"))
            }
            Err(e) => Err(format!("the loader task failed: {e}")),
        };
        let _ = ready_tx.send(Some(result));
    });

    // Every second: approvals nobody answered expire on time (and wake
    // their waiters), idle agents are forgotten, and the day's spend is
    // saved if it changed.
    let sweeper = Arc::clone(&approvals_for_sweep);
    let spender = Arc::clone(&agents_for_save);
    let mut sweep_stop = stop.subscribe();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let (a, g) = (Arc::clone(&sweeper), Arc::clone(&spender));
                    let _ = tokio::task::spawn_blocking(move || {
                        a.expire_due();
                        g.evict_idle();
                        if let Err(e) = g.save_spend() {
                            tracing::warn!(error = %e, "the day's spend could not be saved; retrying");
                        }
                    })
                    .await;
                }
                () = stopped(&mut sweep_stop) => break,
            }
        }
    });
    let console = console_config.enabled.then(|| {
        let samples = Arc::new(crate::console::samples::Samples::new());
        let mut samples_stop = stop.subscribe();
        tokio::spawn(crate::console::samples::run(
            Arc::clone(&state.metrics),
            Arc::clone(&samples),
            async move { stopped(&mut samples_stop).await },
        ));
        Arc::new(crate::console::Console::new(
            &console_config,
            admin.tcp(),
            matches!(admin, AdminEndpoint::Tls(_)),
            samples,
            stop.subscribe(),
        ))
    });
    let admin_serve = tokio::spawn(admin_loop(
        admin_listener,
        Arc::clone(&state),
        console,
        stop.subscribe(),
    ));
    let grpc_serve =
        grpc_listener.map(|l| tokio::spawn(grpc::serve(l, Arc::clone(&state), stop.subscribe())));
    let decisions = tokio::spawn(accept_loop(listener, Arc::clone(&state), stop_rx));
    let serve = tokio::spawn(async move {
        let _ = decisions.await;
        let _ = admin_serve.await;
        if let Some(g) = grpc_serve {
            let _ = g.await;
        }
        if let Some((drained, task)) = merging {
            let _ = drained.send(());
            let _ = task.await;
        }
    });
    tracing::info!(%addr, admin = %admin, grpc_authorizer = ?grpc_addr, "listening");
    Ok(Bound {
        addr,
        admin,
        grpc: grpc_addr,
        state,
        stop,
        serve,
        ready,
        reloader,
        log,
        telemetry,
        feed: Arc::clone(store.feed()),
    })
}

/// The admin socket's file name in the state directory.
pub const ADMIN_SOCKET: &str = "admin.sock";
/// The file name in the state directory of the key session flow
/// fingerprints are made with, unless `[flow] key_file` names another.
pub const FLOW_KEY: &str = "flow.key";

/// The canary key's file name in the state directory.
pub const CANARY_KEY: &str = "canary.key";

/// A bound admin listener.
enum AdminListener {
    Unix(UnixListener),
    /// With the acceptor that wraps each connection in TLS, if configured.
    Tcp(TcpListener, Option<tokio_rustls::TlsAcceptor>),
}

/// Binds the admin plane: a Unix socket that is owner-only before anyone
/// can reach it, or a TCP address, with TLS when `tls` says so.
async fn bind_admin(
    listen: &AdminListen,
    tls: Option<&crate::config::ServerTls>,
    base: &Path,
) -> Result<(AdminListener, AdminEndpoint), ServeError> {
    let fail = |source| ServeError::AdminBind {
        listen: listen.to_string(),
        source,
    };
    match listen {
        AdminListen::Tcp(addr) => {
            // The certificate is read before the port opens, so a bad one
            // never leaves a listener that cannot finish a handshake.
            let acceptor = match tls {
                Some(t) => {
                    let config = crate::tls::server_config(
                        &base.join(&t.cert_file),
                        &base.join(&t.key_file),
                    )
                    .map_err(ServeError::AdminTls)?;
                    Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
                }
                None => None,
            };
            let l = TcpListener::bind(addr).await.map_err(fail)?;
            let bound = l.local_addr().map_err(fail)?;
            let endpoint = match acceptor {
                Some(_) => AdminEndpoint::Tls(bound),
                None => AdminEndpoint::Tcp(bound),
            };
            Ok((AdminListener::Tcp(l, acceptor), endpoint))
        }
        AdminListen::Unix(_) if tls.is_some() => Err(ServeError::AdminTls(
            "`admin.tls` is set but the admin plane listens on a Unix socket (`--admin-listen`?); give it HOST:PORT".into(),
        )),
        AdminListen::Unix(path) => {
            let path = base.join(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                crate::paths::create_private_dir(dir).map_err(fail)?;
            }
            // A socket left by a server that died is replaced; a live one
            // answers, and is not taken over.
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(fail(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another server answers on this socket",
                )));
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                    std::fs::remove_file(&path).map_err(fail)?;
                }
                Ok(_) => {
                    return Err(fail(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "a file that is not a socket is in the way",
                    )));
                }
                Err(_) => {}
            }
            // Owner-only from the moment anyone could reach it: bound in a
            // fresh directory only this user can enter, made 0600 there,
            // then moved into place.
            let nest = path.with_file_name(format!(".admin-{}.d", std::process::id()));
            let _ = std::fs::remove_dir_all(&nest);
            crate::paths::create_private_dir(&nest).map_err(fail)?;
            let inner = nest.join("s");
            let bound = (|| {
                let l = UnixListener::bind(&inner)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
                std::fs::rename(&inner, &path)?;
                Ok(l)
            })();
            let _ = std::fs::remove_dir_all(&nest);
            let l = bound.map_err(fail)?;
            Ok((AdminListener::Unix(l), AdminEndpoint::Unix(path)))
        }
    }
}

/// Says so at start when a plane listens beyond loopback and asks no
/// credential at all.
fn warn_if_open(config: &Config, addr: SocketAddr, admin: &AdminEndpoint) {
    let open = !config.identity.enabled() && config.auth.decide_token.is_none();
    if open && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the decision plane listens beyond loopback and asks no credential: anyone who reaches it decides as any agent; configure `[identity]` or `auth.decide_token`");
    }
    if let Some(a) = admin.tcp()
        && !a.ip().is_loopback()
        && !config.admin.has_operators()
        && config.auth.admin_token.is_none()
    {
        tracing::warn!(admin = %a, "the admin plane listens beyond loopback with no operator credential: anyone who reaches it reads every approval and agent");
    }
}

/// An accepted admin connection.
enum Conn {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream, Option<tokio_rustls::TlsAcceptor>),
}

/// Serves the admin plane until `stop`, then drains it.
async fn admin_loop(
    listener: AdminListener,
    state: Arc<AppState>,
    console: Option<Arc<crate::console::Console>>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            a = async {
                match &listener {
                    AdminListener::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
                    AdminListener::Tcp(l, tls) => {
                        l.accept().await.map(|(s, _)| Conn::Tcp(s, tls.clone()))
                    }
                }
            } => a,
            () = stopped(&mut stop) => break,
        };
        let stream = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let header_timeout = state.service.load().config.server.header_timeout();
        let write_timeout = state.service.load().config.server.write_timeout();
        let state = Arc::clone(&state);
        let console = console.clone();
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (state, console) = (Arc::clone(&state), console.clone());
            async move {
                match console {
                    Some(c) if crate::console::is_console_path(req.uri().path()) => {
                        crate::console::serve(c, state, req).await
                    }
                    _ => crate::front_door::admin::serve(state, req)
                        .await
                        .map(|r| r.map(|b| b.map_err(|never| match never {}).boxed())),
                }
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        match stream {
            Conn::Unix(s) => {
                let s = io::WriteTimeout::new(s, write_timeout);
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(s), service));
                tokio::spawn(conn);
            }
            Conn::Tcp(s, None) => {
                let s = io::WriteTimeout::new(s, write_timeout);
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(s), service));
                tokio::spawn(conn);
            }
            Conn::Tcp(s, Some(acceptor)) => {
                let s = io::WriteTimeout::new(s, write_timeout);
                let watcher = graceful.watcher();
                // The handshake runs in the connection's task, bounded like
                // the request head, so a client that never finishes one
                // holds neither the accept loop nor a task for long.
                tokio::spawn(async move {
                    let s = match tokio::time::timeout(header_timeout, acceptor.accept(s)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("admin TLS handshake timed out");
                            return;
                        }
                    };
                    let _ = watcher
                        .watch(builder.serve_connection(TokioIo::new(s), service))
                        .await;
                });
            }
        }
    }
    if let AdminListener::Unix(l) = &listener
        && let Ok(addr) = l.local_addr()
        && let Some(path) = addr.as_pathname()
    {
        let _ = std::fs::remove_file(path);
    }
    drop(listener);
    let grace = state.service.load().config.server.shutdown_grace();
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

async fn accept_loop(listener: TcpListener, state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(
        state.service.load().config.server.max_connections,
    ));
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let header_timeout = state.service.load().config.server.header_timeout();
        let write_timeout = state.service.load().config.server.write_timeout();
        let state = Arc::clone(&state);
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(io::WriteTimeout::new(stream, write_timeout)),
                service_fn(move |req| http::serve(Arc::clone(&state), req)),
            );
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = state.service.load().config.server.shutdown_grace();
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}

#[cfg(all(test, feature = "example-policies"))]
mod tests {
    use super::*;
    use crate::decision::{Action, Context, Outcome, Principal, Request};

    /// The embedded default configuration on a free loopback port, with
    /// its state and log in `dir` and no compile cache.
    fn config(dir: &Path) -> Config {
        let mut config = Config::default_config().expect("default");
        config.server.listen = "127.0.0.1:0".parse().expect("addr");
        config.state.dir = Some(dir.join("state"));
        config.log.dir = Some(dir.join("log"));
        config.cache.enabled = false;
        config
    }

    fn transfer(amount: u64) -> Request {
        Request {
            trace: None,
            action: Action {
                kind: "tool".into(),
                name: "payments.transfer".into(),
                target: String::new(),
                params: serde_json::json!({"amount": amount}),
            },
            context: Context {
                agent: Principal {
                    id: "procurement-bot".into(),
                    roles: vec!["procurement".into()],
                },
                ..Context::default()
            },
            history: Default::default(),
            approval_id: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bound_server_loads_decides_through_its_registry_and_drains() {
        let dir = tempfile::tempdir().expect("dir");
        let bound = bind(config(dir.path()), None, ServeOptions::default())
            .await
            .expect("bound");
        assert!(bound.local_addr().ip().is_loopback());
        bound.ready().await.expect("ready");
        let registry = bound.registry().expect("loaded");
        let d = registry.arbiter().decide_async(transfer(120)).await;
        assert_eq!(d.outcome, Outcome::Allow, "{}", d.reason);
        // The server's arbiter counts and logs what it decides.
        assert!(bound.metrics().render().contains("arbiter_decisions_total"));
        bound.shutdown();
        tokio::time::timeout(Duration::from_secs(30), bound.wait())
            .await
            .expect("drained in time")
            .expect("clean stop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_address_in_use_is_refused_with_the_os_error_as_its_cause() {
        let dir = tempfile::tempdir().expect("dir");
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut config = config(dir.path());
        config.server.listen = taken.local_addr().expect("addr");
        let Err(e) = bind(config, None, ServeOptions::default()).await else {
            panic!("bound to an address in use")
        };
        let ServeError::Bind { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_state_directory_that_cannot_be_made_stops_the_start() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").expect("write");
        let mut config = config(dir.path());
        config.state.dir = Some(file.join("state"));
        let Err(e) = bind(config, None, ServeOptions::default()).await else {
            panic!("started without its state")
        };
        // The first thing made there is the log's checkpoint key.
        assert!(
            matches!(
                e,
                ServeError::State(_) | ServeError::Log(LogError::Key { .. })
            ),
            "{e}"
        );
        assert!(e.to_string().contains("a-file"), "{e}");
    }
}
