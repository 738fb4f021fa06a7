//! The records of the decision log and their canonical encoding: what is
//! hashed, and how a reader checks it.
//!
//! # A record
//!
//! One JSON object per line:
//!
//! ```json
//! {"data": {...}, "prev_hash": "sha256:…", "replica": "a", "seq": 42,
//!  "ts": "2026-12-01T05:44:00.123456Z", "type": "decision", "hash": "sha256:…"}
//! ```
//!
//! `replica` names the replica of a fleet that wrote the record (its
//! `state.replica`); a single node's records have none. It is hashed like
//! every other field, so a record cannot be moved to another replica's
//! name.
//!
//! `type` is `decision`, `checkpoint`, `gap`, `crash` or `open`, and `data`
//! holds what that type records (see [`DecisionData`] and the
//! `*_data` functions). Checkpoints also carry `signature`.
//!
//! # The canonical encoding
//!
//! `hash` is `sha256:` and the lowercase hex SHA-256 of the record's
//! canonical encoding without `hash` and `signature`: JSON with no
//! insignificant white space, object keys in byte order at every depth,
//! and strings and numbers as `serde_json` writes them (UTF-8, only `"`,
//! `\` and control characters escaped; integers as integers; other numbers
//! in the shortest form that reads back the same). `prev_hash` is inside
//! what is hashed, so each record's hash covers every record before it. The
//! first record's `prev_hash` is [`GENESIS`].
//!
//! The writer produces this encoding directly (its structs declare their
//! fields in byte order, and the JSON values it keeps go through
//! [`Canonical`]); a reader parses the line, removes `hash` and
//! `signature`, and writes the value back out. A unit test holds the two
//! to the same bytes.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::ParamsStorage;
use crate::decision::Mode;
use crate::decision::{Decision, History, Outcome, PolicyReport, Principal, Request};
use crate::hex;

/// The `prev_hash` of the first record of a log.
pub const GENESIS: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The first line of the message a checkpoint signs: a domain separator,
/// so a checkpoint signature can never pass for any other signature.
const CHECKPOINT_HEADER: &str = "arbiter-log-checkpoint/1";

/// What replaces a redacted value in stored params.
pub const REDACTED: &str = "[REDACTED]";

/// `sha256:` and the hex digest of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    digest_text(&Sha256::digest(bytes))
}

fn digest_text(digest: &[u8]) -> String {
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    hex::push(&mut out, digest);
    out
}

/// `sha256:` and the hex digest of `value`'s canonical encoding, hashed as
/// it is written rather than built first.
pub fn value_sha256(value: &Value) -> String {
    struct Hashing(Sha256);
    impl std::io::Write for Hashing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut h = Hashing(Sha256::new());
    // Writing a `Value` into a sink that never fails cannot fail.
    let _ = serde_json::to_writer(&mut h, &Canonical(value));
    digest_text(&h.0.finalize())
}

/// The canonical encoding of a JSON value.
pub fn canonical(value: &Value) -> Vec<u8> {
    serde_json::to_vec(&Canonical(value)).unwrap_or_default()
}

/// A JSON value that serializes with object keys in byte order at every
/// depth, whatever order its maps keep.
///
/// `serde_json::Map` is sorted only while no crate in the build turns on
/// `preserve_order`; features unify across a build, so a dependency added
/// anywhere would otherwise change what a record hashes to, and a log
/// written by one build would fail to verify in another.
pub struct Canonical<'a>(pub &'a Value);

impl Serialize for Canonical<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                // Already sorted whenever the map is a BTreeMap: no work then.
                if !entries.is_sorted_by(|a, b| a.0 <= b.0) {
                    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
                }
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    out.serialize_entry(k, &Canonical(v))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for v in items {
                    out.serialize_element(&Canonical(v))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// Serializes a kept value (params) canonically.
fn canonical_kept<S: serde::Serializer>(
    value: &Option<Cow<'_, Value>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => Canonical(v).serialize(serializer),
        None => serializer.serialize_none(),
    }
}

/// Where a record stands in its log: the fields around its `data`.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    /// The hash of the record before it.
    pub prev_hash: &'a str,
    /// The replica that writes the log, if it is one of a fleet.
    pub replica: Option<&'a str>,
    /// Its sequence number.
    pub seq: u64,
    /// When it was written (RFC 3339).
    pub ts: &'a str,
}

