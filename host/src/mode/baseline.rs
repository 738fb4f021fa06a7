//! The usage baseline that monitor mode builds: what each agent really
//! does, per action, so a team can draft a policy from observed traffic.
//!
//! Per agent and action (`kind`, `name`): how often and when, the targets
//! touched, and for each params key (dotted paths into objects, `[]` for
//! list items, four levels deep) the JSON types seen, numeric min, max and
//! p95, the distinct values of short strings and the domains of e-mail
//! addresses. Every set is capped, so a hostile caller cannot grow it
//! without bound: past the caps, values are counted but not kept, and the
//! report says `more`.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use crate::config::RolloutConfig;
use crate::decision::Request;
use crate::time::timestamp;

/// Strings longer than this are counted, not kept as values.
const MAX_VALUE_CHARS: usize = 64;
/// Params keys tracked per action.
const MAX_KEYS: usize = 64;
/// How deep into nested params keys are followed.
const MAX_DEPTH: usize = 4;
/// Numbers kept per key for the p95 (a uniform sample beyond).
const NUMBER_SAMPLE: usize = 1024;

/// The baseline of one process, shared by every decision.
#[derive(Debug)]
pub struct Baseline {
    state: Mutex<State>,
    max_actions: usize,
    distinct: usize,
}

#[derive(Debug, Default)]
struct State {
    /// agent → kind → name.
    agents: BTreeMap<String, BTreeMap<String, BTreeMap<String, Entry>>>,
    actions: usize,
    observed: u64,
    untracked: u64,
}

#[derive(Debug)]
struct Entry {
    count: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    targets: Distinct,
    params: BTreeMap<String, KeyStats>,
    keys_untracked: u64,
}

#[derive(Debug, Default)]
struct KeyStats {
    seen: u64,
    types: BTreeMap<&'static str, u64>,
    numbers: Option<Numbers>,
    values: Distinct,
    domains: Distinct,
}

#[derive(Debug)]
struct Numbers {
    count: u64,
    min: f64,
    max: f64,
    sample: Vec<f64>,
    rng: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
struct Distinct {
    values: BTreeMap<String, u64>,
    /// Values that did not fit under the cap were seen.
    more: bool,
}

impl Distinct {
    fn add(&mut self, value: &str, cap: usize) {
        if let Some(n) = self.values.get_mut(value) {
            *n += 1;
        } else if self.values.len() < cap {
            self.values.insert(value.to_owned(), 1);
        } else {
            self.more = true;
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty() && !self.more
    }
}

/// The whole baseline, as `GET /v1/baseline` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineReport {
    /// Decisions observed.
    pub observed: u64,
    /// Observed decisions of agent and action pairs past the cap.
    pub untracked: u64,
    /// Per agent and action.
    pub actions: Vec<ActionReport>,
}

/// What one agent does with one action.
#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    /// The agent.
    pub agent: String,
    /// The action's kind.
    pub kind: String,
    /// The action's name.
    pub name: String,
    /// How many times.
    pub count: u64,
    /// First time (RFC 3339).
    pub first_seen: String,
    /// Last time.
    pub last_seen: String,
    /// The targets, with counts.
    pub targets: DistinctReport,
    /// Per params key.
    pub params: BTreeMap<String, KeyReport>,
    /// Keys seen past the cap of 64 per action.
    #[serde(skip_serializing_if = "is_zero")]
    pub keys_untracked: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Distinct values with their counts.
#[derive(Debug, Clone, Serialize)]
pub struct DistinctReport {
    /// Each value kept, and how often it was seen.
    pub values: BTreeMap<String, u64>,
    /// More distinct values were seen than the cap keeps.
    pub more: bool,
}

/// One params key.
#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    /// Values seen at this key.
    pub seen: u64,
    /// By JSON type: `string`, `number`, `bool`, `null`, `object`, `array`.
    pub types: BTreeMap<&'static str, u64>,
    /// Numbers seen, when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<NumberReport>,
    /// Short strings seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<DistinctReport>,
    /// Domains of the e-mail addresses seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domains: Option<DistinctReport>,
}

/// Numeric figures of one key.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NumberReport {
    /// How many numbers.
    pub count: u64,
    /// The least.
    pub min: f64,
    /// The greatest.
    pub max: f64,
    /// The 95th percentile, by nearest rank (over a uniform sample of 1024
    /// once more were seen).
    pub p95: f64,
}

impl Baseline {
    /// An empty baseline with the caps of `config`.
    pub fn new(config: &RolloutConfig) -> Self {
        Baseline {
            state: Mutex::new(State::default()),
            max_actions: config.baseline_max_actions,
            distinct: config.baseline_distinct_values,
        }
    }

