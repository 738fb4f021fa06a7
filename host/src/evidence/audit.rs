//! Reading a decision log back, as an auditor does: [`verify`] checks the
//! hash chain, the checkpoint signatures and the checkpoints file;
//! [`query`] and [`stats`] filter and count decision records, of one log
//! or of a fleet's several, merged by time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::log::segments;
use super::record::{GENESIS, Parsed, Retained, checkpoint_message};
use crate::signing::PublicKey;

/// A log that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the decision log `{}`: {problem}", path.display())]
pub struct AuditError {
    /// The file or directory.
    pub path: PathBuf,
    /// The I/O error.
    pub problem: String,
}

/// What is wrong at the first broken place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Breakage {
    /// A record's content, hash or link differs from what was written.
    Changed,
    /// Records are absent.
    Missing,
    /// Records are out of order.
    Reordered,
    /// The tail was cut: a signed checkpoint covers records the log lacks.
    Truncated,
}

impl std::fmt::Display for Breakage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Breakage::Changed => "changed",
            Breakage::Missing => "missing",
            Breakage::Reordered => "reordered",
            Breakage::Truncated => "truncated",
        })
    }
}

/// The first place the log is broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    /// The first sequence number that is not as written.
    pub seq: u64,
    /// What kind of break.
    pub kind: Breakage,
    /// What exactly, naming segment and line.
    pub detail: String,
}

/// A log that verified.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// Records in the chain.
    pub records: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// Segment files read.
    pub segments: usize,
    /// The last record's sequence number and hash.
    pub head_seq: u64,
    /// The last record's hash.
    pub head_hash: String,
    /// The first record in the log: 1, or later when retention removed
    /// the records before it (a `retention` record in the chain says so).
    pub first_seq: u64,
    /// Records after the last checkpoint: chained, not yet signed.
    pub unsigned_tail: u64,
    /// An incomplete last line (a write in progress, or torn by a crash
    /// and not yet repaired by a restart): its length in bytes.
    pub torn_tail_bytes: usize,
    /// The replica names the records carry, in the order they first
    /// appear: none for a single node's log, one for a fleet replica's,
    /// more if it was renamed.
    pub replicas: Vec<String>,
    /// When the first record and the last were written (RFC 3339).
    pub first_ts: String,
    /// When the last record was written.
    pub head_ts: String,
}

/// Whose signature checkpoints must carry, and where their copies are.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The checkpoint key's public half.
    pub key: PublicKey,
    /// The checkpoints file to compare with; when given it must exist.
    pub checkpoints_file: Option<PathBuf>,
}

struct Line<'a> {
    segment: String,
    number: usize,
    bytes: &'a [u8],
}

