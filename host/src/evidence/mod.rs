//! Evidence: what every decision leaves behind. [`log`] is the
//! tamper-evident decision log, [`record`] its records and their canonical
//! encoding, [`audit`] reads a log back (verify, query, stats), and
//! [`metrics`] counts.

pub mod audit;
pub mod log;
pub mod metrics;
pub mod record;