    /// Adds one request to the baseline.
    pub fn observe(&self, request: &Request, at: SystemTime) {
        let (a, agent) = (&request.action, &request.context.agent.id);
        let distinct = self.distinct;
        let mut state = self.lock();
        state.observed += 1;
        let known = state
            .agents
            .get(agent.as_str())
            .and_then(|k| k.get(a.kind.as_str()))
            .is_some_and(|n| n.contains_key(a.name.as_str()));
        if !known {
            if state.actions >= self.max_actions {
                state.untracked += 1;
                return;
            }
            state.actions += 1;
        }
        let entry = state
            .agents
            .entry(agent.clone())
            .or_default()
            .entry(a.kind.clone())
            .or_default()
            .entry(a.name.clone())
            .or_insert_with(|| Entry {
                count: 0,
                first_seen: at,
                last_seen: at,
                targets: Distinct::default(),
                params: BTreeMap::new(),
                keys_untracked: 0,
            });
        entry.count += 1;
        entry.last_seen = at;
        if !a.target.is_empty() {
            entry.targets.add(&truncate(&a.target), distinct);
        }
        if let Value::Object(map) = &a.params {
            let mut path = String::new();
            for (k, v) in map {
                walk(entry, &mut path, k, v, 1, distinct);
            }
        }
    }

    /// The baseline, for every agent or for one.
    pub fn report(&self, agent: Option<&str>) -> BaselineReport {
        let state = self.lock();
        let mut actions = Vec::new();
        for (who, kinds) in &state.agents {
            if agent.is_some_and(|a| a != who) {
                continue;
            }
            for (kind, names) in kinds {
                for (name, e) in names {
                    actions.push(ActionReport {
                        agent: who.clone(),
                        kind: kind.clone(),
                        name: name.clone(),
                        count: e.count,
                        first_seen: timestamp(e.first_seen),
                        last_seen: timestamp(e.last_seen),
                        targets: e.targets.report(),
                        params: e
                            .params
                            .iter()
                            .map(|(k, s)| (k.clone(), s.report()))
                            .collect(),
                        keys_untracked: e.keys_untracked,
                    });
                }
            }
        }
        BaselineReport {
            observed: state.observed,
            untracked: state.untracked,
            actions,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Records `value` at `path` + `key`, then what is inside it.
fn walk(entry: &mut Entry, path: &mut String, key: &str, value: &Value, depth: usize, cap: usize) {
    let len = path.len();
    if !path.is_empty() && !key.starts_with('[') {
        path.push('.');
    }
    path.push_str(key);
    observe_value(entry, path, value, cap);
    if depth < MAX_DEPTH {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    walk(entry, path, k, v, depth + 1, cap);
                }
            }
            Value::Array(items) => {
                for v in items {
                    walk(entry, path, "[]", v, depth + 1, cap);
                }
            }
            _ => {}
        }
    }
    path.truncate(len);
}

fn observe_value(entry: &mut Entry, path: &str, value: &Value, cap: usize) {
    if !entry.params.contains_key(path) && entry.params.len() >= MAX_KEYS {
        entry.keys_untracked += 1;
        return;
    }
    let stats = match entry.params.get_mut(path) {
        Some(s) => s,
        None => entry.params.entry(path.to_owned()).or_default(),
    };
    stats.seen += 1;
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    *stats.types.entry(kind).or_default() += 1;
    match value {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                stats.numbers.get_or_insert_with(Numbers::new).add(x);
            }
        }
        Value::String(s) => {
            if s.chars().count() <= MAX_VALUE_CHARS {
                stats.values.add(s, cap);
            } else {
                stats.values.more = true;
            }
            if let Some(domain) = email_domain(s) {
                stats.domains.add(&domain, cap);
            }
        }
        _ => {}
    }
}

/// The domain of a well-formed address (one `@`, something before it, no
/// white space, `,` or `;`), lowercased.
fn email_domain(s: &str) -> Option<String> {
    let (local, domain) = s.split_once('@')?;
    let clean = |p: &str| {
        !p.is_empty()
            && !p.contains(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '@')
    };
    (clean(local) && clean(domain)).then(|| truncate(&domain.to_lowercase()))
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_VALUE_CHARS).collect();
        t.push('…');
        t
    }
}

