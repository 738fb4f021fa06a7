//! The rollout commands: `arbiter mode`, `arbiter promote`, `arbiter
//! baseline`, `arbiter ab report` (on a running server) and `arbiter
//! replay` (offline, on a decision log).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::Value;

use super::log::{existing_dir, time};
use super::{LimitArgs, RemoteArgs, call, engine, policy_name, read_state, remote};
use crate::evidence::audit::Filter;
use crate::load::{self, CompileCache, PolicySpec, Source};
use crate::mode::Mode;
use crate::shadow::replay;

#[derive(Debug, Args)]
pub(super) struct ModeArgs {
    /// The policy.
    name: String,
    /// monitor, soft-enforce or enforce.
    mode: Mode,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct PromoteArgs {
    /// The policy.
    name: String,
    /// The candidate's id.
    candidate: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct BaselineArgs {
    /// Only this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Print the server's JSON instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Subcommand)]
pub(super) enum AbCommand {
    /// Show how each candidate of a policy decides beside its serving
    /// version: agreement, confusion matrix, diverging rules, samples.
    Report(AbReportArgs),
}

#[derive(Debug, Args)]
pub(super) struct AbReportArgs {
    /// The policy.
    name: String,
    /// Print the server's JSON instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct ReplayArgs {
    /// The decision log directory.
    #[arg(long, value_name = "DIR")]
    log: PathBuf,
    /// The policy, as the log names it, whose decisions to replay.
    #[arg(long)]
    policy: String,
    /// The candidate component (.wasm).
    #[arg(long, value_name = "FILE")]
    candidate: PathBuf,
    /// The candidate's settings, as JSON.
    #[arg(long, value_name = "JSON", default_value = "{}")]
    settings: String,
    /// What to call the candidate in the report [default: the file's stem].
    #[arg(long)]
    id: Option<String>,
    /// Diverging inputs to keep in the report.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    #[command(flatten)]
    limits: LimitArgs,
    /// Only this agent's decisions.
    #[arg(long)]
    agent: Option<String>,
    /// Decisions at or after this time: RFC 3339 or an age (`7d`).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Decisions before this time, in the same forms.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Print JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

pub(super) fn mode(args: &ModeArgs) -> anyhow::Result<ExitCode> {
    let server = remote(&args.remote)?;
    let path = format!("/v1/policies/{}/mode", args.name);
    let body = serde_json::json!({ "mode": args.mode });
    let done = call(&server, hyper::Method::PUT, &path, Some(&body))?;
    println!(
        "policy `{}`: mode {} -> {}, from the next decision",
        args.name,
        text(&done["from"]),
        text(&done["to"])
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn promote(args: &PromoteArgs) -> anyhow::Result<ExitCode> {
    let server = remote(&args.remote)?;
    let path = format!("/v1/policies/{}/promote", args.name);
    let body = serde_json::json!({ "candidate": args.candidate });
    let done = call(&server, hyper::Method::POST, &path, Some(&body))?;
    println!(
        "policy `{}`: candidate `{}` now serves: {} -> {}",
        args.name,
        args.candidate,
        text(&done["from"]),
        text(&done["to"])
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn baseline(args: &BaselineArgs) -> anyhow::Result<ExitCode> {
    let Some(body) = read_state(
        &args.remote,
        "/v1/baseline",
        args.agent.as_deref(),
        args.json,
    )?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "{} decisions observed in monitor mode ({} past the action cap, untracked)",
        body["observed"], body["untracked"]
    );
    for a in list(&body["actions"]) {
        println!(
            "\n{}  {} {}  x{}  ({} .. {})",
            text(&a["agent"]),
            text(&a["kind"]),
            text(&a["name"]),
            a["count"],
            text(&a["first_seen"]),
            text(&a["last_seen"])
        );
        if let Some(t) = distinct(&a["targets"]) {
            println!("  target          {t}");
        }
        for (key, k) in a["params"].as_object().into_iter().flatten() {
            let types: Vec<String> = k["types"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(t, n)| format!("{t} {n}"))
                .collect();
            println!("  {key:<15} {}", types.join(", "));
            if k["number"].is_object() {
                let n = &k["number"];
                println!(
                    "  {:<15} min {}  max {}  p95 {}",
                    "", n["min"], n["max"], n["p95"]
                );
            }
            for field in ["values", "domains"] {
                if let Some(d) = distinct(&k[field]) {
                    println!("  {:<15} {field}: {d}", "");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `a 3, b 1` and `, ...` when the cap cut the list; `None` when empty.
fn distinct(d: &Value) -> Option<String> {
    let values = d["values"].as_object()?;
    if values.is_empty() {
        return None;
    }
    let mut parts: Vec<String> = values.iter().map(|(v, n)| format!("{v} {n}")).collect();
    if d["more"] == true {
        parts.push("...".into());
    }
    Some(parts.join(", "))
}

pub(super) fn ab(command: &AbCommand) -> anyhow::Result<ExitCode> {
    let AbCommand::Report(args) = command;
    let server = remote(&args.remote)?;
    let body = call(
        &server,
        hyper::Method::GET,
        &format!("/v1/ab/{}", args.name),
        None,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("policy {}  (mode {})", args.name, text(&body["mode"]));
    let q = &body["queue"];
    if q.is_object() {
        let dropped: u64 = q["dropped"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, n)| n.as_u64())
            .sum();
        println!(
            "shadow queue: {} pending, {dropped} dropped (capacity {})",
            q["pending"], q["capacity"]
        );
    }
    print_pairs(&body["pairs"]);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn replay(args: &ReplayArgs, cache: Option<&CompileCache>) -> anyhow::Result<ExitCode> {
    existing_dir(&args.log)?;
    let settings: Value =
        serde_json::from_str(&args.settings).context("--settings is not valid JSON")?;
    let engine = engine()?;
    let spec = PolicySpec {
        name: args.policy.clone(),
        source: Source::File(args.candidate.clone()),
        settings,
        limits: args.limits.limits(),
        smoke: Vec::new(),
        trust: Default::default(),
    };
    let candidate = load::load(&engine, cache, &spec)?;
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| policy_name(&args.candidate));
    let filter = Filter {
        agent: args.agent.clone(),
        since: args.since.as_deref().map(time).transpose()?,
        until: args.until.as_deref().map(time).transpose()?,
        ..Filter::default()
    };
    let report = replay::replay(
        &engine,
        &args.log,
        &filter,
        &args.policy,
        &candidate,
        &id,
        args.samples,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "policy {}: {} decisions recorded, {} replayed against `{id}` ({} with redacted params)",
        report.policy, report.records, report.replayed, report.redacted
    );
    for (why, n) in &report.skipped {
        println!("  skipped {n}: {why}");
    }
    if report.unanswered_questions > 0 {
        println!(
            "  {} labels-of questions had no recorded answer (answered with no label)",
            report.unanswered_questions
        );
    }
    print_pairs(&serde_json::to_value(&report.pairs)?);
    Ok(ExitCode::SUCCESS)
}

/// Prints each pair of a divergence report (the server's JSON, or a
/// replay's).
fn print_pairs(pairs: &Value) {
    let pairs = list(pairs);
    if pairs.is_empty() {
        println!("\nno comparisons yet");
    }
    for p in pairs {
        println!(
            "\ncandidate {} ({})",
            text(&p["candidate"]),
            text(&p["role"])
        );
        for (label, v) in [
            ("serving  ", &p["primary_version"]),
            ("candidate", &p["candidate_version"]),
        ] {
            let settings = text(&v["settings"]);
            let settings = if settings.is_empty() {
                "as recorded".to_owned()
            } else {
                settings
            };
            println!("  {label} {}  settings {settings}", text(&v["version"]));
        }
        let rate = p["agreement_rate"].as_f64().unwrap_or(1.0) * 100.0;
        println!(
            "  compared {}, agreed {} ({rate:.1}%), {} .. {}",
            p["compared"],
            p["agreed"],
            text(&p["first_at"]),
            text(&p["last_at"])
        );
        println!("  confusion (serving -> candidate):");
        for (from, row) in p["confusion"].as_object().into_iter().flatten() {
            let cells: Vec<String> = row
                .as_object()
                .into_iter()
                .flatten()
                .map(|(to, n)| format!("{to} {n}"))
                .collect();
            println!("    {from:<17} -> {}", cells.join(", "));
        }
        let rules = list(&p["diverging_rules"]);
        if !rules.is_empty() {
            println!("  diverging rules:");
            for r in rules {
                println!(
                    "    {:>8}  {} -> {}",
                    r["count"],
                    text(&r["primary"]),
                    text(&r["candidate"])
                );
            }
        }
        let samples = list(&p["samples"]);
        if !samples.is_empty() {
            println!("  samples:");
            for s in samples {
                let a = &s["input"]["action"];
                println!(
                    "    {}  {} {} {}  {} ({}) -> {} ({})",
                    text(&s["decision_id"]),
                    text(&a["kind"]),
                    text(&a["name"]),
                    a["params"],
                    text(&s["primary"]["outcome"]),
                    text(&s["primary"]["rule"]),
                    text(&s["candidate"]["outcome"]),
                    text(&s["candidate"]["rule"]),
                );
            }
        }
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

pub(super) fn text(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_owned)
}