/// Appends one record to `out` as the line the log holds: the canonical
/// body built from its parts (`data` must be canonical JSON), then `hash`
/// (and `signature`, when `sign` gives one for the hash) and a newline.
/// Returns the record's hash.
pub fn append_line(
    out: &mut Vec<u8>,
    kind: &str,
    data: &[u8],
    place: Place<'_>,
    sign: impl FnOnce(&str) -> Option<String>,
) -> String {
    use std::io::Write as _;
    let Place {
        prev_hash,
        replica,
        seq,
        ts,
    } = place;
    let start = out.len();
    out.extend_from_slice(b"{\"data\":");
    out.extend_from_slice(data);
    out.extend_from_slice(b",\"prev_hash\":\"");
    out.extend_from_slice(prev_hash.as_bytes());
    out.push(b'"');
    if let Some(replica) = replica {
        out.extend_from_slice(b",\"replica\":");
        // Escaped as the canonical encoding escapes it; writing a string to
        // a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, replica);
    }
    // Writing to a Vec cannot fail.
    let _ = write!(out, ",\"seq\":{seq},\"ts\":\"{ts}\",\"type\":\"{kind}\"}}");
    let hash = sha256(&out[start..]);
    out.pop();
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.push(b'"');
    if let Some(s) = sign(&hash) {
        out.extend_from_slice(b",\"signature\":\"");
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}\n");
    hash
}

/// The message a checkpoint's signature covers: its sequence number and
/// its hash, which covers every record before it.
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("{CHECKPOINT_HEADER}\nseq={seq}\nhash={hash}\n").into_bytes()
}

/// A record as a reader sees it, with what its hash should be.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The whole record.
    pub value: Value,
    /// Its sequence number.
    pub seq: u64,
    /// Its type.
    pub kind: String,
    /// The hash it claims.
    pub hash: String,
    /// The hash it claims for the record before it.
    pub prev_hash: String,
    /// The hash of its content, as recomputed.
    pub computed: String,
    /// Its signature, for checkpoints.
    pub signature: Option<String>,
}

impl Parsed {
    /// Parses one line (without its newline). `None` if it is not a record.
    pub fn from_line(line: &[u8]) -> Option<Parsed> {
        let mut value: Value = serde_json::from_slice(line).ok()?;
        let object = value.as_object_mut()?;
        let hash = object.remove("hash")?.as_str()?.to_owned();
        let signature = match object.remove("signature") {
            Some(s) => Some(s.as_str()?.to_owned()),
            None => None,
        };
        let computed = sha256(&canonical(&value));
        let seq = value.get("seq")?.as_u64()?;
        let kind = value.get("type")?.as_str()?.to_owned();
        let prev_hash = value.get("prev_hash")?.as_str()?.to_owned();
        Some(Parsed {
            value,
            seq,
            kind,
            hash,
            prev_hash,
            computed,
            signature,
        })
    }

    /// The record's `data`.
    pub fn data(&self) -> &Value {
        &self.value["data"]
    }

    /// The record's `ts`.
    pub fn ts(&self) -> &str {
        self.value["ts"].as_str().unwrap_or_default()
    }

    /// The replica that wrote it, for a fleet's log.
    pub fn replica(&self) -> Option<&str> {
        self.value["replica"].as_str()
    }
}

/// How params are kept: the configured storage and the keys to redact.
#[derive(Debug, Clone)]
pub struct ParamsRule {
    storage: ParamsStorage,
    /// Lowercased.
    redact: Vec<String>,
}

impl ParamsRule {
    /// The rule for `storage`, redacting `fields` when it says so.
    pub fn new(storage: ParamsStorage, fields: &[String]) -> Self {
        ParamsRule {
            storage,
            redact: fields.iter().map(|f| f.to_lowercase()).collect(),
        }
    }

    /// What the log keeps of `params`: `None` when only the digest is kept.
    fn keep<'a>(&self, params: &'a Value) -> Option<Cow<'a, Value>> {
        match self.storage {
            ParamsStorage::Full => Some(Cow::Borrowed(params)),
            ParamsStorage::Sha256 => None,
            ParamsStorage::Redact => {
                let mut copy = params.clone();
                self.redact_in(&mut copy);
                Some(Cow::Owned(copy))
            }
        }
    }

    fn redact_in(&self, value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (k, v) in map.iter_mut() {
                    if self.redact.iter().any(|r| r.eq_ignore_ascii_case(k)) {
                        *v = Value::String(REDACTED.to_owned());
                    } else {
                        self.redact_in(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_in(v)),
            _ => {}
        }
    }
}

