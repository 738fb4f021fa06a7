//! An owned metrics registry, rendered in the Prometheus text format at
//! `GET /metrics`. No globals: the server holds one [`Metrics`] and passes
//! it where decisions are made.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `arbiter_decisions_total` | counter | `outcome` (what the caller was told) |
//! | `arbiter_policy_decisions_total` | counter | `policy`, `outcome`, `mode` (soft-enforce: what it would have answered; monitor: not run) |
//! | `arbiter_canary_decisions_total` | counter | `policy`, `candidate` |
//! | `arbiter_shadow_evaluations_total` | counter | `policy`, `candidate`, `result` (`agree`, `diverge`) |
//! | `arbiter_shadow_dropped_total` | counter | `policy` |
//! | `arbiter_mcp_messages_total` | counter | `server`, `event` (`call-forwarded`, `call-denied`, `call-needs-approval`, `result-allowed`, `result-changed`, `result-withheld`, `tool-changed`, `client-invalid`, `server-invalid`, `upstream-failed`) |
//! | `arbiter_shadow_queue_depth` | gauge | |
//! | `arbiter_agent_breaker_changes_total` | counter | `change` (`open`, `closed`) |
//! | `arbiter_agents_suspended` | gauge | |
//! | `arbiter_state_undecodable_entries` | gauge | |
//! | `arbiter_state_in_step` | gauge | (1: every change other replicas made is heard; always 1 on one node) |
//! | `arbiter_state_reconnects_total` | counter | |
//! | `arbiter_state_window_merge_failures_total` | counter | |
//! | `arbiter_policy_failures_total` | counter | `policy`, `kind` |
//! | `arbiter_policy_fuel_total` | counter | `policy` |
//! | `arbiter_decision_duration_seconds` | histogram, µs-resolution buckets | |
//! | `arbiter_decision_queue_seconds` | histogram, µs-resolution buckets | |
//! | `arbiter_http_responses_total` | counter | `endpoint`, `status` |
//! | `arbiter_ready` | gauge | |
//! | `arbiter_policy_reloads_total` | counter | `policy`, `result` (`swapped`, `unchanged`) |
//! | `arbiter_policy_load_failures_total` | counter | `policy`, `stage` (the load step that failed) |
//! | `arbiter_policy_rollbacks_total` | counter | `policy` |
//! | `arbiter_config_reloads_total` | counter | `result` (`applied`, `refused`) |
//! | `arbiter_log_records_total` | counter | |
//! | `arbiter_log_writes_total` | counter | |
//! | `arbiter_log_unrecorded_decisions_total` | counter | `answered` (`deny`: failed closed; `served`: lost) |
//! | `arbiter_log_writable` | gauge | |
//! | `arbiter_log_checkpoints_total` | counter | |
//! | `arbiter_log_rotations_total` | counter | |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::decision::Decision;

/// Upper bounds of the latency histogram, in microseconds: fine where
/// decisions live (tens of µs) and coarse up to the deadline range.
const LATENCY_BUCKETS_MICROS: &[u64] = &[
    5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
    100_000, 250_000, 1_000_000,
];

/// A latency histogram with [`LATENCY_BUCKETS_MICROS`].
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    fn record(&self, micros: u64) {
        // Buckets are stored non-cumulative and summed when rendered;
        // anything above the last bound counts only in `+Inf`.
        if let Some(bucket) = LATENCY_BUCKETS_MICROS.iter().position(|b| micros <= *b) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS_MICROS.iter().zip(&self.buckets) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The counters the operator console draws, at one moment; differences
/// of two give what happened between them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Decisions by outcome.
    pub decisions: BTreeMap<String, u64>,
    /// Decisions in each latency bucket ([`Snapshot::LATENCY_BOUNDS_MICROS`]),
    /// then those above the last bound.
    pub latency: Vec<u64>,
    /// Failures (traps, fuel, deadline, ...) by policy.
    pub policy_failures: BTreeMap<String, u64>,
    /// Versions refused by the load pipeline, by policy.
    pub load_failures: BTreeMap<String, u64>,
    /// Shadow evaluations waiting.
    pub shadow_pending: u64,
    /// Shadow evaluations dropped because the queue was full.
    pub shadow_dropped: u64,
}

