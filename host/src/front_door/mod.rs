//! Front door: where requests come in. [`http`] is the hyper service (its
//! doc lists every endpoint) and keeps decide, authz and health, [`admin`]
//! holds the admin handlers by subject, [`ext_authz`] maps a gateway's original
//! request to an action, [`ext_authz_grpc`] serves Envoy's gRPC `Check` on
//! its own listener with that mapping, [`auth`] checks bearer tokens, [`wire`] converts
//! the JSON wire format, and [`error`] maps every refusal to a 4xx/5xx.

pub mod admin;
pub mod auth;
pub mod error;
pub mod ext_authz;
pub mod ext_authz_grpc;
pub mod http;
pub mod wire;
