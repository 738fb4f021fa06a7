//! Arbiter: the runtime policy decision point for AI agents.
//!
//! Before an agent's action runs, the gateway that carries it asks Arbiter,
//! which runs the policies routed to that action, each a WebAssembly
//! component in a fresh sandbox with fuel, deadline and memory limits, and
//! answers allow, deny, require-approval or modify.
//!
//! # The flow of a decision
//!
//! [`arbiter::Arbiter::decide`] is the one place the order is written; every
//! door (HTTP decide, the external authorizer, MCP over stdio and HTTP, the
//! embedded library) goes through it. One module per stage, named after it:
//!
//! | stage | module |
//! |---|---|
//! | a place among the decisions in flight | [`admission`] |
//! | what the host knows of each agent; what stops it (suspension, changed MCP tool, breaker) | [`enrich`] |
//! | which chain applies | [`route`] |
//! | run one policy, sandboxed | [`evaluate`] |
//! | how much each answer binds, which version answers | [`mode`] |
//! | fold a chain | [`combine`], [`mode::fold`] |
//! | require-approval answered by a person, bound to the action | [`approvals`] |
//! | what a decision leaves behind: log, metrics, spans | [`evidence`], [`telemetry`] |
//! | candidates beside the serving version, divergence, replay | [`shadow`] |
//!
//! Around the flow: [`load`] brings one policy into service (from a file,
//! or pulled from a registry by [`oci`]), [`set`]
//! assembles a whole policy set from configuration, [`reload`] changes what
//! serves at run time, [`state`] keeps what must survive a restart behind
//! traits. The doors: [`front_door`] (HTTP), [`mcp`] (MCP gateway), with
//! [`console`] for people on the admin plane, run by [`server`] and [`cli`].
//!
//! # Layers
//!
//! A module imports only modules of lower layers; `tests/all/layers.rs`
//! reads every `crate::` path of `host/src` and fails, naming the file and
//! the import, on one that looks sideways or up.
//!
//! | layer | modules | what they are |
//! |---|---|---|
//! | 0 | [`decision`], [`time`], [`paths`], [`glob`], [`tls`], `hex` | shared types and helpers |
//! | 1 | [`engine`], [`signing`], [`admission`], [`combine`], [`flow`] | primitives; labels and fingerprints |
//! | 2 | [`evaluate`], [`route`], [`oci`], [`telemetry`] | one policy run; one chain chosen; policies from an OCI registry; spans and records over OTLP |
//! | 3 | [`config`] | the configuration's data model and checks |
//! | 4 | [`state`], [`evidence`], [`load`], [`identity`] | durable state, evidence, the load pipeline, credentials |
//! | 5 | [`examples`], [`enrich`], [`approvals`], [`mode`] | stages that use them |
//! | 6 | [`shadow`], [`set`] | candidates off the hot path; the assembler |
//! | 7 | [`arbiter`] | the flow |
//! | 8 | [`reload`], [`cases`], [`client`], [`fleet`] | what changes or drives the flow |
//! | 9 | [`mcp`] | the MCP door |
//! | 10 | [`front_door`] | the HTTP door |
//! | 11 | [`console`] | the operator console, on the admin plane |
//! | 12 | [`server`] | runs the doors |
//! | 13 | [`cli`] | the command line |
#![deny(missing_docs)]

pub mod admission;
pub mod approvals;
pub mod arbiter;
pub mod cases;
pub mod cli;
pub mod client;
pub mod combine;
pub mod config;
pub mod console;
pub mod decision;
pub mod engine;
pub mod enrich;
pub mod evaluate;
pub mod evidence;
pub mod examples;
pub mod fleet;
pub mod flow;
pub mod front_door;
pub mod glob;
mod hex;
pub mod identity;
pub mod load;
pub mod mcp;
pub mod mode;
pub mod oci;
pub mod paths;
pub mod reload;
pub mod route;
pub mod server;
pub mod set;
pub mod shadow;
pub mod signing;
pub mod state;
pub mod telemetry;
pub mod time;
pub mod tls;
pub use decision::traceparent;

pub use arbiter::Arbiter;
pub use decision::{Action, Context, Decision, History, Outcome, PolicyReport, Principal, Request};
pub use set::PolicySet;
