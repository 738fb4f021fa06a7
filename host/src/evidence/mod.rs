//! Evidence: what every decision leaves behind. Today the metrics
//! ([`metrics`]); the tamper-evident decision log joins them here.

pub mod metrics;
