//! `arbiter approvals`: what waits for a person on a running server, and
//! the person's answer.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::rollout::text;
use super::{RemoteArgs, call, remote};
use crate::client::percent_encode;

#[derive(Debug, Subcommand)]
pub(super) enum ApprovalsCommand {
    /// The approvals, pending ones unless told otherwise (admin token).
    List(ListArgs),
    /// One approval, with the action and context it was asked about.
    Show(ShowArgs),
    /// Grant a pending approval: the caller's next identical request is
    /// allowed, once (admin token).
    Approve(AnswerArgs),
    /// Refuse a pending approval (admin token).
    Decline(AnswerArgs),
}

#[derive(Debug, Args)]
pub(super) struct ListArgs {
    /// pending, approved, declined, expired, used, or all.
    #[arg(long, default_value = "pending")]
    status: String,
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct ShowArgs {
    /// The approval's id.
    id: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub(super) struct AnswerArgs {
    /// The approval's id.
    id: String,
    /// Why; recorded in the decision log.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub(super) fn run(command: &ApprovalsCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApprovalsCommand::List(args) => list(args),
        ApprovalsCommand::Show(args) => {
            let server = remote(&args.remote)?;
            let path = format!("/v1/approvals/{}", percent_encode(&args.id));
            let a = call(&server, hyper::Method::GET, &path, None)?;
            println!("{}", serde_json::to_string_pretty(&a)?);
            Ok(ExitCode::SUCCESS)
        }
        ApprovalsCommand::Approve(args) => answer(args, "approve"),
        ApprovalsCommand::Decline(args) => answer(args, "decline"),
    }
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let server = remote(&args.remote)?;
    let path = match args.status.as_str() {
        "all" => "/v1/approvals".to_owned(),
        s => format!("/v1/approvals?status={}", percent_encode(s)),
    };
    let body = call(&server, hyper::Method::GET, &path, None)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    let list = body["approvals"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if list.is_empty() {
        println!("no approvals {}", args.status);
    }
    for a in list {
        let action = &a["request"]["action"];
        println!(
            "{}  {:<9} {} {} {}  agent {}  ({}: {})",
            text(&a["id"]),
            text(&a["status"]),
            text(&action["kind"]),
            text(&action["name"]),
            action["params"],
            text(&a["request"]["context"]["agent"]["id"]),
            text(&a["rule"]),
            text(&a["reason"]),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn answer(args: &AnswerArgs, verb: &str) -> anyhow::Result<ExitCode> {
    let server = remote(&args.remote)?;
    let path = format!("/v1/approvals/{}/{verb}", percent_encode(&args.id));
    let body = serde_json::json!({"reason": args.reason});
    let a = call(&server, hyper::Method::POST, &path, Some(&body))?;
    let given = a["approvers"].as_array().map_or(0, Vec::len);
    let needed = a["required"].as_u64().unwrap_or(1);
    if text(&a["status"]) == "pending" {
        println!(
            "approval {} pending: {given} of {needed} approvers so far",
            text(&a["id"])
        );
    } else {
        println!("approval {} {}", text(&a["id"]), text(&a["status"]));
    }
    Ok(ExitCode::SUCCESS)
}
