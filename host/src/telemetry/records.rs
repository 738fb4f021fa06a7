//! Decision-log lines as OTLP log records: the body is the line exactly as
//! the hash chain holds it, so a receiver can re-hash it and link it to the
//! one before; the sequence number, hash and previous hash ride along as
//! attributes for indexing.

use std::time::SystemTime;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger, SdkLoggerProvider};
use serde::Deserialize;

/// What of a line is lifted into attributes; the rest stays in the body.
#[derive(Deserialize)]
struct Head<'a> {
    seq: u64,
    #[serde(borrow)]
    hash: Cow<'a>,
    #[serde(borrow)]
    prev_hash: Cow<'a>,
    #[serde(borrow, rename = "type")]
    kind: Cow<'a>,
    #[serde(borrow)]
    ts: Cow<'a>,
    #[serde(default, borrow)]
    replica: Option<Cow<'a>>,
    #[serde(default, borrow)]
    data: Option<Data<'a>>,
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(default, borrow)]
    decision_id: Option<Cow<'a>>,
}

type Cow<'a> = std::borrow::Cow<'a, str>;

/// Makes log records; the provider has no processor: records go straight
/// to the exporter, batched by the export thread.
pub(super) struct Maker {
    logger: SdkLogger,
}

impl Maker {
    pub(super) fn new() -> Self {
        let provider = SdkLoggerProvider::builder().build();
        Maker {
            logger: provider.logger("arbiter"),
        }
    }

    /// A record per line of `lines`, with the decision's span as its trace
    /// context when `span_of` knows it. A line that is not a record of the
    /// chain (which the log never writes) is skipped and counted by the
    /// caller.
    pub(super) fn records(
        &self,
        lines: &[u8],
        span_of: impl Fn(&str) -> Option<(TraceId, SpanId)>,
        out: &mut Vec<SdkLogRecord>,
    ) -> usize {
        let mut skipped = 0;
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match self.record(line, &span_of) {
                Some(r) => out.push(r),
                None => skipped += 1,
            }
        }
        skipped
    }

    fn record(
        &self,
        line: &[u8],
        span_of: &impl Fn(&str) -> Option<(TraceId, SpanId)>,
    ) -> Option<SdkLogRecord> {
        let text = std::str::from_utf8(line).ok()?;
        let head: Head<'_> = serde_json::from_str(text).ok()?;
        let mut r = self.logger.create_log_record();
        r.set_event_name("arbiter.record");
        let ts = humantime::parse_rfc3339(&head.ts).unwrap_or_else(|_| SystemTime::now());
        r.set_timestamp(ts);
        r.set_observed_timestamp(SystemTime::now());
        r.set_severity_number(Severity::Info);
        r.set_severity_text("INFO");
        r.add_attribute(
            "arbiter.record.seq",
            i64::try_from(head.seq).unwrap_or(i64::MAX),
        );
        r.add_attribute("arbiter.record.hash", head.hash.into_owned());
        r.add_attribute("arbiter.record.prev_hash", head.prev_hash.into_owned());
        r.add_attribute("arbiter.record.type", head.kind.into_owned());
        if let Some(replica) = head.replica {
            r.add_attribute("arbiter.replica", replica.into_owned());
        }
        if let Some(id) = head.data.and_then(|d| d.decision_id) {
            if let Some((trace, span)) = span_of(&id) {
                r.set_trace_context(trace, span, Some(TraceFlags::SAMPLED));
            }
            r.add_attribute("arbiter.decision_id", id.into_owned());
        }
        r.set_body(AnyValue::String(text.to_owned().into()));
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::logs::AnyValue;

    #[test]
    fn the_body_is_the_line_and_the_chain_fields_are_attributes() {
        let line = br#"{"data":{"decision_id":"d-1","outcome":"deny"},"prev_hash":"aa","seq":7,"ts":"2026-12-06T12:00:00.000001Z","type":"decision","hash":"bb"}"#;
        let mut lines = line.to_vec();
        lines.extend_from_slice(b"\nnot a record\n");
        let mut out = Vec::new();
        let skipped = Maker::new().records(&lines, |_| None, &mut out);
        assert_eq!((out.len(), skipped), (1, 1));
        let r = &out[0];
        assert_eq!(
            r.body(),
            Some(&AnyValue::String(
                std::str::from_utf8(line).expect("utf8").to_owned().into()
            ))
        );
        let attrs: Vec<String> = r
            .attributes_iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        assert!(
            attrs
                .iter()
                .any(|a| a.contains("arbiter.record.seq") && a.contains('7')),
            "{attrs:?}"
        );
        assert!(
            attrs
                .iter()
                .any(|a| a.contains("arbiter.record.hash") && a.contains("bb")),
            "{attrs:?}"
        );
        assert!(
            attrs
                .iter()
                .any(|a| a.contains("arbiter.decision_id") && a.contains("d-1")),
            "{attrs:?}"
        );
    }
}