/// The `data` of a decision record. Fields are declared in byte order, so
/// serializing this is the canonical encoding.
#[derive(Serialize)]
pub struct DecisionData<'a> {
    action: ActionData<'a>,
    /// The approval created, or asked again with.
    #[serde(skip_serializing_if = "Option::is_none")]
    approval: Option<&'a str>,
    context: ContextData<'a>,
    /// What the policies decided.
    decided: Outcome,
    decision_id: &'a str,
    /// The session's labels it saw and attached.
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<&'a crate::decision::FlowEvidence>,
    history: HistoryData,
    /// The decision's own latency, before the record was written.
    micros: u64,
    mode: Mode,
    /// With modify: the params the action must run with, as stored.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "canonical_kept"
    )]
    modified_params: Option<Cow<'a, Value>>,
    /// What the caller was told.
    outcome: Outcome,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "canonical_kept"
    )]
    params: Option<Cow<'a, Value>>,
    params_sha256: String,
    policies: Vec<PolicyData<'a>>,
    reason: &'a str,
    risk: u8,
    rule: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    warnings: &'a [String],
}

#[derive(Serialize)]
struct ActionData<'a> {
    kind: &'a str,
    name: &'a str,
    target: &'a str,
}

#[derive(Serialize)]
struct ContextData<'a> {
    agent: &'a Principal,
    attributes: &'a std::collections::BTreeMap<String, String>,
    environment: &'a str,
    session: &'a str,
    user: Option<&'a Principal>,
}

#[derive(Serialize)]
struct HistoryData {
    calls_last_minute: u32,
    denials_last_hour: u32,
    same_action_last_minute: u32,
    spend_today_cents: u64,
}

#[derive(Serialize)]
struct PolicyData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate: Option<&'a str>,
    failure: Option<&'a str>,
    fuel: u64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    labels: &'a [String],
    micros: u64,
    mode: Mode,
    name: &'a str,
    outcome: Outcome,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "canonical_kept"
    )]
    params: Option<Cow<'a, Value>>,
    /// What it asked `labels-of` (values as hashes), for a replay.
    #[serde(skip_serializing_if = "<[crate::decision::Query]>::is_empty")]
    questions: &'a [crate::decision::Query],
    reason: &'a str,
    risk: u8,
    rule: &'a str,
    signed_version: Option<&'a str>,
    signer: Option<&'a str>,
    version: &'a str,
}

