//! The procurement policy of `shared/scenarios/POLICIES.md` decided four
//! ways: natively in Rust, by Arbiter (a wasm component on a fresh
//! instance with every limit on), by Cedar and by Rego (regorus's
//! interpreter and its RVM). Each starts from the same wire JSON per call.
//!
//! A variant is only worth timing if it decides right: [`check`] runs it
//! on every procurement case of `tests/cases.json` and lists each case it
//! answers with the wrong outcome, rule or risk. The benchmark
//! (`benches/peers.rs`) refuses to time a variant with any, and the tests
//! (`tests/answers.rs`) fail on one.

mod arbiter_variant;
mod cedar;
mod native;
mod rego;

use serde_json::Value;

/// What a decision comes to, for comparing engines: the outcome, the
/// deciding rule and the risk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// `allow`, `deny`, `require-approval` or `modify`.
    pub outcome: String,
    /// The rule id, e.g. `email.external-recipient`.
    pub rule: String,
    /// 0 to 100.
    pub risk: u8,
}

/// One engine with the policy loaded, deciding wire JSON.
pub trait Decider {
    /// Decides one request given as wire JSON (`action`, `context`,
    /// `history`).
    ///
    /// # Errors
    /// The engine's own, when it cannot decide at all.
    fn decide(&mut self, wire: &str) -> Result<Answer, String>;
}

/// An engine and how to load the policy into it with given settings (the
/// overrides of a case, over the policy's defaults).
pub struct Variant {
    /// How the table names it.
    pub name: &'static str,
    /// Loads the policy with `settings`.
    pub load: fn(&Value) -> Result<Box<dyn Decider>, String>,
}

/// The variants, in the order the table prints them.
pub fn variants() -> Vec<Variant> {
    vec![
        Variant {
            name: "native Rust",
            load: native::load,
        },
        Variant {
            name: "Arbiter (wasm, fresh instance)",
            load: arbiter_variant::load,
        },
        Variant {
            name: "Arbiter, no spares (instantiated inline)",
            load: arbiter_variant::load_inline,
        },
        Variant {
            name: "Cedar",
            load: cedar::load,
        },
        Variant {
            name: "Rego (regorus interpreter)",
            load: rego::load_interpreter,
        },
        Variant {
            name: "Rego (regorus RVM)",
            load: rego::load_rvm,
        },
    ]
}

/// The policy's settings: a case's overrides over the defaults of the
/// policy crate, merged once at load by every engine.
#[derive(serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Settings {
    tools: Vec<String>,
    tables: Vec<String>,
    email_domains: Vec<String>,
    approval_over: f64,
    deny_over: f64,
}

impl Default for Settings {
    fn default() -> Self {
        let d = procurement::Settings::default();
        Settings {
            tools: d.tools,
            tables: d.tables,
            email_domains: d.email_domains,
            approval_over: d.approval_over,
            deny_over: d.deny_over,
        }
    }
}

impl Settings {
    /// `overrides` over the defaults.
    pub(crate) fn of(overrides: &Value) -> Result<Self, String> {
        serde_json::from_value(overrides.clone()).map_err(|e| format!("settings: {e}"))
    }
}

/// One procurement case: its settings, its request as wire JSON, and the
/// answer it must get.
pub struct Case {
    /// The case's name.
    pub name: String,
    /// The settings overrides, `{}` when none.
    pub settings: Value,
    /// `action`, `context` and `history`, as a caller sends them.
    pub wire: String,
    /// The expected answer.
    pub expect: Answer,
}

/// The procurement cases of the conformance file at `path`.
///
/// # Errors
/// When the file cannot be read or a case lacks a field.
pub fn procurement_cases(path: &std::path::Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let all: Vec<Value> = serde_json::from_str(&text).map_err(|e| format!("cases: {e}"))?;
    all.into_iter()
        .filter(|c| c["policy"] == "procurement")
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            let field = |v: &Value, key: &str| {
                v[key]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("case `{name}`: no `expect.{key}`"))
            };
            let expect = Answer {
                outcome: field(&c["expect"], "outcome")?,
                rule: field(&c["expect"], "rule")?,
                risk: c["expect"]["risk"]
                    .as_u64()
                    .and_then(|r| u8::try_from(r).ok())
                    .ok_or_else(|| format!("case `{name}`: no `expect.risk`"))?,
            };
            let mut wire = serde_json::json!({
                "action": c["action"],
                "context": c["context"],
            });
            if let Some(h) = c.get("history") {
                wire["history"] = h.clone();
            }
            Ok(Case {
                settings: c
                    .get("settings")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({})),
                wire: wire.to_string(),
                expect,
                name,
            })
        })
        .collect()
}

/// Runs `variant` on every case: `Ok` when it answers each as expected,
/// else one line per case it gets wrong (or cannot load or decide).
///
/// # Errors
/// The wrong answers, each naming its case.
pub fn check(variant: &Variant, cases: &[Case]) -> Result<(), Vec<String>> {
    let mut wrong = Vec::new();
    for case in cases {
        let answer = (variant.load)(&case.settings).and_then(|mut d| d.decide(&case.wire));
        match answer {
            Ok(a) if a == case.expect => {}
            Ok(a) => wrong.push(format!(
                "`{}`: answered {} {} (risk {}), expected {} {} (risk {})",
                case.name,
                a.outcome,
                a.rule,
                a.risk,
                case.expect.outcome,
                case.expect.rule,
                case.expect.risk
            )),
            Err(e) => wrong.push(format!("`{}`: {e}", case.name)),
        }
    }
    if wrong.is_empty() { Ok(()) } else { Err(wrong) }
}

/// The request the benchmark times: the procurement agent in production
/// e-mailing two colleagues, which walks every rule up to the recipients.
pub fn timed_request() -> String {
    serde_json::json!({
        "action": {
            "kind": "tool",
            "name": "send_email",
            "target": "",
            "params": {"to": ["bob@corp.example", "carol@corp.example"], "subject": "PO 1182"},
        },
        "context": {
            "agent": {"id": "procurement-bot", "roles": ["procurement"]},
            "environment": "prod",
            "session": "s-1",
        },
    })
    .to_string()
}

/// The path of the conformance cases in this repository.
pub fn cases_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cases.json")
}
