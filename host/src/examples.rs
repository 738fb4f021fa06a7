//! The example policies of `shared/scenarios/POLICIES.md`, compiled from
//! `example-policies/` for `wasm32-wasip2` by `build.rs` and embedded in the
//! binary (feature `example-policies`, on by default), so the default
//! configuration and `arbiter test` need no files.

use std::sync::Arc;

use crate::load::Source;

#[cfg(feature = "example-policies")]
include!(concat!(env!("OUT_DIR"), "/examples.rs"));

/// Built without the `example-policies` feature: none.
#[cfg(not(feature = "example-policies"))]
const EXAMPLES: &[(&str, &[u8])] = &[];

/// The names of the embedded examples.
pub fn names() -> Vec<&'static str> {
    EXAMPLES.iter().map(|(name, _)| *name).collect()
}

/// The component bytes of the example called `name`.
pub fn bytes(name: &str) -> Option<&'static [u8]> {
    EXAMPLES.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The example called `name` as a load source.
pub fn source(name: &str) -> Option<Source> {
    bytes(name).map(|b| Source::Bytes {
        label: format!("embedded:{name}"),
        bytes: Arc::from(b),
    })
}