impl<'a> DecisionData<'a> {
    /// The record of `decision`, made for `request` with `history`, with
    /// params kept by `rule`.
    pub fn new(
        request: &'a Request,
        history: &History,
        decision: &'a Decision,
        rule: &ParamsRule,
    ) -> Self {
        let (a, c, h) = (&request.action, &request.context, history);
        DecisionData {
            action: ActionData {
                kind: &a.kind,
                name: &a.name,
                target: &a.target,
            },
            approval: decision.approval.as_ref().map(|a| a.id.as_str()),
            context: ContextData {
                agent: &c.agent,
                attributes: &c.attributes,
                environment: &c.environment,
                session: &c.session,
                user: c.user.as_ref(),
            },
            decided: decision.decided,
            decision_id: &decision.decision_id,
            flow: decision.flow.as_ref(),
            history: HistoryData {
                calls_last_minute: h.calls_last_minute,
                denials_last_hour: h.denials_last_hour,
                same_action_last_minute: h.same_action_last_minute,
                spend_today_cents: h.spend_today_cents,
            },
            micros: decision.micros,
            mode: decision.mode,
            modified_params: decision.params.as_ref().and_then(|p| rule.keep(p)),
            outcome: decision.outcome,
            params: rule.keep(&a.params),
            params_sha256: value_sha256(&a.params),
            policies: decision
                .policies
                .iter()
                .map(|p| PolicyData::new(p, rule))
                .collect(),
            reason: &decision.reason,
            risk: decision.risk,
            rule: &decision.rule,
            warnings: &decision.warnings,
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        // Our own types with string keys: serializing cannot fail.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }
}

impl<'a> PolicyData<'a> {
    fn new(p: &'a PolicyReport, rule: &ParamsRule) -> Self {
        PolicyData {
            candidate: p.candidate.as_deref(),
            failure: p.failure.as_deref(),
            fuel: p.fuel,
            labels: &p.labels,
            micros: p.micros,
            mode: p.mode,
            name: &p.name,
            outcome: p.outcome,
            params: p.params.as_ref().and_then(|v| rule.keep(v)),
            questions: &p.questions,
            reason: &p.reason,
            risk: p.risk,
            rule: &p.rule,
            signed_version: p.signed_version.as_deref(),
            signer: p.signer.as_deref(),
            version: &p.version,
        }
    }
}

/// The `data` of a checkpoint: the key that signs it.
pub fn checkpoint_data(key_id: &str) -> Vec<u8> {
    canonical(&serde_json::json!({ "key_id": key_id }))
}

/// The `data` of an `open` record, written each time the log is opened,
/// with what the check of its tail against the last signed checkpoint
/// found.
pub fn open_data(params: ParamsStorage, checked: Value) -> Vec<u8> {
    let params = match params {
        ParamsStorage::Full => "full",
        ParamsStorage::Sha256 => "sha256",
        ParamsStorage::Redact => "redact",
    };
    canonical(&serde_json::json!({
        "arbiter_version": env!("CARGO_PKG_VERSION"),
        "checked": checked,
        "params": params,
        "pid": std::process::id(),
    }))
}

/// A sealed segment retention removed: its name, its first and last
/// records, its size, and the limit that let it go.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Retained {
    /// The file name.
    pub segment: String,
    /// Its first record.
    pub first_seq: u64,
    /// Its first record's hash.
    pub first_hash: String,
    /// Its last record, a checkpoint.
    pub last_seq: u64,
    /// Its last record's hash, which the next segment's first record links to.
    pub last_hash: String,
    /// Its size.
    pub bytes: u64,
    /// `max_total_bytes` or `max_age_s`.
    pub reason: String,
}

/// The `data` of a `retention` record: the segments about to be removed,
/// oldest first, and the range of records they held.
pub fn retention_data(removed: &[Retained]) -> Vec<u8> {
    let first = removed.first();
    let last = removed.last();
    canonical(&serde_json::json!({
        "first_seq": first.map(|r| r.first_seq),
        "first_hash": first.map(|r| &r.first_hash),
        "last_seq": last.map(|r| r.last_seq),
        "last_hash": last.map(|r| &r.last_hash),
        "segments": removed,
    }))
}

/// The `data` of a `crash` record: a torn last line found at start and cut.
pub fn crash_data(segment: &str, offset: u64, torn: &[u8]) -> Vec<u8> {
    canonical(&serde_json::json!({
        "segment": segment,
        "offset": offset,
        "torn_bytes": torn.len(),
        "torn_sha256": sha256(torn),
    }))
}

/// The `data` of a `gap` record: decisions made while the log could not
/// be written.
pub fn gap_data(count: u64, first_at: &str, last_at: &str, error: &str, answered: &str) -> Vec<u8> {
    canonical(&serde_json::json!({
        "answered": answered,
        "count": count,
        "error": error,
        "first_at": first_at,
        "last_at": last_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Action, Context};
    use serde_json::json;

    fn request() -> Request {
        Request {
            trace: None,
            approval_id: None,
            action: Action {
                kind: "tool".into(),
                name: "send_email".into(),
                target: "bob@corp.example".into(),
                params: json!({"to": ["bob@corp.example"], "amount": 12.5, "big": 1e300,
                               "neg": -3, "note": "é \"quoted\" \n tab\t \u{1}", "z": {"b": 1, "a": [true, null]},
                               "password": "hunter2"}),
            },
            context: Context {
                agent: Principal {
                    id: "bot".into(),
                    roles: vec!["r".into()],
                },
                user: Some(Principal::default()),
                environment: "prod".into(),
                session: "s".into(),
                attributes: [
                    ("zone".to_owned(), "eu".to_owned()),
                    ("a".into(), "b".into()),
                ]
                .into_iter()
                .collect(),
            },
            history: Default::default(),
        }
    }

    fn decision() -> Decision {
        Decision {
            approval: None,
            decision_id: "d-1".into(),
            outcome: Outcome::Modify,
            decided: Outcome::Modify,
            mode: Mode::Enforce,
            warnings: vec!["w".into()],
            reason: "Redacted.".into(),
            rule: "pii.redacted".into(),
            risk: 40,
            params: Some(json!({"to": "x", "n": 1})),
            policies: vec![PolicyReport {
                name: "pii".into(),
                version: "sha256:ab".into(),
                signer: Some("team".into()),
                signed_version: None,
                mode: Mode::SoftEnforce,
                candidate: Some("v2".into()),
                outcome: Outcome::Modify,
                rule: "pii.redacted".into(),
                reason: "Redacted.".into(),
                risk: 40,
                params: Some(json!({"to": "x", "n": 1})),
                fuel: 10,
                micros: 3,
                failure: None,
                labels: Vec::new(),
                questions: Vec::new(),
            }],
            flow: None,
            micros: 5,
        }
    }

    #[test]
    fn canonical_matches_the_writer() {
        let (req, dec) = (request(), decision());
        for storage in [
            ParamsStorage::Full,
            ParamsStorage::Sha256,
            ParamsStorage::Redact,
        ] {
            let rule = ParamsRule::new(storage, &["PASSWORD".into()]);
            let data = DecisionData::new(&req, &req.history, &dec, &rule).encode();
            let mut written = Vec::new();
            let replica = (storage == ParamsStorage::Full).then_some("b-\"1\\");
            let hash = append_line(
                &mut written,
                "decision",
                &data,
                Place {
                    prev_hash: GENESIS,
                    replica,
                    seq: 7,
                    ts: "2026-12-01T00:00:00.000001Z",
                },
                |_| Some("00".into()),
            );
            let parsed = Parsed::from_line(&written[..written.len() - 1]).expect("parses");
            let canonical_text = String::from_utf8(canonical(&parsed.value)).expect("utf-8");
            assert!(
                String::from_utf8_lossy(&written).starts_with(canonical_text.trim_end_matches('}')),
                "{storage:?}: {canonical_text}"
            );
            assert_eq!(parsed.computed, hash);
            assert_eq!((parsed.seq, parsed.kind.as_str()), (7, "decision"));
            assert_eq!(parsed.signature.as_deref(), Some("00"));
            assert_eq!(parsed.replica(), replica);
            let data = parsed.data();
            assert_eq!(
                data["params_sha256"],
                sha256(&canonical(&req.action.params))
            );
            match storage {
                ParamsStorage::Full => assert_eq!(data["params"], req.action.params),
                ParamsStorage::Sha256 => assert!(data.get("params").is_none()),
                ParamsStorage::Redact => {
                    assert_eq!(data["params"]["password"], REDACTED);
                    assert_eq!(data["params"]["neg"], -3);
                }
            }
        }
    }

    #[test]
    fn keys_are_sorted_whatever_order_the_map_keeps() {
        // Inserted out of order: with `preserve_order` on in this build the
        // map keeps that order, and the encoding must not.
        let mut inner = serde_json::Map::new();
        inner.insert("b".into(), json!(1));
        inner.insert("a".into(), json!([{"y": 1, "x": 2}]));
        let mut outer = serde_json::Map::new();
        outer.insert("z".into(), Value::Object(inner));
        outer.insert("é".into(), json!(null));
        outer.insert("A".into(), json!("q"));
        let value = Value::Object(outer);
        let golden = r#"{"A":"q","z":{"a":[{"x":2,"y":1}],"b":1},"é":null}"#;
        assert_eq!(String::from_utf8(canonical(&value)).expect("utf-8"), golden);
        assert_eq!(value_sha256(&value), sha256(golden.as_bytes()));

        // The writer sorts the params it keeps, too.
        let mut req = request();
        req.action.params = value;
        let data = DecisionData::new(
            &req,
            &req.history,
            &decision(),
            &ParamsRule::new(ParamsStorage::Full, &[]),
        )
        .encode();
        let text = String::from_utf8(data).expect("utf-8");
        assert!(text.contains(&format!("\"params\":{golden}")), "{text}");
    }

    #[test]
    fn a_changed_field_changes_the_hash() {
        let (req, dec) = (request(), decision());
        let data = DecisionData::new(
            &req,
            &req.history,
            &dec,
            &ParamsRule::new(ParamsStorage::Full, &[]),
        )
        .encode();
        let mut written = Vec::new();
        let place = Place {
            prev_hash: GENESIS,
            replica: Some("a"),
            seq: 1,
            ts: "t",
        };
        append_line(&mut written, "decision", &data, place, |_| None);
        let written = String::from_utf8(written).expect("utf-8");
        let edited = written.replace("sha256:ab", "sha256:cd");
        let p = Parsed::from_line(edited.trim_end().as_bytes()).expect("parses");
        assert_ne!(p.computed, p.hash);
        // Nor can a record be moved to another replica's name.
        let moved = written.replace("\"replica\":\"a\"", "\"replica\":\"b\"");
        assert_ne!(moved, written);
        let p = Parsed::from_line(moved.trim_end().as_bytes()).expect("parses");
        assert_ne!(p.computed, p.hash);
        // Re-spacing the JSON is not a change of content.
        let spaced = written.replace(",\"seq\":", ", \"seq\" : ");
        let p = Parsed::from_line(spaced.trim_end().as_bytes()).expect("parses");
        assert_eq!(p.computed, p.hash);
    }

    #[test]
    fn lines_that_are_not_records_are_refused() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{}",
            b"{\"hash\": 1}",
            b"{\"hash\":\"x\"}",
        ] {
            assert!(Parsed::from_line(bad).is_none());
        }
    }
}
