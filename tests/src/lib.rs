//! Helpers for Arbiter's end-to-end tests: the hostile policies built from
//! `hostile/` by `build.rs`, and short ways to load policies and build an
//! [`Arbiter`] the way the server does.

use std::path::Path;
use std::sync::OnceLock;

use arbiter::Arbiter;
use arbiter::decision::{Action, Context, Principal, Request};
use arbiter::engine::{Engine, EngineConfig};
use arbiter::evaluate::Limits;
use arbiter::load::{self, LoadError, LoadedPolicy, PolicySpec, Source};
use arbiter::route::RouteSpec;

/// Paths of the hostile test components.
pub mod artifacts {
    include!(concat!(env!("OUT_DIR"), "/artifacts.rs"));
}

/// The case file copied from `shared/scenarios/cases.json`.
pub const CASES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cases.json");

/// One engine for the whole test binary, as in a real process.
pub fn engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::new(&EngineConfig::default()).expect("engine"))
        .clone()
}

/// Loads the component at `path` as policy `name`.
pub fn load_file(
    name: &str,
    path: impl AsRef<Path>,
    settings: serde_json::Value,
    limits: Limits,
) -> Result<LoadedPolicy, LoadError> {
    let spec = PolicySpec {
        name: name.to_owned(),
        source: Source::File(path.as_ref().to_owned()),
        settings,
        limits,
        smoke: Vec::new(),
        trust: Default::default(),
    };
    load::load(&engine(), None, &spec)
}

/// Loads the embedded example policy `name` with its default settings.
pub fn load_example(name: &str) -> LoadedPolicy {
    let spec = PolicySpec {
        name: name.to_owned(),
        source: arbiter::examples::source(name).expect("embedded example"),
        settings: serde_json::json!({}),
        limits: Limits::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    load::load(&engine(), None, &spec).expect("example loads")
}

/// A route for every action to `chain`.
pub fn route_all(chain: &[&str]) -> RouteSpec {
    RouteSpec::all(chain.iter().copied())
}

/// An arbiter over `policies`, routing everything to them in order.
pub fn arbiter(policies: Vec<LoadedPolicy>) -> Arbiter {
    Arbiter::with_chain(engine(), policies)
}

/// A request from the procurement agent in prod.
pub fn request(kind: &str, name: &str, params: serde_json::Value) -> Request {
    Request {
        approval_id: None,
        trace: None,
        action: Action {
            kind: kind.into(),
            name: name.into(),
            target: String::new(),
            params,
        },
        context: Context {
            agent: Principal {
                id: "procurement-bot".into(),
                roles: vec!["procurement".into()],
            },
            environment: "prod".into(),
            session: "s-1".into(),
            ..Context::default()
        },
        history: Default::default(),
    }
}

/// A loopback port free now and never handed out before in this process:
/// a server that is stopped and started again on its port (a killed
/// database) must not find another test's server there.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A CA of the test's own and a certificate it signs for `name` (a host
/// name or an IP address): the CA, the certificate and its key.
pub fn certificate_for(name: &str) -> (rcgen::Certificate, rcgen::Certificate, rcgen::KeyPair) {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("certificate");
    (ca, cert, key)
}

pub mod binary;
pub mod browser;
pub mod fleet;
pub mod http;
pub mod languages;
pub mod postgres;
pub mod registry;

/// The body of a plain tool call by agent `bot`, for servers whose every
/// route takes it.
pub fn tool_call() -> serde_json::Value {
    serde_json::json!({"action": {"kind": "tool", "name": "x"}, "context": {"agent": {"id": "bot"}}})
}

/// Decides [`tool_call`] over HTTP; fails the test unless it is a 200.
pub fn decide(addr: std::net::SocketAddr) -> serde_json::Value {
    let r = http::post_json(addr, "/v1/decide", &tool_call());
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Writes `bytes` to a temporary file beside `path` and renames it over
/// `path`, as deployment tools do.
pub fn replace_by_rename(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The `data` of every record of type `kind` in the log directory `dir`,
/// in order.
pub fn log_records(dir: &Path, kind: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for segment in arbiter::evidence::log::segments(dir).expect("segments") {
        let text = std::fs::read_to_string(&segment).expect("segment");
        out.extend(
            text.lines()
                .filter_map(|l| arbiter::evidence::record::Parsed::from_line(l.as_bytes()))
                .filter(|p| p.kind == kind)
                .map(|p| p.data().clone()),
        );
    }
    out
}

/// Asserts that `attack` was refused, and says so: the attack suites
/// count these lines (`cargo test --test all -- --nocapture`).
pub fn refused(attack: &str, was_refused: bool, detail: impl std::fmt::Display) {
    assert!(was_refused, "attack NOT refused: {attack}: {detail}");
    println!("attack refused: {attack}");
}

/// Load like `stress --cpu`: threads spinning on every core, at the
/// decisions' own priority, until dropped.
pub struct Burner {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burner {
    /// `per_core` spinning threads for each core of the machine.
    pub fn start(per_core: usize) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = (0..cores * per_core)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..10_000u64 {
                            x = std::hint::black_box(x ^ i.rotate_left(7));
                        }
                    }
                })
            })
            .collect();
        Burner { stop, threads }
    }
}

