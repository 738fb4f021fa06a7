//! End-to-end tests of the decision flow with real components: the example
//! policies and hostile ones, all built from source.

mod agents;
mod approvals;
mod attacks;
mod bounds;
mod bypass;
mod chain;
mod concurrency;
mod console;
mod fleet;
mod flow;
mod grpc;
mod hostile;
mod languages;
mod layers;
mod load;
mod log;
mod mcp;
mod nginx;
mod oci;
mod otel;
mod postgres;
mod properties;
mod reload;
mod rollout;
mod server;
mod signing;
