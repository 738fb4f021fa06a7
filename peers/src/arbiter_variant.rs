//! Arbiter as a gateway embeds it: the procurement component loaded by the
//! load pipeline, decided through `Arbiter::decide` on a fresh instance
//! per call with fuel, deadline and memory cap on.

use std::sync::OnceLock;

use arbiter::Arbiter;
use arbiter::engine::{Engine, EngineConfig};
use arbiter::evaluate::Limits;
use arbiter::front_door::wire;
use arbiter::load::{self, PolicySpec};
use serde_json::Value;

use crate::{Answer, Decider};

struct Embedded(Arbiter);

/// The default engine (spare instances made ahead on its background
/// thread), one per process, as in a real one.
fn engine() -> Result<Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::new(&EngineConfig::default()).map_err(|e| e.to_string()))
        .clone()
}

/// An engine with `spare_instances = 0`: every decision instantiates on
/// its own path, and no background thread competes for the cores.
fn inline_engine() -> Result<Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let config = EngineConfig {
                spare_instances: 0,
                ..EngineConfig::default()
            };
            Engine::new(&config).map_err(|e| e.to_string())
        })
        .clone()
}

pub(crate) fn load(settings: &Value) -> Result<Box<dyn Decider>, String> {
    load_on(engine()?, settings)
}

pub(crate) fn load_inline(settings: &Value) -> Result<Box<dyn Decider>, String> {
    load_on(inline_engine()?, settings)
}

fn load_on(engine: Engine, settings: &Value) -> Result<Box<dyn Decider>, String> {
    let spec = PolicySpec {
        name: "procurement".into(),
        source: arbiter::examples::source("procurement")
            .ok_or("the procurement example is not embedded")?,
        settings: settings.clone(),
        limits: Limits::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let policy = load::load(&engine, None, &spec).map_err(|e| e.to_string())?;
    Ok(Box::new(Embedded(Arbiter::with_chain(
        engine,
        vec![policy],
    ))))
}

impl Decider for Embedded {
    fn decide(&mut self, wire: &str) -> Result<Answer, String> {
        let request = wire::parse_request(wire.as_bytes()).map_err(|e| e.to_string())?;
        let d = self.0.decide(&request);
        Ok(Answer {
            outcome: d.outcome.as_str().to_owned(),
            rule: d.rule,
            risk: d.risk,
        })
    }
}