impl Drop for Burner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// How long a test waits for the server before it fails. Loads compile on
/// threads at nice 10 (so a reload never starves decisions): on a machine
/// kept busy at nice 0, one takes ten times as long as on an idle one, and
/// an idle second becomes ten.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

/// Polls `done` every 5 ms; fails the test after [`PATIENCE`].
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// A named operator with a static token and `roles`, answering for every
/// policy and rule.
pub fn operator(
    name: &str,
    token: &str,
    roles: &[arbiter::config::Role],
) -> arbiter::config::OperatorToken {
    arbiter::config::OperatorToken {
        name: name.into(),
        sha256: arbiter::identity::token_digest(token),
        roles: roles.to_vec(),
        policies: vec!["*".into()],
        rules: vec!["*".into()],
    }
}

/// An external authorizer's configuration: `/admin` paths denied by a
/// policy of their own, every other path decided by `misbehave` on its last
/// segment (`allow`, `deny`, `approve`, `modify`).
pub fn authorizer_config() -> arbiter::config::Config {
    let misbehave = format!("file:{}", artifacts::MISBEHAVE);
    let deny = format!("file:{}", artifacts::VERDICT_DENY);
    let mut config = server_config(&[
        ("misbehave", misbehave.as_str(), serde_json::json!({})),
        ("admin-guard", deny.as_str(), serde_json::json!({})),
    ]);
    config.routes = vec![
        RouteSpec {
            name: "* /admin*".into(),
            ..RouteSpec::all(["admin-guard"])
        },
        RouteSpec::all(["misbehave"]),
    ];
    config
}

/// A configuration serving `policies` (embedded example names, or files
/// given as `name=path`) on one route for everything, on a free loopback
/// port, with no compile cache and a small engine.
pub fn server_config(policies: &[(&str, &str, serde_json::Value)]) -> arbiter::config::Config {
    use arbiter::config::{Config, PolicyConfig};
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.cache.enabled = false;
    config.engine.max_instances = 32;
    for (name, source, settings) in policies {
        let (file, example) = match source.strip_prefix("file:") {
            Some(path) => (Some(path.into()), None),
            None => (None, Some((*source).to_owned())),
        };
        let mut policy = PolicyConfig::new(name, file, example);
        policy.settings = settings.clone();
        config.policies.push(policy);
    }
    let names: Vec<&str> = policies.iter().map(|(n, _, _)| *n).collect();
    config.routes.push(route_all(&names));
    config
}

/// A server on its own runtime, for synchronous tests: drop it, or call
/// [`Server::stop`], to shut it down gracefully.
pub struct Server {
    /// Where the decision plane listens.
    pub addr: std::net::SocketAddr,
    /// Where the admin plane listens: a loopback port, unless the test
    /// configured another `admin.listen` (then this is the decision
    /// plane's address, unused).
    pub admin: std::net::SocketAddr,
    /// The configured `auth.admin_token`, which admin reads present.
    admin_token: Option<String>,
    bound: Option<arbiter::server::Bound>,
    runtime: tokio::runtime::Runtime,
    /// The decision log's directory, unless the test chose one.
    _log: Option<tempfile::TempDir>,
    /// The state directory, unless the test chose one.
    _state: Option<tempfile::TempDir>,
}

impl Server {
    /// Binds without waiting for the policies to load.
    pub fn bind(config: arbiter::config::Config, options: arbiter::server::ServeOptions) -> Self {
        Self::bind_from(config, None, options)
    }

    /// Starts from the configuration file at `path`, which the server then
    /// watches, and waits until every policy has loaded.
    pub fn start_file(path: &Path) -> Self {
        let server = Self::bind_file(path);
        server.ready().expect("ready");
        server
    }

    /// Binds to serve the configuration file at `path`, without waiting
    /// for the first load.
    pub fn bind_file(path: &Path) -> Self {
        let (config, _) = arbiter::config::Config::from_file(path).expect("config");
        Self::bind_from(config, Some(path.to_owned()), Default::default())
    }

    /// Where Envoy's gRPC authorizer listens, when configured.
    pub fn grpc_addr(&self) -> Option<std::net::SocketAddr> {
        self.bound
            .as_ref()
            .and_then(arbiter::server::Bound::grpc_addr)
    }

    /// The registry of what serves, once loaded.
    pub fn registry(&self) -> std::sync::Arc<arbiter::reload::Registry> {
        self.bound
            .as_ref()
            .and_then(arbiter::server::Bound::registry)
            .expect("loaded")
    }

