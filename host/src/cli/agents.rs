//! `arbiter agents`: the agents a running server knows, and its kill
//! switch.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::Value;

use super::{RemoteArgs, call, read_state, remote};

#[derive(Debug, Subcommand)]
pub(super) enum AgentsCommand {
    /// Each agent's counters, suspension and circuit breaker.
    List(ListArgs),
    /// Deny every action of an agent until it is resumed (admin token).
    Suspend(SuspendArgs),
    /// Lift an agent's suspension (admin token).
    Resume(ResumeArgs),
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// Only this agent.
    #[arg(long)]
    agent: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct SuspendArgs {
    /// The agent.
    agent: String,
    /// Why; recorded in the decision log and given in every denial.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct ResumeArgs {
    /// The agent.
    agent: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(command: &AgentsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AgentsCommand::List(args) => list(args),
        AgentsCommand::Suspend(args) => change(
            &args.remote,
            &args.agent,
            "suspend",
            &serde_json::json!({"reason": args.reason}),
        ),
        AgentsCommand::Resume(args) => {
            change(&args.remote, &args.agent, "resume", &serde_json::json!({}))
        }
    }
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let Some(body) = read_state(&args.remote, "/v1/agents", args.agent.as_deref(), args.json)?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    println!(
        "{:<24} {:>10} {:>12} {:>14}  state",
        "agent", "calls/min", "denials/h", "spend today"
    );
    for a in body["agents"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let h = a;
        let cents = h["spend_today_cents"].as_u64().unwrap_or(0);
        println!(
            "{:<24} {:>10} {:>12} {:>14}  {}",
            a["agent"].as_str().unwrap_or("?"),
            h["calls_last_minute"],
            h["denials_last_hour"],
            format!("${}.{:02}", cents / 100, cents % 100),
            state(a)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn state(a: &Value) -> String {
    if let Some(s) = a["suspended"].as_object() {
        return format!(
            "SUSPENDED by {} at {}: {}",
            s["by"].as_str().unwrap_or("?"),
            s["at"].as_str().unwrap_or("?"),
            s["reason"].as_str().unwrap_or("?")
        );
    }
    if a["breaker"].is_object() {
        return format!("breaker open ({} denials)", a["breaker"]["denials"]);
    }
    "ok".to_owned()
}

fn change(
    remote_args: &RemoteArgs,
    agent: &str,
    change: &str,
    body: &Value,
) -> anyhow::Result<ExitCode> {
    let server = remote(remote_args)?;
    let path = format!(
        "/v1/agents/{}/{change}",
        crate::client::percent_encode(agent)
    );
    let done = call(&server, hyper::Method::POST, &path, Some(body))?;
    let s = &done["suspension"];
    match change {
        "suspend" => println!(
            "agent `{agent}` suspended at {}: every action is denied until `arbiter agents resume {agent}`",
            s["at"].as_str().unwrap_or("?")
        ),
        _ => println!(
            "agent `{agent}` resumed (it was suspended by {}: {})",
            s["by"].as_str().unwrap_or("?"),
            s["reason"].as_str().unwrap_or("?")
        ),
    }
    Ok(ExitCode::SUCCESS)
}