impl Snapshot {
    /// The latency buckets' upper bounds, in microseconds.
    pub const LATENCY_BOUNDS_MICROS: &[u64] = LATENCY_BUCKETS_MICROS;
}

/// Every counter Arbiter keeps. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    latency: Histogram,
    queue: Histogram,
    ready: AtomicBool,
    log: LogCounters,
    shadow_pending: AtomicU64,
    breaker_opened: AtomicU64,
    breaker_closed: AtomicU64,
    suspended: AtomicU64,
    undecodable: AtomicU64,
    /// Inverted so the default (one node) reads in step.
    state_behind: AtomicBool,
    state_reconnects: AtomicU64,
    window_merge_failures: AtomicU64,
    /// The OTLP exporter's counters, when it runs.
    otlp: std::sync::OnceLock<Arc<crate::telemetry::Counters>>,
}

/// The decision log's counters.
#[derive(Debug, Default)]
struct LogCounters {
    records: AtomicU64,
    writes: AtomicU64,
    denied: AtomicU64,
    lost: AtomicU64,
    /// Inverted so the default (no log yet) does not alert.
    failing: AtomicBool,
    checkpoints: AtomicU64,
    rotations: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    decisions: BTreeMap<&'static str, u64>,
    /// By policy name, so the hot path looks up by `&str` and allocates
    /// only the first time a policy is seen.
    policies: BTreeMap<String, PolicyCounters>,
    responses: BTreeMap<(&'static str, u16), u64>,
    reloads: BTreeMap<(String, &'static str), u64>,
    load_failures: BTreeMap<(String, &'static str), u64>,
    rollbacks: BTreeMap<String, u64>,
    config_reloads: BTreeMap<&'static str, u64>,
    /// By policy, then candidate.
    canary: BTreeMap<String, BTreeMap<String, u64>>,
    /// By policy, candidate and whether they diverged.
    shadow: BTreeMap<(String, String, bool), u64>,
    shadow_dropped: BTreeMap<String, u64>,
    mcp: BTreeMap<(String, &'static str), u64>,
}

#[derive(Debug, Default)]
struct PolicyCounters {
    /// By outcome and mode.
    outcomes: BTreeMap<(&'static str, &'static str), u64>,
    failures: BTreeMap<String, u64>,
    fuel: u64,
}

impl Metrics {
    /// A registry with every counter at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts the time a decision waited before its first policy ran.
    pub fn record_queue(&self, micros: u64) {
        self.queue.record(micros);
    }

    /// Counts one decision: its outcome, each policy's outcome, failure and
    /// fuel, and its latency.
    pub fn record_decision(&self, d: &Decision) {
        {
            let mut c = self.lock();
            *c.decisions.entry(d.outcome.as_str()).or_default() += 1;
            for p in &d.policies {
                if !c.policies.contains_key(&p.name) {
                    c.policies.insert(p.name.clone(), PolicyCounters::default());
                }
                let Some(pc) = c.policies.get_mut(&p.name) else {
                    continue;
                };
                *pc.outcomes
                    .entry((p.outcome.as_str(), p.mode.as_str()))
                    .or_default() += 1;
                if let Some(kind) = &p.failure {
                    match pc.failures.get_mut(kind) {
                        Some(n) => *n += 1,
                        None => {
                            pc.failures.insert(kind.clone(), 1);
                        }
                    }
                }
                pc.fuel += p.fuel;
                if let Some(candidate) = &p.candidate {
                    bump(&mut c.canary, &p.name, candidate);
                }
            }
        }
        self.latency.record(d.micros);
    }

    /// Counts one shadow comparison of `policy` with `candidate`.
    pub fn record_shadow(&self, policy: &str, candidate: &str, diverged: bool) {
        *self
            .lock()
            .shadow
            .entry((policy.to_owned(), candidate.to_owned(), diverged))
            .or_default() += 1;
    }

    /// Counts one shadow job of `policy` dropped because the queue was full.
    pub fn record_shadow_dropped(&self, policy: &str) {
        *self
            .lock()
            .shadow_dropped
            .entry(policy.to_owned())
            .or_default() += 1;
    }

    /// Counts `n` MCP gateway `event`s for `server`.
    pub fn record_mcp(&self, server: &str, event: &'static str, n: u64) {
        *self
            .lock()
            .mcp
            .entry((server.to_owned(), event))
            .or_default() += n;
    }

    /// Counts one circuit breaker opening (`true`) or closing.
    pub fn record_breaker(&self, opened: bool) {
        let c = if opened {
            &self.breaker_opened
        } else {
            &self.breaker_closed
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how many agents are suspended.
    pub fn set_agents_suspended(&self, n: u64) {
        self.suspended.store(n, Ordering::Relaxed);
    }

    /// Sets whether the shared state's changes are all heard, and how
    /// often its connections were made again.
    pub fn set_state_feed(&self, in_step: bool, reconnects: u64) {
        self.state_behind.store(!in_step, Ordering::Relaxed);
        self.state_reconnects.store(reconnects, Ordering::Relaxed);
    }

    /// Counts an exchange of the sliding windows with the fleet that
    /// failed.
    pub fn window_merge_failed(&self) {
        self.window_merge_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets how many stored entries did not decode.
    pub fn set_state_undecodable(&self, n: u64) {
        self.undecodable.store(n, Ordering::Relaxed);
    }

    /// Sets the shadow queue's depth.
    pub fn set_shadow_pending(&self, n: u64) {
        self.shadow_pending.store(n, Ordering::Relaxed);
    }

    /// Counts one HTTP response.
    pub fn record_response(&self, endpoint: &'static str, status: u16) {
        *self.lock().responses.entry((endpoint, status)).or_default() += 1;
    }

    /// Counts one reload of `policy` that got past every load step.
    pub fn record_reload(&self, policy: &str, result: &'static str) {
        *self
            .lock()
            .reloads
            .entry((policy.to_owned(), result))
            .or_default() += 1;
    }

    /// Counts one failed load of `policy`, by the step that failed.
    pub fn record_load_failure(&self, policy: &str, stage: &'static str) {
        *self
            .lock()
            .load_failures
            .entry((policy.to_owned(), stage))
            .or_default() += 1;
    }

    /// Counts one rollback of `policy`.
    pub fn record_rollback(&self, policy: &str) {
        *self.lock().rollbacks.entry(policy.to_owned()).or_default() += 1;
    }

    /// Counts one configuration reload, applied or refused.
    pub fn record_config_reload(&self, result: &'static str) {
        *self.lock().config_reloads.entry(result).or_default() += 1;
    }

    /// Counts one write of `n` decision records; the log is writable.
    pub fn log_written(&self, n: u64, writable: bool) {
        self.log.records.fetch_add(n, Ordering::Relaxed);
        self.log.writes.fetch_add(1, Ordering::Relaxed);
        self.log.failing.store(!writable, Ordering::Relaxed);
    }

    /// Counts `n` decisions whose records could not be written, denied
    /// (`deny`) or served without a record.
    pub fn log_failed(&self, n: u64, deny: bool) {
        let counter = if deny {
            &self.log.denied
        } else {
            &self.log.lost
        };
        counter.fetch_add(n, Ordering::Relaxed);
        self.log.failing.store(true, Ordering::Relaxed);
    }

    /// Counts one signed checkpoint.
    pub fn log_checkpoint(&self) {
        self.log.checkpoints.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one new segment file.
    pub fn log_rotation(&self) {
        self.log.rotations.fetch_add(1, Ordering::Relaxed);
    }

    /// Decision records and writes so far, for benchmarks.
    pub fn log_records_and_writes(&self) -> (u64, u64) {
        (
            self.log.records.load(Ordering::Relaxed),
            self.log.writes.load(Ordering::Relaxed),
        )
    }

    /// Sets the readiness gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let c = self.lock();
        header(
            &mut out,
            "arbiter_decisions_total",
            "counter",
            "Decisions, by the outcome the caller was told.",
        );
        for (outcome, n) in &c.decisions {
            let _ = writeln!(out, "arbiter_decisions_total{{outcome=\"{outcome}\"}} {n}");
        }
        header(
            &mut out,
            "arbiter_policy_decisions_total",
            "counter",
            "Policy evaluations, by policy, outcome and mode.",
        );
        for (policy, pc) in &c.policies {
            for ((outcome, mode), n) in &pc.outcomes {
                let _ = writeln!(
                    out,
                    "arbiter_policy_decisions_total{{policy=\"{}\",outcome=\"{outcome}\",mode=\"{mode}\"}} {n}",
                    escape(policy)
                );
            }
        }
        header(
            &mut out,
            "arbiter_canary_decisions_total",
            "counter",
            "Evaluations answered by a canary candidate instead of the serving version.",
        );
        for (policy, candidate, n) in c
            .canary
            .iter()
            .flat_map(|(p, m)| m.iter().map(move |(c, n)| (p, c, n)))
        {
            let _ = writeln!(
                out,
                "arbiter_canary_decisions_total{{policy=\"{}\",candidate=\"{}\"}} {n}",
                escape(policy),
                escape(candidate)
            );
        }
        header(
            &mut out,
            "arbiter_shadow_evaluations_total",
            "counter",
            "Candidate comparisons run off the caller's path, by whether the outcomes agreed.",
        );
        for ((policy, candidate, diverged), n) in &c.shadow {
            let result = if *diverged { "diverge" } else { "agree" };
            let _ = writeln!(
                out,
                "arbiter_shadow_evaluations_total{{policy=\"{}\",candidate=\"{}\",result=\"{result}\"}} {n}",
                escape(policy),
                escape(candidate)
            );
        }
        header(
            &mut out,
            "arbiter_shadow_dropped_total",
            "counter",
            "Shadow comparisons dropped because the queue was full.",
        );
        for (policy, n) in &c.shadow_dropped {
            let _ = writeln!(
                out,
                "arbiter_shadow_dropped_total{{policy=\"{}\"}} {n}",
                escape(policy)
            );
        }
        header(
            &mut out,
            "arbiter_mcp_messages_total",
            "counter",
            "MCP gateway events, by server.",
        );
        for ((server, event), n) in &c.mcp {
            let _ = writeln!(
                out,
                "arbiter_mcp_messages_total{{server=\"{}\",event=\"{event}\"}} {n}",
                escape(server)
            );
        }
        header(
            &mut out,
            "arbiter_policy_failures_total",
            "counter",
            "Policy failures (each a deny), by policy and kind.",
        );
        for (policy, pc) in &c.policies {
            for (kind, n) in &pc.failures {
                let _ = writeln!(
                    out,
                    "arbiter_policy_failures_total{{policy=\"{}\",kind=\"{}\"}} {n}",
                    escape(policy),
                    escape(kind)
                );
            }
        }
        header(
            &mut out,
            "arbiter_policy_fuel_total",
            "counter",
            "Fuel consumed by each policy.",
        );
        for (policy, pc) in &c.policies {
            let _ = writeln!(
                out,
                "arbiter_policy_fuel_total{{policy=\"{}\"}} {}",
                escape(policy),
                pc.fuel
            );
        }
        header(
            &mut out,
            "arbiter_http_responses_total",
            "counter",
            "HTTP responses, by endpoint and status.",
        );
        for ((endpoint, status), n) in &c.responses {
            let _ = writeln!(
                out,
                "arbiter_http_responses_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        header(
            &mut out,
            "arbiter_policy_reloads_total",
            "counter",
            "Policy reloads that passed every load step, by policy and result.",
        );
        for ((policy, result), n) in &c.reloads {
            let _ = writeln!(
                out,
                "arbiter_policy_reloads_total{{policy=\"{}\",result=\"{result}\"}} {n}",
                escape(policy)
            );
        }
        header(
            &mut out,
            "arbiter_policy_load_failures_total",
            "counter",
            "Policy loads refused (the previous version kept serving), by policy and stage.",
        );
        for ((policy, stage), n) in &c.load_failures {
            let _ = writeln!(
                out,
                "arbiter_policy_load_failures_total{{policy=\"{}\",stage=\"{stage}\"}} {n}",
                escape(policy)
            );
        }
        header(
            &mut out,
            "arbiter_policy_rollbacks_total",
            "counter",
            "Rollbacks to an earlier version, by policy.",
        );
        for (policy, n) in &c.rollbacks {
            let _ = writeln!(
                out,
                "arbiter_policy_rollbacks_total{{policy=\"{}\"}} {n}",
                escape(policy)
            );
        }
        header(
            &mut out,
            "arbiter_config_reloads_total",
            "counter",
            "Configuration reloads, applied or refused whole.",
        );
        for (result, n) in &c.config_reloads {
            let _ = writeln!(
                out,
                "arbiter_config_reloads_total{{result=\"{result}\"}} {n}"
            );
        }
        drop(c);
        self.latency.render(
            &mut out,
            "arbiter_decision_duration_seconds",
            "Decision latency, route to combine.",
        );
        self.queue.render(
            &mut out,
            "arbiter_decision_queue_seconds",
            "Time a decision waited for an instance before its first policy ran.",
        );
        header(
            &mut out,
            "arbiter_ready",
            "gauge",
            "1 once every configured policy has loaded.",
        );
        let _ = writeln!(
            out,
            "arbiter_ready {}",
            u8::from(self.ready.load(Ordering::Relaxed))
        );
        let log = &self.log;
        for (name, kind, help, value) in [
            (
                "arbiter_log_records_total",
                "counter",
                "Decision records written to the decision log.",
                log.records.load(Ordering::Relaxed),
            ),
            (
                "arbiter_log_writes_total",
                "counter",
                "Writes to the decision log; records / writes is how many decisions a write served.",
                log.writes.load(Ordering::Relaxed),
            ),
            (
                "arbiter_log_writable",
                "gauge",
                "0 while the decision log cannot be written.",
                u64::from(!log.failing.load(Ordering::Relaxed)),
            ),
            (
                "arbiter_log_checkpoints_total",
                "counter",
                "Signed checkpoints written.",
                log.checkpoints.load(Ordering::Relaxed),
            ),
            (
                "arbiter_log_rotations_total",
                "counter",
                "New decision log segments started.",
                log.rotations.load(Ordering::Relaxed),
            ),
            (
                "arbiter_shadow_queue_depth",
                "gauge",
                "Shadow comparisons queued or running.",
                self.shadow_pending.load(Ordering::Relaxed),
            ),
            (
                "arbiter_agents_suspended",
                "gauge",
                "Agents suspended by the kill switch.",
                self.suspended.load(Ordering::Relaxed),
            ),
            (
                "arbiter_state_undecodable_entries",
                "gauge",
                "Stored entries that did not decode, each failed closed on (a suspension kept, a pin changed, a day's budget spent).",
                self.undecodable.load(Ordering::Relaxed),
            ),
            (
                "arbiter_state_in_step",
                "gauge",
                "1 while every change other replicas make to the shared state is heard.",
                u64::from(!self.state_behind.load(Ordering::Relaxed)),
            ),
            (
                "arbiter_state_reconnects_total",
                "counter",
                "Connections to the shared state made again after one was lost.",
                self.state_reconnects.load(Ordering::Relaxed),
            ),
            (
                "arbiter_state_window_merge_failures_total",
                "counter",
                "Exchanges of the sliding windows' counts with the other replicas that failed; the counts are sent at the next.",
                self.window_merge_failures.load(Ordering::Relaxed),
            ),
        ] {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "arbiter_agent_breaker_changes_total",
            "counter",
            "Agent circuit breakers opened and closed.",
        );
        for (change, n) in [
            ("open", &self.breaker_opened),
            ("closed", &self.breaker_closed),
        ] {
            let _ = writeln!(
                out,
                "arbiter_agent_breaker_changes_total{{change=\"{change}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "arbiter_log_unrecorded_decisions_total",
            "counter",
            "Decisions whose record could not be written: denied (fail closed) or served without one.",
        );
        for (answered, n) in [("deny", &log.denied), ("served", &log.lost)] {
            let _ = writeln!(
                out,
                "arbiter_log_unrecorded_decisions_total{{answered=\"{answered}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        if let Some(otlp) = self.otlp.get() {
            otlp.render(&mut out);
        }
        out
    }

    /// Shows the OTLP exporter's counters with the rest.
    pub fn set_otlp(&self, counters: Arc<crate::telemetry::Counters>) {
        let _ = self.otlp.set(counters);
    }

    /// The figures the operator console draws, read together.
    pub fn snapshot(&self) -> Snapshot {
        let c = self.lock();
        let mut latency: Vec<u64> = self
            .latency
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let counted: u64 = latency.iter().sum();
        latency.push(
            self.latency
                .count
                .load(Ordering::Relaxed)
                .saturating_sub(counted),
        );
        Snapshot {
            decisions: c
                .decisions
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            latency,
            policy_failures: c
                .policies
                .iter()
                .map(|(name, p)| (name.clone(), p.failures.values().sum()))
                .collect(),
            load_failures: c.load_failures.iter().fold(
                BTreeMap::new(),
                |mut all, ((name, _), n)| {
                    *all.entry(name.clone()).or_default() += n;
                    all
                },
            ),
            shadow_pending: self.shadow_pending.load(Ordering::Relaxed),
            shadow_dropped: c.shadow_dropped.values().sum(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Adds one to `map[outer][inner]`, allocating keys only when first seen.
fn bump(map: &mut BTreeMap<String, BTreeMap<String, u64>>, outer: &str, inner: &str) {
    if !map.contains_key(outer) {
        map.insert(outer.to_owned(), BTreeMap::new());
    }
    if let Some(m) = map.get_mut(outer) {
        match m.get_mut(inner) {
            Some(n) => *n += 1,
            None => {
                m.insert(inner.to_owned(), 1);
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Outcome, PolicyReport};

    fn decision(micros: u64, failure: Option<&str>) -> Decision {
        Decision {
            approval: None,
            decision_id: "d".into(),
            outcome: Outcome::Deny,
            reason: String::new(),
            decided: Outcome::Deny,
            mode: Default::default(),
            warnings: Vec::new(),
            rule: String::new(),
            risk: 0,
            params: None,
            micros,
            policies: vec![PolicyReport {
                name: "p\"x".into(),
                version: String::new(),
                signer: None,
                signed_version: None,
                mode: Default::default(),
                candidate: None,
                outcome: Outcome::Deny,
                rule: String::new(),
                reason: String::new(),
                risk: 0,
                params: None,
                fuel: 7,
                micros,
                failure: failure.map(str::to_owned),
                labels: Vec::new(),
                questions: Vec::new(),
            }],
            flow: None,
        }
    }

    #[test]
    fn counts_render_with_escaped_labels_and_cumulative_buckets() {
        let m = Metrics::new();
        m.record_decision(&decision(8, None));
        m.record_decision(&decision(40, Some("fuel")));
        m.record_decision(&decision(5_000_000, None));
        let text = m.render();
        for line in [
            "arbiter_decisions_total{outcome=\"deny\"} 3",
            "arbiter_policy_decisions_total{policy=\"p\\\"x\",outcome=\"deny\",mode=\"enforce\"} 3",
            "arbiter_policy_failures_total{policy=\"p\\\"x\",kind=\"fuel\"} 1",
            "arbiter_policy_fuel_total{policy=\"p\\\"x\"} 21",
            "arbiter_decision_duration_seconds_bucket{le=\"0.00001\"} 1",
            "arbiter_decision_duration_seconds_bucket{le=\"0.00005\"} 2",
            "arbiter_decision_duration_seconds_bucket{le=\"1\"} 2",
            "arbiter_decision_duration_seconds_bucket{le=\"+Inf\"} 3",
            "arbiter_decision_duration_seconds_count 3",
            "arbiter_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}