    /// Asks for a reload of everything, as SIGHUP does.
    pub fn reload(&self) {
        if let Some(b) = &self.bound {
            b.reload_handle().reload("sighup");
        }
    }

    fn bind_from(
        config: arbiter::config::Config,
        path: Option<std::path::PathBuf>,
        mut options: arbiter::server::ServeOptions,
    ) -> Self {
        // Each server logs to, and keeps its state in, directories of its
        // own: one process may hold each at a time.
        let log = match (&options.overrides.log_dir, &config.log.dir) {
            (None, None) => {
                let dir = tempfile::tempdir().expect("log dir");
                options.overrides.log_dir = Some(dir.path().to_owned());
                Some(dir)
            }
            _ => None,
        };
        let state = match (&options.overrides.state_dir, &config.state.dir) {
            (None, None) => {
                let dir = tempfile::tempdir().expect("state dir");
                options.overrides.state_dir = Some(dir.path().to_owned());
                Some(dir)
            }
            _ => None,
        };
        let mut config = config;
        if postgres::state_on_postgres() && config.state.backend == arbiter::config::Backend::Redb {
            let base = path
                .as_deref()
                .and_then(Path::parent)
                .unwrap_or(Path::new(""));
            let dir = options
                .overrides
                .state_dir
                .clone()
                .or_else(|| config.state.dir.as_ref().map(|d| base.join(d)))
                .expect("a state directory");
            config.state.backend = arbiter::config::Backend::Postgres;
            config.state.url = Some(postgres::database_for(&dir));
            // A loaded test machine is given seconds.
            config.state.timeout_ms = 5000;
        }
        // The admin plane on a loopback port, so tests reach it with the
        // same raw client; the Unix socket default has tests of its own.
        if options.overrides.admin_listen.is_none() && config.admin.listen.is_none() {
            options.overrides.admin_listen = Some(arbiter::config::AdminListen::Tcp(
                "127.0.0.1:0".parse().expect("addr"),
            ));
        }
        let admin_token = config
            .auth
            .admin_token
            .as_ref()
            .map(|t| t.expose().to_owned());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let bound = runtime
            .block_on(arbiter::server::bind(config, path, options))
            .expect("bind");
        let admin = bound
            .admin_endpoint()
            .tcp()
            .unwrap_or_else(|| bound.local_addr());
        Server {
            addr: bound.local_addr(),
            admin,
            admin_token,
            bound: Some(bound),
            runtime,
            _log: log,
            _state: state,
        }
    }

    /// Binds and waits until every policy has loaded (and, on
    /// PostgreSQL, until the server follows its state).
    pub fn start(config: arbiter::config::Config, options: arbiter::server::ServeOptions) -> Self {
        let server = Self::bind(config, options);
        server.ready().expect("ready");
        server
    }

    /// The `data` of every record of type `kind` in the log this server
    /// writes, when the test left the log directory to it.
    pub fn records(&self, kind: &str) -> Vec<serde_json::Value> {
        let dir = self
            ._log
            .as_ref()
            .expect("a log directory of the server's own");
        log_records(dir.path(), kind)
    }

    /// `GET path` on the admin plane, with the admin token if configured.
    pub fn admin_get(&self, path: &str) -> http::Reply {
        let auth = self.admin_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        http::send(self.admin, "GET", path, &headers, b"")
    }

    /// The first policy's entry in `GET /v1/policies`.
    pub fn policy_status(&self) -> serde_json::Value {
        self.admin_get("/v1/policies").json()["policies"][0].clone()
    }

    /// Waits for the first load.
    pub fn ready(&self) -> Result<(), arbiter::server::ServeError> {
        let bound = self.bound.as_ref().expect("running");
        self.runtime.block_on(bound.ready())
    }

    /// Starts a graceful shutdown without waiting for it.
    pub fn begin_shutdown(&self) {
        if let Some(b) = &self.bound {
            b.shutdown();
        }
    }

    /// Shuts down gracefully and returns how the server ended.
    pub fn stop(mut self) -> Result<(), arbiter::server::ServeError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), arbiter::server::ServeError> {
        match self.bound.take() {
            Some(b) => {
                b.shutdown();
                self.runtime.block_on(b.wait())
            }
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The name and nice value of each thread of this process whose name
/// starts with `prefix` (Linux reads both from `/proc/self/task`).
pub fn thread_priorities(prefix: &str) -> Vec<(String, i32)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with(prefix) {
            continue;
        }
        // A thread may end between the listing and this read.
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // After the parenthesized name: state is field 3, nice field 19.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let nice = after
            .split_whitespace()
            .nth(16)
            .and_then(|n| n.parse().ok())
            .expect("nice");
        found.push((comm.trim().to_owned(), nice));
    }
    found
}
