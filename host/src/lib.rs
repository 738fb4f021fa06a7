//! Arbiter: the runtime policy decision point for AI agents.
//!
//! Before an agent's action runs, the gateway that carries it asks Arbiter,
//! which runs the policies routed to that action, each a WebAssembly
//! component in a fresh sandbox with fuel, deadline and memory limits, and
//! answers allow, deny, require-approval or modify.
//!
//! One module per stage of a decision, named after it:
//!
//! | stage | module |
//! |---|---|
//! | wire format in and out | [`front_door`] |
//! | what the host knows of each agent: history, kill switch, breaker | [`enrich`] |
//! | which chain applies | [`route`] |
//! | run one policy, sandboxed | [`evaluate`] |
//! | fold a chain | [`combine`] |
//! | how much each answer binds: monitor, soft-enforce, enforce, canaries | [`mode`] |
//! | candidates beside the serving version, divergence, replay | [`shadow`] |
//! | require-approval answered by a person, bound to the action | [`approvals`] |
//! | bring a policy into service | [`load`] |
//! | change what serves, at run time | [`reload`] |
//! | what a decision leaves behind | [`evidence`] |
//!
//! [`server`] runs the HTTP decision service around them; [`mcp`] puts
//! Arbiter in front of MCP servers, over stdio and Streamable HTTP.
//!
//! [`arbiter::Arbiter::decide`] writes the order out; [`engine`] holds the
//! one wasmtime engine; [`decision`] the shared types; [`config`] the
//! configuration; [`cases`] runs conformance case files.
#![deny(missing_docs)]

pub mod admission;
pub mod approvals;
pub mod arbiter;
pub mod cases;
pub mod cli;
pub mod client;
pub mod combine;
pub mod config;
pub mod decision;
pub mod engine;
pub mod enrich;
pub mod evaluate;
pub mod evidence;
pub mod examples;
pub mod front_door;
pub mod glob;
mod hex;
pub mod load;
pub mod mcp;
pub mod mode;
pub mod paths;
pub mod reload;
pub mod route;
pub mod server;
pub mod set;
pub mod shadow;
pub mod signing;
pub mod state;
pub mod time;

pub use arbiter::Arbiter;
pub use decision::{Action, Context, Decision, History, Outcome, PolicyReport, Principal, Request};
pub use set::PolicySet;
