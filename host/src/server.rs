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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;

use crate::arbiter::{Arbiter, PolicySet, open_cache, specs_from_config};
use crate::config::{Config, resolve_secret};
use crate::engine::Engine;
use crate::evidence::metrics::Metrics;
use crate::front_door::auth::Tokens;
use crate::front_door::http::{self, AppState, HttpOptions, LoadState};
use crate::load::LoadError;
use crate::route::RouteTable;

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A secret named in the configuration is missing.
    #[error("configuration: {0}")]
    Config(String),
    /// The engine could not be built.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// An example policy is missing from this build.
    #[error(transparent)]
    Source(#[from] LoadError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {problem}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        problem: String,
    },
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
}

/// A running server.
pub struct Bound {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: watch::Sender<bool>,
    serve: JoinHandle<()>,
    ready: watch::Receiver<Option<Result<(), String>>>,
}

impl Bound {
    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics registry the server records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// Waits for the first load: `Ok` once every policy is in service.
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
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(ServeError::Load(e.lines().map(str::to_owned).collect())),
            None => Err(ServeError::Internal("no load result".into())),
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
        let Bound {
            stop, serve, ready, ..
        } = self;
        let mut ready_rx = ready.clone();
        let mut stop_rx = stop.subscribe();
        tokio::select! {
            _ = ready_rx.wait_for(|r| matches!(r, Some(Err(_)))) => {}
            () = stopped(&mut stop_rx) => {}
        }
        let _ = stop.send(true);
        serve
            .await
            .map_err(|e| ServeError::Internal(format!("the server task failed: {e}")))?;
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

/// Builds and starts the service for `config` (relative policy files are
/// resolved against `base`).
///
/// # Errors
/// A [`ServeError`] for a missing secret, an engine that cannot be built,
/// a missing example policy or an address that cannot be bound.
pub async fn bind(
    config: Config,
    base: PathBuf,
    options: ServeOptions,
) -> Result<Bound, ServeError> {
    let tokens = Tokens {
        decide: secret(config.auth.decide_token.as_deref(), "auth.decide_token")?,
        admin: secret(config.auth.admin_token.as_deref(), "auth.admin_token")?,
    };
    let specs = specs_from_config(&config, &base)?;
    let engine = Engine::new(&config.engine)?;
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ServeError::Bind {
            addr,
            problem: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| ServeError::Bind {
        addr,
        problem: e.to_string(),
    })?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState::new(
        config,
        tokens,
        Arc::clone(&metrics),
        options.http,
    ));
    let (stop, stop_rx) = watch::channel(false);
    let (ready_tx, ready) = watch::channel(None);

    // The first load, off the reactor.
    let loader_state = Arc::clone(&state);
    let hold = options.hold_load;
    tokio::spawn(async move {
        if let Some(hold) = hold {
            let _ = hold.await;
        }
        let s = Arc::clone(&loader_state);
        let loaded = tokio::task::spawn_blocking(move || {
            let cache = open_cache(&s.config);
            let set = PolicySet::load(
                &engine,
                cache.as_ref(),
                &specs,
                RouteTable::new(s.config.routes.clone()),
            );
            (engine, set)
        })
        .await;
        let result = match loaded {
            Ok((engine, set)) if set.failures().is_empty() => {
                let n = set.policies().count();
                let _ = loader_state
                    .load
                    .set(LoadState::Ready(Arbiter::new(engine, set)));
                loader_state.metrics.set_ready(true);
                tracing::info!(policies = n, "ready");
                Ok(())
            }
            Ok((_, set)) => {
                let errors: Vec<String> =
                    set.failures().values().map(ToString::to_string).collect();
                let _ = loader_state.load.set(LoadState::Failed(errors.join("; ")));
                Err(errors.join("\n"))
            }
            Err(e) => Err(format!("the loader task failed: {e}")),
        };
        let _ = ready_tx.send(Some(result));
    });

    let serve = tokio::spawn(accept_loop(listener, Arc::clone(&state), stop_rx));
    tracing::info!(%addr, "listening");
    Ok(Bound {
        addr,
        state,
        stop,
        serve,
        ready,
    })
}

fn secret(value: Option<&str>, key: &str) -> Result<Option<String>, ServeError> {
    value
        .map(|v| resolve_secret(v).map_err(|e| ServeError::Config(format!("`{key}`: {e}"))))
        .transpose()
}

async fn accept_loop(listener: TcpListener, state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(state.config.server.max_connections));
    let header_timeout = state.config.server.header_timeout();
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
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let state = Arc::clone(&state);
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true)
            .serve_connection(
                TokioIo::new(stream),
                service_fn(move |req| http::handle(Arc::clone(&state), req)),
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
    let grace = state.config.server.shutdown_grace();
    tracing::info!(grace_ms = grace.as_millis() as u64, "draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing the remaining connections");
    }
}
