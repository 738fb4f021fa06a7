//! Helpers for Arbiter's end-to-end tests: the hostile policies built from
//! `hostile/` by `build.rs`, and short ways to load policies and build an
//! [`Arbiter`] the way the server does.

use std::path::Path;
use std::sync::OnceLock;

use arbiter::decision::{Action, Context, Principal, Request};
use arbiter::engine::{Engine, EngineConfig};
use arbiter::evaluate::Limits;
use arbiter::load::{self, LoadError, LoadedPolicy, PolicySpec, Source};
use arbiter::route::{RouteSpec, RouteTable};
use arbiter::{Arbiter, PolicySet};

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
    };
    load::load(&engine(), None, &spec).expect("example loads")
}

/// A route for every action to `chain`.
pub fn route_all(chain: &[&str]) -> RouteSpec {
    RouteSpec {
        kind: "*".into(),
        name: "*".into(),
        agent: "*".into(),
        chain: chain.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// An arbiter over `policies`, routing everything to them in order.
pub fn arbiter(policies: Vec<LoadedPolicy>) -> Arbiter {
    let chain: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
    let chain: Vec<&str> = chain.iter().map(String::as_str).collect();
    let routes = RouteTable::new(vec![route_all(&chain)]);
    Arbiter::new(engine(), PolicySet::from_loaded(policies, routes))
}

/// A request from the procurement agent in prod.
pub fn request(kind: &str, name: &str, params: serde_json::Value) -> Request {
    Request {
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
