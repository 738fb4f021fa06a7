//! What the benchmarks share: the procurement policy loaded as the server
//! loads it, and the request they time.

use arbiter::decision::{Action, Context, Principal, Request};
use arbiter::engine::Engine;
use arbiter::evaluate::Limits;
use arbiter::load::{self, LoadedPolicy, PolicySpec};
use serde_json::{Value, json};

/// The params of the timed request: an e-mail inside the allowed domain.
pub fn email_params() -> Value {
    json!({"to": ["bob@corp.example", "carol@corp.example"], "subject": "PO 1182"})
}

/// The embedded procurement component, loaded with default settings.
pub fn procurement(engine: &Engine) -> LoadedPolicy {
    procurement_with(engine, json!({}))
}

/// The embedded procurement component, loaded with `settings`.
#[allow(dead_code, reason = "not every bench compares settings")]
pub fn procurement_with(engine: &Engine, settings: Value) -> LoadedPolicy {
    let spec = PolicySpec {
        name: "procurement".into(),
        source: arbiter::examples::source("procurement").expect("embedded"),
        settings,
        limits: Limits::default(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    load::load(engine, None, &spec).expect("load")
}

/// The procurement agent in prod sending that e-mail.
pub fn email_request() -> Request {
    Request {
        trace: None,
        approval_id: None,
        action: Action {
            kind: "tool".into(),
            name: "send_email".into(),
            target: String::new(),
            params: email_params(),
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
