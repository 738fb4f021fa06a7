//! A policy that opens a TCP connection, so its component imports
//! `wasi:sockets`, which the host never provides: it must be refused at
//! load, naming the import.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "policy",
});

use arbiter::policy::types::Outcome;

struct NetImport;

impl Guest for NetImport {
    fn validate_settings(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_action: Action, _context: Context) -> Decision {
        let connected = std::net::TcpStream::connect("192.0.2.1:80").is_ok();
        Decision {
            outcome: Outcome::Allow,
            reason: format!("connected: {connected}"),
            rule: "net.connect".into(),
            risk: 0,
            params: None,
        }
    }
}

export!(NetImport);
