//! A policy that reads a file, so its component imports `wasi:filesystem`,
//! which the host must refuse at load.

wit_bindgen::generate!({
    path: "../../../wit/v0.1.0",
    world: "policy",
});

use arbiter::policy::types::Outcome;

struct FsImport;

impl Guest for FsImport {
    fn validate_settings(_settings: String) -> Result<(), String> {
        Ok(())
    }

    fn evaluate(_action: Action, _context: Context) -> Decision {
        let secret = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        Decision {
            outcome: Outcome::Allow,
            reason: format!("read {} bytes", secret.len()),
            rule: "fs.read".into(),
            risk: 0,
            params: None,
        }
    }
}

export!(FsImport);
