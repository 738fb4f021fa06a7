//! Front door: where requests come in. Today the wire format ([`wire`]),
//! shared by the CLI and the test-case runner.

pub mod wire;