impl Line<'_> {
    fn place(&self) -> String {
        format!("{} line {}", self.segment, self.number)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuditError> {
    std::fs::read(path).map_err(|e| AuditError {
        path: path.to_owned(),
        problem: e.to_string(),
    })
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, AuditError> {
    segments(dir).map_err(|e| AuditError {
        path: dir.to_owned(),
        problem: e.to_string(),
    })
}

/// Splits a segment into whole lines, and the length of an incomplete
/// last one.
fn lines<'a>(segment: &str, bytes: &'a [u8]) -> (Vec<Line<'a>>, usize) {
    let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    let lines = bytes[..whole]
        .split(|b| *b == b'\n')
        .take_while(|_| whole > 0)
        .enumerate()
        .filter(|(_, l)| !l.is_empty())
        .map(|(i, l)| Line {
            segment: segment.to_owned(),
            number: i + 1,
            bytes: l,
        })
        .collect();
    (lines, bytes.len() - whole)
}

fn name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks the log in `dir`: every record's hash over its content, every
/// link to the record before, sequence numbers without gap or swap, every
/// checkpoint's signature, and the checkpoints file against the log.
///
/// # Errors
/// An [`AuditError`] when a file cannot be read; a broken log is
/// `Ok(Err(Broken))`.
pub fn verify(dir: &Path, options: &VerifyOptions) -> Result<Result<Verified, Broken>, AuditError> {
    // The copies first: the writer puts a checkpoint in the log before it
    // copies it, so on a live log every copy read now is in the log read
    // next, and a cut cannot be confused with a write in progress.
    // A missing file is an error, not a check skipped: deleting it with
    // the log's tail must not make a cut log verify.
    let copies_bytes = match &options.checkpoints_file {
        Some(file) => Some((name(file), read(file)?)),
        None => None,
    };
    let files = list(dir)?;
    let mut v = Verified {
        segments: files.len(),
        head_hash: GENESIS.to_owned(),
        ..Verified::default()
    };
    let mut checkpoint_hashes = BTreeMap::new();
    // Segments retention removed, by last seq: their last hash.
    let mut retained = BTreeMap::new();
    // A log that starts after record 1: (first seq, its link, where), until a
    // retention record accounts for what came before.
    let mut late_start: Option<(u64, String, String)> = None;
    for (si, path) in files.iter().enumerate() {
        let bytes = read(path)?;
        let (lines, torn) = lines(&name(path), &bytes);
        if torn > 0 {
            if si + 1 < files.len() {
                return Ok(Err(Broken {
                    seq: v.head_seq.saturating_add(1),
                    kind: Breakage::Changed,
                    detail: format!(
                        "{} ends in an incomplete line, yet later segments follow",
                        name(path)
                    ),
                }));
            }
            v.torn_tail_bytes = torn;
        }
        for (i, line) in lines.iter().enumerate() {
            let Some(expected) = v.head_seq.checked_add(1) else {
                return Ok(Err(Broken {
                    seq: v.head_seq,
                    kind: Breakage::Changed,
                    detail: format!("{} follows the largest sequence number", line.place()),
                }));
            };
            let Some(p) = Parsed::from_line(line.bytes) else {
                return Ok(Err(Broken {
                    seq: expected,
                    kind: Breakage::Changed,
                    detail: format!("{} is not a record", line.place()),
                }));
            };
            if v.records == 0 && p.seq > 1 {
                // Checked once the chain is read: a retention record must
                // name the segment this one follows.
                late_start = Some((p.seq, p.prev_hash.clone(), line.place()));
                v.head_seq = p.seq - 1;
                v.head_hash.clone_from(&p.prev_hash);
                v.first_seq = p.seq;
            } else if v.records == 0 {
                v.first_seq = 1;
            }
            let expected = v.head_seq.saturating_add(1);
            if p.seq != expected {
                return Ok(Err(out_of_sequence(&p, expected, &lines[i..], line)));
            }
            if p.computed != p.hash {
                return Ok(Err(Broken {
                    seq: p.seq,
                    kind: Breakage::Changed,
                    detail: format!(
                        "record {} ({}) does not match its hash: a field was changed after it was written",
                        p.seq,
                        line.place()
                    ),
                }));
            }
            if p.prev_hash != v.head_hash {
                let detail = if p.seq == 1 {
                    format!("record 1 ({}) does not start a chain", line.place())
                } else {
                    format!(
                        "record {} ({}) does not link to record {}: record {} was changed and re-hashed, or replaced",
                        p.seq,
                        line.place(),
                        p.seq - 1,
                        p.seq - 1
                    )
                };
                return Ok(Err(Broken {
                    seq: p.seq.saturating_sub(1).max(1),
                    kind: Breakage::Changed,
                    detail,
                }));
            }
            if p.kind == "retention" {
                let segments = p.data()["segments"].clone();
                let segments: Vec<Retained> = serde_json::from_value(segments).unwrap_or_default();
                for r in segments {
                    retained.insert(r.last_seq, r.last_hash);
                }
            }
            if p.kind == "checkpoint" {
                if let Err(detail) = check_signature(&p, &options.key) {
                    return Ok(Err(Broken {
                        seq: p.seq,
                        kind: Breakage::Changed,
                        detail: format!("{detail} ({})", line.place()),
                    }));
                }
                v.checkpoints += 1;
                v.unsigned_tail = 0;
                checkpoint_hashes.insert(p.seq, p.hash.clone());
            } else {
                v.unsigned_tail += 1;
            }
            if let Some(r) = p.replica()
                && !v.replicas.iter().any(|known| known == r)
            {
                v.replicas.push(r.to_owned());
            }
            if v.records == 0 {
                v.first_ts = p.ts().to_owned();
            }
            v.head_ts = p.ts().to_owned();
            v.records += 1;
            v.head_seq = p.seq;
            v.head_hash = p.hash;
        }
    }
    if let Some((first, link, place)) = &late_start {
        let before = first - 1;
        let Some(named) = retained.get(&before) else {
            return Ok(Err(Broken {
                seq: 1,
                kind: Breakage::Missing,
                detail: format!(
                    "the log starts at record {first} ({place}), and no retention record says records ..={before} were let go"
                ),
            }));
        };
        if named != link {
            return Ok(Err(Broken {
                seq: *first,
                kind: Breakage::Changed,
                detail: format!(
                    "record {first} ({place}) does not link to record {before} as the retention record names it"
                ),
            }));
        }
    }
    if let Some((file_name, bytes)) = &copies_bytes {
        let (copies, _) = lines(file_name, bytes);
        let mut furthest: Option<(u64, String)> = None;
        for line in &copies {
            // A copy that does not verify is itself a sign of tampering.
            let bad_copy = |why: String| Broken {
                seq: v.head_seq.saturating_add(1),
                kind: Breakage::Changed,
                detail: format!("{} is not a valid signed checkpoint: {why}", line.place()),
            };
            let Some(p) = Parsed::from_line(line.bytes) else {
                return Ok(Err(bad_copy("not a record".into())));
            };
            if p.computed != p.hash {
                return Ok(Err(bad_copy("its content does not match its hash".into())));
            }
            if let Err(why) = check_signature(&p, &options.key) {
                return Ok(Err(bad_copy(why)));
            }
            if p.seq < v.first_seq {
                // A copy of a checkpoint retention removed: where it sealed
                // a segment, the retention record must agree with it.
                if retained.get(&p.seq).is_some_and(|h| *h != p.hash) {
                    return Ok(Err(Broken {
                        seq: p.seq,
                        kind: Breakage::Changed,
                        detail: format!(
                            "the retention record names record {} with another hash than its signed checkpoint in {}",
                            p.seq,
                            line.place()
                        ),
                    }));
                }
            } else if p.seq > v.head_seq {
                if furthest.as_ref().is_none_or(|(seq, _)| p.seq > *seq) {
                    furthest = Some((p.seq, line.place()));
                }
            } else if checkpoint_hashes.get(&p.seq) != Some(&p.hash) {
                return Ok(Err(Broken {
                    seq: p.seq,
                    kind: Breakage::Changed,
                    detail: format!(
                        "record {} differs from the signed checkpoint kept in {}: the chain up to it was rewritten",
                        p.seq,
                        line.place()
                    ),
                }));
            }
        }
        if let Some((seq, place)) = furthest {
            return Ok(Err(Broken {
                seq: v.head_seq.saturating_add(1),
                kind: Breakage::Truncated,
                detail: format!(
                    "the log ends at record {}, but a signed checkpoint ({place}) covers records up to {seq}: records {}..={seq} were cut",
                    v.head_seq,
                    v.head_seq.saturating_add(1),
                ),
            }));
        }
    }
    Ok(Ok(v))
}

/// A record whose seq is not the next: missing records, or a swap.
fn out_of_sequence(p: &Parsed, expected: u64, rest: &[Line<'_>], line: &Line<'_>) -> Broken {
    if p.seq < expected {
        return Broken {
            seq: p.seq,
            kind: Breakage::Reordered,
            detail: format!(
                "record {} ({}) comes after record {}",
                p.seq,
                line.place(),
                expected - 1
            ),
        };
    }
    let later = rest
        .iter()
        .find(|l| Parsed::from_line(l.bytes).is_some_and(|q| q.seq == expected));
    match later {
        Some(l) => Broken {
            seq: expected,
            kind: Breakage::Reordered,
            detail: format!(
                "record {expected} ({}) comes after record {} ({})",
                l.place(),
                p.seq,
                line.place()
            ),
        },
        None if expected == 1 => Broken {
            seq: 1,
            kind: Breakage::Missing,
            detail: format!(
                "the log starts at record {} ({}): records 1..={} are not there",
                p.seq,
                line.place(),
                p.seq - 1
            ),
        },
        None => Broken {
            seq: expected,
            kind: Breakage::Missing,
            detail: format!(
                "records {expected}..={} are missing before {}",
                p.seq - 1,
                line.place()
            ),
        },
    }
}

pub(crate) fn check_signature(p: &Parsed, key: &PublicKey) -> Result<(), String> {
    let key_id = p.data()["key_id"].as_str().unwrap_or_default();
    if key_id != key.id() {
        return Err(format!(
            "checkpoint {} is signed by key `{key_id}`, not by the checkpoint key `{}`",
            p.seq,
            key.id()
        ));
    }
    let signed = p
        .signature
        .as_deref()
        .is_some_and(|s| key.verifies_message(&checkpoint_message(p.seq, &p.hash), s));
    if signed {
        Ok(())
    } else {
        Err(format!("checkpoint {}'s signature does not verify", p.seq))
    }
}

/// Which decision records to keep; every field set must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `context.agent.id`, exactly.
    pub agent: Option<String>,
    /// A policy that ran, by name.
    pub policy: Option<String>,
    /// The outcome the caller was told.
    pub outcome: Option<String>,
    /// The deciding rule.
    pub rule: Option<String>,
    /// At or after this time.
    pub since: Option<SystemTime>,
    /// Before this time.
    pub until: Option<SystemTime>,
}

impl Filter {
    fn matches(&self, p: &Parsed) -> bool {
        let d = p.data();
        let is = |field: &Option<String>, value: &Value| {
            field.as_ref().is_none_or(|f| value.as_str() == Some(f))
        };
        let when = || humantime::parse_rfc3339(p.ts()).ok();
        is(&self.agent, &d["context"]["agent"]["id"])
            && is(&self.outcome, &d["outcome"])
            && is(&self.rule, &d["rule"])
            && self.policy.as_ref().is_none_or(|name| {
                d["policies"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|q| q["name"].as_str() == Some(name)))
            })
            && self.since.is_none_or(|s| when().is_some_and(|t| t >= s))
            && self.until.is_none_or(|u| when().is_some_and(|t| t < u))
    }
}

