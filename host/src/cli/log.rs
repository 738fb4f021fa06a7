//! `arbiter log`: what an auditor runs on a decision log directory, or on
//! a fleet's several (one per replica).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use super::EXIT_FAILURES;
use crate::config::Config;
use crate::evidence::audit::{self, Filter, VerifyOptions};
use crate::evidence::log;
use crate::signing::PublicKey;
use crate::state;

#[derive(Debug, Subcommand)]
pub(super) enum LogCommand {
    /// Check every record's hash and link, the checkpoint signatures and
    /// the checkpoints file, of each log given. Prints what verified, or
    /// the first broken sequence number and what is wrong, per log, then
    /// the fleet's; exits 1 if any is broken.
    Verify(VerifyLogArgs),
    /// Print the decision records that match, one JSON object per line;
    /// several logs merged by time.
    Query(QueryArgs),
    /// Count the decision records that match, by outcome, policy, rule
    /// and replica.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub(super) struct VerifyLogArgs {
    /// The log directories: one, or one per replica of a fleet.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// The checkpoint key's public file, kept where whoever can write the
    /// log cannot [default: the public half of the key the configuration
    /// names]. Never read from the log directory. Once for all logs, or
    /// once per log in the order of the directories.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    key: Vec<PathBuf>,
    /// The configuration whose `log.checkpoint_key` (its `.pub` half) and
    /// checkpoints file to use [default: the embedded default, whose key is
    /// in the state directory]. Once for all logs, or once per log.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
    /// The checkpoints file; verify fails when it is missing [default:
    /// the configuration's, or DIR/checkpoints.jsonl]. Once per log.
    #[arg(long, value_name = "FILE")]
    checkpoints: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Only this agent (`context.agent.id`).
    #[arg(long)]
    agent: Option<String>,
    /// Only decisions this policy took part in.
    #[arg(long)]
    policy: Option<String>,
    /// Only this outcome (what the caller was told).
    #[arg(long)]
    outcome: Option<String>,
    /// Only this deciding rule.
    #[arg(long)]
    rule: Option<String>,
    /// At or after this time: RFC 3339 (`2026-12-01T09:00:00Z`) or an age
    /// (`15m`, `2h`, `7d`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before this time, in the same forms.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

#[derive(Debug, Args)]
pub(super) struct QueryArgs {
    /// The log directories: one, or one per replica of a fleet.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    #[command(flatten)]
    filter: FilterArgs,
    /// At most this many records.
    #[arg(long)]
    limit: Option<usize>,
}

#[derive(Debug, Args)]
pub(super) struct StatsArgs {
    /// The log directories: one, or one per replica of a fleet.
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(command: &LogCommand) -> anyhow::Result<ExitCode> {
    match command {
        LogCommand::Verify(args) => verify(args),
        LogCommand::Query(args) => query(args),
        LogCommand::Stats(args) => stats(args),
    }
}

pub(super) fn existing_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("`{}` is not a decision log directory", dir.display());
    }
    Ok(())
}

/// The `i`th of `given` for the `i`th of `n` logs: none, one for all, or
/// one each.
fn nth<'a>(
    given: &'a [PathBuf],
    i: usize,
    n: usize,
    flag: &str,
) -> anyhow::Result<Option<&'a PathBuf>> {
    match given.len() {
        0 => Ok(None),
        1 if flag != "--checkpoints" || n == 1 => Ok(given.first()),
        len if len == n => Ok(given.get(i)),
        len => bail!(
            "{len} {flag} for {n} logs: give it once per log, in the order of the directories{}",
            if flag == "--checkpoints" {
                ""
            } else {
                ", or once for all"
            }
        ),
    }
}

/// The public key and checkpoints file `verify` checks the `i`th log
/// against: from `--key`, or the configuration; never from the log
/// directory itself.
fn verify_options(args: &VerifyLogArgs, i: usize) -> anyhow::Result<VerifyOptions> {
    let n = args.dirs.len();
    let dir = &args.dirs[i];
    let (key_path, checkpoints) = match nth(&args.key, i, n, "--key")? {
        Some(key) => (key.clone(), dir.join(log::CHECKPOINTS_FILE)),
        None => {
            let (config, base) = match nth(&args.config, i, n, "--config")? {
                Some(path) => Config::from_file(path)?,
                None => (Config::default_config()?, PathBuf::new()),
            };
            let private = match &config.log.checkpoint_key {
                Some(key) => base.join(key),
                None => state::resolve_dir(&config.state, &base)
                    .context("no state directory to find the checkpoint key in: give --key")?
                    .join(log::CHECKPOINT_KEY_FILE),
            };
            (
                log::public_key_path(&private),
                log::checkpoints_path(&config.log, dir),
            )
        }
    };
    if crate::paths::is_inside(&key_path, dir) {
        bail!(
            "the checkpoint key `{}` is inside the log directory it would vouch for: whoever can rewrite the log can rewrite it; give a copy kept elsewhere",
            key_path.display()
        );
    }
    let text = std::fs::read_to_string(&key_path).with_context(|| {
        format!(
            "cannot read the checkpoint key `{}` (give one with --key or --config)",
            key_path.display()
        )
    })?;
    let key = PublicKey::from_file(&text)
        .with_context(|| format!("checkpoint key `{}`", key_path.display()))?;
    Ok(VerifyOptions {
        key,
        checkpoints_file: Some(
            nth(&args.checkpoints, i, n, "--checkpoints")?
                .cloned()
                .unwrap_or(checkpoints),
        ),
    })
}

