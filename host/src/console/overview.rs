//! The overview: decisions per outcome over the last hour as a chart,
//! latency quantiles, policies failing and the shadow queue, all from the
//! service's own metrics ([`super::samples`]).

use std::collections::BTreeMap;

use askama::Template;
use hyper::StatusCode;

use super::view::{self, Frame};
use super::{Ctx, Reply, html};
use crate::evidence::metrics::Snapshot;

/// The outcomes, in the order the chart stacks them, with their labels.
const OUTCOMES: &[&str] = &["allow", "modify", "require-approval", "deny"];

/// One bar of the chart: a minute.
pub(crate) struct Bar {
    label: String,
    /// Per outcome: count, y and height of its segment.
    segments: Vec<(&'static str, u64, u32, u32)>,
    x: u32,
    total: u64,
}

pub(crate) struct Failing {
    policy: String,
    failures: u64,
    refused_loads: u64,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct Page {
    frame: Frame,
    bars: Vec<Bar>,
    bar_width: u32,
    chart_height: u32,
    peak: u64,
    totals: Vec<(&'static str, u64)>,
    p50: String,
    p99: String,
    span: String,
    failing: Vec<Failing>,
    shadow_pending: u64,
    shadow_dropped: u64,
    pending_approvals: usize,
    suspended: usize,
}

const CHART_HEIGHT: u32 = 160;
const BAR_WIDTH: u32 = 12;

pub(super) fn page(ctx: &Ctx<'_>) -> Reply {
    let now_ms = ctx.console.now_ms();
    let mut points = ctx.console.samples.all();
    points.push((now_ms, ctx.state.metrics.snapshot()));
    let first = points.first().map(|(_, s)| s.clone()).unwrap_or_default();
    let last = points.last().map(|(_, s)| s.clone()).unwrap_or_default();
    let minutes: Vec<(u64, BTreeMap<String, u64>)> = points
        .windows(2)
        .map(|w| (w[1].0, minus(&w[1].1.decisions, &w[0].1.decisions)))
        .collect();
    let peak = minutes
        .iter()
        .map(|(_, m)| m.values().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let bars = minutes
        .iter()
        .enumerate()
        .map(|(i, (at, counts))| {
            let mut y = CHART_HEIGHT;
            let segments = OUTCOMES
                .iter()
                .map(|o| {
                    let n = counts.get(*o).copied().unwrap_or(0);
                    let h =
                        u32::try_from(n * u64::from(CHART_HEIGHT) / peak).unwrap_or(CHART_HEIGHT);
                    y = y.saturating_sub(h);
                    (*o, n, y, h)
                })
                .collect();
            Bar {
                label: view::when(*at),
                segments,
                x: u32::try_from(i).unwrap_or(0) * (BAR_WIDTH + 2),
                total: counts.values().sum(),
            }
        })
        .collect();
    let decided = minus(&last.decisions, &first.decisions);
    let latency: Vec<u64> = last
        .latency
        .iter()
        .zip(first.latency.iter().chain(std::iter::repeat(&0)))
        .map(|(a, b)| a.saturating_sub(*b))
        .collect();
    let failures = minus(&last.policy_failures, &first.policy_failures);
    let refused = minus(&last.load_failures, &first.load_failures);
    let mut names: Vec<&String> = failures.keys().chain(refused.keys()).collect();
    names.sort();
    names.dedup();
    let failing = names
        .into_iter()
        .map(|p| Failing {
            policy: p.clone(),
            failures: failures.get(p).copied().unwrap_or(0),
            refused_loads: refused.get(p).copied().unwrap_or(0),
        })
        .filter(|f| f.failures + f.refused_loads > 0)
        .collect();
    let arbiter = ctx.state.arbiter();
    let page = Page {
        frame: ctx.frame("Overview", "overview"),
        bars,
        bar_width: BAR_WIDTH,
        chart_height: CHART_HEIGHT,
        peak,
        totals: OUTCOMES
            .iter()
            .map(|o| (*o, decided.get(*o).copied().unwrap_or(0)))
            .collect(),
        p50: quantile(&latency, 0.5),
        p99: quantile(&latency, 0.99),
        span: view::span(now_ms.saturating_sub(points.first().map_or(now_ms, |p| p.0))),
        failing,
        shadow_pending: last.shadow_pending,
        shadow_dropped: last.shadow_dropped.saturating_sub(first.shadow_dropped),
        pending_approvals: arbiter
            .and_then(|a| {
                a.approvals()
                    .map(|x| x.list(Some(crate::approvals::Status::Pending)).len())
            })
            .unwrap_or(0),
        suspended: arbiter
            .and_then(|a| {
                a.agents().map(|x| {
                    x.report(None)
                        .iter()
                        .filter(|r| r.suspended.is_some())
                        .count()
                })
            })
            .unwrap_or(0),
    };
    html(StatusCode::OK, &page)
}

/// `a - b`, key by key.
fn minus(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    a.iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(b.get(k).copied().unwrap_or(0))))
        .collect()
}

/// The `q` quantile of a latency histogram, as the upper bound of its
/// bucket (what a Prometheus `histogram_quantile` would say at most).
fn quantile(buckets: &[u64], q: f64) -> String {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return "no decisions".into();
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return match Snapshot::LATENCY_BOUNDS_MICROS.get(i) {
                Some(b) if *b < 1000 => format!("≤ {b} µs"),
                Some(b) => format!("≤ {} ms", b / 1000),
                None => "over 1 s".into(),
            };
        }
    }
    "over 1 s".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_name_the_bucket_they_fall_in() {
        let mut b = vec![0; Snapshot::LATENCY_BOUNDS_MICROS.len() + 1];
        assert_eq!(quantile(&b, 0.5), "no decisions");
        b[3] = 98; // ≤ 20 µs
        b[11] = 2; // ≤ 1 ms
        assert_eq!(quantile(&b, 0.5), "≤ 20 µs");
        assert_eq!(quantile(&b, 0.99), "≤ 1 ms");
        *b.last_mut().expect("overflow") = 100;
        assert_eq!(quantile(&b, 0.99), "over 1 s");
    }
}