/// One log's records, oldest first, one segment in memory at a time.
struct Reader {
    files: std::vec::IntoIter<PathBuf>,
    bytes: Vec<u8>,
    at: usize,
}

impl Reader {
    fn open(dir: &Path) -> Result<Reader, AuditError> {
        Ok(Reader {
            files: list(dir)?.into_iter(),
            bytes: Vec::new(),
            at: 0,
        })
    }

    /// The next whole line that is a record; lines that are not, and an
    /// incomplete last line, are passed over (`verify` finds them).
    fn next(&mut self) -> Result<Option<Parsed>, AuditError> {
        loop {
            if let Some(end) = self.bytes[self.at..].iter().position(|b| *b == b'\n') {
                let line = &self.bytes[self.at..self.at + end];
                self.at += end + 1;
                if let Some(p) = Parsed::from_line(line) {
                    return Ok(Some(p));
                }
                continue;
            }
            let Some(path) = self.files.next() else {
                return Ok(None);
            };
            self.bytes = read(&path)?;
            self.at = 0;
        }
    }

    /// The next decision record `filter` keeps.
    fn next_kept(&mut self, filter: &Filter) -> Result<Option<Parsed>, AuditError> {
        while let Some(p) = self.next()? {
            if p.kind == "decision" && filter.matches(&p) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }
}

/// Calls `each` with every decision record of the logs in `dirs` that
/// `filter` keeps, until it returns false: each log oldest first, and
/// several merged by the time each record was written (ties in the order
/// of `dirs`).
///
/// # Errors
/// An [`AuditError`] when a file cannot be read.
pub fn query<P: AsRef<Path>>(
    dirs: &[P],
    filter: &Filter,
    mut each: impl FnMut(&Parsed) -> bool,
) -> Result<(), AuditError> {
    let mut readers = dirs
        .iter()
        .map(|d| Reader::open(d.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut heads = readers
        .iter_mut()
        .map(|r| r.next_kept(filter))
        .collect::<Result<Vec<_>, _>>()?;
    loop {
        // `min_by` keeps the first of equals: ties go in the order of dirs.
        let earliest = heads
            .iter()
            .enumerate()
            .filter_map(|(i, h)| h.as_ref().map(|p| (i, p.ts())))
            .min_by(|a, b| a.1.cmp(b.1))
            .map(|(i, _)| i);
        let Some(i) = earliest else {
            return Ok(());
        };
        if let Some(p) = heads[i].take()
            && !each(&p)
        {
            return Ok(());
        }
        heads[i] = readers[i].next_kept(filter)?;
    }
}

/// Counts of the decision records a filter keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Decision records.
    pub decisions: u64,
    /// By the outcome the caller was told.
    pub by_outcome: BTreeMap<String, u64>,
    /// By policy, then the outcome that policy gave.
    pub by_policy: BTreeMap<String, BTreeMap<String, u64>>,
    /// By deciding rule.
    pub by_rule: BTreeMap<String, u64>,
    /// By the replica that decided, for a fleet's logs.
    pub by_replica: BTreeMap<String, u64>,
}

/// Counts the decision records of the logs in `dirs` that `filter` keeps.
///
/// # Errors
/// An [`AuditError`] when a file cannot be read.
pub fn stats<P: AsRef<Path>>(dirs: &[P], filter: &Filter) -> Result<Stats, AuditError> {
    let mut s = Stats::default();
    query(dirs, filter, |p| {
        let d = p.data();
        let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
        s.decisions += 1;
        if let Some(r) = p.replica() {
            *s.by_replica.entry(r.to_owned()).or_default() += 1;
        }
        *s.by_outcome.entry(text(&d["outcome"])).or_default() += 1;
        *s.by_rule.entry(text(&d["rule"])).or_default() += 1;
        for q in d["policies"].as_array().into_iter().flatten() {
            *s.by_policy
                .entry(text(&q["name"]))
                .or_default()
                .entry(text(&q["outcome"]))
                .or_default() += 1;
        }
        true
    })?;
    Ok(s)
}