fn verify(args: &VerifyLogArgs) -> anyhow::Result<ExitCode> {
    for dir in &args.dirs {
        existing_dir(dir)?;
    }
    let many = args.dirs.len() > 1;
    let mut verified = Vec::new();
    let mut broken = 0;
    for (i, dir) in args.dirs.iter().enumerate() {
        let options = verify_options(args, i)?;
        if many {
            println!("{}:", dir.display());
        }
        match audit::verify(dir, &options)? {
            Ok(v) => {
                print_verified(&v);
                verified.push((dir, v));
            }
            Err(b) => {
                println!("broken at record {}: {}: {}", b.seq, b.kind, b.detail);
                broken += 1;
            }
        }
    }
    if !many {
        return Ok(if broken == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILURES)
        });
    }
    // A replica's name in two logs is one log copied, or two replicas
    // configured alike: either way their records cannot be told apart.
    let mut named: std::collections::BTreeMap<&str, &Path> = std::collections::BTreeMap::new();
    for (dir, v) in &verified {
        for r in &v.replicas {
            if let Some(other) = named.insert(r, dir) {
                println!(
                    "broken: replica `{r}` writes both `{}` and `{}`: a copied log, or two replicas with one name",
                    other.display(),
                    dir.display()
                );
                broken += 1;
            }
        }
    }
    let records: u64 = verified.iter().map(|(_, v)| v.records).sum();
    let first = verified
        .iter()
        .map(|(_, v)| v.first_ts.as_str())
        .filter(|t| !t.is_empty())
        .min();
    let last = verified.iter().map(|(_, v)| v.head_ts.as_str()).max();
    println!(
        "fleet: {} of {} logs verified, {records} records{}",
        verified.len(),
        args.dirs.len(),
        match (first, last) {
            (Some(f), Some(l)) => format!(" from {f} to {l}"),
            _ => String::new(),
        }
    );
    Ok(if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILURES)
    })
}

fn print_verified(v: &audit::Verified) {
    println!(
        "verified {} records and {} checkpoints in {} segments; head: record {} {}",
        v.records, v.checkpoints, v.segments, v.head_seq, v.head_hash
    );
    match v.replicas.as_slice() {
        [] => {}
        [one] => println!("replica: {one}"),
        many => println!("replicas: {} (renamed along the way)", many.join(", ")),
    }
    if v.unsigned_tail > 0 {
        println!(
            "note: the last {} records follow the last checkpoint: chained, not yet signed",
            v.unsigned_tail
        );
    }
    if v.torn_tail_bytes > 0 {
        println!(
            "note: the last line is incomplete ({} bytes): a write in progress, or torn by a crash (the next start cuts it and says so)",
            v.torn_tail_bytes
        );
    }
    if v.first_seq > 1 {
        println!(
            "note: records before {} were let go by retention, as a retention record in the chain says",
            v.first_seq
        );
    }
}

fn filter(args: &FilterArgs) -> anyhow::Result<Filter> {
    Ok(Filter {
        agent: args.agent.clone(),
        policy: args.policy.clone(),
        outcome: args.outcome.clone(),
        rule: args.rule.clone(),
        since: args.since.as_deref().map(time).transpose()?,
        until: args.until.as_deref().map(time).transpose()?,
    })
}

/// An RFC 3339 time, or an age before now.
pub(super) fn time(text: &str) -> anyhow::Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let age = humantime::parse_duration(text).with_context(|| {
        format!(
            "`{text}` is neither an RFC 3339 time (2026-12-01T09:00:00Z) nor an age (15m, 2h, 7d)"
        )
    })?;
    SystemTime::now()
        .checked_sub(age)
        .with_context(|| format!("`{text}` reaches before the epoch"))
}

fn query(args: &QueryArgs) -> anyhow::Result<ExitCode> {
    for dir in &args.dirs {
        existing_dir(dir)?;
    }
    let filter = filter(&args.filter)?;
    let mut out = std::io::stdout().lock();
    let mut left = args.limit.unwrap_or(usize::MAX);
    let mut failed = None;
    audit::query(&args.dirs, &filter, |p| {
        if left == 0 {
            return false;
        }
        left -= 1;
        // The record as the chain holds it, its hash included, so each line
        // can be matched to a copy kept elsewhere (a SIEM's, over OTLP).
        let mut record = p.value.clone();
        if let Some(o) = record.as_object_mut() {
            o.insert("hash".into(), p.hash.clone().into());
        }
        let written = serde_json::to_writer(&mut out, &record)
            .map_err(std::io::Error::from)
            .and_then(|()| out.write_all(b"\n"));
        match written {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    match failed {
        // A closed pipe (`| head`) is a reader that has what it wants.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("cannot write"),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn stats(args: &StatsArgs) -> anyhow::Result<ExitCode> {
    for dir in &args.dirs {
        existing_dir(dir)?;
    }
    let s = audit::stats(&args.dirs, &filter(&args.filter)?)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{} decisions", s.decisions);
    println!("\nby outcome:");
    for (outcome, n) in &s.by_outcome {
        println!("  {n:>10}  {outcome}");
    }
    println!("\nby policy:");
    for (policy, outcomes) in &s.by_policy {
        let parts: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
        println!("  {policy}: {}", parts.join(", "));
    }
    if !s.by_replica.is_empty() {
        println!("\nby replica:");
        for (replica, n) in &s.by_replica {
            println!("  {n:>10}  {replica}");
        }
    }
    println!("\nby rule:");
    let mut rules: Vec<_> = s.by_rule.iter().collect();
    rules.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (rule, n) in rules {
        println!("  {n:>10}  {rule}");
    }
    Ok(ExitCode::SUCCESS)
}