impl Numbers {
    fn new() -> Self {
        Numbers {
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sample: Vec::new(),
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    fn add(&mut self, x: f64) {
        self.count += 1;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        if self.sample.len() < NUMBER_SAMPLE {
            self.sample.push(x);
        } else {
            // Reservoir sampling keeps the sample uniform over all numbers.
            self.rng ^= self.rng << 13;
            self.rng ^= self.rng >> 7;
            self.rng ^= self.rng << 17;
            let i = (self.rng % self.count) as usize;
            if i < NUMBER_SAMPLE {
                self.sample[i] = x;
            }
        }
    }

    fn report(&self) -> NumberReport {
        let mut sorted = self.sample.clone();
        sorted.sort_by(f64::total_cmp);
        // Nearest rank: the smallest value with at least 95% at or below it.
        let rank = ((sorted.len() as f64) * 0.95).ceil() as usize;
        NumberReport {
            count: self.count,
            min: self.min,
            max: self.max,
            p95: sorted
                .get(rank.saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN),
        }
    }
}

impl Distinct {
    fn report(&self) -> DistinctReport {
        DistinctReport {
            values: self.values.clone(),
            more: self.more,
        }
    }
}

impl KeyStats {
    fn report(&self) -> KeyReport {
        KeyReport {
            seen: self.seen,
            types: self.types.clone(),
            number: self.numbers.as_ref().map(Numbers::report),
            values: (!self.values.is_empty()).then(|| self.values.report()),
            domains: (!self.domains.is_empty()).then(|| self.domains.report()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Action, Context, Principal};
    use serde_json::json;

    fn request(agent: &str, name: &str, target: &str, params: Value) -> Request {
        Request {
            trace: None,
            approval_id: None,
            action: Action {
                kind: "tool".into(),
                name: name.into(),
                target: target.into(),
                params,
            },
            context: Context {
                agent: Principal {
                    id: agent.into(),
                    roles: vec![],
                },
                ..Context::default()
            },
            history: Default::default(),
        }
    }

    fn small() -> Baseline {
        Baseline::new(&RolloutConfig {
            baseline_max_actions: 2,
            baseline_distinct_values: 3,
            ..RolloutConfig::default()
        })
    }

    #[test]
    fn figures_per_agent_and_action() {
        let b = small();
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        for i in 1..=100 {
            let params = json!({"amount": i, "to": [format!("u{}@Corp.Example", i % 5), "x@other.example"],
                                "memo": "m", "nested": {"deep": true}});
            b.observe(&request("bot", "pay", &format!("t{}", i % 4), params), t0);
        }
        b.observe(&request("bot", "pay", "", json!({"amount": "oops"})), t0);
        let r = b.report(None);
        assert_eq!((r.observed, r.untracked, r.actions.len()), (101, 0, 1));
        let a = &r.actions[0];
        assert_eq!(a.count, 101);
        let amount = &a.params["amount"];
        assert_eq!(amount.types["number"], 100);
        assert_eq!(amount.types["string"], 1);
        let n = amount.number.expect("numbers");
        assert_eq!((n.count, n.min, n.max, n.p95), (100, 1.0, 100.0, 95.0));
        let domains = a.params["to[]"].domains.as_ref().expect("domains");
        assert_eq!(domains.values["corp.example"], 100);
        assert_eq!(domains.values["other.example"], 100);
        // Five distinct recipients, three kept.
        assert!(
            a.params["to[]"]
                .values
                .as_ref()
                .is_some_and(|v| v.more && v.values.len() == 3)
        );
        assert!(a.targets.more);
        assert_eq!(a.params["nested.deep"].types["bool"], 100);
        assert_eq!(a.params["to"].types["array"], 100);
    }

    #[test]
    fn actions_past_the_cap_are_counted_not_kept() {
        let b = small();
        let now = SystemTime::now();
        for name in ["a", "b", "c", "d"] {
            b.observe(&request("bot", name, "", json!({})), now);
        }
        b.observe(&request("bot", "a", "", json!({})), now);
        let r = b.report(None);
        assert_eq!((r.observed, r.untracked, r.actions.len()), (5, 2, 2));
        assert!(b.report(Some("nobody")).actions.is_empty());
    }

    #[test]
    fn hostile_params_stay_bounded() {
        let b = small();
        let mut wide = serde_json::Map::new();
        for i in 0..500 {
            wide.insert(format!("k{i}"), json!("v".repeat(1000)));
        }
        let mut deep = json!(1);
        for _ in 0..50 {
            deep = json!({ "d": deep });
        }
        wide.insert("deep".into(), deep);
        b.observe(
            &request("bot", "a", &"t".repeat(10_000), Value::Object(wide)),
            SystemTime::now(),
        );
        let r = b.report(None);
        let a = &r.actions[0];
        assert_eq!(a.params.len(), MAX_KEYS);
        assert!(a.keys_untracked > 0);
        assert!(a.params.keys().all(|k| k.split('.').count() <= MAX_DEPTH));
        assert!(
            a.targets
                .values
                .keys()
                .all(|t| t.chars().count() <= MAX_VALUE_CHARS + 1)
        );
    }
}
